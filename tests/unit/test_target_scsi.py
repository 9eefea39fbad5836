"""The file-backed logical unit (target/scsi.py): data, errors, unit attentions, durability, PR."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from guestfence.scsi.sense import Sense, SenseKey, decode_sense
from guestfence.target.lun import CommandResult, Nexus
from guestfence.target.scsi import COMMANDS, FileLun

BLOCKS = 512
N1 = Nexus("iqn.2026-01.test:one", bytes.fromhex("400001370000"))
N2 = Nexus("iqn.2026-01.test:two", bytes.fromhex("400001370001"), target_port=2)


@dataclass
class Outcome:
    status: int
    data: bytes = b""
    sense: bytes = b""
    abort_nexuses: frozenset[Nexus] = frozenset()
    unit_attentions: dict[Nexus, list[tuple[int, int]]] = field(default_factory=dict)


class StandIn:
    """Just enough of target/pr.py's Reservations to check the seam."""

    def __init__(self, state: bytes = b"") -> None:
        self.state = state
        self.deny: set[Nexus] = set()
        self.checked: list[bytes] = []
        self.persistent = False
        self.next_out = Outcome(0)
        self.outs: list[tuple[Nexus, bytes, bytes]] = []

    def pr_in(self, nexus: Nexus, cdb: bytes) -> Outcome:
        return Outcome(0, data=b"K" * 100)

    def pr_out(self, nexus: Nexus, cdb: bytes, parameters: bytes) -> Outcome:
        self.outs.append((nexus, cdb, parameters))
        if self.next_out.status == 0:
            self.state = parameters
        return self.next_out

    def check_access(self, nexus: Nexus, cdb: bytes) -> bool:
        self.checked.append(cdb)
        return nexus not in self.deny

    def to_bytes(self) -> bytes:
        return self.state

    @classmethod
    def from_bytes(cls, data: bytes) -> StandIn:
        return cls(data)


def make_file(tmp_path: Path, blocks: int = BLOCKS, block_size: int = 512) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(blocks * block_size))
    return path


@pytest.fixture
def pr() -> StandIn:
    return StandIn()


@pytest.fixture
def lun(tmp_path: Path, pr: StandIn) -> FileLun:
    unit = FileLun(make_file(tmp_path), serial="SER0001", reservations=pr,
                   target_name="iqn.2026-01.test:target")
    ready(unit, N1)
    return unit


def run(lun: FileLun, *cdb_bytes: int, data: bytes = b"", nexus: Nexus = N1) -> CommandResult:
    return lun.execute(nexus, bytes(cdb_bytes), data, 1 << 20)


def cdb(opcode: int, size: int, **fields: tuple[int, int, int]) -> bytes:
    raw = bytearray(size)
    raw[0] = opcode
    for _name, (offset, width, value) in fields.items():
        raw[offset:offset + width] = value.to_bytes(width, "big")
    return bytes(raw)


def ex(lun: FileLun, raw: bytes, data: bytes = b"", nexus: Nexus = N1) -> CommandResult:
    return lun.execute(nexus, raw, data, 1 << 20)


def ready(lun: FileLun, nexus: Nexus) -> None:
    while ex(lun, bytes(6), nexus=nexus).status != 0:
        pass


def sense_of(result: CommandResult) -> Sense:
    assert result.status == 2, result
    return decode_sense(result.sense)


def assert_sense(result: CommandResult, key: int, asc: int, ascq: int = 0) -> Sense:
    sense = sense_of(result)
    assert (sense.key, sense.asc, sense.ascq) == (key, asc, ascq), sense.describe()
    return sense


