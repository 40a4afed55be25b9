"""What the SQLite and PostgreSQL stores share of their SQL: the schema
version and its migrations, the statements both dialects accept (written with ``?``
placeholders; ``to_format_params`` turns them into psycopg's ``%s``), the
result row codec and the read-only look ``tierbatch status`` takes.

The schema (``schema``) is one template: each dialect's module
(``sqlite_schema``, ``postgres_schema``) fills in its types.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from tierbatch.adapters.storage.result_json import (
    DONE,
    FAILED,
    dumps,
    result_from_json,
    result_to_json,
)
from tierbatch.adapters.storage.store import (
    BatchReport,
    GroundingCount,
    IncompatibleSchemaError,
    QueueReport,
    ResultCount,
    refused_counts,
)
from tierbatch.policies.batch_jobs import JobPhase
from tierbatch.policies.errors import StorageError
from tierbatch.policies.results import TerminalResult

SCHEMA_VERSION = 4
STATES = ("queued", "leased", "done", "failed")

# What brings a database of an older version to the next one, in place
# (run in the store's schema transaction, then the version is updated).
# Version 2 stores the grounding check with each result: the request's
# pack size and the per-article counts (NULL in rows written before).
# Version 3 stores the extraction task's version with each result
# (``policies.task``; NULL in rows written before).
# Version 4 adds the Batch API's jobs (``batch_jobs``, see ``batch_store``).
BATCH_JOBS_TABLE = """CREATE TABLE IF NOT EXISTS batch_jobs (
        id TEXT PRIMARY KEY,
        name TEXT,
        phase TEXT NOT NULL
            CHECK (phase IN ('submitting', 'submitted', 'settled', 'returned')),
        tier TEXT NOT NULL,
        model TEXT NOT NULL,
        requests TEXT NOT NULL,
        articles INTEGER NOT NULL,
        api_state TEXT,
        poller TEXT,
        poll_expires DOUBLE PRECISION,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION,
        cost_usd DOUBLE PRECISION,
        interactive_cost_usd DOUBLE PRECISION,
        detail TEXT
    )"""
BATCH_JOBS_INDEX = "CREATE INDEX IF NOT EXISTS batch_jobs_phase ON batch_jobs (phase)"
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: tuple(
        f"ALTER TABLE results ADD COLUMN {column} INTEGER"
        for column in ("pack_size", "grounded", "cross_article", "ungrounded")
    ),
    2: ("ALTER TABLE results ADD COLUMN task_version TEXT",),
    3: (BATCH_JOBS_TABLE, BATCH_JOBS_INDEX),
}


def schema(
    *, real: str, bigint: str, now: str, identity: str = "", nulls_last: str = ""
) -> list[str]:
    """The tables and indexes in a dialect's spelling: ``real`` and
    ``bigint`` its types, ``now`` the default timestamp (epoch seconds),
    ``identity`` an insertion-order column ``seq`` of ``articles`` and
    ``results`` that breaks ties in the queue order (SQLite has its rowid:
    none), ``nulls_last`` what sorts rows without a priority last."""
    seq = f",\n        seq {identity}" if identity else ""
    tiebreak = ", seq" if identity else ""
    return [
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        f"""CREATE TABLE IF NOT EXISTS articles (
        id TEXT PRIMARY KEY,
        payload TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'queued'
            CHECK (state IN ('queued', 'leased', 'done', 'failed')),
        priority {real},
        enqueued_at {real} NOT NULL DEFAULT {now},
        lease_owner TEXT,
        lease_expires {real},
        attempts INTEGER NOT NULL DEFAULT 0,
        updated_at {real} NOT NULL DEFAULT {now}{seq}
    )""",
        "CREATE INDEX IF NOT EXISTS articles_state_lease"
        f" ON articles (state, lease_expires{tiebreak})",
        f"""CREATE INDEX IF NOT EXISTS articles_queue_order
        ON articles (state, priority DESC{nulls_last}, enqueued_at{tiebreak})""",
        """CREATE INDEX IF NOT EXISTS articles_lease_owner
        ON articles (lease_owner) WHERE lease_owner IS NOT NULL""",
        f"""CREATE TABLE IF NOT EXISTS results (
        article_id TEXT PRIMARY KEY,
        status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
        entities TEXT NOT NULL DEFAULT '[]',
        model TEXT,
        tier TEXT,
        attempts INTEGER,
        input_tokens INTEGER,
        output_tokens INTEGER,
        latency_s {real},
        cost_usd {real},
        fallback INTEGER NOT NULL DEFAULT 0,
        reason TEXT,
        detail TEXT,
        metadata TEXT,
        finished_at {real} NOT NULL{seq},
        pack_size INTEGER,
        grounded INTEGER,
        cross_article INTEGER,
        ungrounded INTEGER,
        task_version TEXT
    )""",
        f"""CREATE TABLE IF NOT EXISTS rejects (
        source TEXT NOT NULL,
        line_no {bigint},
        reason TEXT NOT NULL,
        raw_prefix TEXT,
        at {real} NOT NULL
    )""",
        BATCH_JOBS_TABLE,
        BATCH_JOBS_INDEX,
    ]


RESULT_COLUMNS = (
    "article_id",
    "status",
    "entities",
    "model",
    "tier",
    "attempts",
    "input_tokens",
    "output_tokens",
    "latency_s",
    "cost_usd",
    "fallback",
    "reason",
    "detail",
    "metadata",
    "finished_at",
    "pack_size",
    "grounded",
    "cross_article",
    "ungrounded",
    "task_version",
)
GROUNDING_COLUMNS = ("grounded", "cross_article", "ungrounded")
INSERT_RESULT = (
    f"INSERT INTO results ({', '.join(RESULT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(RESULT_COLUMNS))}) ON CONFLICT (article_id) DO NOTHING"
)
MARK_TERMINAL = """UPDATE articles
    SET state = (SELECT status FROM results WHERE article_id = articles.id),
        lease_owner = NULL, lease_expires = NULL, updated_at = ?
    WHERE id = ? AND state IN ('queued', 'leased')"""
INSERT_ARTICLE = """INSERT INTO articles (id, payload, state, priority, enqueued_at, updated_at)
    VALUES (?, ?, 'queued', ?, ?, ?) ON CONFLICT (id) DO NOTHING"""
INSERT_REJECT = (
    "INSERT INTO rejects (source, line_no, reason, raw_prefix, at) VALUES (?, ?, ?, ?, ?)"
)
# A released lease is not a strike: the attempt it counted is taken back.
RELEASE_SET = """UPDATE articles
    SET state = 'queued', lease_owner = NULL, lease_expires = NULL, updated_at = ?,
        attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END
    WHERE """
RELEASE_ONE = RELEASE_SET + "id = ? AND lease_owner = ? AND state = 'leased'"
# Taking a row is a strike (an owner never takes its own leases back: it
# renews them while it runs). ``{key}`` is how the dialect addresses a row.
TAKE = """UPDATE articles
    SET state = 'leased', lease_owner = ?, lease_expires = ?, attempts = attempts + 1,
        updated_at = ?
    WHERE {key} = ?"""
# A refused row is ours for the length of the leasing transaction, so the
# owner check of the results write accepts the failure written for it...
HOLD = """UPDATE articles SET state = 'leased', lease_owner = ?, lease_expires = ?,
    updated_at = ? WHERE {key} = ?"""
# ... and it ends terminal even if a result for its id was already there.
SETTLE_REFUSED = """UPDATE articles
    SET state = COALESCE((SELECT status FROM results WHERE article_id = articles.id), 'failed'),
        lease_owner = NULL, lease_expires = NULL, updated_at = ?
    WHERE {key} = ? AND state = 'leased'"""
# A row whose id cannot carry a result.
FAIL_NAMELESS = """UPDATE articles SET state = 'failed', lease_owner = NULL,
    lease_expires = NULL, updated_at = ? WHERE {key} = ?"""
RENEW = """UPDATE articles SET lease_expires = ?, updated_at = ?
    WHERE lease_owner = ? AND state = 'leased'"""
# Adds to a counter kept in ``meta`` (values are text there).
META_ADD = """INSERT INTO meta (key, value) VALUES (?, CAST(? AS TEXT))
    ON CONFLICT (key) DO UPDATE
    SET value = CAST(CAST(meta.value AS BIGINT) + CAST(excluded.value AS BIGINT) AS TEXT)"""
REFUSED_SQL = "SELECT key, value FROM meta WHERE key IN ('stale_results', 'duplicate_results')"
SCHEMA_VERSION_SQL = "SELECT value FROM meta WHERE key = 'schema_version'"
SET_SCHEMA_VERSION = "INSERT INTO meta (key, value) VALUES ('schema_version', ?)"
UPDATE_SCHEMA_VERSION = "UPDATE meta SET value = ? WHERE key = 'schema_version'"
STATE_COUNTS_SQL = "SELECT state, COUNT(*) FROM articles GROUP BY state"
PENDING_SQL = "SELECT COUNT(*) FROM articles WHERE state IN ('queued', 'leased')"
# Done results per task version (NULL: written before task versions).
TASK_VERSIONS_SQL = (
    "SELECT task_version, COUNT(*) FROM results WHERE status = 'done' "
    "GROUP BY task_version ORDER BY task_version"
)
REJECTS_SQL = "SELECT source, line_no, reason, raw_prefix, at FROM rejects"


REPORT_SQL = (
    "SELECT phase, COUNT(*), COALESCE(SUM(articles), 0), COALESCE(SUM(cost_usd), 0.0),"
    " COALESCE(SUM(interactive_cost_usd), 0.0) FROM batch_jobs GROUP BY phase"
)


# The rows ``tierbatch plan`` sizes: queued and leased, but not those a batch
# job holds (leased to ``batch:<job id>``: the Batch API has them).
BACKLOG_WHERE = (
    "state IN ('queued', 'leased')"
    " AND (lease_owner IS NULL OR substr(lease_owner, 1, 6) <> 'batch:')"
)


def read_batch_report(query: Callable[[str, Sequence[Any]], list[Any]]) -> BatchReport:
    """The jobs' report through ``query(sql, params)`` (a read)."""
    counts: dict[str, tuple[int, int, float, float]] = {}
    for phase, jobs, articles, cost, interactive in query(REPORT_SQL, ()):
        counts[str(phase)] = (int(jobs), int(articles), float(cost), float(interactive))
    none = (0, 0, 0.0, 0.0)
    flight = [counts.get(p.value, none) for p in JobPhase if p.in_flight]
    settled = counts.get(JobPhase.SETTLED.value, none)
    returned = counts.get(JobPhase.RETURNED.value, none)
    return BatchReport(
        in_flight=sum(f[0] for f in flight),
        articles_in_flight=sum(f[1] for f in flight),
        settled=settled[0],
        returned=returned[0],
        cost_usd=settled[2],
        interactive_cost_usd=settled[3],
    )


