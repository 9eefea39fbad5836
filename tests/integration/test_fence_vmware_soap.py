"""fence_vmware_soap as Pacemaker runs it (a process, key=value on stdin) against vcsim.

The simulator is govmomi's (tests/vcsim/main.go, built by guestfence.lab.vcsim):
12 VMs in /DC0/vm, all powered on, plus /DC0/vm/dup/DC0_H0_VM0, a second VM
named DC0_H0_VM0. Each test uses its own VMs, so their order does not matter.
"""

from __future__ import annotations

import io
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

import pytest

from guestfence.agent.power import run_agent
from guestfence.agents.vmware import vim  # pyVmomi's vim, typed Any
from guestfence.lab.ourdaemon import venv_tool
from guestfence.lab.vcsim import VcSim, missing_tools

pytestmark = pytest.mark.integration
DUP = "DC0_H0_VM0"
AGENT_TIMEOUT = 60


@pytest.fixture(scope="module")
def sim() -> Iterator[VcSim]:
    problems = missing_tools()
    if problems:
        pytest.fail("fence_vmware_soap tests need: " + "; ".join(problems), pytrace=False)
    with VcSim(6, duplicate=DUP) as s:
        assert s.vm_count == 13
        yield s


def run(stdin: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    done = subprocess.run([venv_tool("fence_vmware_soap")], input=stdin, text=True,
                          capture_output=True, timeout=AGENT_TIMEOUT, env=env, check=False)
    return done.returncode, done.stdout, done.stderr


def agent(sim: VcSim, action: str, plug: str | None = None, **extra: str) -> tuple[int, str, str]:
    values = {"action": action, **({"plug": plug} if plug is not None else {}), **extra}
    return run(sim.agent_stdin(**values))


def test_list_prints_name_and_bios_uuid(sim: VcSim) -> None:
    vms = sim.vms()
    code, out, err = agent(sim, "list")
    assert code == 0, err
    lines = set(out.splitlines())
    for vm in vms:
        if vm.name == DUP:  # ambiguous: listed by UUID only, with a warning
            assert f"{vm.uuid}," in lines
        else:
            assert f"{vm.name},{vm.uuid}" in lines
    assert len(lines) == len(vms) == 13
    assert f"'{DUP}' is used by 2 VMs" in err
    code, out, err = agent(sim, "list-status")
    assert code == 0, err
    rows = {line.split(",")[0]: line.split(",")[2] for line in out.splitlines()}
    dup_off = next(v for v in vms if v.path == f"/DC0/vm/dup/{DUP}")
    assert rows[dup_off.uuid] == "OFF"
    assert rows["DC0_C0_RP0_VM5"] == "ON"
    assert agent(sim, "monitor")[:2] == (0, "")


@pytest.mark.parametrize("vm_name, form", [("DC0_H0_VM1", "name"), ("DC0_H0_VM2", "uuid"),
                                           ("DC0_H0_VM3", "UUID"), ("DC0_H0_VM4", "path")])
def test_status_off_on_reboot(sim: VcSim, vm_name: str, form: str) -> None:
    vm = sim.vm(vm_name)
    plug = {"name": vm.name, "uuid": vm.uuid, "UUID": vm.uuid.upper(), "path": vm.path}[form]
    assert agent(sim, "status", plug)[:2] == (0, "Status: ON\n")
    code, out, err = agent(sim, "off", plug)
    assert (code, out) == (0, "Success: Powered OFF\n"), err
    assert sim.power_state(vm.uuid) == "poweredOff"
    assert agent(sim, "status", plug)[:2] == (2, "Status: OFF\n")
    # force_off: a second off checks poweredOff and does nothing, but says Powered OFF
    assert agent(sim, "off", plug)[:2] == (0, "Success: Powered OFF\n")
    code, out, err = agent(sim, "on", plug)
    assert (code, out) == (0, "Success: Powered ON\n"), err
    assert sim.power_state(vm.uuid) == "poweredOn"
    code, out, err = agent(sim, "reboot", plug)
    assert (code, out) == (0, "Success: Rebooted\n"), err
    assert sim.power_state(vm.uuid) == "poweredOn"


def test_command_line_like_a_human(sim: VcSim) -> None:
    done = subprocess.run([venv_tool("fence_vmware_soap"), "-a", sim.host, "-u", str(sim.port),
                           "-l", sim.username, "-p", sim.password, "--ssl-insecure",
                           "-o", "status", "-n", "DC0_C0_RP0_VM0"],
                          capture_output=True, text=True, timeout=AGENT_TIMEOUT, check=False)
    assert (done.returncode, done.stdout) == (0, "Status: ON\n"), done.stderr


def test_suspended_counts_as_off_but_off_really_powers_it_off(sim: VcSim) -> None:
    vm = sim.vm("DC0_C0_RP0_VM1")
    sim.set_power(vm.uuid, "suspended")
    assert agent(sim, "status", vm.name)[:2] == (2, "Status: OFF\n")
    # a suspended VM would resume with its memory: off discards the saved state
    code, out, err = agent(sim, "off", vm.name, verbose="1")
    assert (code, out) == (0, "Success: Powered OFF\n"), err
    assert "is suspended: powering it off" in err
    assert sim.power_state(vm.uuid) == "poweredOff"
    assert agent(sim, "off", vm.name)[:2] == (0, "Success: Powered OFF\n")  # no-op, no error
    assert sim.power_state(vm.uuid) == "poweredOff"
    code, out, err = agent(sim, "on", vm.name)
    assert (code, out) == (0, "Success: Powered ON\n"), err
    assert sim.power_state(vm.uuid) == "poweredOn"


@pytest.mark.parametrize("form", ["name", "uuid"])
def test_reboot_of_suspended_vm_powers_off_then_on(sim: VcSim, form: str) -> None:
    vm = sim.vm({"name": "DC0_C0_RP0_VM2", "uuid": "DC0_C0_RP0_VM3"}[form])
    sim.set_power(vm.uuid, "suspended")
    code, out, err = agent(sim, "reboot", vm.name if form == "name" else vm.uuid, verbose="1")
    assert (code, out) == (0, "Success: Rebooted\n"), err
    # powered off (saved state discarded), not merely resumed by the power on
    assert "is suspended: powering it off" in err
    assert "Timed out" not in err
    assert sim.power_state(vm.uuid) == "poweredOn"


def test_reboot_of_suspended_vm_passes_through_powered_off(sim: VcSim) -> None:
    """The state sequence seen by the simulator: suspended, then poweredOff, then on."""
    from guestfence.agents import vmware

    vm = sim.vm("DC0_C0_RP0_VM4")
    sim.set_power(vm.uuid, "suspended")
    seen: list[tuple[str, str]] = []
    original = vmware.VSphere.set_power

    def spy(self: vmware.VSphere, plug: str, state: Literal["on", "off"]) -> None:
        before = sim.power_state(vm.uuid)
        original(self, plug, state)
        seen.append((state, f"{before}->{sim.power_state(vm.uuid)}"))

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vmware.VSphere, "set_power", spy)
        code = run_agent(vmware.SPEC, vmware.make_device, argv=[],
                         stdin=io.StringIO(sim.agent_stdin(action="reboot", plug=vm.name)),
                         stdout=out, stderr=err, environ={})
    assert (code, out.getvalue()) == (0, "Success: Rebooted\n"), err.getvalue()
    assert seen == [("off", "suspended->poweredOff"), ("on", "poweredOff->poweredOn")]


