"""Batch jobs reach the daily budget wherever it lives: a follower daemon's
commit and settle cross the quota wire to the owner's registry, and a
handle with no owner to ask commits nothing (it never answers a commit
from an earlier answer)."""

from __future__ import annotations

import io
import threading
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from tierbatch.actors.clock import SystemClock
from tierbatch.actors.messages import CommitBatch, GetBudgetState, SettleBatch
from tierbatch.actors.registry import ModelRegistry
from tierbatch.actors.registry_handle import RegistryHandle
from tierbatch.adapters.app.quota_client import QuotaClient
from tierbatch.adapters.app.quota_server import QuotaServer
from tierbatch.adapters.app.quota_wire import (
    decode_answer,
    decode_from_follower,
    encode_answer,
    encode_ask,
    encode_to_owner,
    pack_frame,
    read_frame,
)
from tierbatch.policies.budget import DailyBudget
from tierbatch.policies.budget_config import BudgetConfig
from tierbatch.policies.config import ModelSpec, QuotaConfig
from tierbatch.policies.quota import QuotaPolicy

PRO = ModelSpec("pro", 0, 0, 0, price_in_per_m=1.0, price_out_per_m=2.0)
COMMIT = CommitBatch("tierbatch-j1", "hot", "pro", (1000, 1000, 1000), 0.5)


def frame_of(encoded: dict) -> dict:  # type: ignore[type-arg]
    frame = read_frame(io.BytesIO(pack_frame(encoded)))
    assert frame is not None
    return frame


def test_a_commit_and_a_settle_cross_the_wire() -> None:
    assert decode_from_follower(frame_of(encode_ask(5, COMMIT)), 0.0) == COMMIT
    settle = SettleBatch("tierbatch-j1", "hot", 0.00125, 1_800_000_000.0)
    assert decode_from_follower(frame_of(encode_to_owner(settle, 3.0)), -7.0) == settle
    answer = frame_of(encode_answer(5, CommitBatch, 2, 0.0))
    assert decode_answer(CommitBatch, answer["value"], 0.0) == 2


def registry(usd_per_day: float) -> ModelRegistry:
    budget = DailyBudget(
        BudgetConfig(usd_per_day=usd_per_day, output_ratio=0.0),
        [("hot", PRO)],
        {"pro": PRO},
        "America/Los_Angeles",
    )
    policy = QuotaPolicy({"pro": PRO}, QuotaConfig())
    return ModelRegistry.start(policy, SystemClock(), budget=budget)  # type: ignore[return-value]


def test_a_followers_batch_job_commits_to_and_settles_in_the_owners_budget() -> None:
    clock = SystemClock()
    ref = registry(0.0011)  # two requests of $0.0005 fit, the third does not
    server = QuotaServer(clock)
    server.serve(ref, owner="owner", epoch=1)  # type: ignore[arg-type]
    lost = threading.Event()
    client = QuotaClient(server.address, clock, daemon="follower", on_lost=lost.set)
    try:
        client.connect()
        assert client.ask(COMMIT, block=True, timeout=10) == 2
        state = ref.ask(GetBudgetState())
        assert state.batch_usd == pytest.approx(0.001)
        client.tell(
            SettleBatch("tierbatch-j1", "hot", 0.0004, datetime.now(ZoneInfo("UTC")).timestamp())
        )
        # The owner's registry reads its inbox in order: the ask after the
        # settle sees it.
        assert client.ask(GetBudgetState(), block=True, timeout=10).spent_usd == pytest.approx(
            0.0004
        )
        assert not lost.is_set()
    finally:
        client.close()
        server.close()
        ref.stop()


def test_a_handle_without_an_owner_commits_nothing() -> None:
    clock = SystemClock()
    handle = RegistryHandle(clock, window_s=60.0)
    assert handle.ask(COMMIT, block=True, timeout=5) == 0
    ref = registry(1.0)
    try:
        handle.retarget(ref)
        assert handle.ask(COMMIT, block=True, timeout=5) == 3
        handle.retarget(None)
        # not the answer seen last: nobody committed this one
        assert handle.ask(COMMIT, block=True, timeout=5) == 0
    finally:
        ref.stop()
