"""Host-cluster mode on a real corosync + pacemaker host cluster with real QEMU guests.

Three hosts, each a network namespace with its own libvirtd (diskless TCG
guests), corosync and pacemaker (lab.cluster) and guestfenced with
``backend = "cpg"`` started inside the node's network and mount namespaces (a
CPG client must share both with corosync). fence_xvm runs in a fourth
namespace on the same LAN.

The host cluster's fencing is manual so the test decides when a host counts as
fenced: ``stonith-enabled=false`` (the scheduler fences nobody by itself) and a
fence_dummy device registered with the fencers of the survivors; the test runs
``stonith_admin --fence`` itself after asserting that requests fail, and checks
the fence in Pacemaker's history.

One cluster serves the scenarios in order (module fixture): the migrations
and a corosync restart leave every host up; then host1 is cut off and fenced,
comes back (a fresh start, as after a real fence), and dies for good -- its
first fence, still in the history, must not count for the second departure.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from guestfence.lab import cluster as clusterlab
from guestfence.lab import libvirtd as libvirtlab
from guestfence.lab.cfence import write_key
from guestfence.lab.cluster import Cluster
from guestfence.lab.libvirtd import LibvirtLab, pid_alive
from guestfence.lab.netns import LabError, Lan, build_lan, run_prefix
from guestfence.lab.ourdaemon import OurDaemon, daemon_config_text, venv_tool

pytestmark = pytest.mark.integration

HOSTS = ("host1", "host2", "host3")
GUESTS = {"mig1": "host1", "cut1": "host1", "on3": "host3"}
FENCE_DUMMY = "/usr/sbin/fence_dummy"
TOKEN_MS = 1000
RUNNING = 1  # libvirt VIR_DOMAIN_RUNNING
PACEMAKER_DAEMONS = ("pacemakerd", "pacemaker-based", "pacemaker-fenced", "pacemaker-execd",
                     "pacemaker-attrd", "pacemaker-schedulerd", "pacemaker-controld")


@dataclass
class HostCluster:
    lan: Lan
    cluster: Cluster
    key: Path
    scratch: Path
    group: str
    labs: dict[str, LibvirtLab] = field(default_factory=dict)
    daemons: dict[str, OurDaemon] = field(default_factory=dict)
    retired: list[OurDaemon] = field(default_factory=list)

    def agent(self, action: str, vm: str, timeout: int = 5) -> tuple[int, str]:
        r = self.lan["guest"].run([venv_tool("fence_xvm"), "-k", str(self.key), "-o", action,
                                   "-H", vm, "-t", str(timeout)],
                                  capture_output=True, text=True, timeout=60)
        return r.returncode, (r.stdout + r.stderr).strip()

    def answers(self, vm: str) -> dict[str, list[str]]:
        """Each daemon's request log lines for ``vm`` (a silent daemon logs none)."""
        return {h: [x for x in d.request_lines() if f"target={vm} " in x]
                for h, d in self.daemons.items()}

    def counts(self, vm: str) -> dict[str, int]:
        return {h: len(lines) for h, lines in self.answers(vm).items()}

    def answered_since(self, vm: str, before: dict[str, int], requests: int) \
            -> list[tuple[str, str]]:
        """(log line, host) of every request for ``vm`` logged since ``before``, in time
        order. A daemon logs after answering and a reader thread collects its lines:
        wait (bounded) until there are ``requests`` of them; more means a double answer."""
        deadline = time.monotonic() + 5.0
        while True:
            found = sorted((line, h) for h, lines in self.answers(vm).items()
                           for line in lines[before[h]:])
            if len(found) >= requests or time.monotonic() > deadline:
                time.sleep(0.3)  # a double answer would show up now
                return sorted((line, h) for h, lines in self.answers(vm).items()
                              for line in lines[before[h]:])
            time.sleep(0.02)

    def who_answered(self, vm: str, before: dict[str, int], requests: int) -> list[str]:
        return [h for _line, h in self.answered_since(vm, before, requests)]

    def start_daemon(self, host: str) -> OurDaemon:
        conf = self.scratch / f"{host}.conf"
        text = daemon_config_text(str(self.key), [self.labs[host].uri], interface="eth0")
        text = text.replace('backend = "libvirt"', 'backend = "cpg"').replace(
            "\tlibvirt {", f'\tcpg {{\n\t\thost_name = "{host}";\n\t\tgroup = "{self.group}";')
        conf.write_text(text)
        conf.chmod(0o600)
        daemon = OurDaemon(conf, namespace=self.cluster.node(host), debug=1)
        self.daemons[host] = daemon
        return daemon.start(timeout=60)

    def fence(self, victim: str, by: str) -> None:
        done = self.cluster.node(by).run(["stonith_admin", "--fence", victim, "--timeout", "60"],
                                         timeout=90)
        assert done.returncode == 0, done.stdout + done.stderr

    def last_fence(self, victim: str, by: str) -> str | None:
        """When ``victim`` was last fenced successfully, per Pacemaker's history as seen
        from ``by`` (--verbose: without it only one success per target is shown)."""
        done = self.cluster.node(by).run(["stonith_admin", "--history", victim, "--verbose",
                                          "--output-as", "xml"])
        root = ET.fromstring(done.stdout)
        return max((e.get("completed", "") for e in root.iter("fence_event")
                    if e.get("target") == victim and e.get("status") == "success"
                    and e.get("action") in ("off", "reboot")), default=None)

    def departures(self, gone: str) -> dict[str, int]:
        """How often each live daemon has logged ``gone`` leaving the group."""
        return {h: d.log_text().count(f"host cluster: {gone} left the group")
                for h, d in self.daemons.items() if h != gone}

    def wait_left(self, gone: str, before: dict[str, int], timeout: float = 30.0) -> None:
        """Every daemon of ``before`` has logged one more departure of ``gone``."""
        until(f"{gone} seen leaving by {sorted(before)}",
              lambda: all(n > before[h] for h, n in self.departures(gone).items()
                          if h in before), timeout)