def result_counts_sql(collate: str = "") -> str:
    """Results per status, tier and model; ``collate`` orders the groups by
    code point where the database's default collation would not."""
    groups = ("status", "COALESCE(tier, '')", "COALESCE(model, '')")
    return (
        f"SELECT {', '.join(groups)}, COUNT(*),"
        " COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0),"
        " COALESCE(SUM(cost_usd), 0.0)"
        f" FROM results GROUP BY 1, 2, 3 ORDER BY {', '.join(g + collate for g in groups)}"
    )


RESULT_COUNTS_SQL = result_counts_sql()


def grounding_counts_sql(collate: str = "") -> str:
    """The grounding outcomes of done results per tier, model and pack
    size (rows written before the check, without counts, left out)."""
    groups = ("COALESCE(tier, '')", "COALESCE(model, '')", "COALESCE(pack_size, 0)")
    order = ", ".join(g + collate for g in groups[:2]) + ", 3"
    return (
        f"SELECT {', '.join(groups)}, COUNT(*),"
        " SUM(grounded), SUM(cross_article), SUM(ungrounded)"
        " FROM results WHERE status = 'done' AND grounded IS NOT NULL"
        f" GROUP BY 1, 2, 3 ORDER BY {order}"
    )


GROUNDING_COUNTS_SQL = grounding_counts_sql()


