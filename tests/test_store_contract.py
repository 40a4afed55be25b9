"""The store contract, run against both stores: SQLite and PostgreSQL.

Leasing (order, expiry, renewal, release, strikes and the poison limit),
exactly-once results written only by the lease owner, rejects and bad
rows, status, the results sink over a store, concurrency, and property
tests over arbitrary input lines, payload rows and operation sequences.
Every test takes the ``backend`` fixture, so it runs once per store; what
only one store has (SQLite's WAL and file, PostgreSQL's SKIP LOCKED and
server) is tested in ``test_sqlite_store`` and ``test_postgres_store``.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from bad_input_data import (
    BAD_URL,
    BAD_VALUES,
    SETTINGS,
    input_line,
    is_blank,
    payload_row,
)
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from runtime_helpers import ScriptedProvider, make_articles, small_config
from store_backends import (
    Backend,
    FakeClock,
    PostgresBackend,
    SqliteBackend,
    article,
    can_store,
    done,
    failed,
    grounded_done,
)

from tierbatch.actors.clock import ScaledClock
from tierbatch.actors.ports import Sink
from tierbatch.actors.runtime import Runtime
from tierbatch.adapters.app.status_report import read_status, render_status
from tierbatch.adapters.storage.ingest import IngestReport, ingest_jsonl
from tierbatch.adapters.storage.jsonl_input import read_articles
from tierbatch.adapters.storage.open_store import read_backlog
from tierbatch.adapters.storage.queue_sql import MIGRATIONS, SCHEMA_VERSION
from tierbatch.adapters.storage.results_sink import ResultsSink
from tierbatch.adapters.storage.store import EnqueueReport, GroundingCount, ResultCount, Store
from tierbatch.policies.articles import Article
from tierbatch.policies.errors import StorageError
from tierbatch.policies.results import (
    Done,
    Failed,
    FailureReason,
    TerminalResult,
)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return SqliteBackend(tmp_path)
    return PostgresBackend(request.getfixturevalue("postgres_url"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(backend: Backend, clock: FakeClock) -> Iterator[Any]:
    with backend.open("owner-a", clock) as s:  # type: ignore[attr-defined]
        yield s


def test_both_stores_implement_the_protocol(store: Store) -> None:
    for name in Store.__dict__:
        if not name.startswith("_"):
            assert hasattr(store, name), name
    assert store.owner == "owner-a"
    assert store.path


# -- enqueue and lease ---------------------------------------------------------


def test_enqueue_counts_duplicates_and_never_replaces(store: Store) -> None:
    assert store.enqueue([article(1), article(2)]) == EnqueueReport(inserted=2, duplicates=0)
    replacement = Article(id="1", text="a different text")
    assert store.enqueue([replacement, article(3), article(3)]) == EnqueueReport(1, 2)
    (leased,) = [a for a in store.lease(10, 60) if a.id == "1"]
    assert leased.text == "text of 1"


def test_lease_returns_oldest_first_and_marks_the_rows(
    store: Store, clock: FakeClock, backend: Backend
) -> None:
    store.enqueue([article("old")])
    clock.now += 1
    store.enqueue([article(f"n{i}") for i in range(5)])
    assert [a.id for a in store.lease(3, 60)] == ["old", "n0", "n1"]
    assert [a.id for a in store.lease(10, 60)] == ["n2", "n3", "n4"]
    assert store.lease(10, 60) == []
    rows = backend.query("SELECT state, lease_owner, lease_expires, attempts FROM articles")
    assert set(rows) == {("leased", "owner-a", clock.now + 60, 1)}
    assert store.counts() == {"queued": 0, "leased": 6, "done": 0, "failed": 0}
    assert store.pending() == 6


def test_a_stored_priority_is_leased_first(store: Store) -> None:
    priorities = {"a": None, "b": 0.2, "c": 0.9, "d": None}
    store.enqueue([article(i) for i in "abcd"], priority_of=lambda a: priorities[a.id])
    assert [a.id for a in store.lease(4, 60)] == ["c", "b", "a", "d"]


def test_expired_leases_are_taken_before_queued_rows(
    store: Store, backend: Backend, clock: FakeClock
) -> None:
    store.enqueue([article("first"), article("second")], priority_of=lambda a: 0.1)
    with backend.open("owner-b", clock) as dead:  # type: ignore[attr-defined]
        assert [a.id for a in dead.lease(1, 30)] == ["first"]
    clock.now += 1
    store.enqueue([article("urgent")], priority_of=lambda a: 1.0)
    clock.now += 30
    assert [a.id for a in store.lease(2, 30)] == ["first", "urgent"]
    assert [a.id for a in store.lease(2, 30)] == ["second"]


def test_a_leased_article_round_trips_with_its_metadata(store: Store) -> None:
    original = Article(
        id="x",
        text="Body",
        title="T",
        url="https://www.bbc.co.uk/news/1",
        cluster_id="c1",
        published_at=datetime(2026, 11, 27, 9, 30, tzinfo=UTC),
        metadata={"lang": "en", "score": 3},
    )
    store.enqueue([original])
    (leased,) = store.lease(1, 60)
    assert leased == original
    assert dict(leased.metadata) == {"lang": "en", "score": 3}


def test_lease_with_a_non_positive_limit_takes_nothing(store: Store) -> None:
    store.enqueue([article(1)])
    assert store.lease(0, 60) == []
    assert store.counts()["queued"] == 1


def test_an_expired_lease_is_taken_over_by_another_owner(
    store: Store, backend: Backend, clock: FakeClock
) -> None:
    store.enqueue([article(1), article(2)])
    assert len(store.lease(2, 30)) == 2
    with backend.open("owner-b", clock) as other:  # type: ignore[attr-defined]
        assert other.lease(10, 30) == []  # still held
        clock.now += 31
        assert sorted(a.id for a in other.lease(10, 30)) == ["1", "2"]
    rows = backend.query("SELECT lease_owner, attempts FROM articles")
    assert rows == [("owner-b", 2), ("owner-b", 2)]


def test_renew_keeps_the_lease_of_the_owner_only(
    store: Store, backend: Backend, clock: FakeClock
) -> None:
    store.enqueue([article(i) for i in range(3)])
    store.lease(2, 30)
    with backend.open("owner-b", clock) as other:  # type: ignore[attr-defined]
        other.lease(1, 30)
        clock.now += 20
        assert store.renew(30) == 2
        clock.now += 20  # past the first deadline, within the renewed one
        assert other.lease(10, 30) == []  # its own lease is never "expired" to itself
        clock.now += 11
        assert [a.id for a in other.lease(10, 30)] == ["0", "1"]  # ties: insertion order


def test_release_returns_only_this_owners_leases_to_the_queue(
    store: Store, backend: Backend, clock: FakeClock
) -> None:
    store.enqueue([article(i) for i in range(4)])
    mine = store.lease(3, 60)
    with backend.open("owner-b", clock) as other:  # type: ignore[attr-defined]
        (theirs,) = other.lease(1, 60)
        assert store.release([mine[0].id, theirs.id, "unknown"]) == 1
        assert store.counts()["queued"] == 1
        assert store.release() == 2
        assert store.counts() == {"queued": 3, "leased": 1, "done": 0, "failed": 0}
        assert other.release() == 1
    assert backend.query("SELECT COUNT(*) FROM articles WHERE lease_owner IS NOT NULL") == [(0,)]
    assert [a.id for a in store.lease(10, 60)] == ["0", "1", "2", "3"]


def test_another_process_can_insert_with_only_id_and_payload(
    store: Store, backend: Backend
) -> None:
    payload = json.dumps({"id": "ext-1", "text": "from elsewhere", "feed": "rss"})
    backend.execute(
        "INSERT INTO articles (id, payload) VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
        ("ext-1", payload),
    )
    (leased,) = store.lease(5, 60)
    assert leased.id == "ext-1"
    assert dict(leased.metadata) == {"feed": "rss"}


def test_an_invalid_payload_fails_its_article_instead_of_being_leased(
    store: Store, backend: Backend
) -> None:
    backend.insert_payloads(
        [("bad", '{"id": "bad"}', "text"), ("alias", '{"id": "z", "text": "t"}', "text")]
    )
    store.enqueue([article("good")])
    assert [a.id for a in store.lease(10, 60)] == ["good"]
    results = {r.article_id: r for r in store.results()}
    assert set(results) == {"bad", "alias"}
    for result in results.values():
        assert isinstance(result, Failed)
        assert result.reason is FailureReason.BAD_REQUEST
    assert "missing field 'text'" in results["bad"].detail
    assert store.counts() == {"queued": 0, "leased": 1, "done": 0, "failed": 2}


def test_poison_row_after_poison_after_leases(backend: Backend, clock: FakeClock) -> None:
    """A row whose daemons keep dying while they hold it ends ``poison``
    after ``poison_after`` leases, instead of killing every next daemon."""
    with backend.open("producer", clock) as producer:  # type: ignore[attr-defined]
        producer.enqueue([article("p"), article("ok")])
    for n in range(3):
        with backend.open(f"daemon-{n}", clock) as daemon:  # type: ignore[attr-defined]
            taken = [a.id for a in daemon.lease(10, 30, poison_after=3)]
            assert "p" in taken
            if n == 0:
                assert daemon.write_results([done("ok")]) == 1
        clock.now += 31  # it died holding the lease
    with backend.open("daemon-3", clock) as daemon:  # type: ignore[attr-defined]
        assert daemon.lease(10, 30, poison_after=3) == []
        results = {r.article_id: r for r in daemon.results()}
        poison = results["p"]
        assert isinstance(poison, Failed)
        assert poison.reason is FailureReason.POISON
        assert "leased 3 times without a result" in poison.detail
        assert "retry.poison_after = 3" in poison.detail
        assert daemon.counts() == {"queued": 0, "leased": 0, "done": 1, "failed": 1}


def test_a_graceful_release_is_not_a_strike(store: Store, backend: Backend) -> None:
    store.enqueue([article(1)])
    for _ in range(5):
        assert [a.id for a in store.lease(1, 30, poison_after=2)] == ["1"]
        assert store.release() == 1
    assert backend.query("SELECT state, attempts FROM articles") == [("queued", 0)]
    store.lease(1, 30, poison_after=2)
    assert store.release(["1"]) == 1  # by id too
    assert [a.id for a in store.lease(1, 30, poison_after=2)] == ["1"]
    assert store.write_results([done("1")]) == 1


def test_its_own_expired_lease_is_neither_taken_back_nor_a_strike(
    store: Store, backend: Backend, clock: FakeClock
) -> None:
    """A live daemon whose renewal came late (or whose wall clock stepped)
    has not crashed: it keeps its lease; another owner takes it over."""
    store.enqueue([article(1)])
    assert [a.id for a in store.lease(1, 30, poison_after=2)] == ["1"]
    clock.now += 31
    assert store.lease(1, 30, poison_after=2) == []
    assert backend.query("SELECT attempts FROM articles") == [(1,)]
    with backend.open("owner-b", clock) as other:  # type: ignore[attr-defined]
        assert [a.id for a in other.lease(1, 30, poison_after=2)] == ["1"]
    assert backend.query("SELECT attempts FROM articles") == [(2,)]


def test_a_row_under_the_poison_limit_is_leased_again(backend: Backend, clock: FakeClock) -> None:
    with backend.open("a", clock) as first:  # type: ignore[attr-defined]
        first.enqueue([article(1)])
        first.lease(1, 30, poison_after=2)
    clock.now += 31
    with backend.open("b", clock) as second:  # type: ignore[attr-defined]
        assert [a.id for a in second.lease(1, 30, poison_after=2)] == ["1"]
        assert second.write_results([done("1")]) == 1
        assert second.counts()["done"] == 1
    with pytest.raises(ValueError, match="poison_after"):
        second.lease(1, 30, poison_after=0)


def test_stale_lease_owner_result_is_dropped(
    store: Store, backend: Backend, clock: FakeClock
) -> None:
    """A daemon whose lease expired and was taken over cannot settle the
    article ahead of the new owner: its result is dropped and counted."""
    store.enqueue([article(1)])
    store.lease(1, 30)
    clock.now += 31
    with backend.open("owner-b", clock) as new_owner:  # type: ignore[attr-defined]
        assert [a.id for a in new_owner.lease(1, 30)] == ["1"]
        assert store.write_results([failed("1")]) == 0
        assert store.stale_results == 1
        assert store.counts()["leased"] == 1
        assert new_owner.write_results([done("1")]) == 1
        assert list(new_owner.results()) == [done("1")]
        assert new_owner.duplicate_results == 0
    assert store.refused_results() == {"stale_results": 1, "duplicate_results": 0}
    assert store.counts() == {"queued": 0, "leased": 0, "done": 1, "failed": 0}


def test_an_expired_lease_nobody_took_over_still_takes_its_owners_result(
    store: Store, clock: FakeClock
) -> None:
    store.enqueue([article(1)])
    store.lease(1, 30)
    clock.now += 3600
    assert store.write_results([done("1")]) == 1
    assert store.stale_results == 0
    assert store.counts()["done"] == 1


def test_a_result_for_a_row_handed_back_to_the_queue_is_stale(store: Store) -> None:
    store.enqueue([article(1), article(2)])
    store.lease(2, 30)
    store.release(["1"])
    assert store.write_results([done("1"), done("2")]) == 1
    assert store.stale_results == 1
    assert store.counts() == {"queued": 1, "leased": 0, "done": 1, "failed": 0}


def test_status_shows_the_results_refused(
    store: Store, backend: Backend, clock: FakeClock, tmp_path: Path
) -> None:
    store.enqueue([article(1), article(2), article(3)])
    store.lease(3, 30)
    store.release(["1"])
    store.write_results([done("1"), done("2")])
    store.write_results([done("2")])
    status = read_status(backend.db, tmp_path / "none.msgpack", small_config(), now=clock.now + 31)
    assert (status.stale_results, status.duplicate_results) == (1, 1)
    assert status.states == {"queued": 1, "leased": 1, "done": 1, "failed": 0}
    assert status.expired_leases == 1
    assert status.to_json()["stale_results"] == 1
    text = io.StringIO()
    render_status(status, text)
    assert (
        "results refused: 1 from a stale lease owner (dropped), 1 duplicate(s)" in text.getvalue()
    )


# -- results -------------------------------------------------------------------


def test_write_results_marks_articles_terminal_and_round_trips(
    store: Store, backend: Backend
) -> None:
    store.enqueue([article(1), article(2), article(3)])
    store.lease(3, 60)
    results: list[TerminalResult] = [done("1"), failed("2")]
    assert store.write_results(results) == 2
    assert store.counts() == {"queued": 0, "leased": 1, "done": 1, "failed": 1}
    assert list(store.results()) == results
    (back,) = store.results(["1"])
    assert isinstance(back, Done)
    assert dict(back.metadata) == {"lang": "en"}
    rows = backend.query("SELECT lease_owner, lease_expires FROM articles WHERE id IN ('1', '2')")
    assert set(rows) == {(None, None)}
    assert store.pending() == 1


def test_a_second_terminal_write_is_ignored_and_counted(store: Store) -> None:
    store.enqueue([article(1)])
    store.lease(1, 60)
    assert store.write_results([done("1")]) == 1
    assert store.write_results([failed("1"), done("1", model="other")]) == 0
    assert store.duplicate_results == 2
    assert list(store.results()) == [done("1")]
    assert store.counts()["done"] == 1
    assert store.counts()["failed"] == 0


def test_the_first_of_two_results_in_one_batch_wins(store: Store) -> None:
    store.enqueue([article(1)])
    store.lease(1, 60)
    assert store.write_results([failed("1"), done("1")]) == 1
    assert list(store.results()) == [failed("1")]
    assert store.refused_results() == {"stale_results": 0, "duplicate_results": 1}


def test_results_for_articles_not_in_the_queue_are_stored(store: Store) -> None:
    assert store.write_results([done("submitted-directly")]) == 1
    assert [r.article_id for r in store.results()] == ["submitted-directly"]


def test_result_counts_group_by_status_tier_and_model(store: Store) -> None:
    store.write_results([done("1"), done("2"), done("3", model="b"), failed("4")])
    assert store.result_counts() == [
        ResultCount("done", "high", "b", 1, 100, 20, pytest.approx(0.001)),  # type: ignore[arg-type]
        ResultCount("done", "high", "gemini-a", 2, 200, 40, pytest.approx(0.002)),  # type: ignore[arg-type]
        ResultCount("failed", "low", "gemini-a", 1, 0, 0, 0.0),
    ]


def test_grounding_counts_pack_size_and_flags_round_trip(store: Store, backend: Backend) -> None:
    results = [grounded_done("1"), done("2"), failed("3")]
    assert store.write_results(results) == 3
    assert list(store.results()) == results
    rows = backend.query(
        "SELECT article_id, pack_size, grounded, cross_article, ungrounded, entities"
        " FROM results ORDER BY article_id"
    )
    assert [row[:5] for row in rows] == [
        ("1", 4, 1, 2, 1),
        ("2", None, None, None, None),  # no check: a result as older versions wrote it
        ("3", None, None, None, None),
    ]
    flags = [e.get("flag") for e in json.loads(rows[0][5])]
    assert flags == [None, "ungrounded"]  # only a flagged entity carries the key


def test_status_shows_the_grounding_shares_per_tier_model_and_pack_size(
    store: Store, backend: Backend, clock: FakeClock, tmp_path: Path
) -> None:
    store.write_results(
        [grounded_done("1"), grounded_done("2"), grounded_done("3", pack_size=1), done("4")]
    )
    status = read_status(backend.db, tmp_path / "none.msgpack", small_config(), now=clock.now)
    assert status.grounding == (
        GroundingCount("high", "gemini-a", 1, 1, 1, 2, 1),
        GroundingCount("high", "gemini-a", 4, 2, 2, 4, 2),
    )
    assert status.grounding[1].cross_article_share == 0.5
    assert status.to_json()["grounding"][0]["cross_article"] == 2
    text = io.StringIO()
    render_status(status, text)
    out = text.getvalue()
    assert "grounding" in out
    assert "50.0%" in out and "25.0%" in out  # cross-article and ungrounded shares


def test_a_database_of_schema_version_1_is_migrated_in_place(
    backend: Backend, clock: FakeClock, tmp_path: Path
) -> None:
    backend.create_v1()
    old_entities = '[{"name":"Ada","type":"person","salience":0.9,"mentions":1}]'
    backend.execute(
        "INSERT INTO results (article_id, status, entities, model, tier, attempts, input_tokens,"
        " output_tokens, latency_s, cost_usd, fallback, finished_at)"
        " VALUES ('old', 'done', ?, 'gemini-a', 'high', 1, 10, 2, 0.5, 0.0, 0, 1.0)",
        (old_entities,),
    )
    version = "SELECT value FROM meta WHERE key = 'schema_version'"
    # status only looks: a version-1 database is read as it is, not migrated
    status = read_status(backend.db, tmp_path / "none.msgpack", small_config(), now=clock.now)
    assert status.states["done"] == 0 and status.grounding == ()
    assert backend.query(version) == [("1",)]
    with backend.open("owner-a", clock) as store:  # type: ignore[attr-defined]
        assert backend.query(version) == [(str(SCHEMA_VERSION),)]
        (old,) = store.results()
        assert isinstance(old, Done)
        assert (old.grounding, old.pack_size, old.entities[0].flag) == (None, 0, None)
        assert old.task_version == ""
        assert store.write_results([grounded_done("new")]) == 1
        assert list(store.results(["new"])) == [grounded_done("new")]
    with backend.open("owner-b", clock) as again:  # type: ignore[attr-defined]
        assert [r.article_id for r in again.results()] == ["old", "new"]
    assert backend.query(version) == [(str(SCHEMA_VERSION),)]
    assert backend.query("SELECT COUNT(*) FROM batch_jobs") == [(0,)]  # version 4's table
    status = read_status(backend.db, tmp_path / "none.msgpack", small_config(), now=clock.now)
    assert status.grounding == (GroundingCount("high", "gemini-a", 4, 1, 1, 2, 1),)


def test_a_database_of_schema_version_2_gains_task_versions_in_place(
    backend: Backend, clock: FakeClock
) -> None:
    backend.create_v1()
    for statement in MIGRATIONS[1]:  # what version 2 was
        backend.execute(statement)
    backend.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    backend.execute(
        "INSERT INTO results (article_id, status, entities, model, tier, attempts, input_tokens,"
        " output_tokens, latency_s, cost_usd, fallback, finished_at)"
        " VALUES ('old', 'done', '[]', 'gemini-a', 'high', 1, 10, 2, 0.5, 0.0, 0, 1.0)",
    )
    with backend.open("owner-a", clock) as store:  # type: ignore[attr-defined]
        (old,) = store.results()
        assert isinstance(old, Done) and old.task_version == ""
        new = replace(grounded_done("new"), task_version="entities-v1-abc")
        assert store.write_results([new]) == 1
        assert list(store.results(["new"])) == [new]
        assert store.task_versions() == {"": 1, "entities-v1-abc": 1}
    assert backend.query("SELECT value FROM meta WHERE key = 'schema_version'") == [
        (str(SCHEMA_VERSION),)
    ]


def test_results_pages_through_many_rows_and_filters_by_id(store: Store) -> None:
    store.write_results([done(str(i)) for i in range(2500)])
    assert [r.article_id for r in store.results()] == [str(i) for i in range(2500)]
    wanted = [str(i) for i in range(0, 2500, 3)] + ["missing"]
    assert sorted(r.article_id for r in store.results(wanted)) == sorted(wanted[:-1])


def test_result_text_the_database_cannot_hold_is_stored_replaced(store: Store) -> None:
    """A failure detail quoting a NUL (PostgreSQL text cannot hold one) is
    still written: a result is never lost for its text."""
    odd = Failed(
        article_id="1", reason=FailureReason.BAD_REQUEST, detail="a\x00b", tier="", attempts=0
    )
    assert store.write_results([odd]) == 1
    (back,) = store.results()
    assert isinstance(back, Failed) and back.detail in ("a\x00b", "a\ufffdb")


def test_rejects_and_jsonl_ingest(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    lines = [
        json.dumps({"id": "a", "text": "t"}),
        "not json",
        json.dumps({"id": "b", "text": "t"}),
        json.dumps({"id": "a", "text": "again"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    store.enqueue([article("b")])
    report = ingest_jsonl(store, path, batch_size=2)
    assert report == IngestReport(inserted=1, duplicates=1, rejected=2)
    rejects = store.rejects(str(path))
    assert [(r.line_no, r.reason.split(":")[0]) for r in rejects] == [
        (2, "not JSON"),
        (4, "duplicate id 'a' (first seen on line 1)"),
    ]
    assert store.rejects("other") == []
    assert store.counts()["queued"] == 2


def test_an_id_holding_a_nul_character_is_rejected_not_stored(store: Store) -> None:
    """Such an id made PostgreSQL refuse the whole enqueue batch (text
    cannot hold NUL) and so stopped ingest; now both stores reject the line
    alone, and a raw NUL byte in a rejected line is recorded too."""
    data = (
        b'{"id": "a\\u0000b", "text": "t"}\n'
        b'{"id": "ok", "text": "t"}\n'
        b'{"id": "raw", "text": "a\x00b"}\n'
    )
    report = ingest_jsonl(store, io.BytesIO(data), source_name="nul")
    assert (report.inserted, report.rejected) == (1, 2)
    reasons = {r.line_no: r.reason for r in store.rejects("nul")}
    assert reasons[1].startswith("field 'id': contains a NUL character")
    assert reasons[3].startswith("not JSON")
    assert [a.id for a in store.lease(10, 60)] == ["ok"]
    with pytest.raises(ValueError, match="NUL"):
        store.enqueue([Article(id="x\x00y", text="t")])


# -- bad rows ------------------------------------------------------------------


def test_bad_url_line_is_rejected_not_raised(store: Store) -> None:
    good = b'{"id": "g", "text": "t", "url": "https://www.example.com/a"}'
    report = ingest_jsonl(store, io.BytesIO(BAD_URL + b"\n" + good + b"\n"))
    assert (report.inserted, report.rejected) == (1, 1)
    (reject,) = store.rejects()
    assert reject.line_no == 1
    assert reject.reason == "field 'url': not a valid URL: Invalid IPv6 URL"
    assert [a.domain for a in store.lease(10, 60)] == ["example.com"]


def test_bad_url_row_fails_instead_of_stopping_every_lease(store: Store, backend: Backend) -> None:
    backend.insert_payloads([("x", BAD_URL, "text")])
    store.enqueue([Article(id="good", text="t")])
    assert [a.id for a in store.lease(10, 60)] == ["good"]
    (result,) = store.results()
    assert isinstance(result, Failed)
    assert result.article_id == "x"
    assert result.reason is FailureReason.BAD_REQUEST
    assert "field 'url': not a valid URL" in result.detail
    store.enqueue([Article(id="later", text="t")])
    assert [a.id for a in store.lease(10, 60)] == ["later"]  # leasing goes on
    assert store.counts() == {"queued": 0, "leased": 2, "done": 0, "failed": 1}


def test_every_class_of_bad_row_fails_naming_the_field(store: Store, backend: Backend) -> None:
    """Each bad value, stored every way another process can store it in
    this database (SQLite: TEXT, TEXT that is not UTF-8, BLOB)."""
    rows: list[tuple[object, object, str]] = []
    expected: dict[str, str] = {}
    for i, (line, reason) in enumerate(BAD_VALUES):
        for kind in ("text", "raw-text", "blob"):
            if kind == "text" and not can_store(backend, line, "text"):
                continue
            if kind == "raw-text" and can_store(backend, line, "text"):
                continue  # valid UTF-8 text: the 'text' row covers it
            if can_store(backend, line, kind):
                rows.append((f"{kind}{i}", line, kind))
                expected[f"{kind}{i}"] = reason
    huge = b'{"id": "huge", "text": "' + b"x" * 1_000_001 + b'"}'
    rows += [("huge", huge, "text"), ("alias", b'{"id": "other", "text": "t"}', "text")]
    backend.insert_payloads(rows)
    store.enqueue([Article(id="good", text="t")])
    assert [a.id for a in store.lease(100, 60)] == ["good"]
    results = {r.article_id: r for r in store.results()}
    assert set(results) == {row_id for row_id, _, _ in rows}
    for result in results.values():
        assert isinstance(result, Failed) and result.reason is FailureReason.BAD_REQUEST
    for row_id, reason in expected.items():
        assert reason in results[row_id].detail or "not UTF-8" in results[row_id].detail, (
            row_id,
            results[row_id].detail,
        )
    assert f"payload is {len(huge)} bytes, over the 1000000 limit" in results["huge"].detail
    assert "payload id is 'other'" in results["alias"].detail
    assert store.counts()["failed"] == len(results)


def test_a_row_whose_id_is_blank_is_failed_not_leased_forever(
    store: Store, backend: Backend
) -> None:
    """A blank id can carry no result: the row is set aside as failed."""
    backend.insert_payloads([(" ", '{"id": " ", "text": "t"}', "text"), ("", "{}", "text")])
    store.enqueue([Article(id="good", text="t")])
    assert [a.id for a in store.lease(10, 60)] == ["good"]
    assert store.lease(10, 60) == []
    assert list(store.results()) == []
    assert store.counts() == {"queued": 0, "leased": 1, "done": 0, "failed": 2}


def test_the_backlog_prewarm_skips_payloads_that_are_not_json_text(
    store: Store, backend: Backend
) -> None:
    rows = [
        ("broken", b'{"cluster_id": "c",', "text"),
        ("array", b'["cluster_id"]', "text"),
        ("scalar", b'"cluster_id"', "text"),
        ("early", b'{"cluster_id": 7, "published_at": "yesterday"}', "text"),
        ("dated", b'{"cluster_id": "d", "published_at": "2026-11-27T10:15:00Z"}', "text"),
        ("blob", b'{"id": "blob", "text": "t", "cluster_id": "c"}', "blob"),
        ("latin", b'{"id": "latin", "cluster_id": "caf\xe9"}', "raw-text"),
    ]
    backend.insert_payloads([row for row in rows if can_store(backend, row[1], row[2])])
    backlog = store.cluster_backlog(10)
    assert ("early", "7", None) in backlog
    assert ("dated", "d", datetime(2026, 11, 27, 10, 15, tzinfo=UTC).timestamp()) in backlog
    assert {article_id for article_id, _, _ in backlog} <= {"early", "dated", "latin"}


# -- concurrency ---------------------------------------------------------------


def test_two_owners_leasing_concurrently_never_share_a_row(
    backend: Backend, clock: FakeClock
) -> None:
    with backend.open("seed", clock) as seed:  # type: ignore[attr-defined]
        seed.enqueue(article(i) for i in range(600))
    start = threading.Barrier(3)

    def drain(owner: str) -> list[str]:
        taken: list[str] = []
        with backend.open(owner, clock) as store:  # type: ignore[attr-defined]
            start.wait()
            while batch := store.lease(7, 600):
                taken += [a.id for a in batch]
        return taken

    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(drain, f"owner-{n}") for n in range(3)]
        taken = [f.result(timeout=30) for f in futures]
    every = [i for ids in taken for i in ids]
    assert len(every) == len(set(every)) == 600


# -- the results sink ------------------------------------------------------------


class WrappedStore:
    """A store whose ``write_results`` a test can watch or break; the rest
    is the real store's."""

    def __init__(self, inner: Any, failures: int = 0) -> None:
        self.inner = inner
        self.failures_left = failures
        self.calls = 0
        self.wrote = threading.Event()
        self.writer_threads: set[str] = set()
        self._calls_lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def write_results(self, results: Sequence[TerminalResult]) -> int:
        with self._calls_lock:
            self.calls += 1
            fail = self.failures_left > 0
            self.failures_left -= fail
        if fail:
            raise StorageError(f"{self.inner.path}: write failed: database is locked")
        new = int(self.inner.write_results(results))
        self.writer_threads.add(threading.current_thread().name)
        self.wrote.set()
        return new


