"""fence_scsi as Pacemaker runs it, against the SPC-4 fake target (no SCSI devices here)."""

from __future__ import annotations

import io
import stat
from pathlib import Path

import pytest
from lxml import etree

from guestfence.agent.power import run_agent
from guestfence.agents import scsi as agent
from guestfence.scsi.keys import derive_key
from guestfence.scsi.transport import Borrowed, Direction, ScsiResult, Status

from .fake_pr_target import FakePrTarget

RNG = Path("/usr/share/cluster/relaxng/metadata.rng")
NODES = ("node1", "node2", "node3")
WRITE10 = bytes([0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0])


class Node:
    """One node's own nexus to each LUN (its SCSI path), kept open across agent runs."""

    def __init__(self, targets: dict[str, FakePrTarget], name: str) -> None:
        self.paths = {dev: t.connect(f"iqn.2026-11.lab:{name}") for dev, t in targets.items()}

    def write(self, dev: str) -> int:
        for _ in range(3):  # an initiator retries after a unit attention
            status = self.paths[dev].execute(WRITE10, Direction.TO_DEVICE, bytes(512)).status
            if status != Status.CHECK_CONDITION:
                return status
        return status


class Lab:
    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch, **target_options: bool) -> None:
        self.targets = {f"fake:lun{i}": FakePrTarget(name=f"lun{i}", **target_options)
                        for i in range(2)}
        self.nodes = {n: Node(self.targets, n) for n in NODES}
        self.tmp = tmp
        self.current = "node1"
        cmap = tmp / "corosync-cmapctl"
        cmap.write_text("#!/bin/sh\ncase \"$1\" in\n"
                        "totem.cluster_name) echo 'totem.cluster_name (str) = mycluster';;\n"
                        "nodelist) " + "".join(
                            f"echo 'nodelist.node.{i}.name (str) = {n}'; "
                            for i, n in enumerate(NODES)) + ";;\nesac\n")
        cmap.chmod(cmap.stat().st_mode | stat.S_IXUSR)
        self.cmap = cmap

        monkeypatch.setattr(agent, "check_device", lambda dev: None)
        monkeypatch.setattr(agent, "open_device",
                            lambda dev, options: Borrowed(self.nodes[self.current].paths[dev]))

    def run(self, node: str, stdin: str) -> tuple[int, str, str]:
        self.current = node
        out, err = io.StringIO(), io.StringIO()
        base = (f"devices={','.join(self.targets)}\ncorosync_cmap_path={self.cmap}\n"
                f"state_dir={self.tmp / node}\nkey_value=hash\n")
        code = run_agent(agent.SPEC, agent.make_device, [], io.StringIO(base + stdin),
                         stdout=out, stderr=err, sleep=lambda s: None)
        return code, out.getvalue(), err.getvalue()


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Lab:
    return Lab(tmp_path, monkeypatch)


def unfence_all(lab: Lab) -> None:
    for n in NODES:
        code, out, err = lab.run(n, f"action=on\nnodename={n}\n")
        assert (code, out) == (0, "Success: Powered ON\n"), err


def test_unfence_fence_status_as_pacemaker_does(lab: Lab) -> None:
    unfence_all(lab)
    assert lab.run("node2", "action=status\nplug=node1\n")[:2] == (0, "Status: ON\n")
    code, out, err = lab.run("node3", "action=off\nplug=node1\nnodename=node1\n")
    assert (code, out) == (0, "Success: Powered OFF\n"), err
    assert lab.run("node2", "action=status\nplug=node1\n")[:2] == (2, "Status: OFF\n")
    for dev in lab.targets:
        assert lab.nodes["node1"].write(dev) == Status.RESERVATION_CONFLICT
        assert lab.nodes["node2"].write(dev) == Status.GOOD
    # off always runs the verified fence (the key may be gone and the reservation too)
    assert lab.run("node3", "action=off\nplug=node1\n")[:2] == (0, "Success: Powered OFF\n")


def test_keys_match_fence_agents_hash_derivation(lab: Lab) -> None:
    unfence_all(lab)
    # MD5("mycluster")[:4] + MD5("node2")[:4], as fence-agents computes with key_value=hash
    assert any(k == 0x6C9D7888 for t in lab.targets.values() for k in t.keys)


def test_explicit_key_needs_no_plug(lab: Lab) -> None:
    unfence_all(lab)
    victim = next(k for k in lab.targets["fake:lun0"].keys if k != 0x6C9D7888)
    code, out, err = lab.run("node2", f"action=off\nkey={victim:x}\n")
    assert (code, out) == (0, "Success: Powered OFF\n"), err