class _FakeIndex:
    """SearchIndex whose FindAllByUuid answers ``vms`` for the BIOS UUID search."""

    def __init__(self, real: Any, bios: list[Any], instance: list[Any]) -> None:
        self.real, self.bios, self.instance = real, bios, instance

    def FindAllByUuid(self, uuid: str, vmSearch: bool, instanceUuid: bool) -> list[Any]:
        assert vmSearch is True
        return self.instance if instanceUuid else self.bios

    def FindByUuid(self, **kw: Any) -> Any:
        raise AssertionError("FindByUuid used although FindAllByUuid exists")


class _Content:
    """The real ServiceContent, with another searchIndex."""

    def __init__(self, real: Any, index: Any) -> None:
        self._real, self.searchIndex = real, index

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _run_with_index(sim: VcSim, action: str, plug: str,
                    pick: Callable[[Any], tuple[list[Any], list[Any]]]) -> tuple[int, str, str]:
    """run_agent in process, its SearchIndex.FindAllByUuid faked (vcsim 0.24 lacks it)."""
    from guestfence.agents import vmware

    def make(options: Any) -> vmware.VSphere:
        device = vmware.VSphere(options)
        bios, instance = pick(device.content)
        device.content = _Content(device.content,
                                  _FakeIndex(device.content.searchIndex, bios, instance))
        return device

    out, err = io.StringIO(), io.StringIO()
    code = run_agent(vmware.SPEC, make, argv=[],
                     stdin=io.StringIO(sim.agent_stdin(action=action, plug=plug)),
                     stdout=out, stderr=err, environ={})
    return code, out.getvalue(), err.getvalue()


