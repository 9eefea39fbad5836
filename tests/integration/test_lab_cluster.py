"""lab.cluster: corosync (+ pacemaker) in network namespaces, the way other tests use it.

The cluster's own tools are the judges: corosync-cmapctl/quorumtool for the
membership, crm_mon for pacemaker.  A killed node must drop out of the
membership and come back after restart_node; stop() must leave no process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from guestfence.lab.cluster import Cluster, pids_in_mount_ns
from guestfence.lab.netns import Lan
from guestfence.lab.ourdaemon import venv_tool

pytestmark = pytest.mark.integration

NODES = ["node1", "node2", "node3"]


def test_corosync_membership_follows_a_killed_node(lan: Callable[..., Lan],
                                                   tmp_path: Path) -> None:
    net = lan(NODES, subnet="10.231.41")
    with Cluster(tmp_path / "cluster", net.hosts, pacemaker=False) as cluster:
        quorum = cluster.node("node1").run(["corosync-quorumtool", "-s"])
        assert quorum.returncode == 0, quorum.stderr
        assert "Quorate:          Yes" in quorum.stdout
        for node in cluster.nodes():
            assert node.run(["hostname"]).stdout.strip() == node.name
            assert node.corosync_members() == {1, 2, 3}
        holders = [n.holder_pid for n in cluster.nodes()]

        cluster.node("node3").kill_stack()
        assert not cluster.node("node3").corosync_running()
        cluster.wait_membership(["node1", "node2"], 30)
        cluster.restart_node("node3")
        assert cluster.node("node2").corosync_members() == {1, 2, 3}
    for holder in holders:
        assert holder is not None and not pids_in_mount_ns(holder)


def test_pacemaker_starts_fast_with_private_agents(lan: Callable[..., Lan],
                                                   tmp_path: Path) -> None:
    net = lan(NODES, subnet="10.231.42")
    ours = venv_tool("fence_xvm")
    host_view = os.path.realpath("/usr/sbin/fence_xvm")
    cluster = Cluster(tmp_path / "cluster", net.hosts, agents={"fence_xvm": ours})
    with cluster:
        online, dc, quorate = cluster.node("node2").pacemaker_view()
        assert online == set(NODES) and dc in NODES and quorate
        inside = cluster.node("node1").run(["readlink", "-f", "/usr/sbin/fence_xvm"])
        assert inside.stdout.strip() == os.path.realpath(ours)
        # the rest of /usr/sbin is still the machine's (pacemaker itself runs from it)
        assert cluster.node("node1").run(["/usr/sbin/crm_node", "-n"]).stdout.strip() == "node1"
        # the fencer sees our agent under its usual name (only ours has a manpage action;
        # the C fence_xvm 4.12.1 of the machine does not)
        meta = cluster.node("node1").run(["stonith_admin", "--metadata", "-a", "fence_xvm"])
        assert meta.returncode == 0 and 'action name="manpage"' in meta.stdout, meta.stdout
    assert os.path.realpath("/usr/sbin/fence_xvm") == host_view  # the machine is untouched
