"""`guestfence keys new|rotate|retire|fingerprint`: per-cluster keys and rotation without downtime.

A rotation, for the key file K of one cluster (or of an old single-key config):

1. ``guestfence keys rotate K`` writes the successor ``K.next`` (or the
   cluster's successor_key_file). guestfenced notices it within a second and
   from then on accepts both keys.
2. Copy ``K.next`` to every guest of the cluster, as the key file their
   fence_xvm / fence_virt reads (/etc/cluster/fence_xvm.key by default), and
   compare the fingerprint printed here with ``sha256sum`` there.
3. ``guestfence keys retire K`` renames ``K.next`` over ``K``: the old key
   stops working within a second (guestfenced watches its key files; SIGHUP
   reloads at once).

Keys are written atomically (a temporary 0600 file in the same directory,
fsync, rename, fsync of the directory) into a directory that only its owner
may write to. Keys are never printed, only their fingerprints.
"""

from __future__ import annotations

import argparse
import os
import stat

from guestfence.errors import KeyFileError
from guestfence.host.keys import fingerprint, load_daemon_key, successor_path
from guestfence.keygen import write_key

GUEST_KEY_PATH = "/etc/cluster/fence_xvm.key"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "keys",
        help="create, rotate, retire and fingerprint guestfenced's per-cluster keys",
        description="Manage the keys guestfenced accepts: one per guest cluster (the "
        "clusters block of fence_virt.conf), each with an optional successor during a "
        "rotation. guestfenced reloads changed key files within a second, without a restart.",
        epilog="Rotation: 'keys rotate K', copy K.next to the guests, 'keys retire K'.",
    )
    actions = p.add_subparsers(dest="keys_action", metavar="ACTION", required=True)
    new = actions.add_parser("new", help="create a new key file (4096 random bytes, 0600)")
    new.add_argument("path")
    new.add_argument("--force", action="store_true", help="replace an existing file")
    rotate = actions.add_parser(
        "rotate", help="write a successor key next to KEY_FILE; both keys work until retire")
    rotate.add_argument("path", metavar="KEY_FILE")
    rotate.add_argument("--successor", metavar="FILE",
                        help="the cluster's successor_key_file (default KEY_FILE.next)")
    rotate.add_argument("--force", action="store_true",
                        help="replace a successor that already exists")
    retire = actions.add_parser(
        "retire", help="make the successor the key: the old key stops working at once")
    retire.add_argument("path", metavar="KEY_FILE")
    retire.add_argument("--successor", metavar="FILE",
                        help="the cluster's successor_key_file (default KEY_FILE.next)")
    fp = actions.add_parser("fingerprint", help="print the fingerprint of key files")
    fp.add_argument("paths", nargs="+", metavar="KEY_FILE")


def run(args: argparse.Namespace) -> int:
    action = args.keys_action
    if action == "new":
        return _new(args.path, args.force)
    if action == "rotate":
        return _rotate(args.path, successor_path(args.path, args.successor), args.force)
    if action == "retire":
        return _retire(args.path, successor_path(args.path, args.successor))
    for path in args.paths:
        print(f"{fingerprint(load_daemon_key(path))}  {path}")
    return 0


def check_directory(path: str) -> None:
    """Keys go into an existing directory nobody but its owner can write to."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        st = os.stat(directory)
    except OSError as e:
        raise KeyFileError(f"directory {directory}: {e.strerror}; create it first "
                           f"(install -d -m 0700 {directory})") from e
    if not stat.S_ISDIR(st.st_mode):
        raise KeyFileError(f"{directory} is not a directory")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise KeyFileError(
            f"directory {directory} is writable by others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}): they could replace the key; use a directory "
            f"only its owner may write to (chmod go-w {directory})")
    if os.path.lexists(path) and not stat.S_ISREG(os.lstat(path).st_mode):
        raise KeyFileError(f"{path} exists and is not a regular file")


def _sync_directory(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: str, force: bool) -> str:
    check_directory(path)
    write_key(path, force=force)
    _sync_directory(path)
    return fingerprint(load_daemon_key(path))


def _new(path: str, force: bool) -> int:
    fp = _write(path, force)
    print(f"wrote {path} (4096 random bytes, mode 0600)")
    print(f"fingerprint {fp}")
    print(f"On every guest of this cluster: copy {path} to {GUEST_KEY_PATH} (mode 0600; or "
          "the path fence_xvm -k / key_file names) and check that the first 16 characters of "
          f"'sha256sum {GUEST_KEY_PATH}' are {fp}.")
    return 0


def _rotate(path: str, successor: str, force: bool) -> int:
    current = fingerprint(load_daemon_key(path))
    if os.path.lexists(successor) and not force:
        raise KeyFileError(
            f"{successor} already exists: a rotation is under way (retire it with "
            f"'guestfence keys retire {path}', or pass --force to replace it)")
    fp = _write(successor, force)
    print(f"wrote successor {successor} (4096 random bytes, mode 0600)")
    print(f"fingerprint {fp} (the current key {path} is {current})")
    print("guestfenced now accepts both keys (it reloads changed key files within a second).")
    print("Next:")
    print(f"  1. copy {successor} to every guest of this cluster as {GUEST_KEY_PATH} (mode "
          "0600; or the path fence_xvm -k / key_file names)")
    print(f"  2. on each guest, the first 16 characters of 'sha256sum {GUEST_KEY_PATH}' must "
          f"be {fp}")
    print(f"  3. then: guestfence keys retire {path}"
          + (f" --successor {successor}" if successor != successor_path(path) else ""))
    return 0


def _retire(path: str, successor: str) -> int:
    if not os.path.lexists(successor):
        raise KeyFileError(f"no successor {successor}: nothing to retire (start a rotation "
                           f"with 'guestfence keys rotate {path}')")
    new = fingerprint(load_daemon_key(successor))  # refuses an insecure successor
    check_directory(path)
    old = fingerprint(load_daemon_key(path)) if os.path.lexists(path) else "(none)"
    if os.stat(successor).st_dev != os.stat(os.path.dirname(os.path.abspath(path))).st_dev:
        raise KeyFileError(f"{successor} and {path} are on different file systems: the "
                           "rename that retires the old key would not be atomic")
    os.replace(successor, path)
    _sync_directory(path)
    print(f"retired {old}: {path} is now {new}")
    print("guestfenced stops accepting the old key within a second (send SIGHUP to reload "
          "at once). Guests still holding the old key can no longer fence.")
    return 0