def _sim_vm(content: Any, path: str) -> Any:
    return content.searchIndex.FindByInventoryPath(inventoryPath=path.lstrip("/"))


def test_uuid_shared_by_two_vms_is_refused_naming_them(sim: VcSim) -> None:
    a, b = sim.vm("DC0_C0_RP0_VM0"), sim.vm(f"/DC0/vm/dup/{DUP}")
    before = (sim.power_state(a.uuid), sim.power_state(b.uuid))
    code, out, err = _run_with_index(
        sim, "off", a.uuid, lambda c: ([_sim_vm(c, a.path), _sim_vm(c, b.path)], []))
    assert code == 1 and out == "", err
    assert f"2 VMs have the UUID '{a.uuid}'" in err
    assert f"'{a.name} at {a.path}'" in err and f"'{b.name} at {b.path}'" in err
    assert (sim.power_state(a.uuid), sim.power_state(b.uuid)) == before
    # a BIOS UUID of one VM that is the instance UUID of another is as ambiguous
    code, out, err = _run_with_index(
        sim, "status", a.uuid, lambda c: ([_sim_vm(c, a.path)], [_sim_vm(c, b.path)]))
    assert code == 1 and "2 VMs have the UUID" in err
    # the same VM found twice is one VM
    code, out, err = _run_with_index(
        sim, "status", a.uuid, lambda c: ([_sim_vm(c, a.path)], [_sim_vm(c, a.path)]))
    assert (code, out) == (0, "Status: ON\n"), err
    assert _run_with_index(sim, "status", a.uuid, lambda c: ([], []))[0] == 1


def test_list_with_a_shared_bios_uuid_lists_by_name(sim: VcSim) -> None:
    a, b = sim.vm("DC0_H0_VM1"), sim.vm("DC0_H0_VM2")
    with sim.session() as content:
        vm_b = _sim_vm(content, b.path)
        sim._wait(vm_b.ReconfigVM_Task(vim.vm.ConfigSpec(uuid=a.uuid)))
    try:
        code, out, err = agent(sim, "list")
        assert code == 0, err
        lines = out.splitlines()
        assert f"{a.name}," in lines and f"{b.name}," in lines  # both, by name only
        assert not any(line.endswith(a.uuid) for line in lines)
        assert f"BIOS UUID {a.uuid} is used by 2 VMs" in err
    finally:
        with sim.session() as content:
            sim._wait(_sim_vm(content, b.path).ReconfigVM_Task(vim.vm.ConfigSpec(uuid=b.uuid)))
    assert sim.vm(b.name).uuid == b.uuid


def test_duplicate_name_is_refused_naming_the_uuids(sim: VcSim) -> None:
    twins = [v for v in sim.vms() if v.name == DUP]
    assert len(twins) == 2
    code, out, err = agent(sim, "off", DUP)
    assert code == 1 and out == ""
    assert f"2 VMs are named '{DUP}'" in err and "use the UUID" in err
    assert all(v.uuid in err for v in twins)
    assert {sim.power_state(v.uuid) for v in twins} == {"poweredOn", "poweredOff"}
    # each twin stays reachable by UUID and by inventory path
    on_twin = next(v for v in twins if v.power_state == "poweredOn")
    off_twin = next(v for v in twins if v.power_state == "poweredOff")
    assert agent(sim, "status", on_twin.uuid)[:2] == (0, "Status: ON\n")
    assert agent(sim, "status", off_twin.path)[:2] == (2, "Status: OFF\n")


def test_wrong_password_is_a_login_error(sim: VcSim) -> None:
    code, out, err = agent(sim, "status", "DC0_H0_VM5", password="wrong")
    assert code == 1 and out == ""
    assert "login" in err and "InvalidLogin" in err and "wrong user name or password" in err


@pytest.mark.parametrize("plug", ["no-such-vm", "/DC0/vm/no-such-vm",
                                  "00000000-1111-2222-3333-444444444444"])
def test_missing_vm_fails_with_its_name(sim: VcSim, plug: str) -> None:
    code, out, err = agent(sim, "off", plug)
    assert code == 1 and out == ""
    assert f"'{plug}'" in err and "Unable to obtain correct plug status" in err


