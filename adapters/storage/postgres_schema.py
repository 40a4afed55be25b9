"""The PostgreSQL schema: the SQLite schema's tables and columns in
PostgreSQL's types, with an insertion-order ``seq`` (documented in
``postgres_store``'s docstring), and the statements whose PostgreSQL
spelling differs from the shared ones."""

from __future__ import annotations

from tierbatch.adapters.storage.queue_sql import RELEASE_SET, schema
from tierbatch.adapters.storage.quota_lease import quota_schema

NOW_SQL = "(EXTRACT(EPOCH FROM clock_timestamp())::DOUBLE PRECISION)"
SCHEMA = (
    *schema(
        real="DOUBLE PRECISION",
        bigint="BIGINT",
        now=NOW_SQL,
        identity="BIGINT GENERATED ALWAYS AS IDENTITY",
        nulls_last=" NULLS LAST",
    ),
    *quota_schema(real="DOUBLE PRECISION", bigint="BIGINT", blob="BYTEA"),
    "CREATE UNIQUE INDEX IF NOT EXISTS results_seq ON results (seq)",
    # The payload as JSON, or NULL when it is not JSON PostgreSQL accepts:
    # PostgreSQL 15 has no "IS JSON" test, and a cast that fails would fail
    # the whole query that reads the backlog.
    """CREATE OR REPLACE FUNCTION tierbatch_json_or_null(doc TEXT) RETURNS JSONB
        LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
        BEGIN
            RETURN doc::JSONB;
        EXCEPTION WHEN OTHERS THEN
            RETURN NULL;
        END
        $$""",
)
# Serialises schema creation between processes starting at once.
SCHEMA_LOCK = "SELECT pg_advisory_xact_lock(hashtext('tierbatch schema'))"
TABLE_EXISTS = "SELECT to_regclass('meta') IS NOT NULL"
# The shared quota's tables came after schema version 1's first release.
QUOTA_TABLES_EXIST = "SELECT to_regclass('daemons') IS NOT NULL"

# Rows are locked with SKIP LOCKED: processes leasing at once never wait for
# each other and never take the same row. Ties go by insertion order (seq),
# as SQLite's go by rowid.
LEASE_COLUMNS = "id, payload, attempts"
EXPIRED_CANDIDATES = (
    f"SELECT {LEASE_COLUMNS} FROM articles"
    " WHERE state = 'leased' AND lease_expires < ? AND lease_owner IS DISTINCT FROM ?"
    " ORDER BY lease_expires, seq LIMIT ?"
    " FOR UPDATE SKIP LOCKED"
)
QUEUED_CANDIDATES = (
    f"SELECT {LEASE_COLUMNS} FROM articles"
    " WHERE state = 'queued' ORDER BY priority DESC NULLS LAST, enqueued_at, seq LIMIT ?"
    " FOR UPDATE SKIP LOCKED"
)
# Every statement that locks several rows it does not skip locks them in
# id order (code point order, as Python sorts), so two transactions cannot
# deadlock over them.
BY_ID = 'ORDER BY id COLLATE "C" FOR UPDATE'
HOLDERS = f"SELECT id, state, lease_owner FROM articles WHERE id = ANY(?) {BY_ID}"
_OWNED = f"id IN (SELECT id FROM articles WHERE lease_owner = ? AND state = 'leased' {BY_ID})"
RENEW = "UPDATE articles SET lease_expires = ?, updated_at = ? WHERE " + _OWNED
RELEASE_ALL = RELEASE_SET + _OWNED
# Each payload is parsed once (OFFSET 0 keeps the subquery from being
# flattened, which would call the function twice), and only small columns
# are sorted.
BACKLOG = """SELECT id, cluster, published FROM (
        SELECT id, enqueued_at, doc ->> 'cluster_id' AS cluster, doc ->> 'published_at' AS published
        FROM (
            SELECT id, enqueued_at, tierbatch_json_or_null(payload) AS doc
            FROM articles WHERE state = 'queued' OFFSET 0
        ) AS parsed
    ) AS fields
    WHERE cluster IS NOT NULL ORDER BY enqueued_at DESC LIMIT ?"""
SERVER_TIME = "SELECT EXTRACT(EPOCH FROM clock_timestamp())::DOUBLE PRECISION"
