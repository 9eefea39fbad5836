"""Pacemaker fences through guestfence, end to end, in the guest-cluster lab.

One lab for the module (``guestfence lab``'s own GuestLab): three pacemaker
nodes, guestfenced on two test-driver hosts, our iSCSI target.  Pacemaker's
own tools drive everything; the assertions look at real state: the guest's
power as its host daemon reports it (and the daemon's request log: our
fence_xvm was really called by the cluster), the LUN's registrations (PR IN
READ KEYS), the SCSI status of the fenced node's writes, and the corosync
membership the survivors see: the lab's power link kills a node's stack when
its guest goes off and boots it when the guest comes on again.

Each test leaves the cluster whole again (node3 back, unfenced) for the next.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from guestfence.lab import guestcib
from guestfence.lab.guestlab import HOSTS, GuestLab, completed_at, node_key
from guestfence.lab.netns import run_prefix

pytestmark = pytest.mark.integration

VICTIM = "node3"
SURVIVORS = ("node1", "node2")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuestLab]:
    state = Path(tmp_path_factory.mktemp("guestlab")) / "state"
    built = GuestLab(state, prefix=run_prefix())
    try:
        built.up(start_timeout=120)
        yield built
    finally:
        built.down()


def admin(lab: GuestLab, *args: str, node: str = "node1", timeout: float = 120
          ) -> tuple[int, str]:
    assert lab.cluster is not None
    done = lab.cluster.node(node).run(["stonith_admin", *args], timeout=timeout)
    return done.returncode, done.stdout + done.stderr


def fence_events(lab: GuestLab, target: str) -> list[dict[str, str]]:
    """The fencer's history for ``target`` (every recorded operation), newest first."""
    return lab.fence_history(target)


