"""Typed reading of one configuration table, with dotted-path error reports.

A config file is written by hand, so every mistake should be reported at once,
with the exact key and what was expected: ``TableReader`` reads one table's
entries by type and range, records a ``Problem`` instead of stopping at the
first one, and at the end flags every key nobody asked for (typos). Callers
get a harmless placeholder for a bad value so parsing can go on; the parse
fails as a whole if any problem was recorded.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

_BARE_KEY_CHARS: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
)


class _Missing:
    """Marks a required entry (no default)."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Final = _Missing()


@dataclass(frozen=True, slots=True)
class Problem:
    """One mistake: ``key`` is its dotted path, ``problem`` says what is wrong
    and what is expected."""

    key: str
    problem: str


class Problems:
    """Every mistake found so far, in the order they were found."""

    def __init__(self) -> None:
        self._items: list[Problem] = []

    def add(self, key: str, problem: str) -> None:
        self._items.append(Problem(key, problem))

    def __bool__(self) -> bool:
        return bool(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Problem]:
        return iter(self._items)


def quote_key(name: str) -> str:
    """A key as TOML writes it: bare when it can be, else a basic string."""
    if name and all(ch in _BARE_KEY_CHARS for ch in name):
        return name
    return toml_string(name)


_ESCAPES: Final = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string (quoted, control characters escaped)."""
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def join_key(parent: str, name: str) -> str:
    """``parent.name`` as a dotted path (``models."gemini-2.5-pro".rpm``)."""
    quoted = quote_key(name)
    return f"{parent}.{quoted}" if parent else quoted


def describe_type(value: object) -> str:
    """How a TOML user would name the type of ``value``."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    return f"a {type(value).__name__}"


