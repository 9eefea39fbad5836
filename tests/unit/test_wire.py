"""The wire format against the spec's test vectors, plus round-trip and rejection properties."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guestfence.errors import AuthError, ProtocolError
from guestfence.virt import wire
from guestfence.virt.wire import FenceRequest, HashType, Op

KEY = bytes(range(32))
VECTOR_DIGEST = "7674f9f705cc8016b3e356bafdb30207bd601ecc021c90f78c0205a190d55dad"


def vector_request() -> FenceRequest:
    return FenceRequest(
        op=Op.REBOOT,
        domain="guest1",
        hash_type=HashType.SHA256,
        address=ipaddress.IPv4Address("192.168.122.10"),
        port=1229,
        seqno=123456,
        random=bytes([1, 2, 3, 4, 5, 6]),
    )


def test_spec_vector_block_is_byte_exact() -> None:
    expected = bytes.fromhex(
        "02020400" + b"guest1".hex() + "00" * 58 + "c0a87a0a" + "00" * 24 + "cd04"
        + "010203040506" + "40e20100" + "02000000" + VECTOR_DIGEST + "00" * 32
    )
    assert len(expected) == 176
    assert vector_request().sign(KEY) == expected


def test_spec_vector_challenge_answer() -> None:
    answer = wire.digest_field(HashType.SHA256, KEY, bytes(range(64)))
    assert answer.hex() == (
        "a0acb2b50f1784f5f836fdc284176a0c3cee530201426396f9c351eaadb5d65d" + "00" * 32
    )


def test_verify_accepts_vector_and_decodes_fields() -> None:
    req = wire.verify_request(vector_request().sign(KEY), KEY, HashType.SHA256)
    assert req == vector_request()
    assert req.family == wire.AF_INET_WIRE


@pytest.mark.parametrize("configured", list(HashType))
@pytest.mark.parametrize("used", list(HashType))
def test_minimum_hash_rule(configured: HashType, used: HashType) -> None:
    block = FenceRequest(op=Op.STATUS, domain="vm", hash_type=used).sign(KEY)
    if used < configured:
        with pytest.raises(AuthError, match="weaker"):
            wire.verify_request(block, KEY, configured)
    else:
        assert wire.verify_request(block, KEY, configured).hash_type is used


def test_wrong_key_rejected() -> None:
    block = vector_request().sign(KEY)
    with pytest.raises(AuthError, match="does not match"):
        wire.verify_request(block, KEY + b"x", HashType.SHA256)


def test_signed_request_without_key_rejected() -> None:
    with pytest.raises(AuthError, match="no key"):
        wire.verify_request(vector_request().sign(KEY), b"", HashType.NONE)


def test_ipv6_address_round_trip() -> None:
    req = FenceRequest(op=Op.OFF, domain="x", address=ipaddress.IPv6Address("fd00::5"), port=9)
    back = wire.parse_request(req.sign(KEY))
    assert back.address == ipaddress.IPv6Address("fd00::5")
    assert back.family == wire.AF_INET6_WIRE


def test_domain_too_long_refused_at_build() -> None:
    with pytest.raises(ValueError, match="at most 63"):
        FenceRequest(op=Op.OFF, domain="a" * 64).sign(KEY)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:-1], "175 bytes"),
        (lambda b: b + b"\0", "177 bytes"),
        (lambda b: b[:1] + b"\x07" + b[2:], "unknown hash type 7"),
        (lambda b: b[:4] + b"x" * 64 + b[68:], "not NUL-terminated"),
        (lambda b: b[:4] + b"\xff\xfe\0" + b[7:], "UTF-8"),
        (lambda b: b[:108] + b"\x05\0\0\0" + b[112:], "address family 5"),
    ],
)
def test_malformed_blocks_are_protocol_errors(mutate, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ProtocolError, match=message):
        wire.parse_request(mutate(vector_request().sign(KEY)))


domains = st.text(
    alphabet=st.characters(min_codepoint=1, max_codepoint=0x2FFF, exclude_categories=("Cs",)),
    max_size=20,
)
requests = st.builds(
    FenceRequest,
    op=st.sampled_from(list(Op)),
    domain=domains,
    hash_type=st.sampled_from(list(HashType)),
    flags=st.integers(0, 255),
    address=st.one_of(
        st.none(), st.ip_addresses(v=4), st.ip_addresses(v=6)
    ),
    port=st.integers(0, 65535),
    seqno=st.integers(0, 2**32 - 1),
    random=st.binary(min_size=6, max_size=6),
)


@given(requests, st.binary(min_size=1, max_size=5000))
def test_round_trip(req: FenceRequest, key: bytes) -> None:
    block = req.sign(key)
    assert len(block) == wire.REQUEST_SIZE
    assert wire.verify_request(block, key, HashType.NONE) == req


@given(
    requests.filter(lambda r: r.hash_type is not HashType.NONE),
    st.binary(min_size=1, max_size=64),
    st.integers(0, 175),
    st.integers(1, 255),
)
def test_every_single_byte_change_is_rejected(
    req: FenceRequest, key: bytes, offset: int, xor: int
) -> None:
    block = bytearray(req.sign(key))
    block[offset] ^= xor
    with pytest.raises((AuthError, ProtocolError)):
        wire.verify_request(bytes(block), key, HashType.SHA1)


@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_crash_the_parser(data: bytes) -> None:
    try:
        wire.verify_request(data, KEY, HashType.SHA256)
    except (AuthError, ProtocolError):
        pass
    else:
        raise AssertionError("random bytes verified")


def test_host_record_round_trip_and_terminator() -> None:
    rec = wire.HostRecord("guest1", "11111111-1111-1111-1111-000000000001", 1)
    raw = rec.pack()
    assert len(raw) == 130
    assert wire.parse_host_record(raw) == rec
    assert wire.parse_host_record(wire.HOST_LIST_END) is None


def test_host_record_tolerates_c_garbage_in_last_byte_and_pad() -> None:
    raw = bytearray(wire.HostRecord("g", "u", 5).pack())
    raw[63] = 0x41
    raw[127] = 0x42
    raw[129] = 0x99
    assert wire.parse_host_record(bytes(raw)) == wire.HostRecord("g", "u", 5)


def test_serial_request_layout() -> None:
    raw = wire.SerialRequest(op=Op.STATUS, domain="guest1", seqno=7).pack()
    assert len(raw) == 74
    assert raw[:4] == b"abba"
    assert raw[4] == 4
    assert raw[70:] == (7).to_bytes(4, "little")
    assert wire.parse_serial_request(raw) == wire.SerialRequest(Op.STATUS, "guest1", 7)


def test_serial_request_bad_magic() -> None:
    raw = b"xxxx" + wire.SerialRequest(op=1, domain="a", seqno=1).pack()[4:]
    with pytest.raises(ProtocolError, match="magic"):
        wire.parse_serial_request(raw)


@given(st.binary(max_size=20), st.integers(0, 255), st.binary(max_size=5))
def test_serial_response_found_after_noise(noise: bytes, code: int, tail: bytes) -> None:
    noise = noise.replace(b"abba", b"")
    buf = noise + wire.pack_serial_response(code) + tail
    # feed in two pieces to exercise the partial-magic carry-over
    cut = len(noise) + 2
    result, used = wire.find_serial_response(buf[:cut])
    if result is None:
        result, more = wire.find_serial_response(buf[used:])
        used += more
    assert result == code


def test_hash_names() -> None:
    assert HashType.from_name("SHA512") is HashType.SHA512
    with pytest.raises(ValueError, match="expected none, sha1"):
        HashType.from_name("md5")


def test_read_key_takes_first_4096_bytes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "k"
    p.write_bytes(b"\n" * 5000)
    assert wire.read_key(str(p)) == b"\n" * 4096
