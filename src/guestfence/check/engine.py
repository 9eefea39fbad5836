"""Running every rule over a topology, and the host-loss analysis, into one Report."""

from __future__ import annotations

from guestfence.check.impact import host_loss_impacts
from guestfence.check.model import Finding, Report, Topology
from guestfence.check.rules import RULES

SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


def run_checks(topology: Topology) -> Report:
    """Every rule's findings and every host's loss impact.

    Findings are sorted by cluster in topology order (findings about hosts or
    the whole topology, without a cluster, come last), then by severity (error,
    warning, info), then by rule id; a rule's findings keep their own order.
    """
    findings = [f for rule in RULES for f in rule.check(topology)]
    position: dict[str, int] = {}
    for i, c in enumerate(topology.clusters):
        position.setdefault(c.name, i)
    last = len(topology.clusters)

    def key(f: Finding) -> tuple[int, int, str]:
        where = position.get(f.cluster, last) if f.cluster is not None else last
        return where, SEVERITY_ORDER[f.severity], f.rule

    findings.sort(key=key)
    return Report(topology, tuple(findings), host_loss_impacts(topology))
