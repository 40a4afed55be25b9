"""BatchComposer: the work ledger.

It scores and tiers every submitted article, keeps the per-tier queues, and
hands out a tier-mixed batch only when an extractor asks for one, so a large
backlog waits here rather than in flight. It also records which extractor
holds which article and is the single place where an article becomes
terminal: results reach the sink from here, once per article, whatever
crashes or retries happened on the way.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka
import structlog

from tierbatch.actors.clock import Clock
from tierbatch.actors.errors import ShuttingDown
from tierbatch.actors.messages import (
    Backlog,
    BacklogElsewhere,
    BeginShutdown,
    ExtractorDied,
    Finished,
    GetComposerStats,
    GiveBack,
    ObserveClusters,
    Pause,
    RequestWork,
    Submit,
    TakeReturned,
    TakeUnfinished,
    WhenDrained,
    WhenSpace,
    WorkBatch,
)
from tierbatch.actors.ports import Sink
from tierbatch.actors.threads import ThreadLedger
from tierbatch.policies.articles import Article
from tierbatch.policies.backlog import BacklogMeter
from tierbatch.policies.composition import Batch, Composer, Queued
from tierbatch.policies.config import Config
from tierbatch.policies.priority import ClusterTracker, article_time, score
from tierbatch.policies.results import Done, Failed, FailureReason, TerminalResult
from tierbatch.policies.tiers import TierLadder
from tierbatch.policies.tokens import TokenEstimator

_log = structlog.get_logger("tierbatch.composer")

# How many finished ids are remembered to refuse a quick re-submission.
RECENT_TERMINAL_IDS = 100_000
# Clusters not seen for this long are forgotten (bounded memory in a daemon).
CLUSTER_MEMORY_S = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """``consumed`` input articles were handled (accepted or refused as
    duplicates); the rest did not fit in the queue."""

    consumed: int
    accepted: int
    duplicates: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ComposerStats:
    submitted: int
    queued: int
    queued_by_tier: dict[str, int]
    held: int
    done: int
    failed: int
    done_by_tier: dict[str, int]
    failed_by_tier: dict[str, int]
    done_by_model: dict[str, int]
    failed_by_reason: dict[str, int]
    fallbacks: int
    requeued_after_crash: int
    sink_backlog: int
    paused: str | None


# Called when the composer dies: which actor, the exception, and the
# articles its ledger still held (best effort: it died mid-update).
ComposerDied = Callable[[str, BaseException, tuple[Article, ...]], None]


class BatchComposer(pykka.ThreadingActor):
    """``on_died`` is called (on this actor's thread) if a message handler
    raises: the actor is then dead and its ledger is handed over."""

    # A stuck actor thread must never keep the process from exiting.
    use_daemon_thread = True

    def __init__(
        self,
        config: Config,
        sink: Sink,
        clock: Clock,
        on_died: ComposerDied | None = None,
        threads: ThreadLedger | None = None,
        backlog_to: Callable[[Backlog], None] | None = None,
    ) -> None:
        super().__init__()
        self._threads = threads
        # The work ahead per tier, reported to the registry for its plan.
        self._backlog_to = backlog_to
        self._meter = BacklogMeter(TierLadder(config.tiers, config.global_fallback).names)
        self._tokens = TokenEstimator()
        self._config = config
        self._sink = sink
        self._clock = clock
        self._on_died = on_died
        self._ladder = TierLadder(config.tiers, config.global_fallback)
        self._queues = Composer(self._ladder, config.composer.mix, config.composer.aging_s)
        self._clusters = ClusterTracker(config.priority.velocity_window_s)
        self._capacity = config.composer.max_queued
        self._live: set[str] = set()  # queued or held: not yet terminal
        # Articles held by an extractor that crashed. Each goes out alone, so
        # only a true poison article keeps crashing extractors and its
        # batch-mates are not blamed with it.
        self._suspects: deque[Queued] = deque()
        self._probe_ids = itertools.count(-1, -1)
        self._held: dict[str, tuple[int, Queued]] = {}
        self._by_extractor: dict[int, set[str]] = {}
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._crashes: Counter[str] = Counter()
        self._idle: deque[RequestWork] = deque()
        self._dead: set[int] = set()  # extractors that died (ids are never reused)
        self._drain_waiters: list[pykka.ThreadingFuture[bool]] = []
        self._space_waiters: list[pykka.ThreadingFuture[bool]] = []
        self._unsunk: list[TerminalResult] = []
        self._paused: str | None = None
        # After BeginShutdown: nothing is dispatched or queued again; what
        # extractors give back waits in ``_returned`` for TakeReturned.
        self._shutting_down = False
        self._returned: list[Article] = []
        self._submitted = 0
        self._done_by_tier: Counter[str] = Counter()
        self._failed_by_tier: Counter[str] = Counter()
        self._done_by_model: Counter[str] = Counter()
        self._failed_by_reason: Counter[str] = Counter()
        self._fallbacks = 0
        self._requeued_after_crash = 0
        self._last_prune = float("-inf")  # steady time of the last prune

    # ---- messages ------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        match message:
            case RequestWork():
                if message.extractor not in self._dead:
                    self._idle.append(message)
                    self._dispatch()
            case Finished(extractor, results):
                self._on_finished(extractor, results)
            case Submit(articles, observe):
                return self._on_submit(articles, observe)
            case BacklogElsewhere(articles, arrivals_per_s):
                self._meter.elsewhere(articles, arrivals_per_s)
                self._report_backlog(self._clock.now())
            case ObserveClusters(observations):
                wall = self._clock.wall()  # publication times are wall-clock times
                for cluster_id, at in observations:
                    self._clusters.observe(cluster_id, min(at, wall))
            case GiveBack(extractor, ids):
                self._on_give_back(extractor, ids)
            case ExtractorDied(extractor, error, blamed):
                self._on_extractor_died(extractor, error, frozenset(blamed))
            case WhenDrained():
                return self._future_when(self._outstanding() == 0, self._drain_waiters)
            case WhenSpace():
                if self._paused is not None:  # the queue will not move: do not wait
                    return self._future_when(True, [], value=False)
                return self._future_when(self._has_space(), self._space_waiters)
            case Pause(reason):
                self._paused = reason
                self._resolve(self._drain_waiters, False)
                self._resolve(self._space_waiters, False)
            case BeginShutdown():
                self._begin_shutdown()
            case TakeReturned():
                return self._take_returned()
            case TakeUnfinished():
                return self._take_unfinished()
            case GetComposerStats():
                return self._stats()
            case _:
                raise TypeError(f"BatchComposer: unexpected message {message!r}")
        return None

    def on_start(self) -> None:
        if self._threads is not None:
            self._threads.add_current("composer")

    def on_stop(self) -> None:
        self._flush_sink()
        self._resolve(self._drain_waiters, False)
        self._resolve(self._space_waiters, False)

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        """A handler raised: this actor is dead (pykka calls no ``on_stop``).
        Save what can be saved -- results not yet in the sink, the ledger of
        unfinished articles -- tell the runtime (so it is failed before
        anyone wakes up), then answer every waiter."""
        unfinished: tuple[Article, ...] = ()
        with contextlib.suppress(Exception):
            self._flush_sink()
        with contextlib.suppress(Exception):
            unfinished = tuple(self._collect_unfinished())
        try:
            if self._on_died is not None:
                self._on_died("composer", exception_value, unfinished)
        finally:
            self._resolve(self._drain_waiters, False)
            self._resolve(self._space_waiters, False)

    # ---- submission ------------------------------------------------------------

    def _on_submit(self, articles: tuple[Article, ...], observe: bool) -> SubmitResult:
        if self._shutting_down:
            raise ShuttingDown("the runtime is shutting down: it takes no more articles")
        # Queue age (aging, latency) runs on steady time; priority compares
        # publication times, so it runs on the wall clock.
        now, wall = self._clock.now(), self._clock.wall()
        cfg = self._config.priority
        consumed = accepted = 0
        duplicates: list[str] = []
        for article in articles:
            if article.id in self._live or article.id in self._recent:
                duplicates.append(article.id)
                consumed += 1
                continue
            if len(self._queues) >= self._capacity:
                break
            seen_at = article_time(article, wall)
            stats = None
            if article.cluster_id is not None:
                if observe:
                    self._clusters.observe(article.cluster_id, min(seen_at, wall))
                stats = self._clusters.stats(article.cluster_id, wall)
            item = self._queues.push(article, score(article, stats, wall, cfg), now)
            chars = len(article.text) + len(article.title)
            self._meter.submitted(
                self._ladder.tiers[item.tier].name,
                self._tokens.estimate(chars, 1) - self._tokens.estimate(0, 0),
            )
            self._live.add(article.id)
            consumed += 1
            accepted += 1
        self._submitted += accepted
        if now - self._last_prune > 3600.0:
            self._clusters.prune(wall, CLUSTER_MEMORY_S)
            self._last_prune = now
        if duplicates:
            _log.warning(
                "duplicate article ids refused", count=len(duplicates), first=duplicates[0]
            )
        self._dispatch()
        return SubmitResult(consumed, accepted, tuple(duplicates))

    def _dispatch(self) -> None:
        if self._paused is not None:
            return
        now = self._clock.now()
        while self._idle and (self._suspects or len(self._queues)):
            request = self._idle.popleft()
            if self._suspects:
                batch: Batch | None = Batch(next(self._probe_ids), (self._suspects.popleft(),))
            else:
                batch = self._queues.next_batch(now)
            if batch is None:
                self._idle.appendleft(request)
                break
            ids = self._by_extractor.setdefault(request.extractor, set())
            for item in batch.items:
                self._held[item.article.id] = (request.extractor, item)
                ids.add(item.article.id)
            request.reply(WorkBatch(batch))
        if self._space_waiters and self._has_space():
            self._resolve(self._space_waiters, True)
        self._report_backlog(now)

    def _report_backlog(self, now: float) -> None:
        if self._backlog_to is None:
            return
        backlog = self._meter.backlog(self._queues.depth_by_tier())
        if self._meter.changed(backlog):
            self._backlog_to(Backlog(backlog))

    # ---- results ---------------------------------------------------------------

    def _on_finished(self, extractor: int, results: tuple[TerminalResult, ...]) -> None:
        accepted: list[TerminalResult] = []
        for result in results:
            held = self._held.get(result.article_id)
            if held is None or held[0] != extractor:
                _log.warning(
                    "late or duplicate result ignored",
                    article=result.article_id,
                    extractor=extractor,
                )
                continue
            self._release(result.article_id, extractor)
            accepted.append(result)
        self._terminal(accepted)

    def _terminal(self, results: list[TerminalResult]) -> None:
        if not results:
            return
        for result in results:
            self._live.discard(result.article_id)
            self._remember(result.article_id)
            self._crashes.pop(result.article_id, None)
            if isinstance(result, Done):
                self._done_by_tier[result.tier] += 1
                self._done_by_model[result.model] += 1
                self._fallbacks += result.fallback
            else:
                self._failed_by_tier[result.tier] += 1
                self._failed_by_reason[str(result.reason)] += 1
        self._unsunk.extend(results)
        self._flush_sink()
        if self._drain_waiters and self._outstanding() == 0:
            self._resolve(self._drain_waiters, True)

    def _flush_sink(self) -> None:
        """Hand results to the sink, once: the sink owns buffering and retries
        (see ``Sink``). Keeping them here too after a failed write made the
        next write store them twice, and left a drain waiting for a retry
        that only a further result would have triggered."""
        if not self._unsunk:
            return
        pending, self._unsunk = self._unsunk, []
        try:
            self._sink.write(pending)
        except Exception:
            _log.exception(
                "sink write raised; results not handed over again (the sink owns retries)",
                count=len(pending),
                first=pending[0].article_id,
            )

    def _remember(self, article_id: str) -> None:
        self._recent[article_id] = None
        if len(self._recent) > RECENT_TERMINAL_IDS:
            self._recent.popitem(last=False)

    def _release(self, article_id: str, extractor: int) -> Queued:
        _, item = self._held.pop(article_id)
        owned = self._by_extractor.get(extractor)
        if owned is not None:
            owned.discard(article_id)
        return item

    # ---- failures ----------------------------------------------------------------

    def _on_give_back(self, extractor: int, ids: tuple[str, ...]) -> None:
        items = []
        for article_id in ids:
            held = self._held.get(article_id)
            if held is not None and held[0] == extractor:
                items.append(self._release(article_id, extractor))
        if self._shutting_down:
            self._set_aside(items)
            return
        self._queues.requeue(items)
        self._dispatch()

    def _set_aside(self, items: list[Queued]) -> None:
        """Shutting down: keep given-back articles for ``TakeReturned``."""
        for item in items:
            self._live.discard(item.article.id)
            self._returned.append(item.article)
        if self._drain_waiters and self._outstanding() == 0:
            self._resolve(self._drain_waiters, True)

    def _on_extractor_died(self, extractor: int, error: str, blamed: frozenset[str]) -> None:
        """Take back what a dead extractor held. The articles it was handling
        when it died count a crash and go out alone next time (so a poison
        article cannot take its batch-mates down with it); the rest were
        bystanders and simply go back to their queues."""
        # A request for work it sent before dying may still wait here: a batch
        # sent to it now would be held by nobody.
        self._dead.add(extractor)
        self._idle = deque(r for r in self._idle if r.extractor != extractor)
        ids = self._by_extractor.pop(extractor, set())
        poison: list[TerminalResult] = []
        requeue: list[Queued] = []
        bystanders: list[Queued] = []
        limit = self._config.retry.poison_after
        for article_id in ids:
            _, item = self._held.pop(article_id)
            if article_id not in blamed:
                bystanders.append(item)
                continue
            self._crashes[article_id] += 1
            if self._crashes[article_id] >= limit:
                poison.append(
                    Failed(
                        article_id=article_id,
                        reason=FailureReason.POISON,
                        detail=f"held by {self._crashes[article_id]} crashed extractors; "
                        f"last error: {error}",
                        tier=self._ladder.tiers[item.tier].name,
                        attempts=self._crashes[article_id],
                        metadata=item.article.metadata,
                    )
                )
            else:
                requeue.append(item)
        self._requeued_after_crash += len(requeue) + len(bystanders)
        requeue.sort(key=lambda item: (item.tier, item.seq))
        _log.warning(
            "extractor died; its articles go back to the queue",
            extractor=extractor,
            suspects=len(requeue),
            bystanders=len(bystanders),
            poisoned=len(poison),
            error=error,
        )
        if self._shutting_down:
            self._set_aside(requeue + bystanders)
        else:
            self._suspects.extend(requeue)
            self._queues.requeue(bystanders)
        self._terminal(poison)
        self._dispatch()

    def _begin_shutdown(self) -> None:
        self._shutting_down = True
        self._paused = self._paused or "stopping"
        self._idle.clear()
        self._resolve(self._space_waiters, False)

    def _take_returned(self) -> list[Article]:
        articles = self._returned
        self._returned = []
        articles.extend(item.article for item in self._suspects)
        self._suspects.clear()
        articles.extend(item.article for item in self._queues.drain_all())
        for article in articles:
            self._live.discard(article.id)
        if self._drain_waiters and self._outstanding() == 0:
            self._resolve(self._drain_waiters, True)
        return articles

    def _take_unfinished(self) -> list[Article]:
        articles = self._collect_unfinished()
        self._flush_sink()
        self._resolve(self._drain_waiters, False)
        return articles

    def _collect_unfinished(self) -> list[Article]:
        """Empty the ledger: every article not terminal, held or not."""
        self._paused = "stopping"
        self._idle.clear()
        articles = self._returned
        self._returned = []
        articles.extend(item.article for item in self._suspects)
        self._suspects.clear()
        articles.extend(item.article for item in self._queues.drain_all())
        articles.extend(item.article for _, item in self._held.values())
        self._held.clear()
        self._by_extractor.clear()
        self._live.clear()
        return articles

    # ---- waiting -----------------------------------------------------------------

    def _outstanding(self) -> int:
        return len(self._queues) + len(self._suspects) + len(self._held) + len(self._unsunk)

    def _has_space(self) -> bool:
        return len(self._queues) < self._capacity

    @staticmethod
    def _future_when(
        ready: bool, waiters: list[pykka.ThreadingFuture[bool]], *, value: bool = True
    ) -> pykka.ThreadingFuture[bool]:
        future: pykka.ThreadingFuture[bool] = pykka.ThreadingFuture()
        if ready:
            future.set(value)
        else:
            waiters.append(future)
        return future

    @staticmethod
    def _resolve(waiters: list[pykka.ThreadingFuture[bool]], value: bool) -> None:
        pending = list(waiters)
        waiters.clear()
        for future in pending:
            future.set(value)

    def _stats(self) -> ComposerStats:
        return ComposerStats(
            submitted=self._submitted,
            queued=len(self._queues) + len(self._suspects),
            queued_by_tier=self._queues.depth_by_tier(),
            held=len(self._held),
            done=sum(self._done_by_tier.values()),
            failed=sum(self._failed_by_tier.values()),
            done_by_tier=dict(self._done_by_tier),
            failed_by_tier=dict(self._failed_by_tier),
            done_by_model=dict(self._done_by_model),
            failed_by_reason=dict(self._failed_by_reason),
            fallbacks=self._fallbacks,
            requeued_after_crash=self._requeued_after_crash,
            sink_backlog=len(self._unsunk),
            paused=self._paused,
        )
