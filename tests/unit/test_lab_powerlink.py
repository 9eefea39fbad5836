"""The lab's power link acts on power transitions only; unknown power is not off.
Its detached processes are known by pid and start time, never by a pid alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from guestfence.lab import detached, powerlink
from guestfence.lab.netns import LabError
from guestfence.lab.powerlink import PowerLink, guest_powers


class FakeNode:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[str] = []
        self.fail = fail

    def kill_stack(self) -> None:
        self.calls.append("kill")

    def start_stack(self) -> None:
        self.calls.append("start")
        if self.fail:
            raise LabError("corosync did not start")


def link(answers: dict[str, list[dict[str, str]]], nodes: dict[str, FakeNode],
         log: list[str]) -> PowerLink:
    """A link over hosts whose daemons answer, poll after poll, what ``answers`` holds."""
    hosts = {"host1": ("/h1.sock", ["node1", "node2"]), "host2": ("/h2.sock", ["node3"])}
    sockets = {"/h1.sock": "host1", "/h2.sock": "host2"}
    return PowerLink(hosts, nodes, log.append,
                     read_powers=lambda path: answers[sockets[path]].pop(0))


def test_only_transitions_act_and_unknown_changes_nothing() -> None:
    nodes = {n: FakeNode() for n in ("node1", "node2", "node3")}
    log: list[str] = []
    on = {"node1": "on", "node2": "on"}
    answers = {"host1": [on] * 6,
               "host2": [{"node3": "on"}, {"node3": "on"}, {"node3": "off"}, {},
                         {"node3": "off"}, {"node3": "on"}]}
    pl = link(answers, nodes, log)
    assert pl.poll()  # first sight: on, no action (nothing was off before)
    assert not pl.poll()  # nothing changed
    assert nodes["node3"].calls == []
    pl.poll()  # on -> off: a power cut
    assert nodes["node3"].calls == ["kill"]
    pl.poll()  # host2's daemon does not answer: unknown, nothing happens
    assert pl.known["node3"] == "off" and pl.answering["host2"] is False
    pl.poll()  # off again (the daemon is back): no transition
    assert nodes["node3"].calls == ["kill"]
    pl.poll()  # off -> on: a boot
    assert nodes["node3"].calls == ["kill", "start"]
    assert nodes["node1"].calls == nodes["node2"].calls == []
    assert any("node3: power cut" in x for x in log)
    assert any("host2: daemon does not answer" in x for x in log)


def test_unknown_between_on_and_on_is_no_transition() -> None:
    nodes = {n: FakeNode() for n in ("node1", "node2", "node3")}
    answers = {"host1": [{"node1": "on", "node2": "on"}] * 3,
               "host2": [{"node3": "on"}, {}, {"node3": "on"}]}
    pl = link(answers, nodes, [])
    for _ in range(3):
        pl.poll()
    assert nodes["node3"].calls == []


def test_a_failed_boot_is_logged_and_the_link_goes_on() -> None:
    nodes = {"node1": FakeNode(), "node2": FakeNode(), "node3": FakeNode(fail=True)}
    log: list[str] = []
    answers = {"host1": [{"node1": "on", "node2": "on"}] * 3,
               "host2": [{"node3": "off"}, {"node3": "on"}, {"node3": "on"}]}
    pl = link(answers, nodes, log)
    pl.poll()
    pl.poll()
    assert nodes["node3"].calls == ["start"]
    assert any("node3: failed: corosync did not start" in x for x in log)
    pl.poll()


def test_a_missing_daemon_answers_nothing(tmp_path: Path) -> None:
    assert guest_powers(str(tmp_path / "absent.sock")) == {}


def test_a_recorded_watcher_is_stopped_only_if_it_is_the_same_process() -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        info = {"pid": sleeper.pid, "start_time": detached.start_time(sleeper.pid)}
        assert detached.is_running(info)
        reused = {"pid": sleeper.pid, "start_time": -1}  # same pid, another process
        assert not detached.is_running(reused)
        assert detached.stop(reused)  # nothing to stop: it is not the watcher
        assert sleeper.poll() is None
        assert detached.stop(info, timeout=5)
        assert sleeper.wait(5) == -15
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not detached.is_running({"pid": os.getpid(), "start_time": None})


def test_the_watcher_does_not_outlive_its_lab(tmp_path: Path) -> None:
    """Its lab's state file removed (the lab is gone), the watcher exits by itself."""
    (tmp_path / powerlink.STATE_FILE).write_text(json.dumps({
        "cluster": {"scratch": str(tmp_path / "cluster"), "pacemaker": True,
                    "nodes": {"node3": {"nodeid": 3, "namespace": "gft-unit-absent",
                                        "address": "10.0.0.3", "holder": None}}},
        "hosts": {"host2": {"admin_socket": str(tmp_path / "absent.sock"),
                            "guests": ["node3"]}}}))
    watcher = powerlink.start(tmp_path)
    try:
        log = tmp_path / powerlink.LOG_FILE
        deadline = time.monotonic() + 20
        while "host2: daemon does not answer" not in log.read_text():
            assert watcher.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert powerlink.read_view(tmp_path)["answering"] == {"host2": False}
        (tmp_path / powerlink.STATE_FILE).unlink()
        assert watcher.wait(10) == 0
        assert log.read_text().rstrip().endswith("powerlink: stopped")
    finally:
        watcher.kill()
        watcher.wait()


def test_a_process_recorded_after_it_ended_is_never_running() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    info = detached.record(gone.pid)
    assert info["start_time"] is None and not detached.is_running(info)
    assert detached.stop(info)
