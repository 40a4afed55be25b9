"""BatchComposer: the actor around the work ledger.

It scores and tiers every submitted article and hands out a tier-mixed batch
only when an extractor asks for one, so a large backlog waits here rather
than in flight. Where each article is -- queued, held by which extractor,
suspect after a crash, terminal -- is the pure ``Ledger``'s business
(``tierbatch.policies.ledger``); this actor serialises the messages that
move articles, hands results to the sink (once per article: this is the
single place where an article becomes terminal), and answers the drain and
space waiters. It also keeps the pack quality (``policies.pack_quality``):
every answered request's grounding outcomes come here, warnings are logged
from here, and the adaptive tiers' pack sizes go out with every batch.

Longer than the house's ~450 lines on purpose: one actor class; its
decisions are the ledger's and the tier assigner's, in policies.
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import pykka
import structlog

from tierbatch.actors.clock import Clock
from tierbatch.actors.messages import (
    Backlog,
    BacklogElsewhere,
    BeginShutdown,
    Classify,
    ExtractorDied,
    Finished,
    GetComposerStats,
    GetTierSplit,
    GetTierThresholds,
    GiveBack,
    ObserveClusters,
    PackChecked,
    Pause,
    RequestWork,
    SeedTiers,
    Submit,
    TakeReturned,
    TakeUnfinished,
    WhenDrained,
    WhenSpace,
    WorkBatch,
)
from tierbatch.actors.ports import Sink
from tierbatch.actors.stats import RuntimeStats, SubmitReceipt
from tierbatch.actors.threads import ThreadLedger
from tierbatch.policies.articles import Article
from tierbatch.policies.backlog import BacklogMeter
from tierbatch.policies.composition import Composer
from tierbatch.policies.config import Config
from tierbatch.policies.errors import ShuttingDownError
from tierbatch.policies.feeding import TierFeed, TierFeedShape
from tierbatch.policies.grounding import GroundingCounts
from tierbatch.policies.ledger import Ledger
from tierbatch.policies.pack_quality import PackQuality
from tierbatch.policies.priority import ClusterTracker, article_time, score
from tierbatch.policies.results import TerminalResult
from tierbatch.policies.tier_assignment import TierAssigner
from tierbatch.policies.tiers import TierLadder
from tierbatch.policies.tokens import TokenEstimator

_log = structlog.get_logger(__name__)
# Clusters not seen for this long are forgotten (bounded memory in a daemon).
CLUSTER_MEMORY_S = 7 * 24 * 3600.0


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
        ladder: TierLadder,
        sink: Sink,
        clock: Clock,
        on_died: ComposerDied | None = None,
        threads: ThreadLedger | None = None,
        backlog_to: Callable[[Backlog], None] | None = None,
        as_of: float | None = None,
    ) -> None:
        super().__init__()
        # Priority compares publication times with this instant (epoch
        # seconds) instead of the wall clock: a replay of an old feed.
        self._as_of = as_of
        self._threads = threads
        # The work ahead per tier, reported to the registry for its plan.
        self._backlog_to = backlog_to
        self._tier_names = ladder.names
        self._meter = BacklogMeter(self._tier_names)
        self._tokens = TokenEstimator()
        self._config = config
        self._sink = sink
        self._clock = clock
        self._on_died = on_died
        self._ledger = Ledger(
            Composer(ladder, config.composer.mix, config.composer.aging_s),
            config.retry.poison_after,
        )
        self._feed = TierFeed(feed_shapes(config, ladder), config.quota.window_s)
        self._room = config.runtime.extractors * config.runtime.max_packs_in_flight
        self._ladder_spec = {t.name: t.max_articles_per_request for t in ladder.tiers}
        self._clusters = ClusterTracker(config.priority.velocity_window_s)
        self._assigner = TierAssigner(ladder, config.composer.share_window)
        self._quality = PackQuality(config.tiers, config.grounding)
        self._pack_sizes = tuple(self._quality.sizes.items())
        self._capacity = config.composer.max_queued
        # Priority and tier of articles ``Classify`` tiered, until submitted.
        self._classified: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._idle: deque[RequestWork] = deque()
        self._dead: set[int] = set()  # extractors that died (ids are never reused)
        self._drain_waiters: list[pykka.ThreadingFuture[bool]] = []
        self._space_waiters: list[pykka.ThreadingFuture[bool]] = []
        self._unsunk: list[TerminalResult] = []
        self._paused: str | None = None
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
            case PackChecked(tier, model, pack_size, counts):
                self._on_pack_checked(tier, model, pack_size, counts)
            case Submit(articles, observe):
                return self._on_submit(articles, observe)
            case Classify(articles, observe):
                return self._classify(articles, observe)
            case BacklogElsewhere(articles, arrivals_per_s):
                self._meter.elsewhere(articles, arrivals_per_s)
                self._report_backlog(self._clock.now())
            case SeedTiers(articles, observe):
                self._on_seed(articles, observe)
            case GetTierSplit():
                split = self._assigner.split()
                self._assigner.end_seeding()
                return split
            case GetTierThresholds():
                return self._assigner.current()
            case ObserveClusters(observations):
                wall = self._priority_now()  # publication times are wall-clock times
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

    def _on_submit(self, articles: tuple[Article, ...], observe: bool) -> SubmitReceipt:
        """Queue what fits; the receipt's ``consumed`` says how far it got."""
        ledger = self._ledger
        if ledger.shutting_down:
            raise ShuttingDownError("the runtime is shutting down: it takes no more articles")
        # Queue age (aging, latency) runs on steady time; priority compares
        # publication times, so it runs on the wall clock (or ``as_of``).
        now, wall = self._clock.now(), self._priority_now()
        assigner = self._assigner
        accepted = 0
        duplicates: list[str] = []
        for article in articles:
            if ledger.is_known(article.id):
                duplicates.append(article.id)
                continue
            if ledger.queued >= self._capacity:
                break
            seen_at = article_time(article, wall)
            if observe and article.cluster_id is not None:
                self._clusters.observe(article.cluster_id, min(seen_at, wall))
            classified = self._classified.pop(article.id, None)
            if classified is not None:  # tiered by ``Classify``, and counted then
                priority, tier = classified
            else:
                seeded_priority = assigner.seeded_priority(article.id)
                seeded = seeded_priority is not None
                priority = (
                    self._score(article, wall) if seeded_priority is None else seeded_priority
                )
                tier = assigner.assign(article.id, priority, seeded=seeded)
            item = ledger.admit(article, priority, now, tier)
            chars = len(article.text) + len(article.title)
            self._meter.submitted(
                self._tier_names[item.tier],
                self._tokens.estimate(chars, 1) - self._tokens.estimate(0, 0),
            )
            accepted += 1
        if now - self._last_prune > 3600.0:
            self._clusters.prune(wall, CLUSTER_MEMORY_S)
            self._last_prune = now
        if duplicates:
            _log.warning(
                "duplicate article ids refused", count=len(duplicates), first=duplicates[0]
            )
        # The registry plans on the new work before any pack of it asks for
        # quota: reported after the dispatch, the first packs' requests could
        # reach it first and be granted without a plan (fallbacks taken that
        # the plan keeps for the tiers that need them).
        if accepted:
            self._report_backlog(now)
        self._dispatch()
        return SubmitReceipt(accepted, tuple(duplicates))

    def _classify(self, articles: tuple[Article, ...], observe: bool) -> tuple[str, ...]:
        """The tier each article is queued in, decided now as ``Submit``
        decides it (the share window counts it now); a later ``Submit`` of
        the same article takes that tier and priority instead of counting
        it a second time."""
        wall = self._priority_now()
        assigner = self._assigner
        names: list[str] = []
        for article in articles:
            if observe and article.cluster_id is not None:
                self._clusters.observe(article.cluster_id, min(article_time(article, wall), wall))
            known = self._classified.pop(article.id, None)
            if known is None:
                priority = assigner.seeded_priority(article.id)
                seeded = priority is not None
                if priority is None:
                    priority = self._score(article, wall)
                known = (priority, assigner.assign(article.id, priority, seeded=seeded))
            self._classified[article.id] = known
            while len(self._classified) > self._capacity:
                # those routed elsewhere are never submitted: forget the oldest
                self._classified.popitem(last=False)
            names.append(self._tier_names[known[1]])
        return tuple(names)

    def _priority_now(self) -> float:
        return self._clock.wall() if self._as_of is None else self._as_of

    def _score(self, article: Article, wall: float) -> float:
        stats = None
        if article.cluster_id is not None:
            stats = self._clusters.stats(article.cluster_id, wall)
        return score(article, stats, wall, self._config.priority)

    def _on_seed(self, articles: tuple[Article, ...], observe: bool) -> None:
        """Priorities of articles to come, counted towards the tier shares
        ahead (``SeedTiers``); each keeps the priority it was seeded with."""
        wall = self._priority_now()
        if observe:
            for article in articles:
                if article.cluster_id is not None:
                    at = min(article_time(article, wall), wall)
                    self._clusters.observe(article.cluster_id, at)
        for article in articles:
            if not self._ledger.is_known(article.id):
                self._assigner.seed(article.id, self._score(article, wall))

    def _dispatch(self) -> None:
        if self._paused is not None:
            return
        now = self._clock.now()
        held = (
            self._feed.held(
                self._ledger.held_by_tier,
                self._room,
                now,
                [self._per_article_tokens(name) for name in self._tier_names],
            )
            if self._idle
            else frozenset()
        )
        while self._idle and self._ledger.has_work():
            request = self._idle.popleft()
            batch = self._ledger.take(request.extractor, now, held)
            if batch is None:
                self._idle.appendleft(request)
                break
            request.reply(WorkBatch(batch, self._pack_sizes))
        if self._space_waiters and self._has_space():
            self._resolve(self._space_waiters, True)
        self._report_backlog(now)

    def _per_article_tokens(self, tier: str) -> float:
        """A tier's mean input tokens per article in a full request, the
        prompt's share included."""
        per_request = self._ladder_spec[tier]
        article = self._meter.tokens_per_article(tier)
        if article <= 0:
            return 0.0
        return article + self._tokens.estimate(0, 0) / per_request

    def _report_backlog(self, now: float) -> None:
        if self._backlog_to is None:
            return
        backlog = self._meter.backlog(self._ledger.queued_by_tier())
        if self._meter.changed(backlog):
            self._backlog_to(Backlog(backlog))

    # ---- results ---------------------------------------------------------------

    def _on_pack_checked(
        self, tier: str, model: str, pack_size: int, counts: GroundingCounts
    ) -> None:
        for note in self._quality.observe(tier, model, pack_size, counts):
            getattr(_log, note.level)(note.event, **note.fields)
        self._pack_sizes = tuple(self._quality.sizes.items())

    def _on_finished(self, extractor: int, results: tuple[TerminalResult, ...]) -> None:
        finish = self._ledger.finish(extractor, results)
        for article_id in finish.refused:
            _log.warning(
                "late or duplicate result ignored", article=article_id, extractor=extractor
            )
        self._terminal(finish.accepted)
        if finish.served:
            self._feed.finished(finish.served, self._clock.now())
            if self._idle:  # a held tier may be fed again
                self._dispatch()

    def _terminal(self, results: tuple[TerminalResult, ...]) -> None:
        """Results the ledger has recorded: to the sink."""
        if results:
            self._unsunk.extend(results)
            self._flush_sink()
        self._check_drained()

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

    # ---- failures ----------------------------------------------------------------

    def _on_give_back(self, extractor: int, ids: tuple[str, ...]) -> None:
        self._ledger.give_back(extractor, ids)
        if self._ledger.shutting_down:
            self._check_drained()
            return
        self._dispatch()

    def _on_extractor_died(self, extractor: int, error: str, blamed: frozenset[str]) -> None:
        """Take back what a dead extractor held (the ledger decides: suspects,
        bystanders, poison)."""
        # A request for work it sent before dying may still wait here: a batch
        # sent to it now would be held by nobody.
        self._dead.add(extractor)
        self._idle = deque(r for r in self._idle if r.extractor != extractor)
        crash = self._ledger.crash(extractor, blamed, error)
        _log.warning(
            "extractor died; its articles go back to the queue",
            extractor=extractor,
            suspects=crash.suspects,
            bystanders=crash.bystanders,
            poisoned=len(crash.poisoned),
            error=error,
        )
        self._terminal(crash.poisoned)
        self._dispatch()

    def _begin_shutdown(self) -> None:
        self._ledger.begin_shutdown()
        self._paused = self._paused or "stopping"
        self._idle.clear()
        self._resolve(self._space_waiters, False)

    def _take_returned(self) -> list[Article]:
        articles = self._ledger.take_returned()
        self._check_drained()
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
        return self._ledger.take_unfinished()

    # ---- waiting -----------------------------------------------------------------

    def _outstanding(self) -> int:
        return self._ledger.outstanding + len(self._unsunk)

    def _check_drained(self) -> None:
        if self._drain_waiters and self._outstanding() == 0:
            self._resolve(self._drain_waiters, True)

    def _has_space(self) -> bool:
        return self._ledger.queued < self._capacity

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

    def _stats(self) -> RuntimeStats:
        """The composer's part of the runtime's stats (the runtime adds the
        registry's and the result counts)."""
        ledger, tallies = self._ledger, self._ledger.tallies
        return RuntimeStats(
            submitted=tallies.submitted,
            queued=ledger.queued + ledger.suspects,
            queued_by_tier=ledger.queued_by_tier(),
            in_extractors=ledger.held,
            requeued_after_crash=tallies.requeued_after_crash,
            paused=self._paused,
            pack_sizes=dict(self._pack_sizes),
        )


def feed_shapes(config: Config, ladder: TierLadder) -> tuple[TierFeedShape, ...]:
    """Each tier's feed (``policies.feeding``): what its primary model admits
    per window by the config, in articles (unlimited: never held)."""
    shapes = []
    for tier in ladder.tiers:
        spec = config.models.get(tier.model)
        rpm = spec.rpm if spec is not None else 0
        tpm = spec.tpm if spec is not None else 0
        per_window = float(rpm * tier.max_articles_per_request) if rpm else math.inf
        tokens = float(tpm) if tpm else math.inf
        shapes.append(TierFeedShape(per_window, tier.max_articles_per_request, tokens))
    return tuple(shapes)
