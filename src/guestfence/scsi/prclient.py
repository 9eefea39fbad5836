"""A synchronous persistent-reservation client over any ScsiTransport.

One method per PR command fence_scsi needs; each sends one CDB (two for a
READ KEYS whose answer did not fit) and returns parsed data or raises the
typed error of scsi/sense.py. Policy (what to register, when to preempt) is
the agent's business; the client only adds what every caller would repeat:

* UNIT ATTENTION is retried. A UA means the command did not run and only
  reports an event (our registration was preempted, the nexus was reset, a
  session was re-established), so sending the same CDB again is safe. Each
  one is kept in ``unit_attentions`` for the caller to log. A UA that is
  still there after ``ua_retries`` retries is raised.
* PR IN answers that say they were cut by ALLOCATION LENGTH are read again
  with the length they ask for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from guestfence.scsi import pr
from guestfence.scsi.pr import (
    Capabilities,
    FullStatus,
    PrIn,
    PrOut,
    PrType,
    ReadKeys,
    ReadReservation,
    ScsiProtocolError,
)
from guestfence.scsi.sense import Sense, UnitAttention, check
from guestfence.scsi.transport import DEFAULT_TIMEOUT, Direction, ScsiTransport

log = logging.getLogger("guestfence.scsi")

DEFAULT_ALLOCATION_LENGTH = 8192  # as sg_persist; room for 1023 keys
WERO = PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY
T = TypeVar("T")


class PrClient:
    def __init__(
        self,
        transport: ScsiTransport,
        ua_retries: int = 3,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        allocation_length: int = DEFAULT_ALLOCATION_LENGTH,
    ) -> None:
        if ua_retries < 0:
            raise ValueError(f"ua_retries must be >= 0, not {ua_retries}")
        if not 8 <= allocation_length <= pr.MAX_ALLOCATION_LENGTH:
            raise ValueError(f"allocation_length {allocation_length} out of range 8..65535")
        self.transport = transport
        self.ua_retries = ua_retries
        self.timeout = timeout
        self.allocation_length = allocation_length
        self.unit_attentions: list[Sense] = []  # every UA seen, oldest first

    @property
    def name(self) -> str:
        return self.transport.name

    def _run(self, cdb: bytes, direction: Direction = Direction.NONE,
             data_out: bytes = b"", data_in_length: int = 0) -> bytes:
        command = pr.command_name(cdb)
        attempts = self.ua_retries + 1
        for attempt in range(1, attempts + 1):
            result = self.transport.execute(cdb, direction, data_out, data_in_length,
                                            self.timeout)
            try:
                return check(result, self.transport.name, command)
            except UnitAttention as exc:
                self.unit_attentions.append(exc.sense)
                log.info("%s: %s: %s", self.transport.name, command, exc.sense.describe())
                if attempt == attempts:
                    raise UnitAttention(self.transport.name, command, exc.sense,
                                        attempts) from None
        raise AssertionError("unreachable")  # the loop returns or raises

    # --- PERSISTENT RESERVE IN ----------------------------------------------

    def _pr_in(self, action: PrIn) -> bytes:
        length = self.allocation_length
        # Twice is enough unless registrations keep growing between the reads;
        # the third answer is parsed as it is, and a still-cut one is an error.
        for _ in range(3):
            data = self._run(pr.pr_in_cdb(action, length), Direction.FROM_DEVICE,
                             data_in_length=length)
            needed = pr.required_length(action, data)
            if needed is None or needed <= len(data) or len(data) < length:
                return data  # complete, or short for another reason: the parser judges
            if length == pr.MAX_ALLOCATION_LENGTH:
                raise ScsiProtocolError(f"{action.label}: the answer needs {needed} bytes, "
                                        "more than the largest ALLOCATION LENGTH")
            log.debug("%s: %s needs %d bytes, asked %d; reading again",
                      self.name, action.label, needed, length)
            length = min(needed, pr.MAX_ALLOCATION_LENGTH)
        return data

    def _read(self, action: PrIn, parse: Callable[[bytes], T]) -> T:
        try:
            return parse(self._pr_in(action))
        except ScsiProtocolError as exc:
            raise ScsiProtocolError(f"{self.name}: PERSISTENT RESERVE IN: {exc}") from exc

    def read_keys(self) -> ReadKeys:
        return self._read(PrIn.READ_KEYS, pr.parse_read_keys)

    def read_reservation(self) -> ReadReservation:
        return self._read(PrIn.READ_RESERVATION, pr.parse_read_reservation)

    def report_capabilities(self) -> Capabilities:
        return self._read(PrIn.REPORT_CAPABILITIES, pr.parse_report_capabilities)

    def read_full_status(self) -> FullStatus:
        return self._read(PrIn.READ_FULL_STATUS, pr.parse_read_full_status)

    # --- other commands -------------------------------------------------------

    def test_unit_ready(self) -> None:
        """TEST UNIT READY, as fence_scsi sends before PR commands: it collects
        pending unit attentions so they do not surface on the command that matters."""
        self._run(pr.test_unit_ready_cdb())

    def _pr_out(self, action: PrOut, key: int, sa_key: int = 0, type: int = 0,
                *, aptpl: bool = False) -> None:
        params = pr.pr_out_parameters(key, sa_key, aptpl=aptpl)
        self._run(pr.pr_out_cdb(action, type, len(params)), Direction.TO_DEVICE, params)

    def register(self, key: int, *, current: int = 0, aptpl: bool = False) -> None:
        """REGISTER ``key``. ``current`` is this nexus's registered key (0 if none);
        a mismatch is a RESERVATION CONFLICT, which is why fence_scsi prefers
        register_and_ignore."""
        self._pr_out(PrOut.REGISTER, current, key, aptpl=aptpl)

    def register_and_ignore(self, key: int, aptpl: bool = False) -> None:
        """REGISTER AND IGNORE EXISTING KEY: register (or re-key) this nexus, idempotent."""
        self._pr_out(PrOut.REGISTER_AND_IGNORE_EXISTING_KEY, 0, key, aptpl=aptpl)

    def unregister(self, key: int) -> None:
        """REGISTER with SERVICE ACTION RESERVATION KEY 0. Releases our reservation too."""
        self._pr_out(PrOut.REGISTER, key, 0)

    def reserve(self, key: int, type: int = WERO) -> None:
        self._pr_out(PrOut.RESERVE, key, 0, type)

    def release(self, key: int, type: int = WERO) -> None:
        self._pr_out(PrOut.RELEASE, key, 0, type)

    def clear(self, key: int) -> None:
        """CLEAR: drop every registration and the reservation. Recovery only."""
        self._pr_out(PrOut.CLEAR, key)

    def preempt(self, key: int, victim: int, type: int = WERO) -> None:
        self._pr_out(PrOut.PREEMPT, key, victim, type)

    def preempt_and_abort(self, key: int, victim: int, type: int = WERO) -> None:
        """PREEMPT plus abort of the victim's queued commands: the fencing operation.
        Targets without it (tgt) raise IllegalRequest with ``unsupported`` set."""
        self._pr_out(PrOut.PREEMPT_AND_ABORT, key, victim, type)
