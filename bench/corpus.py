"""The bench's articles: synthetic, deterministic, and the same for every system.

Each article's tier is fixed by its domain: the bench config gives every
tier's domains a goodness that puts them in that tier (priority = goodness,
no cluster hotness, so the tier never depends on the clock). Texts are
written from templates with capitalised names, so the fake server's entity
extractor has people, organisations and places to find. Nothing is
downloaded.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from bench.settings import BenchSettings
from tierbatch.adapters.gemini.prompt import SYSTEM_INSTRUCTION, build_user_text
from tierbatch.policies.articles import Article

_PEOPLE = (
    "Amara Okafor",
    "Lucas Brandt",
    "Sofia Marchetti",
    "Mateo Ruiz",
    "Ingrid Solberg",
    "Tomas Novak",
    "Priya Raman",
    "Kwame Asante",
    "Hannah Oduya",
    "Chiara Bellini",
)
_ORGS = (
    "Northwind Bank",
    "the European Commission",
    "Acme Robotics",
    "the United Nations",
    "Helios Energy",
    "the World Health Organization",
    "Baltic Freight",
    "the Bundesbank",
)
_PLACES = ("Paris", "Nairobi", "Lisbon", "Warsaw", "Manila", "Geneva", "Toronto", "Oslo")
_EVENTS = ("the Geneva Summit", "the Spring Forum", "the Harbour Conference", "the Energy Week")
_VERBS = ("said", "warned", "announced", "confirmed", "denied", "argued")
_FILLER = (
    "officials expect a decision before the end of the month",
    "the plan faces opposition from several member states",
    "analysts said the figures were better than expected",
    "the talks were described as constructive but difficult",
    "local residents have protested against the project for weeks",
    "the agreement still needs the approval of parliament",
    "investors reacted cautiously to the announcement",
    "the report will be published in full next week",
)


@dataclass(frozen=True, slots=True)
class BenchArticle:
    article: Article
    tier: int


def _sentence(rng: random.Random) -> str:
    return (
        f"{rng.choice(_PEOPLE)} of {rng.choice(_ORGS)} {rng.choice(_VERBS)} in "
        f"{rng.choice(_PLACES)} ahead of {rng.choice(_EVENTS)} that {rng.choice(_FILLER)}."
    )


def _text(rng: random.Random, min_chars: int, max_chars: int) -> str:
    target = rng.randint(min_chars, max_chars)
    parts: list[str] = []
    size = 0
    while size < target:
        sentence = _sentence(rng)
        parts.append(sentence)
        size += len(sentence) + 1
    return " ".join(parts)


def make_articles(
    settings: BenchSettings,
    n: int,
    prefix: str,
    *,
    seed: int | None = None,
    min_chars: int = 800,
    max_chars: int = 1800,
) -> list[BenchArticle]:
    """``n`` articles in the tiers' shares, shuffled so every tier is spread
    over the whole list (systems that work in list order meet the same mix)."""
    rng = random.Random(settings.seed if seed is None else seed)
    counts = [math.floor(t.share * n) for t in settings.tiers]
    counts[-1] += n - sum(counts)
    tiers = [i for i, c in enumerate(counts) for _ in range(c)]
    rng.shuffle(tiers)
    out: list[BenchArticle] = []
    for i, tier in enumerate(tiers):
        plan = settings.tiers[tier]
        domain = rng.choice(plan.domains)
        article_id = f"{prefix}-{i:07d}"
        out.append(
            BenchArticle(
                Article(
                    id=article_id,
                    text=_text(rng, min_chars, max_chars),
                    title=f"{rng.choice(_PLACES)}: {rng.choice(_ORGS)} {rng.choice(_VERBS)}",
                    url=f"https://{domain}/news/{article_id}",
                    domain=domain,
                    cluster_id=f"c{rng.randrange(40)}",
                ),
                tier,
            )
        )
    return out


def prompt_tokens(articles: Sequence[Article]) -> int:
    """Input tokens of one request carrying ``articles``, as the fake server
    counts them (about four characters per token, each part on its own)."""
    return math.ceil(len(SYSTEM_INSTRUCTION) / 4) + math.ceil(len(build_user_text(articles)) / 4)


def article_tokens(article: Article) -> float:
    """One article's share of a packed request's input tokens."""
    item = {"id": article.id, "title": article.title, "text": article.text}
    return (len(json.dumps(item, ensure_ascii=False)) + 2) / 4


def request_overhead_tokens() -> float:
    """The tokens of a request around its articles (system text, header)."""
    return prompt_tokens(()) + 1.0
