"""The models check: does the provider still have every configured model?

``tierbatch models`` prints the answer; ``run`` and ``daemon`` ask it at
start (unless ``--no-check``) so a retired model is found before a run
spends attempts on 404s. One ``describe_model`` per configured model, all
at once on a short-lived event loop, each bounded by ``timeout_s``.

What a start does with the answer (``StartDecision``):

* a refused key (401/403, or a redirect) stops the run, exit 4, as the
  first call would have;
* a tier with no model of its chain left stops the run, exit 8: every one
  of its articles would fail;
* a missing model that leaves every tier served is routed around from the
  start (marked unavailable in the quota policy, as after a 404), with a
  warning naming the tiers it shortens;
* a lookup that fails otherwise (timeout, 5xx, a dropped connection) only
  warns: the check is advisory, and the run meets such trouble anyway;
* a provider that cannot tell (no ``ModelCatalog``) is not checked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TextIO

import structlog

from tierbatch.actors.ports import ModelCatalog, ModelInfo, ModelLookupError, describe_outcome
from tierbatch.policies.config import Config, TierMode
from tierbatch.policies.errors import FatalProviderError, ProviderError
from tierbatch.policies.model_check import ModelCoverage, assess_coverage
from tierbatch.policies.outcomes import AuthFailed, CallOutcome, ServerError

DEFAULT_LOOKUP_TIMEOUT_S = 10.0

_log = structlog.get_logger(__name__)


class LookupStatus(StrEnum):
    FOUND = "found"
    MISSING = "missing"  # the provider answered 404
    FAILED = "failed"  # the provider could not be asked (see ``error``)


@dataclass(frozen=True, slots=True)
class ModelLookup:
    """One configured model as the provider described it."""

    model: str
    info: ModelInfo | None
    error: CallOutcome | None = None

    @property
    def status(self) -> LookupStatus:
        if self.error is not None:
            return LookupStatus.FAILED
        return LookupStatus.FOUND if self.info is not None else LookupStatus.MISSING


@dataclass(frozen=True, slots=True)
class ModelReport:
    """Every configured model's lookup and what the missing ones leave of
    the tiers. ``checked`` is False when the provider cannot tell."""

    lookups: tuple[ModelLookup, ...]
    coverage: ModelCoverage
    checked: bool = True

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(x.model for x in self.lookups if x.status is LookupStatus.MISSING)

    @property
    def failed(self) -> tuple[ModelLookup, ...]:
        return tuple(x for x in self.lookups if x.status is LookupStatus.FAILED)

    @property
    def refused(self) -> AuthFailed | None:
        """The first refusal of the key, when the provider refused it."""
        for lookup in self.lookups:
            if isinstance(lookup.error, AuthFailed):
                return lookup.error
        return None

    def unavailable(self) -> dict[str, str]:
        """The missing models, with the reason to route around them."""
        return {
            model: "not found (HTTP 404) by the models check at start" for model in self.missing
        }


def check_models(
    provider: object, config: Config, *, timeout_s: float = DEFAULT_LOOKUP_TIMEOUT_S
) -> ModelReport:
    """Ask ``provider`` about every configured model (all at once). It runs
    an event loop of its own: call it where none is running (the CLI does,
    before the runtime starts)."""
    names = sorted(config.models)
    if not isinstance(provider, ModelCatalog):
        coverage = assess_coverage(config.tiers, config.global_fallback, ())
        return ModelReport((), coverage, checked=False)
    lookups = tuple(asyncio.run(_look_up_all(provider, names, timeout_s)))
    missing = [x.model for x in lookups if x.status is LookupStatus.MISSING]
    report = ModelReport(lookups, assess_coverage(config.tiers, config.global_fallback, missing))
    _log.info(
        "models checked",
        found=[x.model for x in lookups if x.status is LookupStatus.FOUND],
        missing=list(report.missing),
        failed=[x.model for x in report.failed],
        stranded_tiers=[t.tier for t in report.coverage.stranded],
    )
    return report


async def _look_up_all(
    catalog: ModelCatalog, names: Sequence[str], timeout_s: float
) -> list[ModelLookup]:
    return list(await asyncio.gather(*(_look_up(catalog, name, timeout_s) for name in names)))


async def _look_up(catalog: ModelCatalog, name: str, timeout_s: float) -> ModelLookup:
    try:
        info = await catalog.describe_model(name, timeout_s=timeout_s)
    except ModelLookupError as exc:
        return ModelLookup(name, None, exc.outcome)
    except Exception as exc:  # a catalog that breaks its contract: say what, not its text
        return ModelLookup(name, None, ServerError(None, f"unexpected {type(exc).__name__}"))
    return ModelLookup(name, info)


# ---- what run and daemon do with it -------------------------------------------------


class NoModelLeftError(ProviderError):
    """The check at start found a tier with none of its models at the
    provider: every one of its articles would fail (exit code 8)."""


class StartVerdict(StrEnum):
    GO = "go"
    REFUSED = "refused"  # exit 4
    STRANDED = "stranded"  # exit 8


@dataclass(frozen=True, slots=True)
class StartDecision:
    verdict: StartVerdict
    unavailable: Mapping[str, str]
    message: str = ""

    @property
    def stop(self) -> ProviderError | None:
        """What stops the run before it leases anything (None: it goes on)."""
        if self.verdict is StartVerdict.REFUSED:
            return FatalProviderError(self.message)
        if self.verdict is StartVerdict.STRANDED:
            return NoModelLeftError(self.message)
        return None


def decide_start(report: ModelReport, config: Config, err: TextIO) -> StartDecision:
    """What a run does with the check (see the module docstring); warnings
    go to ``err``, the stopping message is returned for the caller."""
    refused = report.refused
    if refused is not None:
        return StartDecision(StartVerdict.REFUSED, {}, refused.message)
    for lookup in report.failed:
        assert lookup.error is not None
        print(
            f"warning: could not check model {lookup.model} ({describe_outcome(lookup.error)}); "
            "going on without knowing whether it exists",
            file=err,
        )
    coverage = report.coverage
    if coverage.stranded:
        return StartDecision(StartVerdict.STRANDED, {}, _stranded_message(coverage))
    for line in _missing_warnings(coverage, at_start=True):
        print(f"warning: {line}", file=err)
    for line in limit_warnings(report.lookups, config):
        print(f"warning: {line}", file=err)
    for line in batch_warnings(report.lookups, config):
        print(f"warning: {line}", file=err)
    err.flush()
    return StartDecision(StartVerdict.GO, report.unavailable())


def _stranded_message(coverage: ModelCoverage) -> str:
    tiers = "; ".join(
        f"tier {t.tier} ({', '.join(t.chain)} all missing)" for t in coverage.stranded
    )
    return (
        f"the provider has none of the models of {tiers}: every article of "
        f"{'that tier' if len(coverage.stranded) == 1 else 'those tiers'} would fail. "
        "Fix the model names in the config (tierbatch models lists what the provider has), "
        "or run with --no-check to try anyway"
    )


def _missing_warnings(coverage: ModelCoverage, *, at_start: bool) -> list[str]:
    lines = []
    verb = "uses" if at_start else "would use"
    for model in coverage.missing:
        shortened = [t for t in coverage.tiers if model in t.missing and t.served]
        where = ", ".join(f"tier {t.tier} {verb} {' -> '.join(t.usable)}" for t in shortened)
        then = (
            "it is marked unavailable and routed around"
            if at_start
            else "a run marks it unavailable and routes around it"
        )
        lines.append(
            f"model {model} is not found at the provider (HTTP 404: retired or misspelt); "
            f"{then}" + (f" ({where})" if where else "")
        )
    return lines


def limit_warnings(lookups: Iterable[ModelLookup], config: Config) -> list[str]:
    """Configured input limits above what the provider says a model takes."""
    lines = []
    for lookup in lookups:
        info, spec = lookup.info, config.models.get(lookup.model)
        if info is None or spec is None or info.input_token_limit is None:
            continue
        if spec.max_input_tokens > info.input_token_limit:
            lines.append(
                f'models."{lookup.model}".max_input_tokens = {spec.max_input_tokens} is above '
                f"the provider's input token limit of {info.input_token_limit}"
            )
    return lines


def batch_warnings(lookups: Iterable[ModelLookup], config: Config) -> list[str]:
    """Tiers on the Batch API (``mode`` batch or auto) whose model the
    provider says does not batch: their jobs would be refused."""
    infos = {lookup.model: lookup.info for lookup in lookups}
    lines = []
    for tier in config.tiers:
        info = infos.get(tier.model)
        if tier.mode is TierMode.INTERACTIVE or info is None or info.supports_batch:
            continue
        lines.append(
            f"tier {tier.name} (mode = {tier.mode.value!r}) runs on {tier.model}, which the "
            "provider says does not support the Batch API (batchGenerateContent): its jobs "
            "will be refused and its articles called interactively"
        )
    return lines


# ---- tierbatch models ---------------------------------------------------------------


def render_report(report: ModelReport, config: Config, out: TextIO) -> None:
    """The table ``tierbatch models`` prints, then its warnings."""
    if not report.checked:
        out.write("this provider cannot say which models it has; nothing was checked\n")
        return
    uses = _uses(config)
    header = ("model", "status", "input limit", "output limit", "batch", "used by")
    rows = [header]
    for lookup in report.lookups:
        info = lookup.info
        rows.append(
            (
                lookup.model,
                {"found": "ok", "missing": "MISSING", "failed": "unknown"}[lookup.status.value],
                _number(info.input_token_limit) if info else "-",
                _number(info.output_token_limit) if info else "-",
                ("yes" if info.supports_batch else "no") if info else "-",
                ", ".join(uses.get(lookup.model, ())) or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    right = {2, 3}
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        out.write("  ".join(cells).rstrip() + "\n")
    for lookup in report.failed:
        assert lookup.error is not None
        out.write(f"could not check {lookup.model}: {describe_outcome(lookup.error)}\n")
    for line in _missing_warnings(report.coverage, at_start=False):
        out.write(f"warning: {line}\n")
    for tier in report.coverage.stranded:
        out.write(
            f"error: tier {tier.tier} has no model left ({', '.join(tier.chain)} all missing): "
            "a run would stop at start\n"
        )
    for line in limit_warnings(report.lookups, config):
        out.write(f"warning: {line}\n")


def report_json(report: ModelReport, config: Config) -> dict[str, Any]:
    uses = _uses(config)
    models = []
    for lookup in report.lookups:
        info = lookup.info
        models.append(
            {
                "model": lookup.model,
                "status": lookup.status.value,
                "display_name": info.display_name if info else None,
                "input_token_limit": info.input_token_limit if info else None,
                "output_token_limit": info.output_token_limit if info else None,
                "supports_batch": info.supports_batch if info else None,
                "methods": list(info.methods) if info else [],
                "error": describe_outcome(lookup.error) if lookup.error is not None else None,
                "used_by": list(uses.get(lookup.model, ())),
            }
        )
    return {
        "checked": report.checked,
        "models": models,
        "missing": list(report.missing),
        "stranded_tiers": [t.tier for t in report.coverage.stranded],
    }


def _uses(config: Config) -> dict[str, list[str]]:
    uses: dict[str, list[str]] = {}
    for tier in config.tiers:
        uses.setdefault(tier.model, []).append(tier.name)
        if tier.fallback_model:
            uses.setdefault(tier.fallback_model, []).append(f"{tier.name} (fallback)")
    uses.setdefault(config.global_fallback, []).append("global fallback")
    return uses


def _number(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"
