"""``guestfence lab up|status|down`` as a person runs it: separate invocations, nothing left.

The lab's processes outlive ``up``; ``status`` and ``down`` find them again
through the state directory alone.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from guestfence.lab.cluster import pids_in_mount_ns
from guestfence.lab.guestlab import STATE_FILE, GuestLab
from guestfence.lab.netns import list_namespaces, run_prefix
from guestfence.lab.ourdaemon import venv_tool

pytestmark = pytest.mark.integration


def lab_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([venv_tool("guestfence"), "lab", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          env={"COLUMNS": "160", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def running(pid: int) -> bool:
    """Alive and not a zombie (the lab's daemons are re-parented to init once 'up' exits,
    and how soon init reaps them is not the lab's doing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def test_up_status_down_from_separate_invocations(tmp_path: Path) -> None:
    state = tmp_path / "lab"
    prefix = run_prefix()
    where = ("--state-dir", str(state), "--prefix", prefix)
    try:
        up = lab_cli("up", *where)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "lab is up" in up.stdout and "every node unfenced itself" in up.stdout

        again = lab_cli("up", *where)
        assert again.returncode == 1 and "already up" in again.stderr, again.stderr

        status = lab_cli("status", "--state-dir", str(state))
        assert status.returncode == 0, status.stderr
        rows = {line.split("│")[1].strip(): line for line in status.stdout.splitlines()
                if line.startswith("│ node")}
        assert set(rows) == {"node1", "node2", "node3"}
        assert all("online" in r and " on " in r and "registered" in r
                   for r in rows.values()), status.stdout
        assert "(DC)" in status.stdout and "3 registration(s)" in status.stdout
        assert "power link" in status.stdout and "running (pid" in status.stdout, status.stdout

        recorded = json.loads((state / STATE_FILE).read_text())
        holders = [n["holder"] for n in recorded["cluster"]["nodes"].values()]
        daemons = [h["pid"] for h in recorded["hosts"].values()] + [recorded["target"]["pid"],
                                                                  recorded["powerlink"]["pid"]]
        assert all(running(pid) for pid in daemons)
        for host in recorded["hosts"].values():  # each host daemon its own admin socket
            answer = subprocess.run([venv_tool("guestfence"), "status", "--json", "--socket",
                                     host["admin_socket"]], capture_output=True, text=True,
                                    timeout=60, stdin=subprocess.DEVNULL)
            assert answer.returncode == 0, answer.stderr
            guests = {g["name"]: g["state"] for g in json.loads(answer.stdout)["guests"]}
            assert guests == dict.fromkeys(host["guests"], "running"), guests
        down = lab_cli("down", "--state-dir", str(state))
        assert down.returncode == 0, down.stdout + down.stderr
        assert not [n for n in list_namespaces() if n.startswith(prefix)]
        assert not state.exists()
        assert not any(pids_in_mount_ns(h) for h in holders)
        assert not [pid for pid in daemons if running(pid)]
        assert lab_cli("down", "--state-dir", str(state)).returncode == 0  # idempotent
    finally:
        if (state / STATE_FILE).exists():
            GuestLab.load(state).down()
