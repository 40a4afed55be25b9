"""The ``tierbatch`` command line.

    tierbatch run ARTICLES.jsonl --db results.sqlite     # one-shot
    tierbatch run --sample --db tierbatch-demo.sqlite    # the shipped sample
    tierbatch daemon --db ingest.sqlite                  # long-running
    tierbatch enqueue ARTICLES.jsonl --db ingest.sqlite
    tierbatch status --db ingest.sqlite [--json]
    tierbatch plan ARTICLES.jsonl | --db ingest.sqlite | --sample [--json]
    tierbatch config check tierbatch.toml
    tierbatch models [--config tierbatch.toml]            # does the provider have them?
    tierbatch serve-fake-gemini --port 8765

This module wires the adapters together for each command and turns
outcomes into messages and exit codes: what the command line accepts is
``cli_parser``'s, the codes and the map from errors to them are
``exit_codes``'; the work happens in ``daemon``, the
store (``sqlite_store``, or ``postgres_store`` for a ``postgresql://`` URL)
and the runtime. It is also the only place that configures
logging. ``main`` returns the exit code instead of exiting, so it can be
called in-process (tests) as well as by the console script.

Longer than the house's ~450 lines on purpose: one handler per command; the
parser (cli_parser) and the exit codes (exit_codes) are modules of their
own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TextIO

import structlog

from tierbatch.actors.clock import Clock, SystemClock
from tierbatch.actors.ports import Provider
from tierbatch.adapters.app.as_of import AsOfError, describe, newest_published, parse_as_of
from tierbatch.adapters.app.budget_view import budget_line
from tierbatch.adapters.app.call_stats import CallStatsProvider
from tierbatch.adapters.app.cli_parser import DB_ENV, Commands, build_parser
from tierbatch.adapters.app.daemon import (
    Daemon,
    DaemonOptions,
    DaemonReport,
    StopReason,
    check_task_versions,
    signals_stop,
)
from tierbatch.adapters.app.exit_codes import (
    EXIT_BUDGET,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_MODEL_MISSING,
    EXIT_OK,
    EXIT_PROVIDER_REFUSED,
    EXIT_REJECTED,
    EXIT_RUNTIME_FAILED,
    EXIT_STORAGE,
    EXIT_USAGE,
    UsageError,
    exit_code_of,
    first_exit_code,
)
from tierbatch.adapters.app.logging_setup import (
    configure_logging,
    restore_configuration,
    saved_configuration,
)
from tierbatch.adapters.app.metrics import Metrics, MetricsServer
from tierbatch.adapters.app.model_check import (
    check_models,
    decide_start,
    render_report,
    report_json,
)
from tierbatch.adapters.app.plan_report import (
    PlanReport,
    plan_for,
    plan_lines,
    render_plan,
)
from tierbatch.adapters.app.progress import LiveProgress, LogProgress, NoProgress, ProgressReporter
from tierbatch.adapters.app.provider_factory import (
    make_batch_backend,
    make_provider,
    provider_on_this_node,
    resolved_kind,
)
from tierbatch.adapters.app.quota_file import default_snapshot_path
from tierbatch.adapters.app.sample import load_demo_config, sample_articles
from tierbatch.adapters.app.status_report import (
    StatusError,
    batch_line,
    read_status,
    render_status,
)
from tierbatch.adapters.app.summary import (
    BoundReport,
    build_summary,
    provider_line,
    render_summary,
)
from tierbatch.adapters.app.tier_split import empty_tier_warnings, split_lines
from tierbatch.adapters.gemini.api_key import find_api_key
from tierbatch.adapters.storage.config_file import load_config, render_config
from tierbatch.adapters.storage.ingest import IngestReport, ingest_jsonl
from tierbatch.adapters.storage.jsonl_input import read_articles
from tierbatch.adapters.storage.open_store import (
    display_name,
    is_postgres_url,
    open_store,
    read_backlog,
    read_report,
)
from tierbatch.adapters.storage.snapshot_file import SnapshotFile
from tierbatch.adapters.storage.store import BatchReport, Store, default_owner
from tierbatch.adapters.storage.tiers_file import tiers_path_beside
from tierbatch.policies.articles import Article
from tierbatch.policies.config import Config
from tierbatch.policies.errors import (
    ConfigError,
    StorageError,
    TierbatchError,
)
from tierbatch.policies.tier_assignment import TierSplit

_SAMPLE_LABEL = "the shipped sample (replayed: publication times shifted to end now)"
_log = structlog.get_logger(__name__)


# ---- entry point -------------------------------------------------------------------


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    clock: Clock | None = None,
) -> int:
    """Run the ``tierbatch`` command line; returns the exit code.

    ``clock``: what ``run`` and ``daemon`` run on (default the system
    clock); in-process callers such as tests pass a ``ScaledClock`` to
    rehearse quota minutes in seconds."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = build_parser(COMMANDS)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or argparse's own usage error
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    args.clock = clock
    saved = saved_configuration()
    try:
        command: Callable[[argparse.Namespace, TextIO, TextIO], int] = args.command
        return command(args, out, err)
    except TierbatchError as exc:
        code = exit_code_of(exc)
        if code is None:
            raise
        # Opening the database is a UsageError; a StorageError is later.
        text = _one_line(str(exc)) if code == EXIT_STORAGE else str(exc)
        print(f"tierbatch: error: {text}", file=err)
        return code
    except KeyboardInterrupt:
        print("tierbatch: interrupted", file=err)
        return 130
    finally:
        restore_configuration(saved)


