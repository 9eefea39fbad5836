"""`guestfence check` reports: the JSON schema and its stability, the terminal text, the HTML page.

Reports are built by hand (the rules are not needed): the example topology,
extended with a second cluster that has a bare-metal member, and findings of
every severity.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import replace
from html.parser import HTMLParser
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from guestfence.check.loader import load_topology
from guestfence.check.model import (
    ClusterImpact,
    Finding,
    Guest,
    GuestCluster,
    Host,
    HostLossImpact,
    Origin,
    Report,
    Topology,
    parse_version,
)
from guestfence.check.report_html import MAP_HOST_LIMIT, RED_BAND, cluster_hues, render_html
from guestfence.check.report_json import SCHEMA_VERSION, render_json, verdict_text
from guestfence.check.report_text import render_text

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "topology.yaml"
ANSI = re.compile(r"\x1b\[")


def example_report(findings: tuple[Finding, ...] | None = None) -> Report:
    topo = load_topology(str(EXAMPLE))
    src = str(EXAMPLE)
    db = GuestCluster(
        name="db", os=parse_version("RHEL 6.1"),
        members=(Guest("db1", "kvm1", 4, 8192, origin=Origin(src, 60)),
                 Guest("db2", "kvm1", 4, 8192, origin=Origin(src, 61)),
                 Guest("db-arbiter", None, origin=Origin(src, 62))),
        origin=Origin(src, 57))
    topo = replace(topo, clusters=(*topo.clusters, db))
    if findings is None:
        findings = (
            Finding("MEMBERS-SAME-HOST", "error", "Members should run on different hosts.",
                    "db1 and db2 both run on kvm1", "move db2 to kvm2 or kvm3", cluster="db",
                    hosts=("kvm1",), guests=("db1", "db2"), origin=Origin(src, 61)),
            Finding("BARE-METAL-FENCING", "warning", "A bare-metal member needs a fence device.",
                    "db-arbiter is bare metal", "add fence_ipmilan for db-arbiter",
                    cluster="db", guests=("db-arbiter",), origin=Origin(src, 62)),
            Finding("ISCSI-PR", "info", "The target supports PREEMPT AND ABORT.",
                    "web's target is guestfence", "nothing", cluster="web",
                    origin=Origin(src, 31)),
            Finding("HOST-MEMORY-COMMIT", "warning", "Hosts restart a failed host's guests.",
                    "kvm2 and kvm3 would need 108% of their memory", "add memory to kvm3",
                    hosts=("kvm2", "kvm3")),
        )
    impacts = (
        HostLossImpact("kvm2", (ClusterImpact("web", ("web2",), 2, 3, True),
                                ClusterImpact("db", (), 3, 3, True)), (), 0.45, 0.5),
        HostLossImpact("kvm1", (ClusterImpact("web", ("web1",), 2, 3, True),
                                ClusterImpact("db", ("db2", "db1"), 1, 3, False)),
                       ("build",), 1.0833333, None),
        HostLossImpact("kvm3", (ClusterImpact("web", ("web3",), 2, 3, True),), (), 0.39, 0.4),
    )
    return Report(topo, findings, impacts)


def text_of(report: Report, width: int = 120, **console: bool) -> str:
    out = io.StringIO()
    render_text(report, Console(file=out, width=width, **console))  # type: ignore[arg-type]
    return out.getvalue()


# ---------------------------------------------------------------------------- JSON


def test_json_top_level_and_verdict() -> None:
    doc = json.loads(render_json(example_report()))
    assert list(doc) == ["schema_version", "verdict", "findings", "impacts", "topology"]
    assert doc["schema_version"] == SCHEMA_VERSION == 1
    assert doc["verdict"] == {"supportable": False, "errors": 1, "warnings": 2, "infos": 1}


def test_json_findings_fields_and_order() -> None:
    doc = json.loads(render_json(example_report()))
    first = doc["findings"][0]
    assert first == {
        "rule": "MEMBERS-SAME-HOST", "severity": "error",
        "seed": "Members should run on different hosts.",
        "found": "db1 and db2 both run on kvm1", "fix": "move db2 to kvm2 or kvm3",
        "cluster": "db", "hosts": ["kvm1"], "guests": ["db1", "db2"],
        "origin": {"source": str(EXAMPLE), "line": 61},
    }
    assert [(f["severity"], f["rule"]) for f in doc["findings"]] == [
        ("error", "MEMBERS-SAME-HOST"), ("warning", "BARE-METAL-FENCING"),
        ("warning", "HOST-MEMORY-COMMIT"), ("info", "ISCSI-PR")]
    general = doc["findings"][2]
    assert general["cluster"] is None and general["origin"] is None


def test_json_impacts_sorted_and_rounded() -> None:
    doc = json.loads(render_json(example_report()))
    assert [i["host"] for i in doc["impacts"]] == ["kvm1", "kvm2", "kvm3"]
    kvm1 = doc["impacts"][0]
    assert kvm1 == {
        "host": "kvm1",
        "clusters": [
            {"cluster": "db", "members_lost": ["db1", "db2"], "members_left": 1,
             "members_total": 3, "quorum_kept": False},
            {"cluster": "web", "members_lost": ["web1"], "members_left": 2,
             "members_total": 3, "quorum_kept": True},
        ],
        "other_guests_lost": ["build"],
        "memory_commit_after": 1.0833,
        "vcpu_commit_after": None,
    }


def test_json_topology_summary() -> None:
    topo = json.loads(render_json(example_report()))["topology"]
    assert topo["sources"] == [str(EXAMPLE)]
    assert topo["hosts"][0] == {"name": "kvm1", "hypervisor": "kvm", "version": "RHEL 6.2",
                                "cpus": 16, "memory_mib": 65536, "host_cluster": "hosts"}
    assert [c["name"] for c in topo["clusters"]] == ["web", "db"]
    assert topo["clusters"][1]["members"] == [
        {"name": "db1", "host": "kvm1"}, {"name": "db2", "host": "kvm1"},
        {"name": "db-arbiter", "host": None}]
    assert topo["other_guests"] == [{"name": "build", "host": "kvm1"}]
    bare = Topology(hosts=(Host("h"),))
    assert json.loads(render_json(Report(bare, (), ())))["topology"]["hosts"] == [
        {"name": "h", "hypervisor": None, "version": None, "cpus": None, "memory_mib": None,
         "host_cluster": None}]


def test_json_is_deterministic() -> None:
    report = example_report()
    shuffled = replace(report, findings=report.findings[::-1], impacts=report.impacts[::-1])
    assert render_json(report) == render_json(report) == render_json(shuffled)


def test_json_never_emits_nan_or_infinity() -> None:
    report = replace(example_report(), impacts=(
        HostLossImpact("kvm1", (), (), float("inf"), float("nan")),))
    doc = json.loads(render_json(report))
    assert doc["impacts"][0]["memory_commit_after"] is None
    assert doc["impacts"][0]["vcpu_commit_after"] is None


def test_json_supportable_report() -> None:
    doc = json.loads(render_json(example_report(findings=())))
    assert doc["verdict"] == {"supportable": True, "errors": 0, "warnings": 0, "infos": 0}
    assert doc["findings"] == []


# ---------------------------------------------------------------------------- text


def test_text_has_verdict_groups_and_every_finding() -> None:
    report = example_report()
    out = text_of(report, width=200)
    assert "verdict: NOT supportable: 1 error, 2 warnings" in out
    for f in report.findings:
        assert f.rule in out
        assert f.fix in out
    assert out.index("cluster web") < out.index("cluster db") < out.index("hosts / general")
    assert f"{EXAMPLE}:61" in out
    assert "db lost 2/3, quorum LOST" in out
    assert "web lost 1/3, quorum kept" in out
    assert "108%" in out


def test_text_supportable_verdict() -> None:
    out = text_of(example_report(findings=()))
    assert "no findings" in out
    assert "verdict: supportable (0 warnings, 0 infos)" in out


def test_text_without_terminal_has_no_colour_codes_and_forced_has() -> None:
    assert not ANSI.search(text_of(example_report()))
    assert ANSI.search(text_of(example_report(), force_terminal=True))


@pytest.mark.parametrize("width", [80, 60])
def test_text_fits_narrow_terminals(width: int) -> None:
    report = example_report()
    out = text_of(report, width=width)
    assert max(len(line) for line in out.splitlines()) <= width
    for f in report.findings:
        assert f.rule in out
    assert "NOT supportable" in out


def test_text_prints_names_literally_not_as_markup() -> None:
    report = example_report(findings=(
        Finding("R1", "error", "s", "guest [bold]x[/bold] on [red]h", "fix [/]", cluster="db"),))
    out = text_of(report)
    assert "guest [bold]x[/bold] on [red]h" in out
    assert "fix [/]" in out


# ---------------------------------------------------------------------------- HTML


class _Page(HTMLParser):
    """Text, tags, and every attribute of a page."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.text: list[str] = []
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str]] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [(k, v or "") for k, v in attrs]

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    @property
    def titles(self) -> str:
        return "\n".join(v for k, v in self.attrs if k == "title")