def _missing() -> list[str]:
    problems = libvirtlab.missing_tools() + clusterlab.missing_tools(pacemaker=True)
    if not Path(FENCE_DUMMY).exists():
        problems.append(f"{FENCE_DUMMY} (Debian package fence-agents)")
    return problems


def until(what: str, check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout} s: {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def hc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostCluster]:
    problems = _missing()
    if problems:
        pytest.fail("the host-cluster test needs: " + "; ".join(problems), pytrace=False)
    scratch = tmp_path_factory.mktemp("hostcluster")
    prefix = run_prefix()
    lan = build_lan(prefix, [*HOSTS, "guest"], subnet="10.231.63", subnet6=None)
    status = scratch / "fence_dummy.status"
    status.write_text("on")  # fence_dummy: "on" and no newline
    cluster = Cluster(scratch / "cluster", {h: lan[h] for h in HOSTS}, token_ms=TOKEN_MS,
                      crm_config={"dc-deadtime": "2s", "stonith-enabled": "false"})
    env = HostCluster(lan, cluster, write_key(scratch / "fence_xvm.key"), scratch,
                      group=f"{prefix}gf")
    try:
        cluster.start()
        for host in HOSTS:
            env.labs[host] = LibvirtLab(scratch / f"libvirt-{host}", lan[host],
                                        listen_address=lan.addresses[host]).start()
        for vm, host in GUESTS.items():
            env.labs[host].define_and_start(vm, memory_mib=32)
        for host in ("host2", "host3"):  # the survivors' fencers can fence any host
            reg = cluster.node(host).run([
                "stonith_admin", "--register", "hostfence", "--agent", "fence_dummy",
                "--option", "type=file", "--option", f"status_file={status}",
                "--option", "pcmk_host_list=host1 host2 host3"])
            assert reg.returncode == 0, reg.stdout + reg.stderr
        for host in HOSTS:
            env.start_daemon(host)
        for vm in GUESTS:  # every daemon has heard every announcement
            until(f"{vm} answered", lambda vm=vm: env.agent("status", vm)[0] == 0)
        yield env
    finally:
        try:
            for daemon in [*env.daemons.values(), *env.retired]:
                daemon.stop()
            for host, lab in env.labs.items():
                try:
                    lab.stop()
                except Exception as e:  # keep cleaning up
                    print(f"{host}: libvirt lab stop: {e}")
            cluster.stop()
        finally:
            lan.destroy()


