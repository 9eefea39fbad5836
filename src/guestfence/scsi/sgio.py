"""SCSI transport over the Linux SG_IO ioctl: one sg_io_hdr (include/scsi/sg.h,
interface 'S', version 3) per command, no sg3_utils. Works on /dev/sdX, on
device-mapper multipath maps (dm passes SG_IO to the current path) and /dev/sgN.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import math
import os
import stat
from collections.abc import Callable
from typing import Protocol

from guestfence.scsi.transport import (
    DEFAULT_TIMEOUT,
    Direction,
    ScsiResult,
    ScsiTransportError,
    Status,
)

SG_IO = 0x2285
SG_MAJOR = 21  # SCSI_GENERIC_MAJOR: /dev/sgN; other char devices do not speak sg v3
SENSE_BUFFER = 252  # the largest sense SPC allows; the kernel copies at most this much
_UINT32_MAX = 0xFFFFFFFF

_DIRECTIONS = {Direction.NONE: -1, Direction.TO_DEVICE: -2, Direction.FROM_DEVICE: -3}

DID_NEXUS_FAILURE = 0x11
DRIVER_SENSE = 0x08
_DRIVER_MASK = 0x0F  # the upper nibble holds "suggest" bits that say nothing about this command

# Host (adapter/transport) status bytes from include/scsi/scsi_status.h.
HOST_STATUS = {
    0x01: ("DID_NO_CONNECT", "no connection to the target (path or session down)"),
    0x02: ("DID_BUS_BUSY", "bus stayed busy"),
    0x03: ("DID_TIME_OUT", "command timed out"),
    0x04: ("DID_BAD_TARGET", "bad target"),
    0x05: ("DID_ABORT", "command aborted"),
    0x06: ("DID_PARITY", "parity error"),
    0x07: ("DID_ERROR", "internal adapter error"),
    0x08: ("DID_RESET", "bus or device was reset"),
    0x09: ("DID_BAD_INTR", "unexpected interrupt"),
    0x0A: ("DID_PASSTHROUGH", "forced pass-through"),
    0x0B: ("DID_SOFT_ERROR", "low-level driver wants a retry"),
    0x0C: ("DID_IMM_RETRY", "retry without decrementing the retry count"),
    0x0D: ("DID_REQUEUE", "requeue the command"),
    0x0E: ("DID_TRANSPORT_DISRUPTED", "transport disrupted"),
    0x0F: ("DID_TRANSPORT_FAILFAST", "transport class fast-failed the I/O"),
    0x10: ("DID_TARGET_FAILURE", "permanent target failure"),
    0x12: ("DID_ALLOC_FAILURE", "space allocation failed on the target"),
    0x13: ("DID_MEDIUM_ERROR", "medium error"),
    0x14: ("DID_TRANSPORT_MARGINAL", "transport marginal"),
}
# Driver status names (low nibble), indexed by value; 8, DRIVER_SENSE, is not an error.
DRIVER_STATUS = ("OK", "BUSY", "SOFT", "MEDIA", "ERROR", "INVALID", "TIMEOUT", "HARD")


class SgIoHdr(ctypes.Structure):
    """struct sg_io_hdr; ctypes applies the C ABI's padding (88 bytes on 64-bit Linux)."""

    _fields_ = (
        ("interface_id", ctypes.c_int),
        ("dxfer_direction", ctypes.c_int),
        ("cmd_len", ctypes.c_ubyte),
        ("mx_sb_len", ctypes.c_ubyte),
        ("iovec_count", ctypes.c_ushort),
        ("dxfer_len", ctypes.c_uint),
        ("dxferp", ctypes.c_void_p),
        ("cmdp", ctypes.c_void_p),
        ("sbp", ctypes.c_void_p),
        ("timeout", ctypes.c_uint),  # milliseconds
        ("flags", ctypes.c_uint),
        ("pack_id", ctypes.c_int),
        ("usr_ptr", ctypes.c_void_p),
        ("status", ctypes.c_ubyte),
        ("masked_status", ctypes.c_ubyte),
        ("msg_status", ctypes.c_ubyte),
        ("sb_len_wr", ctypes.c_ubyte),
        ("host_status", ctypes.c_ushort),
        ("driver_status", ctypes.c_ushort),
        ("resid", ctypes.c_int),
        ("duration", ctypes.c_uint),
        ("info", ctypes.c_uint),
    )


