"""Persistent reservations of one logical unit: a pure SPC-4 state machine (no I/O).

``Reservations.pr_in`` / ``pr_out`` take the CDB (and the PR OUT parameter
list) of one command and return an ``Outcome``; the logical unit runs one
command at a time, so there is no locking here. What the caller does with it:

* ``status`` GOOD: send ``data`` (PR IN, already cut to ALLOCATION LENGTH);
* CHECK CONDITION: send ``sense`` (fixed format, ILLEGAL REQUEST);
* RESERVATION CONFLICT: no sense;
* ``unit_attentions``: queue (ASC, ASCQ), sense key UNIT ATTENTION, for each
  I_T nexus (only ever set with GOOD);
* ``abort_nexuses`` (PREEMPT AND ABORT only): abort every task of these I_T
  nexuses except the PR OUT command itself, *before* sending the response;
  the LU also sets 2F/00 COMMANDS CLEARED BY ANOTHER INITIATOR where TAS=0.

SPC-4 points decided here (sections 5.13 and 6.16 of SPC-4 r37):

* an unknown or unsupported service action (PR IN 04h-1Fh, PR OUT 08h
  REPLACE LOST RESERVATION and 09h-1Fh) is 24/00 INVALID FIELD IN CDB with a
  field pointer to CDB byte 1 bit 4, not 20/00: 20/00 means "no such
  operation code", and libiscsi's PrinServiceactionRange treats it as "PR not
  implemented" and fails;
* SPEC_I_PT=1 is not supported (SIP_C=0): 26/00 pointing at parameter byte 20
  bit 3; ALL_TG_PT is supported (ATP_C=1) and recorded, APTPL too (PTPL_C=1);
* a PR OUT that fails or conflicts changes nothing and sets no unit attention;
  PRGENERATION goes up by one for every REGISTER, REGISTER AND IGNORE EXISTING
  KEY, CLEAR, PREEMPT, PREEMPT AND ABORT and REGISTER AND MOVE that ends GOOD
  (even a no-op REGISTER of key 0), never for RESERVE or RELEASE;
* unit attentions: RELEASE of types 5h-8h and unregistering the holder of 5h
  or 6h: 2A/04 to the other registrants (none for types 1h/3h, as SPC-4);
  CLEAR: 2A/03 to every other registrant; PREEMPT*: 2A/05 to each preempted
  registrant, and 2A/04 to the remaining ones when the preempt changed the
  reservation type; never to the sender of the command;
* PREEMPT checks TYPE and SCOPE only when it creates a reservation (SPC-4: they
  are ignored otherwise); RESERVE and RELEASE check them first (24/00);
* REGISTER AND MOVE: only iSCSI TransportIDs with an ISID (format 01b); an
  all-registrants reservation cannot be moved (RESERVATION CONFLICT, as LIO);
  an already registered destination keeps its key;
* APTPL: set by REGISTER* (that register or change a key) and REGISTER AND
  MOVE; ``from_bytes`` is a power-on: PRGENERATION restarts at 0 and the state
  is restored only if APTPL was 1 when it was saved.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from guestfence.scsi import pr
from guestfence.scsi.pr import Capabilities, PrIn, PrOut, PrType
from guestfence.scsi.transport import Status
from guestfence.target import pr_access
from guestfence.target.lun import Nexus

UA_RESERVATIONS_PREEMPTED = (0x2A, 0x03)
UA_RESERVATIONS_RELEASED = (0x2A, 0x04)
UA_REGISTRATIONS_PREEMPTED = (0x2A, 0x05)

TYPES = frozenset(int(t) for t in PrType)
ALL_TYPES_MASK = sum(pr.TYPE_MASK_BITS.values())
_GENERATION_MASK = 0xFFFFFFFF


@dataclass(frozen=True)
class Outcome:
    """The result of one PR command; see the module docstring for how to act on it."""

    status: int
    data: bytes = b""
    sense: bytes = b""
    abort_nexuses: frozenset[Nexus] = frozenset()
    unit_attentions: Mapping[Nexus, tuple[int, int]] = field(default_factory=dict)

    @property
    def good(self) -> bool:
        return self.status == Status.GOOD


GOOD = Outcome(Status.GOOD)
CONFLICT = Outcome(Status.RESERVATION_CONFLICT)


def _illegal(asc: int, ascq: int = 0, *, cdb: tuple[int, int] | None = None,
             param: tuple[int, int] | None = None) -> Outcome:
    sense = pr_access.illegal_request_sense(asc, ascq, cdb=cdb, param=param)
    return Outcome(Status.CHECK_CONDITION, sense=sense)


def invalid_cdb(byte: int, bit: int) -> Outcome:
    return _illegal(0x24, cdb=(byte, bit))


def invalid_param(byte: int, bit: int) -> Outcome:
    return _illegal(0x26, param=(byte, bit))


LENGTH_ERROR = _illegal(0x1A)
INVALID_RELEASE = _illegal(0x26, 0x04)


@dataclass
class _Registration:
    key: int
    all_tg_pt: bool = False


@dataclass(frozen=True)
class _Reservation:
    type: int
    holder: Nexus | None  # None for the all-registrants types: every registrant holds it

    @property
    def all_registrants(self) -> bool:
        return self.holder is None


class Reservations:
    """Registrations and the persistent reservation of one logical unit."""

    def __init__(self, target_ports: Iterable[int] = (1,)) -> None:
        self.target_ports = frozenset(target_ports)  # for REGISTER AND MOVE
        self._regs: dict[Nexus, _Registration] = {}  # registration order = READ KEYS order
        self._res: _Reservation | None = None
        self._generation = 0
        self._aptpl = False

    # --- state, for the LU and for diagnostics ---------------------------------

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def persistent(self) -> bool:
        """The last APTPL received was 1: the caller must save ``to_bytes()`` after changes."""
        return self._aptpl

    @property
    def registrations(self) -> dict[Nexus, int]:
        return {n: r.key for n, r in self._regs.items()}

    @property
    def reservation(self) -> pr.Reservation | None:
        """As READ RESERVATION reports it (key 0 for the all-registrants types)."""
        res = self._res
        if res is None:
            return None
        key = 0 if res.holder is None else self._regs[res.holder].key
        return pr.Reservation(key, PrType(res.type))

    def registration_of(self, nexus: Nexus) -> Nexus | None:
        """The registered nexus standing for ``nexus``: itself, or its ALL_TG_PT registration."""
        if nexus in self._regs:
            return nexus
        for other, reg in self._regs.items():
            if reg.all_tg_pt and (other.initiator, other.isid) == (nexus.initiator, nexus.isid):
                return other
        return None

    def is_holder(self, nexus: Nexus) -> bool:
        me, res = self.registration_of(nexus), self._res
        return res is not None and me is not None and res.holder in (None, me)

    def check_access(self, nexus: Nexus, cdb: bytes) -> bool:
        """True if the command may run, False for RESERVATION CONFLICT (see pr_access)."""
        res = self._res
        if res is None:
            privileged = True
        elif res.type in (PrType.WRITE_EXCLUSIVE, PrType.EXCLUSIVE_ACCESS):
            privileged = self.is_holder(nexus)
        else:
            privileged = self.registration_of(nexus) is not None
        return pr_access.allowed(cdb, type=None if res is None else res.type,
                                 privileged=privileged, any_registered=bool(self._regs))

    # --- PERSISTENT RESERVE IN -------------------------------------------------

    def pr_in(self, nexus: Nexus, cdb: bytes) -> Outcome:
        if len(cdb) < 10:
            return invalid_cdb(0, 7)
        action = cdb[1] & 0x1F
        alloc = int.from_bytes(cdb[7:9], "big")
        if action == PrIn.READ_KEYS:
            data = pr.ReadKeys(self._generation, tuple(r.key for r in self._regs.values())).encode()
        elif action == PrIn.READ_RESERVATION:
            data = pr.ReadReservation(self._generation, self.reservation).encode()
        elif action == PrIn.REPORT_CAPABILITIES:
            data = Capabilities(
                crh=False, sip_c=False, atp_c=True, ptpl_c=True, tmv=True,
                allow_commands=pr_access.ALLOW_COMMANDS, ptpl_a=self._aptpl,
                type_mask=ALL_TYPES_MASK).encode()
        elif action == PrIn.READ_FULL_STATUS:
            data = pr.FullStatus(self._generation, tuple(
                self._descriptor(n, r) for n, r in self._regs.items())).encode()
        else:
            return invalid_cdb(1, 4)
        return Outcome(Status.GOOD, data=data[:alloc])

    def _descriptor(self, nexus: Nexus, reg: _Registration) -> pr.FullStatusDescriptor:
        res = self._res
        holder = res is not None and res.holder in (None, nexus)
        return pr.FullStatusDescriptor(
            key=reg.key, holder=holder, type=res.type if holder and res else 0,
            scope=pr.LU_SCOPE, all_tg_pt=reg.all_tg_pt,
            relative_target_port=0 if reg.all_tg_pt else nexus.target_port,
            transport_id=pr.iscsi_transport_id(nexus.initiator,
                                               int.from_bytes(nexus.isid, "big")))

    # --- PERSISTENT RESERVE OUT ------------------------------------------------

    def pr_out(self, nexus: Nexus, cdb: bytes, parameters: bytes) -> Outcome:
        """One PR OUT command; nothing changes unless the Outcome is GOOD."""
        if len(cdb) < 10:
            return invalid_cdb(0, 7)
        action = cdb[1] & 0x1F
        if action > PrOut.REGISTER_AND_MOVE:
            return invalid_cdb(1, 4)  # includes REPLACE LOST RESERVATION (RLR_C=0)
        length = int.from_bytes(cdb[5:9], "big")
        if len(parameters) < length:
            return LENGTH_ERROR
        params = parameters[:length]
        if action == PrOut.REGISTER_AND_MOVE:
            return self._register_and_move(nexus, cdb, params)
        if length < pr.BASIC_PARAMETER_LENGTH:
            return LENGTH_ERROR
        if params[20] & 0x08:
            return invalid_param(20, 3)  # SPEC_I_PT: not supported (SIP_C=0)
        if length != pr.BASIC_PARAMETER_LENGTH:
            return LENGTH_ERROR
        rk = int.from_bytes(params[0:8], "big")
        sark = int.from_bytes(params[8:16], "big")
        all_tg_pt, aptpl = bool(params[20] & 0x04), bool(params[20] & 0x01)
        scope, type = cdb[2] >> 4, cdb[2] & 0x0F
        me = self.registration_of(nexus)
        if action in (PrOut.REGISTER, PrOut.REGISTER_AND_IGNORE_EXISTING_KEY):
            if action == PrOut.REGISTER and rk != (0 if me is None else self._regs[me].key):
                return CONFLICT
            return self._register(nexus, me, sark, all_tg_pt=all_tg_pt, aptpl=aptpl)
        if action in (PrOut.RESERVE, PrOut.RELEASE):
            bad = self._check_scope_type(scope, type)
            if bad is not None:
                return bad
        if me is None or rk != self._regs[me].key:
            return CONFLICT
        if action == PrOut.RESERVE:
            return self._reserve(me, type)
        if action == PrOut.RELEASE:
            return self._release(me, type)
        if action == PrOut.CLEAR:
            return self._clear(me)
        return self._preempt(me, sark, scope, type, abort=action == PrOut.PREEMPT_AND_ABORT)

    @staticmethod
    def _check_scope_type(scope: int, type: int) -> Outcome | None:
        if scope != pr.LU_SCOPE:
            return invalid_cdb(2, 7)
        if type not in TYPES:
            return invalid_cdb(2, 3)
        return None

    def _bump(self) -> None:
        self._generation = (self._generation + 1) & _GENERATION_MASK

    def _register(self, nexus: Nexus, me: Nexus | None, sark: int, *, all_tg_pt: bool,
                  aptpl: bool) -> Outcome:
        uas: dict[Nexus, tuple[int, int]] = {}
        if me is None:
            if sark:
                self._regs[nexus] = _Registration(sark, all_tg_pt)
                self._aptpl = aptpl
        elif sark:
            self._regs[me].key = sark  # ALL_TG_PT is kept as registered
            self._aptpl = aptpl
        else:
            uas = self._unregister(me)
        self._bump()
        return Outcome(Status.GOOD, unit_attentions=uas)

    def _unregister(self, me: Nexus) -> dict[Nexus, tuple[int, int]]:
        """Remove one registration; SPC-4 5.13.11.2.? rules for the holder."""
        del self._regs[me]
        res = self._res
        if res is None:
            return {}
        if res.holder == me:
            self._res = None
            if res.type in (PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
                            PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY):
                return dict.fromkeys(self._regs, UA_RESERVATIONS_RELEASED)
        elif res.all_registrants and not self._regs:
            self._res = None
        return {}

    def _reserve(self, me: Nexus, type: int) -> Outcome:
        res = self._res
        if res is None:
            self._res = _Reservation(type, None if PrType(type).all_registrants else me)
            return GOOD
        if res.holder in (None, me) and res.type == type:
            return GOOD  # the holder reserving again with the same type: no change
        return CONFLICT

    def _release(self, me: Nexus, type: int) -> Outcome:
        res = self._res
        if res is None or res.holder not in (None, me):
            return GOOD  # nothing to release, or not the holder: GOOD, no effect
        if res.type != type:
            return INVALID_RELEASE
        self._res = None
        if res.type in (PrType.WRITE_EXCLUSIVE, PrType.EXCLUSIVE_ACCESS):
            return GOOD
        others = {n: UA_RESERVATIONS_RELEASED for n in self._regs if n != me}
        return Outcome(Status.GOOD, unit_attentions=others)

    def _clear(self, me: Nexus) -> Outcome:
        others = {n: UA_RESERVATIONS_PREEMPTED for n in self._regs if n != me}
        self._regs.clear()
        self._res = None
        self._bump()
        return Outcome(Status.GOOD, unit_attentions=others)

    def _preempt(self, me: Nexus, sark: int, scope: int, type: int, *, abort: bool) -> Outcome:
        res = self._res
        all_reg = res is not None and res.all_registrants
        if sark == 0 and not all_reg:
            return invalid_param(8, 7)
        uas: dict[Nexus, tuple[int, int]] = {}
        if res is not None and (
                sark == 0 if res.holder is None else self._regs[res.holder].key == sark):
            # Preempt the reservation (SPC-4 5.13.11.4.3): remove the preempted
            # registrations but the sender's, and reserve for the sender.
            bad = self._check_scope_type(scope, type)
            if bad is not None:
                return bad
            removed = [n for n, r in self._regs.items()
                       if n != me and (all_reg or r.key == sark)]
            for n in removed:
                del self._regs[n]
            self._res = _Reservation(type, None if PrType(type).all_registrants else me)
            if res.type != type:
                uas = {n: UA_RESERVATIONS_RELEASED for n in self._regs if n != me}
        else:
            # Remove registrations only (SPC-4 5.13.11.4.4), the sender's too if its key is SARK.
            removed = [n for n, r in self._regs.items() if r.key == sark]
            if not removed:
                return CONFLICT
            for n in removed:
                del self._regs[n]
            if all_reg and not self._regs:
                self._res = None
        uas.update((n, UA_REGISTRATIONS_PREEMPTED) for n in removed if n != me)
        self._bump()
        return Outcome(Status.GOOD, unit_attentions=uas,
                       abort_nexuses=frozenset(removed) if abort else frozenset())

    def _register_and_move(self, nexus: Nexus, cdb: bytes, params: bytes) -> Outcome:
        """SPC-4 5.13.8: register SARK for another I_T nexus and move the reservation to it."""
        if len(params) < 24:
            return LENGTH_ERROR
        tid_len = int.from_bytes(params[20:24], "big")
        if 24 + tid_len > len(params):
            return LENGTH_ERROR
        rk = int.from_bytes(params[0:8], "big")
        sark = int.from_bytes(params[8:16], "big")
        unreg, aptpl = bool(params[17] & 0x02), bool(params[17] & 0x01)
        port = int.from_bytes(params[18:20], "big")
        scope, type = cdb[2] >> 4, cdb[2] & 0x0F
        bad = self._check_scope_type(scope, type)
        if bad is not None:
            return bad
        me = self.registration_of(nexus)
        if me is None or rk != self._regs[me].key:
            return CONFLICT
        res = self._res
        if res is None or res.holder != me:
            return CONFLICT  # no reservation, not the holder, or an all-registrants type
        if sark == 0:
            return invalid_param(8, 7)
        if PrType(type).all_registrants:
            return invalid_cdb(2, 3)
        if port not in self.target_ports:
            return invalid_param(18, 7)
        dest = pr_access.parse_iscsi_transport_id(params[24:24 + tid_len], port)
        if dest is None:
            return invalid_param(24, 7)
        if self.registration_of(dest) == me:
            return invalid_param(24, 7)  # that is the sender's own I_T nexus
        target = self.registration_of(dest)
        if target is None:
            target = dest
            self._regs[dest] = _Registration(sark)
        self._res = _Reservation(type, target)
        if unreg:
            del self._regs[me]
        self._aptpl = aptpl
        self._bump()
        return GOOD

    # --- persistence (APTPL) ----------------------------------------------------

    def to_bytes(self) -> bytes:
        """The state as JSON; the caller writes it atomically while ``persistent``."""
        names = list(self._regs)
        res = self._res
        state: dict[str, Any] = {
            "version": 1,
            "aptpl": self._aptpl,
            "registrations": [
                {"initiator": n.initiator, "isid": n.isid.hex(), "target_port": n.target_port,
                 "key": r.key, "all_tg_pt": r.all_tg_pt} for n, r in self._regs.items()],
            "reservation": None if res is None else {
                "type": res.type,
                "holder": None if res.holder is None else names.index(res.holder)},
        }
        return json.dumps(state, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes, target_ports: Iterable[int] = (1,)) -> Reservations:
        """The state after a power on: what ``to_bytes`` saved if APTPL was 1, else empty.

        PRGENERATION starts at 0 (SPC-4 6.15.2). ValueError for anything malformed.
        """
        self = cls(target_ports)
        try:
            state = json.loads(data)
            if state["version"] != 1:
                raise ValueError(f"unknown PR state version {state['version']!r}")
            if not state["aptpl"]:
                return self
            nexuses = []
            for r in state["registrations"]:
                n = Nexus(str(r["initiator"]), bytes.fromhex(r["isid"]), int(r["target_port"]))
                key = int(r["key"])
                if not 0 < key <= pr.MAX_KEY or n in self._regs:
                    raise ValueError(f"bad registration {r!r}")
                self._regs[n] = _Registration(key, bool(r["all_tg_pt"]))
                nexuses.append(n)
            res = state["reservation"]
            if res is not None:
                type, holder = int(res["type"]), res["holder"]
                if type not in TYPES or not self._regs:
                    raise ValueError(f"bad reservation {res!r}")
                if PrType(type).all_registrants != (holder is None) or (
                        holder is not None and not 0 <= int(holder) < len(nexuses)):
                    raise ValueError(f"bad reservation holder {res!r}")
                self._res = _Reservation(type, None if holder is None else nexuses[int(holder)])
            self._aptpl = True
        except (KeyError, TypeError, IndexError, AttributeError) as exc:
            raise ValueError(f"malformed PR state: {exc!r}") from exc
        return self

