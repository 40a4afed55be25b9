"""The SQLite schema and statements shared by the store, and the result row
codec. The whole schema is documented in ``sqlite_store``'s docstring."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from tierbatch.adapters.storage.result_json import (
    DONE,
    FAILED,
    dumps,
    result_from_json,
    result_to_json,
)
from tierbatch.policies.results import TerminalResult

SCHEMA_VERSION = 1
STATES = ("queued", "leased", "done", "failed")
NOW_SQL = "((julianday('now') - 2440587.5) * 86400.0)"
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    f"""CREATE TABLE IF NOT EXISTS articles (
        id TEXT PRIMARY KEY,
        payload TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'queued'
            CHECK (state IN ('queued', 'leased', 'done', 'failed')),
        priority REAL,
        enqueued_at REAL NOT NULL DEFAULT {NOW_SQL},
        lease_owner TEXT,
        lease_expires REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL DEFAULT {NOW_SQL}
    )""",
    "CREATE INDEX IF NOT EXISTS articles_state_lease ON articles (state, lease_expires)",
    """CREATE INDEX IF NOT EXISTS articles_queue_order
        ON articles (state, priority DESC, enqueued_at)""",
    """CREATE INDEX IF NOT EXISTS articles_lease_owner
        ON articles (lease_owner) WHERE lease_owner IS NOT NULL""",
    """CREATE TABLE IF NOT EXISTS results (
        article_id TEXT PRIMARY KEY,
        status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
        entities TEXT NOT NULL DEFAULT '[]',
        model TEXT,
        tier TEXT,
        attempts INTEGER,
        input_tokens INTEGER,
        output_tokens INTEGER,
        latency_s REAL,
        cost_usd REAL,
        fallback INTEGER NOT NULL DEFAULT 0,
        reason TEXT,
        detail TEXT,
        metadata TEXT,
        finished_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS rejects (
        source TEXT NOT NULL,
        line_no INTEGER,
        reason TEXT NOT NULL,
        raw_prefix TEXT,
        at REAL NOT NULL
    )""",
)
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
)
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
_RELEASE = """UPDATE articles
    SET state = 'queued', lease_owner = NULL, lease_expires = NULL, updated_at = ?,
        attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END
    WHERE """
RELEASE_ONE = _RELEASE + "id = ? AND lease_owner = ? AND state = 'leased'"
RELEASE_ALL = _RELEASE + "lease_owner = ? AND state = 'leased'"
# Adds to a counter kept in ``meta`` (values are text there).
META_ADD = """INSERT INTO meta (key, value) VALUES (?, CAST(? AS TEXT))
    ON CONFLICT (key) DO UPDATE
    SET value = CAST(CAST(meta.value AS INTEGER) + CAST(excluded.value AS INTEGER) AS TEXT)"""

RESULT_COUNTS_SQL = (
    "SELECT status, COALESCE(tier, ''), COALESCE(model, ''), COUNT(*),"
    " COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0),"
    " COALESCE(SUM(cost_usd), 0.0)"
    " FROM results GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
)


class UnknownResultStatus(ValueError):
    """A stored result row has a status tierbatch does not know."""


def result_row(result: TerminalResult, now: float) -> tuple[Any, ...]:
    """The ``results`` row of a terminal result, finished at ``now``."""
    record = result_to_json(result)
    record["entities"] = dumps(record["entities"])
    record["metadata"] = dumps(record["metadata"]) if record["metadata"] else None
    record["fallback"] = int(record["fallback"])
    record["finished_at"] = now
    return tuple(record[column] for column in RESULT_COLUMNS)


def result_from_row(row: Sequence[Any]) -> TerminalResult:
    """The terminal result of a ``results`` row (columns in ``RESULT_COLUMNS`` order)."""
    record = dict(zip(RESULT_COLUMNS, row, strict=True))
    record["entities"] = json.loads(record["entities"] or "[]")
    record["metadata"] = json.loads(record["metadata"]) if record["metadata"] else {}
    if record["status"] not in (DONE, FAILED):
        raise UnknownResultStatus(f"result {record['article_id']!r}: unknown status")
    return result_from_json(record)
