"""fake_entities: the fakes' tokenizer and their plausible, deterministic entities."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tierbatch.adapters.simulation.fake_entities import (
    AnswerQuality,
    answer_document,
    answer_text,
    article_text,
    degrade,
    extract_entities,
    fake_prompt_token_count,
    fake_token_count,
)
from tierbatch.policies.grounding import Grounding, PackTexts
from tierbatch.policies.results import Entity, EntityType

ARTICLE = (
    "The United Nations Climate Summit opened in Geneva on Monday, where President "
    "Emmanuel Macron of France and Prime Minister Keir Starmer met officials from the "
    "World Bank. Macron said the deal was close. Reuters reported that Microsoft Corp "
    "and the Bank of England were also represented. In a statement, Starmer urged China "
    "to act. Mr. John Smith, a spokesman, called the Paris Agreement a failure. "
    "Organisers of the Paris Olympics and the World Cup sent delegates. Analysts at "
    "Apple Inc expect the new iPhone to sell well in Berlin."
)


def by_name(entities: tuple[Entity, ...]) -> dict[str, Entity]:
    return {e.name: e for e in entities}


def test_token_count_is_four_characters_per_token_rounded_up() -> None:
    assert fake_token_count("") == 0
    assert fake_token_count("abcd") == 1
    assert fake_token_count("abcde") == 2
    assert fake_prompt_token_count(["abcde", "abc"]) == 3


def test_plausible_entities_on_a_sample_article() -> None:
    found = by_name(extract_entities(ARTICLE, "gemini-2.5-flash"))
    expected = {
        "Emmanuel Macron": EntityType.PERSON,
        "Keir Starmer": EntityType.PERSON,
        "John Smith": EntityType.PERSON,
        "Geneva": EntityType.LOCATION,
        "France": EntityType.LOCATION,
        "China": EntityType.LOCATION,
        "Berlin": EntityType.LOCATION,
        "World Bank": EntityType.ORGANISATION,
        "Reuters": EntityType.ORGANISATION,
        "Microsoft Corp": EntityType.ORGANISATION,
        "Bank of England": EntityType.ORGANISATION,
        "Apple Inc": EntityType.ORGANISATION,
        "Paris Olympics": EntityType.EVENT,
        "World Cup": EntityType.EVENT,
        "Paris Agreement": EntityType.OTHER,
    }
    for name, kind in expected.items():
        assert name in found, f"{name} missing from {sorted(found)}"
        assert found[name].type is kind, name
    # Surnames alone are further mentions of the person.
    assert found["Emmanuel Macron"].mentions == 2
    assert found["Keir Starmer"].mentions == 2
    # Grammar and dates are not entities, and titles are not part of names.
    for word in ("The", "Monday", "In", "Mr", "President", "Analysts", "Organisers"):
        assert not any(name.split()[0] == word for name in found), word


def test_salience_is_bounded_and_sorted_and_frequent_early_names_rank_high() -> None:
    entities = extract_entities(ARTICLE, "gemini-2.5-flash")
    saliences = [e.salience for e in entities]
    assert saliences == sorted(saliences, reverse=True)
    assert all(0.0 < s <= 1.0 for s in saliences)
    assert all(e.mentions >= 1 for e in entities)
    top = [e.name for e in entities[:4]]
    assert "Emmanuel Macron" in top


def test_deterministic_per_text_and_model() -> None:
    assert extract_entities(ARTICLE, "m") == extract_entities(ARTICLE, "m")
    flash = extract_entities(ARTICLE, "gemini-2.5-flash")
    pro = extract_entities(ARTICLE, "gemini-2.5-pro")
    assert [e.name for e in flash] != [] and {e.name for e in flash} == {e.name for e in pro}
    assert [e.salience for e in flash] != [e.salience for e in pro]  # models differ slightly


def test_lite_models_drop_the_least_salient() -> None:
    full = extract_entities(ARTICLE, "gemini-2.5-flash")
    lite = extract_entities(ARTICLE, "gemini-2.5-flash-lite")
    assert 0 < len(lite) < len(full)
    assert {e.name for e in lite} <= {e.name for e in full}


def test_stable_across_processes_whatever_the_hash_seed() -> None:
    """Seeded from hashlib, so PYTHONHASHSEED cannot change the entities."""
    script = (
        "import json, sys\n"
        "from tierbatch.adapters.simulation.fake_entities import extract_entities\n"
        "es = extract_entities(sys.argv[1], 'gemini-2.5-flash')\n"
        "print(json.dumps([[e.name, e.type.value, e.salience, e.mentions] for e in es]))\n"
    )
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", script, ARTICLE],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            timeout=60,
        )
        outputs.add(done.stdout)
    assert len(outputs) == 1
    here = extract_entities(ARTICLE, "gemini-2.5-flash")
    assert json.loads(outputs.pop()) == [
        [e.name, e.type.value, e.salience, e.mentions] for e in here
    ]


def test_no_names_no_entities() -> None:
    assert extract_entities("", "m") == ()
    assert extract_entities("all lower case text, nothing to see.", "m") == ()


def test_answer_document_has_the_response_schema_shape() -> None:
    articles = [
        {"id": "a1", "title": "Macron in Berlin", "text": ARTICLE},
        {"id": "a2", "title": "", "text": "nothing here"},
    ]
    document = answer_document(articles, "gemini-2.5-flash")
    assert [a["id"] for a in document["articles"]] == ["a1", "a2"]
    assert document["articles"][1]["entities"] == []
    first = document["articles"][0]["entities"]
    assert first and set(first[0]) == {"name", "type", "salience", "mentions"}
    expected = extract_entities(article_text("Macron in Berlin", ARTICLE), "gemini-2.5-flash")
    assert [e["name"] for e in first] == [e.name for e in expected]
    assert json.loads(answer_text(document)) == document


@given(st.text(max_size=400), st.sampled_from(["gemini-2.5-flash", "gemini-2.5-flash-lite"]))
def test_never_fails_and_names_come_from_the_text(text: str, model: str) -> None:
    entities = extract_entities(text, model)
    assert entities == extract_entities(text, model)
    assert len(entities) <= 25
    assert len({e.name.lower() for e in entities}) == len(entities)
    for e in entities:
        assert 0.0 < e.salience <= 1.0
        assert e.mentions >= 1
        assert isinstance(e.type, EntityType)
        for word in e.name.split():
            assert word in text


OTHER = (
    "Storm Ciaran closed the port of Lisbon on Tuesday. Fishermen in Porto said the "
    "Portuguese Navy had warned them. Maria Silva of Lusa News counted twelve boats."
)


def _pack():
    texts = {"a": article_text("Climate summit", ARTICLE), "b": article_text("Storm", OTHER)}
    found = {i: extract_entities(t, "m") for i, t in texts.items()}
    return texts, found, PackTexts((i, "", t) for i, t in texts.items())


def test_a_model_that_loses_track_names_other_articles_entities() -> None:
    texts, found, pack = _pack()
    mixed = degrade(found, texts, AnswerQuality(cross_article=1.0), random.Random(1))
    for article_id, entities in mixed.items():
        assert len(entities) == len(found[article_id])
        outcomes = {pack.check(article_id, e.name) for e in entities}
        # every entity swapped, as far as the other article had ones to give
        assert Grounding.CROSS_ARTICLE in outcomes
        assert Grounding.UNGROUNDED not in outcomes
    invented = degrade(found, texts, AnswerQuality(invented=1.0), random.Random(1))
    for article_id, entities in invented.items():
        assert {pack.check(article_id, e.name) for e in entities} == {Grounding.UNGROUNDED}


def test_a_perfect_model_and_a_lone_article_stay_grounded() -> None:
    texts, found, pack = _pack()
    assert degrade(found, texts, AnswerQuality(), random.Random(1)) == found
    alone = {"a": found["a"]}
    kept = degrade(alone, {"a": texts["a"]}, AnswerQuality(cross_article=1.0), random.Random(1))
    assert kept == alone  # nothing of another article to mix in
    document = answer_document(
        [{"id": "a", "title": "Climate summit", "text": ARTICLE}, {"id": "b", "text": OTHER}],
        "m",
        AnswerQuality(invented=0.5),
        random.Random(3),
    )
    outcomes = [
        pack.check(item["id"], e["name"]) for item in document["articles"] for e in item["entities"]
    ]
    assert set(outcomes) == {Grounding.GROUNDED, Grounding.UNGROUNDED}


def test_answer_quality_rates_are_validated() -> None:
    for bad in (
        {"cross_article": -0.1},
        {"invented": 1.5},
        {"cross_article": 0.6, "invented": 0.6},
    ):
        with pytest.raises(ValueError, match="rate"):
            AnswerQuality(**bad)
