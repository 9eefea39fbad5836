"""SBC-3 pieces of the file-backed logical unit: the backing file and block CDBs.

``Backing`` is the medium: a regular file (or block device) read with
os.pread and written with os.pwrite, flushed with os.fdatasync. What is
flushed when is decided by the caller (target/scsi.py, see its durability
policy); this module only does I/O and reports errors as sense data.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from guestfence.target.scsi_spc import (
    hardware_error,
    invalid_field,
    lba_out_of_range,
    medium_error,
)

READ_6, WRITE_6 = 0x08, 0x0A
READ_10, WRITE_10, WRITE_VERIFY_10, VERIFY_10 = 0x28, 0x2A, 0x2E, 0x2F
READ_12, WRITE_12, WRITE_VERIFY_12, VERIFY_12 = 0xA8, 0xAA, 0xAE, 0xAF
READ_16, WRITE_16, WRITE_VERIFY_16, VERIFY_16 = 0x88, 0x8A, 0x8E, 0x8F
SYNCHRONIZE_CACHE_10, SYNCHRONIZE_CACHE_16 = 0x35, 0x91

READS = frozenset({READ_6, READ_10, READ_12, READ_16})
WRITES = frozenset({WRITE_6, WRITE_10, WRITE_12, WRITE_16})
WRITE_VERIFIES = frozenset({WRITE_VERIFY_10, WRITE_VERIFY_12, WRITE_VERIFY_16})
VERIFIES = frozenset({VERIFY_10, VERIFY_12, VERIFY_16})


@dataclass(frozen=True)
class BlockRange:
    """LOGICAL BLOCK ADDRESS, TRANSFER LENGTH and the flags of a block command."""

    lba: int
    blocks: int
    fua: bool = False
    protect: int = 0  # RDPROTECT / WRPROTECT / VRPROTECT
    bytchk: int = 0


def decode_block_cdb(cdb: bytes) -> BlockRange:
    """Decode READ/WRITE/WRITE AND VERIFY/VERIFY of any CDB size, and SYNCHRONIZE CACHE."""
    opcode = cdb[0]
    if opcode in (READ_6, WRITE_6):
        # 21-bit LBA in bytes 1-3; TRANSFER LENGTH 0 means 256 blocks.
        lba = int.from_bytes(cdb[1:4], "big") & 0x1FFFFF
        return BlockRange(lba, cdb[4] or 256)
    if opcode in (SYNCHRONIZE_CACHE_10, SYNCHRONIZE_CACHE_16):
        if opcode == SYNCHRONIZE_CACHE_10:
            lba, blocks = struct.unpack_from(">IxH", cdb, 2)
        else:
            lba, blocks = struct.unpack_from(">QI", cdb, 2)
        return BlockRange(lba, blocks)
    group = opcode >> 5
    if group == 1:  # 10-byte
        lba, blocks = struct.unpack_from(">IxH", cdb, 2)
    elif group == 5:  # 12-byte
        lba, blocks = struct.unpack_from(">II", cdb, 2)
    else:  # 16-byte
        lba, blocks = struct.unpack_from(">QI", cdb, 2)
    return BlockRange(lba, blocks, fua=bool(cdb[1] & 0x08), protect=cdb[1] >> 5,
                      bytchk=(cdb[1] >> 1) & 0x03)


def read_capacity_10(blocks: int, block_size: int) -> bytes:
    """RETURNED LOGICAL BLOCK ADDRESS (FFFFFFFFh: use READ CAPACITY(16)), BLOCK LENGTH."""
    return struct.pack(">II", min(blocks - 1, 0xFFFFFFFF), block_size)


def read_capacity_16(blocks: int, block_size: int) -> bytes:
    """32 bytes: last LBA, block length; no protection, LBPPBE 0, LBPME 0 (fully provisioned)."""
    return struct.pack(">QI20x", blocks - 1, block_size)


class Backing:
    """The backing file: capacity in whole blocks, block I/O, flush."""

    def __init__(self, path: Path, block_size: int) -> None:
        if block_size < 512 or block_size & (block_size - 1):
            raise ValueError(f"block size {block_size} is not a power of two >= 512")
        self.path = path
        self.block_size = block_size
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            size = os.lseek(self.fd, 0, os.SEEK_END)
            self.blocks = size // block_size
            if self.blocks < 1:
                raise ValueError(f"{path}: {size} bytes is less than one {block_size}-byte block")
        except BaseException:
            os.close(self.fd)
            raise

    def check_range(self, lba: int, blocks: int) -> None:
        if lba + blocks > self.blocks:
            raise lba_out_of_range()

    def read(self, lba: int, blocks: int) -> bytes:
        offset, size = lba * self.block_size, blocks * self.block_size
        parts: list[bytes] = []
        try:
            while size:
                chunk = os.pread(self.fd, size, offset)
                if not chunk:  # the file shrank under us
                    raise medium_error(0x11, 0x00)  # UNRECOVERED READ ERROR
                parts.append(chunk)
                offset += len(chunk)
                size -= len(chunk)
        except OSError as exc:
            raise medium_error(0x11, 0x00) from exc
        return b"".join(parts)

    def write(self, lba: int, data: bytes | memoryview) -> None:
        offset = lba * self.block_size
        view = memoryview(data)
        try:
            while view:
                done = os.pwrite(self.fd, view, offset)
                view = view[done:]
                offset += done
        except OSError as exc:
            raise medium_error(0x0C, 0x00) from exc  # WRITE ERROR

    def flush(self) -> None:
        try:
            os.fdatasync(self.fd)
        except OSError as exc:
            # After a failed fsync the page cache no longer says what is on disk.
            raise hardware_error(0x44, 0x00) from exc  # INTERNAL TARGET FAILURE

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def check_transfer(blocks: int, max_blocks: int, field: int) -> None:
    """24/00 for a TRANSFER LENGTH above the MAXIMUM TRANSFER LENGTH of the block limits VPD."""
    if blocks > max_blocks:
        raise invalid_field(field)
