"""Host-loss analysis: quorum per cluster, other guests lost, commitment of the remaining hosts."""

from __future__ import annotations

import pytest

from guestfence.check.impact import host_loss_impacts, quorum_kept
from guestfence.check.loader import parse_topology
from guestfence.check.model import HostLossImpact


def _topology(placement: tuple[str, ...], hosts: str = "", guests: str = "") -> str:
    members = "".join(f"      - {{name: m{i}, host: {h}, vcpus: 2, memory: 4GiB}}\n"
                      for i, h in enumerate(placement, 1))
    return (
        "hosts:\n"
        + (hosts or "".join(f"  - {{name: h{i}, cpus: 8, memory: 16GiB}}\n" for i in (1, 2, 3)))
        + "clusters:\n  - name: c\n    fence_agents: [fence_xvm]\n    members:\n" + members
        + (f"guests:\n{guests}" if guests else "")
    )


def impacts(placement: tuple[str, ...], hosts: str = "", guests: str = "",
            ) -> dict[str, HostLossImpact]:
    t = parse_topology(_topology(placement, hosts, guests))
    return {i.host: i for i in host_loss_impacts(t)}


def test_three_nodes_on_three_hosts_keep_quorum_on_any_loss() -> None:
    result = impacts(("h1", "h2", "h3"))
    assert list(result) == ["h1", "h2", "h3"]
    for host, impact in result.items():
        (c,) = impact.clusters
        assert c.cluster == "c" and c.quorum_kept
        assert (c.members_left, c.members_total) == (2, 3)
        assert c.members_lost == (f"m{host[1]}",)


def test_two_members_on_one_host_lose_quorum_with_it() -> None:
    result = impacts(("h1", "h1", "h2"))
    (c1,) = result["h1"].clusters
    assert c1.members_lost == ("m1", "m2") and c1.members_left == 1 and not c1.quorum_kept
    (c2,) = result["h2"].clusters
    assert c2.quorum_kept
    assert result["h3"].clusters == ()


@pytest.mark.parametrize(("left", "total", "kept"),
                         [(2, 3, True), (1, 3, False), (1, 2, False), (2, 4, False),
                          (3, 5, True), (0, 1, False)])
def test_quorum_is_a_strict_majority(left: int, total: int, kept: bool) -> None:
    assert quorum_kept(left, total) is kept


def test_commitment_after_a_loss() -> None:
    hosts = ("  - {name: h1, cpus: 4, memory: 8GiB}\n"
             "  - {name: h2, cpus: 4, memory: 8GiB}\n"
             "  - {name: h3, cpus: 8, memory: 16GiB}\n")
    guests = "  - {name: o1, host: h3, vcpus: 2, memory: 4GiB}\n"
    result = impacts(("h1", "h2", "h3"), hosts, guests)
    # demand: 4 guests, 16 GiB and 8 vCPUs, restarted on what remains
    assert result["h3"].memory_commit_after == pytest.approx(16 / 16)
    assert result["h3"].vcpu_commit_after == pytest.approx(8 / 8)
    assert result["h1"].memory_commit_after == pytest.approx(16 / 24)
    assert result["h1"].vcpu_commit_after == pytest.approx(8 / 12)
    assert result["h3"].other_guests_lost == ("o1",)
    assert result["h1"].other_guests_lost == ()


def test_unknown_capacity_gives_none() -> None:
    hosts = ("  - {name: h1, cpus: 4, memory: 8GiB}\n"
             "  - {name: h2, cpus: 4}\n"
             "  - {name: h3, memory: 16GiB}\n")
    result = impacts(("h1", "h2", "h3"), hosts)
    assert result["h1"].memory_commit_after is None  # h2's memory is unknown
    assert result["h2"].memory_commit_after == pytest.approx(12 / 24)  # h2 is the one lost
    assert result["h3"].vcpu_commit_after == pytest.approx(6 / 8)
    assert result["h1"].vcpu_commit_after is None


def test_unknown_demand_gives_none() -> None:
    result = impacts(("h1", "h2", "h3"), guests="  - {name: o1, host: h1}\n")
    assert all(i.memory_commit_after is None and i.vcpu_commit_after is None
               for i in result.values())


def test_a_lone_host_leaves_nothing_to_restart_on() -> None:
    result = impacts(("h1",), hosts="  - {name: h1, cpus: 8, memory: 16GiB}\n")
    assert result["h1"].memory_commit_after is None
    assert not result["h1"].clusters[0].quorum_kept


def test_bare_metal_members_count_for_quorum() -> None:
    text = _topology(("h1", "h1")) + "      - {name: metal, bare_metal: true}\n"
    (c,) = {i.host: i for i in host_loss_impacts(parse_topology(text))}["h1"].clusters
    assert (c.members_left, c.members_total, c.quorum_kept) == (1, 3, False)
