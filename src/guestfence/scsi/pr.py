"""SCSI-3 persistent reservations without I/O: CDBs, parameter lists, PR IN data.

Layouts follow SPC-4 (T10/BSR INCITS 513), fields named as there; every
multi-byte field is big-endian. Builders take plain ints and validate ranges
(ValueError: a bug in the caller). Parsers take what a device sent and raise
ScsiProtocolError for anything short or self-contradictory, never IndexError,
because a fence agent must say "the device answered nonsense", not crash.

The result types also encode themselves (``encode()``): the test target and,
later, our own iSCSI target answer PR IN with the same code the client parses.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from guestfence.errors import ProtocolError

TEST_UNIT_READY = 0x00
PERSISTENT_RESERVE_IN = 0x5E
PERSISTENT_RESERVE_OUT = 0x5F

LU_SCOPE = 0  # the only SCOPE value SPC-4 still defines
BASIC_PARAMETER_LENGTH = 24  # PR OUT parameter list without TransportIDs
MAX_ALLOCATION_LENGTH = 0xFFFF  # PR IN ALLOCATION LENGTH is 16 bits
MAX_KEY = 2**64 - 1

# PRGENERATION, ADDITIONAL LENGTH: READ KEYS, READ RESERVATION and READ FULL STATUS
_HEADER = struct.Struct(">II")


class ScsiProtocolError(ProtocolError):
    """A device sent PR IN data or sense data that does not follow SPC-4."""


class PrIn(enum.IntEnum):
    """PERSISTENT RESERVE IN service actions (CDB byte 1, bits 4-0)."""

    READ_KEYS = 0x00
    READ_RESERVATION = 0x01
    REPORT_CAPABILITIES = 0x02
    READ_FULL_STATUS = 0x03

    @property
    def label(self) -> str:
        return self.name.replace("_", " ")


class PrOut(enum.IntEnum):
    """PERSISTENT RESERVE OUT service actions (CDB byte 1, bits 4-0)."""

    REGISTER = 0x00
    RESERVE = 0x01
    RELEASE = 0x02
    CLEAR = 0x03
    PREEMPT = 0x04
    PREEMPT_AND_ABORT = 0x05
    REGISTER_AND_IGNORE_EXISTING_KEY = 0x06
    REGISTER_AND_MOVE = 0x07
    REPLACE_LOST_RESERVATION = 0x08

    @property
    def label(self) -> str:
        return self.name.replace("_", " ")


class PrType(enum.IntEnum):
    """The TYPE field. 0h, 2h and 4h are obsolete; fence_scsi uses 5h."""

    WRITE_EXCLUSIVE = 0x1
    EXCLUSIVE_ACCESS = 0x3
    WRITE_EXCLUSIVE_REGISTRANTS_ONLY = 0x5
    EXCLUSIVE_ACCESS_REGISTRANTS_ONLY = 0x6
    WRITE_EXCLUSIVE_ALL_REGISTRANTS = 0x7
    EXCLUSIVE_ACCESS_ALL_REGISTRANTS = 0x8

    @property
    def short(self) -> str:
        """The abbreviation of sg_persist and SPC-4's type mask (WR_EX_RO, ...)."""
        return _SHORT[self]

    @property
    def label(self) -> str:
        """As sg_persist prints it: 'Write Exclusive, registrants only'."""
        return _LABEL[self]

    @property
    def all_registrants(self) -> bool:
        """Every registrant is a holder; READ RESERVATION reports key 0."""
        return self in (PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS,
                        PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS)


