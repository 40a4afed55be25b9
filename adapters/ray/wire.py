"""What crosses between a daemon and the registry actor besides messages:
the actor's name and where its state is kept, a config's fingerprint,
statuses moved between clocks, and one backlog from many daemons'.

Kept apart from the actor so a daemon's handle uses them without the actor.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence

from tierbatch.actors.messages import Backlog
from tierbatch.policies.backlog import TierBacklog
from tierbatch.policies.config import Config
from tierbatch.policies.quota import ModelStatus

NAMESPACE = "tierbatch"
# ModelStatus fields that are steady-clock times.
_STATUS_TIMES = ("cooldown_until", "exhausted_until")


def config_fingerprint(config: Config) -> str:
    """What the registry's decisions depend on -- models, quota settings,
    tiers -- in a few hex digits, so a daemon can tell that its config is
    not the one the shared registry was created with."""
    relevant = (sorted(config.models.items()), config.quota, config.tiers, config.global_fallback)
    return hashlib.sha256(repr(relevant).encode()).hexdigest()[:12]


def actor_name(project: str) -> str:
    return f"tierbatch-registry-{project}"


def kv_key(project: str) -> bytes:
    return f"tierbatch/quota/{project}".encode()


def shift_status(statuses: Sequence[ModelStatus], delta: float) -> tuple[ModelStatus, ...]:
    """``statuses`` with their deadlines moved by ``delta`` seconds (steady
    to wall: + the wall offset; wall to steady: - it)."""
    shifted = []
    for status in statuses:
        changes = {
            name: getattr(status, name) + delta
            for name in _STATUS_TIMES
            if getattr(status, name) is not None
        }
        shifted.append(dataclasses.replace(status, **changes) if changes else status)
    return tuple(shifted)


def merged_backlog(by_client: Mapping[str, tuple[TierBacklog, ...]]) -> Backlog:
    """One backlog from every client's. Daemons on one queue each count the
    whole store's backlog, so a sum would count it once per daemon: per tier
    the largest report stands for all of them."""
    tiers: dict[str, TierBacklog] = {}
    for backlog in by_client.values():
        for tier in backlog:
            known = tiers.get(tier.tier)
            if known is None or tier.articles > known.articles:
                tiers[tier.tier] = tier
    return Backlog(tuple(tiers.values()))


__all__ = [
    "NAMESPACE",
    "actor_name",
    "config_fingerprint",
    "kv_key",
    "merged_backlog",
    "shift_status",
]
