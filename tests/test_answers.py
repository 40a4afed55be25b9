"""Validation of model answers: one answer per expected id, whatever the text."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tierbatch.adapters.gemini.answers import analyse_answer, entity_type_for, parse_answer
from tierbatch.policies.results import (
    AnswerProblem,
    Entity,
    EntityType,
    Extraction,
    ProblemKind,
)

IDS = ["a1", "a2", "a3"]


def entity(name: str = "Paris", type_: str = "location", salience: Any = 0.5, **extra: Any):
    return {"name": name, "type": type_, "salience": salience, **extra}


def answer(*items: dict[str, Any]) -> str:
    return json.dumps({"articles": list(items)})


def item(article_id: Any, *entities: dict[str, Any]) -> dict[str, Any]:
    return {"id": article_id, "entities": list(entities)}


def kinds(result: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.kind if isinstance(v, AnswerProblem) else "ok") for k, v in result.items()}


def test_valid_pack_is_demultiplexed_per_article() -> None:
    text = answer(
        item("a2", entity("Berlin", "location", 0.9, mentions=3)),
        item("a1", entity("Ada Lovelace", "person", 0.7), entity("ACME", "organisation", 0.2)),
        item("a3"),
    )
    result = parse_answer(text, "STOP", None, IDS)
    assert list(result) == IDS
    assert result["a1"] == Extraction(
        (
            Entity("Ada Lovelace", EntityType.PERSON, 0.7, 1),
            Entity("ACME", EntityType.ORGANISATION, 0.2, 1),
        )
    )
    assert result["a2"] == Extraction((Entity("Berlin", EntityType.LOCATION, 0.9, 3),))
    assert result["a3"] == Extraction(())


def test_absent_id_is_missing_and_unknown_ids_are_reported() -> None:
    text = answer(item("a1", entity()), item("zz", entity()), "junk")
    parsed = analyse_answer(text, "STOP", None, IDS)
    assert kinds(parsed.answers) == {
        "a1": "ok",
        "a2": ProblemKind.MISSING,
        "a3": ProblemKind.MISSING,
    }
    assert parsed.unknown_ids == ("zz",)
    assert parsed.unusable_items == 1


def test_not_json_is_malformed_for_every_article() -> None:
    result = parse_answer('{"articles": [', "STOP", None, IDS)
    assert set(kinds(result).values()) == {ProblemKind.MALFORMED}


def test_wrong_shape_is_malformed() -> None:
    for text in ('[{"id": "a1", "entities": []}]', '{"items": []}', '{"articles": {}}', "", None):
        result = parse_answer(text, "STOP", None, IDS)
        assert set(kinds(result).values()) == {ProblemKind.MALFORMED}, text


def test_code_fence_is_tolerated() -> None:
    text = "```json\n" + answer(item("a1", entity())) + "\n```"
    assert kinds(parse_answer(text, "STOP", None, ["a1"])) == {"a1": "ok"}


def test_max_tokens_salvages_complete_items_only() -> None:
    full = answer(
        item("a1", entity("Rome")), item("a2", entity("Oslo")), item("a3", entity("Nice"))
    )
    cut = full[: full.index("Oslo") + 2]  # inside a2's entity list
    result = parse_answer(cut, "MAX_TOKENS", None, IDS)
    assert result["a1"] == Extraction((Entity("Rome", EntityType.LOCATION, 0.5, 1),))
    assert kinds(result)["a2"] == ProblemKind.TRUNCATED
    assert kinds(result)["a3"] == ProblemKind.TRUNCATED


def test_max_tokens_with_garbage_truncates_everything() -> None:
    for text in (None, "", "{", "Sorry, I cannot", '{"articles": [{"id": "a1"'):
        result = parse_answer(text, "MAX_TOKENS", None, IDS)
        assert set(kinds(result).values()) == {ProblemKind.TRUNCATED}, text


def test_safety_finish_reasons_and_block_reason() -> None:
    text = answer(item("a1", entity()))
    for reason in ("SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "FinishReason.SAFETY"):
        result = parse_answer(text, reason, None, IDS)
        assert set(kinds(result).values()) == {ProblemKind.SAFETY}, reason
    result = parse_answer(None, None, "SAFETY", IDS)
    assert set(kinds(result).values()) == {ProblemKind.SAFETY}
    assert kinds(parse_answer(text, "STOP", "BLOCK_REASON_UNSPECIFIED", ["a1"])) == {"a1": "ok"}


def test_invalid_fields_make_the_item_invalid() -> None:
    bad_entities = [
        entity(name=""),
        entity(name="   "),
        entity(name=7),
        entity(type_=3),
        entity(salience="high"),
        entity(salience=None),
        entity(salience=True),
        entity(salience=1.5),
        entity(salience=-0.2),
        entity(salience=float("nan")),
        entity(mentions=0),
        entity(mentions=2.5),
        entity(mentions="2"),
        "Paris",
    ]
    for bad in bad_entities:
        text = answer(item("a1", entity("Oslo"), bad))
        result = parse_answer(text, "STOP", None, ["a1"])
        assert kinds(result) == {"a1": ProblemKind.INVALID}, bad
    result = parse_answer(answer({"id": "a1", "entities": "none"}), "STOP", None, ["a1"])
    assert kinds(result) == {"a1": ProblemKind.INVALID}


def test_lenient_values() -> None:
    text = answer(
        item(
            "a1",
            entity("  Ada   Lovelace ", "PER", 1.02, mentions=3.0),
            entity("Somewhere", "gpe", -0.01),
            entity("Thing", "spaceship", 0.3),
        ),
        item(42, entity("X", "org", 0.1)),
    )
    result = parse_answer(text, "STOP", None, ["a1", "42"])
    assert result["a1"] == Extraction(
        (
            Entity("Ada Lovelace", EntityType.PERSON, 1.0, 3),
            Entity("Somewhere", EntityType.LOCATION, 0.0, 1),
            Entity("Thing", EntityType.OTHER, 0.3, 1),
        )
    )
    assert result["42"] == Extraction((Entity("X", EntityType.ORGANISATION, 0.1, 1),))


def test_type_synonyms() -> None:
    assert entity_type_for("Organization") is EntityType.ORGANISATION
    assert entity_type_for("org") is EntityType.ORGANISATION
    assert entity_type_for("place") is EntityType.LOCATION
    assert entity_type_for("GPE") is EntityType.LOCATION
    assert entity_type_for("work of art") is EntityType.PRODUCT
    assert entity_type_for("event") is EntityType.EVENT
    assert entity_type_for("??") is EntityType.OTHER


def test_same_name_and_type_are_merged() -> None:
    text = answer(
        item(
            "a1",
            entity("Paris", "location", 0.4, mentions=2),
            entity("paris", "place", 0.8, mentions=1),
            entity("Paris", "person", 0.1),
        )
    )
    result = parse_answer(text, "STOP", None, ["a1"])
    assert result["a1"] == Extraction(
        (
            Entity("Paris", EntityType.LOCATION, 0.8, 3),
            Entity("Paris", EntityType.PERSON, 0.1, 1),
        )
    )


def test_duplicate_items_first_valid_wins() -> None:
    text = answer(
        item("a1", entity(salience="bad")),
        item("a1", entity("First")),
        item("a1", entity("Second")),
    )
    parsed = analyse_answer(text, "STOP", None, ["a1"])
    assert parsed.answers["a1"] == Extraction((Entity("First", EntityType.LOCATION, 0.5, 1),))
    assert parsed.duplicate_ids == ("a1", "a1")


def test_expected_ids_are_deduplicated() -> None:
    result = parse_answer(answer(item("a1")), "STOP", None, ["a1", "a1", "a2"])
    assert list(result) == ["a1", "a2"]


def test_hostile_json_does_not_raise() -> None:
    deep = "[" * 100_000
    huge = '{"articles": [{"id": "a1", "entities": [{"name": "x", "type": "person", '
    huge += '"salience": 1' + "0" * 5000 + "}]}]}"
    big_int_salience = answer(item("a1", entity(salience=10**400)))
    for text in (deep, huge, big_int_salience, "NaN", '{"articles": [1e999]}'):
        for finish in ("STOP", "MAX_TOKENS"):
            result = parse_answer(text, finish, None, ["a1"])
            assert list(result) == ["a1"]


ids_strategy = st.lists(st.text(max_size=5), max_size=5)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=10)
    | st.sampled_from(["a1", "a2", "person", "location", "name", "entities", "id"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["articles", "id", "entities", "name", "type", "salience", "mentions"])
            | st.text(max_size=5),
            children,
            max_size=5,
        )
    ),
    max_leaves=25,
)
reasons = st.none() | st.sampled_from(["STOP", "MAX_TOKENS", "SAFETY", "OTHER", ""]) | st.text()


@given(st.text(), reasons, reasons, ids_strategy)
def test_any_text_gives_exactly_the_expected_ids(
    text: str, finish: str | None, block: str | None, ids: list[str]
) -> None:
    result = parse_answer(text, finish, block, ids)
    assert list(result) == list(dict.fromkeys(ids))


@given(json_values, reasons, ids_strategy, st.booleans())
def test_any_json_gives_exactly_the_expected_ids(
    value: Any, finish: str | None, ids: list[str], wrap: bool
) -> None:
    payload = {"articles": value} if wrap else value
    text = json.dumps(payload)
    for cut in (len(text), len(text) // 2):
        result = parse_answer(text[:cut], finish, None, ids)
        assert list(result) == list(dict.fromkeys(ids))
        for answer_ in result.values():
            if isinstance(answer_, Extraction):
                for e in answer_.entities:
                    assert e.name and 0.0 <= e.salience <= 1.0 and e.mentions >= 1


@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "name": st.text(min_size=1, max_size=8).filter(str.strip),
                "type": st.sampled_from([t.value for t in EntityType]),
                "salience": st.floats(0, 1),
                "mentions": st.integers(1, 50),
            }
        ),
        max_size=6,
    )
)
def test_valid_entities_round_trip(entities: list[dict[str, Any]]) -> None:
    result = parse_answer(answer(item("a1", *entities)), "STOP", None, ["a1"])
    extraction = result["a1"]
    assert isinstance(extraction, Extraction)
    total = sum(e["mentions"] for e in entities)
    assert sum(e.mentions for e in extraction.entities) == total
    keys = {(" ".join(e["name"].split()).casefold(), e["type"]) for e in entities}
    assert len(extraction.entities) == len(keys)