_SHORT = {1: "WR_EX", 3: "EX_AC", 5: "WR_EX_RO", 6: "EX_AC_RO", 7: "WR_EX_AR", 8: "EX_AC_AR"}
_LABEL = {
    1: "Write Exclusive", 3: "Exclusive Access",
    5: "Write Exclusive, registrants only", 6: "Exclusive Access, registrants only",
    7: "Write Exclusive, all registrants", 8: "Exclusive Access, all registrants",
}
# PERSISTENT RESERVATION TYPE MASK, bytes 4-5 of REPORT CAPABILITIES read as one
# 16-bit word: byte 4 bit 7 WR_EX_AR, bit 6 EX_AC_RO, bit 5 WR_EX_RO, bit 3
# EX_AC, bit 1 WR_EX; byte 5 bit 0 EX_AC_AR.
TYPE_MASK_BITS = {7: 0x8000, 6: 0x4000, 5: 0x2000, 3: 0x0800, 1: 0x0200, 8: 0x0001}


def type_name(code: int) -> str:
    """'Write Exclusive, registrants only (5h)' or 'obsolete type 2h' for what a device reports."""
    if code in _LABEL:
        return f"{_LABEL[code]} ({code:X}h)"
    return f"{'obsolete' if code in (0, 2, 4) else 'reserved'} type {code:X}h"


def _as_type(code: int) -> int:
    # Keep unknown codes as plain ints: a parser reports what the device said.
    return PrType(code) if code in _LABEL else code


def _check_range(what: str, value: int, top: int) -> None:
    if not 0 <= value <= top:
        raise ValueError(f"{what} {value!r} out of range 0..{top:#x}")


# --- CDBs -------------------------------------------------------------------


def test_unit_ready_cdb() -> bytes:
    """TEST UNIT READY: six zero bytes (OPERATION CODE 00h, CONTROL 0)."""
    return bytes(6)


def pr_in_cdb(service_action: int, allocation_length: int) -> bytes:
    """PERSISTENT RESERVE IN: byte 1 SERVICE ACTION, bytes 7-8 ALLOCATION LENGTH."""
    _check_range("service action", service_action, 0x1F)
    _check_range("allocation length", allocation_length, MAX_ALLOCATION_LENGTH)
    return struct.pack(">BB5xHB", PERSISTENT_RESERVE_IN, service_action, allocation_length, 0)


def pr_out_cdb(service_action: int, type: int, param_length: int, scope: int = LU_SCOPE) -> bytes:
    """PERSISTENT RESERVE OUT: byte 2 SCOPE (7-4) and TYPE (3-0), bytes 5-8 PARAMETER LIST LENGTH.

    SPC-3+ made PARAMETER LIST LENGTH 32 bits; sg3_utils writes 16 bits into
    bytes 7-8, which is the same bytes for any realistic length.
    """
    _check_range("service action", service_action, 0x1F)
    _check_range("type", type, 0xF)
    _check_range("scope", scope, 0xF)
    _check_range("parameter list length", param_length, 0xFFFFFFFF)
    return struct.pack(">BBB2xIB", PERSISTENT_RESERVE_OUT, service_action,
                       scope << 4 | type, param_length, 0)


def pr_out_parameters(
    key: int,
    service_action_key: int,
    *,
    aptpl: bool = False,
    all_tg_pt: bool = False,
    spec_i_pt: bool = False,
    transport_ids: tuple[bytes, ...] = (),
) -> bytes:
    """The basic PR OUT parameter list (24 bytes), plus TransportIDs with SPEC_I_PT.

    Bytes 0-7 RESERVATION KEY, 8-15 SERVICE ACTION RESERVATION KEY, 16-19
    obsolete, byte 20 SPEC_I_PT (bit 3) ALL_TG_PT (bit 2) APTPL (bit 0), 21
    reserved, 22-23 obsolete. With SPEC_I_PT, bytes 24-27 TRANSPORTID
    PARAMETER DATA LENGTH and the TransportIDs follow.
    """
    _check_range("reservation key", key, MAX_KEY)
    _check_range("service action reservation key", service_action_key, MAX_KEY)
    if transport_ids and not spec_i_pt:
        raise ValueError("TransportIDs are only sent with SPEC_I_PT")
    flags = (spec_i_pt << 3) | (all_tg_pt << 2) | aptpl
    basic = struct.pack(">QQ4xB3x", key, service_action_key, flags)
    if not spec_i_pt:
        return basic
    ids = b"".join(transport_ids)
    return basic + struct.pack(">I", len(ids)) + ids


