"""Per-cluster access decisions: found in a security review."""

from __future__ import annotations

import asyncio

from guestfence.host.server import Request
from guestfence.virt.wire import Op, Result
from tests.unit.test_cluster_keys import DB1, WEB1, Backend, Info, Sink, clustered_service


class RenamingBackend(Backend):
    """Cluster A's web1 is renamed away, and B's db1 renamed to web1, right after the
    cluster check looked the name up (an operator at work, or two same-named guests on
    two hosts changing state: the name then names another domain)."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0

    def lookup(self, target: str) -> Info | None:
        self.lookups += 1
        if self.lookups > 1 and target == "web1":
            return Info("web1", DB1)
        return super().lookup(target)

    def execute(self, op: int, target: str) -> int:
        if target == "web1":  # by then the name is B's guest
            target = DB1
        return super().execute(op, target)


def test_the_guest_checked_is_the_guest_acted_on() -> None:
    backend = RenamingBackend()
    svc = clustered_service(backend)
    sink = Sink()
    req = Request("multicast", "10.0.0.5", Op.OFF, "web1", 1, cluster="A")
    asyncio.run(svc.serve(req, sink, None, authenticate=False))
    assert sink.sent == bytes([Result.SUCCESS])
    assert backend.executed == [(Op.OFF, WEB1)], "cluster A's request acted on B's guest"


def test_tag_bindings_on_a_backend_that_cannot_read_tags_are_reported(
        caplog: object) -> None:
    """The tracked backends (static, cpg, multi-libvirt) read no domain metadata: a cluster
    bound by tag may then fence nothing, and the log must say why, once."""
    import logging

    import pytest

    class NoTags(Backend):
        cluster_tag = None  # type: ignore[assignment]
        cluster_tags = None  # type: ignore[assignment]

    assert isinstance(caplog, pytest.LogCaptureFixture)
    backend = NoTags()
    svc = clustered_service(backend)
    with caplog.at_level(logging.WARNING, logger="guestfenced"):
        for seqno in (1, 2):
            sink = Sink()
            req = Request("multicast", "10.0.0.5", Op.OFF, "tagged", seqno, cluster="A")
            asyncio.run(svc.serve(req, sink, None, authenticate=False))
            assert sink.sent == bytes([Result.PERM])
    warnings = [r.getMessage() for r in caplog.records if "cannot read" in r.getMessage()]
    assert len(warnings) == 1 and "tag" in warnings[0], warnings
