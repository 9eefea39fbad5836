"""A lab host with real QEMU guests that outlives the command that started it.

``python -m guestfence.lab.qemuhost SCRATCH NAMESPACE READY_FILE NAME=UUID...``
starts a private libvirtd (:class:`~guestfence.lab.libvirtd.LibvirtLab`) in
network namespace NAMESPACE, defines and starts one diskless TCG guest per
NAME=UUID, writes ``{"uri": ..., "guests": {name: qemu pid}}`` to READY_FILE
and then waits.  SIGTERM (or SIGINT) stops the guests and libvirtd and
removes nothing else.

Why a process of its own: LibvirtLab's reaper is tied to the thread that
started it (it gets SIGTERM when that thread ends), and ``guestfence lab up``
exits once the lab is up; this process is the long-lived parent.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

from guestfence.lab import detached
from guestfence.lab.libvirtd import LibvirtLab
from guestfence.lab.netns import LabError, Namespace


def serve(scratch: str, namespace: str, ready_file: str, guests: Sequence[str]) -> int:
    stop = detached.stop_on_signals()
    lab = LibvirtLab(scratch, Namespace(namespace))
    try:
        lab.start()
        pids = {}
        for spec in guests:
            name, _, uuid = spec.partition("=")
            pids[name] = lab.define_and_start(name, uuid=uuid or None)
        tmp = f"{ready_file}.tmp"
        with open(tmp, "w") as f:
            json.dump({"uri": lab.uri, "guests": pids}, f)
        os.replace(tmp, ready_file)
        while not stop.wait(0.5):
            pass
    except LabError as e:
        print(f"qemuhost: {e}", file=sys.stderr)
        return 1
    finally:
        lab.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 4:
        print("usage: python -m guestfence.lab.qemuhost SCRATCH NAMESPACE READY_FILE "
              "NAME=UUID...", file=sys.stderr)
        return 2
    return serve(args[0], args[1], args[2], args[3:])


if __name__ == "__main__":
    sys.exit(main())
