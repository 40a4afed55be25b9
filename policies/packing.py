"""How an extractor packs articles into requests, and merges packs that wait.

One request carries several articles of one tier: the prompt's fixed part is
paid once and a model's requests-per-minute go further. Two limits bound a
pack: the tier's ``max_articles_per_request`` and the runtime's
``max_input_tokens_per_request``, the latter counted with the request's
overhead (the prompt around the articles). An article whose estimate alone
exceeds the token budget still goes, alone: refusing it would lose it.

Packing at arrival is not enough. A daemon's articles trickle in a few at a
time, so each batch makes small packs, and when quota is short they wait for
it side by side. ``plan_merge`` decides, when one of them is granted, which
articles of its waiting siblings (same tier, same excluded models, so the
same chain) move into it, so the one request quota allows carries as many
articles as it may -- but never more than an article's ``pack_cap``: the
halves of a truncated answer must not be merged back into the pack whose
answer did not fit. The oldest siblings give first: articles that have
waited longest leave first. A sibling emptied that way is withdrawn from the
registry by the caller.

Everything here is pure: no clock, no messages; the extractor carries out
what these functions decide.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

from tierbatch.policies.articles import Article
from tierbatch.policies.attempts import ArticleProgress
from tierbatch.policies.config import RuntimeConfig, TierSpec
from tierbatch.policies.quota import Grant
from tierbatch.policies.tokens import TokenEstimator


class Weighed(Protocol):
    """A pack member: its share of a request's estimated input tokens."""

    @property
    def est_tokens(self) -> int: ...


M = TypeVar("M", bound=Weighed)


