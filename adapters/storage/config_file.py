"""Config files: reading TOML into a validated ``Config``, writing one back.

Validation lives in ``tierbatch.policies.config``; this module only adds the
file: reading it (or the shipped default, via importlib.resources so it works
from an installed wheel), turning TOML syntax errors and missing files into a
``ConfigError`` that names the file, and a small TOML writer so
``tierbatch config check`` prints resolved settings a user can copy.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping, Sequence
from datetime import date, datetime, time
from importlib import resources
from pathlib import Path
from typing import Any, Final

from tierbatch.policies.config import Config, config_to_mapping
from tierbatch.policies.config_parsing import parse_config
from tierbatch.policies.config_reader import join_key, quote_key, toml_string
from tierbatch.policies.errors import ConfigError

DEFAULT_CONFIG_NAME: Final = "default.toml"
_DEFAULT_SOURCE: Final = f"<built-in {DEFAULT_CONFIG_NAME}>"


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """The config in the TOML file at ``path``, or the shipped default for None.

    Every failure is a ``ConfigError`` whose message starts with the file.
    """
    if path is None:
        data = resources.files("tierbatch.adapters") / "data" / DEFAULT_CONFIG_NAME
        return parse_config_text(data.read_text(encoding="utf-8"), _DEFAULT_SOURCE)
    source = os.fspath(path)
    try:
        raw = Path(source).read_bytes()
    except FileNotFoundError:
        raise ConfigError("", "config file not found", source) from None
    except OSError as exc:
        raise ConfigError("", f"cannot read config file: {exc.strerror or exc}", source) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            "", f"not UTF-8 text (byte {exc.start}); TOML files must be UTF-8", source
        ) from None
    return parse_config_text(text, source)


def parse_config_text(text: str, source: str = "<string>") -> Config:
    """The config in TOML ``text``; ``source`` names it in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends with "(at line L, column C)".
        raise ConfigError("", f"invalid TOML: {exc}", source) from None
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise exc.in_source(source) from None


def default_config() -> Config:
    """The shipped default (``adapters/data/default.toml``)."""
    return load_config(None)


def render_config(config: Config) -> str:
    """The resolved settings as TOML: what ``tierbatch config check`` prints."""
    return dump_toml(config_to_mapping(config))


def dump_toml(mapping: Mapping[str, Any]) -> str:
    """TOML text for plain data (tables, arrays, str, int, float, bool, dates).

    ``None`` values are left out (TOML has no null). Just enough TOML for
    config files, so tierbatch needs no writer dependency; ``tomllib.loads``
    reads the result back to equal data.
    """
    lines: list[str] = []
    _write_table(lines, "", mapping, header=False)
    return "\n".join(lines).strip("\n") + "\n"


def _is_table(value: object) -> bool:
    return isinstance(value, Mapping)


def _is_array_of_tables(value: object) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and bool(value)
        and all(isinstance(item, Mapping) for item in value)
    )


def _write_table(lines: list[str], path: str, table: Mapping[str, Any], *, header: bool) -> None:
    scalars = [
        (k, v)
        for k, v in table.items()
        if v is not None and not _is_table(v) and not _is_array_of_tables(v)
    ]
    nested = [(k, v) for k, v in table.items() if _is_table(v) or _is_array_of_tables(v)]
    # A table with only sub-tables needs no header of its own (TOML creates it
    # implicitly), but an empty one does, or it would vanish.
    if header and (scalars or not nested):
        lines.extend(["", f"[{path}]"])
    lines.extend(f"{quote_key(_key(k))} = {_value(v)}" for k, v in scalars)
    for name, value in nested:
        child = join_key(path, _key(name))
        if _is_table(value):
            _write_table(lines, child, value, header=True)
        else:
            for item in value:
                lines.extend(["", f"[[{child}]]"])
                _write_table(lines, child, item, header=False)


def _key(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"TOML keys are strings, got {type(name).__name__}: {name!r}")
    return name


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:_}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Mapping):
        inner = ", ".join(
            f"{quote_key(_key(k))} = {_value(v)}" for k, v in value.items() if v is not None
        )
        return f"{{ {inner} }}" if inner else "{}"
    if isinstance(value, Sequence):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML: {value!r}")