def command_name(cdb: bytes) -> str:
    """'PERSISTENT RESERVE OUT / PREEMPT AND ABORT', for messages."""
    if not cdb:
        return "empty CDB"
    op = cdb[0]
    if op in (PERSISTENT_RESERVE_IN, PERSISTENT_RESERVE_OUT) and len(cdb) > 1:
        sa = cdb[1] & 0x1F
        names = _PR_IN_NAMES if op == PERSISTENT_RESERVE_IN else _PR_OUT_NAMES
        prefix = "IN" if op == PERSISTENT_RESERVE_IN else "OUT"
        return f"PERSISTENT RESERVE {prefix} / {names.get(sa, f'SERVICE ACTION {sa:02X}h')}"
    return _OPCODES.get(op, f"OPERATION CODE {op:02X}h")


_PR_IN_NAMES = {a.value: a.label for a in PrIn}
_PR_OUT_NAMES = {a.value: a.label for a in PrOut}
_OPCODES = {0x00: "TEST UNIT READY", 0x03: "REQUEST SENSE", 0x12: "INQUIRY",
            0x28: "READ(10)", 0x2A: "WRITE(10)", 0xA0: "REPORT LUNS"}


# --- PR IN parameter data ---------------------------------------------------


def required_length(service_action: int, data: bytes) -> int | None:
    """How many bytes the full answer has, from its header (None if the header is cut).

    A device fills at most ALLOCATION LENGTH bytes but always reports the full
    ADDITIONAL LENGTH (or LENGTH for REPORT CAPABILITIES), so a client can ask
    again with a bigger buffer.
    """
    if service_action == PrIn.REPORT_CAPABILITIES:
        return int.from_bytes(data[0:2], "big") if len(data) >= 2 else None
    return 8 + int.from_bytes(data[4:8], "big") if len(data) >= 8 else None


def _header(what: str, data: bytes) -> tuple[int, int]:
    """PRGENERATION and ADDITIONAL LENGTH, checked against what was received."""
    if len(data) < 8:
        raise ScsiProtocolError(f"{what}: {len(data)} bytes of parameter data, need at least 8")
    generation, additional = _HEADER.unpack_from(data)
    if len(data) < 8 + additional:
        raise ScsiProtocolError(
            f"{what}: ADDITIONAL LENGTH is {additional} but only {len(data) - 8} bytes follow "
            "the header (answer truncated)"
        )
    return generation, additional


@dataclass(frozen=True, slots=True)
class ReadKeys:
    generation: int
    keys: tuple[int, ...]  # one per registered I_T nexus, so duplicates are normal

    def encode(self) -> bytes:
        return _HEADER.pack(self.generation, 8 * len(self.keys)) + b"".join(
            k.to_bytes(8, "big") for k in self.keys)


def parse_read_keys(data: bytes) -> ReadKeys:
    """Bytes 0-3 PRGENERATION, 4-7 ADDITIONAL LENGTH, then 8-byte RESERVATION KEYs."""
    generation, additional = _header("READ KEYS", data)
    if additional % 8:
        raise ScsiProtocolError(f"READ KEYS: ADDITIONAL LENGTH {additional} is not a multiple of 8")
    keys = struct.unpack_from(f">{additional // 8}Q", data, 8)
    return ReadKeys(generation, tuple(keys))


@dataclass(frozen=True, slots=True)
class Reservation:
    key: int  # 0 for the all-registrants types
    type: int  # a PrType member when the code is a defined type
    scope: int = LU_SCOPE

    def __str__(self) -> str:
        return f"key 0x{self.key:x}, {type_name(self.type)}"


@dataclass(frozen=True, slots=True)
class ReadReservation:
    generation: int
    reservation: Reservation | None

    def encode(self) -> bytes:
        r = self.reservation
        if r is None:
            return _HEADER.pack(self.generation, 0)
        return _HEADER.pack(self.generation, 16) + struct.pack(
            ">Q5xB2x", r.key, (r.scope << 4) | r.type)


