"""install-agents: links where Pacemaker looks, idempotent, never overwrites silently."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from guestfence.install_agents import AGENTS, InstallError, install, plan


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    d = tmp_path / "venv-bin"
    d.mkdir()
    for name in AGENTS:
        (d / name).write_text("#!/bin/sh\n")
        (d / name).chmod(0o755)
    return d


@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    d = tmp_path / "sbin"
    d.mkdir()
    return d


def test_links_every_agent_then_changes_nothing(bin_dir: Path, prefix: Path) -> None:
    steps = install(prefix, bin_dir=bin_dir)
    assert {s.action for s in steps} == {"link"}
    for name in AGENTS:
        assert os.readlink(prefix / name) == str(bin_dir / name)
    again = install(prefix, bin_dir=bin_dir)
    assert {s.action for s in again} == {"keep"}


def test_refuses_a_different_agent_and_changes_nothing(bin_dir: Path, prefix: Path) -> None:
    (prefix / "fence_scsi").write_text("#!/usr/bin/python3\n# fence-agents\n")
    (prefix / "fence_xvm").symlink_to("fence_virt")
    with pytest.raises(InstallError) as err:
        install(prefix, bin_dir=bin_dir)
    assert f"{prefix / 'fence_scsi'} is a file" in str(err.value)
    assert f"{prefix / 'fence_xvm'} is a symlink to fence_virt" in str(err.value)
    assert sorted(p.name for p in prefix.iterdir()) == ["fence_scsi", "fence_xvm"]
    assert "fence-agents" in (prefix / "fence_scsi").read_text()


def test_force_replaces(bin_dir: Path, prefix: Path) -> None:
    (prefix / "fence_scsi").write_text("old")
    steps = {s.name: s for s in install(prefix, force=True, bin_dir=bin_dir)}
    assert steps["fence_scsi"].action == "replace"
    assert os.readlink(prefix / "fence_scsi") == str(bin_dir / "fence_scsi")


def test_missing_prefix_or_agent_is_a_clear_error(bin_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InstallError, match="no such directory"):
        plan(tmp_path / "nowhere", False, bin_dir)
    (bin_dir / "fence_rhevm").unlink()
    with pytest.raises(InstallError, match="fence_rhevm is not installed"):
        plan(bin_dir, False, bin_dir)
