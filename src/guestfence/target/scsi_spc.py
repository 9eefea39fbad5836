"""SPC-4 pieces of the file-backed logical unit: errors, CDB checks and data-in layouts.

Everything here is pure (bytes in, bytes out); target/scsi.py holds the state
and the dispatch. Layouts follow SPC-4 (T10/BSR INCITS 513) and SBC-3 for the
block-device VPD pages and mode pages; every multi-byte field is big-endian.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from guestfence.scsi.sense import Sense, SenseKey

VENDOR = "GUESTFEN"
PRODUCT = "guestfence disk"
REVISION = "0001"

# Version descriptors (SPC-4 table 7.x): SAM-5, SPC-4, SBC-3, iSCSI (no version claimed).
VERSION_DESCRIPTORS = (0x00A0, 0x0460, 0x04C0, 0x0960)

ISCSI_PROTOCOL_ID = 0x5
MAX_TRANSFER_BYTES = 8 << 20  # one command moves at most this much (block limits VPD)


class CommandError(Exception):
    """Ends a command with CHECK CONDITION and this sense data."""

    def __init__(self, sense: Sense) -> None:
        super().__init__(sense.describe())
        self.sense = sense


def field_pointer(byte: int, bit: int | None = None, *, in_cdb: bool = True) -> bytes:
    """SENSE KEY SPECIFIC for ILLEGAL REQUEST: SKSV, C/D, BPV + BIT POINTER, FIELD POINTER."""
    first = 0x80 | (0x40 if in_cdb else 0) | (0x08 | bit if bit is not None else 0)
    return bytes([first]) + byte.to_bytes(2, "big")


def illegal(asc: int, ascq: int = 0, byte: int | None = None, bit: int | None = None, *,
            in_cdb: bool = True) -> CommandError:
    sks = field_pointer(byte, bit, in_cdb=in_cdb) if byte is not None else None
    return CommandError(Sense(SenseKey.ILLEGAL_REQUEST, asc, ascq, sense_key_specific=sks))


def invalid_field(byte: int, bit: int | None = None) -> CommandError:
    """24/00 INVALID FIELD IN CDB, pointing at ``byte`` (and ``bit``) of the CDB."""
    return illegal(0x24, 0x00, byte, bit)


def invalid_opcode() -> CommandError:
    return illegal(0x20, 0x00, 0, 7)


def lba_out_of_range() -> CommandError:
    return illegal(0x21, 0x00)


def medium_error(asc: int, ascq: int = 0) -> CommandError:
    return CommandError(Sense(SenseKey.MEDIUM_ERROR, asc, ascq))


def hardware_error(asc: int, ascq: int = 0) -> CommandError:
    return CommandError(Sense(SenseKey.HARDWARE_ERROR, asc, ascq))


def cut(data: bytes, allocation_length: int) -> bytes:
    """Data-in limited by the CDB's ALLOCATION LENGTH (the iSCSI layer cuts at its EDTL)."""
    return data[:allocation_length]


# --- the command table ------------------------------------------------------


@dataclass(frozen=True)
class CommandSpec:
    """One supported command: what REPORT SUPPORTED OPERATION CODES lists.

    ``usage`` is the CDB USAGE DATA: a 1 bit is a bit the device server looks
    at. Any other bit set in a CDB (control byte aside) is refused with 24/00
    and a field pointer, so the list and the behaviour cannot drift apart.
    """

    opcode: int
    service_action: int | None
    name: str
    usage: bytes
    timeout: int = 30  # RECOMMENDED COMMAND TIMEOUT, seconds

    @property
    def length(self) -> int:
        return len(self.usage)


def spec(opcode: int, sa: int | None, name: str, *usage: int) -> CommandSpec:
    return CommandSpec(opcode, sa, name, bytes([opcode, *usage]))


def check_cdb(cdb: bytes, command: CommandSpec) -> None:
    """24/00 for a CDB that is too short or sets a bit the command does not use."""
    if len(cdb) < command.length:
        raise invalid_field(0)
    for index in range(1, command.length - 1):  # the CONTROL byte is not checked
        stray = cdb[index] & ~command.usage[index]
        if stray:
            raise invalid_field(index, stray.bit_length() - 1)


def _timeouts(command: CommandSpec) -> bytes:
    # Command timeouts descriptor: DESCRIPTOR LENGTH 0Ah, reserved, COMMAND SPECIFIC,
    # NOMINAL COMMAND PROCESSING TIMEOUT, RECOMMENDED COMMAND TIMEOUT.
    return struct.pack(">HBBII", 0x0A, 0, 0, 0, command.timeout)