def read10(lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBIBHB", 0x28, flags, lba, 0, blocks, 0)


def write10(lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, flags, lba, 0, blocks, 0)


def read16(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBQIBB", 0x88, 0, lba, blocks, 0, 0)


def write16(lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQIBB", 0x8A, flags, lba, blocks, 0, 0)


# --- unit attentions --------------------------------------------------------


def test_new_nexus_gets_power_on_reset_once(tmp_path: Path) -> None:
    unit = FileLun(make_file(tmp_path), serial="S", reservations=StandIn())
    assert run(unit, 0x12, 0, 0, 0, 36, 0).status == 0  # INQUIRY does not report it
    assert_sense(ex(unit, bytes(6)), SenseKey.UNIT_ATTENTION, 0x29, 0x00)
    assert ex(unit, bytes(6)).status == 0
    assert_sense(ex(unit, read10(0, 1), nexus=N2), SenseKey.UNIT_ATTENTION, 0x29, 0x00)
    assert ex(unit, read10(0, 1), nexus=N2).status == 0


def test_request_sense_returns_and_clears_the_unit_attention(tmp_path: Path) -> None:
    unit = FileLun(make_file(tmp_path), serial="S", reservations=StandIn())
    result = run(unit, 0x03, 0, 0, 0, 252, 0)
    assert result.status == 0
    sense = decode_sense(result.data_in)
    assert (sense.key, sense.asc, sense.ascq) == (SenseKey.UNIT_ATTENTION, 0x29, 0)
    assert ex(unit, bytes(6)).status == 0
    result = run(unit, 0x03, 1, 0, 0, 252, 0)  # DESC: descriptor format
    assert result.data_in[0] == 0x72
    assert decode_sense(result.data_in).key == SenseKey.NO_SENSE


def test_lun_reset_and_nexus_loss(lun: FileLun) -> None:
    ready(lun, N2)
    lun.lun_reset(N2)
    assert_sense(ex(lun, bytes(6)), SenseKey.UNIT_ATTENTION, 0x29, 0x00)
    assert_sense(ex(lun, bytes(6), nexus=N2), SenseKey.UNIT_ATTENTION, 0x29, 0x00)
    lun.nexus_lost(N1)
    assert_sense(ex(lun, bytes(6)), SenseKey.UNIT_ATTENTION, 0x29, 0x07)
    assert ex(lun, bytes(6)).status == 0


# --- INQUIRY ----------------------------------------------------------------


def test_standard_inquiry(lun: FileLun) -> None:
    data = run(lun, 0x12, 0, 0, 1, 4, 0).data_in
    assert len(data) == data[4] + 5 >= 36
    assert data[0] == 0 and data[2] == 0x06 and data[3] == 0x12
    assert data[7] & 0x02  # CMDQUE
    assert data[8:16] == b"GUESTFEN" and data[16:32].rstrip() == b"guestfence disk"
    assert all(b == 0 or 0x20 <= b <= 0x7E for b in data[8:36])
    assert len(run(lun, 0x12, 0, 0, 0, 5, 0).data_in) == 5  # ALLOCATION LENGTH


def test_vpd_pages(lun: FileLun) -> None:
    supported = run(lun, 0x12, 1, 0x00, 0, 255, 0).data_in
    pages = list(supported[4:4 + supported[3]])
    assert pages == sorted(pages) and {0x00, 0x80, 0x83, 0xB0, 0xB1} <= set(pages)
    for page in pages:
        data = run(lun, 0x12, 1, page, 1, 0, 0).data_in
        assert data[1] == page and len(data) == 4 + int.from_bytes(data[2:4], "big")
    assert run(lun, 0x12, 1, 0x80, 0, 255, 0).data_in[4:] == b"SER0001"
    limits = run(lun, 0x12, 1, 0xB0, 0, 255, 0).data_in
    assert limits[3] == 0x3C and int.from_bytes(limits[8:12], "big") > 0
    assert limits[20:28] == bytes(8)  # no UNMAP


def test_device_identification(lun: FileLun) -> None:
    data = run(lun, 0x12, 1, 0x83, 1, 0, 0, nexus=N1).data_in
    offset, found = 4, []
    while offset < len(data):
        head = data[offset:offset + 4]
        value = data[offset + 4:offset + 4 + head[3]]
        found.append((head[0] >> 4 if head[1] & 0x80 else None, head[0] & 0x0F,
                      (head[1] >> 4) & 3, head[1] & 0x0F, value))
        offset += 4 + head[3]
    assert offset == len(data)
    kinds = {(assoc, kind) for _p, _c, assoc, kind, _v in found}
    assert {(0, 3), (0, 1), (1, 4), (1, 8), (2, 8)} <= kinds
    naa = next(v for _p, _c, a, k, v in found if (a, k) == (0, 3))
    assert len(naa) == 8 and naa[0] >> 4 == 0x3
    port = next(v for _p, _c, a, k, v in found if (a, k) == (1, 4))
    assert int.from_bytes(port, "big") == 1
    name = next(v for p, c, a, k, v in found if (a, k) == (1, 8))
    assert name.rstrip(b"\0") == b"iqn.2026-01.test:target,t,0x0001" and len(name) % 4 == 0
    assert all(p == 5 for p, _c, a, _k, _v in found if a != 0)


def test_inquiry_errors(lun: FileLun) -> None:
    sense = assert_sense(run(lun, 0x12, 1, 0x99, 0, 255, 0), SenseKey.ILLEGAL_REQUEST, 0x24)
    assert sense.field_pointer is not None and sense.field_pointer.byte == 2
    assert_sense(run(lun, 0x12, 0, 0x80, 0, 255, 0), SenseKey.ILLEGAL_REQUEST, 0x24)
    sense = assert_sense(run(lun, 0x12, 2, 0, 0, 255, 0), SenseKey.ILLEGAL_REQUEST, 0x24)
    assert sense.field_pointer is not None
    assert (sense.field_pointer.byte, sense.field_pointer.bit) == (1, 1)  # CMDDT


# --- capacity, read, write --------------------------------------------------


def test_read_capacity(lun: FileLun) -> None:
    assert run(lun, 0x25, *bytes(9)).data_in == struct.pack(">II", BLOCKS - 1, 512)
    data = ex(lun, cdb(0x9E, 16, sa=(1, 1, 0x10), alloc=(10, 4, 32))).data_in
    assert len(data) == 32 and struct.unpack(">QI", data[:12]) == (BLOCKS - 1, 512)
    assert len(ex(lun, cdb(0x9E, 16, sa=(1, 1, 0x10), alloc=(10, 4, 8))).data_in) == 8
    sense = assert_sense(ex(lun, cdb(0x9E, 16, sa=(1, 1, 0x12), alloc=(10, 4, 32))),
                         SenseKey.ILLEGAL_REQUEST, 0x24)
    assert sense.field_pointer is not None and sense.field_pointer.byte == 1


def test_write_then_read(lun: FileLun) -> None:
    payload = bytes(range(256)) * 4
    assert ex(lun, write10(7, 2), payload).status == 0
    assert ex(lun, read10(7, 2)).data_in == payload
    assert ex(lun, read16(8, 1)).data_in == payload[512:]
    assert ex(lun, write16(BLOCKS - 1, 1), b"z" * 512).status == 0
    assert run(lun, 0x08, 0, (BLOCKS - 1) >> 8, (BLOCKS - 1) & 0xFF, 1, 0).data_in == b"z" * 512
    assert run(lun, 0xA8, 0, 0, 0, 0, 7, 0, 0, 0, 1, 0, 0).data_in == payload[:512]
    assert len(run(lun, 0x08, 0, 0, 0, 0, 0).data_in) == 256 * 512  # 0 means 256


def test_lba_range(lun: FileLun) -> None:
    for raw in (read10(BLOCKS, 1), read10(BLOCKS - 1, 2), read10(BLOCKS + 1, 0),
                read10(0xFFFFFFFF, 1), read16(2**64 - 1, 1), write10(BLOCKS, 1)):
        assert_sense(ex(lun, raw, b"x" * 512), SenseKey.ILLEGAL_REQUEST, 0x21)
    assert ex(lun, read10(BLOCKS, 0)).status == 0
    assert ex(lun, read10(0, 0)).data_in == b""


def test_protect_and_reserved_fields(lun: FileLun) -> None:
    sense = assert_sense(ex(lun, read10(0, 1, flags=0x20)), SenseKey.ILLEGAL_REQUEST, 0x24)
    assert sense.field_pointer is not None and sense.field_pointer.byte == 1
    for flags in (0x10, 0x08, 0x02):  # DPO, FUA, FUA_NV are accepted
        assert ex(lun, read10(0, 1, flags)).status == 0
    sense = assert_sense(run(lun, 0x00, 0, 0, 0, 1, 0), SenseKey.ILLEGAL_REQUEST, 0x24)
    assert sense.field_pointer is not None
    assert (sense.field_pointer.byte, sense.field_pointer.bit) == (4, 0)
    assert_sense(ex(lun, write10(0, 2), b"short"), SenseKey.ILLEGAL_REQUEST, 0x24)


def test_unknown_opcode(lun: FileLun) -> None:
    assert_sense(run(lun, 0x15, 0, 0, 0, 0, 0), SenseKey.ILLEGAL_REQUEST, 0x20)  # MODE SELECT
    assert_sense(ex(lun, b""), SenseKey.ILLEGAL_REQUEST, 0x20)


def test_verify(lun: FileLun) -> None:
    ex(lun, write10(3, 1), b"a" * 512)
    verify10 = struct.pack(">BBIBHB", 0x2F, 0x02, 3, 0, 1, 0)  # BYTCHK 01b
    assert ex(lun, verify10, b"a" * 512).status == 0
    sense = assert_sense(ex(lun, verify10, b"a" * 100 + b"b" * 412), SenseKey.MISCOMPARE, 0x1D)
    assert sense.information == 100
    assert ex(lun, struct.pack(">BBIBHB", 0x2F, 0, 3, 0, 1, 0)).status == 0
    wv = struct.pack(">BBIBHB", 0x2E, 0x02, 4, 0, 1, 0)
    assert ex(lun, wv, b"v" * 512).status == 0
    assert ex(lun, read10(4, 1)).data_in == b"v" * 512
    assert_sense(ex(lun, struct.pack(">BBIBHB", 0x2F, 0, BLOCKS, 0, 1, 0)),
                 SenseKey.ILLEGAL_REQUEST, 0x21)


def test_synchronize_cache_and_start_stop(lun: FileLun) -> None:
    assert ex(lun, cdb(0x35, 10)).status == 0
    assert ex(lun, cdb(0x91, 16, lba=(2, 8, 5), n=(10, 4, 2))).status == 0
    assert_sense(ex(lun, cdb(0x35, 10, lba=(2, 4, BLOCKS + 1))), SenseKey.ILLEGAL_REQUEST, 0x21)
    assert run(lun, 0x1B, 0, 0, 0, 0, 0).status == 0
    assert run(lun, 0x1B, 1, 0, 0, 1, 0).status == 0


# --- durability -------------------------------------------------------------


def test_written_data_survives_a_fresh_lun(tmp_path: Path) -> None:
    path = make_file(tmp_path)
    first = FileLun(path, serial="S", reservations=StandIn())
    ready(first, N1)
    assert ex(first, write10(11, 1), b"D" * 512).status == 0
    first.close()
    second = FileLun(path, serial="S", reservations=StandIn())
    ready(second, N1)
    assert ex(second, read10(11, 1)).data_in == b"D" * 512
    assert path.read_bytes()[11 * 512:12 * 512] == b"D" * 512
    second.close()


@pytest.mark.parametrize("policy", ["always", "on-flush"])
def test_sync_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: str) -> None:
    calls: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    unit = FileLun(make_file(tmp_path), serial="S", reservations=StandIn(),
                   sync="always" if policy == "always" else "on-flush")
    ready(unit, N1)
    ex(unit, write10(0, 1), b"w" * 512)
    assert len(calls) == (1 if policy == "always" else 0)
    calls.clear()
    ex(unit, write10(0, 1, flags=0x08), b"f" * 512)  # FUA
    assert len(calls) == 1
    calls.clear()
    ex(unit, cdb(0x35, 10))
    assert len(calls) == 1
    caching = run(unit, 0x1A, 0x08, 0x08, 0, 255, 0).data_in[4:]
    assert caching[0] == 0x08 and bool(caching[2] & 0x04) == (policy == "on-flush")


def test_bad_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"x" * 100)
    with pytest.raises(ValueError):
        FileLun(empty, serial="S", reservations=StandIn())
    with pytest.raises(ValueError):
        FileLun(make_file(tmp_path), serial="S", reservations=StandIn(), block_size=1000)


# --- MODE SENSE, REPORT LUNS ------------------------------------------------


def test_mode_sense(lun: FileLun) -> None:
    data = run(lun, 0x1A, 0, 0x3F, 0, 255, 0).data_in
    assert data[0] == len(data) - 1 and data[2] & 0x10 and data[3] == 8
    assert struct.unpack(">IxBH", data[4:12]) == (BLOCKS, 0, 512)
    pages = data[12:]
    assert pages[0] == 0x08 and pages[2 + pages[1]] == 0x0A
    data = run(lun, 0x5A, 0x10, 0x0A, 0, 0, 0, 0, 0, 255, 0).data_in  # LLBAA
    assert int.from_bytes(data[0:2], "big") == len(data) - 2
    assert data[4] & 1 and int.from_bytes(data[6:8], "big") == 16
    assert struct.unpack(">Q4xI", data[8:24]) == (BLOCKS, 512)
    assert data[24] == 0x0A and data[25] == 0x0A
    data = run(lun, 0x1A, 0x08, 0x48, 0, 255, 0).data_in  # DBD, changeable values
    assert data[3] == 0 and data[4:] == bytes([0x08, 0x12]) + bytes(0x12)
    assert_sense(run(lun, 0x1A, 0, 0x01, 0, 255, 0), SenseKey.ILLEGAL_REQUEST, 0x24)
    assert_sense(run(lun, 0x1A, 0, 0xC8, 0, 255, 0), SenseKey.ILLEGAL_REQUEST, 0x39)
    assert len(run(lun, 0x1A, 0, 0x3F, 0, 4, 0).data_in) == 4


def test_report_luns(tmp_path: Path) -> None:
    luns = [1, 0, 300]
    unit = FileLun(make_file(tmp_path), serial="S", reservations=StandIn(), luns=lambda: luns)
    data = ex(unit, cdb(0xA0, 12, alloc=(6, 4, 1024))).data_in  # no UA needed
    assert int.from_bytes(data[0:4], "big") == 24
    assert [data[8 + 8 * i:10 + 8 * i] for i in range(3)] == [b"\0\0", b"\0\1", b"\x41\x2c"]
    single = FileLun(tmp_path / "disk.img", 5, serial="S", reservations=StandIn())
    assert ex(single, cdb(0xA0, 12, alloc=(6, 4, 1024))).data_in[8:10] == b"\0\5"
    assert_sense(ex(single, cdb(0xA0, 12, sel=(2, 1, 9), alloc=(6, 4, 1024))),
                 SenseKey.ILLEGAL_REQUEST, 0x24)


# --- REPORT SUPPORTED OPERATION CODES ---------------------------------------


def rsoc(options: int, opcode: int = 0, sa: int = 0, rctd: bool = False) -> bytes:
    return cdb(0xA3, 12, sa=(1, 1, 0x0C), opt=(2, 1, options | (0x80 if rctd else 0)),
               op=(3, 1, opcode), rsa=(4, 2, sa), alloc=(6, 4, 8192))


def listed(lun: FileLun, rctd: bool = False) -> list[tuple[int, int | None, int]]:
    data = ex(lun, rsoc(0, rctd=rctd)).data_in
    size = 20 if rctd else 8
    assert int.from_bytes(data[:4], "big") == len(data) - 4
    out = []
    for offset in range(4, len(data), size):
        op, sa, flags, length = struct.unpack_from(">BxHxBH", data, offset)
        assert bool(flags & 0x02) == rctd
        out.append((op, sa if flags & 0x01 else None, length))
    return out


def test_supported_opcodes_match_behaviour(lun: FileLun) -> None:
    entries = listed(lun)
    assert len(entries) == len(COMMANDS) and len(listed(lun, rctd=True)) == len(COMMANDS)
    opcodes = {op for op, _sa, _n in entries}
    for op, sa, length in entries:
        raw = bytearray(length)
        raw[0] = op
        if sa is not None:
            raw[1] = sa
        result = ex(lun, bytes(raw), b"\0" * 24)
        if result.status == 2:
            sense = decode_sense(result.sense)
            assert sense.asc != 0x20, (hex(op), sa)
            pointer = sense.field_pointer
            assert pointer is None or pointer.byte > 1, (hex(op), sa)
    for op in set(range(256)) - opcodes:
        assert_sense(run(lun, op, *bytes(15)), SenseKey.ILLEGAL_REQUEST, 0x20)


def test_supported_opcodes_one_command(lun: FileLun) -> None:
    for op, sa, length in listed(lun):
        good = rsoc(2 if sa is not None else 1, op, sa or 0)
        data = ex(lun, good).data_in
        assert data[1] & 0x07 == 0x03 and int.from_bytes(data[2:4], "big") == length
        assert data[4] == op and len(data) == 4 + length
        bad = rsoc(1 if sa is not None else 2, op, sa or 0)
        assert_sense(ex(lun, bad), SenseKey.ILLEGAL_REQUEST, 0x24)
    assert ex(lun, rsoc(1, 0x15)).data_in == bytes([0, 1, 0, 0])  # not supported
    assert ex(lun, rsoc(2, 0x9E, 0x12)).data_in[1] & 0x07 == 1
    timed = ex(lun, rsoc(1, 0x28, rctd=True)).data_in
    assert timed[1] & 0x80 and len(timed) == 4 + 10 + 12
    assert_sense(ex(lun, rsoc(5)), SenseKey.ILLEGAL_REQUEST, 0x24)


# --- persistent reservations ------------------------------------------------


def test_pr_routing_and_conflict(lun: FileLun, pr: StandIn) -> None:
    result = ex(lun, cdb(0x5E, 10, alloc=(7, 2, 40)))
    assert result.status == 0 and result.data_in == b"K" * 40
    pr.deny.add(N1)
    pr.checked.clear()
    assert ex(lun, read10(0, 1)) == CommandResult(0x18)
    assert ex(lun, write10(0, 1), b"x" * 512).status == 0x18
    assert ex(lun, cdb(0x35, 10)).status == 0x18
    for raw in (bytes(6), run_inquiry(), cdb(0x25, 10), cdb(0xA0, 12, alloc=(6, 4, 64))):
        assert ex(lun, raw).status == 0
    assert [c[0] for c in pr.checked] == [0x28, 0x2A, 0x35]
    assert ex(lun, cdb(0x5F, 10, n=(5, 4, 24)), bytes(24)).status == 0  # PR OUT still goes


def run_inquiry() -> bytes:
    return bytes([0x12, 0, 0, 0, 36, 0])


def test_pr_out_effects(lun: FileLun, pr: StandIn) -> None:
    ready(lun, N2)
    pr.next_out = Outcome(0, abort_nexuses=frozenset({N2}),
                          unit_attentions={N2: [(0x2A, 0x05)]})
    result = ex(lun, cdb(0x5F, 10, sa=(1, 1, 5), n=(5, 4, 24)), b"p" * 24)
    assert result.status == 0 and result.abort_nexuses == frozenset({N2})
    assert pr.outs[-1] == (N1, cdb(0x5F, 10, sa=(1, 1, 5), n=(5, 4, 24)), b"p" * 24)
    assert_sense(ex(lun, bytes(6), nexus=N2), SenseKey.UNIT_ATTENTION, 0x2A, 0x05)
    assert_sense(ex(lun, bytes(6), nexus=N2), SenseKey.UNIT_ATTENTION, 0x2F, 0x00)
    assert ex(lun, bytes(6), nexus=N2).status == 0
    assert ex(lun, bytes(6)).status == 0
    failing = Sense(SenseKey.ILLEGAL_REQUEST, 0x26, 0x04)
    pr.next_out = Outcome(2, sense=failing.encode())
    result = ex(lun, cdb(0x5F, 10, sa=(1, 1, 2), n=(5, 4, 24)), bytes(24))
    assert_sense(result, SenseKey.ILLEGAL_REQUEST, 0x26, 0x04)


def test_pr_state_persisted_and_loaded(tmp_path: Path) -> None:
    path = make_file(tmp_path)
    pr = StandIn()
    unit = FileLun(path, serial="S", reservations=pr)
    ready(unit, N1)
    state = path.with_name("disk.img.pr")
    ex(unit, cdb(0x5F, 10, n=(5, 4, 24)), b"a" * 24)
    assert not state.exists()  # not persistent (no APTPL)
    pr.persistent = True
    ex(unit, cdb(0x5F, 10, n=(5, 4, 24)), b"b" * 24)
    assert state.read_bytes() == b"b" * 24
    assert not list(tmp_path.glob(".*.tmp"))
    unit.close()
    again = FileLun(path, serial="S", reservations=StandIn())
    assert isinstance(again.reservations, StandIn)
    assert again.reservations.to_bytes() == b"b" * 24
    again.reservations.persistent = False
    ready(again, N1)
    ex(again, cdb(0x5F, 10, n=(5, 4, 24)), b"c" * 24)
    assert not state.exists()


def test_pr_persist_failure_restores_state(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_file(tmp_path)
    pr = StandIn(b"old")
    pr.persistent = True
    unit = FileLun(path, serial="S", reservations=pr)
    ready(unit, N1)

    def broken(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    result = ex(unit, cdb(0x5F, 10, n=(5, 4, 24)), b"n" * 24)
    assert_sense(result, SenseKey.HARDWARE_ERROR, 0x44)
    assert unit.reservations.to_bytes() == b"old"
    assert not list(tmp_path.glob(".*.tmp"))


def test_with_the_real_reservations(tmp_path: Path) -> None:
    from guestfence.scsi.pr import PrOut, PrType, pr_out_cdb, pr_out_parameters

    path = make_file(tmp_path)
    unit = FileLun(path, serial="S")  # the default: target/pr.py
    ready(unit, N1)
    ready(unit, N2)
    we_ro = PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY

    def out(nexus: Nexus, action: int, key: int, sark: int = 0, type: int = 0,
            aptpl: bool = False) -> CommandResult:
        params = pr_out_parameters(key, sark, aptpl=aptpl)
        return ex(unit, pr_out_cdb(action, type, len(params)), params, nexus=nexus)

    assert out(N1, PrOut.REGISTER, 0, 0xA, aptpl=True).status == 0
    assert out(N2, PrOut.REGISTER, 0, 0xB, aptpl=True).status == 0
    assert path.with_name("disk.img.pr").exists()
    assert out(N1, PrOut.RESERVE, 0xA, type=we_ro).status == 0
    assert ex(unit, write10(0, 1), b"x" * 512, nexus=N2).status == 0
    result = out(N1, PrOut.PREEMPT_AND_ABORT, 0xA, 0xB, type=we_ro)
    assert result.status == 0 and result.abort_nexuses == {N2}
    assert_sense(ex(unit, bytes(6), nexus=N2), SenseKey.UNIT_ATTENTION, 0x2A, 0x05)
    assert_sense(ex(unit, bytes(6), nexus=N2), SenseKey.UNIT_ATTENTION, 0x2F, 0x00)
    assert ex(unit, write10(0, 1), b"x" * 512, nexus=N2).status == 0x18
    assert ex(unit, read10(0, 1), nexus=N2).status == 0
    unit.close()
    again = FileLun(path, serial="S")
    ready(again, N2)
    assert ex(again, write10(0, 1), b"x" * 512, nexus=N2).status == 0x18  # still fenced
    assert ex(again, write10(0, 1), b"x" * 512, nexus=N1).status == 0x02  # 29/00 first
    assert ex(again, write10(0, 1), b"x" * 512, nexus=N1).status == 0
