"""`guestfence demo`: the main job on an embedded default, end to end, in a private namespace.

A guestfenced serves libvirt's built-in test hypervisor (a generated node XML
with a few guests); fence_xvm then lists, checks, powers off and on a guest
over the real multicast protocol. Everything runs inside a throwaway network
namespace, so no datagram leaves the machine, and is removed at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from guestfence.errors import GuestfenceError
from guestfence.keygen import write_key
from guestfence.lab.netns import Namespace
from guestfence.lab.ourdaemon import OurDaemon, daemon_config_text, venv_tool
from guestfence.lab.testdriver import default_guests, node_uri, write_node_xml

C_CLIENT = "/usr/sbin/fence_xvm"


@dataclass(frozen=True)
class Step:
    title: str
    args: tuple[str, ...]
    expect_rc: int
    client: str = "guestfence"


def _steps(victim: str, with_c_client: bool) -> list[Step]:
    steps = [
        Step("list the guests", ("-o", "list"), 0),
        Step(f"status of {victim}", ("-o", "status", "-H", victim), 0),
        Step(f"power {victim} off (verified off before success)", ("-o", "off", "-H", victim), 0),
        Step(f"status of {victim}", ("-o", "status", "-H", victim), 2),
        Step(f"power {victim} on", ("-o", "on", "-H", victim), 0),
        Step(f"status of {victim}", ("-o", "status", "-H", victim), 0),
    ]
    if with_c_client:
        steps.append(Step(f"status of {victim}, asked by the C fence_xvm 4.12.1",
                          ("-o", "status", "-H", victim), 0, client="C"))
    return steps


def run_demo(guests: int = 3, keep_dir: bool = False) -> int:
    console = Console(highlight=False)
    if os.geteuid() != 0:
        raise GuestfenceError(
            "the demo needs root: it builds a private network namespace so that multicast "
            "never leaves this machine (run: sudo make demo)"
        )
    if shutil.which("ip") is None:
        raise GuestfenceError("the demo needs iproute2's 'ip' command (apt-get install iproute2)")
    scratch = Path(tempfile.mkdtemp(prefix="guestfence-demo-"))
    ns: Namespace | None = None
    daemon: OurDaemon | None = None
    failures = 0
    try:
        key = scratch / "fence_xvm.key"
        write_key(str(key))
        node = scratch / "node.xml"
        vms = default_guests(count=guests)
        write_node_xml(node, vms)
        conf = scratch / "fence_virt.conf"
        conf.write_text(daemon_config_text(str(key), [node_uri(node)]))
        console.print(f"[bold]guestfence demo[/bold]: {guests} test guests, key and config in "
                      f"{scratch}")
        started = time.monotonic()
        ns = Namespace.create(f"gf-demo-{os.getpid()}")
        daemon = OurDaemon(conf, namespace=ns, pidfile=scratch / "guestfenced.pid")
        daemon.start()
        console.print(f"guestfenced is up in namespace {ns.name} "
                      f"({(time.monotonic() - started) * 1000:.0f} ms, multicast on lo)\n")
        table = Table(title="fence_xvm against guestfenced")
        for column in ("step", "command", "output", "exit", "ms"):
            table.add_column(column, justify="right" if column in ("exit", "ms") else "left")
        for step in _steps(vms[0].name, os.path.exists(C_CLIENT)):
            tool = C_CLIENT if step.client == "C" else venv_tool("fence_xvm")
            argv = [tool, "-k", str(key), *step.args]
            t0 = time.monotonic()
            done = ns.run(argv, capture_output=True, text=True, timeout=60)
            ms = (time.monotonic() - t0) * 1000
            ok = done.returncode == step.expect_rc
            failures += not ok
            output = (done.stdout + done.stderr).strip()
            shown = "fence_xvm (C)" if step.client == "C" else "fence_xvm"
            table.add_row(step.title, f"{shown} {' '.join(step.args)}", output or "-",
                          f"[{'green' if ok else 'red'}]{done.returncode}[/]", f"{ms:.0f}")
        console.print(table)
        console.print("\n[bold]The daemon's request log[/bold] (one line per request):")
        for line in daemon.request_lines():
            console.print(f"  {line}", soft_wrap=True)
    except (subprocess.SubprocessError, OSError) as e:
        raise GuestfenceError(f"demo failed: {e}") from e
    finally:
        if daemon is not None:
            daemon.stop()
        if ns is not None:
            ns.destroy()
        if keep_dir:
            console.print(f"\nscratch directory kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    if failures:
        console.print(f"\n[red]{failures} step(s) did not give the expected exit code[/red]")
        return 1
    console.print("\n[green]every step gave the expected answer; namespace and daemon removed"
                  "[/green]")
    return 0
