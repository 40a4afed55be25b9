"""What the ``tierbatch`` command line accepts: its commands, their
arguments, defaults and help. What each command does is ``cli``'s."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from tierbatch.adapters.app.call_stats import DEFAULT_INTERVAL_S
from tierbatch.adapters.app.exit_codes import EXIT_CODES_HELP
from tierbatch.adapters.app.logging_setup import LEVEL_NAMES
from tierbatch.adapters.app.model_check import DEFAULT_LOOKUP_TIMEOUT_S

DB_ENV = "TIERBATCH_DB"
QUOTA_ADDRESS_ENV = "TIERBATCH_QUOTA_ADDRESS"

# A command's handler: the parsed arguments, stdout and stderr -> exit code.
Command = Callable[[argparse.Namespace, TextIO, TextIO], int]


@dataclass(frozen=True, slots=True)
class Commands:
    """The handler of each command."""

    run: Command
    daemon: Command
    enqueue: Command
    status: Command
    plan: Command
    config_check: Command
    models: Command
    serve_fake_gemini: Command


def build_parser(commands: Commands) -> argparse.ArgumentParser:
    """The parser of every command; each sets ``args.command`` to its handler."""
    parser = argparse.ArgumentParser(
        prog="tierbatch",
        description="Quota-aware, priority-tiered entity extraction over news articles "
        "with Gemini models.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    run = subparsers.add_parser(
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
    run.set_defaults(command=commands.run)

    daemon = subparsers.add_parser(
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
        "--ray-extractors",
        type=int,
        default=0,
        metavar="N",
        help="with --ray: make the model calls on N caller actors spread over the "
        "cluster's nodes, each with a provider client of its own (the API key "
        "from each node's environment); 0 (default): in this process",
    )
    daemon.add_argument(
        "--as-of",
        metavar="INSTANT",
        help="compute hotness against this ISO 8601 instant instead of the wall clock "
        "(a daemon working through a backfill); 'newest' needs an input: run only",
    )
    daemon.set_defaults(command=commands.daemon)

    enqueue = subparsers.add_parser(
        "enqueue", help="validate a JSONL file and add its articles to the queue"
    )
    enqueue.add_argument("articles", metavar="ARTICLES.jsonl", help="input file ('-': stdin)")
    _add_db(enqueue)
    enqueue.set_defaults(command=commands.enqueue)

    status = subparsers.add_parser(
        "status", help="articles per state, tier and model, and the quota state (read-only)"
    )
    _add_db(status)
    status.add_argument("--config", metavar="FILE", help="config with the model limits")
    status.add_argument(
        "--snapshot", metavar="PATH", help="quota snapshot (default: DB.quota.msgpack)"
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of tables")
    status.set_defaults(command=commands.status)

    plan = subparsers.add_parser(
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
    plan.set_defaults(command=commands.plan)

    config = subparsers.add_parser("config", help="configuration tools")
    config_commands = config.add_subparsers(title="config commands", required=True, metavar="CMD")
    check = config_commands.add_parser(
        "check", help="validate a config file and print the resolved settings as TOML"
    )
    check.add_argument("file", nargs="?", metavar="FILE", help="default: the built-in config")
    check.set_defaults(command=commands.config_check)

    models = subparsers.add_parser(
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
    models.set_defaults(command=commands.models)

    fake = subparsers.add_parser(
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
    fake.set_defaults(command=commands.serve_fake_gemini)
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
