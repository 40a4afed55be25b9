"""What a bench run is made of: models and their quotas, tiers, time scale, modes.

Time is scaled uniformly. Gemini's quota "minute" is a rolling 60 s window;
the bench runs the server, tierbatch and every baseline with a window of
``window_s`` real seconds instead, and scales every other time constant of
every system by the same factor ``window_s / 60`` (latencies, the seed's
0.5 s stagger and 60 s timeout, the cookbook's 15 s pause, LiteLLM's
cooldown and its per-minute counters, tierbatch's margin and backoff). A
"quota-minute" below is one such window. Quotas are given per window, so
the request rates -- and so the CPU the machine spends on HTTP -- stay the
same whatever the window length.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

MINUTE_S = 60.0
API_KEY = "bench-key-0123456789"

PRO = "gemini-2.5-pro"
FLASH = "gemini-2.5-flash"
LITE = "gemini-2.5-flash-lite"

SYSTEMS = (
    "tierbatch-packed",
    "tierbatch-unpacked",
    "seed-taskmanager",
    "openai-parallel",
    "litellm-router",
)
WORKLOADS = ("steady", "daemon", "storm", "outage", "overclaimed", "bucket")


@dataclass(frozen=True, slots=True)
class ModelQuota:
    """Per-window limits (``rpm`` requests and ``tpm`` input tokens per
    quota-minute; ``rpd`` per day, 0 = unlimited) and the model's answer
    latency in unscaled seconds."""

    name: str
    rpm: int
    tpm: int
    rpd: int = 0
    latency_s: float = 2.0


@dataclass(frozen=True, slots=True)
class TierPlan:
    """A tier as the bench runs it: its chain, how many articles one packed
    request carries, its composer weight, its share of the articles, and the
    news domains its articles come from (their goodness puts them in it)."""

    name: str
    model: str
    fallback: str | None
    per_request: int
    mix: int
    share: float
    domains: tuple[str, ...]
    goodness: float

    def chain(self, global_fallback: str) -> tuple[str, ...]:
        models: list[str] = []
        for m in (self.model, self.fallback, global_fallback):
            if m is not None and m not in models:
                models.append(m)
        return tuple(models)


@dataclass(frozen=True, slots=True)
class BenchSettings:
    mode: str
    window_s: float
    horizon_windows: int
    backlog_windows: float
    arrival_windows: int
    models: tuple[ModelQuota, ...]
    tiers: tuple[TierPlan, ...]
    global_fallback: str
    systems: tuple[str, ...]
    workloads: tuple[str, ...]
    scale_backlogs: tuple[int, ...] = ()
    scale_process: int = 0
    seed: int = 20261127
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def time_scale(self) -> float:
        """Real seconds per unscaled second."""
        return self.window_s / MINUTE_S

    @property
    def horizon_s(self) -> float:
        return self.horizon_windows * self.window_s

    def real(self, unscaled_s: float) -> float:
        return unscaled_s * self.time_scale

    def model(self, name: str) -> ModelQuota:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    def chain(self, tier_index: int) -> tuple[str, ...]:
        return self.tiers[tier_index].chain(self.global_fallback)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchSettings:
        data = dict(data)
        data["models"] = tuple(ModelQuota(**m) for m in data["models"])
        data["tiers"] = tuple(
            TierPlan(**{**t, "domains": tuple(t["domains"])}) for t in data["tiers"]
        )
        for key in ("systems", "workloads", "scale_backlogs"):
            data[key] = tuple(data[key])
        return cls(**data)


# Quotas for a 6 s window; other windows scale them so request rates stay equal.
_BASE_WINDOW_S = 6.0
_BASE_MODELS = (
    ModelQuota(PRO, rpm=12, tpm=24_000, latency_s=8.0),
    ModelQuota(FLASH, rpm=30, tpm=60_000, latency_s=4.0),
    ModelQuota(LITE, rpm=60, tpm=150_000, latency_s=2.0),
)
TIERS = (
    TierPlan("hot", PRO, FLASH, 4, 4, 0.10, ("reuters.com", "apnews.com", "bbc.co.uk"), 0.9),
    TierPlan("warm", FLASH, LITE, 6, 6, 0.30, ("theguardian.com", "dw.com", "lemonde.fr"), 0.55),
    TierPlan(
        "cold",
        LITE,
        None,
        10,
        10,
        0.60,
        ("harbourtimes.co.uk", "northwindpolicy.blog", "marketpulse.substack.com"),
        0.2,
    ),
)


def models_for_window(window_s: float) -> tuple[ModelQuota, ...]:
    factor = window_s / _BASE_WINDOW_S
    return tuple(
        replace(m, rpm=max(1, round(m.rpm * factor)), tpm=max(1, round(m.tpm * factor)))
        for m in _BASE_MODELS
    )


def settings_for(mode: str, systems: tuple[str, ...] | None = None) -> BenchSettings:
    """``quick``: one workload, a few short windows (a smoke run, < 1 min);
    ``medium``: every workload with 3 s windows (~12 min); ``full``: every
    workload for 12 windows of 6 s plus the SQLite scale runs (~30 min);
    ``real``: the steady workload at Gemini's own 60 s window, unscaled (so
    margins, latencies and timeouts are the real ones), for 11 windows per
    system -- to show the scaled results hold (~11 min per system)."""
    if mode == "quick":
        window, horizon, backlog, arrivals = 1.5, 4, 3.0, 3
        workloads: tuple[str, ...] = ("steady",)
        scale: tuple[int, ...] = (2_000, 20_000)
        scale_process = 400
    elif mode == "tiny":  # the in-process smoke test's variant
        window, horizon, backlog, arrivals = 1.0, 3, 1.5, 2
        workloads = ("steady",)
        scale = (500,)
        scale_process = 100
    elif mode == "medium":
        window, horizon, backlog, arrivals = 3.0, 10, 8.0, 6
        workloads = WORKLOADS
        scale = (10_000, 100_000)
        scale_process = 2_000
    elif mode == "real":  # unscaled: Gemini's own 60 s window, ten of them
        window, horizon, backlog, arrivals = 60.0, 11, 8.0, 6
        workloads = ("steady",)
        scale = ()
        scale_process = 0
    elif mode == "full":
        window, horizon, backlog, arrivals = 6.0, 12, 9.0, 8
        workloads = WORKLOADS
        scale = (10_000, 100_000, 1_000_000)
        scale_process = 5_000
    else:
        raise ValueError(f"unknown mode {mode!r}; expected quick, medium, full or real")
    return BenchSettings(
        mode=mode,
        window_s=window,
        horizon_windows=horizon,
        backlog_windows=backlog,
        arrival_windows=arrivals,
        models=models_for_window(window),
        tiers=TIERS,
        global_fallback=LITE,
        systems=systems or SYSTEMS,
        workloads=workloads,
        scale_backlogs=scale,
        scale_process=scale_process,
    )
