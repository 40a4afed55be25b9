"""Choosing a store from ``--db``: a ``postgresql://`` (or ``postgres://``)
URL opens a ``PostgresStore``, anything else is an SQLite file.

psycopg is imported only when a URL asks for PostgreSQL, so the core
install never needs it; without it the error names the extra to install.
URLs are shown without their password wherever they appear in messages,
logs and status.
"""

from __future__ import annotations

import os
import re
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from tierbatch.adapters.storage.store import QueueReport, StorageError, Store
from tierbatch.policies.articles import Article

POSTGRES_SCHEMES = ("postgresql", "postgres")


class MissingPostgresDriver(StorageError):
    """A PostgreSQL URL was given but psycopg 3 is not installed."""


def is_postgres_url(db: str | os.PathLike[str]) -> bool:
    text = os.fspath(db)
    return any(text.lower().startswith(f"{scheme}://") for scheme in POSTGRES_SCHEMES)


def display_name(db: str | os.PathLike[str]) -> str:
    """``db`` fit for messages: a URL's password (in the authority or as a
    ``password=`` parameter) is replaced by ``***``; a path is unchanged."""
    text = os.fspath(db)
    if not is_postgres_url(text):
        return text
    parts = urlsplit(text)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:***@{hosts}" if colon else f"{user}@{hosts}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k == "password" else v) for k, v in pairs], safe="*/")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def file_stem(db: str | os.PathLike[str]) -> str:
    """A file name (no folder) naming ``db``'s database, for files kept
    beside a server database: ``postgresql-HOST-PORT-DBNAME``."""
    parts = urlsplit(os.fspath(db))
    hosts = parts.netloc.rpartition("@")[2] or "local"
    name = unquote(parts.path.lstrip("/")) or "default"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"postgresql-{hosts.replace(':', '-')}-{name}")


def _require_psycopg() -> None:
    """Import the PostgreSQL store, or say which extra is missing."""
    try:
        from tierbatch.adapters.storage import postgres_store  # noqa: F401
    except ImportError as exc:
        if not (exc.name or "").startswith("psycopg") and "psycopg" not in str(exc):
            raise
        raise MissingPostgresDriver(
            "PostgreSQL needs psycopg 3, which is not installed: "
            f"pip install 'tierbatch[postgres]' ({exc})"
        ) from exc


def open_store(db: str | os.PathLike[str], *, owner: str) -> Store:
    """The store ``db`` names. Raises ``StorageError`` (``MissingPostgresDriver``
    for a URL without psycopg) when it cannot be opened."""
    text = os.fspath(db)
    if is_postgres_url(text):
        _require_psycopg()
        from tierbatch.adapters.storage import postgres_store

        return postgres_store.PostgresStore(text, owner=owner)
    from tierbatch.adapters.storage.sqlite_store import SqliteStore

    return SqliteStore(text, owner=owner)


def read_report(db: str | os.PathLike[str], now: float) -> QueueReport:
    """What ``tierbatch status`` shows of ``db``, read-only (never creating
    tables). Raises ``StorageError`` naming the database and the problem."""
    text = os.fspath(db)
    if is_postgres_url(text):
        _require_psycopg()
        from tierbatch.adapters.storage import postgres_store

        return postgres_store.read_postgres_report(text, now)
    from tierbatch.adapters.storage.sqlite_store import read_sqlite_report

    return read_sqlite_report(text, now)


def read_backlog(db: str | os.PathLike[str]) -> tuple[list[Article], int]:
    """The articles still to be worked on in ``db`` (queued or leased), read
    only, and how many of its rows are not usable articles (those fail when
    leased). Raises ``StorageError`` naming the database and the problem."""
    text = os.fspath(db)
    if is_postgres_url(text):
        _require_psycopg()
        from tierbatch.adapters.storage import postgres_store

        return postgres_store.read_postgres_backlog(text)
    from tierbatch.adapters.storage.sqlite_store import read_sqlite_backlog

    return read_sqlite_backlog(text)
