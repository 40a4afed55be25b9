"""The grounding check: examples, and properties on arbitrary text."""

from __future__ import annotations

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tierbatch.policies.grounding import (
    _WORD,
    Grounding,
    GroundingAction,
    GroundingPolicy,
    PackTexts,
    _fold,
    _stem,
    count,
    normalised_words,
)

PACK = PackTexts(
    [
        ("a", "Fed raises rates", "Jerome Powell said the Federal Reserve's board met in Zürich."),
        ("b", "Storm hits coast", "Apple's stores in Lisbon closed; the buses stopped."),
    ]
)


def test_case_diacritics_possessives_and_plurals_are_normalised():
    assert PACK.check("a", "ZURICH") is Grounding.GROUNDED
    assert PACK.check("a", "federal reserve") is Grounding.GROUNDED
    assert PACK.check("b", "Apple") is Grounding.GROUNDED
    assert PACK.check("b", "bus") is Grounding.GROUNDED
    assert PACK.check("a", "Jerome  Powell") is Grounding.GROUNDED


def test_an_entity_of_the_other_article_is_cross_article():
    assert PACK.check("a", "Lisbon") is Grounding.CROSS_ARTICLE
    assert PACK.check("b", "Jerome Powell") is Grounding.CROSS_ARTICLE


def test_invented_names_and_names_without_words_are_ungrounded():
    assert PACK.check("a", "Christine Lagarde") is Grounding.UNGROUNDED
    assert PACK.check("a", "!!!") is Grounding.UNGROUNDED
    assert PACK.check("a", "") is Grounding.UNGROUNDED
    assert PACK.check("unknown-id", "Lisbon") is Grounding.CROSS_ARTICLE


def test_words_match_whole_not_inside_other_words():
    assert PACK.check("a", "Pow") is Grounding.UNGROUNDED
    assert PACK.check("a", "Powell said") is Grounding.GROUNDED


def test_the_default_policy_keeps_drops_and_flags():
    policy = GroundingPolicy()
    assert policy.action(Grounding.GROUNDED) is GroundingAction.KEEP
    assert policy.action(Grounding.CROSS_ARTICLE) is GroundingAction.DROP
    assert policy.action(Grounding.UNGROUNDED) is GroundingAction.FLAG
    counts = count([Grounding.GROUNDED, Grounding.UNGROUNDED, Grounding.GROUNDED])
    assert (counts.grounded, counts.cross_article, counts.ungrounded, counts.total) == (2, 0, 1, 3)


words = st.text(alphabet=st.characters(categories=("L", "N", "M")), min_size=1, max_size=8)
separators = st.sampled_from([" ", ", ", ". ", "\n", " - ", "'", "’s ", "  "])


@st.composite
def texts(draw):
    parts = draw(st.lists(words, min_size=1, max_size=20))
    seps = draw(st.lists(separators, min_size=len(parts), max_size=len(parts)))
    return parts, seps


def span(parts, seps, start, length):
    out = []
    for i in range(start, start + length):
        out.append(parts[i])
        if i < start + length - 1:
            out.append(seps[i])
    return "".join(out)


def join(parts, seps):
    return "".join(p + s for p, s in zip(parts, seps, strict=True))


@settings(max_examples=300, deadline=None)
@given(texts(), st.data())
def test_a_name_copied_verbatim_from_its_own_article_is_grounded(text, data):
    parts, seps = text
    start = data.draw(st.integers(0, len(parts) - 1))
    length = data.draw(st.integers(1, len(parts) - start))
    name = span(parts, seps, start, length)
    pack = PackTexts([("own", data.draw(st.text(max_size=20)), join(parts, seps))])
    assume(normalised_words(name))
    assert pack.check("own", name) is Grounding.GROUNDED


@settings(max_examples=300, deadline=None)
@given(texts(), texts(), st.data())
def test_a_name_copied_from_another_article_and_absent_from_its_own_is_cross_article(
    own, other, data
):
    parts, seps = other
    start = data.draw(st.integers(0, len(parts) - 1))
    length = data.draw(st.integers(1, len(parts) - start))
    name = span(parts, seps, start, length)
    own_text = join(*own)
    needle = " " + " ".join(normalised_words(name)) + " "
    assume(normalised_words(name))
    assume(needle not in " " + " ".join(normalised_words(own_text)) + " ")
    pack = PackTexts([("own", "", own_text), ("other", "", join(parts, seps))])
    assert pack.check("own", name) is Grounding.CROSS_ARTICLE


@settings(max_examples=300, deadline=None)
@given(st.text(), st.text(), st.text())
def test_the_check_never_raises_on_any_text(title, text, name):
    pack = PackTexts([("x", title, text), ("y", text, title)])
    assert pack.check("x", name) in set(Grounding)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=127)))
def test_the_ascii_fast_path_normalises_as_the_general_one(text):
    general = tuple(_stem(w) for w in _WORD.findall(_fold(text)))
    assert normalised_words(text) == general