def looks_like_api_key(text: str) -> bool:
    """Google API keys are ``AIza`` + 35 URL-safe characters."""
    return text.startswith("AIza") and len(text) >= 30 and " " not in text


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` when ``name`` is a near miss, else ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True, slots=True)
class Range:
    """Inclusive (``min``/``max``) or exclusive (``above``/``below``) bounds."""

    min: float | None = None
    above: float | None = None
    max: float | None = None
    below: float | None = None

    def violated(self, value: float) -> bool:
        return (
            (self.min is not None and value < self.min)
            or (self.above is not None and value <= self.above)
            or (self.max is not None and value > self.max)
            or (self.below is not None and value >= self.below)
        )

    def describe(self) -> str:
        low = f"[{_num(self.min)}" if self.min is not None else None
        low = f"({_num(self.above)}" if self.above is not None else low
        high = f"{_num(self.max)}]" if self.max is not None else None
        high = f"{_num(self.below)})" if self.below is not None else high
        if low is not None and high is not None:
            return f"in {low}, {high}"
        if low is not None:
            return (">= " if low[0] == "[" else "> ") + low[1:]
        if high is not None:
            return ("<= " if high[-1] == "]" else "< ") + high[:-1]
        return "of any value"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


NON_NEGATIVE: Final = Range(min=0)
POSITIVE: Final = Range(above=0)
AT_LEAST_ONE: Final = Range(min=1)
UNIT: Final = Range(min=0, max=1)


class TableReader:
    """Reads the entries of one table; remembers which keys were read.

    ``path`` is the table's dotted path ("" for the top level).
    """

    def __init__(self, data: object, path: str, problems: Problems) -> None:
        self.path = path
        self.problems = problems
        self._known: set[str] = set()
        self._refused: set[str] = set()
        if isinstance(data, Mapping):
            self._data: Mapping[str, object] = data
        else:
            problems.add(path or "(top level)", f"expected a table, got {describe_type(data)}")
            self._data = {}

    def key(self, name: str) -> str:
        return join_key(self.path, name)

    def has(self, name: str) -> bool:
        return name in self._data

    def raw(self, name: str) -> object:
        """The entry as given, or ``REQUIRED`` when absent; marks it known."""
        self._known.add(name)
        return self._data.get(name, REQUIRED)

    def _required(self, name: str, expected: str) -> None:
        self.problems.add(self.key(name), f"missing; expected {expected}")

    def integer(self, name: str, default: int | _Missing, valid: Range = NON_NEGATIVE) -> int:
        """An integer (booleans and floats are refused) within ``valid``."""
        value = self.raw(name)
        if value is REQUIRED:
            if isinstance(default, _Missing):
                self._required(name, f"an integer {valid.describe()}")
                return 0
            return default
        return self.check_integer(self.key(name), value, valid)

    def check_integer(self, key: str, value: object, valid: Range) -> int:
        """Validates an already-fetched integer (for entries of free-form tables)."""
        expected = f"an integer {valid.describe()}"
        if isinstance(value, bool) or not isinstance(value, int):
            self.problems.add(key, f"expected {expected}, got {describe_type(value)}")
            return 0
        if valid.violated(value):
            self.problems.add(key, f"expected {expected}, got {value}")
        return value

    def number(
        self,
        name: str,
        default: float | _Missing,
        valid: Range = NON_NEGATIVE,
        *,
        allow_inf: bool = False,
    ) -> float:
        """A float within ``valid``; integers are accepted as floats. NaN is
        refused; infinity only where it means "never" (``allow_inf``)."""
        value = self.raw(name)
        if value is REQUIRED:
            if isinstance(default, _Missing):
                self._required(name, f"a number {valid.describe()}")
                return 0.0
            return default
        return self.check_number(self.key(name), value, valid, allow_inf=allow_inf)

    def check_number(
        self, key: str, value: object, valid: Range, *, allow_inf: bool = False
    ) -> float:
        """Validates an already-fetched number (for entries of free-form tables)."""
        expected = f"a number {valid.describe()}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problems.add(key, f"expected {expected}, got {describe_type(value)}")
            return 0.0
        number = float(value)
        if math.isnan(number) or (math.isinf(number) and not allow_inf):
            self.problems.add(key, f"expected a finite number {valid.describe()}, got {number}")
            return 0.0
        if valid.violated(number):
            self.problems.add(key, f"expected {expected}, got {value}")
        return number

    def check_string(self, key: str, value: object, expected: str = "a non-empty string") -> str:
        """A non-empty string that does not look like a secret."""
        if not isinstance(value, str):
            self.problems.add(key, f"expected {expected}, got {describe_type(value)}")
            return ""
        if looks_like_api_key(value):
            self.problems.add(
                key,
                "this looks like an API key; keys never belong in config files: set it in "
                "an environment variable named in provider.api_key_env",
            )
            return ""
        if not value.strip():
            self.problems.add(key, f"expected {expected}, got an empty string")
            return ""
        return value

    def string(self, name: str, default: str | _Missing) -> str:
        value = self.raw(name)
        if value is REQUIRED:
            if isinstance(default, _Missing):
                self._required(name, "a non-empty string")
                return ""
            return default
        return self.check_string(self.key(name), value)

    def optional_string(self, name: str) -> str | None:
        """A non-empty string, or None when absent (TOML has no null)."""
        if not self.has(name):
            self._known.add(name)
            return None
        return self.string(name, REQUIRED) or None

    def boolean(self, name: str, default: bool) -> bool:
        """``true`` or ``false`` (TOML booleans only: 0/1 and strings are refused)."""
        value = self.raw(name)
        if value is REQUIRED:
            return default
        if not isinstance(value, bool):
            self.problems.add(self.key(name), f"expected true or false, got {describe_type(value)}")
            return default
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        """One of ``choices`` (the value is only echoed when it is one)."""
        value = self.raw(name)
        if value is REQUIRED:
            return default
        allowed = ", ".join(repr(c) for c in choices)
        if not isinstance(value, str):
            self.problems.add(
                self.key(name), f"expected one of {allowed}, got {describe_type(value)}"
            )
            return default
        if value not in choices:
            shown = "" if looks_like_api_key(value) else f" {value!r}"
            self.problems.add(
                self.key(name),
                f"expected one of {allowed}, got{shown or ' a different string'}"
                f"{did_you_mean(value, choices)}",
            )
            return default
        return value

    def table(self, name: str) -> TableReader:
        """A sub-table; absent means empty (every entry then takes its default)."""
        value = self.raw(name)
        return TableReader({} if value is REQUIRED else value, self.key(name), self.problems)

    def entries(self) -> Iterator[tuple[str, object]]:
        """Every entry, for free-form tables (model names, domains, the mix)."""
        self._known.update(self._data)
        return iter(self._data.items())

    def refuse(self, name: str, problem: str) -> None:
        """Reports ``name`` with a specific message when it is present."""
        if name in self._data:
            self._refused.add(name)
            self.problems.add(self.key(name), problem)

    def finish(self) -> None:
        """Flags every key that was never asked for: nearly always a typo."""
        allowed = sorted(self._known)
        where = f"[{self.path}]" if self.path else "the top level"
        for name in self._data:
            if name in self._known or name in self._refused:
                continue
            self.problems.add(
                self.key(name),
                f"unknown key{did_you_mean(name, allowed)}; allowed in {where}: "
                + ", ".join(allowed),
            )