def test_html_contains_every_host_guest_and_finding() -> None:
    report = example_report()
    page = _Page(render_html(report))
    text = "\n".join(page.text)
    assert verdict_text(report) in text
    for h in report.topology.hosts:
        assert h.name in text
    for g in [m for c in report.topology.clusters for m in c.members]:
        assert g.name in text
    for g in report.topology.other_guests:
        assert g.name in text
    assert "bare metal" in text
    for f in report.findings:
        assert text.count(f.rule) >= 2  # in the map (badge or legend) and in the table
        assert f.found in page.titles and f.found in text
        assert f.fix in text
    assert "quorum LOST" in text


def test_html_is_self_contained() -> None:
    page_text = render_html(example_report())
    page = _Page(page_text)
    assert page_text.startswith("<!DOCTYPE html>")
    assert not {"script", "link", "img", "iframe", "object", "embed"} & set(page.tags)
    assert not [k for k, _ in page.attrs if k in ("src", "href") or k.startswith("on")]
    assert "url(" not in page_text and "@import" not in page_text
    assert "http:" not in page_text and "https:" not in page_text


HOSTILE = '<script>alert("x")</script>'


def test_html_escapes_hostile_names() -> None:
    evil_host = '"><img src=x onerror=alert(1)>'
    topo = Topology(
        hosts=(Host(evil_host, "kvm", cpus=4, memory_mib=4096, host_cluster="<b>hc</b>"),),
        clusters=(GuestCluster("<i>c&l</i>", (Guest(HOSTILE, evil_host, 1, 512),
                                               Guest("metal<br>", None))),),
        other_guests=(Guest("o'ther\"", evil_host),),
        sources=("<file>.yaml",))
    findings = (Finding("R<1>", "error", "seed <u>", "found </td>", "fix <!--",
                        cluster="<i>c&l</i>", hosts=(evil_host,), guests=(HOSTILE,),
                        origin=Origin("<x>.yaml", 3)),)
    impacts = (HostLossImpact(evil_host, (ClusterImpact("<i>c&l</i>", (HOSTILE,), 1, 2, False),),
                              ("o'ther\"",), None, None),)
    page_text = render_html(Report(topo, findings, impacts))
    page = _Page(page_text)
    assert "<script" not in page_text and "<img" not in page_text and "<b>hc" not in page_text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page_text
    assert set(page.tags) <= {"html", "head", "meta", "title", "style", "body", "header", "h1",
                              "h2", "h3", "div", "span", "p", "ul", "li", "b", "i", "section",
                              "table", "colgroup", "col", "thead", "tbody", "tr", "th", "td",
                              "footer"}
    assert not [k for k, _ in page.attrs if k.startswith("on") or k == "src"]
    text = "".join(page.text)
    for name in (HOSTILE, evil_host, "metal<br>", "o'ther\"", "<i>c&l</i>", "R<1>",
                 "found </td>", "fix <!--", "<x>.yaml:3", "<file>.yaml"):
        assert name in text, name
    assert "found </td>" in page.titles