# ---- run and daemon ----------------------------------------------------------------


def _cmd_run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    return _process(args, out, err, one_shot=True)


def _cmd_daemon(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    return _process(args, out, err, one_shot=False)


def _process(args: argparse.Namespace, out: TextIO, err: TextIO, *, one_shot: bool) -> int:
    config = _load_config(args)
    json_logs = args.log_json if one_shot else not args.log_console
    configure_logging(
        json_lines=json_logs,
        level=args.log_level,
        secrets=_secret_values(config),
    )
    options = _daemon_options(args, exit_when_done=one_shot)
    as_of_given = _parse_as_of(args.as_of)
    if not one_shot and args.as_of is not None and as_of_given is None:
        raise UsageError(
            "--as-of newest: a daemon has no input to take the newest article from; "
            "give an instant such as 2026-11-24T12:00:00Z"
        )
    clock: Clock = args.clock or SystemClock()
    raw_provider, description = make_provider(config, clock)
    synthetic = _is_simulated(raw_provider)
    provider = _with_call_stats(raw_provider, args.stats_interval)
    print(provider_line(description, synthetic), file=out, flush=True)
    with ExitStack() as stack:
        store = _open_store(args.db)
        stack.callback(store.close)
        check_task_versions(store, config, allow=args.allow_mixed_versions)
        ingest: IngestReport | None = None
        seed: Callable[[], Iterable[Article]] | None = None
        as_of = as_of_given
        if as_of is not None and not one_shot:
            print(f"as of: {describe(as_of)}", file=out, flush=True)
        if one_shot:
            ingest, seed = _ingest_input(store, args, stack)
            print(
                _ingest_line(ingest, _SAMPLE_LABEL if args.sample else args.articles),
                file=out,
                flush=True,
            )
            as_of = _as_of(args.as_of, as_of_given, seed, out, err)
        metrics = Metrics() if args.metrics_port is not None else None
        if metrics is not None:
            server = _serve_metrics(metrics, args.metrics_port)
            stack.callback(server.close)
            print(f"metrics: {server.url}", file=out, flush=True)
        unavailable: dict[str, str] = {}
        if not args.no_check:
            decision = decide_start(check_models(raw_provider, config), config, err)
            if decision.stop is not None:
                _close_provider(provider)
                return _stopped(decision.stop, store.pending(), args.db, err)
            unavailable = dict(decision.unavailable)
        snapshot_path = Path(args.snapshot) if args.snapshot else default_snapshot_path(args.db)
        ray_registry = _ray_registry(args, config, clock, snapshot_path)
        callers = _ray_callers(args, config, raw_provider, out)
        if callers is not None:
            # The calls run on the caller actors; the local provider only checked the models.
            stack.callback(_close_provider, raw_provider)
            provider = _with_call_stats(callers, args.stats_interval)
        start_plan = (
            _plan_at_start(config, args.db, snapshot_path, unavailable, clock, out)
            if one_shot
            else None
        )
        daemon = Daemon(
            config,
            store,
            provider=provider,
            snapshot=SnapshotFile(snapshot_path),
            options=options,
            provider_description=description,
            clock=clock,
            metrics=metrics,
            progress=_progress(args, json_logs, err, description),
            unavailable_models=unavailable,
            ray_registry=ray_registry,
            batch_backend=make_batch_backend(config, raw_provider),
            allow_mixed_versions=args.allow_mixed_versions,
            as_of=as_of,
            tier_seed=seed,
            on_tier_split=lambda split: _print_tier_split(split, out, err),
            tiers_file=tiers_path_beside(args.snapshot or default_snapshot_path(args.db)),
        )
        began = clock.now()
        with signals_stop(daemon):
            report = daemon.run()
        ran_s = clock.now() - began
        if report.quota_state.problem:
            moved = report.quota_state.moved_to
            print(
                f"warning: the quota snapshot could not be used ({report.quota_state.problem}); "
                + (f"it was moved to {moved} and " if moved is not None else "")
                + "quota counting started fresh",
                file=err,
            )
        left = store.pending()
        if one_shot:
            assert ingest is not None
            bound = None
            if start_plan is not None and start_plan.bound_s is not None and not left:
                best = start_plan.best or start_plan.sizing
                bound = BoundReport(start_plan.bound_s, ran_s, best.bottleneck())
            _print_summary(config, report, ingest, left, description, synthetic, out, bound)
        return _exit_code(report, ingest, left, store.path, one_shot, err)


def _ray_registry(
    args: argparse.Namespace, config: Config, clock: Clock, snapshot: Path
) -> Callable[[], Any] | None:
    """With ``--ray``: join the cluster now (a bad address is a usage
    error before anything starts) and return what connects the runtime to
    the project's shared registry actor."""
    address = getattr(args, "ray", None)
    if address is None:
        return None
    from tierbatch.adapters.ray.cluster import (
        RayUnavailableError,
        connect,
        project_name,
        registry_for,
    )

    try:
        connect(address)
    except RayUnavailableError as exc:
        raise UsageError(str(exc)) from None
    project = args.ray_project or project_name(find_api_key(config.provider.api_key_env))
    path = str(snapshot.resolve())
    return lambda: registry_for(project, config, clock, snapshot_path=path)


def _ray_callers(
    args: argparse.Namespace, config: Config, provider: Provider, out: TextIO
) -> Provider | None:
    """With ``--ray-extractors N``: the provider whose calls run on N caller
    actors on the cluster ``--ray`` joined (each builds the same kind of
    provider on its node); None without it."""
    count = getattr(args, "ray_extractors", 0)
    if not count:
        return None
    if count < 0:
        raise UsageError(f"--ray-extractors {count}: expected 0 (none) or more actors")
    if getattr(args, "ray", None) is None:
        raise UsageError("--ray-extractors needs --ray: the caller actors run on a Ray cluster")
    from functools import partial

    from tierbatch.adapters.ray.remote_calls import start_callers

    try:
        callers = start_callers(
            count, partial(provider_on_this_node, resolved_kind(config, provider))
        )
    except Exception as exc:  # Ray wraps the actor's error (a missing key, ...)
        cause = getattr(exc, "cause", None) or exc
        raise UsageError(
            f"--ray-extractors {count}: the caller actors did not start: {cause}"
        ) from None
    print(f"calls: {callers.description}", file=out, flush=True)
    return callers


def _daemon_options(args: argparse.Namespace, *, exit_when_done: bool) -> DaemonOptions:
    try:
        return DaemonOptions(
            lease_s=args.lease_s,
            poll_interval_s=args.poll_interval,
            drain_timeout_s=args.drain_timeout,
            exit_when_done=exit_when_done,
            quota_address=args.quota_address,
            quota_lease_s=args.quota_lease_s,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _with_call_stats(provider: Provider, interval_s: float) -> Provider:
    if interval_s < 0 or not math.isfinite(interval_s):
        raise UsageError(f"--stats-interval {interval_s}: expected 0 (none) or more seconds")
    return CallStatsProvider(provider, interval_s) if interval_s > 0 else provider


def _open_store(db: str) -> Store:
    if not is_postgres_url(db):
        parent = Path(db).resolve().parent
        if not parent.is_dir():
            raise UsageError(f"--db {db}: directory {parent} does not exist")
    try:
        return open_store(db, owner=default_owner())
    except StorageError as exc:
        raise UsageError(str(exc)) from None


_Seed = Callable[[], Iterable[Article]]


def _ingest_input(
    store: Store, args: argparse.Namespace, stack: ExitStack
) -> tuple[IngestReport, _Seed]:
    """Enqueue the run's input; also a way to read its articles again (to
    seed the tier shares and find the newest): the file is read anew, the
    sample kept, and stdin spooled (to a temporary file past 64 MiB)."""
    if args.sample:
        return _ingest_sample(store, datetime.now(UTC))
    path: str = args.articles
    if path == "-":
        spool = stack.enter_context(tempfile.SpooledTemporaryFile(max_size=64 << 20))  # noqa: SIM115
        _copy(sys.stdin.buffer, spool)
        spool.seek(0)
        report = ingest_jsonl(store, spool, source_name="<stdin>")

        def reread_spool() -> Iterator[Article]:
            spool.seek(0)
            return _articles_of(spool)

        return report, reread_spool
    report = _ingest_path(store, path)
    return report, lambda: _articles_of(path)


def _copy(source: IO[bytes], target: IO[bytes]) -> None:
    while chunk := source.read(1 << 20):
        target.write(chunk)


def _articles_of(source: str | IO[bytes]) -> Iterator[Article]:
    return (item for item in read_articles(source) if isinstance(item, Article))


def _parse_as_of(text: str | None) -> float | None:
    """An explicit ``--as-of`` instant, checked before anything is queued
    (None: none given, or ``newest``)."""
    if text is None:
        return None
    try:
        return parse_as_of(text)
    except AsOfError as exc:
        raise UsageError(str(exc)) from None


def _as_of(
    text: str | None, given: float | None, seed: _Seed, out: TextIO, err: TextIO
) -> float | None:
    """``--as-of`` in epoch seconds (None: the wall clock), said on ``out``."""
    if text is None:
        return None
    at = given
    if at is None:
        at = newest_published(seed())
        if at is None:
            print(
                "warning: --as-of newest: no article of the input has a published_at; "
                "hotness is computed against the wall clock",
                file=err,
                flush=True,
            )
            return None
        print(f"as of: {describe(at)} (the newest article of the input)", file=out, flush=True)
    else:
        print(f"as of: {describe(at)}", file=out, flush=True)
    return at


def _print_tier_split(split: TierSplit, out: TextIO, err: TextIO) -> None:
    for line in split_lines(split):
        print(line, file=out)
    out.flush()
    for line in empty_tier_warnings(split):
        print(line, file=err)
    err.flush()


def _ingest_sample(store: Store, now: datetime) -> tuple[IngestReport, _Seed]:
    """Enqueue the shipped sample as a replay: its publication times are
    shifted so the newest article is from ``now`` (see ``sample``)."""
    articles, rejects = sample_articles(now)
    report = store.enqueue(articles)
    rejected = store.add_rejects("sample", rejects)
    return IngestReport(report.inserted, report.duplicates, rejected), lambda: articles


def _ingest_path(store: Store, path: str) -> IngestReport:
    if path == "-":
        return ingest_jsonl(store, sys.stdin.buffer, source_name="<stdin>")
    if not Path(path).is_file():
        raise UsageError(f"{path}: no such file")
    try:
        return ingest_jsonl(store, path)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _ingest_line(report: IngestReport, name: str) -> str:
    line = f"input {name}: {report.inserted} article(s) queued"
    if report.duplicates:
        line += f", {report.duplicates} already in the database"
    if report.rejected:
        line += f", {report.rejected} line(s) rejected (see the rejects table)"
    return line


def _load_config(args: argparse.Namespace) -> Config:
    """``--config``, else the demo's for ``--sample``, else the built-in one."""
    if args.config is None and getattr(args, "sample", False):
        return load_demo_config()
    return load_config(args.config)


RUN_PLAN_LIMIT = 50_000
"""``run`` plans its backlog at start (and ends its summary with the bound)
when the database holds at most this many articles to do: beyond that,
reading and scoring them all would hold up the start (``tierbatch plan``
sizes any backlog)."""


def _plan_at_start(
    config: Config,
    db: str,
    snapshot: Path,
    unavailable: Mapping[str, str],
    clock: Clock,
    out: TextIO,
) -> PlanReport | None:
    """The plan for the whole queue with the quotas the run starts with,
    printed in short; None when the queue is too large to plan at start or
    cannot be read (the run goes on without a bound)."""
    try:
        articles, unusable = read_backlog(db)
    except StorageError as exc:
        _log.warning("the backlog could not be read for the plan at start", error=str(exc))
        return None
    if not articles or len(articles) > RUN_PLAN_LIMIT:
        return None
    report = plan_for(
        config,
        articles,
        snapshot,
        clock.wall(),
        source="the queue",
        unusable=unusable,
        unavailable=unavailable,
    )
    for line in plan_lines(report):
        print(line, file=out)
    out.flush()
    return report


def _progress(
    args: argparse.Namespace, json_logs: bool, err: TextIO, description: str
) -> ProgressReporter:
    if args.no_progress:
        return NoProgress()
    if err.isatty() and not json_logs:
        return LiveProgress(err, title=f"tierbatch ({description})")
    return LogProgress(args.progress_interval)


def _serve_metrics(metrics: Metrics, port: int) -> MetricsServer:
    if not 0 <= port <= 65535:
        raise UsageError(f"--metrics-port {port}: expected 0..65535")
    try:
        return metrics.serve(port)
    except OSError as exc:
        raise UsageError(f"--metrics-port {port}: cannot listen: {exc.strerror or exc}") from None


def _print_summary(
    config: Config,
    report: DaemonReport,
    ingest: IngestReport,
    left: int,
    description: str,
    synthetic: bool,
    out: TextIO,
    bound: BoundReport | None = None,
) -> None:
    notes = []
    if report.reason is StopReason.FAILED:
        notes.append(f"stopped: {report.fatal_error}")
    elif report.fatal_error:
        notes.append(f"stopped: the provider refused the configuration ({report.fatal_error})")
    elif report.reason in (StopReason.SIGNAL, StopReason.IMMEDIATE) and left:
        notes.append("stopped by a signal before the queue was empty")
    elif report.reason is StopReason.BUDGET:
        notes.append("stopped: the daily budget is spent; the rest stay queued until midnight")
    if report.budget is not None:
        notes.append(budget_line(report.budget, time.time(), batch_api=report.batch_api))
    summary = build_summary(
        config,
        provider=description,
        synthetic=synthetic,
        elapsed_s=report.elapsed_s,
        tally=report.tally,
        usage=report.usage,
        enqueued=ingest.inserted,
        already_known=ingest.duplicates,
        rejected=ingest.rejected,
        left_queued=left,
        notes=notes,
        bound=bound,
    )
    render_summary(summary, out)
    line = batch_line(report.batch) if report.batch is not None else None
    if line:
        print(f"{line} (the estimated cost above counts interactive requests only)", file=out)
    out.flush()


def _exit_code(
    report: DaemonReport,
    ingest: IngestReport | None,
    left: int,
    db: str,
    one_shot: bool,
    err: TextIO,
) -> int:
    codes = []
    if report.failure is not None:
        codes.append(_stopped(report.failure, left, db, err))
    if one_shot:
        if left and report.reason is StopReason.BUDGET:
            print(
                f"tierbatch: the daily budget is spent; {left} article(s) stay queued in {db} "
                "until the quota day's midnight: run again then",
                file=err,
            )
            codes.append(EXIT_BUDGET)
        elif left and report.reason is not StopReason.FINISHED:
            codes.append(EXIT_INTERRUPTED)
        if ingest is not None and ingest.rejected:
            codes.append(EXIT_REJECTED)
        if report.tally.failed_total:
            codes.append(EXIT_FAILED)
    return first_exit_code(codes)


def _stopped(error: TierbatchError, left: int, db: str, err: TextIO) -> int:
    """Say what stopped a run (``run`` or ``daemon``, at start or later) and
    where its articles are; returns the exit code."""
    code = exit_code_of(error)
    if code is None:
        raise error
    if code == EXIT_STORAGE:
        message = _one_line(str(error))
    elif code == EXIT_RUNTIME_FAILED:
        message = (
            f"{error}.\nThis is not a problem with the API key or the provider; the log "
            f"above has the error. {left} article(s) stay queued in {db}; run again to "
            "finish them."
        )
    elif code == EXIT_PROVIDER_REFUSED:
        message = (
            f"the provider refused the configuration ({error}).\n"
            "Check the API key (GEMINI_API_KEY or GOOGLE_API_KEY, or the variables named in "
            "provider.api_key_env), provider.base_url, and that the key's project may use "
            f"the configured models. {left} article(s) stay queued in {db}; run again once "
            "fixed."
        )
    else:  # the models check at start: nothing was leased
        message = (
            f"{error}.\nNothing was leased: {left} article(s) stay queued in {db}; run "
            "again once fixed."
        )
    print(f"tierbatch: error: {message}", file=err)
    return code


def _close_provider(provider: Provider) -> None:
    """Release a provider that never ran (the runtime closes the ones it runs)."""
    try:
        asyncio.run(provider.aclose())
    except Exception:
        _log.exception("closing the provider failed")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _is_simulated(provider: Provider) -> bool:
    from tierbatch.adapters.simulation.simulated import SimulatedProvider

    return isinstance(provider, SimulatedProvider)


def _secret_values(config: Config) -> list[str]:
    """The API key values in the environment, to scrub from log lines."""
    return [v.strip() for name in config.provider.api_key_env if (v := os.environ.get(name, ""))]


# ---- enqueue, status, config check ---------------------------------------------------


def _cmd_enqueue(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    configure_logging(json_lines=False, level="warning")
    store = _open_store(args.db)
    try:
        report = _ingest_path(store, args.articles)
    finally:
        store.close()
    print(_ingest_line(report, args.articles), file=out)
    return EXIT_REJECTED if report.rejected else EXIT_OK


def _cmd_status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = load_config(args.config)
    try:
        status = read_status(
            args.db,
            args.snapshot or default_snapshot_path(args.db),
            config,
            tiers_path=tiers_path_beside(args.snapshot or default_snapshot_path(args.db)),
        )
    except StatusError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        json.dump(status.to_json(), out, indent=2, sort_keys=True)
        out.write("\n")
    else:
        render_status(status, out)
    return EXIT_OK


def _cmd_plan(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = _load_config(args)
    configure_logging(json_lines=False, level="warning")
    now = time.time()
    snapshot = Path(args.snapshot) if args.snapshot else None
    batch: BatchReport | None = None
    if args.sample:
        articles, rejects = sample_articles(datetime.fromtimestamp(now, UTC))
        source, unusable = _SAMPLE_LABEL, len(rejects)
    elif args.articles:
        articles, unusable = _read_plan_input(args.articles)
        source = args.articles
    else:
        db = args.db or os.environ.get(DB_ENV)
        if not db:
            raise UsageError(f"plan: give ARTICLES.jsonl, --sample or --db (or set ${DB_ENV})")
        try:
            articles, unusable = read_backlog(db)
            batch = read_report(db, now).batch
        except StorageError as exc:
            raise UsageError(str(exc)) from None
        source = f"the database {display_name(db)} (queued and leased)"
        snapshot = snapshot or default_snapshot_path(db)
    report = plan_for(
        config,
        articles,
        None if args.fresh else snapshot,
        now,
        source=source,
        unusable=unusable,
        batch=batch,
    )
    if args.json:
        json.dump(report.to_json(), out, indent=2, sort_keys=True)
        out.write("\n")
    else:
        render_plan(report, out)
    return EXIT_OK


def _read_plan_input(path: str) -> tuple[list[Article], int]:
    """The valid articles of a JSONL file (or stdin), and how many lines were not."""
    if path != "-" and not Path(path).is_file():
        raise UsageError(f"{path}: no such file")
    articles: list[Article] = []
    rejected = 0
    try:
        for item in read_articles(sys.stdin.buffer if path == "-" else path):
            if isinstance(item, Article):
                articles.append(item)
            else:
                rejected += 1
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return articles, rejected


def _cmd_config_check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(f"tierbatch: invalid config:\n{exc}", file=err)
        return exit_code_of(exc) or EXIT_USAGE
    where = args.file or "the built-in config"
    out.write(f"# {where}: valid. Resolved settings:\n")
    out.write(render_config(config))
    return EXIT_OK


# ---- models ---------------------------------------------------------------------------


def _cmd_models(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = load_config(args.config)
    if not args.timeout > 0 or not math.isfinite(args.timeout):
        raise UsageError(f"--timeout {args.timeout}: expected a number of seconds > 0")
    configure_logging(json_lines=False, level="warning", secrets=_secret_values(config))
    provider, description = make_provider(config, SystemClock())
    try:
        report = check_models(provider, config, timeout_s=args.timeout)
    finally:
        _close_provider(provider)
    if args.json:
        json.dump({"provider": description, **report_json(report, config)}, out, indent=2)
        out.write("\n")
    else:
        out.write(f"provider: {description}\n")
        render_report(report, config, out)
    refused = report.refused
    if refused is not None:
        print(f"tierbatch: error: the provider refused the key: {refused.message}", file=err)
    codes = [EXIT_PROVIDER_REFUSED] if refused is not None else []
    codes += [EXIT_MODEL_MISSING] if report.missing else []
    codes += [EXIT_FAILED] if report.failed else []
    return first_exit_code(codes)


# ---- serve-fake-gemini ---------------------------------------------------------------


def _cmd_serve_fake_gemini(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from tierbatch.adapters.simulation.fake_gemini import serve_forever
    from tierbatch.adapters.simulation.gemini_emulator import (
        AnswerQuality,
        BatchFaultRates,
        BatchSettings,
        FakeGeminiConfig,
        FaultRates,
        ProviderLimiter,
    )

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        raise UsageError(
            f"--host {args.host}: the fake server has no real authentication and only "
            "listens on loopback (127.0.0.1, localhost, ::1)"
        )
    configure_logging(json_lines=False, level="info")
    models = load_config(args.config).models if args.config else {}
    try:
        fake_config = FakeGeminiConfig(
            models=models,
            window_s=args.window_s,
            limiter=ProviderLimiter(args.limiter),
            bucket_s=args.bucket_s,
            latency_s=args.latency_s,
            faults=FaultRates(server_error=args.server_error_rate),
            valid_keys=frozenset(args.valid_key) if args.valid_key else None,
            free_tier=args.free_tier,
            seed=args.seed,
            retired=frozenset(args.retired or ()),
            batch=BatchSettings(
                pending_s=args.batch_pending_s,
                turnaround_s=args.batch_turnaround_s,
                faults=BatchFaultRates(
                    request_failure=args.batch_request_failure_rate,
                    job_failure=args.batch_job_failure_rate,
                    expiry=args.batch_expiry_rate,
                ),
            ),
            quality=AnswerQuality(args.cross_article_rate, args.invented_rate),
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    stop = threading.Event()

    shape = (
        f"token buckets holding {fake_config.bucket_s:g} s of each limit"
        if fake_config.limiter is ProviderLimiter.BUCKET
        else f"a rolling {fake_config.window_s:g} s window"
    )

    def on_ready(base_url: str) -> None:
        print(
            f"fake Gemini listening on {base_url} (per-minute limits: {shape})\n"
            f'point tierbatch at it: [provider] kind = "genai", base_url = "{base_url}" '
            "and any GEMINI_API_KEY; Ctrl-C stops it",
            file=out,
            flush=True,
        )

    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        serve_forever(fake_config, args.host, args.port, on_ready=on_ready, stop=stop)
    except OSError as exc:
        raise UsageError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
        ) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    return EXIT_OK


COMMANDS = Commands(
    run=_cmd_run,
    daemon=_cmd_daemon,
    enqueue=_cmd_enqueue,
    status=_cmd_status,
    plan=_cmd_plan,
    config_check=_cmd_config_check,
    models=_cmd_models,
    serve_fake_gemini=_cmd_serve_fake_gemini,
)


if __name__ == "__main__":
    sys.exit(main())
