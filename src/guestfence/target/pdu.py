"""iSCSI PDUs (RFC 7143 section 11), sans-I/O: parse, build and frame a byte stream.

A PDU is a 48-byte Basic Header Segment (BHS), optional Additional Header
Segments (TotalAHSLength, in 4-byte words), an optional header digest, a data
segment padded to a multiple of 4 bytes and an optional data digest.  Digests
are CRC32C (RFC 3720 appendix B.4), sent least significant byte first as
every initiator does (libiscsi, open-iscsi).

:class:`Pdu` keeps the raw BHS and offers the fields every opcode shares plus
generic 32-bit word accessors; the opcode-specific meaning of words 20..44 is
named by the builders and by the session code.  Malformed input raises
:class:`ProtocolError`, never IndexError or struct.error: the framer is fed
whatever a peer sends.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

BHS_LEN = 48
MAX_DATA_SEGMENT = (1 << 24) - 1  # DataSegmentLength is 3 bytes
RESERVED_TAG = 0xFFFFFFFF


class ProtocolError(Exception):
    """The peer sent something that is not a valid iSCSI PDU stream: drop the connection."""


class Op(enum.IntEnum):
    NOP_OUT = 0x00
    SCSI_CMD = 0x01
    TASK_MGMT = 0x02
    LOGIN = 0x03
    TEXT = 0x04
    DATA_OUT = 0x05
    LOGOUT = 0x06
    SNACK = 0x10
    NOP_IN = 0x20
    SCSI_RSP = 0x21
    TASK_MGMT_RSP = 0x22
    LOGIN_RSP = 0x23
    TEXT_RSP = 0x24
    DATA_IN = 0x25
    LOGOUT_RSP = 0x26
    R2T = 0x31
    ASYNC = 0x32
    REJECT = 0x3F


INITIATOR_OPS = frozenset(
    {Op.NOP_OUT, Op.SCSI_CMD, Op.TASK_MGMT, Op.LOGIN, Op.TEXT, Op.DATA_OUT, Op.LOGOUT, Op.SNACK}
)


# Task management functions and responses (RFC 7143 11.5.1, 11.6.1)
ABORT_TASK, ABORT_TASK_SET, CLEAR_ACA, CLEAR_TASK_SET = 1, 2, 3, 4
LOGICAL_UNIT_RESET, TARGET_WARM_RESET, TARGET_COLD_RESET, TASK_REASSIGN = 5, 6, 7, 8
TMF_COMPLETE, TMF_NO_TASK, TMF_NO_LUN, TMF_NO_REASSIGN, TMF_NOT_SUPPORTED = 0, 1, 2, 4, 5


class RejectReason(enum.IntEnum):
    DATA_DIGEST = 0x02
    SNACK = 0x03
    PROTOCOL_ERROR = 0x04
    NOT_SUPPORTED = 0x05
    IMMEDIATE_REJECT = 0x06
    TASK_IN_PROGRESS = 0x07
    INVALID_DATA_ACK = 0x08
    INVALID_FIELD = 0x09
    OUT_OF_RESOURCES = 0x0A
    WAITING_FOR_LOGOUT = 0x0C


# -- CRC32C -----------------------------------------------------------------------------


def _crc_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC32C (Castagnoli) of ``data``; pure Python, so digests cost ~10 ms per 64 KiB."""
    c = crc ^ 0xFFFFFFFF
    table = _CRC_TABLE
    for b in bytes(data):
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _digest(data: bytes | bytearray | memoryview) -> bytes:
    return crc32c(data).to_bytes(4, "little")


# -- LUN encoding (SAM-5 4.7) -------------------------------------------------------------


def encode_lun(lun: int) -> bytes:
    """Peripheral addressing below 256 (what libiscsi and Linux use), flat space above."""
    if not 0 <= lun < 0x4000:
        raise ValueError(f"LUN {lun} out of range")
    if lun < 256:
        return bytes([0, lun]) + bytes(6)
    return bytes([0x40 | (lun >> 8), lun & 0xFF]) + bytes(6)


def decode_lun(raw: bytes) -> int:
    """LUN number of an 8-byte LUN field; -1 for address methods we do not serve."""
    method = raw[0] >> 6
    if method == 0 and raw[0] == 0:  # peripheral, bus 0
        return raw[1]
    if method == 1:  # flat space
        return ((raw[0] & 0x3F) << 8) | raw[1]
    return -1


# -- the PDU ------------------------------------------------------------------------------