def result_counts(backend: Backend) -> dict[str, int]:
    return dict(backend.query("SELECT article_id, COUNT(*) FROM results GROUP BY article_id"))


def test_results_sink_is_a_sink(store: Store) -> None:
    sink = ResultsSink(store)
    assert isinstance(sink, Sink)
    sink.close()


def test_results_sink_buffers_until_full_then_writes(store: Store) -> None:
    sink = ResultsSink(store, flush_every=3, flush_interval_s=3600)
    sink.write([done("1"), done("2")])
    assert list(store.results()) == []
    sink.write([done("3")])
    assert [r.article_id for r in store.results()] == ["1", "2", "3"]
    sink.write([done("4")])
    sink.flush()
    assert len(list(store.results())) == 4
    sink.close()
    assert sink.written == 4


def test_results_sink_writes_old_results_from_its_own_thread(store: Store) -> None:
    watched = WrappedStore(store)
    store.enqueue([article(1)])
    store.lease(1, 60)
    sink = ResultsSink(watched, flush_every=1000, flush_interval_s=0.01)  # type: ignore[arg-type]
    sink.write([done("1")])
    assert watched.wrote.wait(timeout=5)
    assert watched.writer_threads == {"tierbatch-results-flusher"}
    assert store.counts()["done"] == 1  # the main thread's connection sees it
    sink.close()


