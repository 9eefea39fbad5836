"""The target side of the iSCSI login phase (RFC 7143 sections 6, 12 and 13), sans-I/O.

:class:`LoginMachine` takes Login Request PDUs one by one and answers each
with a Login Response PDU (without StatSN/ExpCmdSN/MaxCmdSN: the connection
numbers those).  When the initiator transits to the full feature phase the
machine is ``done`` and :attr:`LoginMachine.params` holds what was
negotiated; when the login fails the response carries the status class and
detail and the connection is to be closed after sending it.

Policy (the "responder" choices of section 13):
* AuthMethod: CHAP (MD5 only) when the target has a secret, otherwise None.
  A target with a secret never lets an initiator in without it.
* Digests: the first of the initiator's values we support, as the RFC asks;
  an initiator that lists "CRC32C,None" therefore gets CRC32C (pure-Python
  CRC costs CPU, but it is what was asked for).
* Numbers: the min/max/OR/AND functions of section 13 against our limits;
  a malformed or out-of-range value is answered with ``Reject``.
* Unknown keys are answered ``NotUnderstood``; RFC 3720's marker keys get
  the only answers we can give (No / Irrelevant), which old initiators expect.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from guestfence.target.pdu import Op, Pdu, ProtocolError, build_text, parse_text

SECURITY, OPERATIONAL, FULL_FEATURE = 0, 1, 3
CHAP_MD5 = 5

# Status class << 8 | detail (RFC 7143 11.13.5)
SUCCESS = 0x0000
INITIATOR_ERROR = 0x0200
AUTH_FAILED = 0x0201
AUTHZ_FAILED = 0x0202
NOT_FOUND = 0x0203
UNSUPPORTED_VERSION = 0x0205
MISSING_PARAMETER = 0x0207
SESSION_TYPE_UNSUPPORTED = 0x0209
SESSION_DOES_NOT_EXIST = 0x020A
INVALID_DURING_LOGIN = 0x020B
TARGET_ERROR = 0x0300
OUT_OF_RESOURCES = 0x0302

# key -> (low, high, combining function) for numeric keys
_NUMERIC: Final[dict[str, tuple[int, int, str]]] = {
    "MaxBurstLength": (512, (1 << 24) - 1, "min"),
    "FirstBurstLength": (512, (1 << 24) - 1, "min"),
    "MaxOutstandingR2T": (1, 65535, "min"),
    "DefaultTime2Wait": (0, 3600, "max"),
    "DefaultTime2Retain": (0, 3600, "min"),
    "ErrorRecoveryLevel": (0, 2, "min"),
    "MaxConnections": (1, 65535, "min"),
}
_BOOLEAN: Final[dict[str, str]] = {
    "InitialR2T": "or", "ImmediateData": "and", "DataPDUInOrder": "or",
    "DataSequenceInOrder": "or",
}
# keys that mean nothing in a discovery session (13.x "Irrelevant when SessionType=Discovery")
_SESSION_ONLY: Final = frozenset({
    "MaxConnections", "InitialR2T", "ImmediateData", "MaxBurstLength", "FirstBurstLength",
    "MaxOutstandingR2T", "DataPDUInOrder", "DataSequenceInOrder",
})
_DECLARATIVE: Final = frozenset({
    "InitiatorName", "InitiatorAlias", "TargetName", "SessionType", "MaxRecvDataSegmentLength",
})
_LEGACY: Final[dict[str, str]] = {
    "IFMarker": "No", "OFMarker": "No", "IFMarkInt": "Irrelevant", "OFMarkInt": "Irrelevant",
}


class LoginError(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


@dataclass
class LoginConfig:
    """What the target offers and demands; our side of every negotiation."""

    target_name: str
    tpgt: int = 1
    alias: str | None = None
    chap: tuple[str, str] | None = None  # (user, secret) the initiator must prove
    mutual_chap: tuple[str, str] | None = None  # (user, secret) we prove to the initiator
    max_recv_data_segment_length: int = 262144  # what we accept per PDU
    max_burst_length: int = 1048576
    first_burst_length: int = 262144
    max_outstanding_r2t: int = 8
    initial_r2t: bool = False
    immediate_data: bool = True
    default_time2wait: int = 2
    default_time2retain: int = 0  # ERL 0: nothing to retain


@dataclass
class SessionParams:
    """The outcome of a login: RFC defaults until negotiated otherwise."""

    initiator_name: str = ""
    initiator_alias: str = ""
    target_name: str = ""
    session_type: str = "Normal"
    isid: bytes = bytes(6)
    tsih: int = 0
    cid: int = 0
    header_digest: bool = False
    data_digest: bool = False
    max_connections: int = 1
    initial_r2t: bool = True
    immediate_data: bool = True
    max_send_data_segment_length: int = 8192  # the initiator's MaxRecvDataSegmentLength
    max_recv_data_segment_length: int = 8192  # ours, once declared
    max_burst_length: int = 262144
    first_burst_length: int = 65536
    default_time2wait: int = 2
    default_time2retain: int = 20
    max_outstanding_r2t: int = 1
    data_pdu_in_order: bool = True
    data_sequence_in_order: bool = True
    error_recovery_level: int = 0

    @property
    def discovery(self) -> bool:
        return self.session_type == "Discovery"


def chap_response(ident: int, secret: bytes, challenge: bytes) -> bytes:
    """RFC 1994: MD5(identifier || secret || challenge)."""
    return hashlib.md5(bytes([ident]) + secret + challenge).digest()


def decode_binary(value: str) -> bytes:
    """RFC 7143 binary values: 0x<hex> or 0b<base64>."""
    try:
        if value[:2] in ("0x", "0X"):
            digits = value[2:]
            return bytes.fromhex(digits if len(digits) % 2 == 0 else "0" + digits)
        if value[:2] in ("0b", "0B"):
            return base64.b64decode(value[2:], validate=True)
    except ValueError as e:
        raise LoginError(AUTH_FAILED, f"bad binary value {value[:20]!r}") from e
    raise LoginError(AUTH_FAILED, f"binary value without 0x/0b prefix: {value[:20]!r}")


def login_response(req: Pdu, *, transit: bool, csg: int, nsg: int, status: int = SUCCESS,
                   tsih: int = 0, data: bytes = b"") -> Pdu:
    flags = (0x80 if transit else 0) | (csg << 2) | (nsg if transit else 0)
    p = Pdu.new(Op.LOGIN_RSP, flags, data=data, itt=req.itt)
    p.bhs[2] = p.bhs[3] = 0  # version-max / version-active: 0
    p.bhs[8:14] = req.bhs[8:14]
    p.set_half(14, tsih)
    p.bhs[36] = status >> 8
    p.bhs[37] = status & 0xFF
    return p


class LoginMachine:
    """One connection's login.

    ``known_target``: the TargetNames served here (default: the configured
    one); ``on_complete(params)`` runs when the initiator enters the full
    feature phase and sets ``params.tsih`` (or raises LoginError).
    """

    def __init__(self, config: LoginConfig, known_target: set[str] | None = None,
                 on_complete: Callable[[SessionParams], None] | None = None) -> None:
        self.config = config
        self.on_complete = on_complete
        self.targets = {t.lower() for t in (known_target or {config.target_name})}
        self.params = SessionParams()
        self.stage: int | None = None
        self.done = False
        self.failed = False
        self._first = True
        self._text = b""  # text carried over C-bit (continued) requests
        self._auth = "pending" if config.chap else "none"
        self._chap_id = 0
        self._chap_challenge = b""
        self._declared_mrdsl = False

    def handle(self, req: Pdu) -> Pdu:
        """Answer one Login Request; on failure the answer carries the status."""
        csg = (req.flags >> 2) & 3
        try:
            return self._handle(req, csg)
        except LoginError as e:
            self.failed = True
            return login_response(req, transit=False, csg=csg, nsg=0, status=e.status)
        except ProtocolError:
            self.failed = True
            return login_response(req, transit=False, csg=csg, nsg=0, status=INITIATOR_ERROR)

    def _handle(self, req: Pdu, csg: int) -> Pdu:
        if self.done or self.failed:
            raise LoginError(INVALID_DURING_LOGIN, "login already finished")
        if req.opcode != Op.LOGIN:
            raise LoginError(INVALID_DURING_LOGIN, f"{req.name()} during login")
        transit, cont, nsg = bool(req.flags & 0x80), bool(req.flags & 0x40), req.flags & 3
        if req.bhs[3] > 0:  # Version-min above 0: a protocol level we do not speak
            raise LoginError(UNSUPPORTED_VERSION, "unsupported iSCSI version")
        if transit and cont:
            raise LoginError(INITIATOR_ERROR, "T and C both set")
        if csg not in (SECURITY, OPERATIONAL) or (transit and (nsg <= csg or nsg == 2)):
            raise LoginError(INITIATOR_ERROR, f"bad stage transition {csg}->{nsg}")
        if self._first:
            self.params.isid = bytes(req.bhs[8:14])
            self.params.tsih = req.half(14)
            self.params.cid = req.half(20)
            if self.config.chap and csg != SECURITY:
                raise LoginError(AUTH_FAILED, "authentication required")
        elif bytes(req.bhs[8:14]) != self.params.isid or req.half(14) != self.params.tsih:
            raise LoginError(INITIATOR_ERROR, "ISID or TSIH changed during login")
        if self.stage is not None and csg != self.stage:
            raise LoginError(INITIATOR_ERROR, f"stage {csg}, expected {self.stage}")
        if self.stage == SECURITY and csg == OPERATIONAL and self._auth == "pending":
            raise LoginError(AUTH_FAILED, "authentication not completed")
        self.stage = csg
        self._text += req.data
        if cont:  # more text follows: acknowledge with an empty response
            return login_response(req, transit=False, csg=csg, nsg=0)
        pairs, self._text = parse_text(self._text), b""
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise LoginError(INITIATOR_ERROR, "a key appears twice")
        answer: list[tuple[str, str]] = []
        values = dict(pairs)
        if self._first:
            self._leading(values, answer)
        for key, value in pairs:
            self._negotiate(key, value, csg, answer)
        if csg == SECURITY:
            self._security(values, answer)
            if self._auth in ("pending", "challenged"):
                transit = False  # no way out of the security stage without a proof
        if csg == OPERATIONAL and not self._declared_mrdsl:
            mrdsl = self.config.max_recv_data_segment_length
            answer.append(("MaxRecvDataSegmentLength", str(mrdsl)))
            self.params.max_recv_data_segment_length = mrdsl
            self._declared_mrdsl = True
        self._first = False
        tsih = 0
        if transit:
            self.stage = nsg
            if nsg == FULL_FEATURE:
                self._finish()
                self.done = True
                tsih = self.params.tsih
        return login_response(req, transit=transit, csg=csg, nsg=nsg, tsih=tsih,
                              data=build_text(answer))

    def _leading(self, values: dict[str, str], answer: list[tuple[str, str]]) -> None:
        p = self.params
        if "InitiatorName" not in values or not values["InitiatorName"]:
            raise LoginError(MISSING_PARAMETER, "no InitiatorName")
        p.initiator_name = values["InitiatorName"]
        p.session_type = values.get("SessionType", "Normal")
        if p.session_type not in ("Normal", "Discovery"):
            raise LoginError(SESSION_TYPE_UNSUPPORTED, f"SessionType={p.session_type}")
        if not p.discovery:
            name = values.get("TargetName")
            if not name:
                raise LoginError(MISSING_PARAMETER, "no TargetName")
            if name.lower() not in self.targets:
                raise LoginError(NOT_FOUND, f"no target {name!r}")
            p.target_name = name
        answer.append(("TargetPortalGroupTag", str(self.config.tpgt)))
        if self.config.alias and not p.discovery:
            answer.append(("TargetAlias", self.config.alias))

    def _negotiate(self, key: str, value: str, csg: int,
                   answer: list[tuple[str, str]]) -> None:
        p, c = self.params, self.config
        if key in _DECLARATIVE:
            if key == "InitiatorAlias":
                p.initiator_alias = value
            elif key == "MaxRecvDataSegmentLength":
                n = _number(value, 512, (1 << 24) - 1)
                if n is None:
                    answer.append((key, "Reject"))
                else:
                    p.max_send_data_segment_length = n
            return
        if key == "AuthMethod" or key.startswith("CHAP_"):
            if csg != SECURITY:
                raise LoginError(INITIATOR_ERROR, f"{key} outside the security stage")
            return  # _security handles them
        if key in ("TargetAlias", "TargetAddress", "TargetPortalGroupTag"):
            raise LoginError(INITIATOR_ERROR, f"{key} is sent by targets only")
        if key in _LEGACY:
            answer.append((key, _LEGACY[key]))
            return
        if p.discovery and key in _SESSION_ONLY:
            answer.append((key, "Irrelevant"))
            return
        if key in ("HeaderDigest", "DataDigest"):
            offered = value.split(",")
            choice = next((v for v in offered if v in ("None", "CRC32C")), "Reject")
            answer.append((key, choice))
            setattr(p, "header_digest" if key == "HeaderDigest" else "data_digest",
                    choice == "CRC32C")
            return
        if key in _NUMERIC:
            low, high, func = _NUMERIC[key]
            n = _number(value, low, high)
            if n is None:
                answer.append((key, "Reject"))
                return
            ours = {
                "MaxBurstLength": c.max_burst_length,
                "FirstBurstLength": c.first_burst_length,
                "MaxOutstandingR2T": c.max_outstanding_r2t,
                "DefaultTime2Wait": c.default_time2wait,
                "DefaultTime2Retain": c.default_time2retain,
                "ErrorRecoveryLevel": 0, "MaxConnections": 1,
            }[key]
            result = min(n, ours) if func == "min" else max(n, ours)
            answer.append((key, str(result)))
            setattr(p, _attr(key), result)
            return
        if key in _BOOLEAN:
            if value not in ("Yes", "No"):
                answer.append((key, "Reject"))
                return
            ours_b = {"InitialR2T": c.initial_r2t, "ImmediateData": c.immediate_data,
                      "DataPDUInOrder": True, "DataSequenceInOrder": True}[key]
            theirs = value == "Yes"
            result_b = (theirs or ours_b) if _BOOLEAN[key] == "or" else (theirs and ours_b)
            answer.append((key, "Yes" if result_b else "No"))
            setattr(p, _attr(key), result_b)
            return
        answer.append((key, "NotUnderstood"))

    def _security(self, values: dict[str, str], answer: list[tuple[str, str]]) -> None:
        chap = self.config.chap
        if "AuthMethod" in values:
            offered = values["AuthMethod"].split(",")
            if chap is not None:
                if "CHAP" not in offered:
                    raise LoginError(AUTH_FAILED, "CHAP required, initiator does not offer it")
                answer.append(("AuthMethod", "CHAP"))
                self._auth = "pending"
            elif "None" in offered:
                answer.append(("AuthMethod", "None"))
            else:
                raise LoginError(AUTH_FAILED, "no common AuthMethod")
        if chap is None:
            if any(k.startswith("CHAP_") for k in values):
                raise LoginError(AUTH_FAILED, "CHAP keys without CHAP")
            return
        if self._auth == "pending" and "CHAP_A" in values:
            if str(CHAP_MD5) not in values["CHAP_A"].split(","):
                raise LoginError(AUTH_FAILED, "initiator does not offer CHAP_A=5 (MD5)")
            self._chap_id = secrets.randbelow(256)
            self._chap_challenge = secrets.token_bytes(16)
            answer += [("CHAP_A", str(CHAP_MD5)), ("CHAP_I", str(self._chap_id)),
                       ("CHAP_C", "0x" + self._chap_challenge.hex())]
            self._auth = "challenged"
        elif self._auth == "challenged" and "CHAP_R" in values:
            self._verify(values, chap, answer)
        elif self._auth != "done" and "AuthMethod" not in values:
            raise LoginError(AUTH_FAILED, "unexpected step in CHAP exchange")

    def _verify(self, values: dict[str, str], chap: tuple[str, str],
                answer: list[tuple[str, str]]) -> None:
        user, secret = chap
        expected = chap_response(self._chap_id, secret.encode(), self._chap_challenge)
        got = decode_binary(values["CHAP_R"])
        if values.get("CHAP_N") != user or not hmac.compare_digest(got, expected):
            raise LoginError(AUTH_FAILED, "CHAP response wrong")
        if "CHAP_I" in values or "CHAP_C" in values:  # the initiator wants us to prove too
            mutual = self.config.mutual_chap
            if mutual is None or "CHAP_I" not in values or "CHAP_C" not in values:
                raise LoginError(AUTH_FAILED, "mutual CHAP not configured")
            ident = _number(values["CHAP_I"], 0, 255)
            challenge = decode_binary(values["CHAP_C"])
            if ident is None or challenge == self._chap_challenge or not challenge:
                raise LoginError(AUTH_FAILED, "bad or reflected mutual CHAP challenge")
            reply = chap_response(ident, mutual[1].encode(), challenge)
            answer += [("CHAP_N", mutual[0]), ("CHAP_R", "0x" + reply.hex())]
        self._auth = "done"

    def _finish(self) -> None:
        p = self.params
        if self._auth != "none" and self._auth != "done":
            raise LoginError(AUTH_FAILED, "authentication not completed")
        p.first_burst_length = min(p.first_burst_length, p.max_burst_length)
        p.error_recovery_level = 0
        p.max_connections = 1
        if self.on_complete is not None:  # the session layer: TSIH, reinstatement
            self.on_complete(p)


_ATTRS: Final[dict[str, str]] = {
    "MaxBurstLength": "max_burst_length", "FirstBurstLength": "first_burst_length",
    "MaxOutstandingR2T": "max_outstanding_r2t", "DefaultTime2Wait": "default_time2wait",
    "DefaultTime2Retain": "default_time2retain", "ErrorRecoveryLevel": "error_recovery_level",
    "MaxConnections": "max_connections", "InitialR2T": "initial_r2t",
    "ImmediateData": "immediate_data", "DataPDUInOrder": "data_pdu_in_order",
    "DataSequenceInOrder": "data_sequence_in_order",
}


def _attr(key: str) -> str:
    """Login key -> SessionParams attribute."""
    return _ATTRS[key]


def _number(value: str, low: int, high: int) -> int | None:
    if not value.isdigit() or len(value) > 10:
        return None
    n = int(value)
    return n if low <= n <= high else None
