"""A configuration written by `guestfenced --configure` from piped answers is one the
daemon serves with: the Debian C fence_virt lists the guests through it."""

from __future__ import annotations

import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from guestfence.host.config import load_config
from guestfence.host.main import build_parser
from guestfence.lab.cfence import run_c_client
from guestfence.lab.ourdaemon import OurDaemon
from guestfence.lab.testdriver import default_guests, node_uri, write_node_xml

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def configure(conf: Path, answers: list[str], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guestfence.host.main", "--configure", "-f", str(conf), *extra],
        input="".join(f"{a}\n" for a in answers), capture_output=True, text=True, timeout=60)


def test_configured_daemon_serves_the_c_fence_virt(tmp_path: Path) -> None:
    node = tmp_path / "node.xml"
    write_node_xml(node, default_guests(count=2))
    conf, key, port = tmp_path / "fence_virt.conf", tmp_path / "keys" / "xvm.key", free_port()
    answers = ["tcp", "127.0.0.1", str(port), str(key), "libvirt", node_uri(node),
               "y",   # replace the file
               "y"]   # create the key
    r = configure(conf, answers)
    assert r.returncode == 0, r.stdout + r.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.stat().st_size == 4096
    written = conf.read_text()

    # run again without questions: same settings, the old file kept
    r = configure(conf, [], "--defaults")
    assert r.returncode == 0, r.stdout + r.stderr
    assert conf.read_text() == written and (tmp_path / "fence_virt.conf.bak").exists()
    assert load_config(str(conf)).listener.port == port  # type: ignore[union-attr]

    options = {o for a in build_parser()._actions for o in a.option_strings}
    extra = ["--admin-socket", str(tmp_path / "admin.sock")] if "--admin-socket" in options \
        else []
    daemon = OurDaemon(conf, pidfile=tmp_path / "gf.pid", extra_args=extra)
    try:
        daemon.start(timeout=60)
        listed = run_c_client(None, ["fence_virt", "-T", "127.0.0.1", "-p", str(port),
                                     "-k", str(key), "-o", "list"])
        assert listed.returncode == 0, listed.stderr + daemon.log_text()
        assert len(listed.stdout.splitlines()) == 2, listed.stdout
    finally:
        daemon.stop()
