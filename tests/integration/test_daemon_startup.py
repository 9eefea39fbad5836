"""guestfenced refuses to start on bad input, says exactly why, and leaves nothing behind."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guestfence.lab.netns import Namespace
from guestfence.lab.ourdaemon import daemon_config_text, venv_tool
from guestfence.lab.testdriver import default_guests, node_uri, write_node_xml

pytestmark = pytest.mark.integration


def start(conf: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guestfence.host.main", "-F", "-f", str(conf),
         "-p", str(tmp_path / "gf.pid")],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)


@pytest.fixture
def good_conf(tmp_path: Path, tmp_key: Path) -> Path:
    node = tmp_path / "node.xml"
    write_node_xml(node, default_guests(count=2))
    conf = tmp_path / "gf.conf"
    # tcp on loopback: start-up checks need no namespace
    conf.write_text(daemon_config_text(str(tmp_key), [node_uri(node)], listener="tcp",
                                       port=1299, interface=None))
    return conf


def assert_refused(r: subprocess.CompletedProcess[str], tmp_path: Path, *needles: str) -> None:
    assert r.returncode == 1, r.stderr
    for needle in needles:
        assert needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "gf.pid").exists()


def test_syntax_error_names_file_and_line(good_conf: Path, tmp_path: Path) -> None:
    text = good_conf.read_text().replace('listener = "tcp";', "listener = tcp;")
    good_conf.write_text(text)
    assert_refused(start(good_conf, tmp_path), tmp_path, f"{good_conf}:2:", "quoted")


def test_missing_key_names_path_and_fix(good_conf: Path, tmp_path: Path, tmp_key: Path) -> None:
    tmp_key.unlink()
    assert_refused(start(good_conf, tmp_path), tmp_path, str(tmp_key), "guestfence keygen")


def test_insecure_key_is_refused_not_chmodded(good_conf: Path, tmp_path: Path,
                                              tmp_key: Path) -> None:
    tmp_key.chmod(0o644)
    assert_refused(start(good_conf, tmp_path), tmp_path, "mode 0644", "must be 0600")
    assert tmp_key.stat().st_mode & 0o777 == 0o644


def test_unreachable_backend(good_conf: Path, tmp_path: Path) -> None:
    (tmp_path / "node.xml").unlink()
    assert_refused(start(good_conf, tmp_path), tmp_path, "cannot connect to libvirt at test://")


def test_unknown_interface(tmp_path: Path, tmp_key: Path) -> None:
    write_node_xml(tmp_path / "node.xml", default_guests(count=1))
    conf = tmp_path / "gf.conf"
    conf.write_text(daemon_config_text(str(tmp_key), [node_uri(tmp_path / "node.xml")],
                                       interface="nosuch0"))
    assert_refused(start(conf, tmp_path), tmp_path, "interface 'nosuch0' does not exist")


def test_mutated_configs_never_crash(good_conf: Path, tmp_path: Path) -> None:
    """Random damage to a valid config: either it still works or a clear refusal, never a crash."""
    original = good_conf.read_text()
    rng = random.Random(7)
    tokens = ['"', "{", "}", ";", "=", "#", "\n", "port", '"99999"', '"sha7"', "listener"]
    for _ in range(25):
        text = list(original)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(text))
            if rng.random() < 0.5:
                del text[at]
            else:
                text.insert(at, rng.choice(tokens))
        good_conf.write_text("".join(text))
        try:
            r = subprocess.run(
                [sys.executable, "-m", "guestfence.host.main", "-F", "-f", str(good_conf),
                 "-p", str(tmp_path / "gf.pid")],
                capture_output=True, text=True, timeout=3, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            continue  # the damage left a valid config: the daemon is running fine
        assert r.returncode == 1, r.stderr
        assert "Traceback" not in r.stderr, r.stderr
        # (libvirt's test driver may let libxml2 print a line of its own first)
        assert any(x.startswith("guestfenced: ") for x in r.stderr.splitlines()), r.stderr


def test_daemonises_writes_pidfile_and_refuses_a_second_instance(
        netns: Namespace, tmp_path: Path, tmp_key: Path) -> None:
    write_node_xml(tmp_path / "node.xml", default_guests(count=1))
    conf = tmp_path / "gf.conf"
    conf.write_text(daemon_config_text(str(tmp_key), [node_uri(tmp_path / "node.xml")]))
    pidfile = tmp_path / "gf.pid"
    argv = [sys.executable, "-m", "guestfence.host.main", "-f", str(conf), "-p", str(pidfile)]
    first = netns.run(argv, capture_output=True, text=True, timeout=30)
    assert first.returncode == 0, first.stderr
    deadline = time.monotonic() + 10
    while not pidfile.exists():
        assert time.monotonic() < deadline, "no pid file"
        time.sleep(0.02)
    pid = int(pidfile.read_text())
    try:
        r = netns.run([venv_tool("fence_xvm"), "-k", str(tmp_key), "-o", "status", "-H",
                       "guest1"], capture_output=True, text=True, timeout=30)
        assert (r.returncode, r.stdout.strip()) == (0, "Status: ON")
        second = netns.run(argv, capture_output=True, text=True, timeout=30)
        assert second.returncode == 1
        assert f"already running as pid {pid}" in second.stderr
    finally:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while pidfile.exists():
        assert time.monotonic() < deadline, "pid file not removed on SIGTERM"
        time.sleep(0.02)
