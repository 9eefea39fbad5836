"""fence_vmware_soap's reading of a VM's state (no vCenter needed: the session is faked)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from guestfence.agents.vmware import VSphere


def device(props: dict[str, Any]) -> VSphere:
    """A VSphere without a connection: the VM lookup and the property read are faked."""
    dev = object.__new__(VSphere)
    dev.options = SimpleNamespace(ipaddr="vcenter.example")  # type: ignore[assignment]
    dev.port = 443
    dev._vms, dev._off_sent = {}, set()
    dev.vm = lambda plug: object()  # type: ignore[method-assign]
    dev._read = lambda obj, paths: props  # type: ignore[method-assign]
    return dev


@pytest.mark.parametrize("connection", ["disconnected", "orphaned", "inaccessible", "invalid"])
def test_a_vm_vcenter_is_not_connected_to_has_no_known_state(connection: str) -> None:
    """Review finding: vCenter keeps the last powerState of such a VM, possibly stale."""
    dev = device({"runtime.powerState": "poweredOff", "runtime.connectionState": connection})
    assert dev.status("vm1") == "unknown"


@pytest.mark.parametrize(("power", "state"), [("poweredOn", "on"), ("poweredOff", "off"),
                                              ("suspended", "off")])
def test_connected_vm_states(power: str, state: str) -> None:
    dev = device({"runtime.powerState": power, "runtime.connectionState": "connected"})
    assert dev.status("vm1") == state


def test_a_server_that_does_not_report_the_connection_state() -> None:
    assert device({"runtime.powerState": "poweredOn"}).status("vm1") == "on"
