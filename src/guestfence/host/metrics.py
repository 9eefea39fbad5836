"""Prometheus metrics of one FenceService, and the optional HTTP endpoint that serves them.

Each FenceService owns a private CollectorRegistry (tests run several services
in one process; the global registry would mix them). Two kinds of metrics:

- counted as requests finish: ``guestfence_requests_total{action,outcome,cluster}``
  and the latency histogram ``guestfence_request_duration_seconds{action}``;
- read at scrape time by collectors, from state the daemon keeps anyway: the
  service's event counter (drops by reason, authentication failures,
  duplicates), requests in flight, the backend's health and, when the backend
  tracks guest locations, its TrackingSnapshot. Nothing extra is done per
  datagram, so a flood of bad datagrams costs no more than before.

The HTTP endpoint is off unless ``metrics_port`` is set, and binds to loopback
unless ``metrics_address`` says otherwise: the numbers tell who fences whom.
"""

from __future__ import annotations

import logging
import platform
import threading
from collections import Counter as EventCounter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from guestfence import __version__
from guestfence.host.recent import ActiveRequests
from guestfence.virt.wire import Op

log = logging.getLogger("guestfenced")

NAMESPACE = "guestfence"
NO_CLUSTER = ""
"""The cluster label of a request no per-cluster key named (a single-key daemon)."""
# fence_xvm waits 30 s by default; off and reboot wait for the guest to be verified off
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)
# reasons always exported (also at 0), so that rate() works before the first drop
DROP_REASONS = ("auth", "malformed", "incomplete", "stale", "duplicate")
TRACKING_DECISIONS = ("owner", "migrating", "owner-gone", "ambiguous")
# the op byte is the requester's choice: codes nobody defined share one label value, so
# a guest cannot create 256 label sets (times outcomes, clusters and buckets)
KNOWN_ACTIONS = frozenset(op.name.lower() for op in Op)
OTHER_ACTION = "other"


class MetricsSource(Protocol):
    """What the collectors read from a FenceService."""

    metrics: EventCounter[str]
    active: ActiveRequests
    backend: Any


class ServiceMetrics:
    def __init__(self, source: MetricsSource) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            f"{NAMESPACE}_requests", "Requests answered or abandoned, by action, outcome and "
            "guest cluster (the key that verified the request)",
            ["action", "outcome", "cluster"], registry=self.registry)
        self.latency = Histogram(
            f"{NAMESPACE}_request_duration_seconds", "Time from a request's arrival to its "
            "answer (for off and reboot: until the guest is verified off)",
            ["action"], buckets=LATENCY_BUCKETS, registry=self.registry)
        Info(f"{NAMESPACE}_build", "guestfence version and Python version",
             registry=self.registry).info(
            {"version": __version__, "python": platform.python_version()})
        self.registry.register(_EventCollector(source))
        self.registry.register(_BackendCollector(source))

    def observe_request(self, action: str, outcome: str, cluster: str | None,
                        seconds: float) -> None:
        if action not in KNOWN_ACTIONS:
            action = OTHER_ACTION
        self.requests.labels(action, outcome, cluster or NO_CLUSTER).inc()
        self.latency.labels(action).observe(seconds)

    def exposition(self) -> bytes:
        """The text format a scrape returns."""
        return generate_latest(self.registry)


# ---------------------------------------------------------------- collectors


