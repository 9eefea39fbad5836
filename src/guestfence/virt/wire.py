"""The fence_virt wire format: structures, codes, signing.

Byte-compatible with fence-agents 4.12.1 (`agents/virt/include/xvm.h`). Every
structure is packed and little-endian: the C code sends host byte order and all
deployed peers are little-endian, so we always pack with ``<``.

Pure code: no sockets, no clocks. Random bytes come from a caller-supplied
function so tests can make packets deterministic.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import os
import struct
from collections.abc import Callable
from typing import BinaryIO

from guestfence.errors import AuthError, KeyFileError, ProtocolError
from guestfence.record import Record

KEY_MAX_BYTES = 4096
DIGEST_FIELD = 64
CHALLENGE_SIZE = 64
DOMAIN_FIELD = 64
DOMAIN_MAX = DOMAIN_FIELD - 1  # the C clients keep room for the terminating NUL

DEFAULT_PORT = 1229
DEFAULT_IPV4_GROUP = "225.0.0.12"
DEFAULT_IPV6_GROUP = "ff05::3:1"
DEFAULT_KEY_FILE = "/etc/cluster/fence_xvm.key"

# Linux numeric address families, as carried inside the request block.
AF_INET_WIRE = 2
AF_INET6_WIRE = 10

FLAG_TARGET_IS_UUID = 0x01


class Op(enum.IntEnum):
    """Operation codes (byte 0 of a request)."""

    NULL = 0
    OFF = 1
    REBOOT = 2
    ON = 3
    STATUS = 4
    DEVSTATUS = 5
    HOSTLIST = 6
    METADATA = 7
    VALIDATEALL = 8


class HashType(enum.IntEnum):
    """Signing / challenge-response algorithms; a higher code is stronger."""

    NONE = 0
    SHA1 = 1
    SHA256 = 2
    SHA512 = 3

    @classmethod
    def from_name(cls, name: str) -> HashType:
        try:
            return cls[name.strip().upper()]
        except KeyError:
            raise ValueError(
                f"unknown hash {name!r}; expected none, sha1, sha256 or sha512"
            ) from None

    @property
    def label(self) -> str:
        return self.name.lower()


class Result(enum.IntEnum):
    """The one-byte answer of the daemon."""

    SUCCESS = 0
    FAIL = 1
    OFF = 2
    PERM = 3
    HOSTLIST = 253


# the hash of each signing algorithm (the daemon's key ring keeps their states after a key)
DIGESTS: dict[HashType, Callable[[bytes], hashlib._Hash]] = {
    HashType.SHA1: hashlib.sha1,
    HashType.SHA256: hashlib.sha256,
    HashType.SHA512: hashlib.sha512,
}


def digest_field(hash_type: HashType, key: bytes, data: bytes) -> bytes:
    """pad64(H(key || data)): the construction used for signatures and challenge answers.

    It is secret-prefix hashing, not HMAC; we must keep it for compatibility.
    """
    if hash_type is HashType.NONE:
        return bytes(DIGEST_FIELD)
    return DIGESTS[hash_type](key + data).digest().ljust(DIGEST_FIELD, b"\0")


def read_key(path: str) -> bytes:
    """Read a shared key: the first 4096 bytes of the file, nothing stripped."""
    try:
        with open(path, "rb") as f:
            return read_open_key(f, path)
    except OSError as e:
        raise KeyFileError(f"cannot read key file {path}: {e.strerror}") from e


def read_open_key(f: BinaryIO, path: str) -> bytes:
    """The key in an open key file (the daemon opens and checks it first): its first
    4096 bytes, nothing stripped; an empty file is an error."""
    try:
        key = f.read(KEY_MAX_BYTES)
    except OSError as e:
        raise KeyFileError(f"cannot read key file {path}: {e.strerror}") from e
    if not key:
        raise KeyFileError(f"key file {path} is empty; create one with: guestfence keygen {path}")
    return key


# --------------------------------------------------------------------------------------
# The 176-byte request block


REQUEST_FORMAT = struct.Struct("<BBBB64s28sH6sII64s")
REQUEST_SIZE = REQUEST_FORMAT.size  # 176
HASH_OFFSET = REQUEST_SIZE - DIGEST_FIELD  # 112: where the digest field starts
assert REQUEST_SIZE == 176

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def encode_domain(domain: str) -> bytes:
    raw = domain.encode("utf-8")
    if len(raw) > DOMAIN_MAX:
        raise ValueError(f"domain name is {len(raw)} bytes; at most {DOMAIN_MAX} fit in a request")
    return raw


def decode_c_string(field: bytes, what: str) -> str:
    """A NUL-terminated string inside a fixed field; bytes after the NUL are ignored."""
    end = field.find(b"\0")
    if end < 0:
        raise ProtocolError(f"{what} field is not NUL-terminated")
    try:
        return field[:end].decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(f"{what} field is not valid UTF-8") from e


class FenceRequest(Record):
    """A decoded request block. ``address``/``port`` are the multicast call-back target.

    A Record rather than a dataclass: the agents import this module on every
    run, and importing ``dataclasses`` costs more than 10 ms of start-up.
    """

    __slots__ = ("address", "domain", "flags", "hash_type", "op", "port", "random", "seqno")
    op: int
    domain: str
    hash_type: HashType
    flags: int
    address: IPAddress | None
    port: int
    seqno: int
    random: bytes

    def __init__(
        self,
        op: int,
        domain: str = "",
        hash_type: HashType = HashType.SHA256,
        flags: int = 0,
        address: IPAddress | None = None,
        port: int = 0,
        seqno: int = 0,
        random: bytes = bytes(6),
    ) -> None:
        self._set(op=op, domain=domain, hash_type=hash_type, flags=flags, address=address,
                  port=port, seqno=seqno, random=random)

    @property
    def family(self) -> int:
        if self.address is None:
            return 0
        return AF_INET_WIRE if self.address.version == 4 else AF_INET6_WIRE

    def op_name(self) -> str:
        try:
            return Op(self.op).name.lower()
        except ValueError:
            return f"op{self.op}"

    def _unsigned_block(self) -> bytes:
        if self.address is None:
            addr, addrlen = b"", 0
        else:
            addr = self.address.packed
            addrlen = len(addr)
        return REQUEST_FORMAT.pack(
            self.op,
            self.hash_type,
            addrlen,
            self.flags,
            encode_domain(self.domain),
            addr,
            self.port,
            self.random,
            self.seqno,
            self.family,
            b"",
        )

    def sign(self, key: bytes) -> bytes:
        """The 176 bytes on the wire, signed with ``key`` (unsigned when hash_type is NONE)."""
        block = self._unsigned_block()
        return block[:HASH_OFFSET] + digest_field(self.hash_type, key, block)

    def with_fresh_random(self, rng: Callable[[int], bytes] = os.urandom) -> FenceRequest:
        return self._replace(random=rng(6))


def parse_request(block: bytes) -> FenceRequest:
    """Decode a request block without checking its signature."""
    if len(block) != REQUEST_SIZE:
        raise ProtocolError(f"request is {len(block)} bytes; expected {REQUEST_SIZE}")
    (op, htype, _addrlen, flags, domain, addr, port, rnd, seqno, family, _digest) = (
        REQUEST_FORMAT.unpack(block)
    )
    try:
        hash_type = HashType(htype)
    except ValueError:
        raise ProtocolError(f"unknown hash type {htype}") from None
    address: IPAddress | None
    if family == AF_INET_WIRE:
        address = ipaddress.IPv4Address(addr[:4])
    elif family == AF_INET6_WIRE:
        address = ipaddress.IPv6Address(addr[:16])
    elif family == 0:
        address = None
    else:
        raise ProtocolError(f"unknown address family {family}")
    return FenceRequest(
        op=op,
        domain=decode_c_string(domain, "domain"),
        hash_type=hash_type,
        flags=flags,
        address=address,
        port=port,
        seqno=seqno,
        random=rnd,
    )


def parse_signed_request(block: bytes, minimum: HashType) -> FenceRequest:
    """Decode a request, refusing one signed with a weaker algorithm than ``minimum``
    (as the C daemon does); the signature itself is not checked here."""
    request = parse_request(block)
    if request.hash_type < minimum:
        raise AuthError(
            f"request signed with {request.hash_type.label}, weaker than the required "
            f"{minimum.label}"
        )
    return request


def unsigned_block(block: bytes) -> bytes:
    """A request block as it was signed: its digest field zeroed."""
    return block[:HASH_OFFSET] + _NO_DIGEST


_NO_DIGEST = bytes(DIGEST_FIELD)


def verify_request(block: bytes, key: bytes, minimum: HashType) -> FenceRequest:
    """Decode and authenticate a request as the daemon must.

    A request signed with a weaker algorithm than ``minimum`` is refused, as the C
    daemon does; the comparison is constant-time (the C daemon uses memcmp).
    """
    request = parse_signed_request(block, minimum)
    if request.hash_type is HashType.NONE:
        return request
    if not key:
        raise AuthError("signed request but no key is loaded")
    expected = digest_field(request.hash_type, key, unsigned_block(block))
    if not hmac.compare_digest(expected, block[HASH_OFFSET:]):
        raise AuthError("request signature does not match the key")
    return request


# --------------------------------------------------------------------------------------
# Host list records (130 bytes each, 130 zero bytes end the list)

HOST_RECORD_FORMAT = struct.Struct("<64s64sBB")
HOST_RECORD_SIZE = HOST_RECORD_FORMAT.size  # 130
HOST_LIST_END = bytes(HOST_RECORD_SIZE)
VIR_DOMAIN_RUNNING = 1
VIR_DOMAIN_SHUTOFF = 5


class HostRecord(Record):
    __slots__ = ("name", "state", "uuid")
    name: str
    uuid: str
    state: int  # raw libvirt virDomainState

    def __init__(self, name: str, uuid: str, state: int) -> None:
        self._set(name=name, uuid=uuid, state=state)

    @property
    def is_on(self) -> bool:
        return self.state == VIR_DOMAIN_RUNNING

    def pack(self) -> bytes:
        # Unlike the C daemon we zero the whole record (it leaks stack bytes here).
        return HOST_RECORD_FORMAT.pack(
            encode_domain(self.name), self.uuid.encode("ascii")[:DOMAIN_MAX], self.state & 0xFF, 0
        )


def parse_host_record(raw: bytes) -> HostRecord | None:
    """One record, or None for the terminator. Tolerates the C daemon's garbage bytes."""
    name_field, uuid_field, state, _pad = HOST_RECORD_FORMAT.unpack(raw)
    if name_field[:1] == b"\0" and uuid_field[:1] == b"\0":
        return None
    # The C daemon does not guarantee a NUL in byte 63: cut at 63 first.
    name = decode_c_string(name_field[:DOMAIN_MAX] + b"\0", "host record name")
    uuid = decode_c_string(uuid_field[:DOMAIN_MAX] + b"\0", "host record uuid")
    return HostRecord(name, uuid, state)