def parse_read_reservation(data: bytes) -> ReadReservation:
    """Header, then (ADDITIONAL LENGTH 10h) bytes 8-15 RESERVATION KEY, 16-19 obsolete,
    20 reserved, 21 SCOPE (7-4) and TYPE (3-0), 22-23 obsolete."""
    generation, additional = _header("READ RESERVATION", data)
    if additional == 0:
        return ReadReservation(generation, None)
    if additional != 16:
        raise ScsiProtocolError(
            f"READ RESERVATION: ADDITIONAL LENGTH {additional}, expected 0 (none) or 16")
    key, scope_type = struct.unpack_from(">Q5xB", data, 8)
    reservation = Reservation(key, _as_type(scope_type & 0xF), scope_type >> 4)
    return ReadReservation(generation, reservation)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """REPORT CAPABILITIES: what the device server supports (flag names as SPC-4)."""

    rlr_c: bool = False  # REPLACE LOST RESERVATION capable
    crh: bool = False  # SPC-2 RESERVE/RELEASE handled compatibly
    sip_c: bool = False  # SPEC_I_PT supported
    atp_c: bool = False  # ALL_TG_PT supported
    ptpl_c: bool = False  # APTPL (persist through power loss) supported
    tmv: bool = False  # the type mask is valid
    allow_commands: int = 0
    ptpl_a: bool = False  # persist through power loss is active
    type_mask: int = 0  # bytes 4-5 as one word; see TYPE_MASK_BITS

    @property
    def supported_types(self) -> frozenset[int] | None:
        """The types the mask lists, or None when TMV=0 (the mask then says nothing)."""
        if not self.tmv:
            return None
        return frozenset(PrType(t) for t, bit in TYPE_MASK_BITS.items() if self.type_mask & bit)

    def supports(self, type: int) -> bool | None:
        types = self.supported_types
        return None if types is None else type in types

    def encode(self) -> bytes:
        byte2 = (self.rlr_c << 7 | self.crh << 4 | self.sip_c << 3 | self.atp_c << 2
                 | self.ptpl_c)
        byte3 = self.tmv << 7 | (self.allow_commands & 7) << 4 | self.ptpl_a
        return struct.pack(">HBBH2x", 8, byte2, byte3, self.type_mask)


def parse_report_capabilities(data: bytes) -> Capabilities:
    """Bytes 0-1 LENGTH (8), byte 2 RLR_C(7) CRH(4) SIP_C(3) ATP_C(2) PTPL_C(0),
    byte 3 TMV(7) ALLOW COMMANDS(6-4) PTPL_A(0), bytes 4-5 TYPE MASK, 6-7 reserved."""
    if len(data) < 8:
        raise ScsiProtocolError(f"REPORT CAPABILITIES: {len(data)} bytes, need 8")
    length, b2, b3, mask = struct.unpack_from(">HBBH", data)
    if length < 8:
        raise ScsiProtocolError(f"REPORT CAPABILITIES: LENGTH is {length}, expected 8")
    return Capabilities(
        rlr_c=bool(b2 & 0x80), crh=bool(b2 & 0x10), sip_c=bool(b2 & 0x08),
        atp_c=bool(b2 & 0x04), ptpl_c=bool(b2 & 0x01), tmv=bool(b3 & 0x80),
        allow_commands=(b3 >> 4) & 7, ptpl_a=bool(b3 & 0x01), type_mask=mask,
    )


_DESCRIPTOR = struct.Struct(">Q4xBB4xHI")  # 24 bytes before the TransportID


@dataclass(frozen=True, slots=True)
class FullStatusDescriptor:
    key: int
    holder: bool  # R_HOLDER; type and scope mean something only when set
    type: int
    scope: int
    all_tg_pt: bool
    relative_target_port: int  # meaningful only when all_tg_pt is False
    transport_id: bytes

    @property
    def initiator(self) -> str:
        return describe_transport_id(self.transport_id)

    def encode(self) -> bytes:
        flags = (self.all_tg_pt << 1) | self.holder
        tid = self.transport_id
        return _DESCRIPTOR.pack(self.key, flags, (self.scope << 4) | self.type,
                                self.relative_target_port, len(tid)) + tid


