"""Joining a Ray cluster and finding (or creating) the project's registry.

``connect("auto")`` joins the cluster this node's ``ray start`` joined;
``connect("10.0.0.1:6379")`` joins that head. Every daemon then calls
``registry_for(project, config)``: the first creates the named, detached
registry actor, every other one (on any node) gets the same actor, so one
Gemini project has one quota owner however many daemons spend it.
"""

from __future__ import annotations

import hashlib
import os
import socket
from typing import Any

import structlog

from tierbatch.actors.clock import Clock
from tierbatch.adapters.ray.registry_actor import SNAPSHOT_INTERVAL_S, RegistryActor
from tierbatch.adapters.ray.remote_registry import RemoteRegistryRef
from tierbatch.adapters.ray.wire import NAMESPACE, actor_name, config_fingerprint
from tierbatch.adapters.storage.quota_lease import RayRegistryAddress
from tierbatch.policies.config import Config
from tierbatch.policies.errors import TierbatchError

_log = structlog.get_logger(__name__)

# Waiting acquire calls are pending coroutines of the registry actor: allow many.
MAX_CONCURRENCY = 100_000


class RayUnavailableError(TierbatchError):
    """Ray is not installed, or the cluster cannot be joined."""


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailableError("--ray needs Ray: pip install 'tierbatch[ray]'") from exc
    return ray


def connect(address: str) -> None:
    """Join the cluster at ``address`` ("auto": the one this node runs).
    Raises ``RayUnavailableError`` naming the address when that fails."""
    ray = _ray()
    if address != "auto":
        _probe(address)
    if ray.is_initialized():
        return
    try:
        ray.init(
            address=address,
            namespace=NAMESPACE,
            logging_level="WARNING",
            log_to_driver=False,
            configure_logging=False,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayUnavailableError(f"--ray {address}: cannot join the Ray cluster: {exc}") from exc


def _probe(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a head that is not there: ``ray.init`` would retry for
    minutes before it gives up on an address nobody listens on."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise RayUnavailableError(f"--ray {address}: expected 'auto' or HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise RayUnavailableError(
            f"--ray {address}: no Ray head answers there ({exc.strerror or exc})"
        ) from None


def project_name(api_key: str | None = None) -> str:
    """The registry's name: one per Gemini project. An explicit name wins;
    otherwise a short fingerprint of the API key (keys are per project; the
    key itself never leaves this process), else "default"."""
    explicit = os.environ.get("TIERBATCH_RAY_PROJECT", "").strip()
    if explicit:
        return explicit
    if api_key:
        return "key-" + hashlib.sha256(api_key.encode()).hexdigest()[:12]
    return "default"


def registry_for(
    project: str,
    config: Config,
    clock: Clock,
    *,
    snapshot_path: str | None = None,
    client_timeout_s: float = 15.0,
    heartbeat_s: float = 2.0,
    snapshot_interval_s: float = SNAPSHOT_INTERVAL_S,
) -> RemoteRegistryRef:
    """A handle on the project's registry actor, created if it does not
    exist yet (detached: it outlives this daemon; restarted by Ray, with its
    state, after its process or node died). ``config``, ``snapshot_path``
    and ``snapshot_interval_s`` (how often, at most, it saves its state)
    count only for the daemon that creates it."""
    ray = _ray()
    remote = ray.remote(
        max_restarts=-1,
        max_task_retries=-1,
        max_concurrency=MAX_CONCURRENCY,
        num_cpus=0,
    )(RegistryActor)
    actor = remote.options(
        name=actor_name(project),
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
    ).remote(
        project,
        config,
        snapshot_path,
        client_timeout_s=client_timeout_s,
        snapshot_interval_s=snapshot_interval_s,
    )
    where = RayRegistryAddress(_cluster_address(ray), NAMESPACE, actor_name(project))
    # A finished grant matters to a restarted actor for a window (and its
    # margin) after it, and as long again as the actor's last save may lag.
    keep_s = config.quota.window_s + config.quota.margin_s + 2 * snapshot_interval_s
    handle = RemoteRegistryRef(
        actor, clock, heartbeat_s=heartbeat_s, where=str(where), keep_s=keep_s
    )
    theirs = ray.get(actor.info.remote())["config"]
    if theirs != config_fingerprint(config):
        _log.warning(
            "this daemon's config (models, quota, tiers) differs from the one the shared "
            "registry was created with; the registry's limits and plan apply",
            project=project,
            ours=config_fingerprint(config),
            registry=theirs,
        )
    _log.info(
        "registry actor found",
        project=project,
        quota_state=handle.restored_from,
        client=handle.client,
    )
    return handle


def _cluster_address(ray: Any) -> str:
    """The cluster this process joined, as HOST:PORT of its head (its GCS)."""
    try:
        return str(ray.get_runtime_context().gcs_address)
    except AttributeError:  # a Ray without it
        return "unknown"


def kill_registry(project: str, *, no_restart: bool = True) -> bool:
    """Kill the project's registry actor (``no_restart`` False: Ray restarts
    it, which restores its saved state). Returns False when there is none."""
    ray = _ray()
    try:
        actor = ray.get_actor(actor_name(project), namespace=NAMESPACE)
    except ValueError:
        return False
    ray.kill(actor, no_restart=no_restart)
    return True


__all__ = ["RayUnavailableError", "connect", "kill_registry", "project_name", "registry_for"]
