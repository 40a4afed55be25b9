"""The grounding check: is each entity found in the article it was given for?

Packing several articles into one request multiplies throughput, but a model
answering for several articles at once can attribute an entity of one
article to another, or name one that is in none. This check compares every
entity's name with the texts of the request it came from:

* ``grounded``: found in its own article's title or text;
* ``cross_article``: not there, but in another article of the same request
  (the model mixed the articles up);
* ``ungrounded``: found nowhere (invented, or a name the model normalised).

"Found" means: the name's words appear, in order and whole, in the text
after both are normalised the same way -- Unicode compatibility forms,
diacritics removed, case folded, punctuation and runs of white space made
one space, and a possessive or plural ending dropped from every word (so
"Reuters'", "reuters" and "Reuter's" agree). A name with no word at all is
ungrounded. The check is pure and never raises, whatever the text.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

__all__ = [
    "Grounding",
    "GroundingAction",
    "GroundingCounts",
    "GroundingPolicy",
    "PackTexts",
    "normalised_words",
]

_WORD = re.compile(r"\w+")


class Grounding(StrEnum):
    GROUNDED = "grounded"
    CROSS_ARTICLE = "cross_article"
    UNGROUNDED = "ungrounded"


class GroundingAction(StrEnum):
    """What happens to an entity with a given outcome: ``keep`` it, keep it
    with a ``flag`` a downstream user can filter on, or ``drop`` it."""

    KEEP = "keep"
    FLAG = "flag"
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class GroundingPolicy:
    """The action per outcome. The default keeps grounded entities, drops
    cross-article ones (they belong to another article), and flags
    ungrounded ones (a model may rightly normalise a name: "the Fed" for
    "Federal Reserve")."""

    grounded: GroundingAction = GroundingAction.KEEP
    cross_article: GroundingAction = GroundingAction.DROP
    ungrounded: GroundingAction = GroundingAction.FLAG

    def action(self, outcome: Grounding) -> GroundingAction:
        action: GroundingAction = getattr(self, outcome.value)
        return action


@dataclass(frozen=True, slots=True)
class GroundingCounts:
    """How many of an article's entities had each outcome (before any drop)."""

    grounded: int = 0
    cross_article: int = 0
    ungrounded: int = 0

    @property
    def total(self) -> int:
        return self.grounded + self.cross_article + self.ungrounded

    def plus(self, outcome: Grounding) -> GroundingCounts:
        return GroundingCounts(
            self.grounded + (outcome is Grounding.GROUNDED),
            self.cross_article + (outcome is Grounding.CROSS_ARTICLE),
            self.ungrounded + (outcome is Grounding.UNGROUNDED),
        )

    def __add__(self, other: GroundingCounts) -> GroundingCounts:
        return GroundingCounts(
            self.grounded + other.grounded,
            self.cross_article + other.cross_article,
            self.ungrounded + other.ungrounded,
        )


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return stripped.casefold()


def _stem(word: str) -> str:
    """Drop a plural or possessive ending, so that both sides agree on it."""
    if len(word) > 4 and word.endswith("es") and word[-3] in "sxz":
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


# ASCII text (most news) takes a fast path with the same result: NFKD and
# the combining marks change nothing there, ``casefold`` is ``lower``, and a
# word is a run of [a-z0-9_], which is what ``\w`` matches in ASCII.
_ASCII_SEPARATORS = str.maketrans(
    {chr(c): " " for c in range(128) if not (chr(c).isalnum() or chr(c) == "_")}
)


def _words(text: str) -> list[str]:
    if text.isascii():
        words = text.lower().translate(_ASCII_SEPARATORS).split()
    else:
        words = _WORD.findall(_fold(text))
    # Both endings ``_stem`` drops end in "s": the other words are left as they are.
    return [_stem(word) if word[-1] == "s" else word for word in words]


def normalised_words(text: str) -> tuple[str, ...]:
    """The words of ``text`` as the check compares them."""
    # An apostrophe separates words, so a possessive "'s" is a word of its own
    # that a name without it simply does not include.
    return tuple(_words(text))


@lru_cache(maxsize=4096)
def _needle(name: str) -> str | None:
    words = _words(name)
    return " " + " ".join(words) + " " if words else None


class PackTexts:
    """The normalised texts of one request's articles, built once per answer."""

    def __init__(self, articles: Iterable[tuple[str, str, str]]) -> None:
        """``articles``: ``(article id, title, text)`` of every article of the request."""
        self._haystacks: dict[str, str] = {}
        for article_id, title, text in articles:
            words = _words(f"{title}\n{text}")
            self._haystacks[article_id] = " " + " ".join(words) + " "

    def check(self, article_id: str, name: str) -> Grounding:
        """The outcome of entity ``name`` given for ``article_id``."""
        needle = _needle(name)
        if needle is None:
            return Grounding.UNGROUNDED
        own = self._haystacks.get(article_id, "")
        if needle in own:
            return Grounding.GROUNDED
        for other_id, haystack in self._haystacks.items():
            if other_id != article_id and needle in haystack:
                return Grounding.CROSS_ARTICLE
        return Grounding.UNGROUNDED

    def check_all(self, article_id: str, names: Sequence[str]) -> list[Grounding]:
        return [self.check(article_id, name) for name in names]


def count(outcomes: Iterable[Grounding]) -> GroundingCounts:
    counts = GroundingCounts()
    for outcome in outcomes:
        counts = counts.plus(outcome)
    return counts


def shares(counts: Mapping[str, GroundingCounts]) -> dict[str, tuple[float, float]]:
    """Per key: the share of cross-article and of ungrounded entities."""
    out = {}
    for key, c in counts.items():
        total = c.total
        out[key] = (c.cross_article / total, c.ungrounded / total) if total else (0.0, 0.0)
    return out
