"""Plausible entities without a model, for the simulated provider and the
local fake Gemini server.

Both fakes must answer the same article with the same entities, and a bench
run must be repeatable, so everything here is a pure function of the text and
the model name. The little randomness used (salience jitter) is seeded from a
stable hash (``hashlib``), never from Python's per-process ``hash()``.

The rules are deliberately simple -- runs of capitalised words, classified by
keywords and a small gazetteer -- yet good enough that the entities look like
a model's and vary with the article, which is what the runtime's parser,
validator and sinks need to be exercised on.

Every entity found this way is in its article's text. ``AnswerQuality`` and
``degrade`` make a model that loses track of a pack: at configurable rates
an entity is swapped for one of another article of the request, or for a
name that is in no article -- what the grounding check must catch.

Longer than the house's ~450 lines on purpose: word lists (titles,
organisation, event and product words, stop words) are most of it.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tierbatch.policies.grounding import Grounding, PackTexts
from tierbatch.policies.results import Entity, EntityType
from tierbatch.policies.task import EntityTypeSpec, ExtraField, FieldType, TaskConfig

MAX_ENTITIES = 25
"""No article gets more entities than this, as a model's answer is bounded too."""

LITE_KEEP_FRACTION = 0.75
"""A "lite" model keeps only this fraction of the entities, most salient first."""


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_STOPWORDS = _words(
    """
    a an the in on at by for from to of with and or but nor so yet as if when
    while after before since until during despite under over into onto about
    this that these those it its he she his her hers him they them their we our
    us you your i my me there here then than also however meanwhile according
    some many most more much few several all any each every both either neither
    no not yes one two three four five six seven eight nine ten first last next
    new other such what which who whom whose where why how mr mrs ms dr st
    monday tuesday wednesday thursday friday saturday sunday january february
    march april may june july august september october november december
    today yesterday tomorrow said says say will would could should can may
    might must do does did is are was were be been being has have had
    """
)
"""Capitalised words that are grammar or dates, not names, when they open a run."""

_CONNECTORS = frozenset({"of", "de", "du", "la", "for", "&"})
"""Lower-case words allowed inside a name ("Bank of England") -- only after a
word that heads such names, so "Macron of France" stays two entities."""

_CONNECTOR_HEADS = frozenset(
    {"gulf", "republic", "kingdom", "city", "state", "states", "bay", "isle", "duke", "house"}
)

_TITLES = frozenset(
    {
        "mr",
        "mrs",
        "ms",
        "dr",
        "sir",
        "dame",
        "president",
        "minister",
        "prime",
        "chancellor",
        "senator",
        "governor",
        "mayor",
        "judge",
        "king",
        "queen",
        "prince",
        "princess",
        "pope",
        "professor",
        "chief",
        "secretary",
        "ceo",
        "rep",
        "sen",
        "gov",
    }
)
"""Words before a person's name; stripped from the name, they mark a person."""

_ORG_WORDS = frozenset(
    {
        "inc",
        "corp",
        "corporation",
        "ltd",
        "llc",
        "plc",
        "ag",
        "sa",
        "gmbh",
        "co",
        "company",
        "bank",
        "ministry",
        "department",
        "university",
        "college",
        "council",
        "party",
        "agency",
        "group",
        "reuters",
        "association",
        "institute",
        "commission",
        "committee",
        "federation",
        "union",
        "foundation",
        "fund",
        "court",
        "parliament",
        "congress",
        "senate",
        "police",
        "army",
        "navy",
        "nations",
        "organisation",
        "organization",
        "authority",
        "board",
        "bureau",
        "office",
        "times",
        "post",
        "news",
        "press",
        "airlines",
        "motors",
        "holdings",
        "technologies",
        "systems",
        "labs",
        "google",
        "microsoft",
        "apple",
        "amazon",
        "nato",
        "un",
        "eu",
        "fbi",
        "cia",
        "imf",
        "who",
        "opec",
        "fifa",
        "bbc",
        "cnn",
    }
)

