"""IscsiTransport (libiscsi via ctypes) against a real tgtd on 127.0.0.1 (TgtTarget).

CDBs are built here by hand with struct (the PR core lives elsewhere).  What
tgt 1.0.85 does, as observed by these tests:

* PERSISTENT RESERVE OUT / PREEMPT AND ABORT (SA 5) is not implemented:
  CHECK CONDITION, fixed-format sense 70h, ILLEGAL REQUEST, ASC/ASCQ 24h/00h
  (INVALID FIELD IN CDB); the registrations and the reservation stay as
  they were.  PREEMPT (SA 4) works, and the preempted nexus gets UNIT
  ATTENTION 2Ah/03h (RESERVATIONS PREEMPTED) on its next command.
* tgt binds a registration to the iSCSI session.  When a session is dropped
  and the initiator logs in again (same initiator name, same ISID), the old
  key is still listed by READ KEYS, but the new session is not registered
  (its RESERVE conflicts) until it registers again, which lists the key a
  second time.  When tgtd itself restarts, all PR state is gone (tgt keeps it
  in memory only): READ KEYS after the transparent re-login is empty.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from guestfence.lab.netns import LabError
from guestfence.lab.tgt import TgtTarget, free_port, missing_tools
from guestfence.scsi import iscsi
from guestfence.scsi.iscsi import (
    IscsiData,
    IscsiTransport,
    IscsiUrl,
    IscsiUrlError,
    ScsiSense,
    ScsiTask,
    derive_isid,
    parse_iscsi_url,
)
from guestfence.scsi.transport import Direction, ScsiResult, ScsiTransportError, Status

pytestmark = pytest.mark.integration

LUN_SIZE = 16 * 1024 * 1024
BLOCK = 512
NODE = "iqn.2024-01.org.guestfence.test:node{}"
KEY1, KEY2, KEY3 = 0xA1A1, 0xB2B2, 0xC3C3
WERO = 5  # WRITE EXCLUSIVE - REGISTRANTS ONLY

# PERSISTENT RESERVE OUT service actions
REGISTER, RESERVE, RELEASE, CLEAR, PREEMPT, PREEMPT_AND_ABORT, REGISTER_AND_IGNORE = range(7)


# -- requirements ------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def iscsi_tools() -> None:
    """Fail (not skip) without tgt or libiscsi, naming the Debian packages."""
    problems = missing_tools()
    try:
        iscsi.load_libiscsi()
    except iscsi.IscsiLibraryError as exc:
        problems.append(str(exc))
    if problems:
        pytest.fail(
            "iSCSI integration tests need the Debian packages tgt and libiscsi7 "
            "(apt-get install tgt libiscsi7): " + "; ".join(problems),
            pytrace=False,
        )


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


@pytest.fixture
def tgt(tmp_path: Path) -> Iterator[TgtTarget]:
    """A fresh tgtd with 2 LUNs; afterwards its process and LUN files must be gone."""
    target = TgtTarget(tmp_path / "tgt", luns=2, lun_size=LUN_SIZE)
    pids: list[int] = []
    target.start()
    try:
        yield target
    finally:
        if target.pid is not None:
            pids.append(target.pid)
        log = target.log_tail()
        target.stop()
        assert not target.running
        assert all(_gone(p) for p in pids), f"tgtd still running; log:\n{log}"
        assert not list((tmp_path / "tgt").glob("lun*.img"))


Opener = Callable[..., IscsiTransport]


@pytest.fixture
def opener() -> Iterator[Opener]:
    """``opener(url, n, **kw)``: an IscsiTransport as initiator NODE.format(n); all closed after."""
    opened: list[IscsiTransport] = []

    def open_(url: str, n: int = 1, **kwargs: object) -> IscsiTransport:
        tr = IscsiTransport(url, NODE.format(n), **kwargs)  # type: ignore[arg-type]
        opened.append(tr)
        return tr

    try:
        yield open_
    finally:
        for tr in opened:
            tr.close()


# -- CDBs ------------------------------------------------------------------------------


def tur() -> bytes:
    return bytes(6)


def read_capacity10() -> bytes:
    return struct.pack(">BB8x", 0x25, 0)


def prin(sa: int, alloc: int = 1024) -> bytes:
    return struct.pack(">BB5xHB", 0x5E, sa, alloc, 0)


def prout(sa: int, prtype: int = 0) -> bytes:
    return struct.pack(">BBBxxIB", 0x5F, sa, prtype, 24, 0)


def prout_params(key: int = 0, sa_key: int = 0, aptpl: bool = False) -> bytes:
    return struct.pack(">QQ4xBx2x", key, sa_key, 1 if aptpl else 0)


def rw10(opcode: int, lba: int = 0, blocks: int = 1) -> bytes:
    return struct.pack(">BBIBHB", opcode, 0, lba, 0, blocks, 0)


def sense_key_asc_ascq(sense: bytes) -> tuple[int, int, int]:
    """(key, ASC, ASCQ) from fixed (70h/71h) or descriptor (72h/73h) sense data."""
    code = sense[0] & 0x7F
    if code in (0x70, 0x71):
        return sense[2] & 0x0F, sense[12], sense[13]
    assert code in (0x72, 0x73), sense.hex()
    return sense[1] & 0x0F, sense[2], sense[3]


# -- PR helpers (raw CDBs) ---------------------------------------------------------------


def command(
    tr: IscsiTransport,
    cdb: bytes,
    direction: Direction = Direction.NONE,
    data_out: bytes = b"",
    data_in_length: int = 0,
    uas: list[tuple[int, int]] | None = None,
) -> ScsiResult:
    """Run a CDB; UNIT ATTENTIONs are recorded in ``uas`` and the command retried."""
    for _ in range(8):
        r = tr.execute(cdb, direction, data_out, data_in_length, timeout=10)
        if r.status == Status.CHECK_CONDITION:
            key, asc, ascq = sense_key_asc_ascq(r.sense)
            if key == 6:
                if uas is not None:
                    uas.append((asc, ascq))
                continue
        return r
    raise AssertionError("unit attentions do not stop")


def read_keys(tr: IscsiTransport) -> list[int]:
    r = command(tr, prin(0), Direction.FROM_DEVICE, data_in_length=1024)
    assert r.status == Status.GOOD, r
    _generation, length = struct.unpack(">II", r.data[:8])
    return [k for (k,) in struct.iter_unpack(">Q", r.data[8 : 8 + length])]


def read_reservation(tr: IscsiTransport) -> tuple[int, int] | None:
    r = command(tr, prin(1), Direction.FROM_DEVICE, data_in_length=1024)
    assert r.status == Status.GOOD, r
    _generation, length = struct.unpack(">II", r.data[:8])
    if length < 16:
        return None
    return struct.unpack(">Q", r.data[8:16])[0], r.data[21] & 0x0F


def pr_out(
    tr: IscsiTransport,
    sa: int,
    key: int = 0,
    sa_key: int = 0,
    prtype: int = 0,
    uas: list[tuple[int, int]] | None = None,
) -> ScsiResult:
    return command(tr, prout(sa, prtype), Direction.TO_DEVICE, prout_params(key, sa_key), uas=uas)


def write_block(tr: IscsiTransport, uas: list[tuple[int, int]] | None = None) -> ScsiResult:
    return command(tr, rw10(0x2A), Direction.TO_DEVICE, b"\xab" * BLOCK, uas=uas)


def read_block(tr: IscsiTransport) -> ScsiResult:
    return command(tr, rw10(0x28), Direction.FROM_DEVICE, data_in_length=BLOCK)


# -- URLs ------------------------------------------------------------------------------


def test_parse_url_forms() -> None:
    u = parse_iscsi_url("iscsi://192.0.2.7/iqn.2024-01.org.example:disk1/3")
    assert (u.host, u.port, u.target, u.lun, u.user, u.password) == (
        "192.0.2.7",
        3260,
        "iqn.2024-01.org.example:disk1",
        3,
        None,
        None,
    )
    assert u.portal == "192.0.2.7:3260"
    u = parse_iscsi_url("iscsi://alice%pa:ss@[2001:db8::1]:3261/iqn.2024-01.org.example%3Ad/0")
    assert (u.host, u.port, u.target, u.lun) == (
        "2001:db8::1",
        3261,
        "iqn.2024-01.org.example:d",
        0,
    )
    assert (u.user, u.password) == ("alice", "pa:ss")
    assert u.portal == "[2001:db8::1]:3261"
    assert str(u) == "iscsi://alice%***@[2001:db8::1]:3261/iqn.2024-01.org.example:d/0"
    assert "pa:ss" not in repr(u)
    assert (
        u.geturl(redact=False)
        == "iscsi://alice%pa:ss@[2001:db8::1]:3261/iqn.2024-01.org.example:d/0"
    )
    u = parse_iscsi_url("iscsi://bob:secret@san.example:3262/eui.0123456789ABCDEF/255")
    assert (u.user, u.password, u.host, u.port, u.lun) == (
        "bob",
        "secret",
        "san.example",
        3262,
        255,
    )


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://h/iqn.2024-01.org.example:d/1", "must start with iscsi://"),
        ("iscsi://h", "/target-iqn/lun part is missing"),
        ("iscsi://h/iqn.2024-01.org.example:d", "/lun part is missing"),
        ("iscsi://h/iqn.2024-01.org.example:d/", "LUN is missing"),
        ("iscsi://h/iqn.2024-01.org.example:d/-1", "not a decimal number"),
        ("iscsi://h/iqn.2024-01.org.example:d/256", "out of range 0..255"),
        ("iscsi://h/iqn.2024-01.org.example:d/1/", "not a decimal number"),
        ("iscsi://h:notaport/iqn.2024-01.org.example:d/1", "port 'notaport' is not a number"),
        ("iscsi://h:0/iqn.2024-01.org.example:d/1", "out of range 1..65535"),
        ("iscsi://2001:db8::1/iqn.2024-01.org.example:d/1", "in brackets"),
        ("iscsi:///iqn.2024-01.org.example:d/1", "host is missing"),
        ("iscsi://h/disk1/1", "not an iSCSI name"),
        ("iscsi://h/iqn.2024-13.org.example:d/1", "not an iSCSI name"),
        ("iscsi://h/iqn.2024-01.org.example:d/1?header_digest", "query parameters"),
        ("iscsi://h/iqn.2024-01.org.example%zz/1", "%XX escape"),
        ("iscsi://alice@h/iqn.2024-01.org.example:d/1", "both a user and a password"),
        ("iscsi://h/iqn.2024-01.org.example:" + "x" * 300 + "/1", "longer than 223"),
    ],
)
def test_parse_url_rejects(url: str, why: str) -> None:
    with pytest.raises(IscsiUrlError) as err:
        parse_iscsi_url(url)
    assert why in str(err.value)
    assert "iscsi://host[:port]/iqn.yyyy-mm.naming-authority:unique/lun" in str(err.value)


def test_parse_url_error_hides_password() -> None:
    with pytest.raises(IscsiUrlError) as err:
        parse_iscsi_url("iscsi://alice%Top$ecret@h/not-an-iqn/1")
    assert "Top$ecret" not in str(err.value)
    assert "alice%***@h" in str(err.value)


class _LibiscsiUrl(ctypes.Structure):
    """struct iscsi_url of libiscsi 1.19 (6 x char[256], int lun, context, transport)."""

    _fields_ = (
        ("portal", ctypes.c_char * 256),
        ("target", ctypes.c_char * 256),
        ("user", ctypes.c_char * 256),
        ("passwd", ctypes.c_char * 256),
        ("target_user", ctypes.c_char * 256),
        ("target_passwd", ctypes.c_char * 256),
        ("lun", ctypes.c_int),
        ("iscsi", ctypes.c_void_p),
        ("transport", ctypes.c_int),
    )


@pytest.mark.parametrize(
    "url",
    [
        "iscsi://127.0.0.1/iqn.2024-01.org.example:d/1",
        "iscsi://127.0.0.1:3261/iqn.2024-01.org.example:d/0",
        "iscsi://alice%secret@san.example/iqn.2024-01.org.example%3Ad/17",
        "iscsi://bob:pw@[::1]:3262/eui.0123456789ABCDEF/255",
    ],
)
def test_parse_url_agrees_with_libiscsi(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """For well-formed URLs our parser and iscsi_parse_full_url(NULL, url) agree."""
    for var in ("USERNAME", "PASSWORD", "TARGET_USERNAME", "TARGET_PASSWORD"):
        monkeypatch.delenv(f"LIBISCSI_CHAP_{var}", raising=False)
    lib = ctypes.CDLL(iscsi.LIBRARY)  # a separate handle: our prototypes only
    lib.iscsi_parse_full_url.restype = ctypes.POINTER(_LibiscsiUrl)
    lib.iscsi_parse_full_url.argtypes = (ctypes.c_void_p, ctypes.c_char_p)
    lib.iscsi_destroy_url.argtypes = (ctypes.POINTER(_LibiscsiUrl),)
    lib.iscsi_destroy_url.restype = None
    ptr = lib.iscsi_parse_full_url(None, url.encode())
    assert ptr, url
    try:
        theirs = ptr.contents
        portal, target, lun = theirs.portal.decode(), theirs.target.decode(), theirs.lun
        user, passwd = theirs.user.decode() or None, theirs.passwd.decode() or None
    finally:
        lib.iscsi_destroy_url(ptr)
    ours = parse_iscsi_url(url)
    their_portal = portal if portal.rsplit("]", 1)[-1].count(":") else f"{portal}:3260"
    assert (ours.portal, ours.target, ours.lun, ours.user, ours.password) == (
        their_portal,
        target,
        lun,
        user,
        passwd,
    )


# -- struct scsi_task, checked against the real library -------------------------------

# offsetof() from <iscsi/scsi-lowlevel.h> of libiscsi 1.19 (gcc, x86-64)
TASK_OFFSETS_X86_64 = {
    "status": 0,
    "cdb_size": 4,
    "xfer_dir": 8,
    "expxferlen": 12,
    "cdb": 16,
    "residual_status": 32,
    "residual": 40,
    "sense": 48,
    "datain": 64,
    "mem": 80,
    "ptr": 88,
    "itt": 96,
    "cmdsn": 100,
    "lun": 104,
    "iovector_in": 112,
    "iovector_out": 144,
}


def test_struct_offsets_match_the_header() -> None:
    if ctypes.sizeof(ctypes.c_void_p) != 8:
        pytest.skip("offsets recorded for 64-bit ABIs")
    assert {n: getattr(ScsiTask, n).offset for n in TASK_OFFSETS_X86_64} == TASK_OFFSETS_X86_64
    assert ctypes.sizeof(ScsiTask) == 176
    assert ctypes.sizeof(ScsiSense) == 16
    assert (ScsiSense.key.offset, ScsiSense.ascq.offset) == (4, 8)
    assert (ScsiSense.bit_pointer.offset, ScsiSense.field_pointer.offset) == (13, 14)
    assert ctypes.sizeof(IscsiData) == 16 and IscsiData.data.offset == 8


class _Raw:
    """A libiscsi context driven directly (sync calls), to read whole tasks."""

    def __init__(self, url: str, initiator: str) -> None:
        lib = self.lib = ctypes.CDLL(iscsi.LIBRARY)
        vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
        for name, res, args in (
            ("iscsi_create_context", vp, (cp,)),
            ("iscsi_destroy_context", i, (vp,)),
            ("iscsi_set_targetname", i, (vp, cp)),
            ("iscsi_set_session_type", i, (vp, i)),
            ("iscsi_full_connect_sync", i, (vp, cp, i)),
            ("iscsi_logout_sync", i, (vp,)),
            ("iscsi_get_error", cp, (vp,)),
            ("scsi_create_task", vp, (i, cp, i, i)),
            ("scsi_free_scsi_task", None, (vp,)),
            ("scsi_set_task_private_ptr", None, (vp, vp)),
            ("scsi_task_add_data_in_buffer", i, (vp, i, vp)),
            ("scsi_task_get_status", i, (vp, ctypes.POINTER(ScsiSense))),
            ("iscsi_scsi_command_sync", vp, (vp, i, vp, ctypes.POINTER(IscsiData))),
        ):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        self.url = parse_iscsi_url(url)
        self.ctx = lib.iscsi_create_context(initiator.encode())
        lib.iscsi_set_targetname(self.ctx, self.url.target.encode())
        lib.iscsi_set_session_type(self.ctx, 2)
        rc = lib.iscsi_full_connect_sync(self.ctx, self.url.portal.encode(), self.url.lun)
        assert rc == 0, lib.iscsi_get_error(self.ctx)

    def task(self, cdb: bytes, xfer_dir: int, length: int) -> int:
        task: int = self.lib.scsi_create_task(len(cdb), cdb, xfer_dir, length)
        assert task
        return task

    def run(self, task: int, data: IscsiData | None = None) -> ScsiTask:
        ref = ctypes.byref(data) if data is not None else None
        assert self.lib.iscsi_scsi_command_sync(self.ctx, self.url.lun, task, ref) == task
        return ScsiTask.from_address(task)

    def close(self) -> None:
        self.lib.iscsi_logout_sync(self.ctx)
        self.lib.iscsi_destroy_context(self.ctx)


def test_scsi_task_layout_against_libiscsi(tgt: TgtTarget) -> None:
    raw = _Raw(tgt.url(1), NODE.format(9))
    lib = raw.lib
    try:
        # fields scsi_create_task and scsi_set_task_private_ptr fill in
        cdb = bytes(range(0x40, 0x50))
        task = raw.task(cdb, 2, 4242)
        lib.scsi_set_task_private_ptr(task, 0xDEADBEEF)
        t = ScsiTask.from_address(task)
        assert (t.cdb_size, t.xfer_dir, t.expxferlen, bytes(t.cdb), t.ptr) == (
            16,
            2,
            4242,
            cdb,
            0xDEADBEEF,
        )
        lib.scsi_free_scsi_task(task)

        # CHECK CONDITION with data out: status, parsed and raw sense, data-out iovector
        params = ctypes.create_string_buffer(prout_params(1, 2), 24)
        task = raw.task(prout(PREEMPT_AND_ABORT, WERO), 2, 24)
        t = raw.run(task, IscsiData(24, ctypes.addressof(params)))
        sense = ScsiSense()
        assert lib.scsi_task_get_status(task, ctypes.byref(sense)) == t.status == 2
        assert (sense.error_type, sense.key, sense.ascq) == (0x70, 5, 0x2400)
        assert (t.sense.error_type, t.sense.key, t.sense.ascq) == (0x70, 5, 0x2400)
        segment = ctypes.string_at(t.datain.data, t.datain.size)
        length = int.from_bytes(segment[:2], "big")
        assert length == t.datain.size - 2 and length >= 14
        assert sense_key_asc_ascq(segment[2:]) == (5, 0x24, 0x00)
        assert t.lun == 1
        assert t.iovector_out.niov == 1
        iov = iscsi.ScsiIovec.from_address(t.iovector_out.iov)
        assert (iov.iov_base, iov.iov_len) == (ctypes.addressof(params), 24)
        first_itt, first_cmdsn = t.itt, t.cmdsn
        lib.scsi_free_scsi_task(task)

        # GOOD with data in collected by libiscsi, and an underflow residual
        task = raw.task(prin(0, 1024), 1, 1024)
        t = raw.run(task)
        assert t.status == 0 and t.datain.size == 8
        assert ctypes.string_at(t.datain.data, 8)[4:8] == bytes(4)  # no keys yet
        assert (t.residual_status, t.residual) == (1, 1024 - 8)
        assert t.cmdsn == first_cmdsn + 1 and t.itt != first_itt
        lib.scsi_free_scsi_task(task)

        # data in into the caller's buffer: the data-in iovector
        buf = ctypes.create_string_buffer(8)
        task = raw.task(read_capacity10(), 1, 8)
        assert lib.scsi_task_add_data_in_buffer(task, 8, ctypes.addressof(buf)) == 0
        t = raw.run(task)
        assert t.status == 0 and t.iovector_in.niov == 1
        assert iscsi.ScsiIovec.from_address(t.iovector_in.iov).iov_base == ctypes.addressof(buf)
        last_lba, block = struct.unpack(">II", buf.raw)
        assert (last_lba + 1) * block == LUN_SIZE
        lib.scsi_free_scsi_task(task)
    finally:
        raw.close()


# -- commands through IscsiTransport ----------------------------------------------------


def test_tur_and_read_capacity(tgt: TgtTarget, opener: Opener) -> None:
    tr = opener(tgt.url(1))
    assert tr.name == tgt.url(1)
    assert tr.logged_in
    assert command(tr, tur()) == ScsiResult(Status.GOOD)
    r = command(tr, read_capacity10(), Direction.FROM_DEVICE, data_in_length=8)
    assert r.status == Status.GOOD and r.sense == b""
    last_lba, block = struct.unpack(">II", r.data)
    assert (block, (last_lba + 1) * block) == (BLOCK, LUN_SIZE)
    # data written through one session is read back through another
    assert write_block(tr).status == Status.GOOD
    other = opener(tgt.url(1), 2)
    assert read_block(other).data == b"\xab" * BLOCK
    assert not tr.reconnected and tr.reconnects == 0


def test_pr_read_keys_raw_cdb(tgt: TgtTarget, opener: Opener) -> None:
    tr = opener(tgt.url(1))
    r = command(
        tr, bytes.fromhex("5e00000000000000ff00"), Direction.FROM_DEVICE, data_in_length=255
    )
    assert r.status == Status.GOOD
    assert len(r.data) == 8  # trimmed to what tgt returned: header only, no keys
    _generation, length = struct.unpack(">II", r.data)
    assert length == 0


def test_persistent_reservations_with_three_initiators(tgt: TgtTarget, opener: Opener) -> None:
    url = tgt.url(1)
    n1, n2, n3 = opener(url, 1), opener(url, 2), opener(url, 3)
    assert len({n1.isid, n2.isid, n3.isid}) == 3

    # REGISTER AND IGNORE EXISTING KEY (5F 06) with a 24-byte parameter list
    r = n1.execute(
        bytes.fromhex("5f060000000000001800"), Direction.TO_DEVICE, prout_params(0, KEY1)
    )
    assert r == ScsiResult(Status.GOOD), r
    assert pr_out(n2, REGISTER_AND_IGNORE, 0, KEY2).status == Status.GOOD
    assert sorted(read_keys(n3)) == [KEY1, KEY2]

    assert pr_out(n1, RESERVE, KEY1, prtype=WERO).status == Status.GOOD
    assert read_reservation(n3) == (KEY1, WERO)

    # WERO: the unregistered initiator may read, not write; a registrant may write
    r = write_block(n3)
    assert r.status == 0x18  # RESERVATION CONFLICT
    assert r.sense == b"" and r.data == b""
    assert read_block(n3).status == Status.GOOD
    assert write_block(n2).status == Status.GOOD

    # PREEMPT AND ABORT (5F 05) is not implemented by tgt: ILLEGAL REQUEST 24/00
    r = n1.execute(
        bytes.fromhex("5f050500000000001800"), Direction.TO_DEVICE, prout_params(KEY1, KEY2)
    )
    assert r.status == Status.CHECK_CONDITION
    assert r.sense[0] & 0x7F == 0x70  # fixed format
    assert (r.sense[2] & 0x0F, r.sense[12], r.sense[13]) == (0x05, 0x24, 0x00)
    assert sorted(read_keys(n3)) == [KEY1, KEY2]  # nothing happened

    # PREEMPT (5F 04) removes node 2's key; node 2 is told, then fenced
    r = n1.execute(
        bytes.fromhex("5f040500000000001800"), Direction.TO_DEVICE, prout_params(KEY1, KEY2)
    )
    assert r == ScsiResult(Status.GOOD), r
    assert read_keys(n3) == [KEY1]
    assert read_reservation(n3) == (KEY1, WERO)
    uas: list[tuple[int, int]] = []
    assert write_block(n2, uas=uas).status == Status.RESERVATION_CONFLICT
    assert uas == [(0x2A, 0x03)]  # RESERVATIONS PREEMPTED
    assert write_block(n1).status == Status.GOOD
    assert not any(t.reconnected for t in (n1, n2, n3))


def test_target_restart_reconnects_and_loses_registrations(tgt: TgtTarget, opener: Opener) -> None:
    n1 = opener(tgt.url(1), 1)
    n2 = opener(tgt.url(1), 2)
    assert pr_out(n1, REGISTER_AND_IGNORE, 0, KEY1).status == Status.GOOD
    assert pr_out(n1, RESERVE, KEY1, prtype=WERO).status == Status.GOOD
    assert read_keys(n2) == [KEY1]

    old_pid = tgt.pid
    tgt.restart(hard=True)  # SIGKILL: a crashed target, then a fresh tgtd
    assert tgt.pid != old_pid

    keys = read_keys(n1)  # the session is gone: one transparent re-login
    assert n1.reconnected and n1.reconnects == 1
    assert keys == []  # tgt keeps PR state in memory only
    assert read_reservation(n1) is None
    assert not n1.reconnected and n1.reconnects == 1  # the next command: same session
    assert read_keys(n2) == [] and n2.reconnects == 1

    # re-registering is up to the PR layer; it works on the new nexus
    assert pr_out(n1, REGISTER_AND_IGNORE, 0, KEY1).status == Status.GOOD
    assert pr_out(n1, RESERVE, KEY1, prtype=WERO).status == Status.GOOD
    assert write_block(n2).status == Status.RESERVATION_CONFLICT

    tgt.restart()  # graceful: tgt closes the sessions itself
    assert read_keys(n1) == [] and n1.reconnected and n1.reconnects == 2


def _session_ids(tgt: TgtTarget) -> dict[str, list[int]]:
    """initiator name -> tgt session ids, from ``tgtadm --mode conn --op show``."""
    out: dict[str, list[int]] = {}
    sid = None
    for line in tgt.connections().splitlines():
        line = line.strip()
        if line.startswith("Session:"):
            sid = int(line.split()[1])
        elif line.startswith("Initiator:") and sid is not None:
            out.setdefault(line.split()[1], []).append(sid)
    return out


def test_relogin_same_isid_is_a_new_nexus_on_tgt(tgt: TgtTarget, opener: Opener) -> None:
    n1 = opener(tgt.url(1), 1)
    n2 = opener(tgt.url(1), 2)
    isid = n1.isid
    assert pr_out(n1, REGISTER_AND_IGNORE, 0, KEY1).status == Status.GOOD
    [sid] = _session_ids(tgt)[NODE.format(1)]

    # drop node 1's connection on the target side; tgtd keeps running
    tgt.tgtadm(
        "--lld", "iscsi", "--mode", "conn", "--op", "delete",
        "--tid", "1", "--sid", str(sid), "--cid", "0",
    )  # fmt: skip
    r = command(n1, tur())
    assert r.status == Status.GOOD and n1.reconnected and n1.reconnects == 1
    assert n1.isid == isid  # the same initiator port ...
    [new_sid] = _session_ids(tgt)[NODE.format(1)]
    assert new_sid != sid  # ... but a new session

    # tgt still lists the old registration, but it belongs to the dead session
    assert read_keys(n2) == [KEY1]
    assert pr_out(n1, RESERVE, KEY1, prtype=WERO).status == Status.RESERVATION_CONFLICT
    assert pr_out(n1, REGISTER_AND_IGNORE, 0, KEY1).status == Status.GOOD
    assert read_keys(n2) == [KEY1, KEY1]  # the orphan and the new one
    assert pr_out(n1, RESERVE, KEY1, prtype=WERO).status == Status.GOOD
    # PREEMPT by key removes every registration with that key, orphans included
    assert pr_out(n2, REGISTER_AND_IGNORE, 0, KEY2).status == Status.GOOD
    assert pr_out(n2, PREEMPT, KEY2, KEY1, WERO).status == Status.GOOD
    assert read_keys(n2) == [KEY2]


def test_command_timeout_then_reconnect(tgt: TgtTarget, opener: Opener) -> None:
    tr = opener(tgt.url(1))
    pid = tgt.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(ScsiTransportError) as err:
            tr.execute(tur(), timeout=1)
        elapsed = time.monotonic() - start
    finally:
        os.kill(pid, signal.SIGCONT)
    assert "no answer within 1 s" in str(err.value) and tgt.url(1) in str(err.value)
    assert 0.5 < elapsed < 2.5
    assert not tr.logged_in
    assert command(tr, tur()).status == Status.GOOD
    assert tr.reconnected and tr.reconnects == 1


def test_close(tgt: TgtTarget) -> None:
    tr = IscsiTransport(tgt.url(1), NODE.format(1))
    with tr:
        assert _session_ids(tgt) == {NODE.format(1): [1]}
    assert not tr.logged_in
    tr.close()  # idempotent
    with pytest.raises(ScsiTransportError, match="closed"):
        tr.execute(tur())
    deadline = time.monotonic() + 5
    while _session_ids(tgt) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _session_ids(tgt) == {}  # logged out


def test_execute_argument_checks(tgt: TgtTarget, opener: Opener) -> None:
    tr = opener(tgt.url(1))
    with pytest.raises(ValueError, match="6 to 16"):
        tr.execute(bytes(5))
    with pytest.raises(ValueError, match="TO_DEVICE"):
        tr.execute(prout(0), Direction.TO_DEVICE)
    with pytest.raises(ValueError, match="FROM_DEVICE"):
        tr.execute(prin(0), Direction.FROM_DEVICE)
    with pytest.raises(ValueError, match="NONE"):
        tr.execute(tur(), data_in_length=8)
    assert command(tr, tur()).status == Status.GOOD


# -- login failures ----------------------------------------------------------------------

CONNECT_TIMEOUT = 1.5


def _login_error(url: str, **kwargs: object) -> tuple[str, float]:
    start = time.monotonic()
    with pytest.raises(ScsiTransportError) as err:
        IscsiTransport(url, NODE.format(1), **kwargs)  # type: ignore[arg-type]
    return str(err.value), time.monotonic() - start


def test_unreachable_portal() -> None:
    url = f"iscsi://127.0.0.1:{free_port()}/iqn.2024-01.org.guestfence.test:none/1"
    msg, elapsed = _login_error(url, connect_timeout=CONNECT_TIMEOUT)
    assert url in msg and "Connection refused" in msg
    assert elapsed < CONNECT_TIMEOUT + 1


@contextlib.contextmanager
def _silent_portal(*, accept: bool) -> Iterator[tuple[int, list[bytes]]]:
    """A loopback listener that never answers iSCSI.

    ``accept``: take the connection and read the login request (kept in the
    yielded list); otherwise a full accept queue that drops further SYNs.
    """
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0 if not accept else 4)
    port = srv.getsockname()[1]
    received: list[bytes] = []
    fillers: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        conns: list[socket.socket] = []
        while not stop.is_set():
            ready, _, _ = select.select([srv, *conns], [], [], 0.05)
            for s in ready:
                if s is srv:
                    conns.append(srv.accept()[0])
                else:
                    data = s.recv(65536)
                    if data:
                        received.append(data)
                    else:
                        conns.remove(s)
                        s.close()
        for c in conns:
            c.close()

    thread = threading.Thread(target=serve, daemon=True) if accept else None
    if thread is not None:
        thread.start()
    else:
        for _ in range(3):  # fill the accept queue; then the kernel drops SYNs
            c = socket.socket()
            c.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                c.connect(("127.0.0.1", port))
            fillers.append(c)
    try:
        yield port, received
    finally:
        stop.set()
        if thread is not None:
            thread.join(2)
        for c in fillers:
            c.close()
        srv.close()


@pytest.mark.parametrize("accept", [True, False], ids=["login-unanswered", "syn-dropped"])
def test_unresponsive_portal_times_out(accept: bool) -> None:
    with _silent_portal(accept=accept) as (port, _):
        url = f"iscsi://127.0.0.1:{port}/iqn.2024-01.org.guestfence.test:none/1"
        msg, elapsed = _login_error(url, connect_timeout=CONNECT_TIMEOUT)
    assert url in msg and f"no answer within {CONNECT_TIMEOUT:g} s" in msg
    assert CONNECT_TIMEOUT - 0.1 < elapsed < CONNECT_TIMEOUT + 1


def test_isid_on_the_wire() -> None:
    """The login request carries the stable random-format ISID (RFC 7143 T=10b)."""
    target = "iqn.2024-01.org.guestfence.test:none"
    seen: list[bytes] = []
    for seed in ("node1", "node1", "node2"):
        with _silent_portal(accept=True) as (port, received):
            url = f"iscsi://127.0.0.1:{port}/{target}/1"
            _login_error(url, isid_seed=seed, connect_timeout=0.5)
            login = b"".join(received)
        assert len(login) >= 48 and login[0] & 0x3F == 0x03  # Login Request
        assert f"InitiatorName={NODE.format(1)}\0".encode() in login
        assert f"TargetName={target}\0".encode() in login
        seen.append(login[8:14])
    rnd, qualifier = derive_isid("node1", target, 1)
    assert seen[0] == seen[1] == b"\x80" + rnd.to_bytes(3, "big") + qualifier.to_bytes(2, "big")
    assert seen[2] != seen[0] and seen[2][0] == 0x80


def test_nonexistent_target_and_lun(tgt: TgtTarget) -> None:
    url = f"iscsi://{tgt.portal}/iqn.2024-01.org.guestfence.test:nosuch/1"
    msg, elapsed = _login_error(url, connect_timeout=CONNECT_TIMEOUT)
    assert url in msg and "Target not found" in msg
    assert elapsed < CONNECT_TIMEOUT + 1
    url = f"iscsi://{tgt.portal}/{tgt.iqn}/7"
    msg, elapsed = _login_error(url, connect_timeout=CONNECT_TIMEOUT)
    assert url in msg and "no LUN 7" in msg and "LOGICAL_UNIT_NOT_SUPPORTED" in msg
    assert elapsed < CONNECT_TIMEOUT + 1


def test_chap(tmp_path: Path, opener: Opener) -> None:
    secret = "s3cret-passw0rd"
    with TgtTarget(tmp_path / "chap", chap=("alice", secret), lun_size=LUN_SIZE) as tgt:
        msg, _ = _login_error(tgt.url(1))
        assert "Authentication failure" in msg
        msg, _ = _login_error(tgt.url(1, user="alice", password="wrong-password"))
        assert "Authentication failure" in msg and "wrong-password" not in msg
        assert f"iscsi://alice%***@{tgt.portal}/" in msg
        tr = opener(tgt.url(1, user="alice", password=secret))
        assert secret not in tr.name and secret not in repr(tr)
        assert command(tr, tur()).status == Status.GOOD


def test_url_object_accepted(tgt: TgtTarget, opener: Opener) -> None:
    u = parse_iscsi_url(tgt.url(2))
    tr = IscsiTransport(IscsiUrl(u.host, u.port, u.target, 2), NODE.format(1))
    try:
        r = command(tr, read_capacity10(), Direction.FROM_DEVICE, data_in_length=8)
        assert r.status == Status.GOOD
    finally:
        tr.close()


# -- the lab target itself ----------------------------------------------------------------


def test_tgt_start_failure_cleans_up(tmp_path: Path) -> None:
    """tgtd cannot get its portal (port taken): start() fails, kills tgtd, removes files."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        target = TgtTarget(tmp_path / "busy", port=port, ready_timeout=1.0)
        with pytest.raises(LabError, match="not ready"):
            target.start()
    assert not target.running and target.pid is None
    assert not list((tmp_path / "busy").glob("*"))
    assert not [p for p in Path("/proc").glob("[0-9]*/cmdline") if _reads(p).endswith(f":{port}\0")]


def _reads(path: Path) -> str:
    try:
        return path.read_bytes().decode(errors="replace")
    except OSError:
        return ""
