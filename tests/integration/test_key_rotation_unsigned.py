"""Key rotation on an old-style single-key config whose requests are unsigned.

``hash = "none"; auth = "sha256";``: the request block carries no signature, so
only the challenge/response proves the key. The Debian C fence_xvm (``-c none
-C sha256``) in a guest namespace talks to our guestfenced in a host namespace
(libvirt's test driver). After ``guestfence keys rotate`` and ``retire`` the
guest with the old key must no longer fence, and the new key must work, with
no restart of the daemon.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from guestfence.lab.cfence import write_key
from guestfence.lab.netns import Lan
from guestfence.lab.ourdaemon import OurDaemon, venv_tool
from guestfence.lab.testdriver import Guest, write_node_xml

pytestmark = pytest.mark.integration

C_FENCE_XVM = "/usr/sbin/fence_xvm"
RELOAD_LINE = "keys reloaded"


def test_a_retired_key_stops_working_for_unsigned_requests(lan: Callable[..., Lan],
                                                           tmp_path: Path) -> None:
    assert Path(C_FENCE_XVM).exists(), f"missing {C_FENCE_XVM} (Debian package fence-virt)"
    net = lan(["h", "g"])
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    key = write_key(keys / "fence_xvm.key")
    old_copy = tmp_path / "guest-old.key"
    shutil.copy(key, old_copy)
    old_copy.chmod(0o600)
    uri = write_node_xml(tmp_path / "node.xml",
                         [Guest(name="web1", uuid="11111111-1111-1111-1111-000000000001")])
    conf = tmp_path / "guestfenced.conf"
    conf.write_text(f"""
fence_virtd {{ listener = "multicast"; backend = "libvirt"; }}
listeners {{ multicast {{ interface = "eth0"; key_file = "{key}";
                         hash = "none"; auth = "sha256"; }} }}
backends {{ libvirt {{ uri = "{uri}"; }} }}
""")
    conf.chmod(0o600)

    def fence_xvm(guest_key: Path, *args: str, timeout: int = 6
                  ) -> subprocess.CompletedProcess[str]:
        return net["g"].run([C_FENCE_XVM, "-k", str(guest_key), "-c", "none", "-C", "sha256",
                             "-t", str(timeout), *args], capture_output=True, text=True,
                            timeout=timeout + 20)

    def keys_cli(*args: str) -> None:
        r = subprocess.run([venv_tool("guestfence"), "keys", *args], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 0, r.stderr

    daemon = OurDaemon(conf, namespace=net["h"], debug=1).start()
    try:
        def wait_reload(before: int) -> None:
            deadline = time.monotonic() + 10.0
            while daemon.log_text().count(RELOAD_LINE) <= before:
                assert time.monotonic() < deadline, f"no key reload:\n{daemon.log_text()}"
                time.sleep(0.02)

        r = fence_xvm(old_copy, "-o", "status", "-H", "web1")
        assert (r.returncode, r.stdout.strip()) == (0, "Status: ON"), r.stdout + r.stderr

        before = daemon.log_text().count(RELOAD_LINE)
        keys_cli("rotate", str(key))
        wait_reload(before)
        new_copy = tmp_path / "guest-new.key"
        shutil.copy(keys / "fence_xvm.key.next", new_copy)
        new_copy.chmod(0o600)
        before = daemon.log_text().count(RELOAD_LINE)
        keys_cli("retire", str(key))
        wait_reload(before)
        pid = daemon.proc.pid if daemon.proc else None

        r = fence_xvm(old_copy, "-o", "off", "-H", "web1", timeout=4)
        assert r.returncode != 0, "the retired key still fenced: " + r.stdout + r.stderr
        r = fence_xvm(new_copy, "-o", "status", "-H", "web1")
        assert (r.returncode, r.stdout.strip()) == (0, "Status: ON"), \
            "the new key does not work (or the old one fenced): " + r.stdout + r.stderr
        r = fence_xvm(new_copy, "-o", "off", "-H", "web1")
        assert r.returncode == 0, r.stdout + r.stderr
        assert daemon.proc is not None and daemon.proc.pid == pid and daemon.proc.poll() is None
    finally:
        daemon.stop()