_EVENT_WORDS = frozenset(
    {
        "summit",
        "election",
        "elections",
        "olympics",
        "games",
        "war",
        "cup",
        "championship",
        "conference",
        "festival",
        "referendum",
        "crisis",
        "pandemic",
        "revolution",
        "forum",
        "award",
        "awards",
        "prix",
        "open",
        "marathon",
        "expo",
        "week",
    }
)

_PRODUCT_WORDS = frozenset(
    {
        "iphone",
        "ipad",
        "android",
        "windows",
        "playstation",
        "xbox",
        "chatgpt",
        "gemini",
        "galaxy",
        "pixel",
        "kindle",
        "vaccine",
    }
)

_OTHER_WORDS = frozenset(
    {"agreement", "accord", "treaty", "act", "bill", "law", "index", "prize", "report"}
)
"""Named things that are neither people nor places ("Paris Agreement")."""

_GAZETTEER = _words(
    """
    afghanistan argentina australia austria bangladesh belgium brazil canada
    chile china colombia cuba denmark egypt ethiopia finland france germany
    ghana greece hungary india indonesia iran iraq ireland israel italy japan
    jordan kenya lebanon libya malaysia mexico morocco netherlands nigeria
    norway pakistan palestine peru philippines poland portugal qatar romania
    russia rwanda serbia singapore somalia spain sudan sweden switzerland syria
    taiwan thailand turkey uganda ukraine venezuela vietnam yemen zimbabwe
    britain england scotland wales gaza europe africa asia america
    london paris berlin madrid rome moscow kyiv kiev beijing shanghai tokyo
    delhi mumbai washington york chicago boston brussels geneva vienna warsaw
    istanbul cairo jerusalem tehran baghdad damascus beirut dubai riyadh
    sydney melbourne toronto ottawa montreal lagos nairobi johannesburg
    seoul bangkok jakarta manila singapore hanoi lisbon dublin amsterdam
    stockholm oslo copenhagen helsinki athens prague budapest frankfurt
    munich milan barcelona california texas florida ohio georgia
    us uk usa uae
    """
) | frozenset(
    {
        "new york",
        "los angeles",
        "san francisco",
        "hong kong",
        "united states",
        "united kingdom",
        "south africa",
        "south korea",
        "north korea",
        "new zealand",
        "saudi arabia",
        "new delhi",
        "washington dc",
        "west bank",
        "middle east",
        "latin america",
        "european union",
    }
)
"""Countries, regions and big cities. Two of these ("european union") are
organisations in most tag sets; we accept the error, it is a fake."""

_ORG_OVERRIDES = frozenset({"european union"})

_NAME_HEADS = _CONNECTOR_HEADS | _ORG_WORDS | _EVENT_WORDS

_WORD = re.compile(r"[^\W\d_](?:[\w'’&-]|\.(?=\w))*|\d(?:\w|[.,](?=\d))*|[.!?;:\n]")
"""Words (letters first, may carry inner apostrophes, dots, hyphens),
numbers, and the punctuation that ends a sentence or clause."""

_SENTENCE_END = frozenset({".", "!", "?", "\n"})
_CLAUSE_END = frozenset({";", ":"})


def fake_token_count(text: str) -> int:
    """The fakes' tokenizer: about four characters per token, like Gemini on
    English prose. Used by both fakes so the runtime's estimator sees one
    consistent count."""
    return math.ceil(len(text) / 4)


def fake_prompt_token_count(texts: Iterable[str]) -> int:
    """Tokens of a whole prompt: each part (system instruction, user turns)
    counted on its own, as the fake server counts the parts it receives."""
    return sum(fake_token_count(t) for t in texts)


@dataclass(frozen=True, slots=True)
class _Candidate:
    name: str
    first_pos: int
    titled: bool
    sentence_initial: bool