@settings(max_examples=40, deadline=None)
@given(st.text(min_size=1, max_size=20))
def test_html_any_guest_name_round_trips(name: str) -> None:
    name = name.replace("\r", "\n").replace("\x00", "?")  # the parser normalises these
    topo = Topology(hosts=(Host("h"),), clusters=(GuestCluster("c", (Guest(name, "h"),)),))
    page = _Page(render_html(Report(topo, (), ())))
    assert name in page.text
    assert "script" not in page.tags


def test_html_cluster_colours_distinct_and_not_red() -> None:
    hues = cluster_hues(60)
    assert len({round(h, 1) for h in hues}) == 60
    assert all(RED_BAND[1] < h < RED_BAND[0] for h in hues)
    # neighbours in declaration order are far apart on the wheel
    assert all(min(abs(a - b), 360 - abs(a - b)) > 40 for a, b in pairwise(hues))


def _many(hosts: int, clusters: int) -> Report:
    topo = Topology(
        hosts=tuple(Host(f"h{i}", "kvm", cpus=8, memory_mib=16384) for i in range(hosts)),
        clusters=tuple(GuestCluster(f"c{c}", tuple(Guest(f"c{c}g{j}", f"h{(c + j) % hosts}", 1,
                                                         1024) for j in range(3)))
                       for c in range(clusters)))
    findings = tuple(Finding("R", "warning", "s", f"f{i}", "x", hosts=(f"h{i}",))
                     for i in range(0, hosts, 7))
    return Report(topo, findings, ())


def test_html_many_hosts_scroll_and_cap() -> None:
    page = render_html(_many(50, 40))
    assert page.count('<div class="host') == 50
    assert ".c39{" in page
    big = render_html(_many(1000, 300))
    assert big.count('<div class="host') == MAP_HOST_LIMIT
    assert f"first {MAP_HOST_LIMIT} of 1000 hosts" in big
    assert "h994" in big  # not drawn, but its finding is in the table


def test_html_unknown_capacity_and_undeclared_host() -> None:
    topo = Topology(hosts=(Host("known"),),
                    other_guests=(Guest("g1", "known"), Guest("g2", "elsewhere", 2, 1024)))
    page = render_html(Report(topo, (), ()))
    assert "elsewhere" in page and "not declared" in page
    assert "bar unknown" in page
    assert "No findings." in page
    assert "guestfence check: supportable" in page
