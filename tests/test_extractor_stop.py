"""An extractor once dispatch has stopped, driven directly with a registry
that grants everything and a composer that records what comes back."""

from __future__ import annotations

import threading
from typing import Any

import pykka
from runtime_helpers import ScriptedProvider, make_articles, small_config

from tierbatch.actors.clock import SystemClock
from tierbatch.actors.event_loop import LaunchPacer, LoopThread
from tierbatch.actors.extractor import Extractor, ExtractorDeps
from tierbatch.actors.messages import Acquire, Finished, GiveBack, Granted, WorkBatch
from tierbatch.policies.composition import Batch, Queued
from tierbatch.policies.quota import Grant
from tierbatch.policies.tiers import TierLadder


class GrantEverything(pykka.ThreadingActor):
    """A registry that grants every request at once and ignores the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.grants = 0

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Acquire):
            self.grants += 1
            grant = Grant(self.grants, message.chain[0], 0.0, message.est_tokens)
            message.reply(Granted(message.request_id, grant))
        return None


class Recorder(pykka.ThreadingActor):
    """A composer that keeps what the extractor finishes or gives back."""

    def __init__(self, done: threading.Event) -> None:
        super().__init__()
        self.done = done
        self.finished: list[Any] = []
        self.given_back: list[str] = []

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Finished):
            self.finished.extend(message.results)
            self.done.set()
        elif isinstance(message, GiveBack):
            self.given_back.extend(message.article_ids)
            self.done.set()
        return None


def test_articles_not_sent_after_dispatch_stopped_go_back_instead_of_spending_their_budget():
    """Dispatch stopped (stop, shutdown, failure) before the extractor heard
    of it: its granted calls come back ``Cancelled`` without being sent.
    They used to be retried -- granted and cancelled again, an attempt each
    time -- until the retry budget ended the articles as failed; the runtime
    must hand them back unfinished instead."""
    config = small_config(extractors=1)
    stopped = threading.Event()
    stopped.set()
    settled = threading.Event()
    loop = LoopThread()
    loop.start()
    registry = GrantEverything.start()
    composer = Recorder.start(settled)
    deps = ExtractorDeps(
        config=config,
        ladder=TierLadder(config.tiers, config.global_fallback),
        provider=ScriptedProvider(),
        clock=SystemClock(),
        loop=loop,
        pacer=LaunchPacer(0.0),
        registry=registry,
        composer=composer,
        on_crash=lambda *_: None,
        on_fatal=lambda *_: None,
        dispatch_stopped=stopped,
    )
    extractor = Extractor.start(1, deps)
    try:
        articles = make_articles(3)
        items = tuple(Queued(a, 0.0, 2, 2, 0.0, i) for i, a in enumerate(articles))
        extractor.tell(WorkBatch(Batch(1, items)))
        assert settled.wait(10)
        recorder = composer.proxy()
        assert recorder.finished.get(timeout=10) == []
        assert sorted(recorder.given_back.get(timeout=10)) == sorted(a.id for a in articles)
    finally:
        extractor.stop()
        composer.stop()
        registry.stop()
        loop.stop()
