"""target/login.py: the target side of login, driven with hand-built Login Requests."""

from __future__ import annotations

import pytest

from guestfence.target.login import (
    AUTH_FAILED,
    INITIATOR_ERROR,
    MISSING_PARAMETER,
    NOT_FOUND,
    LoginConfig,
    LoginMachine,
    SessionParams,
    chap_response,
)
from guestfence.target.pdu import Op, Pdu, build_text, parse_text

IQN = "iqn.2026-11.org.guestfence.test:disk"
INITIATOR = "iqn.2026-11.org.guestfence.test:node1"
ISID = bytes([0x80, 1, 2, 3, 0, 0])


def req(pairs: list[tuple[str, str]], csg: int, nsg: int = 0, *, transit: bool = False,
        cont: bool = False, tsih: int = 0) -> Pdu:
    flags = (0x80 if transit else 0) | (0x40 if cont else 0) | (csg << 2) | nsg
    p = Pdu.new(Op.LOGIN, flags, data=build_text(pairs), itt=5, immediate=True)
    p.bhs[8:14] = ISID
    p.set_half(14, tsih)
    return p


def status(rsp: Pdu) -> int:
    return (rsp.bhs[36] << 8) | rsp.bhs[37]


def answer(rsp: Pdu) -> dict[str, str]:
    return dict(parse_text(rsp.data))


LEADING = [("InitiatorName", INITIATOR), ("TargetName", IQN), ("SessionType", "Normal")]


def machine(**kw: object) -> tuple[LoginMachine, list[SessionParams]]:
    done: list[SessionParams] = []

    def complete(p: SessionParams) -> None:
        p.tsih = 42
        done.append(p)

    return LoginMachine(LoginConfig(IQN, **kw), on_complete=complete), done  # type: ignore[arg-type]


def test_no_auth_then_operational_then_full_feature() -> None:
    m, done = machine()
    r = m.handle(req([*LEADING, ("AuthMethod", "None")], 0, 1, transit=True))
    assert status(r) == 0 and r.flags & 0x80 and r.flags & 3 == 1
    a = answer(r)
    assert a["AuthMethod"] == "None" and a["TargetPortalGroupTag"] == "1"
    assert r.bhs[8:14] == ISID and r.itt == 5
    r = m.handle(req([("HeaderDigest", "CRC32C,None"), ("DataDigest", "None"),
                      ("MaxRecvDataSegmentLength", "8192"), ("MaxBurstLength", "16776192"),
                      ("FirstBurstLength", "262144"), ("InitialR2T", "No"),
                      ("ImmediateData", "Yes"), ("MaxOutstandingR2T", "4"),
                      ("ErrorRecoveryLevel", "2"), ("DefaultTime2Wait", "0"),
                      ("X-com.example.key", "1"), ("IFMarker", "No")], 1, 3, transit=True))
    assert status(r) == 0 and m.done and done
    assert r.half(14) == 42
    a = answer(r)
    assert a["HeaderDigest"] == "CRC32C" and a["DataDigest"] == "None"
    assert a["MaxBurstLength"] == "1048576" and a["ErrorRecoveryLevel"] == "0"
    assert a["InitialR2T"] == "No" and a["ImmediateData"] == "Yes"
    assert a["X-com.example.key"] == "NotUnderstood" and a["IFMarker"] == "No"
    assert a["DefaultTime2Wait"] == "2" and "MaxRecvDataSegmentLength" in a
    p = m.params
    assert p.header_digest and not p.data_digest
    assert p.max_send_data_segment_length == 8192 and p.max_outstanding_r2t == 4
    assert p.initiator_name == INITIATOR and p.isid == ISID and not p.initial_r2t


def test_defaults_when_operational_stage_is_skipped() -> None:
    m, _ = machine()
    r = m.handle(req([*LEADING, ("AuthMethod", "None")], 0, 3, transit=True))
    assert status(r) == 0 and m.done
    assert m.params.initial_r2t and m.params.max_send_data_segment_length == 8192


def test_prefers_none_when_listed_first_and_rejects_garbage_values() -> None:
    m, _ = machine()
    r = m.handle(req([*LEADING, ("HeaderDigest", "None,CRC32C"), ("MaxBurstLength", "12"),
                      ("InitialR2T", "Maybe")], 1, 3, transit=True))
    a = answer(r)
    assert a["HeaderDigest"] == "None"
    assert a["MaxBurstLength"] == "Reject" and a["InitialR2T"] == "Reject"


