"""Prometheus metrics: names, labels and values, read back with prometheus-client's own parser."""

from __future__ import annotations

import asyncio
import platform
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from guestfence import __version__
from guestfence.host.metrics import MetricsEndpoint
from guestfence.host.server import FenceService, Request
from guestfence.virt.wire import Op
from tests.unit.day2_fakes import FakeBackend, Sink, TrackingBackend, make_service

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(svc: FenceService) -> Samples:
    text = svc.telemetry.exposition().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def serve(svc: FenceService, *requests: Request) -> None:
    async def main() -> None:
        for req in requests:
            await svc.serve(req, Sink(), None, authenticate=False)

    asyncio.run(main())


def test_requests_are_counted_by_action_outcome_and_cluster() -> None:
    svc = make_service()
    clustered = Request("tcp", "10.0.0.1", Op.OFF, "vm1", 2)
    clustered.cluster = "web"
    serve(svc, Request("tcp", "10.0.0.1", Op.STATUS, "vm1", 1), clustered,
          Request("tcp", "10.0.0.1", Op.STATUS, "vm2", 3))
    found = samples(svc)
    assert value(found, "guestfence_requests_total", action="status", outcome="success",
                 cluster="") == 2
    assert value(found, "guestfence_requests_total", action="off", outcome="success",
                 cluster="web") == 1
    assert value(found, "guestfence_request_duration_seconds_count", action="status") == 2
    assert value(found, "guestfence_request_duration_seconds_bucket", action="off",
                 le="+Inf") == 1
    assert value(found, "guestfence_build_info", version=__version__,
                 python=platform.python_version()) == 1


def test_drops_and_authentication_failures_by_reason() -> None:
    svc = make_service()
    svc.drop("auth", "10.0.0.9", "no key verifies the signature")
    svc.drop("auth", "10.0.0.9")
    svc.drop("malformed", "10.0.0.9")
    svc.drop("flood", "10.0.0.9")  # a reason a listener may add later is exported too
    svc.metrics["duplicates"] += 4
    svc.metrics["requests_auth-failed"] += 1
    found = samples(svc)
    assert value(found, "guestfence_dropped_total", reason="auth") == 2
    assert value(found, "guestfence_dropped_total", reason="malformed") == 1
    assert value(found, "guestfence_dropped_total", reason="flood") == 1
    assert value(found, "guestfence_dropped_total", reason="duplicate") == 4
    assert value(found, "guestfence_dropped_total", reason="stale") == 0
    assert value(found, "guestfence_auth_failures_total", stage="request") == 2
    assert value(found, "guestfence_auth_failures_total", stage="challenge") == 1


def test_every_service_has_its_own_registry() -> None:
    first, second = make_service(), make_service()
    serve(first, Request("tcp", "g", Op.STATUS, "vm1", 1))
    assert ("guestfence_requests_total", (("action", "status"), ("cluster", ""),
                                          ("outcome", "success"))) in samples(first)
    assert not any(name == "guestfence_requests_total" for name, _ in samples(second))


def test_backend_health_is_exported() -> None:
    assert value(samples(make_service(FakeBackend(healthy=False))), "guestfence_backend_up") == 0
    assert value(samples(make_service()), "guestfence_backend_up") == 1


def test_tracking_state_comes_from_the_backend_snapshot() -> None:
    found = samples(make_service(TrackingBackend()))
    assert value(found, "guestfence_tracking_members") == 2
    assert value(found, "guestfence_tracking_guests", decision="owner") == 2
    assert value(found, "guestfence_tracking_guests", decision="owner-gone") == 1
    assert value(found, "guestfence_tracking_guests", decision="ambiguous") == 0
    assert value(found, "guestfence_tracking_static_map_violations_total") == 2
    assert value(found, "guestfence_tracking_departed_unfenced_hosts") == 1
    assert value(found, "guestfence_tracking_info", mode="cpg", me="hostA") == 1


def test_no_tracking_metrics_without_a_tracking_backend() -> None:
    assert not any(name.startswith("guestfence_tracking") for name, _ in
                   samples(make_service()))


def test_the_endpoint_serves_the_registry_over_http() -> None:
    svc = make_service()
    serve(svc, Request("tcp", "g", Op.STATUS, "vm1", 1))
    endpoint = MetricsEndpoint(svc.telemetry, "127.0.0.1", 0)
    endpoint.start()
    try:
        assert endpoint.port > 0
        assert endpoint.url == f"http://127.0.0.1:{endpoint.port}/metrics"
        with urllib.request.urlopen(endpoint.url, timeout=10) as response:
            text = response.read().decode()
    finally:
        endpoint.stop()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"guestfence_requests", "guestfence_request_duration_seconds",
            "guestfence_dropped", "guestfence_auth_failures", "guestfence_build_info"} <= names