@dataclass(frozen=True, slots=True)
class FullStatus:
    generation: int
    descriptors: tuple[FullStatusDescriptor, ...]

    def encode(self) -> bytes:
        body = b"".join(d.encode() for d in self.descriptors)
        return _HEADER.pack(self.generation, len(body)) + body


def parse_read_full_status(data: bytes) -> FullStatus:
    """Header, then per I_T nexus: bytes 0-7 RESERVATION KEY, 12 ALL_TG_PT(1) R_HOLDER(0),
    13 SCOPE/TYPE, 18-19 RELATIVE TARGET PORT IDENTIFIER, 20-23 ADDITIONAL DESCRIPTOR
    LENGTH, then that many bytes of TransportID."""
    generation, additional = _header("READ FULL STATUS", data)
    end = 8 + additional
    offset, out = 8, []
    while offset < end:
        if offset + _DESCRIPTOR.size > end:
            raise ScsiProtocolError(
                f"READ FULL STATUS: descriptor at byte {offset} cut by ADDITIONAL LENGTH")
        key, flags, scope_type, port, tid_len = _DESCRIPTOR.unpack_from(data, offset)
        offset += _DESCRIPTOR.size
        if offset + tid_len > end:
            raise ScsiProtocolError(
                f"READ FULL STATUS: ADDITIONAL DESCRIPTOR LENGTH {tid_len} at byte {offset - 4} "
                "runs past the end of the list")
        out.append(FullStatusDescriptor(
            key=key, holder=bool(flags & 1), type=_as_type(scope_type & 0xF),
            scope=scope_type >> 4, all_tg_pt=bool(flags & 2), relative_target_port=port,
            transport_id=bytes(data[offset:offset + tid_len]),
        ))
        offset += tid_len
    return FullStatus(generation, tuple(out))


# --- TransportIDs (SPC-4 7.6.4), for diagnostics ----------------------------

ISCSI_PROTOCOL = 0x5


def iscsi_transport_id(name: str, isid: int | None = None) -> bytes:
    """An iSCSI TransportID: FORMAT CODE 00b (name) or 01b (name ',i,0x' ISID).

    Byte 0 FORMAT CODE (7-6) and PROTOCOL IDENTIFIER (3-0), bytes 2-3
    ADDITIONAL LENGTH, then the NUL-terminated name padded to a multiple of 4
    (at least 20 bytes, so the TransportID is at least 24).
    """
    text = name if isid is None else f"{name},i,0x{isid:012x}"
    body = text.encode() + b"\0"
    body = body.ljust(max(20, -(-len(body) // 4) * 4), b"\0")
    fmt = 0 if isid is None else 1
    return struct.pack(">BxH", fmt << 6 | ISCSI_PROTOCOL, len(body)) + body


def describe_transport_id(tid: bytes) -> str:
    """'iSCSI iqn...,i,0x23d000000001', 'FC 0x21000024ff4b81a0', ... never raises."""
    if len(tid) < 4:
        return f"TransportID {tid.hex() or '(empty)'}"
    proto = tid[0] & 0x0F
    if proto == ISCSI_PROTOCOL:
        length = int.from_bytes(tid[2:4], "big")
        text = tid[4:4 + length].split(b"\0", 1)[0].decode("utf-8", "replace")
        return f"iSCSI {text}"
    if proto == 0x0 and len(tid) >= 16:
        return f"FC 0x{tid[8:16].hex()}"  # N_PORT_NAME
    if proto == 0x6 and len(tid) >= 12:
        return f"SAS 0x{tid[4:12].hex()}"  # SAS ADDRESS
    return f"protocol {proto:X}h TransportID {tid.hex()}"
