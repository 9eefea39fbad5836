"""``guestfence status``: what the running guestfenced is doing, from its admin socket."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from guestfence.errors import TransportError
from guestfence.host.admin import DEFAULT_ADMIN_SOCKET, query

DEFAULT_REQUESTS = 20
OUTCOME_STYLES = {"success": "green", "off": "green", "hostlist": "green", "denied": "yellow"}


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="show the running guestfenced: listeners, backend, keys, guests, last requests",
        description="Ask the running guestfenced over its root-only admin socket what it is "
        "doing: daemon, listeners, backend health, keys by fingerprint and guest cluster, known "
        "guests with the host that owns them, and the last requests with their outcome and "
        "duration. Exit status 0 when the daemon answered, 1 otherwise.",
    )
    p.add_argument("--socket", default=DEFAULT_ADMIN_SOCKET, metavar="PATH",
                   help=f"the daemon's admin socket (default {DEFAULT_ADMIN_SOCKET})")
    p.add_argument("--json", action="store_true",
                   help="print the daemon's answer as JSON (stable for scripts)")
    p.add_argument("-n", "--requests", type=int, default=DEFAULT_REQUESTS, metavar="N",
                   help=f"how many of the last requests to show (default {DEFAULT_REQUESTS})")
    p.add_argument("--timeout", type=float, default=15.0, metavar="SECONDS",
                   help="how long to wait for the daemon (default 15)")


def run(args: argparse.Namespace) -> int:
    if args.requests < 0:
        print("guestfence status: --requests must be 0 or more", file=sys.stderr)
        return 2
    try:
        reply = query(args.socket, {"command": "status", "requests": args.requests},
                      timeout=args.timeout)
    except TransportError as e:
        print(f"guestfence status: {e}", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"guestfence status: the daemon refused: {reply.get('error')}", file=sys.stderr)
        return 1
    status = reply.get("status", {})
    if args.json:
        json.dump(status, sys.stdout, indent=2, sort_keys=True)
        print()
        return 0
    render(status, Console())
    return 0


# ---------------------------------------------------------------- tables


def _text(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def _clean(value: Any) -> str:
    """A value from the daemon, shown as it is: domain names and requesters come from
    guests, so control characters (terminal escapes, carriage returns) are written
    out as escapes."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in _text(value))


def _cell(value: Any) -> Text:
    """A table cell: plain text, never rich markup ("[/]" in a guest's name stays text)."""
    return Text(_clean(value))


def _safe(value: Any) -> str:
    """A value inside a markup line: cleaned, its brackets escaped."""
    return escape(_clean(value))


def _when(stamp: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(stamp))


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}:{minutes:02d}:{secs:02d}" if days else \
        f"{hours:02d}:{minutes:02d}:{secs:02d}"


def render(status: dict[str, Any], console: Console) -> None:
    daemon = status.get("daemon", {})
    console.print(
        f"[bold]guestfenced {_safe(daemon.get('version'))}[/bold]  pid "
        f"{_safe(daemon.get('pid'))}  up {_duration(float(daemon.get('uptime_s', 0)))}  "
        f"config {_safe(daemon.get('config'))}  metrics {_safe(daemon.get('metrics'))}  "
        f"log format {_safe(daemon.get('log_format'))}")

    listeners = Table(title="Listeners", title_justify="left")
    for column in ("type", "address", "port", "auth", "in flight"):
        listeners.add_column(column)
    for item in status.get("listeners", []):
        address = _text(item.get("address"))
        if item.get("interface"):
            address += f" on {item['interface']}"
        listeners.add_row(_cell(item.get("type")), _cell(address), _cell(item.get("port")),
                          _cell(item.get("auth")), _cell(item.get("in_flight", 0)))
    console.print(listeners)

    backend = status.get("backend", {})
    health = {True: "[green]healthy[/green]", False: "[red]not answering[/red]",
              None: "unknown"}.get(backend.get("healthy"), "unknown")
    line = (f"[bold]Backend[/bold] {_safe(backend.get('name'))} ({_safe(backend.get('mode'))}"
            f"): {health}")
    if backend.get("uris"):
        line += "  " + ", ".join(_safe(uri) for uri in backend["uris"])
    if backend.get("error"):
        line += f"  [red]{_safe(backend['error'])}[/red]"
    console.print(line)
    tracking = backend.get("tracking")
    if tracking:
        members = ", ".join(_safe(m) for m in tracking["members"]) or "-"
        departed = ", ".join(_safe(h) for h in tracking["departed_unfenced"]) or "-"
        console.print(f"  tracking {_safe(tracking['mode'])} as {_safe(tracking['me'])}: "
                      f"members {members}; static-map violations "
                      f"{_safe(tracking['violations'])}; departed, not confirmed fenced: "
                      f"{departed}")

    keys = Table(title="Keys", title_justify="left")
    for column in ("fingerprint", "cluster", "state", "file"):
        keys.add_column(column)
    for key in status.get("keys", []):
        keys.add_row(_cell(key.get("fingerprint")),
                     _cell(key.get("cluster")) if key.get("cluster") else "(all guests)",
                     _cell(key.get("state")), _cell(key.get("file")))
    console.print(keys)

    guests = Table(title="Guests", title_justify="left")
    for column in ("name", "uuid", "state", "owner host", "decision"):
        guests.add_column(column)
    for guest in status.get("guests", []):
        guests.add_row(_cell(guest.get("name")), _cell(guest.get("uuid")),
                       _cell(guest.get("state")), _cell(guest.get("host")),
                       _cell(guest.get("decision")))
    console.print(guests)

    shown = status.get("requests", [])
    requests = Table(title=f"Last requests ({len(shown)} of {status.get('requests_total', 0)} "
                     "since start)", title_justify="left")
    for column in ("time", "requester", "target", "action", "cluster", "outcome", "ms"):
        requests.add_column(column, justify="right" if column == "ms" else "left")
    for r in shown:
        style = OUTCOME_STYLES.get(r.get("outcome", ""), "red")
        requests.add_row(_when(r["finished"]), _cell(r.get("requester")),
                         _cell(r.get("target")), _cell(r.get("action")),
                         _cell(r.get("cluster")), Text(_clean(r.get("outcome")), style=style),
                         f"{r['duration_ms']:.1f}")
    console.print(requests)
