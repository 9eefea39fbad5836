"""Look at the lab's shared LUN from inside a namespace: ``python -m guestfence.lab.lunprobe``.

The LUN is only reachable on the lab's LAN, so the lab runs this module in a
namespace there and reads one JSON line from it:

* ``keys URL`` -- PR IN READ KEYS: ``{"generation": N, "keys": ["0x..", ...]}``
* ``write URL INITIATOR`` -- one WRITE(10) of block 0 as ``INITIATOR`` with the ISID
  fence_scsi uses for that name: ``{"status": "GOOD" | "RESERVATION_CONFLICT" | ...}``
"""

from __future__ import annotations

import json
import sys

from guestfence.scsi.iscsi import IscsiTransport
from guestfence.scsi.prclient import PrClient
from guestfence.scsi.sense import SenseKey, decode_sense
from guestfence.scsi.transport import Direction, Status

PROBE_INITIATOR = "iqn.2026-11.org.guestfence.lab:probe"
WRITE10_BLOCK0 = bytes([0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0])


def read_keys(url: str) -> dict[str, object]:
    with IscsiTransport(url, PROBE_INITIATOR, isid_seed=PROBE_INITIATOR,
                        connect_timeout=5) as transport:
        keys = PrClient(transport).read_keys()
    return {"generation": keys.generation, "keys": [f"0x{k:x}" for k in keys.keys]}


def write_as(url: str, initiator: str) -> dict[str, object]:
    with IscsiTransport(url, initiator, isid_seed=initiator, connect_timeout=5) as transport:
        status = Status.GOOD
        for _ in range(4):  # an initiator retries after unit attentions
            result = transport.execute(WRITE10_BLOCK0, Direction.TO_DEVICE, bytes(512))
            status = Status(result.status)
            if status != Status.CHECK_CONDITION or \
                    decode_sense(result.sense).key != SenseKey.UNIT_ATTENTION:
                break
    return {"status": status.name}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "keys":
        print(json.dumps(read_keys(args[1])))
        return 0
    if len(args) == 3 and args[0] == "write":
        print(json.dumps(write_as(args[1], args[2])))
        return 0
    print("usage: python -m guestfence.lab.lunprobe keys URL | write URL INITIATOR",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
