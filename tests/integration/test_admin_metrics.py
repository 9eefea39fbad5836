"""Day-2 operations on a running guestfenced: ``guestfence status`` over the root-only admin
socket, the Prometheus endpoint (parsed with prometheus-client's own parser), JSON logs.

Our daemon runs on libvirt's test driver in a private namespace; the Debian C
``fence_xvm`` makes the requests over multicast on the namespace's ``lo``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from guestfence.host.keys import fingerprint
from guestfence.lab.netns import Namespace
from guestfence.lab.ourdaemon import OurDaemon, daemon_config_text, venv_tool
from guestfence.lab.testdriver import default_guests, node_uri, write_node_xml
from guestfence.virt.wire import read_key

pytestmark = pytest.mark.integration

C_FENCE_XVM = "/usr/sbin/fence_xvm"
METRICS_PORT = 9229
NOBODY = 65534


def day2_config(tmp_path: Path, key: Path, admin_socket: Path) -> Path:
    write_node_xml(tmp_path / "node.xml", default_guests(count=3))
    text = daemon_config_text(str(key), [node_uri(tmp_path / "node.xml")])
    settings = (f'\tadmin_socket = "{admin_socket}";\n\tmetrics_port = "{METRICS_PORT}";\n'
                '\tlog_format = "json";\n')
    text = text.replace("fence_virtd {\n", "fence_virtd {\n" + settings, 1)
    conf = tmp_path / "gf.conf"
    conf.write_text(text)
    return conf


def status(socket_path: Path, *extra: str, as_user: int | None = None
           ) -> subprocess.CompletedProcess[str]:
    argv = [venv_tool("guestfence"), "status", "--socket", str(socket_path), *extra]
    if as_user is not None:
        argv = ["setpriv", f"--reuid={as_user}", f"--regid={as_user}", "--clear-groups", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def scrape(ns: Namespace) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The metrics, fetched over HTTP inside the namespace and parsed by prometheus-client."""
    fetch = ("import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
             f"'http://127.0.0.1:{METRICS_PORT}/metrics', timeout=10).read().decode())")
    r = ns.run([sys.executable, "-c", fetch], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.stdout) for s in family.samples}


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory that a non-root user can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="gft-admin-"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_status_metrics_and_json_logs_show_the_requests_made(
        netns: Namespace, tmp_path: Path, tmp_key: Path) -> None:
    admin_socket = tmp_path / "run" / "admin.sock"
    conf = day2_config(tmp_path, tmp_key, admin_socket)
    wrong_key = tmp_path / "wrong.key"
    wrong_key.write_bytes(os.urandom(4096))
    wrong_key.chmod(0o600)

    def xvm(key: Path, *args: str) -> tuple[int, str]:
        r = netns.run([C_FENCE_XVM, "-k", str(key), *args], capture_output=True, text=True,
                      timeout=60)
        return r.returncode, r.stdout.strip()

    with OurDaemon(conf, namespace=netns) as daemon:
        assert xvm(tmp_key, "-o", "status", "-H", "guest1") == (0, "Status: ON")
        assert xvm(tmp_key, "-o", "off", "-H", "guest2")[0] == 0
        assert xvm(tmp_key, "-o", "status", "-H", "guest2") == (2, "Status: OFF")
        assert xvm(tmp_key, "-o", "list")[0] == 0
        # signed with a key the daemon does not have: dropped, counted, never answered
        assert xvm(wrong_key, "-o", "status", "-H", "guest1", "-t", "2")[0] != 0
        daemon.wait_for_log('"reason":"auth"', timeout=30)

        r = status(admin_socket, "--json")
        assert r.returncode == 0, r.stderr
        shown = json.loads(r.stdout)
        table = status(admin_socket)
        metrics = scrape(netns)
        log_lines = daemon.log_text().splitlines()

    requests = [(q["action"], q["target"], q["outcome"]) for q in shown["requests"]]
    assert requests == [("status", "guest1", "success"), ("off", "guest2", "success"),
                        ("status", "guest2", "off"), ("hostlist", "", "hostlist")]
    assert all(q["listener"] == "multicast" and q["requester"] and q["duration_ms"] >= 0
               for q in shown["requests"])
    assert shown["requests_total"] == 4
    assert {g["name"]: g["state"] for g in shown["guests"]} == {
        "guest1": "running", "guest2": "shutoff", "guest3": "running"}
    assert all(g["host"] for g in shown["guests"])
    assert [k["fingerprint"] for k in shown["keys"]] == [fingerprint(read_key(str(tmp_key)))]
    assert shown["listeners"][0]["type"] == "multicast"
    assert shown["listeners"][0]["port"] == 1229
    assert shown["backend"]["healthy"] is True
    assert shown["daemon"]["config"] == str(conf)
    assert shown["daemon"]["metrics"] == f"http://127.0.0.1:{METRICS_PORT}/metrics"
    assert table.returncode == 0, table.stderr
    assert "Last requests" in table.stdout and "guest2" in table.stdout

    def value(name: str, **labels: str) -> float:
        return metrics[(name, tuple(sorted(labels.items())))]

    assert value("guestfence_requests_total", action="status", outcome="success",
                 cluster="") == 1
    assert value("guestfence_requests_total", action="off", outcome="success", cluster="") == 1
    assert value("guestfence_requests_total", action="status", outcome="off", cluster="") == 1
    assert value("guestfence_requests_total", action="hostlist", outcome="hostlist",
                 cluster="") == 1
    assert sum(v for (name, _), v in metrics.items()
               if name == "guestfence_requests_total") == 4
    assert value("guestfence_request_duration_seconds_count", action="status") == 2
    auth_drops = value("guestfence_dropped_total", reason="auth")
    assert auth_drops >= 1
    assert value("guestfence_auth_failures_total", stage="request") == auth_drops
    assert value("guestfence_backend_up") == 1

    records = [json.loads(line) for line in log_lines if line.startswith("{")]
    assert len(records) >= len(log_lines) - 2, "every daemon log line is JSON"
    served = [r for r in records if r.get("event") == "request"]
    assert [(r["action"], r["target"], r["outcome"]) for r in served] == requests
    assert all({"timestamp", "level", "logger", "message", "listener", "requester", "seqno",
                "cluster", "duration_ms"} <= set(r) for r in served)
    key_hex = read_key(str(tmp_key))[:32].hex()
    assert not any(key_hex in line for line in log_lines)


