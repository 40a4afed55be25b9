"""The SQLite schema; the whole schema is documented in ``sqlite_store``'s
docstring. The statements and the result row codec both stores share are in
``queue_sql``."""

from __future__ import annotations

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
