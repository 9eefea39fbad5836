"""Sense data decoded into readable text, and SCSI answers turned into typed errors.

Sense layouts are SPC-4 4.5: fixed format (RESPONSE CODE 70h current, 71h
deferred) and descriptor format (72h/73h). Decoding is lenient about what
follows the sense key and ASC/ASCQ (a truncated descriptor list must not hide
them) and strict about the response code, the one byte that says how to read
the rest.

``check()`` is the single place where a ScsiResult becomes data or an
exception, so every caller reports "device: command: what went wrong" alike.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from guestfence.errors import GuestfenceError
from guestfence.scsi.pr import ScsiProtocolError
from guestfence.scsi.transport import ScsiResult, Status


class SenseKey(enum.IntEnum):
    NO_SENSE = 0x0
    RECOVERED_ERROR = 0x1
    NOT_READY = 0x2
    MEDIUM_ERROR = 0x3
    HARDWARE_ERROR = 0x4
    ILLEGAL_REQUEST = 0x5
    UNIT_ATTENTION = 0x6
    DATA_PROTECT = 0x7
    BLANK_CHECK = 0x8
    VENDOR_SPECIFIC = 0x9
    COPY_ABORTED = 0xA
    ABORTED_COMMAND = 0xB
    VOLUME_OVERFLOW = 0xD
    MISCOMPARE = 0xE
    COMPLETED = 0xF

    @property
    def label(self) -> str:
        return self.name.replace("_", " ")


# The additional sense codes a PR client meets (SPC-4 annex D wording).
ASC_TEXT: dict[tuple[int, int], str] = {
    (0x00, 0x00): "NO ADDITIONAL SENSE INFORMATION",
    (0x04, 0x00): "LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE",
    (0x04, 0x01): "LOGICAL UNIT IS IN PROCESS OF BECOMING READY",
    (0x04, 0x02): "LOGICAL UNIT NOT READY, INITIALIZING COMMAND REQUIRED",
    (0x04, 0x03): "LOGICAL UNIT NOT READY, MANUAL INTERVENTION REQUIRED",
    (0x04, 0x0A): "LOGICAL UNIT NOT ACCESSIBLE, ASYMMETRIC ACCESS STATE TRANSITION",
    (0x04, 0x0B): "LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN STANDBY STATE",
    (0x04, 0x0C): "LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE",
    (0x04, 0x12): "LOGICAL UNIT NOT READY, OFFLINE",
    (0x08, 0x00): "LOGICAL UNIT COMMUNICATION FAILURE",
    (0x1A, 0x00): "PARAMETER LIST LENGTH ERROR",
    (0x20, 0x00): "INVALID COMMAND OPERATION CODE",
    (0x24, 0x00): "INVALID FIELD IN CDB",
    (0x25, 0x00): "LOGICAL UNIT NOT SUPPORTED",
    (0x26, 0x00): "INVALID FIELD IN PARAMETER LIST",
    (0x26, 0x04): "INVALID RELEASE OF PERSISTENT RESERVATION",
    (0x27, 0x00): "WRITE PROTECTED",
    (0x29, 0x00): "POWER ON, RESET, OR BUS DEVICE RESET OCCURRED",
    (0x29, 0x01): "POWER ON OCCURRED",
    (0x29, 0x02): "SCSI BUS RESET OCCURRED",
    (0x29, 0x03): "BUS DEVICE RESET FUNCTION OCCURRED",
    (0x29, 0x04): "DEVICE INTERNAL RESET",
    (0x29, 0x07): "I_T NEXUS LOSS OCCURRED",
    (0x2A, 0x01): "MODE PARAMETERS CHANGED",
    (0x2A, 0x03): "RESERVATIONS PREEMPTED",
    (0x2A, 0x04): "RESERVATIONS RELEASED",
    (0x2A, 0x05): "REGISTRATIONS PREEMPTED",
    (0x2A, 0x06): "ASYMMETRIC ACCESS STATE CHANGED",
    (0x2A, 0x09): "CAPACITY DATA HAS CHANGED",
    (0x2C, 0x00): "COMMAND SEQUENCE ERROR",
    (0x2F, 0x00): "COMMANDS CLEARED BY ANOTHER INITIATOR",
    (0x3A, 0x00): "MEDIUM NOT PRESENT",
    (0x3F, 0x00): "TARGET OPERATING CONDITIONS HAVE CHANGED",
    (0x3F, 0x01): "MICROCODE HAS BEEN CHANGED",
    (0x3F, 0x03): "INQUIRY DATA HAS CHANGED",
    (0x3F, 0x0E): "REPORTED LUNS DATA HAS CHANGED",
    (0x44, 0x00): "INTERNAL TARGET FAILURE",
    (0x44, 0x01): "PERSISTENT RESERVATION INFORMATION LOST",
    (0x55, 0x02): "INSUFFICIENT RESERVATION RESOURCES",
    (0x55, 0x03): "INSUFFICIENT RESOURCES",
    (0x55, 0x04): "INSUFFICIENT REGISTRATION RESOURCES",
}


def asc_text(asc: int, ascq: int) -> str:
    text = ASC_TEXT.get((asc, ascq))
    if text is not None:
        return text
    if asc >= 0x80 or ascq >= 0x80:
        return "VENDOR SPECIFIC ADDITIONAL SENSE CODE"
    return "UNKNOWN ADDITIONAL SENSE CODE"


@dataclass(frozen=True, slots=True)
class FieldPointer:
    """Where an ILLEGAL REQUEST points (SENSE KEY SPECIFIC, SPC-4 4.5.2.4.2)."""

    in_cdb: bool  # C/D: True for the CDB, False for the parameter list
    byte: int  # FIELD POINTER
    bit: int | None  # BIT POINTER, when BPV says it is valid


@dataclass(frozen=True, slots=True)
class Sense:
    key: int
    asc: int = 0
    ascq: int = 0
    deferred: bool = False  # the error belongs to an earlier command
    response_code: int = 0x70
    information: int | None = None  # INFORMATION, when VALID is set
    sense_key_specific: bytes | None = None  # the 3 SKS bytes, when SKSV is set

    @property
    def descriptor_format(self) -> bool:
        return self.response_code in (0x72, 0x73)

    @property
    def field_pointer(self) -> FieldPointer | None:
        sks = self.sense_key_specific
        if self.key != SenseKey.ILLEGAL_REQUEST or sks is None:
            return None
        bit = sks[0] & 0x07 if sks[0] & 0x08 else None
        return FieldPointer(bool(sks[0] & 0x40), int.from_bytes(sks[1:3], "big"), bit)

    def describe(self) -> str:
        """'ILLEGAL REQUEST: INVALID FIELD IN CDB (24/00)'."""
        key = SenseKey(self.key).label if self.key in _KEYS else f"SENSE KEY {self.key:X}h"
        text = f"{key}: {asc_text(self.asc, self.ascq)} ({self.asc:02X}/{self.ascq:02X})"
        return f"{text} [deferred error]" if self.deferred else text

    def encode(self, descriptor: bool = False) -> bytes:
        """Sense as a device server sends it (18-byte fixed, or descriptor format)."""
        if descriptor:
            # Information descriptor: type 00h, VALID in byte 2, INFORMATION in 4-11;
            # sense key specific descriptor: type 02h, SKS in bytes 4-6.
            body = b""
            if self.information is not None:
                body += bytes([0x00, 0x0A, 0x80, 0]) + self.information.to_bytes(8, "big")
            if self.sense_key_specific is not None:
                body += bytes([0x02, 0x06, 0, 0]) + self.sense_key_specific + bytes(1)
            code = 0x73 if self.deferred else 0x72
            return bytes([code, self.key, self.asc, self.ascq, 0, 0, 0, len(body)]) + body
        code = 0x71 if self.deferred else 0x70
        valid = 0x80 if self.information is not None else 0
        info = (self.information or 0).to_bytes(4, "big")
        sks = self.sense_key_specific or bytes(3)
        return (bytes([valid | code, 0, self.key]) + info + bytes([10]) + bytes(4)
                + bytes([self.asc, self.ascq, 0]) + sks)


_KEYS = frozenset(int(k) for k in SenseKey)


def decode_sense(data: bytes) -> Sense:
    """Decode fixed or descriptor sense; ScsiProtocolError if it is neither or too short."""
    if not data:
        raise ScsiProtocolError("sense data is empty")
    code = data[0] & 0x7F
    # Bytes past 8 + ADDITIONAL SENSE LENGTH (byte 7) are buffer padding, not sense.
    end = min(len(data), 8 + data[7]) if len(data) >= 8 else len(data)
    if code in (0x70, 0x71):
        # Fixed: byte 0 VALID (7), byte 2 SENSE KEY (3-0), 3-6 INFORMATION,
        # 12 ASC, 13 ASCQ, 15-17 SENSE KEY SPECIFIC with SKSV in byte 15 bit 7.
        if len(data) < 3:
            raise ScsiProtocolError(f"fixed sense data of {len(data)} bytes has no sense key")
        info = int.from_bytes(data[3:7], "big") if data[0] & 0x80 and len(data) >= 7 else None
        sks = bytes(data[15:18]) if end >= 18 and data[15] & 0x80 else None
        return Sense(
            key=data[2] & 0x0F, asc=data[12] if end > 12 else 0, ascq=data[13] if end > 13 else 0,
            deferred=code == 0x71, response_code=code, information=info, sense_key_specific=sks,
        )
    if code in (0x72, 0x73):
        # Descriptor: byte 1 SENSE KEY, 2 ASC, 3 ASCQ, 7 ADDITIONAL SENSE LENGTH,
        # then descriptors of DESCRIPTOR TYPE, ADDITIONAL LENGTH, body.
        if len(data) < 4:
            raise ScsiProtocolError(f"descriptor sense data of {len(data)} bytes is too short")
        info, sks = None, None
        offset = 8
        while offset + 2 <= end:
            kind, length = data[offset], data[offset + 1]
            desc = data[offset:offset + 2 + length]
            if offset + 2 + length > end:
                break  # truncated descriptor: keep what we have
            if kind == 0x00 and length >= 0x0A and desc[2] & 0x80:  # information, VALID set
                info = int.from_bytes(desc[4:12], "big")
            elif kind == 0x02 and length >= 0x06 and desc[4] & 0x80:  # sense key specific
                sks = bytes(desc[4:7])
            offset += 2 + length
        return Sense(key=data[1] & 0x0F, asc=data[2], ascq=data[3], deferred=code == 0x73,
                     response_code=code, information=info, sense_key_specific=sks)
    raise ScsiProtocolError(f"sense data has response code {code:02X}h, expected 70h-73h")


# --- errors -----------------------------------------------------------------


class ScsiError(GuestfenceError):
    """A device answered a command with something other than success."""

    def __init__(self, device: str, command: str, detail: str) -> None:
        super().__init__(f"{device}: {command}: {detail}")
        self.device = device
        self.command = command
        self.detail = detail


class ReservationConflict(ScsiError):
    """Status RESERVATION CONFLICT: this I_T nexus is not allowed to do that (no sense data)."""

    def __init__(self, device: str, command: str) -> None:
        super().__init__(device, command, "RESERVATION CONFLICT")


class UnitAttention(ScsiError):
    """A pending UNIT ATTENTION stopped the command before it ran; sending it again is safe."""

    def __init__(self, device: str, command: str, sense: Sense, attempts: int = 1) -> None:
        suffix = f" (still pending after {attempts} attempts)" if attempts > 1 else ""
        super().__init__(device, command, sense.describe() + suffix)
        self.sense = sense
        self.attempts = attempts


class IllegalRequest(ScsiError):
    def __init__(self, device: str, command: str, sense: Sense) -> None:
        super().__init__(device, command, sense.describe())
        self.sense = sense

    @property
    def unsupported(self) -> bool:
        """The device does not implement this command or service action.

        20/00 is an unknown operation code. 24/00 is how targets refuse a
        service action they lack (tgt answers PREEMPT AND ABORT so, without a
        field pointer); with a field pointer, only one at CDB byte 0 or 1 (the
        OPERATION CODE or SERVICE ACTION) means that, not a bad TYPE or length.
        """
        code = (self.sense.asc, self.sense.ascq)
        if code == (0x20, 0x00):
            return True
        if code != (0x24, 0x00):
            return False
        pointer = self.sense.field_pointer
        return pointer is None or (pointer.in_cdb and pointer.byte <= 1)


class CheckCondition(ScsiError):
    """CHECK CONDITION for any other reason: NOT READY, DATA PROTECT, a deferred error, ..."""

    def __init__(self, device: str, command: str, sense: Sense | None,
                 detail: str | None = None) -> None:
        text = detail if detail is not None else (
            sense.describe() if sense is not None else "CHECK CONDITION")
        super().__init__(device, command, text)
        self.sense = sense


class BadStatus(ScsiError):
    """BUSY, TASK SET FULL, ACA ACTIVE, TASK ABORTED or an unknown status byte."""

    def __init__(self, device: str, command: str, status: int) -> None:
        name = Status(status).name.replace("_", " ") if status in _STATUSES else "unknown"
        super().__init__(device, command, f"status {name} ({status:02X}h)")
        self.status = status


_STATUSES = frozenset(int(s) for s in Status)


def check(result: ScsiResult, device: str, command: str) -> bytes:
    """The data of a successful command, or the matching ScsiError."""
    status = result.status
    if status in (Status.GOOD, Status.CONDITION_MET):
        return result.data
    if status == Status.RESERVATION_CONFLICT:
        raise ReservationConflict(device, command)
    if status != Status.CHECK_CONDITION:
        raise BadStatus(device, command, status)
    if not result.sense:
        raise CheckCondition(device, command, None, "CHECK CONDITION without sense data")
    try:
        sense = decode_sense(result.sense)
    except ScsiProtocolError as exc:
        raise CheckCondition(device, command, None,
                             f"CHECK CONDITION with unreadable sense data ({exc})") from exc
    if sense.deferred:
        raise CheckCondition(device, command, sense)  # about an earlier command
    if sense.key in (SenseKey.NO_SENSE, SenseKey.RECOVERED_ERROR):
        # The command completed (recovered, or a mere warning); sg3_utils counts it
        # as success too, so we act as fence_scsi would on the same device.
        return result.data
    if sense.key == SenseKey.UNIT_ATTENTION:
        raise UnitAttention(device, command, sense)
    if sense.key == SenseKey.ILLEGAL_REQUEST:
        raise IllegalRequest(device, command, sense)
    raise CheckCondition(device, command, sense)
