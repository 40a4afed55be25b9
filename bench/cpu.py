"""CPU per request: what the runtime itself costs, with 10k packs waiting.

    python -m bench.cpu [--requests N] [--waiting N] [--json OUT]

Three measurements, each in this process (CPU = user + system time of the
process, so every thread counts -- actors, timers, the event loop):

* ``null``: the runtime over a provider that answers at once, quota
  unlimited -- the runtime's own cost per request (actor messages, the
  registry's decision, composing, packing, settling, the sink).
* ``waiting``: the same with ``--waiting`` packs parked in the registry
  behind a quota that admits them a few at a time, so every grant is
  decided with that many waiters -- the O(log n) claim, measured.
* ``http``: google-genai against the local Gemini-compatible server (its own
  process, unlimited quota), first bare (``client.aio.models.generate_content``
  with the same schema, 64 at a time), then through the runtime; the
  difference per request is the runtime's share on top of the SDK.

One article per request everywhere, so a request is the unit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.logs import quiet_logs
from bench.measure import process_cpu_seconds
from bench.server_proc import API_KEY, ServerProcess, unlimited_spec


def _config(extractors: int, packs: int, rpm: int, window_s: float) -> Any:
    from tierbatch.policies.config import (
        ComposerConfig,
        Config,
        ModelSpec,
        QuotaConfig,
        RetryConfig,
        RuntimeConfig,
        TierSpec,
    )

    return Config(
        models={"m": ModelSpec("m", rpm=rpm, tpm=0, rpd=0)},
        tiers=(TierSpec("only", 0.0, "m", None, 1),),
        global_fallback="m",
        composer=ComposerConfig(mix={"only": 64}, max_queued=1_000_000),
        quota=QuotaConfig(window_s=window_s, margin_s=0.0),
        retry=RetryConfig(request_timeout_s=3600.0),
        runtime=RuntimeConfig(extractors=extractors, max_packs_in_flight=packs),
    )


def _articles(n: int, prefix: str) -> list[Any]:
    from tierbatch.policies.articles import Article

    text = "Maria Lopez met Acme Corp in Paris on Monday to talk about the summit. " * 6
    return [Article(id=f"{prefix}{i}", text=text, title=f"Title {i}") for i in range(n)]


class _NullProvider:
    """Answers every article at once (the simulated provider's answer shape)."""

    def __init__(self) -> None:
        from tierbatch.policies.results import Entity, EntityType, Extraction

        self._extraction = Extraction((Entity("Acme Corp", EntityType.ORGANISATION, 0.8),))

    async def extract(self, request: Any) -> Any:
        from tierbatch.actors.ports import PackAnswer, mark_request_sent
        from tierbatch.policies.outcomes import Succeeded, Usage

        mark_request_sent()
        answers = {a.id: self._extraction for a in request.articles}
        return PackAnswer(Succeeded(Usage(request.est_input_tokens, 20)), answers)

    async def aclose(self) -> None:
        return None


def _run(config: Any, provider: Any, articles: list[Any], clock: Any = None) -> dict[str, float]:
    from tierbatch.actors.runtime import Runtime
    from tierbatch.actors.sinks import CollectingSink

    sink = CollectingSink()
    runtime = Runtime(config, provider, sink, clock=clock)
    runtime.start()
    try:
        cpu0, wall0 = process_cpu_seconds(), time.monotonic()
        runtime.submit(articles)
        if not runtime.drain(timeout=3600):
            raise RuntimeError("the runtime did not drain")
        cpu, wall = process_cpu_seconds() - cpu0, time.monotonic() - wall0
        stats = runtime.stats()
    finally:
        runtime.stop()
    requests = sum(int(m.counters.get("granted", 0)) for m in stats.models)
    if len(sink.results) != len(articles):
        raise RuntimeError(f"{len(sink.results)} results for {len(articles)} articles")
    return {
        "requests": requests,
        "cpu_s": cpu,
        "wall_s": wall,
        "cpu_per_request_us": 1e6 * cpu / max(1, requests),
        "requests_per_s": requests / wall if wall > 0 else 0.0,
    }


def measure_null(requests: int) -> dict[str, float]:
    return _run(_config(4, 64, 0, 60.0), _NullProvider(), _articles(requests, "n"))


def measure_waiting(requests: int, waiting: int) -> dict[str, float]:
    """``waiting`` packs parked before the first grant: extractors take them
    all (room for ``waiting`` packs), the quota admits 200 per 0.2 s."""
    from tierbatch.actors.clock import SystemClock

    packs = max(64, waiting // 4 + 1)
    config = _config(4, packs, 200, 0.2)
    result = _run(config, _NullProvider(), _articles(max(requests, waiting), "w"), SystemClock())
    result["waiting_at_start"] = float(waiting)
    return result


def measure_http(requests: int) -> dict[str, Any]:
    from tierbatch.adapters.gemini.genai_provider import GenaiProvider
    from tierbatch.adapters.gemini.prompt import (
        RESPONSE_SCHEMA,
        SYSTEM_INSTRUCTION,
        build_user_text,
    )
    from tierbatch.policies.config import ProviderConfig

    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(unlimited_spec(60.0, 0.0, Path(tmp) / "server.jsonl"), Path(tmp))
        base_url = server.start()
        try:
            bare = _bare_genai(
                base_url, requests, RESPONSE_SCHEMA, SYSTEM_INSTRUCTION, build_user_text
            )
            provider = GenaiProvider(ProviderConfig(base_url=base_url), api_key=API_KEY)
            runtime = _run(_config(4, 16, 0, 60.0), provider, _articles(requests, "h"))
        finally:
            server.stop()
    share = runtime["cpu_per_request_us"] - bare["cpu_per_request_us"]
    return {"bare": bare, "runtime": runtime, "runtime_share_us": share}


def _bare_genai(
    base_url: str, n: int, schema: Any, system: str, build_user_text: Any
) -> dict[str, float]:
    from google import genai
    from google.genai import types

    articles = _articles(n, "b")
    # Built once, as the runtime's provider does.
    config = types.GenerateContentConfig(
        response_mime_type="application/json",
        response_schema=schema,
        temperature=0.0,
        system_instruction=system,
    )

    async def main() -> None:
        client = genai.Client(
            api_key=API_KEY,
            http_options=types.HttpOptions(base_url=base_url, api_version="v1beta"),
        )
        gate = asyncio.Semaphore(64)

        async def one(article: Any) -> None:
            async with gate:
                await client.aio.models.generate_content(
                    model="m", contents=build_user_text((article,)), config=config
                )

        await asyncio.gather(*(one(a) for a in articles))

    cpu0, wall0 = process_cpu_seconds(), time.monotonic()
    asyncio.run(main())
    cpu, wall = process_cpu_seconds() - cpu0, time.monotonic() - wall0
    return {
        "requests": float(n),
        "cpu_s": cpu,
        "wall_s": wall,
        "cpu_per_request_us": 1e6 * cpu / n,
        "requests_per_s": n / wall,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--waiting", type=int, default=10_000)
    parser.add_argument("--http-requests", type=int, default=2000)
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    quiet_logs()
    out: dict[str, Any] = {"null": measure_null(args.requests)}
    print(f"null provider: {out['null']['cpu_per_request_us']:.0f} us CPU/request", flush=True)
    out["waiting"] = measure_waiting(args.requests, args.waiting)
    print(
        f"{args.waiting} waiting: {out['waiting']['cpu_per_request_us']:.0f} us CPU/request",
        flush=True,
    )
    if not args.skip_http:
        out["http"] = measure_http(args.http_requests)
        http = out["http"]
        print(
            f"http: bare google-genai {http['bare']['cpu_per_request_us']:.0f} us, "
            f"through the runtime {http['runtime']['cpu_per_request_us']:.0f} us: "
            f"runtime share {http['runtime_share_us']:.0f} us/request",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
