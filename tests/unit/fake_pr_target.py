"""An in-memory logical unit with SPC-4 persistent reservations, for tests.

``FakePrTarget`` is one LU. ``target.connect(initiator)`` opens a new I_T
nexus, the way an iSCSI login does (every session is a new nexus, as on tgt,
so a reconnect leaves the old registration orphaned) and returns a
``FakeTransport`` that implements ``ScsiTransport``.

What it implements, following SPC-4 5.12 (persistent reservations) and 5.14
(unit attention):

* TEST UNIT READY; READ(10) and WRITE(10) without data, for the reservation
  access rules only (types 1, 3, 5, 6, 7, 8);
* PR IN: READ KEYS, READ RESERVATION, REPORT CAPABILITIES, READ FULL STATUS,
  cut to ALLOCATION LENGTH with the full ADDITIONAL LENGTH reported;
* PR OUT: REGISTER, REGISTER AND IGNORE EXISTING KEY, RESERVE, RELEASE, CLEAR,
  PREEMPT, PREEMPT AND ABORT (there is no task queue, so nothing to abort),
  APTPL; PRGENERATION bumped on every change of registrations;
* unit attentions: 2A/05 REGISTRATIONS PREEMPTED to preempted nexuses,
  2A/03 RESERVATIONS PREEMPTED on CLEAR, 2A/04 RESERVATIONS RELEASED, and
  optionally 29/00 on a new nexus; reported one per command, then cleared.

Not implemented, answered as a device without them would: REGISTER AND MOVE
and REPLACE LOST RESERVATION (ILLEGAL REQUEST 24/00), SPEC_I_PT and ALL_TG_PT
(26/00: REPORT CAPABILITIES says SIP_C=0, ATP_C=0). ``reject_preempt_and_abort``
makes PREEMPT AND ABORT fail with 24/00 and no field pointer, exactly as tgt
1.0.85 does; ``read_full_status=False`` does the same for READ FULL STATUS.
"""

from __future__ import annotations

import itertools
import struct
from collections import deque
from dataclasses import dataclass, field

from guestfence.scsi import pr
from guestfence.scsi.pr import Capabilities, PrIn, PrOut, PrType
from guestfence.scsi.sense import Sense, SenseKey
from guestfence.scsi.transport import (
    DEFAULT_TIMEOUT,
    Direction,
    ScsiResult,
    ScsiTransportError,
    Status,
)

READ_10, WRITE_10 = 0x28, 0x2A
NO_UA_OPCODES = frozenset({0x12, 0x03, 0xA0})  # INQUIRY, REQUEST SENSE, REPORT LUNS
ALL_TYPES_MASK = sum(pr.TYPE_MASK_BITS.values())

UA_POWER_ON = (0x29, 0x00)
UA_RESERVATIONS_PREEMPTED = (0x2A, 0x03)
UA_RESERVATIONS_RELEASED = (0x2A, 0x04)
UA_REGISTRATIONS_PREEMPTED = (0x2A, 0x05)

GOOD = ScsiResult(Status.GOOD)
CONFLICT = ScsiResult(Status.RESERVATION_CONFLICT)


@dataclass(eq=False)
class Nexus:
    initiator: str
    isid: int
    key: int | None = None  # None: not registered
    pending: list[tuple[int, int]] = field(default_factory=list)  # unit attentions

    @property
    def transport_id(self) -> bytes:
        return pr.iscsi_transport_id(self.initiator, self.isid)


@dataclass
class Held:
    holder: Nexus | None  # None for the all-registrants types: every registrant holds it
    type: int