def test_results_sink_close_flushes_and_leaves_no_thread(store: Store) -> None:
    sink = ResultsSink(store, flush_every=1000, flush_interval_s=3600)
    sink.write([done("1"), failed("2")])
    sink.close()
    assert len(list(store.results())) == 2
    assert not any(t.name == "tierbatch-results-flusher" for t in threading.enumerate())
    with pytest.raises(StorageError, match="closed"):
        sink.write([done("3")])


def test_the_sink_writes_from_another_thread_while_the_main_thread_leases(store: Store) -> None:
    store.enqueue(article(i) for i in range(300))
    sink = ResultsSink(store, flush_every=16, flush_interval_s=3600)
    with ThreadPoolExecutor(1, thread_name_prefix="composer") as composer:
        while batch := store.lease(25, 60):
            composer.submit(sink.write, [done(a.id) for a in batch]).result()
        composer.submit(sink.close).result()
    assert store.counts() == {"queued": 0, "leased": 0, "done": 300, "failed": 0}


def test_failed_flush_never_writes_twice(store: Store, backend: Backend) -> None:
    """Results whose write failed are retried once per attempt, by the sink
    alone: none is stored twice (nor counted as a duplicate), none lost."""
    articles = make_articles(60)
    flaky = WrappedStore(store, failures=2)
    sink = ResultsSink(flaky, flush_every=1, flush_interval_s=3600)  # type: ignore[arg-type]
    with Runtime(small_config(), ScriptedProvider(), sink, clock=ScaledClock(20)) as rt:
        rt.submit(articles)
        assert rt.drain(timeout=30)
        # The first write that succeeds comes after both failures (stop()
        # flushes the sink, and would report a failure still pending).
        assert flaky.wrote.wait(timeout=10)
    sink.close()
    assert flaky.failures_left == 0
    assert store.duplicate_results == 0
    assert result_counts(backend) == {a.id: 1 for a in articles}


