"""The SQLite schema; the whole schema is documented in ``sqlite_store``'s
docstring. The statements and the result row codec both stores share are in
``queue_sql``."""

from __future__ import annotations

from tierbatch.adapters.storage.queue_sql import schema
from tierbatch.adapters.storage.quota_lease import quota_schema

NOW_SQL = "((julianday('now') - 2440587.5) * 86400.0)"
SCHEMA = (
    *schema(real="REAL", bigint="INTEGER", now=NOW_SQL),
    *quota_schema(real="REAL", bigint="INTEGER", blob="BLOB"),
)