class FakePrTarget:
    def __init__(
        self,
        name: str = "iscsi://127.0.0.1/iqn.2024-01.lab.fence:pr/1",
        *,
        reject_preempt_and_abort: bool = False,
        read_full_status: bool = True,
        ptpl_c: bool = True,
        descriptor_sense: bool = False,
    ) -> None:
        self.name = name
        self.reject_preempt_and_abort = reject_preempt_and_abort
        self.read_full_status = read_full_status
        self.ptpl_c = ptpl_c
        self.descriptor_sense = descriptor_sense
        self.registered: list[Nexus] = []  # registration order = READ KEYS order
        self.reservation: Held | None = None
        self.generation = 0
        self.aptpl = False
        self.writes: list[str] = []  # initiators whose WRITE(10) was accepted
        self._transports: list[FakeTransport] = []
        self._isids = itertools.count(0x23D000000001)

    # --- test-facing helpers --------------------------------------------------

    def connect(self, initiator: str = "iqn.2024-01.lab:node1", *, isid: int | None = None,
                unit_attention: bool = False) -> FakeTransport:
        """A new I_T nexus; ``unit_attention`` queues 29/00 as a real login may."""
        nexus = Nexus(initiator, next(self._isids) if isid is None else isid)
        if unit_attention:
            nexus.pending.append(UA_POWER_ON)
        transport = FakeTransport(self, nexus)
        self._transports.append(transport)
        return transport

    @property
    def keys(self) -> list[int]:
        return [n.key for n in self.registered if n.key is not None]

    def power_cycle(self) -> None:
        """Registrations survive only if the last APTPL was 1; every nexus gets 29/00."""
        if not self.aptpl:
            for n in self.registered:
                n.key = None
            self.registered, self.reservation = [], None
        for t in self._transports:
            t.nexus.pending.append(UA_POWER_ON)

    # --- device server --------------------------------------------------------

    def _sense(self, key: int, code: tuple[int, int]) -> ScsiResult:
        sense = Sense(key, *code).encode(descriptor=self.descriptor_sense)
        return ScsiResult(Status.CHECK_CONDITION, sense)

    def _illegal(self, asc: int, ascq: int = 0) -> ScsiResult:
        return self._sense(SenseKey.ILLEGAL_REQUEST, (asc, ascq))

    def _ua(self, nexuses: list[Nexus], code: tuple[int, int]) -> None:
        for n in nexuses:
            if code not in n.pending:
                n.pending.append(code)

    def _is_holder(self, nexus: Nexus) -> bool:
        held = self.reservation
        if held is None:
            return False
        return nexus.key is not None if held.holder is None else held.holder is nexus

    def execute(self, nexus: Nexus, cdb: bytes, direction: Direction, data_out: bytes,
                data_in_length: int) -> ScsiResult:
        op = cdb[0]
        if nexus.pending and op not in NO_UA_OPCODES:
            # SPC-4 5.14: the command is not run; the UA is reported and cleared.
            return self._sense(SenseKey.UNIT_ATTENTION, nexus.pending.pop(0))
        if op == pr.TEST_UNIT_READY:
            return GOOD
        if op in (READ_10, WRITE_10):
            return self._access(nexus, write=op == WRITE_10, length=data_in_length)
        if op == pr.PERSISTENT_RESERVE_IN:
            alloc = int.from_bytes(cdb[7:9], "big")
            assert direction is Direction.FROM_DEVICE and data_in_length == alloc, (
                "PR IN buffer must match ALLOCATION LENGTH")
            return self._pr_in(cdb[1] & 0x1F, alloc)
        if op == pr.PERSISTENT_RESERVE_OUT:
            length = int.from_bytes(cdb[5:9], "big")
            assert direction is Direction.TO_DEVICE and len(data_out) == length, (
                "PR OUT data must match PARAMETER LIST LENGTH")
            return self._pr_out(nexus, cdb, data_out)
        return self._illegal(0x20)

    def _access(self, nexus: Nexus, *, write: bool, length: int) -> ScsiResult:
        """SPC-4 table 'SBC commands in the presence of persistent reservations'."""
        held = self.reservation
        if held is not None and not self._is_holder(nexus):
            registered = nexus.key is not None
            t = held.type
            if write:
                conflict = t in (PrType.WRITE_EXCLUSIVE, PrType.EXCLUSIVE_ACCESS) or not registered
            else:
                conflict = t == PrType.EXCLUSIVE_ACCESS or (
                    not registered and t in (PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY,
                                             PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS))
            if conflict:
                return CONFLICT
        if write:
            self.writes.append(nexus.initiator)
        return ScsiResult(Status.GOOD, data=bytes(length))

    def _pr_in(self, action: int, alloc: int) -> ScsiResult:
        gen = self.generation
        if action == PrIn.READ_KEYS:
            data = pr.ReadKeys(gen, tuple(self.keys)).encode()
        elif action == PrIn.READ_RESERVATION:
            held, res = self.reservation, None
            if held is not None:
                key = 0 if held.holder is None else held.holder.key or 0
                res = pr.Reservation(key, held.type)
            data = pr.ReadReservation(gen, res).encode()
        elif action == PrIn.REPORT_CAPABILITIES:
            data = Capabilities(ptpl_c=self.ptpl_c, tmv=True, ptpl_a=self.aptpl,
                                type_mask=ALL_TYPES_MASK).encode()
        elif action == PrIn.READ_FULL_STATUS and self.read_full_status:
            data = pr.FullStatus(gen, tuple(
                pr.FullStatusDescriptor(
                    key=n.key or 0, holder=self._is_holder(n),
                    type=self.reservation.type if self._is_holder(n) and self.reservation else 0,
                    scope=0, all_tg_pt=False, relative_target_port=1,
                    transport_id=n.transport_id)
                for n in self.registered)).encode()
        else:
            return self._illegal(0x24)
        return ScsiResult(Status.GOOD, data=data[:alloc])

    def _pr_out(self, nexus: Nexus, cdb: bytes, params: bytes) -> ScsiResult:
        action, scope, type_ = cdb[1] & 0x1F, cdb[2] >> 4, cdb[2] & 0x0F
        if action == PrOut.PREEMPT_AND_ABORT and self.reject_preempt_and_abort:
            return self._illegal(0x24)  # tgt: service action not in its table
        if action in (PrOut.REGISTER_AND_MOVE, PrOut.REPLACE_LOST_RESERVATION) or action > 8:
            return self._illegal(0x24)
        if len(params) < pr.BASIC_PARAMETER_LENGTH:
            return self._illegal(0x1A)
        rk, sark, flags = struct.unpack_from(">QQ4xB", params)
        if flags & 0x0C:  # SPEC_I_PT, ALL_TG_PT: SIP_C and ATP_C are 0
            return self._illegal(0x26)
        if len(params) != pr.BASIC_PARAMETER_LENGTH:
            return self._illegal(0x1A)
        if action in (PrOut.REGISTER, PrOut.REGISTER_AND_IGNORE_EXISTING_KEY):
            aptpl = bool(flags & 0x01)  # APTPL only counts here; others ignore it
            if aptpl and not self.ptpl_c:
                return self._illegal(0x26)
            return self._register(nexus, action, rk, sark, aptpl)
        if action == PrOut.RESERVE and not self._valid(scope, type_):
            return self._illegal(0x24)
        # Every other service action needs a registered nexus quoting its own key.
        if nexus.key is None or rk != nexus.key:
            return CONFLICT
        if action == PrOut.RESERVE:
            return self._reserve(nexus, type_)
        if action == PrOut.RELEASE:
            return self._release(nexus, scope, type_)
        if action == PrOut.CLEAR:
            self._ua([n for n in self.registered if n is not nexus], UA_RESERVATIONS_PREEMPTED)
            self._remove(list(self.registered))
            self.reservation = None
            self.generation += 1
            return GOOD
        return self._preempt(nexus, sark, scope, type_)

    @staticmethod
    def _valid(scope: int, type_: int) -> bool:
        return scope == pr.LU_SCOPE and type_ in pr.TYPE_MASK_BITS

    def _remove(self, nexuses: list[Nexus]) -> None:
        for n in nexuses:
            n.key = None
            self.registered.remove(n)

    def _register(self, nexus: Nexus, action: int, rk: int, sark: int,
                  aptpl: bool) -> ScsiResult:
        if action == PrOut.REGISTER and rk != (nexus.key or 0):
            return CONFLICT
        if sark == 0:
            if nexus.key is not None:
                self._unregister(nexus)
                self.generation += 1
            return GOOD  # unregistered and SARK 0: nothing to do
        if nexus.key is None:
            self.registered.append(nexus)
        nexus.key = sark
        self.aptpl = aptpl
        self.generation += 1
        return GOOD

    def _unregister(self, nexus: Nexus) -> None:
        held = self.reservation
        self._remove([nexus])
        if held is None:
            return
        if held.holder is nexus:
            self.reservation = None
            if held.type in (PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
                             PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY):
                self._ua(list(self.registered), UA_RESERVATIONS_RELEASED)
        elif held.holder is None and not self.registered:
            self.reservation = None  # the last of all registrants left

    def _reserve(self, nexus: Nexus, type_: int) -> ScsiResult:
        held = self.reservation
        if held is not None:
            # Same holder, same type: no change (SPC-4); anything else conflicts.
            return GOOD if self._is_holder(nexus) and held.type == type_ else CONFLICT
        all_reg = PrType(type_).all_registrants
        self.reservation = Held(None if all_reg else nexus, type_)
        return GOOD

    def _release(self, nexus: Nexus, scope: int, type_: int) -> ScsiResult:
        held = self.reservation
        if held is None or not self._is_holder(nexus):
            return GOOD  # SPC-4: not an error, nothing happens
        if scope != pr.LU_SCOPE or type_ != held.type:
            return self._illegal(0x26, 0x04)  # INVALID RELEASE OF PERSISTENT RESERVATION
        self.reservation = None
        if held.type not in (PrType.WRITE_EXCLUSIVE, PrType.EXCLUSIVE_ACCESS):
            self._ua([n for n in self.registered if n is not nexus], UA_RESERVATIONS_RELEASED)
        return GOOD

    def _preempt(self, nexus: Nexus, sark: int, scope: int, type_: int) -> ScsiResult:
        held = self.reservation
        all_reg = held is not None and held.holder is None
        if sark == 0 and not all_reg:
            return self._illegal(0x26)  # INVALID FIELD IN PARAMETER LIST
        holder_key = None if held is None or held.holder is None else held.holder.key
        if held is not None and (sark == holder_key or (all_reg and sark == 0)):
            # Preempting the reservation: drop the victims (all others when
            # all-registrants with SARK 0), keep our own nexus, take it over.
            # Only here do SCOPE and TYPE matter.
            if not self._valid(scope, type_):
                return self._illegal(0x24)
            victims = [n for n in self.registered
                       if n is not nexus and (sark == 0 or n.key == sark)]
            self._remove(victims)
            self._ua(victims, UA_REGISTRATIONS_PREEMPTED)
            new_all_reg = PrType(type_).all_registrants
            self.reservation = Held(None if new_all_reg else nexus, type_)
            if type_ != held.type:
                self._ua([n for n in self.registered if n is not nexus], UA_RESERVATIONS_RELEASED)
        else:
            # Not the holder's key: remove every registration with it, our own
            # included (fence_scsi's self-preempt relies on that); reservation kept.
            victims = [n for n in self.registered if n.key == sark]
            if not victims:
                return CONFLICT
            self._remove(victims)
            self._ua([n for n in victims if n is not nexus], UA_REGISTRATIONS_PREEMPTED)
            if all_reg and not self.registered:
                self.reservation = None
        self.generation += 1
        return GOOD


class FakeTransport:
    """One I_T nexus to a FakePrTarget; records every CDB it sends."""

    def __init__(self, target: FakePrTarget, nexus: Nexus) -> None:
        self.target = target
        self.nexus = nexus
        self.commands: list[bytes] = []
        self.injected: deque[ScsiResult] = deque()  # answers to return instead, in order
        self.closed = False

    @property
    def name(self) -> str:
        return self.target.name

    def fail_next(self, *results: ScsiResult) -> None:
        self.injected.extend(results)

    def execute(self, cdb: bytes, direction: Direction = Direction.NONE, data_out: bytes = b"",
                data_in_length: int = 0, timeout: float = DEFAULT_TIMEOUT) -> ScsiResult:
        if self.closed:
            raise ScsiTransportError(f"{self.name}: session closed")
        self.commands.append(bytes(cdb))
        if self.injected:
            return self.injected.popleft()
        return self.target.execute(self.nexus, bytes(cdb), direction, bytes(data_out),
                                   data_in_length)

    def close(self) -> None:
        self.closed = True