@pytest.mark.parametrize(("pairs", "expected"), [
    ([("TargetName", IQN)], MISSING_PARAMETER),
    ([("InitiatorName", INITIATOR)], MISSING_PARAMETER),
    ([("InitiatorName", INITIATOR), ("TargetName", "iqn.2026-11.org.nope:x")], NOT_FOUND),
    ([*LEADING, ("MaxBurstLength", "1"), ("MaxBurstLength", "2")], INITIATOR_ERROR),
    ([*LEADING, ("TargetAlias", "x")], INITIATOR_ERROR),
])
def test_login_errors(pairs: list[tuple[str, str]], expected: int) -> None:
    m, done = machine()
    r = m.handle(req(pairs, 1, 3, transit=True))
    assert status(r) == expected and m.failed and not done
    assert r.opcode == Op.LOGIN_RSP


def test_bad_stage_transitions() -> None:
    m, _ = machine()
    assert status(m.handle(req(LEADING, 1, 1, transit=True))) == INITIATOR_ERROR
    m, _ = machine()
    assert status(m.handle(req(LEADING, 3, 3, transit=True))) == INITIATOR_ERROR


def test_discovery_session() -> None:
    m, _ = machine()
    r = m.handle(req([("InitiatorName", INITIATOR), ("SessionType", "Discovery"),
                      ("AuthMethod", "None")], 0, 1, transit=True))
    assert status(r) == 0
    r = m.handle(req([("MaxBurstLength", "4096"), ("HeaderDigest", "None")], 1, 3, transit=True))
    assert answer(r)["MaxBurstLength"] == "Irrelevant" and m.done and m.params.discovery


def test_text_continuation() -> None:
    m, _ = machine()
    text = build_text([*LEADING, ("AuthMethod", "None")])
    r = m.handle(Pdu(req([], 0, 0, cont=True).bhs, data=text[:20]))
    assert status(r) == 0 and not r.data and not r.flags & 0x80
    p = req([], 0, 1, transit=True)
    p.data = text[20:]
    r = m.handle(p)
    assert answer(r)["AuthMethod"] == "None" and r.flags & 0x80


def _chap_login(secret: str, user: str = "alice", *,
                mutual: tuple[str, str] | None = None) -> tuple[LoginMachine, Pdu]:
    m, _ = machine(chap=("alice", "s3cret-s3cret"), mutual_chap=mutual)
    r = m.handle(req([*LEADING, ("AuthMethod", "CHAP,None")], 0, 1, transit=True))
    assert answer(r)["AuthMethod"] == "CHAP" and not r.flags & 0x80
    r = m.handle(req([("CHAP_A", "7,5")], 0, 1, transit=True))
    a = answer(r)
    assert a["CHAP_A"] == "5" and not r.flags & 0x80
    ident, challenge = int(a["CHAP_I"]), bytes.fromhex(a["CHAP_C"][2:])
    resp = chap_response(ident, secret.encode(), challenge)
    pairs = [("CHAP_N", user), ("CHAP_R", "0x" + resp.hex())]
    if mutual:
        pairs += [("CHAP_I", "9"), ("CHAP_C", "0x" + bytes(range(16)).hex())]
    return m, m.handle(req(pairs, 0, 1, transit=True))


def test_chap_right_and_wrong() -> None:
    m, r = _chap_login("s3cret-s3cret")
    assert status(r) == 0 and r.flags & 0x80 and r.flags & 3 == 1
    assert status(m.handle(req([], 1, 3, transit=True))) == 0 and m.done
    for secret, user in (("wrong", "alice"), ("s3cret-s3cret", "bob")):
        m, r = _chap_login(secret, user)
        assert status(r) == AUTH_FAILED and m.failed


def test_mutual_chap() -> None:
    _, r = _chap_login("s3cret-s3cret", mutual=("target", "t-secret-123"))
    a = answer(r)
    assert status(r) == 0 and a["CHAP_N"] == "target"
    assert bytes.fromhex(a["CHAP_R"][2:]) == chap_response(9, b"t-secret-123", bytes(range(16)))


def test_chap_required() -> None:
    m, _ = machine(chap=("alice", "s3cret-s3cret"))
    assert status(m.handle(req([*LEADING, ("AuthMethod", "None")], 0, 1,
                               transit=True))) == AUTH_FAILED
    m, _ = machine(chap=("alice", "s3cret-s3cret"))
    assert status(m.handle(req(LEADING, 1, 3, transit=True))) == AUTH_FAILED