@dataclass
class Pdu:
    bhs: bytearray = field(default_factory=lambda: bytearray(BHS_LEN))
    ahs: bytes = b""
    data: bytes = b""

    @classmethod
    def new(cls, op: int, flags: int = 0, *, data: bytes = b"", itt: int = RESERVED_TAG,
            immediate: bool = False) -> Pdu:
        p = cls(data=data)
        p.bhs[0] = (op & 0x3F) | (0x40 if immediate else 0)
        p.bhs[1] = flags & 0xFF
        p.itt = itt
        return p

    @property
    def opcode(self) -> int:
        return self.bhs[0] & 0x3F

    @property
    def immediate(self) -> bool:
        return bool(self.bhs[0] & 0x40)

    @property
    def flags(self) -> int:
        return self.bhs[1]

    @property
    def final(self) -> bool:
        return bool(self.bhs[1] & 0x80)

    @property
    def lun_raw(self) -> bytes:
        return bytes(self.bhs[8:16])

    @lun_raw.setter
    def lun_raw(self, value: bytes) -> None:
        self.bhs[8:16] = value[:8].ljust(8, b"\0")

    @property
    def lun(self) -> int:
        return decode_lun(self.lun_raw)

    @property
    def itt(self) -> int:
        return self.word(16)

    @itt.setter
    def itt(self, value: int) -> None:
        self.set_word(16, value)

    def word(self, offset: int) -> int:
        value: int = struct.unpack_from(">I", self.bhs, offset)[0]
        return value

    def set_word(self, offset: int, value: int) -> None:
        struct.pack_into(">I", self.bhs, offset, value & 0xFFFFFFFF)

    def half(self, offset: int) -> int:
        value: int = struct.unpack_from(">H", self.bhs, offset)[0]
        return value

    def set_half(self, offset: int, value: int) -> None:
        struct.pack_into(">H", self.bhs, offset, value & 0xFFFF)

    # names for the words most PDUs share (RFC 7143 11.x)
    @property
    def ttt(self) -> int:
        return self.word(20)

    @property
    def cmdsn(self) -> int:
        return self.word(24)

    @property
    def expstatsn(self) -> int:
        return self.word(28)

    def set_sn(self, statsn: int, expcmdsn: int, maxcmdsn: int) -> None:
        """StatSN/ExpCmdSN/MaxCmdSN: at 24/28/32 in every target PDU that carries them."""
        self.set_word(24, statsn)
        self.set_word(28, expcmdsn)
        self.set_word(32, maxcmdsn)

    def name(self) -> str:
        try:
            return Op(self.opcode).name
        except ValueError:
            return f"opcode 0x{self.opcode:02x}"

    def encode(self, *, header_digest: bool = False, data_digest: bool = False) -> bytes:
        if len(self.ahs) % 4 or len(self.ahs) > 255 * 4:
            raise ValueError("AHS must be a multiple of 4 bytes, at most 1020")
        if len(self.data) > MAX_DATA_SEGMENT:
            raise ValueError("data segment too long")
        bhs = self.bhs
        bhs[4] = len(self.ahs) // 4
        bhs[5:8] = len(self.data).to_bytes(3, "big")
        header = bytes(bhs) + self.ahs
        parts = [header]
        if header_digest:
            parts.append(_digest(header))
        if self.data:
            padded = self.data + bytes(-len(self.data) % 4)
            parts.append(padded)
            if data_digest:
                parts.append(_digest(padded))
        return b"".join(parts)


class PduReader:
    """Stream framer: ``feed(bytes) -> [Pdu, ...]``; ProtocolError on garbage.

    ``max_data`` bounds a data segment (our MaxRecvDataSegmentLength, or the
    login limit) so a peer cannot make us buffer 16 MiB per PDU; digests are
    switched on by the session once the login negotiated them.
    """

    def __init__(self, max_data: int = 65536) -> None:
        self.max_data = max_data
        self.header_digest = False
        self.data_digest = False
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, chunk: bytes) -> list[Pdu]:
        self._buf += chunk
        out: list[Pdu] = []
        while True:
            pdu = self._next()
            if pdu is None:
                return out
            out.append(pdu)

    def _next(self) -> Pdu | None:
        buf = self._buf
        if len(buf) < BHS_LEN:
            return None
        opcode = buf[0] & 0x3F
        if opcode not in INITIATOR_OPS:
            raise ProtocolError(f"opcode 0x{opcode:02x} is not an initiator opcode")
        if buf[0] & 0x80:
            raise ProtocolError("reserved bit 0 of byte 0 is set")
        ahs_len = buf[4] * 4
        data_len = int.from_bytes(buf[5:8], "big")
        if data_len > self.max_data:
            raise ProtocolError(f"data segment of {data_len} bytes exceeds {self.max_data}")
        hd = 4 if self.header_digest else 0
        padded = data_len + (-data_len % 4)
        dd = 4 if self.data_digest and data_len else 0
        total = BHS_LEN + ahs_len + hd + padded + dd
        if len(buf) < total:
            return None
        header_end = BHS_LEN + ahs_len
        if hd and bytes(buf[header_end:header_end + 4]) != _digest(buf[:header_end]):
            raise ProtocolError("header digest mismatch")
        data_start = header_end + hd
        segment = bytes(buf[data_start:data_start + padded])
        if dd and bytes(buf[data_start + padded:total]) != _digest(segment):
            # ERL 0 has no recovery from a data digest error either: drop the connection
            raise ProtocolError("data digest mismatch")
        pdu = Pdu(bytearray(buf[:BHS_LEN]), bytes(buf[BHS_LEN:header_end]), segment[:data_len])
        del buf[:total]
        return pdu