def report_supported_opcodes(cdb: bytes, commands: Sequence[CommandSpec]) -> bytes:
    """MAINTENANCE IN / REPORT SUPPORTED OPERATION CODES data (SPC-4 6.35)."""
    rctd = bool(cdb[2] & 0x80)
    options = cdb[2] & 0x07
    opcode, sa = cdb[3], int.from_bytes(cdb[4:6], "big")
    alloc = int.from_bytes(cdb[6:10], "big")
    if options == 0:
        body = b""
        for command in commands:
            flags = (0x02 if rctd else 0) | (0x01 if command.service_action is not None else 0)
            body += struct.pack(">BxHxBH", command.opcode, command.service_action or 0,
                                flags, command.length)
            if rctd:
                body += _timeouts(command)
        return cut(len(body).to_bytes(4, "big") + body, alloc)
    if options not in (1, 2, 3):
        raise invalid_field(2, 2)
    with_sa = {c.opcode for c in commands if c.service_action is not None}
    if options == 1 and opcode in with_sa:
        raise invalid_field(3)
    if options == 2 and opcode not in with_sa and any(c.opcode == opcode for c in commands):
        raise invalid_field(3)
    wanted_sa = sa if (options == 2 or opcode in with_sa) else None
    found = next((c for c in commands
                  if c.opcode == opcode and c.service_action == wanted_sa), None)
    if found is None:
        return cut(bytes([0, 0x01, 0, 0]), alloc)  # SUPPORT 001b: not supported
    data = bytes([0, (0x80 if rctd else 0) | 0x03]) + found.length.to_bytes(2, "big")
    data += found.usage
    if rctd:
        data += _timeouts(found)
    return cut(data, alloc)


# --- INQUIRY ----------------------------------------------------------------


def _ascii(text: str, size: int) -> bytes:
    return text.encode("ascii", "replace")[:size].ljust(size, b" ")


def standard_inquiry(*, vendor: str = VENDOR, product: str = PRODUCT,
                     revision: str = REVISION) -> bytes:
    """Standard INQUIRY data (SPC-4 6.6.2), 96 bytes with version descriptors."""
    data = bytearray(96)
    data[0] = 0x00  # PERIPHERAL QUALIFIER 000b, DEVICE TYPE 00h (direct access block)
    data[2] = 0x06  # VERSION: SPC-4
    data[3] = 0x12  # HISUP, RESPONSE DATA FORMAT 2
    data[4] = len(data) - 5  # ADDITIONAL LENGTH
    data[7] = 0x02  # CMDQUE
    data[8:16] = _ascii(vendor, 8)
    data[16:32] = _ascii(product, 16)
    data[32:36] = _ascii(revision, 4)
    for index, descriptor in enumerate(VERSION_DESCRIPTORS):
        data[58 + 2 * index:60 + 2 * index] = descriptor.to_bytes(2, "big")
    return bytes(data)


def _vpd(page: int, body: bytes) -> bytes:
    return bytes([0x00, page]) + len(body).to_bytes(2, "big") + body


def naa_locally_assigned(serial: str) -> bytes:
    """An 8-byte NAA 3h (locally assigned) name derived from the serial number."""
    digest = int.from_bytes(hashlib.sha256(serial.encode()).digest()[:8], "big")
    return ((0x3 << 60) | (digest & ((1 << 60) - 1))).to_bytes(8, "big")


def _designator(code_set: int, association: int, kind: int, value: bytes, *,
                protocol: int | None = None) -> bytes:
    piv = 0x80 if protocol is not None else 0
    return bytes([((protocol or 0) << 4) | code_set, piv | association << 4 | kind, 0,
                  len(value)]) + value


def _name_string(text: str) -> bytes:
    """SCSI name string: UTF-8, null terminated, padded to a multiple of four bytes."""
    raw = text.encode() + b"\0"
    return raw + bytes(-len(raw) % 4)


