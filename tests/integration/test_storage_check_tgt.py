"""guestfence storage-check on a real tgt: the verdict names what is missing."""

from __future__ import annotations

import subprocess
from pathlib import Path

from guestfence.lab.ourdaemon import venv_tool
from guestfence.lab.tgt import TgtTarget
from guestfence.scsi.iscsi import IscsiTransport
from guestfence.scsi.prclient import PrClient


def storage_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([venv_tool("guestfence"), "storage-check", *args],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_tgt_is_not_fit_and_the_trial_leaves_nothing(tmp_path: Path) -> None:
    with TgtTarget(tmp_path / "tgt", luns=2) as target:
        scratch, other = target.url(1), target.url(2)
        r = storage_check(other, "--scratch", scratch)
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"{scratch}: not fit: PREEMPT AND ABORT rejected" in r.stdout
        line = next(x for x in r.stdout.splitlines() if x.startswith(f"{other}: "))
        assert line.startswith(f"{other}: fit for fence_scsi (")
        assert "PREEMPT AND ABORT not tried" in line
        assert "no APTPL" in line  # tgt keeps registrations in memory only
        # the trial cleared its keys and its reservation
        with IscsiTransport(scratch, "iqn.2026-11.lab:observer") as observer:
            client = PrClient(observer)
            client.test_unit_ready()
            assert client.read_keys().keys == ()
            assert client.read_reservation().reservation is None


def test_unreachable_and_bad_urls_exit_2(tmp_path: Path) -> None:
    r = storage_check("iscsi://127.0.0.1:9/iqn.2026-11.lab:none/1", "--timeout", "2")
    assert r.returncode == 2 and "could not check" in r.stdout, r.stdout + r.stderr
    bad = storage_check("iscsi://nowhere")
    assert bad.returncode == 2 and "iscsi://host[:port]/" in bad.stderr + bad.stdout