def extended_cdb(ahs: bytes) -> bytes:
    """The rest of a CDB longer than 16 bytes, from an Extended CDB AHS (type 1)."""
    out = b""
    pos = 0
    while pos + 4 <= len(ahs):
        length = int.from_bytes(ahs[pos:pos + 2], "big")
        if ahs[pos + 2] == 1:
            out += ahs[pos + 4: pos + 3 + length]  # AHSLength counts the reserved byte
        size = 3 + length
        pos += size + (-size % 4)
    return out


# -- text (key=value) segments ------------------------------------------------------------


def parse_text(data: bytes) -> list[tuple[str, str]]:
    """``key=value\\0`` pairs, in order; ProtocolError when one has no '=' or is not UTF-8."""
    pairs: list[tuple[str, str]] = []
    for item in data.split(b"\0"):
        if not item:
            continue
        key, sep, value = item.partition(b"=")
        if not sep or not key:
            raise ProtocolError(f"text item without key=value: {item[:40]!r}")
        try:
            pairs.append((key.decode("ascii"), value.decode("utf-8")))
        except UnicodeDecodeError as e:
            raise ProtocolError(f"text item is not UTF-8: {item[:40]!r}") from e
    return pairs


def build_text(pairs: list[tuple[str, str]]) -> bytes:
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in pairs)


# -- builders for target PDUs -------------------------------------------------------------


def reject(reason: int, bad_header: bytes | bytearray) -> Pdu:
    p = Pdu.new(Op.REJECT, 0x80, data=bytes(bad_header[:BHS_LEN]))
    p.bhs[2] = reason
    return p


def nop_in(itt: int, ttt: int = RESERVED_TAG, lun: bytes = bytes(8), data: bytes = b"") -> Pdu:
    p = Pdu.new(Op.NOP_IN, 0x80, data=data, itt=itt)
    p.lun_raw = lun
    p.set_word(20, ttt)
    return p


def scsi_response(itt: int, status: int, *, sense: bytes = b"", underflow: int = 0,
                  overflow: int = 0, expdatasn: int = 0) -> Pdu:
    """SCSI Response; sense data goes in the data segment behind a 2-byte length."""
    flags = 0x80
    residual = 0
    if overflow:
        flags |= 0x04
        residual = overflow
    elif underflow:
        flags |= 0x02
        residual = underflow
    data = struct.pack(">H", len(sense)) + sense if sense else b""
    p = Pdu.new(Op.SCSI_RSP, flags, data=data, itt=itt)
    p.bhs[2] = 0  # response: command completed at target
    p.bhs[3] = status
    p.set_word(36, expdatasn)
    p.set_word(44, residual)
    return p


def data_in(itt: int, lun: bytes, data: bytes, *, offset: int, datasn: int, final: bool,
            status: int | None = None, underflow: int = 0, overflow: int = 0) -> Pdu:
    """Data-In; with ``status`` the S bit carries the command's status (phase collapse)."""
    flags = 0x80 if final else 0
    residual = 0
    if status is not None:
        flags |= 0x01
        if overflow:
            flags |= 0x04
            residual = overflow
        elif underflow:
            flags |= 0x02
            residual = underflow
    p = Pdu.new(Op.DATA_IN, flags, data=data, itt=itt)
    p.bhs[3] = status or 0
    p.lun_raw = lun
    p.set_word(20, RESERVED_TAG)
    p.set_word(36, datasn)
    p.set_word(40, offset)
    p.set_word(44, residual)
    return p


def r2t(itt: int, lun: bytes, ttt: int, r2tsn: int, offset: int, length: int) -> Pdu:
    p = Pdu.new(Op.R2T, 0x80, itt=itt)
    p.lun_raw = lun
    p.set_word(20, ttt)
    p.set_word(36, r2tsn)
    p.set_word(40, offset)
    p.set_word(44, length)
    return p


def task_mgmt_response(itt: int, response: int) -> Pdu:
    p = Pdu.new(Op.TASK_MGMT_RSP, 0x80, itt=itt)
    p.bhs[2] = response
    return p


def logout_response(itt: int, response: int = 0) -> Pdu:
    p = Pdu.new(Op.LOGOUT_RSP, 0x80, itt=itt)
    p.bhs[2] = response
    return p


def text_response(itt: int, data: bytes, *, final: bool = True, lun: bytes = bytes(8),
                  ttt: int = RESERVED_TAG) -> Pdu:
    p = Pdu.new(Op.TEXT_RSP, 0x80 if final else 0x40, data=data, itt=itt)
    p.lun_raw = lun
    p.set_word(20, ttt)
    return p


def async_logout_request(time2wait: int = 0, time2retain: int = 0) -> Pdu:
    """Async Message, event 1: the target asks the initiator to log out (on shutdown)."""
    p = Pdu.new(Op.ASYNC, 0x80)
    p.bhs[36] = 1
    p.set_half(38, 0)
    p.set_half(40, time2wait)
    p.set_half(42, time2retain)
    return p
