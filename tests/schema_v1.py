# ruff: noqa: E501  (literal DDL, generated)
"""The schema of version 1 (before the grounding columns), as its stores
created it: a database made with it tests the in-place migration. Generated
from ``queue_sql.schema`` and ``postgres_schema.SCHEMA`` of that version."""

from __future__ import annotations

SQLITE_V1 = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS articles (\n        id TEXT PRIMARY KEY,\n        payload TEXT NOT NULL,\n        state TEXT NOT NULL DEFAULT 'queued'\n            CHECK (state IN ('queued', 'leased', 'done', 'failed')),\n        priority REAL,\n        enqueued_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0),\n        lease_owner TEXT,\n        lease_expires REAL,\n        attempts INTEGER NOT NULL DEFAULT 0,\n        updated_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)\n    )",
    "CREATE INDEX IF NOT EXISTS articles_state_lease ON articles (state, lease_expires)",
    "CREATE INDEX IF NOT EXISTS articles_queue_order\n        ON articles (state, priority DESC, enqueued_at)",
    "CREATE INDEX IF NOT EXISTS articles_lease_owner\n        ON articles (lease_owner) WHERE lease_owner IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS results (\n        article_id TEXT PRIMARY KEY,\n        status TEXT NOT NULL CHECK (status IN ('done', 'failed')),\n        entities TEXT NOT NULL DEFAULT '[]',\n        model TEXT,\n        tier TEXT,\n        attempts INTEGER,\n        input_tokens INTEGER,\n        output_tokens INTEGER,\n        latency_s REAL,\n        cost_usd REAL,\n        fallback INTEGER NOT NULL DEFAULT 0,\n        reason TEXT,\n        detail TEXT,\n        metadata TEXT,\n        finished_at REAL NOT NULL\n    )",
    "CREATE TABLE IF NOT EXISTS rejects (\n        source TEXT NOT NULL,\n        line_no INTEGER,\n        reason TEXT NOT NULL,\n        raw_prefix TEXT,\n        at REAL NOT NULL\n    )",
)

POSTGRES_V1 = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS articles (\n        id TEXT PRIMARY KEY,\n        payload TEXT NOT NULL,\n        state TEXT NOT NULL DEFAULT 'queued'\n            CHECK (state IN ('queued', 'leased', 'done', 'failed')),\n        priority DOUBLE PRECISION,\n        enqueued_at DOUBLE PRECISION NOT NULL DEFAULT (EXTRACT(EPOCH FROM clock_timestamp())::DOUBLE PRECISION),\n        lease_owner TEXT,\n        lease_expires DOUBLE PRECISION,\n        attempts INTEGER NOT NULL DEFAULT 0,\n        updated_at DOUBLE PRECISION NOT NULL DEFAULT (EXTRACT(EPOCH FROM clock_timestamp())::DOUBLE PRECISION),\n        seq BIGINT GENERATED ALWAYS AS IDENTITY\n    )",
    "CREATE INDEX IF NOT EXISTS articles_state_lease ON articles (state, lease_expires, seq)",
    "CREATE INDEX IF NOT EXISTS articles_queue_order\n        ON articles (state, priority DESC NULLS LAST, enqueued_at, seq)",
    "CREATE INDEX IF NOT EXISTS articles_lease_owner\n        ON articles (lease_owner) WHERE lease_owner IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS results (\n        article_id TEXT PRIMARY KEY,\n        status TEXT NOT NULL CHECK (status IN ('done', 'failed')),\n        entities TEXT NOT NULL DEFAULT '[]',\n        model TEXT,\n        tier TEXT,\n        attempts INTEGER,\n        input_tokens INTEGER,\n        output_tokens INTEGER,\n        latency_s DOUBLE PRECISION,\n        cost_usd DOUBLE PRECISION,\n        fallback INTEGER NOT NULL DEFAULT 0,\n        reason TEXT,\n        detail TEXT,\n        metadata TEXT,\n        finished_at DOUBLE PRECISION NOT NULL,\n        seq BIGINT GENERATED ALWAYS AS IDENTITY\n    )",
    "CREATE TABLE IF NOT EXISTS rejects (\n        source TEXT NOT NULL,\n        line_no BIGINT,\n        reason TEXT NOT NULL,\n        raw_prefix TEXT,\n        at DOUBLE PRECISION NOT NULL\n    )",
    "CREATE UNIQUE INDEX IF NOT EXISTS results_seq ON results (seq)",
    "CREATE OR REPLACE FUNCTION tierbatch_json_or_null(doc TEXT) RETURNS JSONB\n        LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$\n        BEGIN\n            RETURN doc::JSONB;\n        EXCEPTION WHEN OTHERS THEN\n            RETURN NULL;\n        END\n        $$",
)
