"""The two stores behind one interface, for the contract tests, and the
articles, results and fake clock the store tests build on.

A backend opens stores on its test database, and reads and writes that
database with a connection of its own -- as another process would, with
``?`` placeholders for both dialects. ``payload_kinds`` says how another
process can store a payload: SQLite takes TEXT, TEXT that is not UTF-8 and
BLOBs; PostgreSQL only valid UTF-8 text without NUL characters.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from schema_v1 import POSTGRES_V1, SQLITE_V1

from tierbatch.adapters.storage.sqlite_store import SqliteStore
from tierbatch.adapters.storage.store import Store
from tierbatch.policies.articles import Article
from tierbatch.policies.grounding import Grounding, GroundingCounts
from tierbatch.policies.results import Done, Entity, EntityType, Failed, FailureReason

Clock = Callable[[], float]


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def article(i: int | str, **kwargs: object) -> Article:
    return Article(id=str(i), text=f"text of {i}", **kwargs)  # type: ignore[arg-type]


def done(article_id: str, model: str = "gemini-a", tier: str = "high") -> Done:
    return Done(
        article_id=article_id,
        entities=(Entity("Ada Lovelace", EntityType.PERSON, 0.9, 2),),
        model=model,
        tier=tier,
        attempts=1,
        input_tokens=100,
        output_tokens=20,
        latency_s=1.5,
        cost_usd=0.001,
        fallback=model != "gemini-a",
        metadata={"lang": "en"},
    )


def grounded_done(article_id: str, tier: str = "high", pack_size: int = 4) -> Done:
    """A result with the grounding check's counts and a flagged entity."""
    return replace(
        done(article_id, tier=tier),
        entities=(
            Entity("Ada Lovelace", EntityType.PERSON, 0.9, 2),
            Entity("Charles Babbage", EntityType.PERSON, 0.4, 1, flag=Grounding.UNGROUNDED),
        ),
        grounding=GroundingCounts(grounded=1, cross_article=2, ungrounded=1),
        pack_size=pack_size,
    )


def failed(article_id: str) -> Failed:
    return Failed(
        article_id=article_id,
        reason=FailureReason.RETRIES_EXHAUSTED,
        detail="gemini-a: 429 x3",
        tier="low",
        attempts=3,
        last_model="gemini-a",
    )


class SqliteBackend:
    name = "sqlite"
    payload_kinds = ("text", "raw-text", "blob")

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._n = 0
        self.db = ""
        self.reset()

    def reset(self) -> None:
        """An empty database for what follows (one per hypothesis example)."""
        self._n += 1
        self.db = str(self.folder / f"queue-{self._n}.db")

    def open(self, owner: str = "owner-a", clock: Clock | None = None, **kwargs: Any) -> Store:
        if clock is not None:
            kwargs["clock"] = clock
        return SqliteStore(self.db, owner=owner, **kwargs)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.db, isolation_level=None, timeout=10)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.query(sql, params)

    def create_v1(self) -> None:
        """A database as a store of schema version 1 created it."""
        for statement in SQLITE_V1:
            self.execute(statement)
        self.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '1')")

    def insert_payloads(self, rows: Sequence[tuple[object, object, str]]) -> None:
        """Insert ``(id, payload, kind)`` rows without any validation; kind
        'raw-text' stores bytes as TEXT (so invalid UTF-8 can be TEXT)."""
        conn = sqlite3.connect(self.db, isolation_level=None, timeout=10)
        try:
            for row_id, payload, kind in rows:
                value = "CAST(? AS TEXT)" if kind == "raw-text" else "?"
                stored = payload
                if kind == "text" and isinstance(payload, bytes):
                    stored = payload.decode("utf-8")
                conn.execute(
                    f"INSERT INTO articles (id, payload) VALUES (?, {value})", (row_id, stored)
                )
        finally:
            conn.close()


class PostgresBackend:
    name = "postgresql"
    payload_kinds = ("text",)

    def __init__(self, url: str) -> None:
        self.db = url

    def reset(self) -> None:
        """Empty every table (the store recreates the schema version)."""
        self.execute(
            "DO $$ BEGIN IF to_regclass('meta') IS NOT NULL THEN"
            " TRUNCATE articles, results, rejects, meta RESTART IDENTITY; END IF; END $$"
        )

    def open(self, owner: str = "owner-a", clock: Clock | None = None, **kwargs: Any) -> Store:
        from tierbatch.adapters.storage.postgres_store import PostgresStore

        return PostgresStore(self.db, owner=owner, clock=clock, **kwargs)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        from tierbatch.adapters.storage.queue_sql import to_format_params

        with psycopg.connect(self.db, autocommit=True) as conn:
            cursor = conn.execute(to_format_params(sql) if params else sql, params or None)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.query(sql, params)

    def create_v1(self) -> None:
        """A database as a store of schema version 1 created it."""
        for statement in POSTGRES_V1:
            self.execute(statement)
        self.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '1')")

    def insert_payloads(self, rows: Sequence[tuple[object, object, str]]) -> None:
        import psycopg

        with psycopg.connect(self.db, autocommit=True) as conn:
            for row_id, payload, kind in rows:
                assert kind == "text", kind
                text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
                conn.execute("INSERT INTO articles (id, payload) VALUES (%s, %s)", (row_id, text))


def can_store(backend: SqliteBackend | PostgresBackend, payload: bytes, kind: str) -> bool:
    """Whether another process could store ``payload`` this way in ``backend``."""
    if kind not in backend.payload_kinds:
        return False
    if kind != "text":
        return True
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return backend.name == "sqlite" or b"\x00" not in payload


Backend = SqliteBackend | PostgresBackend
