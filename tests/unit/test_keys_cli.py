"""`guestfence keys`: files written 0600 and atomically, rotation and retirement, refusals."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from guestfence.cli import main
from guestfence.host.keys import fingerprint


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(["keys", *argv])
    out, err = capsys.readouterr()
    return int(e.value.code or 0), out, err


@pytest.fixture
def keydir(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    d.mkdir(mode=0o700)
    return d


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_writes_0600_and_prints_fingerprint_and_guest_steps(
        keydir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old_umask = os.umask(0)  # a careless umask must not make the key readable
    try:
        code, out, _ = run(capsys, "new", str(keydir / "web.key"))
    finally:
        os.umask(old_umask)
    key = (keydir / "web.key").read_bytes()
    assert code == 0 and len(key) == 4096 and mode(keydir / "web.key") == 0o600
    assert f"fingerprint {fingerprint(key)}" in out
    assert "/etc/cluster/fence_xvm.key" in out and "sha256sum" in out
    assert key.hex() not in out
    assert [p.name for p in keydir.iterdir()] == ["web.key"]  # no temporary file left


def test_new_refuses_to_overwrite_and_unsafe_directories(
        keydir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "new", str(keydir / "web.key"))
    before = (keydir / "web.key").read_bytes()
    code, _, err = run(capsys, "new", str(keydir / "web.key"))
    assert code == 1 and "already exists" in err
    assert (keydir / "web.key").read_bytes() == before
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    code, _, err = run(capsys, "new", str(shared / "web.key"))
    assert code == 1 and "writable by others" in err
    assert not (shared / "web.key").exists()
    code, _, err = run(capsys, "new", str(tmp_path / "nodir" / "web.key"))
    assert code == 1 and "create it first" in err


def test_rotate_then_retire(keydir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = keydir / "web.key"
    run(capsys, "new", str(key))
    old = key.read_bytes()
    code, out, _ = run(capsys, "rotate", str(key))
    successor = keydir / "web.key.next"
    new = successor.read_bytes()
    assert code == 0 and new != old and mode(successor) == 0o600
    assert fingerprint(new) in out and f"guestfence keys retire {key}" in out
    code, _, err = run(capsys, "rotate", str(key))  # a rotation is already under way
    assert code == 1 and "already exists" in err and successor.read_bytes() == new
    inode = successor.stat().st_ino
    code, out, _ = run(capsys, "retire", str(key))
    assert code == 0 and key.read_bytes() == new and not successor.exists()
    assert key.stat().st_ino == inode  # renamed into place, never rewritten
    assert f"retired {fingerprint(old)}" in out
    code, _, err = run(capsys, "retire", str(key))
    assert code == 1 and "nothing to retire" in err


def test_retire_refuses_an_insecure_successor(keydir: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    key = keydir / "web.key"
    run(capsys, "new", str(key))
    old = key.read_bytes()
    run(capsys, "rotate", str(key), "--successor", str(keydir / "web.new"))
    (keydir / "web.new").chmod(0o644)
    code, _, err = run(capsys, "retire", str(key), "--successor", str(keydir / "web.new"))
    assert code == 1 and "0600" in err and key.read_bytes() == old


def test_fingerprint(keydir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = keydir / "web.key"
    run(capsys, "new", str(key))
    code, out, _ = run(capsys, "fingerprint", str(key))
    assert code == 0 and out == f"{fingerprint(key.read_bytes())}  {key}\n"
    code, _, err = run(capsys, "fingerprint", str(keydir / "missing.key"))
    assert code == 1 and "missing.key" in err
