"""Our iSCSI target (``guestfence target serve`` via OurTarget) against real initiators.

Initiators: our IscsiTransport (libiscsi through ctypes) and libiscsi's own
command-line tools (iscsi-ls, iscsi-inq, iscsi-test-cu).  A raw-socket client
sends garbage to show that a broken connection stays broken alone.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from guestfence.lab.ourtarget import OurTarget
from guestfence.scsi import iscsi
from guestfence.scsi.iscsi import IscsiTransport
from guestfence.scsi.transport import Direction, ScsiTransportError, Status
from guestfence.target.pdu import Op, Pdu, build_text, parse_text

pytestmark = pytest.mark.integration

LUN_SIZE = 8 * 1024 * 1024
BLOCK = 512
NODE = "iqn.2024-01.org.guestfence.test:node{}"
TEST_CU_INITIATOR = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test"


@pytest.fixture(scope="module", autouse=True)
def libiscsi() -> None:
    try:
        iscsi.load_libiscsi()
    except iscsi.IscsiLibraryError as exc:
        pytest.fail(f"needs libiscsi7 (apt-get install libiscsi7): {exc}", pytrace=False)


@pytest.fixture
def target(tmp_path: Path) -> Iterator[OurTarget]:
    with OurTarget(tmp_path / "t", luns=2, lun_size=LUN_SIZE) as t:
        yield t
        assert t.running, t.log_tail()


Opener = Callable[..., IscsiTransport]


@pytest.fixture
def opener() -> Iterator[Opener]:
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


def read10(tr: IscsiTransport, lba: int, blocks: int) -> bytes:
    cdb = struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0)
    r = tr.execute(cdb, Direction.FROM_DEVICE, data_in_length=blocks * BLOCK)
    assert r.status == Status.GOOD, r
    return r.data


def write10(tr: IscsiTransport, lba: int, data: bytes) -> None:
    cdb = struct.pack(">BBIBHB", 0x2A, 0, lba, 0, len(data) // BLOCK, 0)
    r = tr.execute(cdb, Direction.TO_DEVICE, data_out=data)
    assert r.status == Status.GOOD, r


def test_login_tur_capacity_write_read(target: OurTarget, opener: Opener) -> None:
    tr = opener(target.url(1))
    assert tr.execute(bytes(6)).status == Status.GOOD
    cap = tr.execute(bytes([0x25]) + bytes(9), Direction.FROM_DEVICE, data_in_length=8)
    assert cap.status == Status.GOOD
    last_lba, block = struct.unpack(">II", cap.data)
    assert (last_lba + 1) * block == LUN_SIZE
    # large enough for several R2Ts and Data-In PDUs
    payload = random.randbytes(1024 * 1024 + 3 * BLOCK)
    write10(tr, 7, payload)
    assert read10(tr, 7, len(payload) // BLOCK) == payload
    with open(target.lun_path(1), "rb") as f:
        f.seek(7 * BLOCK)
        assert f.read(len(payload)) == payload


def test_two_initiators_two_luns(target: OurTarget, opener: Opener) -> None:
    a, b = opener(target.url(1), 1), opener(target.url(1), 2)
    c = opener(target.url(2), 1)
    write10(a, 0, b"A" * BLOCK)
    write10(c, 0, b"C" * BLOCK)
    assert read10(b, 0, 1) == b"A" * BLOCK
    assert read10(c, 0, 1) == b"C" * BLOCK


def test_missing_lun_is_reported(target: OurTarget, opener: Opener) -> None:
    with pytest.raises(ScsiTransportError, match="LOGICAL_UNIT_NOT_SUPPORTED"):
        opener(target.url(1).rsplit("/", 1)[0] + "/9")


def test_chap(tmp_path: Path, opener: Opener) -> None:
    with OurTarget(tmp_path / "t", chap=("alice", "s3cret-s3cret")) as t:
        tr = opener(t.url(1, user="alice", password="s3cret-s3cret"), connect_timeout=5)
        assert tr.execute(bytes(6)).status == Status.GOOD
        for user, password in (("alice", "wrong-wrong"), ("bob", "s3cret-s3cret")):
            with pytest.raises(ScsiTransportError):
                opener(t.url(1, user=user, password=password), 2, connect_timeout=3)
        with pytest.raises(ScsiTransportError):
            opener(t.url(1), 3, connect_timeout=3)
        assert tr.execute(bytes(6)).status == Status.GOOD


def test_reinstatement_closes_the_old_session(target: OurTarget, opener: Opener) -> None:
    old = opener(target.url(1), 1)
    assert old.execute(bytes(6)).status == Status.GOOD
    new = opener(target.url(1), 1)  # same initiator name, same stable ISID
    assert new.execute(bytes(6)).status == Status.GOOD
    deadline = time.monotonic() + 5
    while "reinstated" not in target.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "reinstated" in target.log_text()
    old.execute(bytes(6))  # transparently logs in again (and reinstates in turn)
    assert old.reconnects == 1


def test_iscsi_ls_discovery(target: OurTarget) -> None:
    out = subprocess.run(["iscsi-ls", "-s", f"iscsi://{target.portal}"], capture_output=True,
                         text=True, timeout=20, check=True).stdout
    assert f"Target:{target.iqn} Portal:{target.portal},1" in out
    assert "Lun:1" in out and "Lun:2" in out


def test_iscsi_inq_with_header_digest(target: OurTarget) -> None:
    r = subprocess.run(["iscsi-inq", target.url(1) + "?header_digest=crc32c"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert "DIRECT_ACCESS" in r.stdout


SUITES = ["SCSI.TestUnitReady", "SCSI.ReadCapacity10", "SCSI.Read10", "SCSI.Write10",
          "SCSI.Inquiry", "SCSI.ProutRegister", "SCSI.ProutReserve", "SCSI.ProutPreempt",
          "SCSI.ProutClear", "SCSI.PrinReadKeys", "SCSI.Read16", "SCSI.Write16",
          "iSCSI.iSCSIcmdsn", "iSCSI.iSCSITMF", "iSCSI.iSCSIdatasn", "iSCSI.iSCSIResiduals"]


@pytest.mark.skipif(shutil.which("iscsi-test-cu") is None, reason="needs libiscsi-bin")
@pytest.mark.parametrize("suite", SUITES)
def test_iscsi_test_cu(target: OurTarget, suite: str) -> None:
    r = subprocess.run(
        ["iscsi-test-cu", "--dataloss", "-i", TEST_CU_INITIATOR, "-I", TEST_CU_INITIATOR + "-2",
         f"--test={suite}", target.url(1)],
        capture_output=True, text=True, timeout=240)
    summary = [line for line in r.stdout.splitlines() if line.strip().startswith("tests")]
    assert r.returncode == 0 and summary, r.stdout[-3000:]
    _total, ran, passed, failed = summary[0].split()[1:5]
    assert failed == "0" and ran == passed, r.stdout[-3000:]


# -- robustness ------------------------------------------------------------------------


def _login_pdu(target: OurTarget, initiator: str) -> bytes:
    p = Pdu.new(Op.LOGIN, 0x80 | (1 << 2) | 3, immediate=True, itt=1,
                data=build_text([("InitiatorName", initiator), ("TargetName", target.iqn),
                                 ("SessionType", "Normal")]))
    p.bhs[8:14] = bytes([0x80, 1, 2, 3, 0, 0])
    return p.encode()


def _raw_login(target: OurTarget, initiator: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", target.port or 0), timeout=5)
    s.sendall(_login_pdu(target, initiator))
    head = _recv_exact(s, 48)
    assert head[0] & 0x3F == Op.LOGIN_RSP and head[36:38] == b"\0\0", head.hex()
    _recv_exact(s, int.from_bytes(head[5:8], "big") + (-int.from_bytes(head[5:8], "big") % 4))
    return s


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def _closed(s: socket.socket, timeout: float = 5.0) -> bool:
    s.settimeout(timeout)
    try:
        while s.recv(65536):
            pass
        return True
    except TimeoutError:
        return False
    except OSError:
        return True


def test_fuzz_drops_only_the_bad_connection(target: OurTarget, opener: Opener) -> None:
    good = opener(target.url(1), 1)
    write10(good, 3, b"G" * BLOCK)
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    for i in range(30):
        s = _raw_login(target, f"iqn.2024-01.org.guestfence.test:fuzz{i}")
        if i % 3 == 0:
            junk = rng.randbytes(rng.randrange(48, 400))
        else:  # a mutated valid SCSI command: bad opcodes, lengths, reserved bits
            p = Pdu.new(Op.SCSI_CMD, 0x80 | 0x40, itt=i)
            p.set_word(24, 0)
            bhs = bytearray(p.encode())
            for _ in range(rng.randrange(1, 6)):
                bhs[rng.randrange(0, 8)] = rng.randrange(256)
            junk = bytes(bhs) + rng.randbytes(rng.randrange(0, 64))
        s.sendall(junk + b"\xff" * 4096)
        s.close()
    bad = _raw_login(target, "iqn.2024-01.org.guestfence.test:bad")
    bad.sendall(bytes([0x3E]) + bytes(47))  # a target opcode from an initiator
    assert _closed(bad)
    bad.close()
    assert read10(good, 3, 1) == b"G" * BLOCK  # the other session never noticed
    assert target.running


# -- PREEMPT AND ABORT against a write still waiting for its data ------------------------


class RawInitiator:
    """A minimal initiator on a raw socket, so a test can hold back a write's Data-Out."""

    def __init__(self, target: OurTarget, name: str, **keys: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", target.port or 0), timeout=5)
        self.cmdsn = 0
        self.itt = 0x100
        offer = {"InitiatorName": name, "TargetName": target.iqn, "SessionType": "Normal",
                 "InitialR2T": "Yes", "ImmediateData": "Yes", "HeaderDigest": "None",
                 "DataDigest": "None", "MaxRecvDataSegmentLength": "65536", **keys}
        p = Pdu.new(Op.LOGIN, 0x80 | (1 << 2) | 3, immediate=True, itt=1,
                    data=build_text(list(offer.items())))
        p.bhs[8:14] = bytes([0x80, 9, 9, 9, 0, 0])
        self.sock.sendall(p.encode())
        rsp, data = self.recv()
        assert rsp[0] & 0x3F == Op.LOGIN_RSP and rsp[36:38] == b"\0\0", rsp.hex()
        self.negotiated = dict(parse_text(data))

    def recv(self) -> tuple[bytes, bytes]:
        head = _recv_exact(self.sock, 48)
        n = int.from_bytes(head[5:8], "big")
        return head, _recv_exact(self.sock, n + (-n % 4))[:n]

    def command(self, cdb: bytes, *, write: bytes = b"", immediate: bool = True,
                edtl: int | None = None, read: bool = False) -> int:
        self.itt += 1
        flags = 0x80 | (0x40 if read else 0x20 if write or edtl else 0)
        data = write if immediate else b""
        p = Pdu.new(Op.SCSI_CMD, flags | 1, itt=self.itt, data=data)
        p.lun_raw = bytes([0, 1]) + bytes(6)
        p.set_word(20, len(write) if edtl is None else edtl)
        p.set_word(24, self.cmdsn)
        p.bhs[32:48] = cdb.ljust(16, b"\0")
        self.cmdsn += 1
        self.sock.sendall(p.encode())
        return self.itt

    def status_of(self, itt: int, seen: list[int] | None = None) -> int:
        """Status of task ``itt``; the ITTs of other responses on the way go to ``seen``."""
        while True:
            head, _ = self.recv()
            tag = int.from_bytes(head[16:20], "big")
            if head[0] & 0x3F == Op.SCSI_RSP and tag == itt:
                return head[3]
            if seen is not None:
                seen.append(tag)

    def data_out(self, itt: int, ttt: int, data: bytes, *, offset: int = 0, datasn: int = 0,
                 final: bool = True) -> None:
        p = Pdu.new(Op.DATA_OUT, 0x80 if final else 0, itt=itt, data=data)
        p.lun_raw = bytes([0, 1]) + bytes(6)
        p.set_word(20, ttt)
        p.set_word(36, datasn)
        p.set_word(40, offset)
        self.sock.sendall(p.encode())


def pr_out(sa: int, key: int, sa_key: int, prtype: int = 0) -> tuple[bytes, bytes]:
    cdb = struct.pack(">BBBHIB", 0x5F, sa, prtype, 0, 24, 0)
    return cdb, struct.pack(">QQ", key, sa_key) + bytes(8)


def test_preempt_and_abort_kills_a_write_waiting_for_data(target: OurTarget,
                                                           opener: Opener) -> None:
    a = opener(target.url(1), 1)
    write10(a, 40, b"O" * BLOCK)
    victim = RawInitiator(target, "iqn.2024-01.org.guestfence.test:victim")
    victim.status_of(victim.command(bytes(6)))  # consumes the unit attention of a new nexus
    cdb, params = pr_out(0, 0, 0xB2)  # REGISTER 0xB2
    assert victim.status_of(victim.command(cdb, write=params)) == Status.GOOD
    cdb, params = pr_out(0, 0, 0xA1)
    r = a.execute(cdb, Direction.TO_DEVICE, data_out=params)
    assert r.status == Status.GOOD, r
    cdb, params = pr_out(1, 0xA1, 0, prtype=5)  # RESERVE, WRITE EXCLUSIVE REGISTRANTS ONLY
    assert a.execute(cdb, Direction.TO_DEVICE, data_out=params).status == Status.GOOD
    # the victim starts a write and gets an R2T, but holds the data back
    itt = victim.command(struct.pack(">BBIBHB", 0x2A, 0, 40, 0, 1, 0), immediate=False,
                         edtl=BLOCK)
    head, _ = victim.recv()
    assert head[0] & 0x3F == Op.R2T
    ttt = int.from_bytes(head[20:24], "big")
    cdb, params = pr_out(5, 0xA1, 0xB2, prtype=5)  # PREEMPT AND ABORT the victim
    assert a.execute(cdb, Direction.TO_DEVICE, data_out=params).status == Status.GOOD
    victim.data_out(itt, ttt, b"V" * BLOCK)  # too late: the task is gone
    tur = victim.command(bytes(6))
    others: list[int] = []
    assert victim.status_of(tur, others) in (Status.GOOD, Status.CHECK_CONDITION)  # UA allowed
    assert itt not in others  # aborted: no response at all (TAS=0), not a late conflict
    assert "aborted 1 task(s)" in target.log_text()
    assert read10(a, 40, 1) == b"O" * BLOCK
    victim.sock.close()


def test_unsolicited_data_r2t_bursts_and_data_in_sizes(target: OurTarget) -> None:
    """InitialR2T=No: immediate + unsolicited Data-Out up to FirstBurstLength, then R2Ts of
    MaxBurstLength; reads come back in Data-In PDUs of the initiator's segment size."""
    ini = RawInitiator(target, "iqn.2024-01.org.guestfence.test:raw", InitialR2T="No",
                       FirstBurstLength="1024", MaxBurstLength="2048",
                       MaxRecvDataSegmentLength="512", MaxOutstandingR2T="2")
    assert ini.negotiated["InitialR2T"] == "No" and ini.negotiated["MaxBurstLength"] == "2048"
    seg = int(ini.negotiated["MaxRecvDataSegmentLength"])  # what the target accepts
    ini.status_of(ini.command(bytes(6)))  # unit attention of a new nexus
    payload = random.randbytes(11 * BLOCK)
    cdb = struct.pack(">BBIBHB", 0x2A, 0, 100, 0, 11, 0)
    ini.itt += 1
    itt = ini.itt
    p = Pdu.new(Op.SCSI_CMD, 0x20 | 1, itt=itt, data=payload[:BLOCK])  # F=0: more unsolicited
    p.lun_raw = bytes([0, 1]) + bytes(6)
    p.set_word(20, len(payload))
    p.set_word(24, ini.cmdsn)
    p.bhs[32:48] = cdb.ljust(16, b"\0")
    ini.cmdsn += 1
    ini.sock.sendall(p.encode())
    ini.data_out(itt, 0xFFFFFFFF, payload[BLOCK:1024], offset=BLOCK)  # ends the first burst
    r2ts = []
    while True:
        head, _ = ini.recv()
        if head[0] & 0x3F == Op.SCSI_RSP:
            assert head[3] == Status.GOOD
            break
        assert head[0] & 0x3F == Op.R2T
        ttt, offset, length = (int.from_bytes(head[i:i + 4], "big") for i in (20, 40, 44))
        r2ts.append((offset, length))
        for sn, pos in enumerate(range(offset, offset + length, seg)):
            end = min(offset + length, pos + seg)
            ini.data_out(itt, ttt, payload[pos:end], offset=pos, datasn=sn,
                         final=end == offset + length)
    assert r2ts == [(1024, 2048), (3072, 2048), (5120, 512)]
    ini.command(struct.pack(">BBIBHB", 0x28, 0, 100, 0, 11, 0), edtl=len(payload), read=True)
    got, sizes, finals = b"", [], []
    while True:
        head, data = ini.recv()
        assert head[0] & 0x3F == Op.DATA_IN
        got += data
        sizes.append(len(data))
        finals.append(bool(head[1] & 0x80))
        if head[1] & 0x01:  # S: status in the last Data-In
            assert head[3] == Status.GOOD
            break
    assert got == payload
    assert max(sizes) <= 512 and len(sizes) == 11
    assert finals == [i % 4 == 3 or i == 10 for i in range(11)]  # F closes each 2048 burst
    ini.sock.close()
