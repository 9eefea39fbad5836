"""`guestfence check`: load and/or discover a topology, run the rules, render the report.

Exit status: 0 supportable, 1 findings of severity error, 2 the input could
not be read (the message names file, line and field).
"""

from __future__ import annotations

import argparse
import sys

from guestfence.errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from guestfence.check.model import Report, Topology

EXIT_UNREADABLE = 2


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "check",
        help="is this guest-cluster layout supportable? (support rules and best practices)",
        description="Check a guest-cluster layout against the support rules and best "
        "practices for RHEL High Availability in virtual machines: versions, fence agents, "
        "fence_virtd modes, shared storage, placement, overcommit, and what losing each host "
        "does to each cluster. The layout comes from a topology file (docs/topology.md), "
        "from live discovery, or both merged.",
        epilog="Exit status: 0 supportable, 1 findings of severity error, 2 input unreadable.",
    )
    p.add_argument("topology", nargs="?", metavar="TOPOLOGY.yaml",
                   help="topology file (optional when --libvirt or --cib is given)")
    p.add_argument("--libvirt", action="append", default=[], metavar="URI",
                   help="discover one host through libvirt (repeatable, one per host), "
                   "e.g. qemu+ssh://root@kvm1/system")
    p.add_argument("--cib", metavar="FILE",
                   help="a Pacemaker CIB (cibadmin --query > FILE): members and stonith devices")
    p.add_argument("--cluster", metavar="NAME",
                   help="the guest cluster the CIB describes (default: its cluster-name)")
    p.add_argument("--fence-virt-conf", metavar="FILE",
                   help="guestfenced's fence_virt.conf with backend \"static\": check that "
                   "every guest runs on the host its map gives it")
    p.add_argument("--format", choices=("text", "json", "html"), default="text")
    p.add_argument("-o", "--output", metavar="FILE", help="write the report here (default: "
                   "standard output; required for html)")


def run(args: argparse.Namespace) -> int:
    from guestfence.check.engine import run_checks

    if not (args.topology or args.libvirt or args.cib):
        print("guestfence check: give a topology file, --libvirt URI or --cib FILE "
              "(see guestfence check --help)", file=sys.stderr)
        return EXIT_UNREADABLE
    if args.format == "html" and not args.output:
        print("guestfence check: --format html needs -o FILE", file=sys.stderr)
        return EXIT_UNREADABLE
    try:
        topology, notes = _topology(args)
        if args.fence_virt_conf:
            from guestfence.check.rules_static import load_static_map

            topology = load_static_map(topology, args.fence_virt_conf)
    except ConfigError as e:
        print(f"guestfence check: {e}", file=sys.stderr)
        return EXIT_UNREADABLE
    report = run_checks(topology)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    try:
        _render(report, args)
    except OSError as e:
        print(f"guestfence check: cannot write {args.output}: {e.strerror}", file=sys.stderr)
        return EXIT_UNREADABLE
    return report.exit_code


def _topology(args: argparse.Namespace) -> tuple[Topology, list[str]]:
    from guestfence.check.loader import load_topology

    base = load_topology(args.topology) if args.topology else None
    if not (args.libvirt or args.cib):
        assert base is not None
        return base, []
    from guestfence.check.discover import discover_libvirt, merge, read_cib

    hosts = [discover_libvirt(uri) for uri in args.libvirt]
    cib = read_cib(args.cib) if args.cib else None
    return merge(base, hosts, cib, args.cluster)


def _render(report: Report, args: argparse.Namespace) -> None:
    if args.format == "json":
        from guestfence.check.report_json import render_json

        _write(render_json(report), args.output)
    elif args.format == "html":
        from guestfence.check.report_html import render_html

        _write(render_html(report), args.output)
    else:
        from rich.console import Console

        from guestfence.check.report_text import render_text

        if args.output:
            with open(args.output, "w", encoding="utf-8") as f:
                render_text(report, Console(file=f, width=120))
        else:
            render_text(report, Console())


def _write(text: str, path: str | None) -> None:
    if path:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