def vpd_page(page: int, *, serial: str, target_name: str | None, target_port: int,
             max_transfer_blocks: int) -> bytes:
    """One VPD page; CommandError 24/00 (pointing at PAGE CODE) for a page we lack."""
    if page == 0x00:
        return _vpd(0x00, bytes(VPD_PAGES))
    if page == 0x80:
        return _vpd(0x80, serial.encode("ascii", "replace"))
    if page == 0x83:
        body = _designator(0x1, 0, 0x3, naa_locally_assigned(serial))
        body += _designator(0x2, 0, 0x1, _ascii(VENDOR, 8) + serial.encode("ascii", "replace"))
        body += _designator(0x1, 1, 0x4, target_port.to_bytes(4, "big"),
                            protocol=ISCSI_PROTOCOL_ID)
        if target_name:
            body += _designator(0x3, 1, 0x8, _name_string(f"{target_name},t,0x{target_port:04x}"),
                                protocol=ISCSI_PROTOCOL_ID)
            body += _designator(0x3, 2, 0x8, _name_string(target_name),
                                protocol=ISCSI_PROTOCOL_ID)
        return _vpd(0x83, body)
    if page == 0xB0:
        # Block limits (SBC-3 6.5.3): OPTIMAL TRANSFER LENGTH GRANULARITY 1,
        # MAXIMUM TRANSFER LENGTH; no UNMAP, no WRITE SAME, no COMPARE AND WRITE.
        limits = bytearray(0x3C)
        limits[2:4] = (1).to_bytes(2, "big")
        limits[4:8] = max_transfer_blocks.to_bytes(4, "big")
        return _vpd(0xB0, bytes(limits))
    if page == 0xB1:
        characteristics = bytearray(0x3C)
        characteristics[0:2] = (1).to_bytes(2, "big")  # MEDIUM ROTATION RATE: non-rotating
        return _vpd(0xB1, bytes(characteristics))
    if page == 0xB2:
        return _vpd(0xB2, bytes(4))  # fully provisioned, no UNMAP
    raise invalid_field(2)


VPD_PAGES = (0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2)


# --- REPORT LUNS ------------------------------------------------------------


def encode_lun(lun: int) -> bytes:
    """SAM-5 single level LUN: peripheral addressing below 256, flat space above."""
    if 0 <= lun < 256:
        return bytes([0, lun]) + bytes(6)
    if lun < 0x4000:
        return bytes([0x40 | lun >> 8, lun & 0xFF]) + bytes(6)
    raise ValueError(f"LUN {lun} cannot be encoded in single level format")


def report_luns(luns: Iterable[int]) -> bytes:
    body = b"".join(encode_lun(lun) for lun in sorted(set(luns)))
    return len(body).to_bytes(4, "big") + bytes(4) + body


# --- MODE SENSE -------------------------------------------------------------

CACHING_PAGE = 0x08
CONTROL_PAGE = 0x0A
ALL_PAGES = 0x3F


def _caching(wce: bool, changeable: bool) -> bytes:
    body = bytearray(0x12)
    if not changeable:
        body[0] = 0x04 if wce else 0  # WCE; RCD 0 (the read cache is on)
    return bytes([CACHING_PAGE, len(body)]) + bytes(body)


def _control(changeable: bool) -> bytes:
    body = bytearray(0x0A)
    if not changeable:
        body[1] = 0x10  # QUEUE ALGORITHM MODIFIER 1: unrestricted reordering; QERR 0
    return bytes([CONTROL_PAGE, len(body)]) + bytes(body)


def mode_sense(cdb: bytes, *, blocks: int, block_size: int, wce: bool) -> bytes:
    """MODE SENSE(6) (1Ah) or (10) (5Ah) data: header, block descriptor, pages."""
    ten = cdb[0] == 0x5A
    dbd = bool(cdb[1] & 0x08)
    llbaa = ten and bool(cdb[1] & 0x10)
    control, page, subpage = cdb[2] >> 6, cdb[2] & 0x3F, cdb[3]
    if control == 3:
        raise illegal(0x39, 0x00)  # SAVING PARAMETERS NOT SUPPORTED
    changeable = control == 1
    if page == ALL_PAGES and subpage in (0x00, 0xFF):
        pages = _caching(wce, changeable) + _control(changeable)
    elif subpage != 0:
        raise invalid_field(3)
    elif page == CACHING_PAGE:
        pages = _caching(wce, changeable)
    elif page == CONTROL_PAGE:
        pages = _control(changeable)
    else:
        raise invalid_field(2, 5)
    descriptor = b""
    if not dbd:
        if llbaa:
            descriptor = struct.pack(">Q4xI", blocks, block_size)
        else:
            descriptor = struct.pack(">IxBH", min(blocks, 0xFFFFFFFF), block_size >> 16,
                                     block_size & 0xFFFF)
    device_specific = 0x10  # DPOFUA; WP 0
    if ten:
        length = 6 + len(descriptor) + len(pages)
        header = struct.pack(">HBBBxH", length, 0, device_specific, 0x01 if llbaa else 0,
                             len(descriptor))
        alloc = int.from_bytes(cdb[7:9], "big")
    else:
        length = 3 + len(descriptor) + len(pages)
        header = bytes([length, 0, device_specific, len(descriptor)])
        alloc = cdb[4]
    return cut(header + descriptor + pages, alloc)
