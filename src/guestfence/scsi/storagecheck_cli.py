"""`guestfence storage-check URL... [--scratch URL]`: is this storage fit for fence_scsi?"""

from __future__ import annotations

import argparse
import sys

from guestfence.errors import ConfigError
from guestfence.scsi.transport import ScsiTransport


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "storage-check",
        help="is this shared storage fit for fence_scsi? (capabilities, then a live trial)",
        description="Ask each LUN about SCSI-3 persistent reservations (REPORT CAPABILITIES, "
        "READ KEYS), and on the LUN named with --scratch run a live trial with two sessions "
        "acting as two nodes: register, reserve type 5, write from both, PREEMPT AND ABORT "
        "one, check that its writes now get RESERVATION CONFLICT and that a registration "
        "survives a re-login, then clear. The trial writes back the data it reads, but takes "
        "the LUN's reservation: never name a LUN a cluster is using.",
        epilog="Exit status: 0 every LUN fit, 1 a LUN is not fit, 2 a LUN could not be checked.",
    )
    p.add_argument("urls", nargs="+", metavar="URL",
                   help="iscsi://host[:port]/iqn/lun (or a block device, capabilities only)")
    p.add_argument("--scratch", metavar="URL", help="an iscsi:// LUN the trial may use")
    p.add_argument("--initiator-name", default="iqn.2026-11.org.guestfence:storage-check",
                   help="base initiator name; the two trial nodes append -a and -b")
    p.add_argument("--timeout", type=float, default=10.0, help="login timeout in seconds")


def run(args: argparse.Namespace) -> int:
    from guestfence.scsi.storagecheck import check_storage

    if args.scratch and not args.scratch.startswith("iscsi://"):
        print("guestfence storage-check: --scratch needs an iscsi:// URL (the trial acts as "
              "two nodes through two sessions)", file=sys.stderr)
        return 2

    def opener(url: str, node: str) -> ScsiTransport:
        if url.startswith("iscsi://"):
            from guestfence.scsi.iscsi import IscsiTransport

            name = f"{args.initiator_name}-{node}"
            return IscsiTransport(url, name, isid_seed=name, connect_timeout=args.timeout)
        from guestfence.scsi.sgio import SgIoTransport

        return SgIoTransport(url)

    try:
        reports = check_storage(list(args.urls), args.scratch, opener)
    except ConfigError as e:
        print(f"guestfence storage-check: {e}", file=sys.stderr)
        return 2
    for report in reports:
        print(f"{report.url}: {report.verdict()}")
    if any(r.fit is None for r in reports):
        return 2
    return 0 if all(r.fit for r in reports) else 1
