"""Metric labels an attacker can choose: found in a security review."""

from __future__ import annotations

from guestfence.host.server import Request
from tests.unit.day2_fakes import make_service
from tests.unit.test_metrics import samples, serve


def test_operation_codes_nobody_defined_share_one_action_label() -> None:
    """The op byte comes from the request (any guest on the serial path): 256 values must
    not become 256 label sets (times every outcome, cluster and histogram bucket)."""
    svc = make_service()
    serve(svc, *(Request("serial", "guest", op, "vm1", op) for op in range(9, 256)))
    found = samples(svc)
    actions = {dict(labels).get("action") for (name, labels) in found
               if name.startswith("guestfence_request")} - {None}
    assert actions == {"other"}, sorted(actions)[:5]