class Ioctl(Protocol):
    """fcntl.ioctl as this module calls it (tests pass a fake that plays the kernel)."""

    def __call__(self, fd: int, request: int, arg: bytearray, /) -> object: ...


def _not_scsi_reason(st: os.stat_result) -> str | None:
    """None for a block device or sg node, else what the path is instead."""
    mode = st.st_mode
    if stat.S_ISBLK(mode) or (stat.S_ISCHR(mode) and os.major(st.st_rdev) == SG_MAJOR):
        return None
    if stat.S_ISCHR(mode):
        return f"character device {os.major(st.st_rdev)}:{os.minor(st.st_rdev)}, not an sg node"
    kinds = {stat.S_IFREG: "regular file", stat.S_IFDIR: "directory", stat.S_IFIFO: "FIFO"}
    return kinds.get(stat.S_IFMT(mode), "socket" if stat.S_ISSOCK(mode) else "unknown file type")


def is_block_or_sg(path: str) -> bool:
    """True if path (after symlinks) is a block device or a /dev/sgN node."""
    try:
        return _not_scsi_reason(os.stat(path)) is None
    except OSError:
        return False


def timeout_ms(timeout: float) -> int:
    """Seconds to sg's unsigned milliseconds; 0 would mean "driver default", so refuse it."""
    if not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"SCSI timeout must be a positive number of seconds, not {timeout!r}")
    return min(max(1, round(timeout * 1000)), _UINT32_MAX)


def _sense_key(sense: bytes) -> int | None:
    code = sense[0] & 0x7F if sense else 0
    if code in (0x70, 0x71) and len(sense) > 2:  # fixed format
        return sense[2] & 0x0F
    if code in (0x72, 0x73) and len(sense) > 1:  # descriptor format
        return sense[1] & 0x0F
    return None