def test_the_admin_socket_refuses_a_non_root_user(
        netns: Namespace, tmp_path: Path, tmp_key: Path, open_dir: Path) -> None:
    # the file layer: mode 0600 (and, in a directory guestfenced creates, 0700)
    private_socket = tmp_path / "private" / "admin.sock"
    conf = day2_config(tmp_path, tmp_key, private_socket)
    with OurDaemon(conf, namespace=netns):
        assert private_socket.stat().st_mode & 0o777 == 0o600
        assert private_socket.parent.stat().st_mode & 0o777 == 0o700
        refused = status(private_socket, as_user=NOBODY)
        assert status(private_socket, "--json").returncode == 0  # root is answered
    assert refused.returncode == 1
    assert "permission denied" in refused.stderr and "root only" in refused.stderr
    assert "Traceback" not in refused.stderr

    # the credentials layer: even through a socket someone made world-writable
    exposed_socket = open_dir / "admin.sock"
    conf = day2_config(tmp_path, tmp_key, exposed_socket)
    with OurDaemon(conf, namespace=netns) as daemon:
        exposed_socket.chmod(0o666)
        refused = status(exposed_socket, as_user=NOBODY)
        line = daemon.wait_for_log("admin socket: refused", timeout=30)
    assert refused.returncode == 1
    assert "answers only root" in refused.stderr and f"uid {NOBODY}" in refused.stderr
    assert f"of uid {NOBODY}" in json.loads(line)["message"]


def test_status_says_when_the_daemon_is_not_running(
        netns: Namespace, tmp_path: Path, tmp_key: Path) -> None:
    admin_socket = tmp_path / "run" / "admin.sock"
    conf = day2_config(tmp_path, tmp_key, admin_socket)
    with OurDaemon(conf, namespace=netns):
        assert admin_socket.exists()
    assert not admin_socket.exists(), "the daemon removes its socket when it stops"
    r = status(admin_socket)
    assert r.returncode == 1
    assert "guestfenced is not running" in r.stderr
