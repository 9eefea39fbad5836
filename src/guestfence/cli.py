"""guestfence: the umbrella command (demo, keygen, ...)."""

from __future__ import annotations

import argparse
import importlib
import sys

from guestfence.errors import GuestfenceError

# Sub-commands that live in their own module: the command name and a module with
# ``add_parser(subparsers)`` (registers the command under that name) and
# ``run(args) -> int`` (the exit code). Add a line here to add a command.
COMMAND_MODULES: dict[str, str] = {
    "check": "guestfence.check.cli",
    "storage-check": "guestfence.scsi.storagecheck_cli",
    "target": "guestfence.target.cli",
    "keys": "guestfence.keys_cli",
    "status": "guestfence.status_cli",
    "install-agents": "guestfence.install_agents",
    "lab": "guestfence.lab.cli",
    "completion": "guestfence.completion",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="guestfence",
        description="Fencing for high-availability clusters of virtual machines.",
    )
    from guestfence import __version__

    p.add_argument("-V", "--version", action="version", version=f"guestfence {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    demo = sub.add_parser(
        "demo",
        help="run guestfenced and fence_xvm against a private test hypervisor",
        description="Start guestfenced on libvirt's built-in test driver inside a private "
        "network namespace, then drive it with fence_xvm over the real protocol: "
        "list, status, off, status, on. Needs root (network namespaces); leaves nothing behind.",
    )
    demo.add_argument("--guests", type=int, default=3, help="number of test guests (default 3)")
    demo.add_argument("--keep-dir", action="store_true",
                      help="keep the scratch directory (key, config, logs) for inspection")

    keygen = sub.add_parser(
        "keygen",
        help="create a shared key file (4096 random bytes, mode 0600)",
        description="Create a key shared by guestfenced and the guests' fence_xvm/fence_virt. "
        "Copy it to every guest of the cluster (default path there: "
        "/etc/cluster/fence_xvm.key).",
    )
    keygen.add_argument("path", nargs="?", default="/etc/cluster/fence_xvm.key")
    keygen.add_argument("--force", action="store_true", help="replace an existing file")

    manpages = sub.add_parser(
        "manpages",
        help="write every man page into a directory (default: man)",
        description="Render the agents' pages (fence_xvm(8), ...) from their metadata, and "
        "guestfenced(8) and guestfence(1) from their command-line parsers.",
    )
    manpages.add_argument("directory", nargs="?", default="man")

    for module in COMMAND_MODULES.values():
        importlib.import_module(module).add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from guestfence.demo import run_demo

            sys.exit(run_demo(guests=args.guests, keep_dir=args.keep_dir))
        if args.command == "keygen":
            from guestfence.keygen import write_key

            write_key(args.path, force=args.force)
            print(f"wrote {args.path} (4096 random bytes, mode 0600)")
            return
        if args.command in COMMAND_MODULES:
            sys.exit(importlib.import_module(COMMAND_MODULES[args.command]).run(args))
        if args.command == "manpages":
            from guestfence.manpages import write_manpages

            for path in write_manpages(args.directory):
                print(f"wrote {path}")
            return
        parser.print_help()
        sys.exit(2)
    except GuestfenceError as e:
        print(f"guestfence: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