def _candidates(text: str) -> list[_Candidate]:
    """Runs of capitalised words, stripped of leading stopwords and titles."""
    tokens: list[tuple[str, int]] = []
    for m in _WORD.finditer(text):
        word = m.group(0)
        if word == "." and tokens and _is_abbreviation(tokens[-1][0]):
            # "Mr. Smith", "J. Smith", "U.S." do not end a sentence.
            if "." in tokens[-1][0]:
                tokens[-1] = (tokens[-1][0] + ".", tokens[-1][1])
            continue
        tokens.append((word, m.start()))
    found: list[_Candidate] = []
    i = 0
    at_sentence_start = True
    while i < len(tokens):
        word = tokens[i][0]
        if word in _SENTENCE_END or word in _CLAUSE_END:
            at_sentence_start = word in _SENTENCE_END
            i += 1
            continue
        if not _is_capitalised(word):
            at_sentence_start = False
            i += 1
            continue
        run: list[tuple[str, int]] = []
        j = i
        while j < len(tokens):
            w, p = tokens[j]
            if _is_capitalised(w):
                if w.lower() in _TITLES and any(x.lower() not in _TITLES for x, _ in run):
                    break  # "Macron and Prime Minister Starmer": a new name starts
                run.append((w, p))
                j += 1
            elif (
                w.lower() in _CONNECTORS
                and run
                and run[-1][0].lower() in _NAME_HEADS
                and j + 1 < len(tokens)
                and _is_capitalised(tokens[j + 1][0])
            ):
                run.append((w, p))
                j += 1
            else:
                break
        sentence_initial = at_sentence_start
        at_sentence_start = False
        i = j
        titled = False
        while run and (_is_stopword(run[0][0]) or run[0][0].lower() in _TITLES):
            titled = titled or run[0][0].lower() in _TITLES
            sentence_initial = False
            run.pop(0)
        while run and run[-1][0].lower() in _CONNECTORS:
            run.pop()
        if not run:
            continue
        name = " ".join(w for w, _ in run)
        if len(name) < 2:
            continue
        found.append(_Candidate(name, run[0][1], titled, sentence_initial))
    return found


def _is_abbreviation(word: str) -> bool:
    return word.lower() in _TITLES or (word.isupper() and (len(word) == 1 or "." in word))


def _is_stopword(word: str) -> bool:
    """Acronyms ("US", "WHO") are names even when their lower case is a word."""
    return word.lower() in _STOPWORDS and not (len(word) > 1 and word.isupper())


def _is_capitalised(word: str) -> bool:
    return word[:1].isupper() and word not in _SENTENCE_END


def _classify(name: str, titled: bool) -> EntityType:
    lower = name.lower().replace(".", "")
    words = lower.split()
    if lower in _ORG_OVERRIDES:
        return EntityType.ORGANISATION
    if titled:
        return EntityType.PERSON
    if lower in _GAZETTEER:
        return EntityType.LOCATION
    if any(w in _ORG_WORDS for w in words) or (name.isupper() and 2 <= len(name) <= 5):
        return EntityType.ORGANISATION
    if any(w in _EVENT_WORDS for w in words):
        return EntityType.EVENT
    if lower in _PRODUCT_WORDS or words[0] in _PRODUCT_WORDS:
        return EntityType.PRODUCT
    if any(w in _OTHER_WORDS for w in words):
        return EntityType.OTHER
    if len(words) == 2 and all(w.isalpha() for w in words) and words[0] not in _GAZETTEER:
        return EntityType.PERSON
    return EntityType.OTHER


