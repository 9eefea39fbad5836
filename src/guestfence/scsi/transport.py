"""What every SCSI transport offers: run one CDB, return status, sense and data.

The persistent-reservation logic (scsi/pr.py) is written against this one
method, so the same code drives a block device through SG_IO (scsi/sgio.py),
an iSCSI LUN through libiscsi (scsi/iscsi.py) and the in-memory fakes of the
tests. Transports never interpret the answer; they only report transport
failures (the device is gone, the session dropped, a timeout) as
ScsiTransportError, naming the device.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from guestfence.errors import TransportError

DEFAULT_TIMEOUT = 30.0  # seconds, per command


class Status(enum.IntEnum):
    """SCSI status byte (SAM-5)."""

    GOOD = 0x00
    CHECK_CONDITION = 0x02
    CONDITION_MET = 0x04
    BUSY = 0x08
    RESERVATION_CONFLICT = 0x18
    TASK_SET_FULL = 0x28
    ACA_ACTIVE = 0x30
    TASK_ABORTED = 0x40


class Direction(enum.Enum):
    NONE = "none"
    TO_DEVICE = "to-device"  # data out (e.g. PERSISTENT RESERVE OUT parameter list)
    FROM_DEVICE = "from-device"  # data in (e.g. PERSISTENT RESERVE IN)


@dataclass(frozen=True)
class ScsiResult:
    status: int
    sense: bytes = b""  # raw sense data, as returned (fixed or descriptor format)
    data: bytes = b""  # data in (already trimmed to what the device returned)


class ScsiTransportError(TransportError):
    """The command could not be delivered or answered: the device, not the answer, failed."""


class ScsiTransport(Protocol):
    """One logical unit, reachable through some transport."""

    @property
    def name(self) -> str:
        """How to name the device in messages (a path or an iscsi:// URL without secrets)."""
        ...

    def execute(
        self,
        cdb: bytes,
        direction: Direction = Direction.NONE,
        data_out: bytes = b"",
        data_in_length: int = 0,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> ScsiResult: ...

    def close(self) -> None: ...


class Borrowed:
    """A transport lent to code that closes what it is given: ``close`` leaves it open.

    For a node's own long-lived path to a LUN (its data-path session): fencing
    code opens and closes a transport per action, but the node's path must stay.
    """

    def __init__(self, transport: ScsiTransport) -> None:
        self.transport = transport

    @property
    def name(self) -> str:
        return self.transport.name

    def execute(
        self,
        cdb: bytes,
        direction: Direction = Direction.NONE,
        data_out: bytes = b"",
        data_in_length: int = 0,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> ScsiResult:
        return self.transport.execute(cdb, direction, data_out, data_in_length, timeout)

    def close(self) -> None:
        pass