def wait_until(what: str, check: Callable[[], object], timeout: float = 60.0,
               lab: GuestLab | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            state = lab.node_with_stack().run(["crm_mon", "-1", "-f"]).stdout if lab else ""
            history = admin(lab, "--history", VICTIM, "--verbose")[1] if lab else ""
            pytest.fail(f"timed out waiting for {what}\n{state}\n{history}")
        time.sleep(0.2)


def powered_off_and_gone(lab: GuestLab, link_actions_before: int) -> None:
    """node3's guest is off, so node3 runs nothing any more (the power link killed its
    stack: no pacemaker left, nothing that could still write) and the survivors'
    corosync no longer counts it."""
    assert lab.cluster is not None
    victim = lab.cluster.node(VICTIM)
    wait_until("node3's stack gone with its power", lambda: not victim.stack_pids(), 30, lab)
    assert any("power cut" in x for x in lab.power_link_actions(VICTIM)[link_actions_before:]
               ), lab.power_link_log.read_text()
    cluster = lab.cluster
    wait_until("the survivors' corosync without node3", lambda: all(
        cluster.node(s).corosync_members() == {cluster.node(n).nodeid for n in SURVIVORS}
        for s in SURVIVORS), 30, lab)


def back_in_the_cluster(lab: GuestLab, link_actions_before: int) -> None:
    """After power on: node3 booted (by the power link) and every node is a member."""
    assert lab.cluster is not None
    assert lab.guest_power(VICTIM) == "on"
    assert any("power on" in x for x in lab.power_link_actions(VICTIM)[link_actions_before:]
               ), lab.power_link_log.read_text()
    for node in lab.cluster.nodes():
        assert node.corosync_members() == {1, 2, 3}, node
    online, _, _ = lab.cluster.node("node1").pacemaker_view()
    assert online == {"node1", "node2", "node3"}


def survivors_keep_running(lab: GuestLab) -> None:
    assert lab.cluster is not None
    lab.cluster.wait_membership(SURVIVORS, 60)  # quorum (2 of 3) and a DC among them
    wait_until("the resource started on a survivor",
               lambda: lab.started_resources().get(guestcib.RESOURCE) in SURVIVORS, lab=lab)


def test_pacemaker_tools_accept_our_agents(lab: GuestLab) -> None:
    rc, meta = admin(lab, "--metadata", "-a", "fence_xvm")
    assert rc == 0 and 'action name="manpage"' in meta  # ours, not the machine's C agent
    rc, meta = admin(lab, "--metadata", "-a", "fence_scsi")
    assert rc == 0 and 'on_target="1"' in meta and "guestfence" in meta
    rc, out = admin(lab, "--list", VICTIM)
    assert rc == 0 and guestcib.XVM_DEVICE in out and guestcib.SCSI_DEVICE in out, out
    for device in (guestcib.XVM_DEVICE, guestcib.SCSI_DEVICE):
        rc, out = admin(lab, "--query", device)
        assert rc == 0, out
    # pacemaker 2.1.5's crm_resource --validate refuses every stonith resource ("Manual
    # execution of the stonith standard is unsupported"); stonith_admin --validate is the
    # fencer's own validation (the agent's validate-all with the device's parameters).
    # The refusal comes from pacemaker before any agent runs: the same for ours and C's.
    crm = lab.node_with_stack().run(["crm_resource", "--validate", "-r", guestcib.XVM_DEVICE])
    assert "stonith standard is unsupported" in crm.stdout + crm.stderr, crm
    rc, out = admin(lab, "--validate", "-a", "fence_xvm", "-o", f"key_file={lab.key_file}",
                    "-o", "timeout=5")
    assert rc == 0 and "succeeded" in out, out
    rc, out = admin(lab, "--validate", "-a", "fence_xvm", "-o", "key_file=/nonexistent")
    assert rc != 0 and "/nonexistent" in out, out  # our agent really looked at the key
    rc, out = admin(lab, "--validate", "-a", "fence_scsi", "-o", f"devices={lab.lun_url}",
                    "-o", "key_value=hash")
    assert rc == 0 and "succeeded" in out, out
    before = {h: len(lab.host_requests(h)) for h in HOSTS}
    rc, out = admin(lab, "--list-targets", guestcib.XVM_DEVICE)  # our fence_xvm's list
    assert rc == 0, out
    # like the C fence_xvm, a list is the answer of the first host to call back
    answered = [h for h in HOSTS if any(re.search(r" action=(host)?list .*outcome=(success|"
                                                  r"hostlist)", x)
                                        for x in lab.host_requests(h)[before[h]:])]
    assert answered, {h: lab.host_requests(h)[before[h]:] for h in HOSTS}
    listed = {line.strip() for line in out.splitlines() if line.strip().startswith("node")}
    assert listed in ({*HOSTS[h]} for h in answered), out


def test_every_node_unfenced_itself(lab: GuestLab) -> None:
    nodes = ("node1", "node2", "node3")
    assert set(lab.lun_keys()) == {node_key(n) for n in nodes}
    assert lab.write_as_node(VICTIM) == "GOOD"
    for node in nodes:  # on_target="1": each node's own fencer ran fence_scsi on for itself
        ons = [e for e in fence_events(lab, node) if e["action"] == "on"]
        assert ons and all(e["status"] == "success" for e in ons), ons
        assert {e["delegate"] for e in ons} == {node}, ons


def test_stonith_admin_fences_through_fence_xvm(lab: GuestLab) -> None:
    before = len(lab.host_requests("host2"))
    actions = len(lab.power_link_actions(VICTIM))
    started = time.monotonic()
    rc, out = admin(lab, "--fence", VICTIM, "--timeout", "60")
    took = time.monotonic() - started
    assert rc == 0, out
    assert lab.guest_power(VICTIM) == "off"
    offs = [x for x in lab.host_requests("host2")[before:]
            if f"target={VICTIM} action=off " in x and "outcome=success" in x]
    assert len(offs) == 1, lab.host_requests("host2")[before:]
    requester = re.search(r"requester=(\S+)", offs[0])
    assert requester is not None  # asked by a cluster node's fencer, not by the lab
    assert requester.group(1) in {lab.state["addresses"][n] for n in ("node1", "node2")}
    last = fence_events(lab, VICTIM)[0]
    assert (last["action"], last["status"]) == ("off", "success"), last
    powered_off_and_gone(lab, actions)
    survivors_keep_running(lab)
    print(f"stonith_admin --fence {VICTIM}: {took:.2f} s")
    lab.restart_guest(VICTIM)
    back_in_the_cluster(lab, actions)


def completed_since(event: dict[str, str], since: float) -> bool:
    """The event completed at or after ``since`` (its timestamp has whole seconds)."""
    return completed_at(event) >= int(since)


def no_pending(lab: GuestLab) -> bool:
    return all(e.get("status") != "pending" for e in fence_events(lab, VICTIM))


def test_a_crashed_node_is_fenced_by_the_cluster(lab: GuestLab) -> None:
    assert lab.cluster is not None
    before = len(lab.host_requests("host2"))
    actions = len(lab.power_link_actions(VICTIM))
    crashed = time.time()
    lab.cluster.node(VICTIM).kill_corosync()

    def fenced_by_cluster() -> list[dict[str, str]]:
        return [e for e in fence_events(lab, VICTIM)
                if e["action"] == "off" and e["status"] == "success"
                and e["client"].startswith("pacemaker-controld")  # the cluster, not us
                and completed_since(e, crashed)]

    wait_until("the cluster fencing the crashed node", fenced_by_cluster, 90, lab)
    assert lab.guest_power(VICTIM) == "off"  # stonith-action=off: the guest stays off
    assert any(f"target={VICTIM} action=off " in x and "outcome=success" in x
               for x in lab.host_requests("host2")[before:])
    powered_off_and_gone(lab, actions)
    survivors_keep_running(lab)
    lab.restart_guest(VICTIM)
    back_in_the_cluster(lab, actions)


def test_a_guest_switched_off_on_its_host_leaves_and_boots_with_its_power(lab: GuestLab
                                                                         ) -> None:
    """Power off at the host, outside pacemaker: the node dies with its guest, the
    cluster sees it lost and fences it (off again: success); power on alone brings it
    back (the power link boots it) and it is unfenced again."""
    assert lab.cluster is not None
    actions = len(lab.power_link_actions(VICTIM))
    cut = time.time()
    lab.power_off(VICTIM)
    powered_off_and_gone(lab, actions)
    wait_until("the cluster fencing the lost node", lambda: [
        e for e in fence_events(lab, VICTIM) if e["action"] == "off"
        and e["status"] == "success" and e["client"].startswith("pacemaker-controld")
        and completed_since(e, cut)], 90, lab)
    survivors_keep_running(lab)
    wait_until("no pending fencing of the victim", lambda: no_pending(lab), 90, lab)

    lab.power_on(VICTIM)
    lab.cluster.wait_membership(("node1", "node2", "node3"), 90)
    wait_until("node3 unfenced after its boot", lambda: any(
        e["action"] == "on" and e["status"] == "success" and completed_since(e, cut)
        for e in fence_events(lab, VICTIM)), 90, lab)
    back_in_the_cluster(lab, actions)
    lab.wait_unfenced(90)  # every key on the LUN, devices and resource started, none pending
    assert node_key(VICTIM) in lab.lun_keys()


def test_level_two_fence_scsi_when_the_host_daemon_is_down(lab: GuestLab) -> None:
    lab.stop_host_daemon("host2")
    actions = len(lab.power_link_actions(VICTIM))
    rc, out = admin(lab, "--fence", VICTIM, "--timeout", "90")
    assert rc == 0, out
    keys = lab.lun_keys()
    assert node_key(VICTIM) not in keys  # cut off the LUN by PREEMPT AND ABORT
    assert {node_key(n) for n in SURVIVORS} <= set(keys)
    assert lab.write_as_node(VICTIM) == "RESERVATION_CONFLICT"
    assert lab.write_as_node("node1") == "GOOD"
    assert lab.guest_power(VICTIM) == "unknown"  # nobody claims it is off
    # so the power link did nothing to node3: unknown power is not a power cut
    assert lab.power_link_actions(VICTIM)[actions:] == []
    assert lab.cluster is not None and lab.cluster.node(VICTIM).holder_pid is not None
    events = fence_events(lab, VICTIM)
    assert any(e["status"] == "success" and e["client"].startswith("stonith_admin")
               and e["action"] == "off" for e in events), events
    survivors_keep_running(lab)
    # the DC may fence the node again when it leaves; let that finish before power comes back
    wait_until("no pending fencing of the victim", lambda: no_pending(lab), 90, lab)
    lab.restart_guest(VICTIM)
    assert node_key(VICTIM) in lab.lun_keys()
    assert lab.write_as_node(VICTIM) == "GOOD"