def test_failed_flush_at_the_tail_does_not_stall_the_drain(store: Store, backend: Backend) -> None:
    """The last write fails and no result follows it: the sink retries it by
    itself, and the drain does not wait for a retry nobody would make."""
    (only,) = make_articles(1)
    flaky = WrappedStore(store, failures=1)
    sink = ResultsSink(flaky, flush_every=1, flush_interval_s=3600)  # type: ignore[arg-type]
    with Runtime(small_config(), ScriptedProvider(), sink, clock=ScaledClock(20)) as rt:
        rt.submit([only])
        assert rt.drain(timeout=10)
        assert flaky.wrote.wait(timeout=10)  # the background retry
    sink.close()
    assert flaky.calls == 2
    assert result_counts(backend) == {only.id: 1}


def test_results_sink_write_never_raises_and_retries_with_backoff(store: Store) -> None:
    flaky = WrappedStore(store, failures=3)
    sink = ResultsSink(flaky, flush_every=1, flush_interval_s=3600, retry_s=0.001)  # type: ignore[arg-type]
    sink.write([done("1")])  # the inline write fails: kept, not raised
    sink.write([done("2")])
    assert flaky.wrote.wait(timeout=10)
    sink.close()
    assert flaky.calls == 4
    assert sink.written == 2 and sink.unwritten == 0
    assert [r.article_id for r in store.results()] == ["1", "2"]