@dataclass(frozen=True, slots=True)
class PackLimits:
    """What one request of a tier may hold. ``overhead`` is the estimated
    tokens of the prompt around the articles, counted against
    ``max_tokens`` once per request."""

    max_articles: int
    max_tokens: int
    overhead: int = 0

    def __post_init__(self) -> None:
        if self.max_articles < 1:
            raise ValueError(f"max_articles must be >= 1, got {self.max_articles}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.overhead < 0:
            raise ValueError(f"overhead must be >= 0, got {self.overhead}")

    @classmethod
    def of(
        cls,
        tier: TierSpec,
        runtime: RuntimeConfig,
        overhead: int,
        max_articles: int | None = None,
    ) -> PackLimits:
        """The limits of ``tier``'s requests; ``max_articles`` lowers the
        tier's ``max_articles_per_request`` (an adaptive pack size, see
        ``policies.pack_quality``), never raises it."""
        articles = tier.max_articles_per_request
        if max_articles is not None:
            articles = max(1, min(articles, max_articles))
        return cls(articles, runtime.max_input_tokens_per_request, overhead)


def request_overhead(estimator: TokenEstimator) -> int:
    """Estimated tokens of the prompt around the articles."""
    return estimator.estimate(0, 0)


def article_tokens(estimator: TokenEstimator, article: Article) -> int:
    """The article's share of a request's estimated input tokens: what the
    request grows by when the article joins it (at least 1)."""
    chars = len(article.text) + len(article.title)
    return max(1, estimator.estimate(chars, 1) - request_overhead(estimator))


def request_raw(estimator: TokenEstimator, pack: Pack) -> float:
    """The uncalibrated estimate of ``pack``'s request, what the estimator
    learns the answer's count against (see ``policies.tokens``)."""
    chars = sum(len(m.item.article.text) + len(m.item.article.title) for m in pack.members)
    return estimator.raw(chars, len(pack.members))


def request_tokens(members: Sequence[Weighed], overhead: int) -> int:
    """The estimated input tokens of one request carrying ``members``."""
    return overhead + sum(m.est_tokens for m in members)


def chunk(members: Sequence[M], limits: PackLimits) -> list[list[M]]:
    """Cut ``members`` (in order) into packs within ``limits``: a pack is
    closed when one more article would pass the article count or the token
    budget. Every member lands in exactly one pack, in its order; a pack is
    never empty, and only a lone member may exceed the token budget."""
    packs: list[list[M]] = []
    pack: list[M] = []
    tokens = limits.overhead
    for member in members:
        if pack and (
            len(pack) >= limits.max_articles or tokens + member.est_tokens > limits.max_tokens
        ):
            packs.append(pack)
            pack, tokens = [], limits.overhead
        pack.append(member)
        tokens += member.est_tokens
    if pack:
        packs.append(pack)
    return packs


@dataclass(slots=True, eq=False)
class Pack:
    """Articles of one tier that go in one request.

    ``grant`` is set once quota is granted: until then the pack is waiting
    and may give its members to a sibling. ``acquired_tokens`` is what the
    members weighed when quota was asked for: merging moves members in or
    out while the pack waits, so the request's estimate is the grant's
    corrected by the difference (see ``request_estimate``)."""

    pack_id: int
    tier: int
    members: list[ArticleProgress]
    batch: int = 0
    excluded: frozenset[str] = frozenset()
    grant: Grant | None = None
    acquired_tokens: int = 0
    asked_at: float = 0.0  # steady time quota was asked for
    # Asked for beyond its own members: room for the waiting siblings that
    # may merge into it at the grant (``merge_room``), which the merge never
    # exceeds, so a request never carries more than its grant reserved.
    extra_tokens: int = 0

    @property
    def est_tokens(self) -> int:
        return sum(m.est_tokens for m in self.members)

    @property
    def enqueued_at(self) -> float:
        return min(m.item.enqueued_at for m in self.members)

    @property
    def article_ids(self) -> tuple[str, ...]:
        return tuple(m.item.article.id for m in self.members)

    def request_estimate(self, granted_tokens: int) -> int:
        """The estimated input tokens of this pack's request, given the
        estimate its quota was granted for."""
        return granted_tokens + self.est_tokens - self.acquired_tokens


@dataclass(frozen=True, slots=True)
class Move:
    """Members that leave the waiting pack ``donor``; ``emptied`` when none
    of its members stay (the caller withdraws its request)."""

    donor: int
    members: tuple[ArticleProgress, ...]
    emptied: bool


def pack_cap(members: Iterable[ArticleProgress], limits: PackLimits) -> int:
    """The most articles a pack of ``members`` may hold: the tier's limit,
    or less if one of them asks for less (``ArticleProgress.pack_cap``: the
    halves of a truncated answer must not be merged back together)."""
    caps = [m.pack_cap for m in members if m.pack_cap is not None]
    return min([limits.max_articles, *caps])


def plan_merge(
    target: Pack,
    tokens: int,
    packs: Iterable[Pack],
    limits: PackLimits,
    *,
    asked_by: float | None = None,
) -> list[Move]:
    """Which members of ``target``'s waiting siblings in ``packs`` join it,
    now that it is granted with ``tokens`` estimated request tokens
    (overhead included), so that it stays within ``limits`` and every
    member's ``pack_cap``.

    Siblings are the packs still waiting for quota with the same tier and
    the same excluded models (so the same chain) -- and, when ``asked_by``
    is given, that asked for quota no later than that: a grant on a
    fallback model must not carry off packs still within their patience
    for the primary (see ``fallback_cutoff``). The oldest give first,
    each member in its order; a member that does not fit (too large for
    the tokens left, or capped below the pack's size) is skipped and one
    after it may still go. Every member moved appears in exactly one
    ``Move``, and none of ``target``'s."""
    articles = len(target.members)
    cap = pack_cap(target.members, limits)
    if articles >= cap:
        return []
    donors = sorted(
        (
            p
            for p in packs
            if p is not target
            and p.grant is None
            and p.members
            and p.tier == target.tier
            and p.excluded == target.excluded
            and (asked_by is None or p.asked_at <= asked_by)
        ),
        key=lambda p: (p.enqueued_at, p.pack_id),
    )
    moves: list[Move] = []
    for donor in donors:
        if articles >= cap:
            break
        taken: list[ArticleProgress] = []
        for member in donor.members:
            if articles >= cap:
                break
            own = limits.max_articles if member.pack_cap is None else member.pack_cap
            if articles + 1 > own or tokens + member.est_tokens > limits.max_tokens:
                continue
            taken.append(member)
            articles += 1
            tokens += member.est_tokens
            cap = min(cap, own)
        if taken:
            moves.append(Move(donor.pack_id, tuple(taken), len(taken) == len(donor.members)))
    return moves


def merge_room(target: Pack, tokens: int, limits: PackLimits) -> int:
    """What ``target`` (estimated at ``tokens`` request tokens) asks for on
    top of its own when it asks for quota: room to be filled to its cap at
    the grant by siblings that wait then -- as many more articles, each
    twice its heaviest, within ``limits``. The merge at the grant never
    exceeds it (``capped``), so no request carries more than its grant
    reserved, and the registry frees what the request did not carry when
    it is sent. Room for only the siblings waiting when it asked left the
    oldest pack -- granted first, asked when it was alone -- without room
    (trickling arrivals: a third of the requests' places empty)."""
    members = target.members
    missing = pack_cap(members, limits) - len(members)
    if missing <= 0 or not members:
        return 0
    # Room for articles as heavy as its heaviest, so a sibling's skipped
    # for its size only rarely (what is not carried is freed at the send).
    heaviest = max(m.est_tokens for m in members)
    return max(0, min(missing * heaviest * 2, limits.max_tokens - tokens))


def capped(limits: PackLimits, max_tokens: int) -> PackLimits:
    """``limits`` with at most ``max_tokens`` per request (a grant's reservation)."""
    return replace(limits, max_tokens=max(1, min(limits.max_tokens, max_tokens)))


def fallback_cutoff(
    chain: Sequence[str], granted_model: str, patience_s: float, now: float
) -> float | None:
    """The latest ``asked_at`` of a sibling that may join a pack granted
    ``granted_model``: any (None) when that is the chain's primary or the
    tier has no patience; otherwise only siblings whose patience for the
    primary is over (they asked ``patience_s`` or more ago)."""
    if not chain or granted_model == chain[0] or patience_s <= 0:
        return None
    return now - patience_s


def merge_waiting(
    target: Pack,
    tokens: int,
    packs: Mapping[int, Pack],
    limits: PackLimits,
    *,
    asked_by: float | None = None,
) -> tuple[int, list[int]]:
    """Carry out ``plan_merge``: move the members, and return the merged
    request's estimated tokens and the ids of the packs it emptied (the
    caller forgets them and withdraws their requests)."""
    emptied: list[int] = []
    for move in plan_merge(target, tokens, packs.values(), limits, asked_by=asked_by):
        donor = packs[move.donor]
        moved = {id(m) for m in move.members}
        donor.members = [m for m in donor.members if id(m) not in moved]
        target.members.extend(move.members)
        tokens += sum(m.est_tokens for m in move.members)
        if move.emptied:
            emptied.append(move.donor)
    return tokens, emptied