def test_path_to_something_else_than_a_vm(sim: VcSim) -> None:
    code, _, err = agent(sim, "status", "/DC0/vm")
    assert code == 1 and "not a virtual machine" in err


def test_missing_privilege_is_reported_as_such() -> None:
    with VcSim(1, deny_power=True) as denied:
        code, out, err = run(denied.agent_stdin(action="off", plug="DC0_H0_VM0"))
        assert code == 1 and out == ""
        assert "has no permission" in err and "NoPermission" in err
        assert "VirtualMachine.Interact.PowerOff" in err
        assert denied.power_state("DC0_H0_VM0") == "poweredOn"
        assert run(denied.agent_stdin(action="status", plug="DC0_H0_VM0"))[:2] == (
            0, "Status: ON\n")


def test_tls_is_verified_unless_ssl_insecure(sim: VcSim) -> None:
    stdin = sim.agent_stdin(action="status", plug="DC0_H0_VM5").replace("ssl_insecure=1\n", "")
    for extra in ("", "ssl=1\n", "ssl_secure=1\n"):
        code, out, err = run(stdin + extra)
        assert code == 1 and out == ""
        assert "certificate verification failed" in err and "self-signed" in err
        assert "ssl_insecure=1" in err
    code, out, err = run(stdin + "ssl_insecure=1\n")
    assert (code, out) == (0, "Status: ON\n"), err
    # verified for real: the same certificate, trusted, passes without ssl_insecure
    code, out, err = run(stdin, env=dict(os.environ, SSL_CERT_FILE=sim.cert_file))
    assert (code, out) == (0, "Status: ON\n"), err


def test_plain_http_simulator() -> None:
    with VcSim(1, tls=False, auth=None) as plain:
        vm = plain.vms()[0]
        code, out, err = run(plain.agent_stdin(action="off", plug=vm.uuid))
        assert (code, out) == (0, "Success: Powered OFF\n"), err
        assert plain.power_state(vm.uuid) == "poweredOff"


def test_unreachable_device_fails_fast() -> None:
    with VcSim(1) as gone:
        stdin = gone.agent_stdin(action="status", plug="DC0_H0_VM0")
    started = time.monotonic()
    code, out, err = run(stdin)
    assert code == 1 and out == "" and "Unable to connect" in err
    assert time.monotonic() - started < 10


@pytest.fixture
def slow_sim() -> Iterator[VcSim]:
    """Power tasks take 3 s to be answered: room to break the simulator mid-action."""
    with VcSim(1, method_delay={"PowerOffVM_Task": 3000}) as s:
        yield s


def start_agent(stdin: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([venv_tool("fence_vmware_soap")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None
    proc.stdin.write(stdin)
    proc.stdin.close()
    proc.stdin = None  # so that communicate() does not flush it
    return proc


def test_simulator_killed_mid_action(slow_sim: VcSim) -> None:
    proc = start_agent(slow_sim.agent_stdin(action="off", plug="DC0_H0_VM0"))
    time.sleep(1.0)  # the agent now waits for PowerOffVM_Task's answer
    slow_sim.stop()
    started = time.monotonic()
    out, err = proc.communicate(timeout=AGENT_TIMEOUT)
    assert proc.returncode == 1 and out == "", err
    assert "Connection lost" in err or "Unable to connect" in err
    assert time.monotonic() - started < 5


def test_simulator_hung_mid_action_is_bounded(slow_sim: VcSim) -> None:
    stdin = slow_sim.agent_stdin(action="off", plug="DC0_H0_VM0", login_timeout="2")
    started = time.monotonic()
    proc = start_agent(stdin)
    time.sleep(1.0)
    slow_sim.freeze()
    out, err = proc.communicate(timeout=AGENT_TIMEOUT)
    elapsed = time.monotonic() - started
    assert proc.returncode == 1 and out == "", err
    assert "timed out" in err
    assert elapsed < 2 + 1 + 3 + 3  # request timeout, + logout's own short bound, + slack


def test_sigterm_while_hung_exits_1_promptly(slow_sim: VcSim) -> None:
    proc = start_agent(slow_sim.agent_stdin(action="off", plug="DC0_H0_VM0",
                                            login_timeout="30"))
    time.sleep(1.0)
    slow_sim.freeze()
    proc.terminate()
    started = time.monotonic()
    out, err = proc.communicate(timeout=AGENT_TIMEOUT)
    assert proc.returncode == 1 and out == "", err
    assert "SIGTERM" in err
    assert time.monotonic() - started < 5
