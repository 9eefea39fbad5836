"""The host-cluster message format: versioned, strict, never crashes on garbage."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guestfence.errors import ProtocolError
from guestfence.tracking import cpgwire
from guestfence.tracking.locations import DomainState, Kind, Migration

U1 = "6f1c1e0a-2b4d-4c1e-9f00-000000000001"


def test_round_trip_of_both_message_types() -> None:
    ann = cpgwire.Announcement("host1", 7, (DomainState("g1", U1, 1),
                                            DomainState("g2", U1.replace("1", "2", 1), 3,
                                                        Migration.OUT)))
    assert cpgwire.decode(cpgwire.encode(ann)) == ann
    ev = cpgwire.LifecycleEvent("host2", 8, U1, "g1", Kind.RESUMED, "MIGRATED")
    data = cpgwire.encode(ev)
    assert data[:4] == b"gf\x01\x02"
    assert cpgwire.decode(data) == ev


def _body(kind: int, body: object) -> bytes:
    return cpgwire.HEADER.pack(b"gf", 1, kind) + json.dumps(body).encode()


@pytest.mark.parametrize(("data", "why"), [
    (b"", "shorter than the header"),
    (b"xx\x01\x01{}", "magic"),
    (b"gf\x02\x01{}", "version 2"),
    (b"gf\x01\x09{\"host\":\"h\",\"seq\":1}", "unknown message type"),
    (b"gf\x01\x01\xff", "not UTF-8 JSON"),
    (_body(1, []), "not a JSON object"),
    (_body(1, {"host": "", "seq": 1, "domains": []}), "'host'"),
    (_body(1, {"host": "h", "seq": -1, "domains": []}), "'seq'"),
    (_body(1, {"host": "h", "seq": True, "domains": []}), "'seq'"),
    (_body(1, {"host": "h", "seq": 1, "domains": {}}), "'domains'"),
    (_body(1, {"host": "h", "seq": 1, "domains": [["g", U1, 1]]}), "domain 0"),
    (_body(1, {"host": "h", "seq": 1, "domains": [["g", "nope", 1, None]]}), "not a UUID"),
    (_body(1, {"host": "h", "seq": 1, "domains": [["g", U1, 9, None]]}), "state"),
    (_body(1, {"host": "h", "seq": 1, "domains": [["g", U1, 1, "sideways"]]}), "migration"),
    (_body(1, {"host": "h", "seq": 1, "domains": [["g", U1, 1, []]]}), "migration"),
    (_body(2, {"host": "h", "seq": 1, "uuid": U1, "name": "g", "kind": "EXPLODED",
               "detail": "X"}), "kind"),
])
def test_malformed_messages_are_rejected_with_a_reason(data: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        cpgwire.decode(data)


@given(st.binary(max_size=200))
def test_garbage_raises_only_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        cpgwire.decode(data)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.sampled_from(["host", "seq", "domains", "uuid",
                                                       "name", "kind", "detail"]), inner,
                                      max_size=7), max_leaves=20),
       st.sampled_from([1, 2]))
def test_any_json_raises_only_protocol_errors(body: object, kind: int) -> None:
    with contextlib.suppress(ProtocolError):
        cpgwire.decode(_body(kind, body))
