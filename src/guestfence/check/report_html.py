"""`guestfence check --format html`: the report as one self-contained HTML page.

The page needs nothing but itself: the CSS is inline, there is no script, no
font, image or other external resource. Every name and sentence from the
topology or the rules is HTML-escaped (in text and in attributes alike); the
only things that reach the stylesheet are class names and colours we generate.

Sections, top to bottom:

* header: what was read, the verdict, counts per severity;
* placement map: one column per host (name, hypervisor and version, host
  cluster, vCPU and memory commitment bars), the guests as boxes inside it,
  coloured per guest cluster (other guests grey), bare-metal members in a
  column of their own; every host or guest a finding names carries a badge
  with the rule id, coloured by severity, whose hover title has the text. A
  legend maps colours to clusters and carries the badges of findings that name
  a cluster but no host or guest. Cluster colours come from a hue wheel (golden
  angle steps), so any number of clusters get distinct hues; each box also
  names its cluster, so nothing depends on colour alone. The map scrolls
  sideways; beyond ``MAP_HOST_LIMIT`` hosts it draws the first ones and says so
  (the tables below still list everything);
* findings, grouped by cluster, then "hosts / general";
* what losing each host does: per cluster members lost and quorum, other
  guests down, commitment of the remaining hosts.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from guestfence.check.model import (
    ClusterImpact,
    Finding,
    Guest,
    GuestCluster,
    Host,
    Report,
)
from guestfence.check.report_json import (
    count,
    group_findings,
    plural,
    severity_rank,
    sorted_findings,
    verdict_text,
)

MAP_HOST_LIMIT = 200
GOLDEN_ANGLE = 137.508
FIRST_HUE = 205.0
RED_BAND = (340.0, 20.0)  # hues kept for errors: from 340 round through 0 to 20


def esc(value: object) -> str:
    """Text for HTML content and (double-quoted) attribute values."""
    return html.escape(str(value), quote=True)


def cluster_hues(n: int) -> list[float]:
    """n hues, golden-angle steps round the wheel, skipping the reds kept for errors."""
    hues: list[float] = []
    k = 0
    while len(hues) < n:
        hue = (FIRST_HUE + k * GOLDEN_ANGLE) % 360
        k += 1
        if RED_BAND[1] < hue < RED_BAND[0]:
            hues.append(hue)
    return hues


def _cluster_css(n: int) -> str:
    """One class per cluster: a light tint and a strong edge; each round of the wheel a
    little lighter or darker, so that clusters whose hues end up close still differ."""
    rules = []
    for i, hue in enumerate(cluster_hues(n)):
        bg, edge = [(90, 36), (82, 28), (95, 46)][(i // 9) % 3]
        rules.append(f".c{i}{{--bg:hsl({hue:.1f} 70% {bg}%);--edge:hsl({hue:.1f} 65% {edge}%)}}")
    return "\n".join(rules)


CSS = """
*{box-sizing:border-box}
body{margin:0;padding:20px 24px 40px;font:14px/1.4 system-ui,"DejaVu Sans","Liberation Sans",
 Arial,sans-serif;color:#1f2328;background:#f6f7f9}
h1{font-size:22px;margin:0}
h2{font-size:17px;margin:28px 0 10px;padding-bottom:4px;border-bottom:1px solid #d0d7de}
h3{font-size:15px;margin:18px 0 6px;display:flex;align-items:center;gap:8px}
header{display:flex;flex-wrap:wrap;align-items:center;gap:10px 24px}
.sub{color:#57606a;font-size:13px;width:100%;margin:0}
.verdict{font-weight:700;font-size:16px;padding:6px 14px;border-radius:6px;color:#fff}
.verdict.ok{background:#1a7f37}.verdict.bad{background:#cf222e}
.counts{display:flex;gap:8px}
.count{padding:3px 10px;border-radius:12px;font-size:13px;font-weight:600;background:#eaeef2}
.count.error{background:#ffebe9;color:#a40e26}.count.warning{background:#fff8c5;color:#7d4e00}
.count.info{background:#ddf4ff;color:#0550ae}
.legend{display:flex;flex-wrap:wrap;gap:6px 16px;margin:0 0 10px;padding:0;list-style:none}
.legend li{display:flex;align-items:center;gap:6px;font-size:13px}
.ln{color:#57606a}
.sw{display:inline-block;width:16px;height:16px;border-radius:4px;flex:none;
 background:var(--bg);border:2px solid var(--edge)}
.sw.other{--bg:#eceef1;--edge:#8c959f}.sw.bare{--bg:#fff;--edge:#57606a;border-style:dashed}
.note{color:#57606a;font-size:13px;margin:4px 0 8px}
.map{display:flex;gap:12px;align-items:flex-start;overflow-x:auto;padding:2px 2px 12px}
.host{flex:1 0 220px;max-width:340px;background:#fff;border:1px solid #d0d7de;
 border-radius:8px;padding:10px}
.host.bare{background:#fafbfc;border-style:dashed}
.host.error{border-color:#cf222e;box-shadow:0 0 0 1px #cf222e}
.hname{font-weight:700;font-size:16px;overflow-wrap:anywhere}
.hmeta{color:#57606a;font-size:12px;margin-bottom:6px;overflow-wrap:anywhere}
.res{font-size:12px;margin:4px 0}
.res .lbl{display:flex;justify-content:space-between;color:#424a53}
.bar{height:7px;background:#eaeef2;border-radius:4px;overflow:hidden;margin-top:2px}
.bar i{display:block;height:100%;border-radius:4px}
.bar.unknown{background:repeating-linear-gradient(45deg,#eaeef2 0 4px,#d8dee4 4px 8px)}
.lv0{background:#2da44e}.lv1{background:#d4a72c}.lv2{background:#cf222e}
.guests{display:flex;flex-direction:column;gap:6px;margin-top:8px}
.guest{background:var(--bg,#eceef1);border-left:5px solid var(--edge,#8c959f);
 border-radius:5px;padding:5px 8px}
.guest.error{outline:2px solid #cf222e;outline-offset:-1px}
.gname{font-weight:600;overflow-wrap:anywhere}
.gmeta{font-size:12px;color:#424a53;overflow-wrap:anywhere}
.empty{color:#8c959f;font-size:12px;font-style:italic}
.badges{display:flex;flex-wrap:wrap;gap:3px;margin-top:3px}
.badge{display:inline-block;font-size:11px;font-weight:700;line-height:16px;padding:0 6px;
 border-radius:8px;color:#fff;cursor:help;white-space:nowrap}
.badge.error{background:#cf222e}.badge.warning{background:#bf8700}.badge.info{background:#0969da}
table{border-collapse:collapse;width:100%;min-width:760px;table-layout:fixed;background:#fff;
 border:1px solid #d0d7de}
th,td{text-align:left;vertical-align:top;padding:6px 10px;border-bottom:1px solid #eaeef2}
th{background:#f6f8fa;font-size:13px}
td{overflow-wrap:anywhere}
td.rule{font-weight:600;white-space:nowrap}
td.where{font:12px ui-monospace,"DejaVu Sans Mono",monospace;color:#57606a}
td.num,th.num{text-align:right;white-space:nowrap}
.seed,.names{display:block;font-size:12px;color:#57606a;margin-top:3px}
.seed{font-style:italic;font-weight:400;white-space:normal}
.sev{font-weight:700;white-space:nowrap}.sev.error{color:#cf222e}.sev.warning{color:#9a6700}.sev.info{color:#0969da}
.ci{display:flex;align-items:center;gap:6px}
.kept{color:#1a7f37}.lost{color:#cf222e;font-weight:700}
.lv-t0{color:#1a7f37}.lv-t1{color:#9a6700;font-weight:600}.lv-t2{color:#cf222e;font-weight:700}
.scroll{overflow-x:auto}
footer{margin-top:30px;color:#8c959f;font-size:12px}
"""


FINDING_COLS = ('<colgroup><col style="width:84px"><col style="width:23%"><col>'
                '<col style="width:24%"><col style="width:19%"></colgroup>')
IMPACT_COLS = ('<colgroup><col style="width:16%"><col><col style="width:22%">'
               '<col style="width:120px"><col style="width:120px"></colgroup>')


@dataclass
class _Marks:
    """Findings named per host, per guest and per cluster (cluster-only findings)."""

    hosts: dict[str, list[Finding]] = field(default_factory=dict)
    guests: dict[str, list[Finding]] = field(default_factory=dict)
    clusters: dict[str, list[Finding]] = field(default_factory=dict)


def _marks(findings: Iterable[Finding]) -> _Marks:
    m = _Marks()
    for f in findings:
        for h in dict.fromkeys(f.hosts):
            m.hosts.setdefault(h, []).append(f)
        for g in dict.fromkeys(f.guests):
            m.guests.setdefault(g, []).append(f)
        if f.cluster is not None and not f.hosts and not f.guests:
            m.clusters.setdefault(f.cluster, []).append(f)
    return m


def _finding_title(f: Finding) -> str:
    lines = [f"{f.severity} {f.rule}", f"found: {f.found}", f"fix: {f.fix}"]
    if f.origin is not None:
        lines.append(f"at {f.origin}")
    return "\n".join(lines)


def _badges(findings: list[Finding] | None) -> str:
    """One badge per rule (the worst severity of its findings), titles joined."""
    if not findings:
        return ""
    by_rule: dict[str, list[Finding]] = {}
    for f in sorted_findings(findings):
        by_rule.setdefault(f.rule, []).append(f)
    rules = sorted(by_rule, key=lambda r: (min(severity_rank(f.severity) for f in by_rule[r]), r))
    out = []
    for rule in rules:
        fs = by_rule[rule]
        sev = min((f.severity for f in fs), key=severity_rank)
        title = "\n\n".join(_finding_title(f) for f in fs)
        out.append(f'<span class="badge {esc(sev)}" title="{esc(title)}">{esc(rule)}</span>')
    return '<div class="badges">' + "".join(out) + "</div>"


def _worst(findings: list[Finding] | None) -> str:
    return "error" if findings and any(f.severity == "error" for f in findings) else ""


def fmt_mib(mib: float) -> str:
    if mib >= 1024:
        return f"{mib / 1024:.1f}".removesuffix(".0") + " GiB"
    return f"{mib:.0f} MiB"


def _level(ratio: float, warn: float, bad: float) -> int:
    return 2 if ratio > bad else 1 if ratio > warn else 0


def fmt_count(n: float) -> str:
    return f"{n:.0f}"


def _resource(label: str, used: float, unknown: int, capacity: float | None,
              show: Callable[[float], str], warn: float, bad: float) -> str:
    demand = ("≥ " if unknown else "") + show(used)
    note = f" ({plural(unknown, 'guest')} unknown)" if unknown else ""
    if capacity is None or capacity <= 0:
        return (f'<div class="res" title="capacity unknown{esc(note)}"><div class="lbl">'
                f"<span>{esc(label)}</span><span>{esc(demand)} / ?</span></div>"
                '<div class="bar unknown"></div></div>')
    ratio = used / capacity
    width = min(ratio, 1.0) * 100
    return (f'<div class="res" title="{esc(f"{ratio:.0%} committed{note}")}"><div class="lbl">'
            f"<span>{esc(label)}</span><span>{esc(demand)} / {esc(show(capacity))} "
            f'<b class="lv-t{_level(ratio, warn, bad)}">{ratio:.0%}</b></span></div>'
            f'<div class="bar"><i class="lv{_level(ratio, warn, bad)}" '
            f'style="width:{width:.1f}%"></i></div></div>')


class _Page:
    def __init__(self, report: Report) -> None:
        self.report = report
        self.topo = report.topology
        self.index = {c.name: i for i, c in enumerate(self.topo.clusters)}
        self.member_of: dict[str, GuestCluster] = {}
        for c in self.topo.clusters:
            for m in c.members:
                self.member_of.setdefault(m.name, c)
        self.marks = _marks(report.findings)

    # ------------------------------------------------------------------ pieces

    def swatch(self, cluster: str | None) -> str:
        if cluster is None or cluster not in self.index:
            return '<span class="sw other"></span>'
        return f'<span class="sw c{self.index[cluster]}"></span>'

    def header(self) -> str:
        r, topo = self.report, self.topo
        ok = r.supportable
        members = sum(len(c.members) for c in topo.clusters)
        bare = sum(m.bare_metal for c in topo.clusters for m in c.members)
        summary = (f"{plural(len(topo.hosts), 'host')} · "
                   f"{plural(len(topo.clusters), 'guest cluster')} "
                   f"({plural(members, 'member')}{f', {bare} bare metal' if bare else ''}) · "
                   f"{plural(len(topo.other_guests), 'other guest')}")
        read = f"read from {', '.join(topo.sources)} · " if topo.sources else ""
        counts = "".join(
            f'<span class="count {s}">{esc(plural(count(r, s), s))}</span>'
            for s in ("error", "warning", "info"))
        return (f"<header><h1>guestfence check</h1>"
                f'<div class="verdict {"ok" if ok else "bad"}" id="verdict">'
                f"{esc(verdict_text(r))}</div>"
                f'<div class="counts">{counts}</div>'
                f'<p class="sub">{esc(read + summary)}</p></header>')

    def legend(self) -> str:
        items = []
        for c in self.topo.clusters:
            hosts = c.hosts()
            bare = sum(m.bare_metal for m in c.members)
            where = plural(len(hosts), "host") + (f", {bare} bare metal" if bare else "")
            items.append(f"<li>{self.swatch(c.name)}<b>{esc(c.name)}</b>"
                         f"<span class=\"ln\">{esc(plural(len(c.members), 'member'))} on "
                         f"{esc(where)}</span>{_badges(self.marks.clusters.get(c.name))}</li>")
        for name in sorted(n for n in self.marks.clusters if n not in self.index):
            items.append(f"<li>{self.swatch(None)}<b>{esc(name)}</b><span class=\"ln\">"
                         f"(not in the topology)</span>{_badges(self.marks.clusters[name])}</li>")
        if self.topo.other_guests:
            items.append('<li><span class="sw other"></span>other guests</li>')
        if any(m.bare_metal for c in self.topo.clusters for m in c.members):
            items.append('<li><span class="sw bare"></span>bare-metal members</li>')
        return '<ul class="legend">' + "".join(items) + "</ul>"

    def guest_box(self, g: Guest) -> str:
        cluster = self.member_of.get(g.name)
        cls = f" c{self.index[cluster.name]}" if cluster is not None else ""
        found = self.marks.guests.get(g.name)
        meta = [cluster.name if cluster is not None else "other guest"]
        if g.vcpus is not None:
            meta.append(f"{g.vcpus} vCPU")
        if g.memory_mib is not None:
            meta.append(fmt_mib(g.memory_mib))
        os_ = g.os or (cluster.os if cluster is not None else None)
        if os_ is not None:
            meta.append(str(os_))
        return (f'<div class="guest{cls} {_worst(found)}"><div class="gname">{esc(g.name)}</div>'
                f'<div class="gmeta">{esc(" · ".join(meta))}</div>{_badges(found)}</div>')

    def host_column(self, name: str, host: Host | None, guests: list[Guest]) -> str:
        found = self.marks.hosts.get(name)
        if host is None:
            meta = "not declared under hosts:"
        else:
            parts = []
            if host.hypervisor is not None:
                parts.append(host.hypervisor.upper() if host.hypervisor in ("kvm", "xen", "rhev")
                             else {"vmware": "VMware", "hyperv": "Hyper-V"}.get(host.hypervisor,
                                                                                host.hypervisor))
            if host.version is not None:
                parts.append(str(host.version))
            if host.host_cluster is not None:
                parts.append(f"host cluster {host.host_cluster}")
            meta = " · ".join(parts) or "hypervisor unknown"
        vcpus = sum(g.vcpus or 0 for g in guests)
        mem = sum(g.memory_mib or 0 for g in guests)
        res = (_resource("vCPU", vcpus, sum(g.vcpus is None for g in guests),
                         host.cpus if host else None, fmt_count, 1.0, 2.0)
               + _resource("memory", mem, sum(g.memory_mib is None for g in guests),
                           host.memory_mib if host else None, fmt_mib, 0.85, 1.0))
        boxes = "".join(self.guest_box(g) for g in guests) or '<div class="empty">no guests</div>'
        return (f'<div class="host {_worst(found)}"><div class="hname">{esc(name)}</div>'
                f'<div class="hmeta">{esc(meta)}</div>{_badges(found)}{res}'
                f'<div class="guests">{boxes}</div></div>')

    def placement(self) -> str:
        topo = self.topo
        names = [h.name for h in topo.hosts]
        declared = set(names)
        everyone = [m for c in topo.clusters for m in c.members] + list(topo.other_guests)
        on: dict[str, list[Guest]] = {}
        for g in everyone:
            if g.host is not None:
                on.setdefault(g.host, []).append(g)
        names += sorted(h for h in on if h not in declared)
        shown = names[:MAP_HOST_LIMIT]
        cols = [self.host_column(n, topo.host(n) if n in declared else None, on.get(n, []))
                for n in shown]
        bare = [m for m in everyone if m.bare_metal]
        if bare:
            boxes = "".join(self.guest_box(g) for g in bare)
            cols.append('<div class="host bare"><div class="hname">bare metal</div>'
                        '<div class="hmeta">cluster members on physical machines</div>'
                        f'<div class="guests">{boxes}</div></div>')
        note = ""
        if len(names) > len(shown):
            note = (f'<p class="note">The map shows the first {len(shown)} of {len(names)} '
                    "hosts; the tables below cover them all.</p>")
        elif len(names) > 5:
            note = '<p class="note">Scroll sideways to see every host.</p>'
        return ('<section id="placement"><h2>Placement</h2>' + self.legend() + note
                + '<div class="map">' + "".join(cols) + "</div></section>")

    def findings(self) -> str:
        groups = group_findings(self.report)
        if not groups:
            return '<section id="findings"><h2>Findings</h2><p>No findings.</p></section>'
        parts = ['<section id="findings"><h2>Findings</h2>']
        for cluster, fs in groups:
            title = (f"{self.swatch(cluster)}cluster {esc(cluster)}" if cluster is not None
                     else "hosts / general")
            rows = []
            for f in fs:
                names = ", ".join([*f.hosts, *f.guests])
                found = esc(f.found) + (f'<span class="names">{esc("on " + names)}</span>'
                                        if names else "")
                rows.append(
                    f'<tr><td class="sev {esc(f.severity)}">{esc(f.severity)}</td>'
                    f'<td class="rule">{esc(f.rule)}<span class="seed">{esc(f.seed)}</span></td>'
                    f"<td>{found}</td><td>{esc(f.fix)}</td>"
                    f'<td class="where">{esc(f.origin or "")}</td></tr>')
            parts.append(f"<h3>{title}</h3><div class=\"scroll\"><table>{FINDING_COLS}<thead><tr>"
                         "<th>severity</th><th>rule</th><th>found</th><th>fix</th>"
                         "<th>where</th></tr></thead><tbody>" + "".join(rows)
                         + "</tbody></table></div>")
        parts.append("</section>")
        return "".join(parts)

    def cluster_impacts(self, impacts: tuple[ClusterImpact, ...]) -> str:
        shown = [c for c in sorted(impacts, key=lambda c: c.cluster)
                 if c.members_lost or not c.quorum_kept]
        if not shown:
            return '<span class="empty">no cluster member</span>'
        out = []
        for c in shown:
            q = ('<span class="kept">quorum kept</span>' if c.quorum_kept
                 else '<span class="lost">quorum LOST</span>')
            lost = ", ".join(c.members_lost)
            out.append(f'<div class="ci" title="{esc("lost: " + lost)}">{self.swatch(c.cluster)}'
                       f"<b>{esc(c.cluster)}</b> lost {len(c.members_lost)}/{c.members_total}, "
                       f"{q}</div>")
        return "".join(out)

    def impacts(self) -> str:
        if not self.report.impacts:
            return ""
        order = {h.name: n for n, h in enumerate(self.topo.hosts)}
        rows = []
        for i in sorted(self.report.impacts, key=lambda i: (order.get(i.host, len(order)),
                                                            i.host)):
            others = ", ".join(sorted(i.other_guests_lost)) or "—"
            rows.append(f'<tr><td class="rule">{esc(i.host)}</td>'
                        f"<td>{self.cluster_impacts(i.clusters)}</td><td>{esc(others)}</td>"
                        f"{_ratio_cell(i.memory_commit_after, 0.85, 1.0)}"
                        f"{_ratio_cell(i.vcpu_commit_after, 1.0, 2.0)}</tr>")
        return ('<section id="impacts"><h2>If a host is lost</h2><p class="note">Memory and '
                "vCPU: what the remaining hosts would carry once the lost host's guests are "
                'restarted on them.</p><div class="scroll"><table>' + IMPACT_COLS
                + "<thead><tr><th>host lost</th><th>guest clusters</th><th>other guests down</th>"
                '<th class="num">memory after</th><th class="num">vCPU after</th></tr></thead>'
                "<tbody>" + "".join(rows)
                + "</tbody></table></div></section>")

    def page(self) -> str:
        title = f"guestfence check: {verdict_text(self.report)}"
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                '<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{esc(title)}</title><style>{CSS}{_cluster_css(len(self.index))}"
                "</style></head><body>\n" + self.header() + "\n" + self.placement() + "\n"
                + self.findings() + "\n" + self.impacts() + "\n"
                + "<footer>guestfence check report</footer></body></html>\n")


def _ratio_cell(value: float | None, warn: float, bad: float) -> str:
    if value is None or math.isnan(value):
        return '<td class="num"><span class="empty">unknown</span></td>'
    if math.isinf(value):
        return '<td class="num"><span class="lv-t2">no capacity left</span></td>'
    return f'<td class="num"><span class="lv-t{_level(value, warn, bad)}">{value:.0%}</span></td>'


def render_html(report: Report) -> str:
    """The report as one self-contained HTML document."""
    return _Page(report).page()
