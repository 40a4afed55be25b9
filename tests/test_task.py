"""The user's own extraction task: config, version, prompt, answer parsing,
the simulated provider and the fake Gemini server (over HTTP with
google-genai) answering with the configured types, the version recorded
with every result, and the refusal to mix versions in one results table."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import pytest
from cli_helpers import query, sample_lines, write_config, write_jsonl
from runtime_helpers import small_config

from tierbatch.actors.clock import ScaledClock
from tierbatch.actors.runtime import Runtime
from tierbatch.actors.sinks import CollectingSink
from tierbatch.adapters.app.cli import EXIT_OK, EXIT_USAGE, main
from tierbatch.adapters.gemini.answers import parse_answer
from tierbatch.adapters.gemini.genai_provider import GenaiProvider
from tierbatch.adapters.gemini.prompt import (
    RESPONSE_SCHEMA,
    SHARED_INSTRUCTION,
    SYSTEM_INSTRUCTION,
    task_prompt,
)
from tierbatch.adapters.simulation.fake_gemini import FakeGeminiServer
from tierbatch.adapters.simulation.gemini_emulator import FakeGeminiConfig
from tierbatch.adapters.simulation.simulated import SimulatedProvider
from tierbatch.adapters.storage.jsonl_input import parse_article
from tierbatch.adapters.storage.result_json import result_from_json, result_to_json
from tierbatch.policies.config import ConfigError, ProviderConfig, ProviderKind, parse_config
from tierbatch.policies.results import AnswerProblem, Done, Entity, Extraction
from tierbatch.policies.task import (
    EntityTypeSpec,
    ExtraField,
    FieldType,
    MixedTaskVersions,
    TaskConfig,
    check_versions,
    task_version,
)

TASK = TaskConfig(
    entity_types=(
        EntityTypeSpec("person", "a named person"),
        EntityTypeSpec("company", "a business, listed or not"),
        EntityTypeSpec("place", "a country, city or site"),
    ),
    instructions="Ignore the names of news agencies.",
    extra_fields=(
        ExtraField("role", FieldType.STRING, "a person's job or office"),
        ExtraField("listed", FieldType.BOOLEAN, "whether a company is listed"),
        ExtraField("founded", FieldType.INTEGER, "the year a company was founded"),
    ),
)
TASK_TABLE = {
    "instructions": "Ignore the names of news agencies.",
    "entity_types": [
        {"name": "person", "description": "a named person"},
        {"name": "company", "description": "a business, listed or not"},
        {"name": "place", "description": "a country, city or site"},
    ],
    "extra_fields": [
        {"name": "role", "description": "a person's job or office"},
        {"name": "listed", "type": "boolean", "description": "whether a company is listed"},
        {"name": "founded", "type": "integer", "description": "the year a company was founded"},
    ],
}


def raw_config(task: object) -> dict[str, object]:
    return {
        "global_fallback": "lite",
        "models": {"lite": {"rpm": 1, "tpm": 1, "rpd": 0}},
        "tiers": [{"name": "all", "min_priority": 0.0, "model": "lite"}],
        "composer": {"mix": {"all": 1}},
        "task": task,
    }


# ---- config and version --------------------------------------------------------


def test_the_task_section_is_read() -> None:
    assert parse_config(raw_config(TASK_TABLE)).task == TASK
    assert parse_config(raw_config({})).task == TaskConfig()


def test_task_mistakes_name_their_keys() -> None:
    bad = {
        "entity_types": [
            {"name": "Company", "description": "x"},
            {"name": "place"},
            {"name": "place", "description": "y"},
        ],
        "extra_fields": [{"name": "salience", "type": "float", "description": "z"}],
        "instructions": 3,
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(raw_config(bad))
    keys = {key for key, _ in caught.value.problems}
    assert keys == {
        "task.entity_types[0].name",
        "task.entity_types[1].description",
        "task.entity_types[2].name",
        "task.extra_fields[0].name",
        "task.extra_fields[0].type",
        "task.instructions",
    }


def test_the_version_is_a_stable_hash_of_what_shapes_the_answers() -> None:
    version = task_version(TASK)
    assert version.startswith("entities-v1-") and len(version) == len("entities-v1-") + 12
    assert task_version(replace(TASK, allow_mixed_versions=True)) == version
    changed = [
        replace(TASK, instructions="Other words."),
        replace(TASK, entity_types=TASK.entity_types[:2]),
        replace(TASK, extra_fields=()),
        replace(
            TASK,
            entity_types=(EntityTypeSpec("person", "a human"), *TASK.entity_types[1:]),
        ),
    ]
    assert len({version, *(task_version(t) for t in changed)}) == 5
    # The built-in task's version is fixed: results of every run of it share it.
    assert task_version(TaskConfig()) == "entities-v1-0598df0e6fd5"


def test_mixing_versions_is_refused_naming_them_unless_allowed() -> None:
    stored = {"": 4, "entities-v1-aaaaaaaaaaaa": 7, "entities-v1-bbbbbbbbbbbb": 2}
    with pytest.raises(MixedTaskVersions) as caught:
        check_versions(stored, "entities-v1-bbbbbbbbbbbb", allowed=False, where="db")
    message = str(caught.value)
    assert "entities-v1-aaaaaaaaaaaa (7 result(s))" in message
    assert "entities-v1-bbbbbbbbbbbb" in message and "--allow-mixed-versions" in message
    check_versions(stored, "entities-v1-bbbbbbbbbbbb", allowed=True, where="db")
    check_versions({"": 4}, "entities-v1-bbbbbbbbbbbb", allowed=False, where="db")


# ---- prompt and answers -----------------------------------------------------------


def test_the_built_in_task_sends_the_shipped_prompt_word_for_word() -> None:
    prompt = task_prompt(TaskConfig())
    assert prompt.system_instruction == SYSTEM_INSTRUCTION
    assert prompt.response_schema == RESPONSE_SCHEMA


def test_a_task_prompt_starts_with_the_shared_instructions_and_lists_the_task() -> None:
    prompt = task_prompt(TASK)
    other = task_prompt(replace(TASK, instructions="", extra_fields=()))
    for p in (prompt, other):  # the same prefix in every request of every task
        assert p.system_instruction.startswith(SHARED_INSTRUCTION + "\n")
    text = prompt.system_instruction
    assert "- company: a business, listed or not" in text
    assert "- founded (integer): the year a company was founded" in text
    assert text.endswith("Further instructions: Ignore the names of news agencies.")
    entity = prompt.response_schema["properties"]["articles"]["items"]["properties"]["entities"]
    properties = entity["items"]["properties"]
    assert properties["type"]["enum"] == ["person", "company", "place"]
    assert properties["listed"]["type"] == "BOOLEAN" and properties["role"]["type"] == "STRING"
    assert entity["items"]["required"] == ["name", "type", "salience", "mentions"]
    assert (
        RESPONSE_SCHEMA["properties"]["articles"]["items"]["properties"]["entities"]["items"][
            "properties"
        ]["type"]["enum"][0]
        == "person"
    )  # the shared schema is untouched


def answer(entities: list[dict[str, object]]) -> str:
    return json.dumps({"articles": [{"id": "a", "entities": entities}]})


def test_answers_are_read_against_the_tasks_types_and_fields() -> None:
    text = answer(
        [
            {"name": "Acme", "type": "COMPANY", "salience": 0.9, "listed": True, "founded": 1901.0},
            {"name": "Ada", "type": "person", "salience": 0.5, "role": "  chief   engineer "},
            {"name": "Mars", "type": "planet", "salience": 0.1, "unasked": 1},
        ]
    )
    (extraction,) = parse_answer(text, "STOP", None, ["a"], TASK).values()
    assert isinstance(extraction, Extraction)
    assert extraction.entities == (
        Entity("Acme", "company", 0.9, 1, fields=(("listed", True), ("founded", 1901))),
        Entity("Ada", "person", 0.5, 1, fields=(("role", "chief engineer"),)),
        Entity("Mars", "other", 0.1, 1),
    )
    wrong = answer([{"name": "Acme", "type": "company", "salience": 0.9, "listed": "yes"}])
    (problem,) = parse_answer(wrong, "STOP", None, ["a"], TASK).values()
    assert isinstance(problem, AnswerProblem) and "listed is not a boolean" in problem.detail
    # The built-in task still maps synonyms.
    (built_in,) = parse_answer(
        answer([{"name": "Acme", "type": "org", "salience": 0.9}]), "STOP", None, ["a"]
    ).values()
    assert isinstance(built_in, Extraction) and built_in.entities[0].type == "organisation"


def test_a_result_round_trips_with_its_fields_and_version() -> None:
    done = Done(
        "a",
        (Entity("Acme", "company", 0.9, 2, fields=(("listed", True),)),),
        "lite",
        "all",
        1,
        10,
        5,
        0.5,
        task_version="entities-v1-abc",
    )
    record = result_to_json(done)
    assert record["task_version"] == "entities-v1-abc"
    assert record["entities"][0]["fields"] == {"listed": True}
    assert result_from_json(json.loads(json.dumps(record))) == done


# ---- providers ---------------------------------------------------------------------


def articles(n: int):  # type: ignore[no-untyped-def]
    return [parse_article(json.loads(line)) for line in sample_lines(n)]


def check_results(sink: CollectingSink, n: int) -> None:
    done = [r for r in sink.results if isinstance(r, Done)]
    assert len(done) == n
    version = task_version(TASK)
    entities = [e for r in done for e in r.entities]
    assert entities and {r.task_version for r in done} == {version}
    assert {e.type for e in entities} <= set(TASK.type_names)
    assert len({e.type for e in entities}) > 1
    assert all(dict(e.fields).keys() == {"role", "listed", "founded"} for e in entities)


def test_the_simulated_provider_answers_the_configured_task() -> None:
    cfg = replace(small_config(extractors=2), task=TASK)
    clock = ScaledClock(10.0)
    provider = SimulatedProvider(cfg.models, clock, seed=1, latency_s=0.0, task=TASK)
    sink = CollectingSink()
    with Runtime(cfg, provider, sink, clock=clock) as runtime:
        runtime.submit(articles(40))
        assert runtime.drain(timeout=60)
    check_results(sink, 40)


def test_the_fake_server_answers_the_task_its_request_schema_asks_for() -> None:
    cfg = replace(small_config(extractors=2), task=TASK)
    clock = ScaledClock(1.0)
    server = FakeGeminiServer(FakeGeminiConfig(models=cfg.models, seed=3), clock=clock)
    base_url = server.start()
    try:
        provider = GenaiProvider(
            ProviderConfig(kind=ProviderKind.GENAI, base_url=base_url),
            api_key="test-key-123",
            task=TASK,
        )
        sink = CollectingSink()
        with Runtime(cfg, provider, sink, clock=clock) as runtime:
            runtime.submit(articles(30))
            assert runtime.drain(timeout=60)
    finally:
        server.stop()
    check_results(sink, 30)


# ---- one results table, one version ------------------------------------------------------


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_a_run_with_another_task_is_refused_on_the_same_results_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    built_in = write_config(tmp_path / "a.toml")
    own = write_config(tmp_path / "b.toml")
    with own.open("a", encoding="utf-8") as f:
        f.write('\n[task]\ninstructions = "Only people."\n')
    db = str(tmp_path / "t.sqlite")
    first = write_jsonl(tmp_path / "1.jsonl", sample_lines(10))
    second = write_jsonl(tmp_path / "2.jsonl", sample_lines(20)[10:])
    common = ("--db", db, "--no-progress")
    assert run_cli("run", str(first), "--config", str(built_in), *common)[0] == EXIT_OK
    versions = query(Path(db), "SELECT DISTINCT task_version FROM results")
    assert versions == [(task_version(TaskConfig()),)]

    code, _, err = run_cli("run", str(second), "--config", str(own), *common)
    assert code == EXIT_USAGE
    own_version = task_version(replace(TaskConfig(), instructions="Only people."))
    assert f"task version(s) {task_version(TaskConfig())} (10 result(s))" in err
    assert own_version in err
    assert query(Path(db), "SELECT COUNT(*) FROM articles") == [(10,)]  # nothing enqueued

    code, _, _ = run_cli(
        "run", str(second), "--config", str(own), "--allow-mixed-versions", *common
    )
    assert code == EXIT_OK
    rows = query(Path(db), "SELECT task_version, COUNT(*) FROM results GROUP BY 1 ORDER BY 2")
    assert sorted(n for _, n in rows) == [10, 10] and {v for v, _ in rows} == {
        task_version(TaskConfig()),
        own_version,
    }
