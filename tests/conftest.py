"""Test-wide settings and fixtures.

Hypothesis runs derandomised, so every run of the suite draws the same
examples (CI is never flaky because of a new draw); ``HYPOTHESIS_PROFILE=explore``
draws fresh ones locally.

A local Ray head (``ray_head``), started once for the session because Ray
starts slowly; the Ray tests skip, with the reason, when ray is not
installed, and fail instead under CI or with ``TIERBATCH_REQUIRE_RAY`` set.

A local PostgreSQL server for the store tests: locally the PostgreSQL tests
are skipped, with the reason, when psycopg or the server binaries are
missing; under CI (``CI`` set, as ``.ci/run`` runs) or with
``TIERBATCH_REQUIRE_POSTGRES`` set they fail instead, so a CI run never
passes without them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings
from postgres_server import PostgresServer, find_bindir, missing_reason
from ray_cluster import RayHead
from ray_cluster import missing_reason as ray_missing_reason

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    reason = missing_reason()
    if reason is not None:
        if os.environ.get("CI") or os.environ.get("TIERBATCH_REQUIRE_POSTGRES"):
            pytest.fail(f"PostgreSQL tests cannot run: {reason}", pytrace=False)
        pytest.skip(reason)
    bindir = find_bindir()
    assert bindir is not None
    server = PostgresServer(bindir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database of the session's server."""
    url = postgres_server.new_database()
    try:
        yield url
    finally:
        postgres_server.drop_database(url)


@pytest.fixture(scope="session")
def ray_head() -> Iterator[RayHead]:
    reason = ray_missing_reason()
    if reason is not None:
        if os.environ.get("CI") or os.environ.get("TIERBATCH_REQUIRE_RAY"):
            pytest.fail(f"Ray tests cannot run: {reason}", pytrace=False)
        pytest.skip(reason)
    head = RayHead().start()
    try:
        yield head
    finally:
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        finally:
            head.stop()