# --------------------------------------------------------------------------------------
# Serial / VM-channel framing: 74-byte request, 5-byte response, no cryptography

SERIAL_MAGIC = 0x61626261  # b"abba" in either byte order
SERIAL_MAGIC_BYTES = b"abba"
SERIAL_REQUEST_FORMAT = struct.Struct("<IBB64sI")
SERIAL_REQUEST_SIZE = SERIAL_REQUEST_FORMAT.size  # 74
SERIAL_RESPONSE_SIZE = 5


class SerialRequest(Record):
    __slots__ = ("domain", "flags", "op", "seqno")
    op: int
    domain: str
    seqno: int
    flags: int

    def __init__(self, op: int, domain: str, seqno: int, flags: int = 0) -> None:
        self._set(op=op, domain=domain, seqno=seqno, flags=flags)

    def pack(self) -> bytes:
        return SERIAL_REQUEST_FORMAT.pack(
            SERIAL_MAGIC, self.op, self.flags, encode_domain(self.domain), self.seqno
        )


def parse_serial_request(raw: bytes) -> SerialRequest:
    if len(raw) != SERIAL_REQUEST_SIZE:
        raise ProtocolError(f"serial request is {len(raw)} bytes; expected {SERIAL_REQUEST_SIZE}")
    magic, op, flags, domain, seqno = SERIAL_REQUEST_FORMAT.unpack(raw)
    # The C host does not check the magic; we do, since a wrong one means lost framing.
    if magic != SERIAL_MAGIC:
        raise ProtocolError(f"serial request magic is {magic:#010x}; expected {SERIAL_MAGIC:#010x}")
    return SerialRequest(op=op, domain=decode_c_string(domain, "domain"), seqno=seqno, flags=flags)


def pack_serial_response(code: int) -> bytes:
    return SERIAL_MAGIC_BYTES + bytes([code & 0xFF])


def find_serial_response(buffer: bytes) -> tuple[int | None, int]:
    """Scan for magic + result byte. Returns (result or None, bytes consumed)."""
    at = buffer.find(SERIAL_MAGIC_BYTES)
    if at < 0:
        # keep up to 3 trailing bytes that may be the start of the magic
        keep = next(
            (n for n in (3, 2, 1) if buffer.endswith(SERIAL_MAGIC_BYTES[:n])), 0
        )
        return None, len(buffer) - keep
    if at + SERIAL_RESPONSE_SIZE > len(buffer):
        return None, at
    return buffer[at + 4], at + SERIAL_RESPONSE_SIZE
