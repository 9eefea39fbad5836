"""The messages guestfenced hosts exchange in their CPG group (host-cluster mode).

Our own format, not the C cpg backend's (that one is a host-order struct with
65-byte names and no version): a 4-byte header ``b"gf"``, version, type,
then compact UTF-8 JSON. A receiver rejects anything it does not fully
understand with :class:`~guestfence.errors.ProtocolError`; it never guesses.

``ANNOUNCE``
    a host's full list of domains (name, UUID, libvirt state, migration role),
    sent at join, on every membership change and after every local lifecycle event.
``EVENT``
    one libvirt lifecycle event on the sending host, sent as soon as libvirt
    reports it, so that ownership moves without waiting for a fresh listing.

Both carry the sender's host name and a sequence number that grows by one per
message of that process; CPG delivers a process's messages in order, and the
location table ignores a number it has already seen.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from guestfence.errors import ProtocolError
from guestfence.tracking.locations import DomainState, Kind, Migration, canonical_uuid

MAGIC = b"gf"
VERSION = 1
HEADER = struct.Struct("!2sBB")  # magic, version, type
TYPE_ANNOUNCE = 1
TYPE_EVENT = 2

MAX_NAME = 256  # libvirt allows longer domain names in theory; none in practice
MAX_HOST = 255
MAX_DOMAINS = 20000
MAX_MESSAGE = 1 << 20  # corosync's max atomic message is 1 047 552 bytes


@dataclass(frozen=True)
class Announcement:
    host: str
    seq: int
    domains: tuple[DomainState, ...]


@dataclass(frozen=True)
class LifecycleEvent:
    host: str
    seq: int
    uuid: str
    name: str
    kind: Kind
    detail: str


Message = Announcement | LifecycleEvent


def encode(message: Message) -> bytes:
    body: dict[str, Any]
    if isinstance(message, Announcement):
        kind = TYPE_ANNOUNCE
        body = {"host": message.host, "seq": message.seq,
                "domains": [[d.name, d.uuid, d.state,
                             d.migrating.value if d.migrating else None]
                            for d in message.domains]}
    else:
        kind = TYPE_EVENT
        body = {"host": message.host, "seq": message.seq, "uuid": message.uuid,
                "name": message.name, "kind": message.kind.value, "detail": message.detail}
    data = HEADER.pack(MAGIC, VERSION, kind) + json.dumps(
        body, separators=(",", ":"), ensure_ascii=False).encode()
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"message of {len(data)} bytes is over {MAX_MESSAGE}")
    return data


def decode(data: bytes) -> Message:
    """The message in ``data``; ProtocolError saying what is wrong otherwise."""
    if len(data) < HEADER.size:
        raise ProtocolError(f"{len(data)} bytes is shorter than the header")
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"{len(data)} bytes is over {MAX_MESSAGE}")
    magic, version, kind = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ProtocolError(f"not a guestfence message (magic {magic!r})")
    if version != VERSION:
        raise ProtocolError(f"message version {version}, this guestfenced speaks {VERSION}")
    try:
        body = json.loads(data[HEADER.size:].decode())
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"body is not UTF-8 JSON: {e}") from e
    if not isinstance(body, dict):
        raise ProtocolError("body is not a JSON object")
    host = _text(body, "host", MAX_HOST)
    seq = body.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 1 << 63:
        raise ProtocolError("'seq' is not a non-negative integer")
    if kind == TYPE_ANNOUNCE:
        return Announcement(host, seq, _domains(body.get("domains")))
    if kind == TYPE_EVENT:
        try:
            event_kind = Kind(_text(body, "kind", 32))
        except ValueError as e:
            raise ProtocolError(f"unknown lifecycle event kind {body.get('kind')!r}") from e
        return LifecycleEvent(host, seq, _uuid(body.get("uuid")), _text(body, "name", MAX_NAME),
                              event_kind, _text(body, "detail", 32))
    raise ProtocolError(f"unknown message type {kind}")


def _text(body: dict[str, Any], key: str, limit: int) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise ProtocolError(f"{key!r} is not a string of 1..{limit} characters")
    return value


def _uuid(value: object) -> str:
    canonical = canonical_uuid(value) if isinstance(value, str) else None
    if canonical is None:
        raise ProtocolError(f"{value!r} is not a UUID")
    return canonical


def _domains(value: object) -> tuple[DomainState, ...]:
    if not isinstance(value, list) or len(value) > MAX_DOMAINS:
        raise ProtocolError(f"'domains' is not a list of at most {MAX_DOMAINS} entries")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, list) or len(item) != 4:
            raise ProtocolError(f"domain {i} is not [name, uuid, state, migration]")
        name, uuid, state, role = item
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
            raise ProtocolError(f"domain {i}: name is not a string of 1..{MAX_NAME} characters")
        if not isinstance(state, int) or isinstance(state, bool) or not 0 <= state <= 7:
            raise ProtocolError(f"domain {i}: state {state!r} is not a libvirt domain state")
        if role is not None and role not in ("in", "out"):
            raise ProtocolError(f"domain {i}: migration {role!r} is not null, 'in' or 'out'")
        out.append(DomainState(name, _uuid(uuid), state,
                               None if role is None else Migration(role)))
    return tuple(out)
