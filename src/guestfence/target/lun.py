"""The contract between the iSCSI side of the target and its logical units.

The iSCSI layer (target/session.py) turns SCSI Command PDUs into calls of
``LogicalUnit.execute`` once all data-out has arrived, and turns the result
into Data-In PDUs and a SCSI Response. A logical unit (target/scsi.py) runs
one command at a time, atomically: PERSISTENT RESERVE OUT / PREEMPT AND ABORT
returns the I_T nexuses whose outstanding commands the iSCSI layer must abort
*before* it sends the response, so a write of a fenced initiator that is
still waiting for its data never reaches the disk afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, order=True)
class Nexus:
    """An I_T nexus: initiator port (iSCSI name + ISID) and target port.

    Registrations and unit attentions belong to a nexus, not to a TCP
    connection or an iSCSI session, so they survive a re-login with the same
    initiator name and ISID (SPC-4; tgt gets this wrong).
    """

    initiator: str  # iSCSI initiator name, case-insensitive (stored lower-case)
    isid: bytes  # 6 bytes
    target_port: int = 1  # relative target port identifier (our TPGT)

    @property
    def initiator_port(self) -> str:
        """The SCSI initiator port name: ``<name>,i,0x<isid>`` (RFC 7143 / SPC-4)."""
        return f"{self.initiator},i,0x{self.isid.hex()}"


@dataclass(frozen=True)
class CommandResult:
    status: int  # SCSI status byte
    data_in: bytes = b""  # may be longer than the initiator asked for: the iSCSI layer cuts
    sense: bytes = b""  # fixed-format sense data when status is CHECK CONDITION
    abort_nexuses: frozenset[Nexus] = field(default_factory=frozenset)


class LogicalUnit(Protocol):
    lun: int

    def execute(self, nexus: Nexus, cdb: bytes, data_out: bytes,
                allocation: int) -> CommandResult:
        """Run one command. ``allocation``: the Expected Data Transfer Length for reads."""
        ...

    def nexus_lost(self, nexus: Nexus) -> None:
        """The session of ``nexus`` ended (logout or dropped connection); registrations stay."""
        ...

    def lun_reset(self, by: Nexus) -> None:
        """LOGICAL UNIT RESET task management: reset state, unit attention 29/00 to all."""
        ...

    def close(self) -> None: ...