def _print_logs(env: HostCluster) -> None:
    for host, daemon in env.daemons.items():
        print(f"--- guestfenced {host}\n{daemon.log_text()[-6000:]}")


@pytest.fixture(autouse=True)
def logs_on_failure(hc: HostCluster, request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is None or rep.failed:
        _print_logs(hc)


def test_outside_corosyncs_mount_namespace_start_up_fails_clearly(hc: HostCluster) -> None:
    """Only the network namespace (the abstract sockets) is not enough: libqb's ring
    buffers live in corosync's /dev/shm."""
    conf = hc.scratch / "outside.conf"
    text = (hc.scratch / "host2.conf").read_text().replace(
        'backend = "cpg";', 'backend = "cpg";\n\tadmin_socket = "off";')
    conf.write_text(text)
    conf.chmod(0o600)
    daemon = OurDaemon(conf, namespace=hc.lan["host2"], debug=1)
    try:
        with pytest.raises(LabError, match="exited with rc") as failed:
            daemon.start(timeout=60)
    finally:
        daemon.stop()
    assert ("cannot connect to corosync (CS_ERR_NOT_EXIST): is corosync running, and is "
            "guestfenced in its network and mount namespace?") in str(failed.value)


def test_owner_answers_alone_and_every_member_knows_it(hc: HostCluster) -> None:
    for vm, owner in GUESTS.items():
        before = hc.counts(vm)
        for _ in range(3):
            assert hc.agent("status", vm) == (0, "Status: ON")
        assert hc.who_answered(vm, before, 3) == [owner] * 3


def _migrate_in_background(src: LibvirtLab, vm: str, dst: LibvirtLab) \
        -> tuple[threading.Thread, threading.Event, list[BaseException]]:
    done = threading.Event()
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            src.migrate(vm, dst)
        except BaseException as e:  # reported by the caller
            errors.append(e)
        finally:
            done.set()

    mover = threading.Thread(target=migrate, name=f"migrate-{vm}")
    mover.start()
    return mover, done, errors


def test_live_migration_answered_by_exactly_one_host(hc: HostCluster) -> None:
    vm = "mig1"
    src, dst = hc.labs["host1"], hc.labs["host2"]
    old_pid = src.qemu_pid(vm)
    assert old_pid is not None
    results: list[tuple[int, str]] = []
    before = hc.counts(vm)

    def status() -> None:
        results.append(hc.agent("status", vm))

    status()
    mover, migrated, errors = _migrate_in_background(src, vm, dst)
    while not migrated.is_set():  # status requests during the migration
        status()
    mover.join()
    assert not errors, errors
    status()  # right after
    status()
    wrong = [(i, r) for i, r in enumerate(results) if r != (0, "Status: ON")]
    assert not wrong, (wrong, len(results))
    answered = hc.answered_since(vm, before, len(results))
    answered_by = [h for _line, h in answered]
    assert len(answered_by) == len(results), answered  # exactly one answer per request
    # the right one: the source until the switch-over, then the destination, never back
    switch = answered_by.index("host2")
    assert answered_by[:switch] == ["host1"] * switch and switch >= 1, answered_by
    assert answered_by[switch:] == ["host2"] * (len(answered_by) - switch), answered_by

    new_pid = dst.qemu_pid(vm)
    assert new_pid is not None
    before = hc.counts(vm)
    assert hc.agent("off", vm, timeout=20) == (0, "")
    assert hc.who_answered(vm, before, 1) == ["host2"]
    assert not pid_alive(new_pid) and not pid_alive(old_pid)
    assert src.qemu_pids(vm) == [] and dst.qemu_pids(vm) == []
    assert hc.agent("status", vm) == (2, "Status: OFF")


def test_off_during_live_migration_is_never_a_false_success(hc: HostCluster) -> None:
    vm = "mig2"
    src, dst = hc.labs["host2"], hc.labs["host3"]
    src.define_and_start(vm, memory_mib=32)
    until(f"{vm} announced", lambda: hc.agent("status", vm)[0] == 0)
    mover, migrated, _errors = _migrate_in_background(src, vm, dst)
    until("the destination's incoming qemu", lambda: migrated.is_set() or dst.qemu_pids(vm))
    before = hc.counts(vm)
    code, out = hc.agent("off", vm, timeout=20)
    assert len(hc.who_answered(vm, before, 1)) == 1  # exactly one host answered
    if code == 0:  # success: no copy runs the guest, and every qemu of it goes away
        assert RUNNING not in (src.domain_state(vm), dst.domain_state(vm)), "false success"
        until("no qemu left", lambda: not src.qemu_pids(vm) and not dst.qemu_pids(vm), 10)
    mover.join()
    # whatever the race gave, off converges to a verified off (or the guest was already off)
    deadline = time.monotonic() + 30
    while code != 0 and time.monotonic() < deadline:
        code, out = hc.agent("off", vm, timeout=20)
    assert code == 0, out
    assert src.qemu_pids(vm) == [] and dst.qemu_pids(vm) == []


def test_guestfenced_rejoins_after_corosync_restarts(hc: HostCluster) -> None:
    vm, node3, daemon = "on3", hc.cluster.node("host3"), hc.daemons["host3"]
    joins = daemon.log_text().count("cpg: joined group")
    node3.kill_corosync()  # cpg_dispatch now fails with CS_ERR_LIBRARY
    daemon.wait_for_log("cpg: lost corosync", 20)
    for name in PACEMAKER_DAEMONS:  # pacemakerd waits for corosync forever: restart it too
        for pid in node3.stack_pids(name):
            os.kill(pid, signal.SIGKILL)
    until("pacemaker of host3 gone", lambda: not any(node3.stack_pids(n)
                                                     for n in PACEMAKER_DAEMONS))
    hc.cluster.restart_node("host3")
    until("host3's guestfenced joined again",
          lambda: daemon.log_text().count("cpg: joined group") > joins, 60)
    assert daemon.proc is not None and daemon.proc.poll() is None
    until(f"{vm} answered again", lambda: hc.agent("status", vm) == (0, "Status: ON"), 60)
    before = hc.counts(vm)
    assert hc.agent("status", vm) == (0, "Status: ON")
    assert hc.who_answered(vm, before, 1) == ["host3"]


def test_partitioned_owner_is_never_reported_fenced_before_it_is(hc: HostCluster) -> None:
    vm = "cut1"
    pid = hc.labs["host1"].qemu_pid(vm)
    assert pid is not None
    marks = hc.departures("host1")
    hc.lan.bridge.ip("link", "set", "veth1", "down")  # host1 is the first LAN member
    hc.wait_left("host1", marks)
    assert pid_alive(pid)  # the guest still runs behind the partition
    _cut_off_host_is_silent_for_others(hc, own=vm, others="on3")
    assert hc.last_fence("host1", by="host2") is None
    before = hc.counts(vm)
    for _ in range(3):
        assert hc.agent("off", vm)[0] == 1
    assert hc.agent("status", vm)[0] == 1
    answered = hc.answered_since(vm, before, 4)
    # the deterministic responder (lowest live name) answers failure; host3 stays silent
    assert [h for _line, h in answered] == ["host2"] * 4, answered
    assert all("outcome=success" not in line for line, _h in answered), answered

    hc.fence("host1", by="host2")
    assert hc.last_fence("host1", by="host3") is not None
    assert hc.agent("off", vm) == (0, "")
    assert hc.agent("status", vm) == (2, "Status: OFF")
    assert set(hc.who_answered(vm, before, 6)) == {"host2"}


def _cut_off_host_is_silent_for_others(hc: HostCluster, own: str, others: str) -> None:
    """host1, alone in its partition, is not quorate: for host3's guest it is the only
    live member, yet it stays silent (its "fail" would beat the real owner's answer for
    guests that still reach it); its own guest it still answers for. A requester in
    host1's own namespace is a guest that still reaches host1 (multicast loops back)."""
    daemon = hc.daemons["host1"]
    until("host1 sees host2 and host3 leave",
          lambda: all(f"host cluster: {h} left the group" in daemon.log_text()
                      for h in ("host2", "host3")), 30)
    daemon.wait_for_log("host cluster: quorum NOT quorate", 30)

    def agent(action: str, vm: str, timeout: int) -> tuple[int, str]:
        r = hc.lan["host1"].run([venv_tool("fence_xvm"), "-k", str(hc.key), "-o", action,
                                 "-H", vm, "-t", str(timeout)],
                                capture_output=True, text=True, timeout=60)
        return r.returncode, (r.stdout + r.stderr).strip()

    before = hc.counts(own)
    assert agent("status", own, 5) == (0, "Status: ON")  # the owner still answers
    assert hc.who_answered(own, before, 1) == ["host1"]
    before = hc.counts(others)
    code, out = agent("status", others, 2)
    assert code == 1 and "Status" not in out, out  # nobody answered: a timeout
    assert hc.counts(others) == before  # host1 logged no request line: it stayed silent
    assert "host3 left the group" in daemon.log_text()


def _host1_comes_back(hc: HostCluster, vm: str) -> None:
    """host1 was fenced (by a dummy): make it really dead, then boot it again."""
    hc.cluster.node("host1").kill_stack()  # corosync, pacemaker and its guestfenced
    hc.labs["host1"].stop()  # libvirtd and its qemu
    hc.retired.append(hc.daemons.pop("host1"))
    hc.lan.bridge.ip("link", "set", "veth1", "up")
    hc.cluster.restart_node("host1")
    hc.labs["host1"] = LibvirtLab(hc.scratch / "libvirt-host1-again", hc.lan["host1"],
                                  listen_address=hc.lan.addresses["host1"]).start()
    hc.labs["host1"].define_and_start(vm, memory_mib=32)
    hc.start_daemon("host1")
    until(f"{vm} answered", lambda: hc.agent("status", vm) == (0, "Status: ON"), 60)


def test_dead_owner_fails_until_the_host_cluster_fenced_it(hc: HostCluster) -> None:
    vm = "dies1"
    _host1_comes_back(hc, vm)
    marks = hc.departures("host1")
    hc.cluster.node("host1").kill_stack()  # corosync, pacemaker and guestfenced
    hc.labs["host1"].stop()  # libvirtd and its qemu: the whole host is dead
    hc.wait_left("host1", marks)
    # the fence from the partition test is in the history, but it is older than this
    # departure: it must not count
    first_fence = hc.last_fence("host1", by="host2")
    assert first_fence is not None
    before = hc.counts(vm)
    assert hc.agent("off", vm)[0] == 1  # not fenced yet: fail, never "already off"
    assert hc.agent("status", vm)[0] == 1
    assert hc.who_answered(vm, before, 2) == ["host2", "host2"]
    assert all("outcome=success" not in x for x in hc.answers(vm)["host2"])

    hc.fence("host1", by="host2")
    second_fence = hc.last_fence("host1", by="host3")
    assert second_fence is not None and second_fence > first_fence
    assert hc.agent("off", vm) == (0, "")
    assert hc.agent("status", vm) == (2, "Status: OFF")
    assert set(hc.who_answered(vm, before, 4)) == {"host2"}
