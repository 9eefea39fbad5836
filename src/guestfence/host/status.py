"""What ``guestfence status`` shows, gathered inside the daemon for the admin socket.

Everything is plain JSON-able data. Backend questions (health, guests) are
blocking calls: they run in a worker thread with a time limit, so a hung
libvirt makes the status say so instead of hanging the admin socket.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from guestfence import __version__
from guestfence.host.config import (
    ListenerConfig,
    MulticastListenerConfig,
    SerialListenerConfig,
    TcpListenerConfig,
    VsockListenerConfig,
)

if TYPE_CHECKING:
    from guestfence.host.admin import Answerer
    from guestfence.host.server import FenceService

BACKEND_TIMEOUT = 5.0
DOMAIN_STATES = ("nostate", "running", "blocked", "paused", "shutdown", "shutoff", "crashed",
                 "pmsuspended")


@dataclass
class DaemonFacts:
    """What the daemon knows about itself from start-up."""

    config_path: str
    listeners: list[dict[str, Any]]
    admin_socket: str | None = None
    metrics_url: str | None = None
    log_format: str = "text"
    pid: int = field(default_factory=os.getpid)
    started: float = field(default_factory=time.time)
    started_monotonic: float = field(default_factory=time.monotonic)


def describe_listener(config: ListenerConfig) -> dict[str, Any]:
    if isinstance(config, MulticastListenerConfig):
        return {"type": "multicast", "address": config.address, "port": config.port,
                "interface": config.interface, "auth": config.auth, "hash": config.hash}
    if isinstance(config, TcpListenerConfig):
        return {"type": "tcp", "address": config.address, "port": config.port,
                "auth": config.auth, "hash": config.hash}
    if isinstance(config, VsockListenerConfig):
        return {"type": "vsock", "address": "any CID", "port": config.port,
                "auth": config.auth, "hash": config.hash}
    assert isinstance(config, SerialListenerConfig)
    return {"type": "serial", "address": config.path or config.uri or "all domains",
            "port": None, "mode": config.mode}


def state_name(state: int) -> str:
    return DOMAIN_STATES[state] if 0 <= state < len(DOMAIN_STATES) else f"state{state}"


def describe_keys(service: FenceService) -> list[dict[str, Any]]:
    """Keys by fingerprint and guest cluster, as the key ring holds them now: a key that
    was retired or failed closed at a reload is not shown (the key read at start-up may
    be either)."""
    return [{"fingerprint": k.fingerprint, "cluster": k.cluster, "file": k.path,
             "state": k.role} for k in service.keyring.keys]


def _backend_view(backend: Any) -> dict[str, Any]:
    """Blocking: the backend's health, guests and tracking state."""
    view: dict[str, Any] = {"name": getattr(backend, "name", type(backend).__name__),
                            "uris": list(getattr(backend, "uris", ())), "healthy": None,
                            "mode": "local", "tracking": None, "guests": []}
    healthy = getattr(backend, "healthy", None)
    if callable(healthy):
        view["healthy"] = bool(healthy())
    snapshot_of = getattr(backend, "snapshot", None)
    if callable(snapshot_of):
        snap = snapshot_of()
        view["mode"] = snap.mode
        view["tracking"] = {"mode": snap.mode, "me": snap.me, "members": list(snap.members),
                            "violations": snap.violations,
                            "departed_unfenced": list(snap.departed_unfenced)}
        view["guests"] = [{"name": g.name, "uuid": g.uuid, "host": g.host,
                           "state": state_name(g.state), "decision": g.decision}
                          for g in snap.guests]
        return view
    me = socket.gethostname()
    view["guests"] = [{"name": r.name, "uuid": r.uuid, "host": me,
                       "state": state_name(r.state), "decision": "local"}
                      for r in backend.host_list()]
    return view


def _backend_failed(backend: Any, error: str) -> dict[str, Any]:
    return {"name": getattr(backend, "name", "?"), "healthy": False, "guests": [],
            "error": error}


async def gather_status(service: FenceService, facts: DaemonFacts,
                        requests: int) -> dict[str, Any]:
    try:
        backend = await asyncio.wait_for(asyncio.to_thread(_backend_view, service.backend),
                                         BACKEND_TIMEOUT)
        backend["error"] = None
    except TimeoutError:
        backend = _backend_failed(service.backend,
                                  f"the backend did not answer in {BACKEND_TIMEOUT:.0f} s")
    except Exception as e:  # shown to the operator, never raised into the admin socket
        backend = _backend_failed(service.backend, f"{type(e).__name__}: {e}")
    guests = backend.pop("guests", [])
    active = service.active.by_listener()
    listeners = [dict(d, in_flight=active.get(str(d["type"]), 0)) for d in facts.listeners]
    return {
        "daemon": {"version": __version__, "pid": facts.pid, "started": facts.started,
                   "uptime_s": round(time.monotonic() - facts.started_monotonic, 1),
                   "config": facts.config_path, "admin_socket": facts.admin_socket,
                   "metrics": facts.metrics_url, "log_format": facts.log_format},
        "listeners": listeners,
        "backend": backend,
        "keys": describe_keys(service),
        "guests": guests,
        "requests": [r.to_json() for r in service.recent.last(requests)],
        "requests_total": service.recent.total,
        "counters": dict(sorted(service.metrics.items())),
    }


def status_answerer(service: FenceService, facts: DaemonFacts) -> Answerer:
    """The admin server's ``answer``: one checked request in, one reply out."""
    from guestfence.host.admin import PROTOCOL_VERSION

    async def answer(request: dict[str, Any]) -> dict[str, Any]:
        reply: dict[str, Any] = {"version": PROTOCOL_VERSION, "ok": True,
                                 "command": request["command"]}
        if request["command"] == "status":
            reply["status"] = await gather_status(service, facts, request.get("requests", 20))
        return reply

    return answer