def test_fencing_needs_this_nodes_key(lab: Lab) -> None:
    for n in ("node1", "node2"):
        assert lab.run(n, f"action=on\nnodename={n}\n")[0] == 0
    code, _, err = lab.run("node3", "action=off\nplug=node1\n")  # node3 never unfenced
    assert code == 1
    assert "must be unfenced (action on) before it can fence" in err


def test_preempt_and_abort_refused_then_opt_in(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    lab = Lab(tmp_path, monkeypatch, reject_preempt_and_abort=True)
    unfence_all(lab)
    code, out, err = lab.run("node3", "action=off\nplug=node1\n")
    assert code == 1 and out == ""
    assert "rejects PREEMPT AND ABORT" in err and "fake:lun0" in err and "fake:lun1" in err
    code, out, err = lab.run("node3", "action=off\nplug=node1\npreempt_fallback=1\n")
    assert (code, out) == (0, "Success: Powered OFF\n"), err
    assert "falling back to PREEMPT" in err


def test_list_names_registered_nodes(lab: Lab) -> None:
    unfence_all(lab)
    code, out, err = lab.run("node2", "action=list\n")
    assert code == 0, err
    expected = sorted(f"{n},{derive_key('mycluster', n, 'hash')}" for n in NODES)
    assert sorted(out.splitlines()) == expected
    assert "node2,6c9d7888" in expected  # the spec's worked example


def test_logfile_gets_the_log(lab: Lab, tmp_path: Path) -> None:
    log = tmp_path / "fence.log"
    unfence_all(lab)
    assert lab.run("node3", f"action=off\nplug=node1\nlogfile={log}\n")[0] == 0
    assert "removed with PREEMPT AND ABORT" in log.read_text()


def test_monitor_checks_the_devices(lab: Lab) -> None:
    assert lab.run("node1", "action=monitor\n")[0] == 0
    lab.nodes["node1"].paths["fake:lun1"].fail_next(*[ScsiResult(Status.BUSY)] * 10)
    code, _, err = lab.run("node1", "action=monitor\n")
    assert code == 1 and "fake:lun1" in err


def test_no_devices_is_a_clear_failure(lab: Lab) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = run_agent(agent.SPEC, agent.make_device, ["-o", "status", "-n", "node1"],
                     stdout=out, stderr=err)
    assert code == 1 and "no devices given" in err.getvalue()


def test_metadata_is_a_fabric_agent_that_unfences_on_target() -> None:
    out = io.StringIO()
    assert run_agent(agent.SPEC, agent.make_device, ["-o", "metadata"], stdout=out) == 0
    doc = etree.fromstring(out.getvalue().encode())
    actions = {a.get("name"): a for a in doc.find("actions")}
    assert "reboot" not in actions
    assert actions["on"].get("on_target") == "1" and actions["on"].get("automatic") == "1"
    names = {p.get("name") for p in doc.iter("parameter")}
    assert {"devices", "key", "aptpl", "key_value", "logfile", "corosync_cmap_path",
            "nodename", "plug", "port", "delay", "preempt_fallback"} <= names
    assert RNG.exists(), f"{RNG} is missing: apt-get install fence-agents"
    schema = etree.RelaxNG(etree.parse(str(RNG)))
    assert schema.validate(doc), schema.error_log


def test_bad_device_specs_fail_before_any_device_is_touched() -> None:
    for devices, message in (("iscsi://host-only", "iscsi://host[:port]/iqn"),
                             ("/nonexistent/sdz", "does not exist"),
                             ("/etc/hostname", "is not a block device")):
        out, err = io.StringIO(), io.StringIO()
        code = run_agent(agent.SPEC, agent.make_device,
                         ["-o", "on", "-k", "1", "-d", devices], stdout=out, stderr=err)
        assert code == 1 and message in err.getvalue(), err.getvalue()


def test_split_devices() -> None:
    assert agent.split_devices("/dev/sdb, /dev/sdc iscsi://h/iqn.x:y/1") == (
        "/dev/sdb", "/dev/sdc", "iscsi://h/iqn.x:y/1")


def test_off_runs_even_when_the_key_is_already_gone(lab: Lab) -> None:
    """Review finding: "Already OFF" while the target had lost its reservation."""
    unfence_all(lab)
    for t in lab.targets.values():
        t.power_cycle()  # keys and reservation gone: node1 could write again
    code, out, err = lab.run("node3", "action=off\nplug=node1\n")
    assert (code, out) == (0, "Success: Powered OFF\n"), err
    for dev in lab.targets:
        assert lab.nodes["node1"].write(dev) == Status.RESERVATION_CONFLICT