# -- property tests ----------------------------------------------------------------

_PER_BACKEND = hypothesis_settings(
    SETTINGS,
    suppress_health_check=[*SETTINGS.suppress_health_check, HealthCheck.function_scoped_fixture],
)


@_PER_BACKEND
@given(lines=st.lists(input_line(), min_size=1, max_size=8))
def test_arbitrary_input_lines_end_queued_or_rejected(backend: Backend, lines: list[bytes]) -> None:
    backend.reset()
    data = b"\n".join(lines) + b"\n"
    with backend.open("o") as store:  # type: ignore[attr-defined]
        report = ingest_jsonl(store, io.BytesIO(data), batch_size=3)
        rejected = [r.line_no for r in store.rejects()]
        queued = {row_id for (row_id,) in backend.query("SELECT id FROM articles")}
        nonblank = [n for n, line in enumerate(lines, 1) if not is_blank(n, line)]
        assert len(rejected) == len(set(rejected)) == report.rejected
        assert set(rejected) <= set(nonblank)
        assert report.inserted == len(queued) == len(nonblank) - len(rejected)
        assert report.duplicates == 0
        for n in set(nonblank) - set(rejected):
            article_id = json.loads(lines[n - 1])["id"]
            assert str(article_id) in queued
        assert store.counts()["queued"] == len(queued)
        # What was queued can be leased back, every row of it.
        assert {a.id for a in store.lease(100, 60)} == queued
    # A text stream (undecodable bytes kept as surrogate escapes) reads the same.
    text = data.decode("utf-8", "surrogateescape")
    items = list(read_articles(io.StringIO(text, newline="\n")))
    assert len(items) == len(nonblank)


