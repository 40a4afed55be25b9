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

This module only parses arguments, wires the adapters together and turns
outcomes into messages and exit codes; the work happens in ``daemon``, the
store (``sqlite_store``, or ``postgres_store`` for a ``postgresql://`` URL)
and the runtime. It is also the only place that configures
logging. ``main`` returns the exit code instead of exiting, so it can be
called in-process (tests) as well as by the console script.
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
from tierbatch.adapters.app.call_stats import DEFAULT_INTERVAL_S, CallStatsProvider
from tierbatch.adapters.app.daemon import (
    Daemon,
    DaemonOptions,
    DaemonReport,
    StopReason,
    check_task_versions,
    default_snapshot_path,
    signals_stop,
)
from tierbatch.adapters.app.logging_setup import (
    LEVEL_NAMES,
    configure_logging,
    restore_configuration,
    saved_configuration,
)
from tierbatch.adapters.app.metrics import Metrics, MetricsServer
from tierbatch.adapters.app.model_check import (
    DEFAULT_LOOKUP_TIMEOUT_S,
    StartDecision,
    StartVerdict,
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
from tierbatch.adapters.app.provider_factory import make_batch_backend, make_provider
from tierbatch.adapters.app.quota_link import QuotaUnavailable
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
from tierbatch.adapters.gemini.api_key import MissingApiKey, find_api_key
from tierbatch.adapters.gemini.origin import InvalidBaseUrl
from tierbatch.adapters.storage.config_file import load_config, render_config
from tierbatch.adapters.storage.ingest import IngestReport, ingest_jsonl
from tierbatch.adapters.storage.jsonl_input import read_articles
from tierbatch.adapters.storage.open_store import (
    display_name,
    is_postgres_url,
    open_store,
    read_backlog,
)
from tierbatch.adapters.storage.snapshot_file import SnapshotFile
from tierbatch.adapters.storage.store import StorageError, Store, default_owner
from tierbatch.adapters.storage.tiers_file import tiers_path_beside
from tierbatch.policies.articles import Article
from tierbatch.policies.config import Config, ConfigError
from tierbatch.policies.task import MixedTaskVersions
from tierbatch.policies.tier_assignment import TierSplit

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REJECTED = 3
EXIT_PROVIDER_REFUSED = 4
EXIT_INTERRUPTED = 5
EXIT_STORAGE = 6
EXIT_RUNTIME_FAILED = 7
EXIT_MODEL_MISSING = 8
EXIT_BUDGET = 9

EXIT_CODES_HELP = """\
exit codes:
  0  every article is terminal and none failed
  1  some articles failed (the summary says why; their result rows say so too)
  2  bad usage, configuration or database (the message names the problem)
  3  some input lines were rejected (line numbers and reasons are in the
     database's rejects table; every valid line was processed)
  4  the provider refused the configuration (HTTP 401/403, or the base URL
     redirected, which is never followed): check the API key, provider.base_url
     and that the key's project may use the configured models; queued articles
     stay queued in the database
  5  run only: stopped by a signal before every article was terminal (the rest
     stay queued; run again to finish them)
  6  the database failed during the run (e.g. disk full): the message names
     the database and the problem; articles whose results could not be
     written were handed back to the queue (or their leases expire)
  7  the runtime itself failed: extractors kept crashing, or one of its actors
     died (a bug; the log has the error). Not a key or provider problem;
     unfinished articles stay queued in the database
  8  a configured model does not exist at the provider (HTTP 404). run and
     daemon: the check at start found a tier with none of its models left, and
     stopped before leasing anything (the articles stay queued); a missing
     model that leaves every tier a model only warns and is routed around.
     --no-check skips the check. models: some configured model is missing
  9  run only: the daily budget ([budget]) is spent; the articles it holds
     stay queued until the quota day's midnight (run again then)
  When several apply, the first of 6, then 7 or 4 (only one can stop a run),
  then 5, 9, 3, 1 wins. daemon exits 0 on SIGTERM/SIGINT, 4 when the provider
  refuses the configuration, 6 when the database fails, 7 when the runtime
  fails and 8 when the check at start finds a tier without models. models
  exits 0 when every configured model exists, 4 when the key is refused, 8
  when one is missing, 1 when some could not be checked (timeout, 5xx).
"""

DB_ENV = "TIERBATCH_DB"
QUOTA_ADDRESS_ENV = "TIERBATCH_QUOTA_ADDRESS"
_SAMPLE_LABEL = "the shipped sample (replayed: publication times shifted to end now)"
_log = structlog.get_logger("tierbatch.cli")


class UsageError(Exception):
    """A problem with the command line or its inputs: exit code 2."""


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
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or argparse's own usage error
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    args.clock = clock
    saved = saved_configuration()
    try:
        command: Callable[[argparse.Namespace, TextIO, TextIO], int] = args.command
        return command(args, out, err)
    except (UsageError, ConfigError, MissingApiKey, InvalidBaseUrl, MixedTaskVersions) as exc:
        print(f"tierbatch: error: {exc}", file=err)
        return EXIT_USAGE
    except StorageError as exc:  # opening the database is a UsageError; this is later
        print(f"tierbatch: error: {_one_line(str(exc))}", file=err)
        return EXIT_STORAGE
    except QuotaUnavailable as exc:  # the quota address, or an owner never reached
        print(f"tierbatch: error: {exc}", file=err)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("tierbatch: interrupted", file=err)
        return 130
    finally:
        restore_configuration(saved)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tierbatch",
        description="Quota-aware, priority-tiered entity extraction over news articles "
        "with Gemini models.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="enqueue a JSONL file and process it to the end, then print a summary",
        description="Validate and enqueue ARTICLES.jsonl (or the shipped sample), process "
        "every queued article of the database, and print a summary per tier and model. "
        "Without an API key the simulated provider runs, and the output says so.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("articles", nargs="?", metavar="ARTICLES.jsonl", help="input file")
    source.add_argument(
        "--sample",
        action="store_true",
        help="use the shipped sample articles (without --config: under the demo's tight "
        "quotas, adapters/data/demo.toml)",
    )
    _add_db(run)
    _add_processing(run)
    run.add_argument(
        "--as-of",
        metavar="WHEN",
        help="compute hotness against this instant instead of the wall clock, for "
        "backfills: 'newest' (the newest published_at of the input) or an ISO 8601 "
        "instant such as 2026-11-24T12:00:00Z (naive: UTC)",
    )
    run.set_defaults(command=_cmd_run)

    daemon = commands.add_parser(
        "daemon",
        help="process the database's queue continuously",
        description="Lease articles other processes insert into the queue table, process "
        "them, and write results back, until SIGTERM/SIGINT (start no new call, hand back "
        "what is not in flight, let calls in flight finish, save state, exit 0; a second "
        "signal stops at once).",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_db(daemon)
    _add_processing(daemon, json_default=True)
    daemon.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="share one quota with every daemon of a Ray cluster: 'auto' (the cluster "
        "this node joined with 'ray start') or the head's HOST:PORT. Needs "
        "pip install 'tierbatch[ray]'",
    )
    daemon.add_argument(
        "--ray-project",
        metavar="NAME",
        help="the shared registry's name: one per Gemini project (default: "
        "$TIERBATCH_RAY_PROJECT, else a fingerprint of the API key)",
    )
    daemon.add_argument(
        "--as-of",
        metavar="INSTANT",
        help="compute hotness against this ISO 8601 instant instead of the wall clock "
        "(a daemon working through a backfill); 'newest' needs an input: run only",
    )
    daemon.set_defaults(command=_cmd_daemon)

    enqueue = commands.add_parser(
        "enqueue", help="validate a JSONL file and add its articles to the queue"
    )
    enqueue.add_argument("articles", metavar="ARTICLES.jsonl", help="input file ('-': stdin)")
    _add_db(enqueue)
    enqueue.set_defaults(command=_cmd_enqueue)

    status = commands.add_parser(
        "status", help="articles per state, tier and model, and the quota state (read-only)"
    )
    _add_db(status)
    status.add_argument("--config", metavar="FILE", help="config with the model limits")
    status.add_argument(
        "--snapshot", metavar="PATH", help="quota snapshot (default: DB.quota.msgpack)"
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of tables")
    status.set_defaults(command=_cmd_status)

    plan = commands.add_parser(
        "plan",
        help="what the quotas allow for a backlog: the tier split, the plan per tier and "
        "model, when each tier is done, which limit binds",
        description="Size a backlog before running it: score the articles as the composer "
        "would, split them into tiers and requests, and plan them on the quotas -- fresh, "
        "or the quota snapshot's (today's usage and learnt limits) when there is one. "
        "Prints the plan (requests per tier and model, per quota window), when each tier "
        "is done, which limits bind, and the bound: when the last request can go.",
    )
    plan_source = plan.add_mutually_exclusive_group()
    plan_source.add_argument(
        "articles", nargs="?", metavar="ARTICLES.jsonl", help="input file ('-': stdin)"
    )
    plan_source.add_argument(
        "--sample", action="store_true", help="the shipped sample (replayed, as run --sample)"
    )
    plan_source.add_argument(
        "--db",
        metavar="DB",
        help="what a queue database still holds, queued and leased (default: $TIERBATCH_DB)",
    )
    plan.add_argument(
        "--config",
        metavar="FILE",
        help="TOML config (default: built-in; with --sample: the demo's)",
    )
    plan.add_argument(
        "--snapshot",
        metavar="PATH",
        help="quota snapshot to plan from (default with --db: DB.quota.msgpack)",
    )
    plan.add_argument(
        "--fresh", action="store_true", help="plan on fresh quotas, ignoring any snapshot"
    )
    plan.add_argument("--json", action="store_true", help="print JSON instead of tables")
    plan.set_defaults(command=_cmd_plan)

    config = commands.add_parser("config", help="configuration tools")
    config_commands = config.add_subparsers(title="config commands", required=True, metavar="CMD")
    check = config_commands.add_parser(
        "check", help="validate a config file and print the resolved settings as TOML"
    )
    check.add_argument("file", nargs="?", metavar="FILE", help="default: the built-in config")
    check.set_defaults(command=_cmd_config_check)

    models = commands.add_parser(
        "models",
        help="check that the provider has every configured model (input limit, batch support)",
        description="Ask the provider about every configured model (one models.get each, "
        "at once): does it exist, its input and output token limits, whether it supports "
        "the Batch API, and which tiers use it. A missing (retired or misspelt) model and "
        "a tier left without models are reported.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    models.add_argument("--config", metavar="FILE", help="TOML config (default: built-in)")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_LOOKUP_TIMEOUT_S,
        metavar="S",
        help=f"seconds each lookup may take (default {DEFAULT_LOOKUP_TIMEOUT_S:g})",
    )
    models.set_defaults(command=_cmd_models)

    fake = commands.add_parser(
        "serve-fake-gemini",
        help="serve a local Gemini-compatible API (loopback only) for rehearsals",
    )
    fake.add_argument("--host", default="127.0.0.1", help="loopback address (default 127.0.0.1)")
    fake.add_argument("--port", type=int, default=8765, help="default 8765; 0 picks a free port")
    fake.add_argument(
        "--config", metavar="FILE", help="tierbatch config whose model limits to enforce"
    )
    fake.add_argument("--window-s", type=float, default=60.0, help="rate-limit window (default 60)")
    fake.add_argument(
        "--limiter",
        choices=("window", "bucket"),
        default="window",
        help="how the per-minute limits are enforced: a rolling window of --window-s "
        "(default), or a token bucket refilled at the limit's rate",
    )
    fake.add_argument(
        "--bucket-s",
        type=float,
        default=10.0,
        metavar="S",
        help="with --limiter bucket: the bucket holds S seconds' worth of the limit (default 10)",
    )
    fake.add_argument("--latency-s", type=float, default=0.0, help="answer latency in seconds")
    fake.add_argument(
        "--server-error-rate", type=float, default=0.0, help="share of requests answered 5xx"
    )
    fake.add_argument("--seed", type=int, default=0, help="seed of the fault draws")
    fake.add_argument(
        "--valid-key",
        action="append",
        default=None,
        metavar="KEY",
        help="accept only these API keys (repeatable); default: any well-formed key",
    )
    fake.add_argument("--free-tier", action="store_true", help="free-tier quota ids in 429s")
    fake.add_argument(
        "--retired",
        action="append",
        default=None,
        metavar="MODEL",
        help="a model that answers 404, as a retired one does (repeatable)",
    )
    fake.add_argument(
        "--batch-pending-s",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds a batch job stays pending (default 1)",
    )
    fake.add_argument(
        "--batch-turnaround-s",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds from a batch job's creation to its end (default 10)",
    )
    fake.add_argument(
        "--batch-request-failure-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="share of a batch job's requests that fail on their own",
    )
    fake.add_argument(
        "--batch-job-failure-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="share of batch jobs that end FAILED",
    )
    fake.add_argument(
        "--batch-expiry-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="share of batch jobs that end EXPIRED",
    )
    fake.add_argument(
        "--cross-article-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="share of answered entities swapped for one of another article of the request",
    )
    fake.add_argument(
        "--invented-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="share of answered entities swapped for a name in no article",
    )
    fake.set_defaults(command=_cmd_serve_fake_gemini)
    return parser


def _add_db(parser: argparse.ArgumentParser) -> None:
    default = os.environ.get(DB_ENV) or None
    parser.add_argument(
        "--db",
        required=default is None,
        default=default,
        metavar="DB",
        help="SQLite database file, or a postgresql://user@host/dbname URL for a queue "
        f"many machines share (default: ${DB_ENV})",
    )


def _add_processing(parser: argparse.ArgumentParser, *, json_default: bool = False) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML config (default: built-in)")
    if json_default:
        parser.add_argument(
            "--log-console", action="store_true", help="human console logs instead of JSON lines"
        )
    else:
        parser.add_argument("--log-json", action="store_true", help="log JSON lines")
    parser.add_argument("--log-level", default="info", choices=LEVEL_NAMES)
    parser.add_argument(
        "--no-check",
        action="store_true",
        help="skip the check at start that every configured model exists (one "
        "models.get per model); a missing model then costs each article an attempt",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no live display nor progress log lines"
    )
    parser.add_argument(
        "--allow-mixed-versions",
        action="store_true",
        help="let results of this task version join a results table that holds results of "
        "another one (default: refused, naming the versions; task.allow_mixed_versions)",
    )
    parser.add_argument(
        "--progress-interval",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds between progress log lines outside a terminal (default 10)",
    )
    parser.add_argument(
        "--stats-interval",
        type=float,
        default=DEFAULT_INTERVAL_S,
        metavar="S",
        help="seconds between 'provider calls' log lines, per-model call counts, 429s, "
        "tokens and latency (default 60; 0: none). Per-call lines are at --log-level debug",
    )
    parser.add_argument(
        "--metrics-port", type=int, metavar="N", help="serve Prometheus metrics on 127.0.0.1:N"
    )
    parser.add_argument(
        "--snapshot", metavar="PATH", help="quota state file (default: DB.quota.msgpack)"
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="on SIGTERM/SIGINT, seconds the calls in flight may take to finish "
        "(no new call starts; default 30)",
    )
    parser.add_argument(
        "--lease-s",
        type=float,
        default=60.0,
        metavar="S",
        help="lease duration of a taken article, renewed while working (default 60)",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=0.5,
        metavar="S",
        help="seconds between looks for new rows when idle (default 0.5)",
    )
    parser.add_argument(
        "--quota-address",
        default=os.environ.get(QUOTA_ADDRESS_ENV) or "127.0.0.1:0",
        metavar="HOST[:PORT]",
        help="where this process serves grants to the other daemons on the database while "
        "it owns their shared quota; the others must reach it there (default 127.0.0.1 "
        f"and any free port, or ${QUOTA_ADDRESS_ENV})",
    )
    parser.add_argument(
        "--quota-lease-s",
        type=float,
        default=10.0,
        metavar="S",
        help="lease of the shared quota's owner, renewed every third of it: how long a "
        "dead owner strands the quota (default 10)",
    )


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
            if decision.verdict is not StartVerdict.GO:
                _close_provider(provider)
                return _stopped_by_check(decision, store.pending(), args.db, err)
            unavailable = dict(decision.unavailable)
        snapshot_path = Path(args.snapshot) if args.snapshot else default_snapshot_path(args.db)
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
            ray_registry=_ray_registry(args, config, clock, snapshot_path),
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
        RayUnavailable,
        connect,
        project_name,
        registry_for,
    )

    try:
        connect(address)
    except RayUnavailable as exc:
        raise UsageError(str(exc)) from None
    project = args.ray_project or project_name(find_api_key(config.provider.api_key_env))
    path = str(snapshot.resolve())
    return lambda: registry_for(project, config, clock, snapshot_path=path)


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
        notes.append(budget_line(report.budget, time.time()))
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
    if report.storage_error is not None:
        print(f"tierbatch: error: {_one_line(report.storage_error)}", file=err)
        return EXIT_STORAGE
    if report.reason is StopReason.FAILED:
        print(
            f"tierbatch: error: {report.fatal_error}.\n"
            "This is not a problem with the API key or the provider; the log above has "
            f"the error. {left} article(s) stay queued in {db}; run again to finish them.",
            file=err,
        )
        return EXIT_RUNTIME_FAILED
    if report.fatal_error is not None:
        print(_refused_message(report.fatal_error, left, db), file=err)
        return EXIT_PROVIDER_REFUSED
    if not one_shot:
        return EXIT_OK
    if left and report.reason is StopReason.BUDGET:
        print(
            f"tierbatch: the daily budget is spent; {left} article(s) stay queued in {db} "
            "until the quota day's midnight: run again then",
            file=err,
        )
        return EXIT_BUDGET
    if left and report.reason is not StopReason.FINISHED:
        return EXIT_INTERRUPTED
    if ingest is not None and ingest.rejected:
        return EXIT_REJECTED
    if report.tally.failed_total:
        return EXIT_FAILED
    return EXIT_OK


def _refused_message(detail: str, left: int, db: str) -> str:
    return (
        f"tierbatch: error: the provider refused the configuration ({detail}).\n"
        "Check the API key (GEMINI_API_KEY or GOOGLE_API_KEY, or the variables named in "
        "provider.api_key_env), provider.base_url, and that the key's project may use "
        "the configured models. "
        f"{left} article(s) stay queued in {db}; run again once fixed."
    )


def _stopped_by_check(decision: StartDecision, left: int, db: str, err: TextIO) -> int:
    """The models check at start stopped the run, before anything was leased."""
    if decision.verdict is StartVerdict.REFUSED:
        print(_refused_message(decision.message, left, db), file=err)
        return EXIT_PROVIDER_REFUSED
    print(
        f"tierbatch: error: {decision.message}.\n"
        f"Nothing was leased: {left} article(s) stay queued in {db}; run again once fixed.",
        file=err,
    )
    return EXIT_MODEL_MISSING


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
        return EXIT_USAGE
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
        return EXIT_PROVIDER_REFUSED
    if report.missing:
        return EXIT_MODEL_MISSING
    return EXIT_FAILED if report.failed else EXIT_OK


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


if __name__ == "__main__":
    sys.exit(main())
