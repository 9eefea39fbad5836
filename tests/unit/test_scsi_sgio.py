"""SgIoTransport against a fake kernel.

No SCSI devices exist on the test machines, so a fake ioctl plays the kernel:
it decodes the sg_io_hdr from the buffer it is handed with its own layout
(written from include/scsi/sg.h with the struct module, independent of the
ctypes definition under test), follows the pointers to read the CDB and data
out, and writes data in, sense and status back the way the kernel does. A
layout mistake on either side therefore shows up as a wrong CDB, length or
status, proving the struct end to end.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from guestfence.scsi.sgio import SG_IO, SgIoHdr, SgIoTransport, is_block_or_sg, timeout_ms
from guestfence.scsi.transport import Direction, ScsiTransportError, Status

DEVICE = "/dev/mapper/mpatha"

# struct sg_io_hdr, field by field, in struct-module codes with native alignment.
LAYOUT = (
    ("interface_id", "i"),
    ("dxfer_direction", "i"),
    ("cmd_len", "B"),
    ("mx_sb_len", "B"),
    ("iovec_count", "H"),
    ("dxfer_len", "I"),
    ("dxferp", "P"),
    ("cmdp", "P"),
    ("sbp", "P"),
    ("timeout", "I"),
    ("flags", "I"),
    ("pack_id", "i"),
    ("usr_ptr", "P"),
    ("status", "B"),
    ("masked_status", "B"),
    ("msg_status", "B"),
    ("sb_len_wr", "B"),
    ("host_status", "H"),
    ("driver_status", "H"),
    ("resid", "i"),
    ("duration", "I"),
    ("info", "I"),
)
FIELDS = [name for name, _ in LAYOUT]
# The trailing "0P" pads to the struct's alignment as the C compiler does
# (84 -> 88 bytes on x86_64); the struct module does not pad the end itself.
SG_IO_HDR = struct.Struct("@" + "".join(code for _, code in LAYOUT) + "0P")

DID_NO_CONNECT, DID_TIME_OUT, DID_BAD_TARGET, DID_NEXUS_FAILURE = 0x01, 0x03, 0x04, 0x11
DRIVER_SENSE, DRIVER_TIMEOUT = 0x08, 0x06

TEST_UNIT_READY = bytes(6)
# PERSISTENT RESERVE IN, READ KEYS, allocation length 1024
PR_IN_READ_KEYS = bytes([0x5E, 0x00, 0, 0, 0, 0, 0, 0x04, 0x00, 0])
# PERSISTENT RESERVE OUT, REGISTER AND IGNORE EXISTING KEY, parameter list length 24
PR_OUT_REGISTER = bytes([0x5F, 0x06, 0, 0, 0, 0, 0, 0, 24, 0])
# fixed-format sense: ILLEGAL REQUEST, INVALID FIELD IN CDB
SENSE_ILLEGAL_REQUEST = bytes([0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0, 0, 0])
SENSE_RECOVERED = bytes([0x72, 0x01, 0x17, 0x01, 0, 0, 0, 0])  # descriptor format


@dataclass
class Seen:
    hdr: dict[str, int]  # the header as the kernel received it
    cdb: bytes
    data_out: bytes


@dataclass
class FakeKernel:
    """Answers SG_IO like the Linux sg driver; records what it was asked."""

    status: int = 0
    host_status: int = 0
    driver_status: int = 0
    sense: bytes = b""
    data_in: bytes = b""
    resid: int | None = None  # default: what data_in left unfilled
    error: OSError | None = None
    seen: list[Seen] = field(default_factory=list)

    def __call__(self, fd: int, request: int, arg: bytearray) -> int:
        assert request == SG_IO
        # A mutable buffer of exactly the header's size, or the answer is lost.
        assert isinstance(arg, bytearray)
        assert len(arg) == SG_IO_HDR.size
        hdr: dict[str, int] = dict(zip(FIELDS, SG_IO_HDR.unpack_from(arg), strict=True))
        cdb = ctypes.string_at(hdr["cmdp"], hdr["cmd_len"])
        out = b""
        if hdr["dxfer_direction"] == -2:
            out = ctypes.string_at(hdr["dxferp"], hdr["dxfer_len"])
        self.seen.append(Seen(dict(hdr), cdb, out))
        if self.error is not None:
            raise self.error
        if self.data_in:
            assert hdr["dxfer_direction"] == -3
            assert len(self.data_in) <= hdr["dxfer_len"]
            ctypes.memmove(hdr["dxferp"], self.data_in, len(self.data_in))
        if self.sense:
            assert len(self.sense) <= hdr["mx_sb_len"]
            ctypes.memmove(hdr["sbp"], self.sense, len(self.sense))
        resid = hdr["dxfer_len"] - len(self.data_in) if self.resid is None else self.resid
        hdr.update(
            status=self.status,
            masked_status=self.status >> 1,
            sb_len_wr=len(self.sense),
            host_status=self.host_status,
            driver_status=self.driver_status,
            resid=resid,
            duration=3,
        )
        SG_IO_HDR.pack_into(arg, 0, *(hdr[name] for name in FIELDS))
        return 0


def fake_stat(mode: int, rdev: int = 0) -> Callable[[str], os.stat_result]:
    result = os.stat_result((mode | 0o660, 1, 5, 1, 0, 6, 0, 0, 0, 0), {"st_rdev": rdev})
    return lambda path: result


BLOCK = fake_stat(stat.S_IFBLK, os.makedev(253, 2))


@dataclass
class Opened:
    calls: list[tuple[str, int]] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)
    transports: list[SgIoTransport] = field(default_factory=list)

    def __call__(self, path: str, flags: int) -> int:
        self.calls.append((path, flags))
        # A real descriptor, so that close() has something genuine to close.
        self.fds.append(os.open(os.devnull, os.O_RDONLY))
        return self.fds[-1]


@pytest.fixture
def opener() -> Iterator[Opened]:
    opened = Opened()
    yield opened
    for sg in opened.transports:
        sg.close()


def transport(
    kernel: FakeKernel,
    opener: Opened,
    path: str = DEVICE,
    stat_fn: Callable[[str], os.stat_result] = BLOCK,
) -> SgIoTransport:
    sg = SgIoTransport(path, ioctl=kernel, opener=opener, stat_fn=stat_fn)
    opener.transports.append(sg)
    return sg


@pytest.mark.skipif(ctypes.sizeof(ctypes.c_void_p) != 8, reason="64-bit layout")
def test_header_is_88_bytes_on_64_bit() -> None:
    assert ctypes.sizeof(SgIoHdr) == 88 == SG_IO_HDR.size


def test_test_unit_ready_good(opener: Opened) -> None:
    kernel = FakeKernel()
    sg = transport(kernel, opener)
    result = sg.execute(TEST_UNIT_READY)
    assert (result.status, result.sense, result.data) == (Status.GOOD, b"", b"")
    ((hdr, cdb, _),) = ((seen.hdr, seen.cdb, seen.data_out) for seen in kernel.seen)
    assert chr(hdr["interface_id"]) == "S"
    assert hdr["dxfer_direction"] == -1  # SG_DXFER_NONE
    assert (cdb, hdr["cmd_len"]) == (TEST_UNIT_READY, 6)
    assert (hdr["dxfer_len"], hdr["dxferp"]) == (0, 0)
    assert hdr["timeout"] == 30_000
    assert hdr["mx_sb_len"] >= 18 and hdr["sbp"]
    assert (hdr["iovec_count"], hdr["flags"]) == (0, 0)


def test_opens_read_write_nonblocking(opener: Opened) -> None:
    sg = transport(FakeKernel(), opener)
    ((path, flags),) = opener.calls
    assert path == DEVICE == sg.name
    assert flags & os.O_ACCMODE == os.O_RDWR
    assert flags & os.O_NONBLOCK and flags & os.O_CLOEXEC


def test_pr_in_returns_data_trimmed_by_resid(opener: Opened) -> None:
    keys = bytes.fromhex("0000000400000010") + bytes.fromhex("0123456789abcdef")
    kernel = FakeKernel(data_in=keys)
    result = transport(kernel, opener).execute(
        PR_IN_READ_KEYS, Direction.FROM_DEVICE, data_in_length=1024
    )
    assert (result.status, result.data) == (Status.GOOD, keys)
    (seen,) = kernel.seen
    assert (seen.hdr["dxfer_direction"], seen.hdr["dxfer_len"]) == (-3, 1024)  # SG_DXFER_FROM_DEV
    assert seen.cdb == PR_IN_READ_KEYS


def test_bogus_resid_is_clamped(opener: Opened) -> None:
    sg = transport(FakeKernel(data_in=b"\x01" * 8, resid=-5), opener)
    assert sg.execute(PR_IN_READ_KEYS, Direction.FROM_DEVICE, data_in_length=8).data == b"\x01" * 8
    sg = transport(FakeKernel(resid=4096), opener)
    assert sg.execute(PR_IN_READ_KEYS, Direction.FROM_DEVICE, data_in_length=8).data == b""


def test_pr_out_sends_data_out(opener: Opened) -> None:
    params = bytes(8) + bytes.fromhex("0123456789abcdef") + bytes(8)
    kernel = FakeKernel()
    result = transport(kernel, opener).execute(PR_OUT_REGISTER, Direction.TO_DEVICE, params)
    assert (result.status, result.data) == (Status.GOOD, b"")
    (seen,) = kernel.seen
    assert (seen.hdr["dxfer_direction"], seen.hdr["dxfer_len"]) == (-2, 24)  # SG_DXFER_TO_DEV
    assert seen.data_out == params
    assert seen.cdb == PR_OUT_REGISTER


def test_check_condition_returns_sense(opener: Opened) -> None:
    kernel = FakeKernel(status=0x02, driver_status=DRIVER_SENSE, sense=SENSE_ILLEGAL_REQUEST)
    result = transport(kernel, opener).execute(PR_OUT_REGISTER, Direction.TO_DEVICE, bytes(24))
    assert (result.status, result.sense) == (Status.CHECK_CONDITION, SENSE_ILLEGAL_REQUEST)


def test_driver_sense_with_good_status_is_not_success(opener: Opened) -> None:
    kernel = FakeKernel(status=0, driver_status=DRIVER_SENSE, sense=SENSE_ILLEGAL_REQUEST)
    result = transport(kernel, opener).execute(TEST_UNIT_READY)
    assert (result.status, result.sense) == (Status.CHECK_CONDITION, SENSE_ILLEGAL_REQUEST)


def test_recovered_error_sense_stays_good(opener: Opened) -> None:
    kernel = FakeKernel(status=0, driver_status=DRIVER_SENSE, sense=SENSE_RECOVERED)
    result = transport(kernel, opener).execute(TEST_UNIT_READY)
    assert (result.status, result.sense) == (Status.GOOD, SENSE_RECOVERED)


def test_reservation_conflict_reported_as_nexus_failure_is_an_answer(opener: Opened) -> None:
    kernel = FakeKernel(status=0x18, host_status=DID_NEXUS_FAILURE)
    result = transport(kernel, opener).execute(PR_OUT_REGISTER, Direction.TO_DEVICE, bytes(24))
    assert result.status == Status.RESERVATION_CONFLICT


@pytest.mark.parametrize(
    ("host_status", "word"),
    [(DID_NO_CONNECT, "DID_NO_CONNECT"), (DID_TIME_OUT, "DID_TIME_OUT"),
     (DID_BAD_TARGET, "DID_BAD_TARGET"), (0x77, "unknown")],
)  # fmt: skip
def test_host_status_is_a_transport_error(opener: Opened, host_status: int, word: str) -> None:
    sg = transport(FakeKernel(host_status=host_status), opener)
    with pytest.raises(ScsiTransportError) as err:
        sg.execute(TEST_UNIT_READY)
    assert DEVICE in str(err.value)
    assert word in str(err.value)
    assert f"0x{host_status:02x}" in str(err.value)


def test_driver_status_is_a_transport_error(opener: Opened) -> None:
    sg = transport(FakeKernel(driver_status=0x20 | DRIVER_TIMEOUT), opener)  # with a suggest bit
    with pytest.raises(ScsiTransportError, match=f"{DEVICE}: driver_status DRIVER_TIMEOUT"):
        sg.execute(TEST_UNIT_READY)


def test_suggest_bits_alone_are_not_an_error(opener: Opened) -> None:
    assert transport(FakeKernel(driver_status=0x10), opener).execute(TEST_UNIT_READY).status == 0


@pytest.mark.parametrize("code", [errno.ENOTTY, errno.EINVAL])
def test_ioctl_unsupported_says_not_scsi(opener: Opened, code: int) -> None:
    kernel = FakeKernel(error=OSError(code, os.strerror(code)))
    with pytest.raises(ScsiTransportError) as err:
        transport(kernel, opener).execute(TEST_UNIT_READY)
    message = str(err.value)
    assert message.startswith(f"{DEVICE}: SG_IO failed: {os.strerror(code)}")
    assert "not a SCSI device" in message
    assert isinstance(err.value.__cause__, OSError)


def test_ioctl_eacces_mentions_privileges(opener: Opened) -> None:
    kernel = FakeKernel(error=OSError(errno.EACCES, os.strerror(errno.EACCES)))
    with pytest.raises(ScsiTransportError, match="CAP_SYS_RAWIO"):
        transport(kernel, opener).execute(PR_OUT_REGISTER, Direction.TO_DEVICE, bytes(24))


def test_regular_file_is_refused_before_opening(tmp_path: Path, opener: Opened) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(512))
    with pytest.raises(ScsiTransportError, match=r"disk\.img: not a SCSI device \(regular file\)"):
        SgIoTransport(str(image), ioctl=FakeKernel(), opener=opener)
    assert opener.calls == []
    assert not is_block_or_sg(str(image))


def test_other_paths_are_refused(tmp_path: Path, opener: Opened) -> None:
    with pytest.raises(ScsiTransportError, match=r"not a SCSI device \(directory\)"):
        SgIoTransport(str(tmp_path), ioctl=FakeKernel(), opener=opener)
    with pytest.raises(ScsiTransportError, match=r"character device 1:3, not an sg node"):
        SgIoTransport("/dev/null", ioctl=FakeKernel(), opener=opener)
    with pytest.raises(ScsiTransportError, match=r"missing: cannot open: No such file"):
        SgIoTransport(str(tmp_path / "missing"), ioctl=FakeKernel(), opener=opener)
    assert opener.calls == []
    assert not is_block_or_sg("/dev/null")
    assert not is_block_or_sg(str(tmp_path / "missing"))


def test_sg_char_device_is_accepted(opener: Opened) -> None:
    sg_node = fake_stat(stat.S_IFCHR, os.makedev(21, 3))
    sg = transport(FakeKernel(), opener, "/dev/sg3", sg_node)
    assert sg.execute(TEST_UNIT_READY).status == Status.GOOD


def test_open_failure_names_the_device() -> None:
    def denied(path: str, flags: int) -> int:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

    with pytest.raises(ScsiTransportError, match=f"{DEVICE}: cannot open: Permission denied"):
        SgIoTransport(DEVICE, ioctl=FakeKernel(), opener=denied, stat_fn=BLOCK)


@pytest.mark.parametrize(
    ("seconds", "ms"), [(30, 30_000), (2.5, 2_500), (0.1, 100), (0.0001, 1), (1e12, 0xFFFFFFFF)]
)
def test_timeout_conversion(seconds: float, ms: int) -> None:
    assert timeout_ms(seconds) == ms


def test_timeout_reaches_the_kernel_in_milliseconds(opener: Opened) -> None:
    kernel = FakeKernel()
    transport(kernel, opener).execute(TEST_UNIT_READY, timeout=120.25)  # > 16 bits of ms
    assert kernel.seen[0].hdr["timeout"] == 120_250


@pytest.mark.parametrize("seconds", [0, -1, float("nan"), float("inf")])
def test_bad_timeouts_are_refused(seconds: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        timeout_ms(seconds)


def test_inconsistent_arguments_are_refused(opener: Opened) -> None:
    sg = transport(FakeKernel(), opener)
    with pytest.raises(ValueError):
        sg.execute(PR_IN_READ_KEYS, Direction.NONE, data_in_length=8)
    with pytest.raises(ValueError):
        sg.execute(PR_OUT_REGISTER, Direction.FROM_DEVICE, bytes(24))
    with pytest.raises(ValueError):
        sg.execute(b"")


def test_close_releases_the_descriptor_and_is_idempotent(opener: Opened) -> None:
    sg = transport(FakeKernel(), opener)
    sg.close()
    sg.close()
    with pytest.raises(OSError):
        os.fstat(opener.fds[0])
    with pytest.raises(ScsiTransportError, match=f"{DEVICE}: transport is closed"):
        sg.execute(TEST_UNIT_READY)