class SgIoTransport:
    """One SCSI logical unit reached through SG_IO on a Linux device node."""

    def __init__(
        self,
        path: str,
        *,
        ioctl: Ioctl = fcntl.ioctl,
        opener: Callable[[str, int], int] = os.open,
        stat_fn: Callable[[str], os.stat_result] = os.stat,
    ) -> None:
        self._path = path
        self._ioctl = ioctl
        # Read-write: without CAP_SYS_RAWIO the kernel lets only write-mode
        # openers send PERSISTENT RESERVE OUT. O_NONBLOCK as sg3_utils does,
        # so the open does not wait on a device that is held or not ready.
        flags = os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
        try:
            # Checked before opening: opening an arbitrary character device
            # can have side effects (a tape rewinds on close, a tty hangs up).
            reason = _not_scsi_reason(stat_fn(path))
            self._fd: int | None = opener(path, flags) if reason is None else None
        except OSError as exc:
            raise ScsiTransportError(f"{path}: cannot open: {exc.strerror or exc}") from exc
        if reason is not None:
            raise ScsiTransportError(f"{path}: not a SCSI device ({reason})")

    @property
    def name(self) -> str:
        return self._path

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def execute(
        self,
        cdb: bytes,
        direction: Direction = Direction.NONE,
        data_out: bytes = b"",
        data_in_length: int = 0,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> ScsiResult:
        if not 0 < len(cdb) <= 255:
            raise ValueError(f"CDB length {len(cdb)} out of range 1..255")
        if (data_out and direction is not Direction.TO_DEVICE) or (
            data_in_length and direction is not Direction.FROM_DEVICE
        ):
            raise ValueError(f"data_out needs TO_DEVICE, data_in_length FROM_DEVICE: {direction}")
        length = len(data_out) if direction is Direction.TO_DEVICE else data_in_length
        if not 0 <= length <= _UINT32_MAX:
            raise ValueError(f"transfer length {length} out of range")
        if self._fd is None:
            raise ScsiTransportError(f"{self._path}: transport is closed")
        # The header holds raw addresses: these ctypes arrays must stay
        # referenced (they are locals) until the ioctl has returned.
        cmd = (ctypes.c_ubyte * len(cdb)).from_buffer_copy(cdb)
        sense = (ctypes.c_ubyte * SENSE_BUFFER)()
        data = (ctypes.c_ubyte * length).from_buffer_copy(data_out.ljust(length, b"\0"))
        hdr = SgIoHdr(
            interface_id=ord("S"),
            dxfer_direction=_DIRECTIONS[direction if length else Direction.NONE],
            cmd_len=len(cdb),
            mx_sb_len=SENSE_BUFFER,
            dxfer_len=length,
            dxferp=ctypes.addressof(data) if length else None,
            cmdp=ctypes.addressof(cmd),
            sbp=ctypes.addressof(sense),
            timeout=timeout_ms(timeout),
        )
        # A bytearray is a mutable buffer: fcntl.ioctl copies the kernel's
        # answer (status, resid, ...) back into it.
        buf = bytearray(bytes(hdr))
        try:
            self._ioctl(self._fd, SG_IO, buf)
        except OSError as exc:
            raise ScsiTransportError(self._ioctl_failure(exc)) from exc
        out = SgIoHdr.from_buffer(buf)
        return self._result(out, bytes(sense)[: out.sb_len_wr], bytes(data))

    def _ioctl_failure(self, exc: OSError) -> str:
        what = f"{self._path}: SG_IO failed: {exc.strerror or exc}"
        # Drivers without SG_IO refuse it with ENOTTY (virtio-blk, NVMe) or EINVAL (loop).
        if exc.errno in (errno.ENOTTY, errno.EINVAL):
            return f"{what} (not a SCSI device, a partition, or a dm map of no single LUN)"
        if exc.errno in (errno.EPERM, errno.EACCES):
            return f"{what} (needs root, or CAP_SYS_RAWIO for this command)"
        return what

    def _result(self, hdr: SgIoHdr, sense: bytes, data: bytes) -> ScsiResult:
        status = hdr.status
        if hdr.host_status == DID_NEXUS_FAILURE:
            # Kernels before 6.4 also set this host byte on RESERVATION CONFLICT;
            # it is the device's answer, not a transport failure (as sg3_utils).
            status = Status.RESERVATION_CONFLICT
        elif hdr.host_status:
            word, meaning = HOST_STATUS.get(hdr.host_status, ("unknown", "unrecognised"))
            raise ScsiTransportError(
                f"{self._path}: host_status {word} (0x{hdr.host_status:02x}): {meaning}"
            )
        driver = hdr.driver_status & _DRIVER_MASK
        if driver not in (0, DRIVER_SENSE):
            word = f"DRIVER_{DRIVER_STATUS[driver]}" if driver < len(DRIVER_STATUS) else "unknown"
            raise ScsiTransportError(f"{self._path}: driver_status {word} (0x{driver:02x})")
        key = _sense_key(sense)
        if status == Status.GOOD and driver == DRIVER_SENSE and key is not None and key > 1:
            # DRIVER_SENSE marks the sense as valid whatever the status byte
            # says (sg3_utils reads it then too): an error sense with GOOD must
            # not pass for success with a caller that checks the status only.
            status = Status.CHECK_CONDITION
        if hdr.dxfer_direction != _DIRECTIONS[Direction.FROM_DEVICE]:
            return ScsiResult(status=int(status), sense=sense)
        # resid is what the device did not send; clamp it so a bogus value
        # from a driver cannot produce a negative or oversized slice.
        received = hdr.dxfer_len - min(max(hdr.resid, 0), hdr.dxfer_len)
        return ScsiResult(status=int(status), sense=sense, data=data[:received])