def _rng(text: str, model: str) -> random.Random:
    digest = hashlib.sha256(f"{model}\x00{text}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def extract_entities(text: str, model: str) -> tuple[Entity, ...]:
    """The entities a model would plausibly name for ``text``, most salient
    first. Deterministic per (text, model); a model whose name contains
    "lite" drops the least salient quarter."""
    candidates = _candidates(text)
    if not candidates:
        return ()
    merged: dict[str, tuple[_Candidate, int, bool, bool]] = {}
    for cand in candidates:
        key = cand.name.lower()
        if key in merged:
            first, count, titled, only_initial = merged[key]
            merged[key] = (
                first,
                count + 1,
                titled or cand.titled,
                only_initial and cand.sentence_initial,
            )
        else:
            merged[key] = (cand, 1, cand.titled, cand.sentence_initial)

    kinds = {key: _classify(first.name, titled) for key, (first, _, titled, _) in merged.items()}
    # A surname alone ("Starmer said") is a further mention of the person.
    for key in list(merged):
        if " " in key:
            continue
        owners = [
            other
            for other in merged
            if other != key and kinds[other] is EntityType.PERSON and other.split()[-1] == key
        ]
        if len(owners) == 1:
            first, count, titled, initial = merged[owners[0]]
            merged[owners[0]] = (first, count + merged[key][1], titled, initial)
            del merged[key]

    length = max(len(text), 1)
    max_count = max(count for _, count, _, _ in merged.values())
    rng = _rng(text, model)
    scored: list[Entity] = []
    for key, (first, count, _titled, only_initial) in merged.items():
        kind = kinds[key]
        if only_initial and kind is EntityType.OTHER and " " not in key:
            continue  # a capitalised sentence opener, most likely not a name
        frequency = count / max_count
        earliness = 1.0 - first.first_pos / length
        salience = 0.15 + 0.55 * frequency + 0.3 * earliness + rng.uniform(-0.03, 0.03)
        scored.append(
            Entity(
                name=first.name,
                type=kind,
                salience=round(min(1.0, max(0.01, salience)), 3),
                mentions=count,
            )
        )
    scored.sort(key=lambda e: (-e.salience, e.name))
    scored = scored[:MAX_ENTITIES]
    if "lite" in model.lower() and len(scored) > 1:
        scored = scored[: max(1, math.ceil(len(scored) * LITE_KEEP_FRACTION))]
    return tuple(scored)


def article_text(title: str, text: str) -> str:
    """What the fakes read of an article: its title as a first sentence."""
    return f"{title}\n{text}" if title else text


def for_task(entities: Sequence[Entity], task: TaskConfig | None) -> tuple[Entity, ...]:
    """The fake entities as answers to a configured task: a type the task
    shares with the built-in ones is kept; any other gets one of the task's
    types, the same for the same name on every call; each extra field gets
    a plausible value of its type (a string from the name, the salience, the
    mentions, true). The built-in task leaves them as they are."""
    if task is None or task.is_default:
        return tuple(entities)
    names = task.type_names
    out = []
    for e in entities:
        kind = (
            str(e.type) if str(e.type) in names else names[zlib.crc32(e.name.encode()) % len(names)]
        )
        fields = tuple((f.name, _fake_field(e, f.type)) for f in task.extra_fields)
        out.append(Entity(e.name, kind, e.salience, e.mentions, e.flag, fields))
    return tuple(out)


def task_from_schema(schema: object) -> TaskConfig | None:
    """The task a request's ``responseSchema`` asks for, as far as answering
    goes: the entity types of its ``type`` enum and its extra entity
    properties (None: the built-in task, or a schema of another shape)."""
    try:
        entity = schema["properties"]["articles"]["items"]["properties"]["entities"]["items"]  # type: ignore[index]
        properties = entity["properties"]
        names = [str(n) for n in properties["type"]["enum"]]
    except (KeyError, TypeError):
        return None
    kinds = {"STRING": FieldType.STRING, "NUMBER": FieldType.NUMBER}
    kinds |= {"INTEGER": FieldType.INTEGER, "BOOLEAN": FieldType.BOOLEAN}
    fields = tuple(
        ExtraField(str(name), kinds.get(str(spec.get("type", "")).upper(), FieldType.STRING), "")
        for name, spec in properties.items()
        if name not in ("name", "type", "salience", "mentions") and isinstance(spec, Mapping)
    )
    if names == [t.value for t in EntityType] and not fields:
        return None
    return TaskConfig(entity_types=tuple(EntityTypeSpec(n, "") for n in names), extra_fields=fields)


def _fake_field(entity: Entity, kind: FieldType) -> str | float | int | bool:
    if kind is FieldType.STRING:
        return "".join(ch for ch in entity.name if ch.isalnum())[:4].upper() or "X"
    if kind is FieldType.NUMBER:
        return entity.salience
    if kind is FieldType.INTEGER:
        return entity.mentions
    return True


def entity_json(entity: Entity) -> dict[str, Any]:
    """One entity as the response schema spells it."""
    item: dict[str, Any] = {
        "name": entity.name,
        "type": str(entity.type),
        "salience": entity.salience,
        "mentions": entity.mentions,
    }
    item.update(entity.fields)
    return item


@dataclass(frozen=True, slots=True)
class AnswerQuality:
    """How well a fake model keeps the articles of a request apart. For each
    entity of an answer, ``cross_article`` is the chance it is swapped for
    an entity of another article of the request (one its own article does
    not name: only possible in a request of two or more), ``invented`` the
    chance it is swapped for a name no article contains. Exclusive: their
    sum must be <= 1. The default is a model that never errs."""

    cross_article: float = 0.0
    invented: float = 0.0

    def __post_init__(self) -> None:
        for name in ("cross_article", "invented"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} rate must be in [0, 1], got {rate}")
        if self.cross_article + self.invented > 1.0 + 1e-9:
            raise ValueError(
                "cross_article + invented rates must sum to <= 1, "
                f"got {self.cross_article + self.invented}"
            )

    @property
    def perfect(self) -> bool:
        return self.cross_article == 0.0 and self.invented == 0.0


_SYLLABLES = ("zor", "vex", "qua", "lim", "bru", "tha", "nok", "fel", "dri", "osk", "yun", "pim")


def _invented_name(rng: random.Random, texts: PackTexts, article_id: str) -> str:
    """A two-word name that no article of the pack contains."""
    while True:
        words = [
            "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
            for _ in range(2)
        ]
        name = " ".join(words)
        if texts.check(article_id, name) is Grounding.UNGROUNDED:
            return name


def degrade(
    found: Mapping[str, tuple[Entity, ...]],
    texts: Mapping[str, str],
    quality: AnswerQuality,
    rng: random.Random,
) -> dict[str, tuple[Entity, ...]]:
    """``found`` (article id -> its entities, in request order) as a model
    of ``quality`` would answer it: some entities swapped for another
    article's, some for invented names. ``texts``: what each article's
    entities were read from (``article_text``)."""
    if quality.perfect:
        return dict(found)
    pack = PackTexts((article_id, "", text) for article_id, text in texts.items())
    out: dict[str, tuple[Entity, ...]] = {}
    for article_id, entities in found.items():
        names = {e.name.lower() for e in entities}
        others = [
            e
            for other_id, other in found.items()
            if other_id != article_id
            for e in other
            if pack.check(article_id, e.name) is Grounding.CROSS_ARTICLE
        ]
        answer: list[Entity] = []
        for entity in entities:
            u = rng.random()
            if u < quality.cross_article:
                candidates = [e for e in others if e.name.lower() not in names]
                if candidates:
                    swapped = rng.choice(candidates)
                    names.add(swapped.name.lower())
                    answer.append(Entity(swapped.name, swapped.type, entity.salience, 1))
                    continue
            elif u < quality.cross_article + quality.invented:
                name = _invented_name(rng, pack, article_id)
                names.add(name.lower())
                answer.append(Entity(name, entity.type, entity.salience, entity.mentions))
                continue
            answer.append(entity)
        out[article_id] = tuple(answer)
    return out


def answer_document(
    articles: Sequence[Mapping[str, str]],
    model: str,
    quality: AnswerQuality | None = None,
    rng: random.Random | None = None,
    task: TaskConfig | None = None,
) -> dict[str, Any]:
    """The JSON answer ``{"articles": [{"id", "entities"}]}`` a model in JSON
    mode would give for ``articles`` (dicts with id, title, text); with a
    ``quality`` short of perfect, degraded by ``degrade`` with ``rng``; of
    the types and with the fields of ``task`` (``for_task``)."""
    pairs = [
        (a.get("id", ""), article_text(a.get("title", ""), a.get("text", ""))) for a in articles
    ]
    entities = [for_task(extract_entities(text, model), task) for _, text in pairs]
    if quality is not None and not quality.perfect:
        degraded = degrade(
            {i: e for (i, _), e in zip(pairs, entities, strict=True)},
            dict(pairs),
            quality,
            rng or random.Random(0),
        )
        entities = [degraded[i] for i, _ in pairs]
    return {
        "articles": [
            {"id": i, "entities": [entity_json(e) for e in found]}
            for (i, _), found in zip(pairs, entities, strict=True)
        ]
    }


def answer_text(document: Mapping[str, Any]) -> str:
    """The answer document as the model's candidate text (compact JSON)."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))
