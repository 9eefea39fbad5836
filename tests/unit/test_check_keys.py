"""`guestfence check`: guest clusters sharing hosts, kept apart by per-cluster keys or not."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from guestfence.check.engine import run_checks
from guestfence.check.loader import TopologyError, parse_topology
from guestfence.check.model import Finding, Topology

FP_WEB = "32dd5323bc61a1d7"
FP_DB = "30091d0899cbae0d"


def bindings(web: list[str] | None = None, db: list[str] | None = None,
             fp_db: str = FP_DB) -> list[dict[str, Any]]:
    return [{"cluster": "web", "key": {"fingerprint": f"sha256:{FP_WEB}"},
             "guests": web or ["web*"]},
            {"cluster": "db", "key": {"fingerprint": fp_db}, "guests": db or ["db1", "db2"]}]


def topo(host_bindings: list[dict[str, Any]] | None = None, web_key: Any = None,
         db_key: Any = None) -> Topology:
    hosts = []
    for i in (1, 2, 3):
        h: dict[str, Any] = {"name": f"kvm{i}", "hypervisor": "kvm", "version": "RHEL 6.2",
                             "host_cluster": "hc", "fence_virtd": True}
        if host_bindings is not None:
            h["key_bindings"] = host_bindings
        hosts.append(h)

    def cluster(name: str, key: Any, placement: tuple[str, ...]) -> dict[str, Any]:
        c: dict[str, Any] = {
            "name": name, "os": "RHEL 6.2", "fence_agents": ["fence_xvm"],
            "fence_virtd_mode": "host-cluster",
            "members": [{"name": f"{name}{i}", "host": h} for i, h in enumerate(placement, 1)]}
        if key is not None:
            c["key"] = key
        return c

    doc = {"hosts": hosts, "clusters": [
        cluster("web", web_key if web_key is not None else {"fingerprint": FP_WEB},
                ("kvm1", "kvm2", "kvm3")),
        cluster("db", db_key if db_key is not None else {"fingerprint": FP_DB},
                ("kvm2", "kvm3"))]}
    return parse_topology(yaml.safe_dump(doc, sort_keys=False), "t.yaml")


def findings(t: Topology, rule: str) -> list[Finding]:
    return [f for f in run_checks(t).findings if f.rule == rule]


def test_own_keys_bound_to_own_guests_are_supported() -> None:
    report = run_checks(topo(bindings()))
    assert report.errors == 0, report.findings
    (f,) = [f for f in report.findings if f.rule == "SHARED-HOSTS-KEYS"]
    assert f.severity == "info" and "supported with guestfenced" in f.found
    assert "kvm2 and kvm3" in f.found
    assert "Mixing multiple independent guest clusters" in f.seed


@pytest.mark.parametrize(("host_bindings", "web_key", "reason"), [
    (None, None, "key files are not all stated"),  # no bindings: the seed's limit stands
    (bindings(web=["web*", "db1"]), None, "the key of web may also fence db1 of db"),
    (bindings(fp_db=FP_WEB), None, "host kvm2 binds no key of db matching its stated key"),
    (bindings(), {"fingerprint": FP_DB}, "web and db use the same key"),
    (bindings(), {"file": "/etc/web.key"}, "cannot be compared"),
])
def test_otherwise_the_seed_limit_is_explained(host_bindings: list[dict[str, Any]] | None,
                                               web_key: Any, reason: str) -> None:
    t = topo(host_bindings, web_key=web_key)
    errors = findings(t, "SHARED-HOSTS-XVM")
    assert errors and all(f.severity == "error" for f in errors)
    assert any(reason in f.found for f in errors), [f.found for f in errors]
    assert "its own key bound to its own guests" in errors[0].fix
    assert not findings(t, "SHARED-HOSTS-KEYS")


def test_key_fields_are_checked_with_file_and_line() -> None:
    with pytest.raises(TopologyError, match=r"t.yaml:\d+: clusters\[0\].key.fingerprint: "
                                            r"found 'xyz'; expected 16 or more hex digits"):
        topo(web_key={"fingerprint": "xyz"})
    with pytest.raises(TopologyError, match=r"hosts\[0\].key_bindings\[0\].guests"):
        topo([{"cluster": "web", "key": {"fingerprint": FP_WEB}, "guests": []}])
    with pytest.raises(TopologyError, match=r"clusters\[0\].key: .*expected fingerprint"):
        topo(web_key={})
