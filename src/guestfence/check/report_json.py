"""`guestfence check --format json`: the report as one JSON document with stable field names.

The document (``schema_version`` 1) is an object with these fields; a field is
never left out, an unknown value is ``null``::

    schema_version   1; raised only when a field changes meaning or disappears
                     (new fields may be added without raising it)
    verdict          {supportable: bool, errors: int, warnings: int, infos: int}
                     supportable is true when there is no finding of severity error
    findings         list of
                       {rule:     stable rule id, e.g. "KVM-HOST-VERSION"
                        severity: "error" | "warning" | "info"
                        seed:     the sentence of the seed document the rule comes from
                        found:    what was found, with names
                        fix:      what to change
                        cluster:  guest cluster name, or null (a host or general finding)
                        hosts:    [host name, ...]   as named by the rule
                        guests:   [guest name, ...]  as named by the rule
                        origin:   {source: file or live source, line: int | null} | null}
                     sorted by severity (error, warning, info), then rule, cluster,
                     hosts, guests, found
    impacts          list of (one per host whose loss was analysed, sorted by host)
                       {host:                 host name
                        clusters:             list of, sorted by cluster
                          {cluster:       guest cluster name
                           members_lost:  [guest name, ...] (sorted)
                           members_left:  int
                           members_total: int
                           quorum_kept:   bool (a strict majority of the members survives)}
                        other_guests_lost:    [guest name, ...] (sorted)
                        memory_commit_after:  float | null  demand / capacity of the
                        vcpu_commit_after:    float | null  remaining hosts after restart
                                              (rounded to 4 places; null when unknown)}
    topology         {sources:  [what was read, ...] (in reading order)
                      hosts:    [{name, hypervisor: "kvm"|"xen"|"vmware"|"rhev"|"hyperv"|null,
                                  version: "RHEL 6.2"|null, cpus: int|null,
                                  memory_mib: int|null, host_cluster: str|null}, ...]
                      clusters: [{name, members: [{name, host: str|null}, ...]}, ...]
                      other_guests: [{name, host: str|null}, ...]}
                     hosts, clusters, members and other guests in declaration order
                     (the order of the topology file); host null is a bare-metal member

Output is deterministic: the same report gives the same bytes (keys in the
order above, two-space indentation, non-ASCII characters kept as they are).

The helpers below (severity order, grouping, verdict wording) are shared by the
text and HTML renderers so that the three formats agree.
"""

from __future__ import annotations

import json
import math
from typing import Any

from guestfence.check.model import (
    ClusterImpact,
    Finding,
    Guest,
    Host,
    HostLossImpact,
    Origin,
    Report,
    Severity,
)

SCHEMA_VERSION = 1

SEVERITIES: tuple[Severity, ...] = ("error", "warning", "info")
_RANK: dict[str, int] = {s: i for i, s in enumerate(SEVERITIES)}


def severity_rank(severity: str) -> int:
    return _RANK.get(severity, len(SEVERITIES))


def finding_key(f: Finding) -> tuple[int, str, str, tuple[str, ...], tuple[str, ...], str, str]:
    return (severity_rank(f.severity), f.rule, f.cluster or "", f.hosts, f.guests, f.found,
            str(f.origin or ""))


def sorted_findings(findings: tuple[Finding, ...] | list[Finding]) -> list[Finding]:
    return sorted(findings, key=finding_key)


def count(report: Report, severity: Severity) -> int:
    return sum(f.severity == severity for f in report.findings)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def verdict_text(report: Report) -> str:
    """'supportable' or 'NOT supportable: 2 errors, 1 warning'."""
    if report.supportable:
        return "supportable"
    return (f"NOT supportable: {plural(report.errors, 'error')}, "
            f"{plural(count(report, 'warning'), 'warning')}")


def group_findings(report: Report) -> list[tuple[str | None, list[Finding]]]:
    """Findings per guest cluster (topology order, then unknown names sorted), then the
    findings without a cluster (key None); each group sorted by severity then rule."""
    groups: dict[str | None, list[Finding]] = {}
    for f in sorted_findings(report.findings):
        groups.setdefault(f.cluster, []).append(f)
    order: list[str | None] = [c.name for c in report.topology.clusters if c.name in groups]
    order += sorted(k for k in groups if k is not None and k not in order)
    if None in groups:
        order.append(None)
    return [(k, groups[k]) for k in order]


def ratio(value: float | None) -> float | None:
    """A commitment ratio fit for JSON: rounded, null when unknown or not finite."""
    if value is None or not math.isfinite(value):
        return None
    return round(value, 4)


def _origin(o: Origin | None) -> dict[str, Any] | None:
    return None if o is None else {"source": o.source, "line": o.line}


def _finding(f: Finding) -> dict[str, Any]:
    return {
        "rule": f.rule,
        "severity": f.severity,
        "seed": f.seed,
        "found": f.found,
        "fix": f.fix,
        "cluster": f.cluster,
        "hosts": list(f.hosts),
        "guests": list(f.guests),
        "origin": _origin(f.origin),
    }


def _cluster_impact(c: ClusterImpact) -> dict[str, Any]:
    return {
        "cluster": c.cluster,
        "members_lost": sorted(c.members_lost),
        "members_left": c.members_left,
        "members_total": c.members_total,
        "quorum_kept": c.quorum_kept,
    }


def _impact(i: HostLossImpact) -> dict[str, Any]:
    return {
        "host": i.host,
        "clusters": [_cluster_impact(c) for c in sorted(i.clusters, key=lambda c: c.cluster)],
        "other_guests_lost": sorted(i.other_guests_lost),
        "memory_commit_after": ratio(i.memory_commit_after),
        "vcpu_commit_after": ratio(i.vcpu_commit_after),
    }


def _host(h: Host) -> dict[str, Any]:
    return {
        "name": h.name,
        "hypervisor": h.hypervisor,
        "version": str(h.version) if h.version is not None else None,
        "cpus": h.cpus,
        "memory_mib": h.memory_mib,
        "host_cluster": h.host_cluster,
    }


def _guest(g: Guest) -> dict[str, Any]:
    return {"name": g.name, "host": g.host}


def report_document(report: Report) -> dict[str, Any]:
    """The JSON document as Python data (see the module docstring)."""
    topo = report.topology
    return {
        "schema_version": SCHEMA_VERSION,
        "verdict": {
            "supportable": report.supportable,
            "errors": report.errors,
            "warnings": count(report, "warning"),
            "infos": count(report, "info"),
        },
        "findings": [_finding(f) for f in sorted_findings(report.findings)],
        "impacts": [_impact(i) for i in sorted(report.impacts, key=lambda i: i.host)],
        "topology": {
            "sources": list(topo.sources),
            "hosts": [_host(h) for h in topo.hosts],
            "clusters": [{"name": c.name, "members": [_guest(m) for m in c.members]}
                         for c in topo.clusters],
            "other_guests": [_guest(g) for g in topo.other_guests],
        },
    }


def render_json(report: Report) -> str:
    """The report as a JSON document (no trailing newline)."""
    return json.dumps(report_document(report), indent=2, ensure_ascii=False, allow_nan=False)
