"""The watchdog test: 0 while this node's key is registered somewhere, 2 once it is gone."""

from __future__ import annotations

from pathlib import Path

from guestfence.agents.scsi import StateFiles
from guestfence.agents.scsi_check import FENCED, check, read_tunables
from guestfence.scsi.prclient import PrClient
from guestfence.scsi.transport import ScsiResult, Status

from .fake_pr_target import FakePrTarget, FakeTransport

KEY = 0x6C9D7888


def setup(tmp_path: Path, registered: bool) -> tuple[dict[str, FakePrTarget], dict[str, str]]:
    targets = {"fake:a": FakePrTarget(name="a"), "fake:b": FakePrTarget(name="b")}
    if registered:
        PrClient(targets["fake:b"].connect("iqn.2026-11.lab:node2")).register_and_ignore(KEY)
    StateFiles(str(tmp_path)).save(KEY, tuple(targets))
    return targets, {"state-dir": str(tmp_path)}


def test_registered_on_one_device_passes(tmp_path: Path) -> None:
    targets, tun = setup(tmp_path, registered=True)
    assert check(["test"], tun, lambda d: targets[d].connect("iqn.2026-11.lab:watch")) == 0


def test_key_gone_everywhere_means_fenced(tmp_path: Path) -> None:
    targets, tun = setup(tmp_path, registered=False)
    assert check(["test"], tun, lambda d: targets[d].connect("iqn.2026-11.lab:watch")) == FENCED
    assert check(["repair", "2"], tun) == 2


def test_retries_an_unreachable_device(tmp_path: Path) -> None:
    targets, tun = setup(tmp_path, registered=True)
    busy = 2  # the first two connections to device b answer BUSY

    def opener(device: str) -> FakeTransport:
        nonlocal busy
        transport = targets[device].connect("iqn.2026-11.lab:watch")
        if device == "fake:b" and busy:
            busy -= 1
            transport.fail_next(ScsiResult(Status.BUSY))
        return transport

    sleeps: list[float] = []
    code = check(["test"], {**tun, "retry": "2", "retry-sleep": "0.5"}, opener,
                 sleep=sleeps.append)
    assert code == 0 and sleeps == [0.5, 0.5]


def test_never_unfenced_passes(tmp_path: Path) -> None:
    assert check(["test"], {"state-dir": str(tmp_path / "empty")}) == 0


def test_tunables_file(tmp_path: Path) -> None:
    f = tmp_path / "stonith"
    f.write_text("# comment\nretry=1\nRetry-Sleep = 2\nverbose=yes\n")
    assert read_tunables(str(f)) == {"retry": "1", "retry-sleep": "2", "verbose": "yes"}
    assert read_tunables(str(tmp_path / "missing")) == {}
