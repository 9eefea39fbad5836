"""Our fence_xvm / fence_virt next to the installed C agents: same metadata and help,
valid against fence-agents' schema, bounded in time, and safe to run in parallel."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from lxml import etree

from guestfence.lab.netns import Namespace
from guestfence.lab.ourdaemon import OurDaemon, daemon_config_text, venv_tool
from guestfence.lab.testdriver import default_guests, node_uri, write_node_xml

pytestmark = pytest.mark.integration

METADATA_RNG = Path("/usr/share/cluster/relaxng/metadata.rng")


def output(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL).stdout


@pytest.mark.parametrize("agent", ["fence_xvm", "fence_virt"])
def test_metadata_matches_the_c_agent(agent: str) -> None:
    theirs = etree.fromstring(output([f"/usr/sbin/{agent}", "-o", "metadata"]).encode())
    ours = etree.fromstring(output([venv_tool(agent), "-o", "metadata"]).encode())
    assert etree.tostring(ours.find("parameters")) == etree.tostring(theirs.find("parameters"))
    their_actions = [a.get("name") for a in theirs.find("actions")]
    our_actions = [a.get("name") for a in ours.find("actions")]
    assert our_actions[: len(their_actions)] == their_actions
    assert set(our_actions) - set(their_actions) == {"manpage"}


@pytest.mark.parametrize("agent", ["fence_xvm", "fence_virt"])
def test_metadata_validates_against_fence_agents_schema(agent: str) -> None:
    assert METADATA_RNG.exists(), "fence-agents' metadata.rng is missing: apt-get install " \
        "fence-agents"
    schema = etree.RelaxNG(etree.parse(str(METADATA_RNG)))
    doc = etree.fromstring(output([venv_tool(agent), "-o", "metadata"]).encode())
    assert schema.validate(doc), schema.error_log


@pytest.mark.parametrize("agent", ["fence_xvm", "fence_virt"])
def test_help_matches_the_c_agent(agent: str) -> None:
    # the C agent echoes argv[0] as invoked ("usage: /usr/sbin/fence_xvm [args]")
    theirs = output([f"/usr/sbin/{agent}", "-h"]).replace(f"/usr/sbin/{agent}", agent, 1)
    assert output([venv_tool(agent), "-h"]) == theirs


@pytest.mark.parametrize(("timeout", "retrans"), [("1", "50"), ("2", "7"), ("1", "1")])
def test_total_time_is_bounded(netns: Namespace, tmp_key: Path, timeout: str,
                               retrans: str) -> None:
    """The C client loops forever when timeout*10 < retrans; ours stops at the timeout."""
    t0 = time.monotonic()
    r = netns.run([venv_tool("fence_xvm"), "-k", str(tmp_key), "-o", "status", "-H", "x",
                   "-t", timeout, "-r", retrans], capture_output=True, text=True, timeout=20)
    took = time.monotonic() - t0
    assert r.returncode == 1
    assert "Timed out waiting for response" in r.stderr
    assert took < int(timeout) + 1.0, took


def test_twenty_parallel_clients_all_succeed(netns: Namespace, tmp_path: Path,
                                             tmp_key: Path) -> None:
    """The C client binds port 1229, so parallel runs collide; ours use ephemeral ports."""
    write_node_xml(tmp_path / "node.xml", default_guests(count=3))
    conf = tmp_path / "gf.conf"
    conf.write_text(daemon_config_text(str(tmp_key), [node_uri(tmp_path / "node.xml")]))
    with OurDaemon(conf, namespace=netns):
        procs = [netns.popen([venv_tool("fence_xvm"), "-k", str(tmp_key), "-o", "status",
                              "-H", f"guest{1 + i % 3}"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for i in range(20)]
        results = [(p.wait(timeout=30), p.stdout.read().strip() if p.stdout else "")
                   for p in procs]
        for p in procs:
            for stream in (p.stdout, p.stderr):
                if stream:
                    stream.close()
    assert results == [(0, "Status: ON")] * 20
