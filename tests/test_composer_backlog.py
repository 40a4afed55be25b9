"""The composer tells the registry about new work before any of it asks for
quota: the registry's first grants then follow a plan."""

from __future__ import annotations

import threading
from typing import Any

from runtime_helpers import make_articles, small_config

from tierbatch.actors.clock import SystemClock
from tierbatch.actors.composer import BatchComposer
from tierbatch.actors.messages import Backlog, RequestWork, Submit, WorkBatch
from tierbatch.actors.sinks import CollectingSink


def test_new_work_reaches_the_registry_before_its_first_pack_goes_out() -> None:
    """The backlog was reported after the dispatch: the first packs' quota
    requests could reach the registry before any plan, and were granted
    fallbacks the plan keeps for the tiers that need them (a whole window
    lost, 800 articles one per request)."""
    events: list[tuple[str, Any]] = []
    lock = threading.Lock()
    got_work = threading.Event()

    def backlog_to(message: Backlog) -> None:
        with lock:
            events.append(("backlog", sum(t.articles for t in message.tiers)))

    def reply(message: Any) -> None:
        assert isinstance(message, WorkBatch)
        with lock:
            events.append(("work", len(message.batch.items)))
        got_work.set()

    composer = BatchComposer.start(
        small_config(), CollectingSink(), SystemClock(), backlog_to=backlog_to
    )
    try:
        composer.tell(RequestWork(1, reply))  # an idle extractor, waiting for work
        composer.ask(Submit(tuple(make_articles(40))))
        assert got_work.wait(10)
    finally:
        composer.stop()
    with lock:
        work_at = next(i for i, (kind, _) in enumerate(events) if kind == "work")
        before = events[:work_at]
    # (an empty backlog may be reported when the idle extractor asks)
    assert ("backlog", 40) in before, events
