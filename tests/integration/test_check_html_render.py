"""The HTML report in a real browser: headless Chromium renders it to a screenshot and a DOM.

The report is for a realistic site: three KVM hosts, two guest clusters (one
with a bare-metal member), other guests, and findings of every severity.
Chromium runs in its own session with a private profile, HOME and config
directory under one temporary directory; whatever happens, every process
started from it is killed and the directory removed.

Running this file directly regenerates the screenshot used by the docs:

    .venv/bin/python tests/integration/test_check_html_render.py docs/images/check-report.png \
        1560 1280     # [HEIGHT [WIDTH]]: the docs image shows the whole report
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from guestfence.check.engine import run_checks
from guestfence.check.loader import parse_topology
from guestfence.check.model import Report
from guestfence.check.report_html import render_html
from guestfence.check.report_json import verdict_text

pytestmark = pytest.mark.integration

CHROMIUM = "chromium"  # the Debian package and its command
TIMEOUT = 20.0  # seconds for one Chromium run
WINDOW = (1400, 900)

SITE = """\
hosts:
  - {name: kvm-a, hypervisor: kvm, version: RHEL 6.2, cpus: 16, memory: 64GiB,
     host_cluster: rack1, fence_virtd: true}
  - {name: kvm-b, hypervisor: kvm, version: RHEL 6.2, cpus: 16, memory: 64GiB,
     host_cluster: rack1, fence_virtd: true}
  - {name: kvm-c, hypervisor: kvm, version: RHEL 6.1, cpus: 8, memory: 32GiB,
     host_cluster: rack1, fence_virtd: false}
clusters:
  - name: web
    os: RHEL 6.2
    fence_agents: [fence_xvm]
    fence_virtd_mode: host-cluster
    members:
      - {name: web1, host: kvm-a, vcpus: 2, memory: 4GiB}
      - {name: web2, host: kvm-b, vcpus: 2, memory: 4GiB}
      - {name: web3, host: kvm-c, vcpus: 2, memory: 4GiB}
  - name: db
    os: RHEL 6.2
    fence_agents: [fence_xvm, fence_scsi]
    storage:
      - iscsi: iscsi://192.0.2.10:3260/iqn.2026-11.org.example:db/0
        persistent_reservations: true
        preempt_and_abort: false
    members:
      - {name: db1, host: kvm-a, vcpus: 4, memory: 16GiB}
      - {name: db2, host: kvm-a, vcpus: 4, memory: 16GiB}
      - {name: db-quorum, bare_metal: true}
guests:
  - {name: build, host: kvm-b, vcpus: 8, memory: 16GiB}
  - {name: monitoring, host: kvm-c, vcpus: 2, memory: 4GiB}
"""


def site_report() -> Report:
    """The engine's real verdict on a site with problems of every severity."""
    return run_checks(parse_topology(SITE, "site/topology.yaml"))


class _Text(HTMLParser):
    def __init__(self, page: str) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.feed(page)

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def _strays(marker: str) -> list[int]:
    """Live processes whose command line names our private directory (Chromium's helpers,
    such as crashpad, leave its session)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


def _kill(proc: subprocess.Popen[bytes], scratch: Path) -> None:
    """Kill Chromium's process group and any helper still naming ``scratch``; reap."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for _ in range(20):
        pids = _strays(str(scratch))
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def chromium_render(page: Path, png: Path, window: tuple[int, int] = WINDOW) -> str:
    """Screenshot ``page`` into ``png`` with headless Chromium; return the rendered DOM."""
    exe = shutil.which(CHROMIUM)
    if exe is None:
        pytest.fail(f"the HTML report test needs headless Chromium: apt-get install {CHROMIUM} "
                    "(make test-deps installs it)", pytrace=False)
    scratch = Path(tempfile.mkdtemp(prefix="guestfence-chromium-"))
    try:
        env = {**os.environ, "HOME": str(scratch), "XDG_CONFIG_HOME": str(scratch / "config"),
               "XDG_CACHE_HOME": str(scratch / "cache")}
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync",
               f"--user-data-dir={scratch / 'profile'}", f"--screenshot={png}",
               f"--window-size={window[0]},{window[1]}", "--dump-dom", page.resolve().as_uri()]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            _kill(proc, scratch)
            pytest.fail(f"chromium did not finish within {TIMEOUT:.0f} s", pytrace=False)
        finally:
            _kill(proc, scratch)
        if proc.returncode != 0:
            tail = err.decode(errors="replace")[-2000:]
            pytest.fail(f"chromium exited with {proc.returncode}:\n{tail}", pytrace=False)
        return out.decode("utf-8", errors="replace")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", "not a PNG file"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_html_report_renders_in_chromium(tmp_path: Path) -> None:
    report = site_report()
    assert {f.severity for f in report.findings} == {"error", "warning", "info"}
    page = tmp_path / "report.html"
    page.write_text(render_html(report), encoding="utf-8")
    png = tmp_path / "report.png"
    started = time.monotonic()
    dom = chromium_render(page, png)
    assert time.monotonic() - started < 30

    assert png.is_file(), "chromium wrote no screenshot"
    assert png_size(png) == WINDOW
    # a blank 1400x900 page compresses to a few kB; the report is far busier
    assert png.stat().st_size > 40_000, f"screenshot suspiciously small: {png.stat().st_size} B"

    assert "<body" in dom and "</html>" in dom
    text = "\n".join(_Text(dom).parts)
    assert verdict_text(report) == "NOT supportable: 5 errors, 2 warnings"
    assert verdict_text(report) in text
    for host in report.topology.hosts:
        assert host.name in text
    for cluster in report.topology.clusters:
        for member in cluster.members:
            assert member.name in text
    for guest in report.topology.other_guests:
        assert guest.name in text
    for finding in report.findings:
        assert finding.rule in text
    assert "bare metal" in text and "quorum LOST" in text


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images/check-report.png")
    height = int(sys.argv[2]) if len(sys.argv) > 2 else WINDOW[1]
    width = int(sys.argv[3]) if len(sys.argv) > 3 else WINDOW[0]
    with tempfile.TemporaryDirectory() as tmp:
        html_file = Path(tmp) / "report.html"
        html_file.write_text(render_html(site_report()), encoding="utf-8")
        target.parent.mkdir(parents=True, exist_ok=True)
        chromium_render(html_file, target, (width, height))
    print(f"wrote {target} {png_size(target)}")