def migrations_from(version: str, path: str) -> list[str]:
    """The statements that bring a database of schema ``version`` to
    ``SCHEMA_VERSION`` (none when it is there); a version this tierbatch
    cannot migrate raises ``IncompatibleSchemaError``."""
    if version == str(SCHEMA_VERSION):
        return []
    statements: list[str] = []
    step = int(version) if version.isdigit() else None
    while step is not None and step in MIGRATIONS:
        statements += MIGRATIONS[step]
        step += 1
    if step != SCHEMA_VERSION:
        raise IncompatibleSchemaError(
            f"{path}: schema version {version}, this tierbatch uses {SCHEMA_VERSION}"
        )
    return statements


def to_format_params(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (the shared statements hold no
    other ``?`` or ``%``)."""
    return sql.replace("?", "%s")


class UnknownResultStatusError(StorageError, ValueError):
    """A stored result row has a status tierbatch does not know."""


def result_row(result: TerminalResult, now: float) -> tuple[Any, ...]:
    """The ``results`` row of a terminal result, finished at ``now``."""
    record = result_to_json(result)
    record["entities"] = dumps(record["entities"])
    record["metadata"] = dumps(record["metadata"]) if record["metadata"] else None
    record["fallback"] = int(record["fallback"])
    record["finished_at"] = now
    grounding = record.pop("grounding") or {}
    for column in GROUNDING_COLUMNS:
        record[column] = grounding.get(column)
    return tuple(record[column] for column in RESULT_COLUMNS)


def result_from_row(row: Sequence[Any]) -> TerminalResult:
    """The terminal result of a ``results`` row (columns in ``RESULT_COLUMNS`` order)."""
    record = dict(zip(RESULT_COLUMNS, row, strict=True))
    record["entities"] = json.loads(record["entities"] or "[]")
    record["metadata"] = json.loads(record["metadata"]) if record["metadata"] else {}
    counts = [record.pop(column) for column in GROUNDING_COLUMNS]
    if counts[0] is not None:
        record["grounding"] = dict(zip(GROUNDING_COLUMNS, counts, strict=True))
    if record["status"] not in (DONE, FAILED):
        raise UnknownResultStatusError(f"result {record['article_id']!r}: unknown status")
    return result_from_json(record)


Query = Callable[[str, Sequence[Any]], list[Any]]


def read_queue_report(
    query: Query,
    now: float,
    counts_sql: str = RESULT_COUNTS_SQL,
    grounding_sql: str = GROUNDING_COUNTS_SQL,
) -> QueueReport:
    """What ``tierbatch status`` shows, read through ``query`` (``?``
    placeholders; the caller runs it read-only, in one snapshot if it can).
    A database of schema version 1 (not migrated yet: no daemon of this
    version has opened it) has no grounding columns: none are shown."""
    states = dict.fromkeys(STATES, 0)
    for state, count in query(STATE_COUNTS_SQL, ()):
        states[state] = int(count)
    ((expired,),) = query(
        "SELECT COUNT(*) FROM articles WHERE state = 'leased' AND lease_expires < ?", (now,)
    )
    results = tuple(ResultCount(*row) for row in query(counts_sql, ()))
    by_source = {
        source: int(count)
        for source, count in query(
            "SELECT source, COUNT(*) FROM rejects GROUP BY source ORDER BY source", ()
        )
    }
    version = query(SCHEMA_VERSION_SQL, ())
    grounding: tuple[GroundingCount, ...] = ()
    if not version or version[0][0] != "1":
        grounding = tuple(
            GroundingCount(tier, model, int(size), int(n), int(g), int(c), int(u))
            for tier, model, size, n, g, c, u in query(grounding_sql, ())
        )
    batch = BatchReport()
    if version and version[0][0] not in ("1", "2", "3"):
        batch = read_batch_report(query)
    return QueueReport(
        batch=batch,
        states=states,
        expired_leases=int(expired),
        results=results,
        rejects_by_source=by_source,
        refused=refused_counts(query(REFUSED_SQL, ())),
        grounding=grounding,
    )
