"""An article's attempts while an extractor holds it, and its retry budget.

Every call an article is part of counts an attempt (a 429 included: it spent
a grant); errors, timeouts and invalid answers also count a failure. The
budget ends an article when either count reaches its limit, so retrying
always terminates: each grant raises ``attempts`` and nothing lowers it. The
last failure seen is what the article's ``Failed`` result says, so an
operator reads why it ended, not merely that the budget ran out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tierbatch.policies.composition import Queued
from tierbatch.policies.config import RetryConfig
from tierbatch.policies.results import Failed, FailureReason


@dataclass(slots=True)
class ArticleProgress:
    """One held article: its estimated share of a request's input tokens
    (fixed when it is taken, so packing and attribution agree), and what
    has been tried."""

    item: Queued
    est_tokens: int
    attempts: int = 0
    failures: int = 0
    last_model: str | None = None
    last_reason: FailureReason = FailureReason.RETRIES_EXHAUSTED
    last_detail: str = ""
    # The most articles a pack carrying it may hold (None: the tier's limit);
    # lowered when its answer was truncated, so merging keeps it in smaller packs.
    pack_cap: int | None = None

    @property
    def article_id(self) -> str:
        return self.item.article.id

    def tried(self, model: str) -> None:
        """A call to ``model`` is about to carry the article."""
        self.attempts += 1
        self.last_model = model

    def failed(self, reason: FailureReason, detail: str, *, counts: bool = True) -> None:
        """The last call failed for the article; ``counts`` toward the
        failure budget unless it was not the article's fault."""
        self.last_reason, self.last_detail = reason, detail
        self.failures += counts

    def result(self, tier_name: str) -> Failed:
        """The article's terminal failure, naming the last thing that went wrong."""
        return Failed(
            article_id=self.item.article.id,
            reason=self.last_reason,
            detail=self.last_detail or "retry budget spent",
            tier=tier_name,
            attempts=self.attempts,
            last_model=self.last_model,
            metadata=self.item.article.metadata,
        )


@dataclass(frozen=True, slots=True)
class RetryBudget:
    """How many calls (``max_attempts``) and failures (``max_failures``) an
    article may take part in before it ends as failed."""

    max_attempts: int
    max_failures: int

    @classmethod
    def of(cls, retry: RetryConfig) -> RetryBudget:
        return cls(retry.max_attempts, retry.max_failures)

    def spent(self, member: ArticleProgress) -> bool:
        return member.attempts >= self.max_attempts or member.failures >= self.max_failures

    def split(
        self, members: Iterable[ArticleProgress]
    ) -> tuple[list[ArticleProgress], list[ArticleProgress]]:
        """(may be retried, must end now), each in the order given."""
        survivors: list[ArticleProgress] = []
        spent: list[ArticleProgress] = []
        for member in members:
            (spent if self.spent(member) else survivors).append(member)
        return survivors, spent
