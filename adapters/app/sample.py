"""The shipped sample and the demo it runs under.

``tierbatch run --sample`` (and ``tierbatch plan --sample``) replay
``adapters/data/sample_articles.jsonl``: about 400 synthetic news articles
in 40 story clusters, their publication times shifted so the newest is from
now (hotness decays with age, so the sample's fixed dates would otherwise
make every story cold and the demo would show one tier only).

Without ``--config`` the sample runs under ``adapters/data/demo.toml``:
per-minute limits small enough that the shipped sample meets them, and a
simulated provider that admits less than the config claims for one model --
so a newcomer sees what the tool is for (the plan sharing the models out,
fallbacks, a 429, a limit learnt, a cooldown) in about a minute, without a
key.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from importlib import resources
from importlib.resources.abc import Traversable

from tierbatch.adapters.storage.config_file import parse_config_text
from tierbatch.adapters.storage.jsonl_input import Rejected, read_articles
from tierbatch.policies.articles import Article
from tierbatch.policies.config import Config

SAMPLE_NAME = "sample_articles.jsonl"
DEMO_CONFIG_NAME = "demo.toml"

__all__ = [
    "DEMO_CONFIG_NAME",
    "SAMPLE_NAME",
    "demo_config_file",
    "load_demo_config",
    "sample_articles",
]


def _data(name: str) -> Traversable:
    return resources.files("tierbatch.adapters") / "data" / name


def demo_config_file() -> Traversable:
    """The demo's config (``adapters/data/demo.toml``)."""
    return _data(DEMO_CONFIG_NAME)


def load_demo_config() -> Config:
    """The demo's config, validated like any other."""
    text = demo_config_file().read_text(encoding="utf-8")
    return parse_config_text(text, f"<built-in {DEMO_CONFIG_NAME}>")


def sample_articles(now: datetime) -> tuple[list[Article], list[Rejected]]:
    """The shipped sample, its publication times shifted so the newest
    article is from ``now`` (see the module docstring)."""
    with _data(SAMPLE_NAME).open("rb") as stream:
        items = list(read_articles(stream))
    articles = [item for item in items if isinstance(item, Article)]
    rejects = [item for item in items if isinstance(item, Rejected)]
    dates = [a.published_at for a in articles if a.published_at is not None]
    if dates:
        shift = now - max(dates)
        articles = [
            replace(a, published_at=a.published_at + shift) if a.published_at else a
            for a in articles
        ]
    return articles, rejects
