"""`guestfence check` on a terminal: findings per cluster, what losing a host does, a verdict.

Layout, top to bottom:

* a one-line summary of what was checked;
* one table of findings per guest cluster, then one for findings that name no
  cluster ("hosts / general"): severity, rule, found, fix, where (file:line);
* the host-loss table: per host, what its loss does to each guest cluster
  ("web lost 1/3, quorum kept"), which other guests go down, and the memory and
  vCPU commitment of the remaining hosts once its guests are restarted there;
* the verdict: "supportable" or "NOT supportable: N errors, M warnings".

Colour is the console's business: a ``rich.console.Console`` writing to a file
or pipe emits no escape codes unless it was created with ``force_terminal``.
Nothing depends on colour alone (severities are words, a lost quorum says so).
Below 100 columns the "where" column folds into the "found" cell, so that the
text columns stay readable at 80. Every name from the topology is printed as
text, never interpreted as rich markup.
"""

from __future__ import annotations

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from guestfence.check.model import ClusterImpact, Finding, HostLossImpact, Report
from guestfence.check.report_json import count, group_findings, plural, verdict_text

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "blue"}
NARROW = 100  # below this width the "where" column moves under "found"


def _summary(report: Report) -> Text:
    topo = report.topology
    members = sum(len(c.members) for c in topo.clusters)
    bare = sum(m.bare_metal for c in topo.clusters for m in c.members)
    parts = [plural(len(topo.hosts), "host"), plural(len(topo.clusters), "guest cluster")
             + f" ({plural(members, 'member')}" + (f", {bare} bare metal" if bare else "") + ")",
             plural(len(topo.other_guests), "other guest")]
    text = Text("guestfence check: ", style="bold")
    text.append(", ".join(parts), style="")
    if topo.sources:
        text.append("\nread from " + ", ".join(topo.sources), style="dim")
    return text


def _where(f: Finding) -> str:
    return str(f.origin) if f.origin is not None else ""


def _title(text: str) -> Text:
    return Text(text, style="bold underline")


def _findings_table(findings: list[Finding], rule_width: int, where_width: int) -> Table:
    """Wide layout: one row per finding, five columns."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, expand=True,
                  header_style="bold")
    table.add_column("severity", no_wrap=True, min_width=8)
    table.add_column("rule", no_wrap=True, overflow="fold", min_width=rule_width)
    table.add_column("found", ratio=1, overflow="fold")
    table.add_column("fix", ratio=1, overflow="fold")
    table.add_column("where", overflow="fold", min_width=where_width, max_width=where_width)
    for f in findings:
        table.add_row(Text(f.severity, style=SEVERITY_STYLE.get(f.severity, "")),
                      Text(f.rule, style="bold"), Text(f.found), Text(f.fix),
                      Text(_where(f), style="dim"))
    return table


def _findings_blocks(findings: list[Finding]) -> Table:
    """Narrow layout: severity, then rule and place on one line, found and fix below."""
    table = Table.grid(padding=(0, 1), expand=True)
    table.add_column("severity", no_wrap=True, min_width=8)
    table.add_column("finding", ratio=1, overflow="fold")
    for n, f in enumerate(findings):
        head = Text(f.rule, style="bold")
        if f.origin is not None:
            head.append("  " + _where(f), style="dim")
        detail = Table.grid(padding=(0, 1), expand=True)
        detail.add_column(no_wrap=True)
        detail.add_column(ratio=1, overflow="fold")
        detail.add_row(Text("found", style="bold"), Text(f.found))
        detail.add_row(Text("fix", style="bold"), Text(f.fix))
        parts: list[Text | Table] = [head, detail]
        if n < len(findings) - 1:
            parts.append(Text(""))
        table.add_row(Text(f.severity, style=SEVERITY_STYLE.get(f.severity, "")), Group(*parts))
    return table


def _cluster_cell(impacts: tuple[ClusterImpact, ...]) -> Text:
    text = Text()
    shown = [c for c in sorted(impacts, key=lambda c: c.cluster)
             if c.members_lost or not c.quorum_kept]
    for i, c in enumerate(shown):
        if i:
            text.append("\n")
        text.append(c.cluster, style="bold")
        text.append(f" lost {len(c.members_lost)}/{c.members_total}, ")
        if c.quorum_kept:
            text.append("quorum kept", style="green")
        else:
            text.append("quorum LOST", style="bold red")
    if not shown:
        text.append("no cluster member", style="dim")
    return text


def _commit(value: float | None, warn: float, bad: float) -> Text:
    if value is None:
        return Text("?", style="dim")
    style = "bold red" if value > bad else "yellow" if value > warn else "green"
    return Text(f"{value:.0%}", style=style)


def _impact_table(impacts: list[HostLossImpact], width: int) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    cells = [_cluster_cell(i.clusters) for i in impacts]
    longest = max((len(line) for c in cells for line in c.plain.splitlines()), default=0)
    table.add_column("host lost", overflow="fold", max_width=max(12, width // 5))
    table.add_column("guest clusters", overflow="fold", min_width=min(longest, width // 2))
    table.add_column("other guests down", overflow="fold")
    table.add_column("memory", justify="right", no_wrap=True)
    table.add_column("vCPU", justify="right", no_wrap=True)
    for i, clusters in zip(impacts, cells, strict=True):
        others = Text(", ".join(sorted(i.other_guests_lost)) if i.other_guests_lost else "-",
                      style="" if i.other_guests_lost else "dim")
        table.add_row(Text(i.host, style="bold"), clusters, others,
                      _commit(i.memory_commit_after, 0.85, 1.0),
                      _commit(i.vcpu_commit_after, 1.0, 2.0))
    return table


def render_text(report: Report, console: Console) -> None:
    """Print the report on ``console`` (colours only if the console has them)."""
    width = console.width
    console.print(_summary(report))
    console.print()
    groups = group_findings(report)
    if not groups:
        console.print(Text("no findings", style="green"))
        console.print()
    rule_width = max((len(f.rule) for f in report.findings), default=4)
    where_width = min(max((len(_where(f)) for f in report.findings), default=5), width // 3)
    for cluster, findings in groups:
        console.print(_title(f"cluster {cluster}" if cluster is not None else "hosts / general"))
        if width < NARROW:
            console.print(_findings_blocks(findings))
        else:
            console.print(_findings_table(findings, rule_width, max(where_width, 5)))
        console.print()
    if report.impacts:
        order = {h.name: n for n, h in enumerate(report.topology.hosts)}
        impacts = sorted(report.impacts, key=lambda i: (order.get(i.host, len(order)), i.host))
        console.print(_title("if a host is lost"))
        console.print(Text("memory, vCPU: commitment of the other hosts once its guests "
                           "are restarted there", style="dim"))
        console.print(_impact_table(impacts, width))
        console.print()
    verdict = Text(verdict_text(report), style="bold green" if report.supportable else "bold red")
    if report.supportable:
        rest = [plural(count(report, "warning"), "warning"), plural(count(report, "info"), "info")]
        verdict.append(" (" + ", ".join(rest) + ")", style="")
    console.print(Text("verdict: ", style="bold") + verdict)