@_PER_BACKEND
@given(data=st.data())
def test_arbitrary_payload_rows_end_leased_or_failed(backend: Backend, data: st.DataObject) -> None:
    backend.reset()
    count = data.draw(st.integers(1, 8))
    rows = [data.draw(payload_row(f"r{i}", backend.payload_kinds)) for i in range(count)]
    with backend.open("o") as store:  # type: ignore[attr-defined]
        backend.insert_payloads(rows)
        leased: list[str] = []
        while batch := store.lease(data.draw(st.integers(1, 4)), 60, poison_after=3):
            leased += [a.id for a in batch]
        failures = {r.article_id: r for r in store.results()}
        assert len(leased) == len(set(leased))
        assert set(leased).isdisjoint(failures)
        assert set(leased) | set(failures) == {row_id for row_id, _, _ in rows}
        for result in failures.values():
            assert isinstance(result, Failed)
            assert result.reason is FailureReason.BAD_REQUEST
            assert result.detail.startswith("invalid payload in the articles table: ")
        assert store.counts() == {
            "queued": 0,
            "leased": len(leased),
            "done": 0,
            "failed": len(failures),
        }


class QueueMachine(RuleBasedStateMachine):
    """Random enqueue/lease/renew/release/finish/expire sequences by two owners:
    a valid lease is never granted twice, every article is in exactly one
    state, and each has at most one result."""

    LEASE_S = 30.0
    backend: Backend

    def __init__(self) -> None:
        super().__init__()
        self.backend.reset()
        self.clock = FakeClock()
        self.stores = [self.backend.open(f"o{n}", self.clock) for n in range(2)]
        self.enqueued: set[str] = set()
        self.leases: dict[str, tuple[int, float]] = {}  # id -> (owner, deadline)
        self.finished: dict[str, str] = {}
        self.next_id = 0

    def held(self, who: int) -> list[str]:
        return sorted(i for i, (owner, _) in self.leases.items() if owner == who)

    @rule(count=st.integers(1, 6))
    def enqueue(self, count: int) -> None:
        ids = [str(self.next_id + i) for i in range(count)]
        self.next_id += count
        self.stores[0].enqueue(article(i) for i in ids)
        self.enqueued.update(ids)

    @rule(who=st.integers(0, 1), limit=st.integers(1, 5))
    def lease(self, who: int, limit: int) -> None:
        got = [a.id for a in self.stores[who].lease(limit, self.LEASE_S)]
        for article_id in got:
            assert article_id not in self.finished
            if article_id in self.leases:
                assert self.leases[article_id][1] < self.clock.now  # only expired leases
            self.leases[article_id] = (who, self.clock.now + self.LEASE_S)

    @rule(who=st.integers(0, 1), ok=st.booleans(), data=st.data())
    def finish(self, who: int, ok: bool, data: st.DataObject) -> None:
        if not self.held(who):
            return
        article_id = data.draw(st.sampled_from(self.held(who)))
        new = self.stores[who].write_results([done(article_id) if ok else failed(article_id)])
        assert new == 1
        self.finished[article_id] = "done" if ok else "failed"
        del self.leases[article_id]

    @rule(who=st.integers(0, 1), data=st.data())
    def finish_stale(self, who: int, data: st.DataObject) -> None:
        """A result from the owner that is not (or no longer) the holder."""
        theirs = self.held(1 - who)
        if not theirs:
            return
        article_id = data.draw(st.sampled_from(theirs))
        before = self.stores[who].stale_results
        assert self.stores[who].write_results([failed(article_id)]) == 0
        assert self.stores[who].stale_results == before + 1

    @rule(who=st.integers(0, 1))
    def finish_again(self, who: int) -> None:
        """A late duplicate result (e.g. from a daemon that lost its lease)."""
        if self.finished:
            article_id = min(self.finished)
            assert self.stores[who].write_results([failed(article_id)]) == 0

    @rule(who=st.integers(0, 1))
    def release(self, who: int) -> None:
        assert self.stores[who].release() == len(self.held(who))
        for article_id in self.held(who):
            del self.leases[article_id]

    @rule(who=st.integers(0, 1))
    def renew(self, who: int) -> None:
        assert self.stores[who].renew(self.LEASE_S) == len(self.held(who))
        for article_id in self.held(who):
            self.leases[article_id] = (who, self.clock.now + self.LEASE_S)

    @rule(seconds=st.sampled_from([1.0, 31.0]))
    def advance(self, seconds: float) -> None:
        self.clock.now += seconds

    @invariant()
    def every_article_is_in_one_state(self) -> None:
        counts = self.stores[1].counts()
        assert sum(counts.values()) == len(self.enqueued)
        assert counts["leased"] == len(self.leases)
        assert counts["done"] == sum(1 for s in self.finished.values() if s == "done")
        assert counts["failed"] == sum(1 for s in self.finished.values() if s == "failed")
        assert self.stores[0].pending() == len(self.enqueued) - len(self.finished)

    def teardown(self) -> None:
        results = {r.article_id: r for r in self.stores[0].results()}
        assert {i: "done" if r.ok else "failed" for i, r in results.items()} == self.finished
        for store in self.stores:
            store.close()


def test_queue_state_machine(backend: Backend) -> None:
    machine = type("BoundQueueMachine", (QueueMachine,), {"backend": backend})
    run_state_machine_as_test(
        machine,
        settings=hypothesis_settings(
            max_examples=25,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


# -- the backlog, for tierbatch plan ---------------------------------------------


def test_read_backlog_gives_the_queued_and_leased_articles(store: Store, backend: Backend) -> None:
    store.enqueue([article(i, cluster_id=f"c{i % 2}") for i in range(1, 6)])
    store.lease(2, 60)  # 1 and 2: leased, still to be done
    store.write_results([done("1")])  # 1 is done: no longer backlog
    backend.insert_payloads([("bad", b"not json", "text")])
    articles, unusable = read_backlog(backend.db)
    assert sorted(a.id for a in articles) == ["2", "3", "4", "5"]
    assert {a.id: a.cluster_id for a in articles}["4"] == "c0"
    assert unusable == 1
    # Read-only: nothing changed.
    assert store.counts() == {"queued": 4, "leased": 1, "done": 1, "failed": 0}


def test_read_backlog_of_a_missing_database_names_it(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no such database"):
        read_backlog(tmp_path / "missing.sqlite")
