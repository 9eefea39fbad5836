"""`guestfence check` as an operator runs it: exit codes, formats, live discovery."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from guestfence.lab.ourdaemon import venv_tool
from guestfence.lab.testdriver import Guest, node_uri, write_node_xml

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "topology.yaml"

BROKEN = """\
hosts:
  - {name: kvm1, hypervisor: kvm, version: RHEL 6.2, cpus: 8, memory: 16GiB, fence_virtd: true}
  - {name: kvm2, hypervisor: kvm, version: RHEL 6.2, cpus: 8, memory: 16GiB, fence_virtd: true}
clusters:
  - name: app
    os: RHEL 6.2
    fence_agents: [fence_xvm]
    members:
      - {name: app1, host: kvm1, vcpus: 2, memory: 2GiB}
      - {name: app2, host: kvm1, vcpus: 2, memory: 2GiB}
"""


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([venv_tool("guestfence"), "check", *args], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_supportable_layout_exits_0() -> None:
    r = check(str(EXAMPLE))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verdict: supportable" in r.stdout


def test_errors_exit_1_with_json_for_machines(tmp_path: Path) -> None:
    topo = tmp_path / "broken.yaml"
    topo.write_text(BROKEN)
    r = check(str(topo), "--format", "json")
    assert r.returncode == 1, r.stderr
    data = json.loads(r.stdout)
    assert data["schema_version"] == 1
    assert data["verdict"]["supportable"] is False
    errors = [f for f in data["findings"] if f["severity"] == "error"]
    single = [f for f in errors if f["rule"] == "SINGLE-HOST"]
    assert single, errors
    assert "kvm1" in single[0]["found"] and single[0]["hosts"] == ["kvm1"]
    assert single[0]["guests"] == ["app1", "app2"]  # so the HTML map badges each member
    assert all(f["origin"]["source"] == str(topo) for f in errors)


def test_unreadable_input_exits_2_with_file_and_line(tmp_path: Path) -> None:
    topo = tmp_path / "bad.yaml"
    topo.write_text(BROKEN.replace("fence_agents: [fence_xvm]", "fence_agents: [fence_ipmi]"))
    r = check(str(topo))
    assert r.returncode == 2
    assert f"{topo}:7: clusters[0].fence_agents[0]: found 'fence_ipmi'" in r.stderr
    assert "Traceback" not in r.stderr
    assert check().returncode == 2
    assert check(str(tmp_path / "missing.yaml")).returncode == 2


def test_html_report_file(tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    r = check(str(EXAMPLE), "--format", "html", "-o", str(out))
    assert r.returncode == 0, r.stderr
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "web1" in page and "kvm3" in page
    assert check(str(EXAMPLE), "--format", "html").returncode == 2  # html needs -o


def test_live_discovery_one_test_driver_per_host(tmp_path: Path) -> None:
    """Two hosts discovered through libvirt, the cluster named by a small file."""
    for host, guests in (("kvm1", ["app1", "batch"]), ("kvm2", ["app2"])):
        write_node_xml(tmp_path / f"{host}.xml",
                       [Guest(name=g, uuid=f"00000000-0000-0000-0000-{i:012d}", vcpus=2,
                              memory_kib=2 * 1024 * 1024)
                        for i, g in enumerate(guests, start=1 if host == "kvm1" else 5)],
                       cpus=4, memory_kib=8 * 1024 * 1024)
    topo = tmp_path / "cluster.yaml"
    topo.write_text("hosts:\n  - {name: kvm1, version: RHEL 8.6, fence_virtd: true}\n"
                    "  - {name: kvm2, version: RHEL 8.6, fence_virtd: true}\n"
                    "clusters:\n  - name: app\n    os: RHEL 8.6\n"
                    "    fence_agents: [fence_xvm]\n    members:\n"
                    "      - {name: app1, host: kvm1}\n      - {name: app2, host: kvm2}\n")
    r = check(str(topo), "--libvirt", node_uri(tmp_path / "kvm1.xml"),
              "--libvirt", node_uri(tmp_path / "kvm2.xml"), "--format", "json")
    assert r.returncode in (0, 1), r.stderr
    data = json.loads(r.stdout)
    hosts = {h["name"]: h for h in data["topology"]["hosts"]}
    assert hosts["kvm1"]["cpus"] == 4 and hosts["kvm1"]["memory_mib"] == 8192
    assert [g["name"] for g in data["topology"]["other_guests"]] == ["batch"]
    unreachable = check("--libvirt", "test:///nonexistent/node.xml")
    assert unreachable.returncode == 2
    assert "test:///nonexistent/node.xml" in unreachable.stderr
