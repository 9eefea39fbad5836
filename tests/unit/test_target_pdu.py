"""target/pdu.py: framing, digests, text, builders; garbage only raises ProtocolError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestfence.target.pdu import (
    BHS_LEN,
    Op,
    Pdu,
    PduReader,
    ProtocolError,
    build_text,
    crc32c,
    data_in,
    decode_lun,
    encode_lun,
    parse_text,
    r2t,
    scsi_response,
)


def _cmd(data: bytes = b"", itt: int = 7) -> Pdu:
    p = Pdu.new(Op.SCSI_CMD, 0x80 | 0x20, data=data, itt=itt)
    p.lun_raw = encode_lun(1)
    p.set_word(20, len(data))
    p.bhs[32] = 0x2A
    return p


def test_crc32c_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # RFC 3720 B.4 / the standard check value
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4 test vector


def test_encode_pads_and_sets_lengths() -> None:
    raw = _cmd(b"abcde").encode()
    assert len(raw) == BHS_LEN + 8
    assert raw[4] == 0 and int.from_bytes(raw[5:8], "big") == 5
    assert raw[BHS_LEN:] == b"abcde\0\0\0"


@pytest.mark.parametrize("digests", [(False, False), (True, False), (True, True), (False, True)])
def test_round_trip_byte_by_byte(digests: tuple[bool, bool]) -> None:
    hd, dd = digests
    pdus = [_cmd(b"x" * n, itt=n) for n in (0, 1, 4, 511)]
    stream = b"".join(p.encode(header_digest=hd, data_digest=dd) for p in pdus)
    reader = PduReader()
    reader.header_digest, reader.data_digest = hd, dd
    got: list[Pdu] = []
    for i in range(len(stream)):
        got += reader.feed(stream[i:i + 1])
    assert [(p.itt, p.data, p.opcode, p.lun) for p in got] == [
        (p.itt, p.data, Op.SCSI_CMD, 1) for p in pdus]
    assert reader.pending == 0


def test_header_digest_is_little_endian_crc_of_header() -> None:
    raw = _cmd().encode(header_digest=True)
    assert raw[BHS_LEN:] == crc32c(raw[:BHS_LEN]).to_bytes(4, "little")


def test_digest_mismatch_is_a_protocol_error() -> None:
    raw = bytearray(_cmd(b"data").encode(header_digest=True, data_digest=True))
    raw[-1] ^= 1
    reader = PduReader()
    reader.header_digest = reader.data_digest = True
    with pytest.raises(ProtocolError, match="data digest"):
        reader.feed(bytes(raw))
    raw = bytearray(_cmd().encode(header_digest=True))
    raw[3] ^= 1
    reader = PduReader()
    reader.header_digest = True
    with pytest.raises(ProtocolError, match="header digest"):
        reader.feed(bytes(raw))


def test_rejects_target_opcodes_and_oversized_segments() -> None:
    with pytest.raises(ProtocolError, match="opcode"):
        PduReader().feed(bytes([Op.SCSI_RSP]) + bytes(47))
    big = _cmd(b"y" * 1000).encode()
    with pytest.raises(ProtocolError, match="exceeds"):
        PduReader(max_data=512).feed(big)


def test_ahs_is_kept() -> None:
    p = _cmd()
    p.ahs = struct.pack(">HBB", 5, 1, 0) + bytes(range(4)) + bytes(4)  # extended CDB
    got = PduReader().feed(p.encode())
    assert got[0].ahs == p.ahs


def test_lun_encoding() -> None:
    for lun in (0, 1, 255, 256, 0x3FFF):
        assert decode_lun(encode_lun(lun)) == lun
    assert decode_lun(bytes([0xC1]) + bytes(7)) == -1


def test_text() -> None:
    pairs = [("InitiatorName", "iqn.x"), ("MaxBurstLength", "262144"), ("X", "")]
    assert parse_text(build_text(pairs)) == pairs
    assert parse_text(b"A=1\0\0B=2\0") == [("A", "1"), ("B", "2")]
    with pytest.raises(ProtocolError):
        parse_text(b"novalue\0")
    with pytest.raises(ProtocolError):
        parse_text(b"A=\xff\xfe\0")


def test_builders() -> None:
    rsp = scsi_response(9, 0x02, sense=b"\x70" + bytes(17), underflow=100)
    assert rsp.opcode == Op.SCSI_RSP and rsp.bhs[3] == 0x02
    assert rsp.flags & 0x02 and rsp.word(44) == 100
    assert rsp.data[:2] == b"\x00\x12"
    d = data_in(3, encode_lun(1), b"abc", offset=512, datasn=2, final=True, status=0, overflow=5)
    assert d.flags == 0x80 | 0x01 | 0x04 and d.word(40) == 512 and d.word(36) == 2
    assert d.word(44) == 5
    t = r2t(3, encode_lun(1), ttt=77, r2tsn=1, offset=1024, length=4096)
    assert (t.word(20), t.word(36), t.word(40), t.word(44)) == (77, 1, 1024, 4096)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.booleans(), st.booleans())
def test_garbage_only_raises_protocol_error(data: bytes, hd: bool, dd: bool) -> None:
    reader = PduReader(max_data=256)
    reader.header_digest, reader.data_digest = hd, dd
    try:
        for i in range(0, len(data), 37):
            reader.feed(data[i:i + 37])
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 47), st.integers(0, 255)), max_size=6))
def test_mutated_headers_only_raise_protocol_error(mutations: list[tuple[int, int]]) -> None:
    raw = bytearray(_cmd(b"payload").encode())
    for pos, value in mutations:
        raw[pos] = value
    try:
        for p in PduReader(max_data=4096).feed(bytes(raw) + bytes(64)):
            _ = (p.opcode, p.lun, p.itt, p.cmdsn, p.data)
    except ProtocolError:
        pass
