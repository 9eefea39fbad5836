"""guestfence lab refuses clearly, before touching anything: not root, missing tools,
a state directory under /run, no lab to show."""

from __future__ import annotations

from pathlib import Path

import pytest

from guestfence.lab import guestlab
from guestfence.lab.guestlab import GuestLab
from guestfence.lab.netns import LabError


def test_not_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(guestlab.os, "geteuid", lambda: 1000)
    with pytest.raises(LabError, match="needs root"):
        GuestLab(tmp_path / "lab").up()
    assert not (tmp_path / "lab").exists()


def test_missing_packages_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(guestlab.os, "geteuid", lambda: 0)
    monkeypatch.setattr(guestlab, "missing_tools",
                        lambda pacemaker: ["pacemakerd (apt-get install pacemaker)"])
    with pytest.raises(LabError, match=r"apt-get install pacemaker"):
        GuestLab(tmp_path / "lab").up()
    assert not (tmp_path / "lab").exists()


def test_state_dir_under_run_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guestlab, "check_can_run", lambda qemu=False: None)
    with pytest.raises(LabError, match="must not be under /run"):
        GuestLab(Path("/run/guestfence-lab-unit")).up()
    assert not Path("/run/guestfence-lab-unit").exists()


def test_status_without_a_lab(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="no lab is up"):
        GuestLab.load(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "lab.json").write_text("{not json")
    with pytest.raises(LabError, match="not a lab state file"):
        GuestLab.load(tmp_path / "bad")


def test_a_reused_pid_in_the_machines_mount_namespace_is_never_a_holder() -> None:
    import os

    from guestfence.lab.clusternode import is_holder, pids_in_mount_ns
    from guestfence.lab.netns import Namespace

    assert pids_in_mount_ns(os.getpid()) == []  # would be every process of the machine
    assert not is_holder(os.getpid(), Namespace("gft-unit-none"))