class _EventCollector(Collector):
    """Counters kept by the service and its listeners, exported as they are at scrape time."""

    def __init__(self, source: MetricsSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        # list() copies the dict in one step under the GIL: safe against the event loop
        events = dict(list(self.source.metrics.items()))
        dropped = CounterMetricFamily(
            f"{NAMESPACE}_dropped", "Datagrams and connections dropped before any answer, "
            "by reason", labels=["reason"])
        reasons = {k.removeprefix("dropped_"): v for k, v in events.items()
                   if k.startswith("dropped_")}
        reasons["duplicate"] = events.get("duplicates", 0)
        for reason in sorted(set(DROP_REASONS) | set(reasons)):
            dropped.add_metric([reason], reasons.get(reason, 0))
        yield dropped
        auth = CounterMetricFamily(
            f"{NAMESPACE}_auth_failures", "Requests that failed authentication: a signature "
            "no key verifies (request) or a failed challenge/response (challenge)",
            labels=["stage"])
        auth.add_metric(["request"], events.get("dropped_auth", 0))
        auth.add_metric(["challenge"], events.get("requests_auth-failed", 0))
        yield auth
        for name, event, text in (
            ("datagrams", "datagrams", "Multicast datagrams received"),
            ("not_mine", "not_mine", "Multicast requests for guests this host does not run "
             "(left to their owner)"),
            ("callback_failures", "callback_failed", "Multicast requests whose call-back "
             "connection failed"),
        ):
            yield CounterMetricFamily(f"{NAMESPACE}_{name}", text, value=events.get(event, 0))
        in_flight = GaugeMetricFamily(f"{NAMESPACE}_requests_in_flight",
                                      "Requests being served now, by listener",
                                      labels=["listener"])
        for listener, count in sorted(self.source.active.by_listener().items()):
            in_flight.add_metric([listener], count)
        yield in_flight


class _BackendCollector(Collector):
    """Backend health and, for a tracking backend, what its tracker knows now.

    Runs in the HTTP server's thread: the backend's queries are thread-safe
    (they are called from worker threads already)."""

    def __init__(self, source: MetricsSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        backend = self.source.backend
        healthy: Callable[[], bool] | None = getattr(backend, "healthy", None)
        if callable(healthy):
            try:
                up = 1.0 if healthy() else 0.0
            except Exception:  # a scrape must never break on a backend failure
                up = 0.0
            yield GaugeMetricFamily(f"{NAMESPACE}_backend_up",
                                    "1 when the hypervisor backend answers", value=up)
        yield from tracking_metrics(backend)


def tracking_metrics(backend: Any) -> Iterable[Metric]:
    snapshot_of: Callable[[], Any] | None = getattr(backend, "snapshot", None)
    if not callable(snapshot_of):
        return
    try:
        snap = snapshot_of()
    except Exception as e:  # reported, not raised: the other metrics stay scrapeable
        log.warning("metrics: the tracking snapshot failed: %s", e)
        return
    info = GaugeMetricFamily(f"{NAMESPACE}_tracking_info", "Tracking mode and this host's name",
                             labels=["mode", "me"])
    info.add_metric([str(snap.mode), str(snap.me)], 1)
    yield info
    yield GaugeMetricFamily(f"{NAMESPACE}_tracking_members",
                            "Hosts that can answer for their guests now", value=len(snap.members))
    guests = GaugeMetricFamily(f"{NAMESPACE}_tracking_guests",
                               "Known guests by the tracker's decision", labels=["decision"])
    decisions = EventCounter(g.decision for g in snap.guests)
    for decision in sorted(set(TRACKING_DECISIONS) | set(decisions)):
        guests.add_metric([decision], decisions.get(decision, 0))
    yield guests
    yield CounterMetricFamily(f"{NAMESPACE}_tracking_static_map_violations",
                              "Guests found on a host the static map does not put them on",
                              value=snap.violations)
    yield GaugeMetricFamily(f"{NAMESPACE}_tracking_departed_unfenced_hosts",
                            "Hosts that left the membership and are not confirmed fenced yet",
                            value=len(snap.departed_unfenced))


# ---------------------------------------------------------------- the endpoint


class MetricsEndpoint:
    """``GET /metrics`` over HTTP, served by prometheus-client in a daemon thread."""

    def __init__(self, metrics: ServiceMetrics, address: str, port: int) -> None:
        self.metrics = metrics
        self.address = address
        self.port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve; OSError (address in use, unknown address) goes to the caller."""
        self._server, self._thread = start_http_server(self.port, self.address,
                                                       registry=self.metrics.registry)
        self.port = self._server.server_port

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
