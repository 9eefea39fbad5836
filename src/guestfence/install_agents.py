"""``guestfence install-agents``: put our fence agents where Pacemaker looks for them.

pacemaker-fenced runs agents found as ``fence_*`` executables in ``/usr/sbin``
(no registration).  This command makes symlinks there (or in ``--prefix``) to
the console scripts installed beside the running interpreter, so the agents
keep running with the environment guestfence was installed into.

Safety: every destination is checked before anything changes.  A different
file already there (for example fence-agents' own ``fence_scsi``) is
reported by name and nothing is touched, unless ``--force`` replaces it.
Running the command again changes nothing (the links are already right).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from guestfence.errors import GuestfenceError

AGENTS = ("fence_xvm", "fence_virt", "fence_scsi", "fence_vmware_soap", "fence_rhevm")
"""Our agents with the names Pacemaker knows (fence_scsi_check is a watchdog hook, not an
agent: it belongs in /etc/watchdog.d, so it is not installed here)."""
DEFAULT_PREFIX = "/usr/sbin"


class InstallError(GuestfenceError):
    """The agents cannot be installed as asked; nothing was changed."""


@dataclass(frozen=True)
class Planned:
    name: str
    source: Path
    dest: Path
    action: str
    """``link`` (new), ``keep`` (already our link), ``replace`` (forced) or ``conflict``."""
    existing: str = ""
    """What is in the way, for a conflict or a replacement."""


def scripts_dir() -> Path:
    """Where our console scripts live: beside the running interpreter (the venv's bin)."""
    return Path(sys.executable).parent


def agent_sources(bin_dir: Path | None = None) -> dict[str, str]:
    """Agent name -> absolute path of our console script (missing ones raise)."""
    where = bin_dir or scripts_dir()
    found = {}
    for name in AGENTS:
        path = where / name
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise InstallError(f"{path}: our agent {name} is not installed there "
                               f"(pip install guestfence into this environment first)")
        found[name] = str(path.absolute())
    return found


def _describe(dest: Path) -> str:
    if dest.is_symlink():
        return f"a symlink to {os.readlink(dest)}"
    if dest.is_dir():
        return "a directory"
    return "a file"


def plan(prefix: Path, force: bool, bin_dir: Path | None = None) -> list[Planned]:
    """What install would do for each agent; touches nothing."""
    if not prefix.is_dir():
        raise InstallError(f"{prefix}: no such directory (give an existing --prefix)")
    steps = []
    for name, source in agent_sources(bin_dir).items():
        dest = prefix / name
        if dest.is_symlink() and os.readlink(dest) == source:
            steps.append(Planned(name, Path(source), dest, "keep"))
        elif not dest.exists() and not dest.is_symlink():
            steps.append(Planned(name, Path(source), dest, "link"))
        elif dest.is_dir():
            steps.append(Planned(name, Path(source), dest, "conflict", "a directory"))
        else:
            steps.append(Planned(name, Path(source), dest, "replace" if force else "conflict",
                                 _describe(dest)))
    return steps


def install(prefix: Path, force: bool = False, bin_dir: Path | None = None) -> list[Planned]:
    """Create the links; refuses (changing nothing) if any destination is in the way."""
    steps = plan(prefix, force, bin_dir)
    conflicts = [s for s in steps if s.action == "conflict"]
    if conflicts:
        lines = [f"  {s.dest} is {s.existing}" for s in conflicts]
        raise InstallError("refusing to overwrite existing agents (nothing was changed; "
                           "--force replaces them):\n" + "\n".join(lines))
    for step in steps:
        if step.action in ("link", "replace"):
            tmp = step.dest.with_name(f".{step.name}.guestfence-{os.getpid()}")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(step.source)
            os.replace(tmp, step.dest)  # atomic: the fencer never sees a missing agent
    return steps


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "install-agents",
        help="symlink our fence agents into /usr/sbin (where Pacemaker looks for them)",
        description="Symlink guestfence's fence agents (" + ", ".join(AGENTS) + ") into a "
        "directory, /usr/sbin by default, where pacemaker-fenced finds stonith agents. An "
        "existing different file is never replaced without --force; running it again "
        "changes nothing.",
    )
    p.add_argument("--prefix", default=DEFAULT_PREFIX, metavar="DIR",
                   help=f"directory for the links (default {DEFAULT_PREFIX})")
    p.add_argument("--force", action="store_true",
                   help="replace existing agents of the same names (e.g. fence-agents')")


def run(args: argparse.Namespace) -> int:
    try:
        steps = install(Path(args.prefix), force=args.force)
    except OSError as e:
        raise InstallError(f"cannot install into {args.prefix}: {e}") from e
    words = {"link": "installed", "keep": "already installed", "replace": "replaced"}
    for step in steps:
        extra = f" (was {step.existing})" if step.action == "replace" else ""
        print(f"{step.dest} -> {step.source}: {words[step.action]}{extra}")
    return 0
