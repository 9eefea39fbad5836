"""A file-backed SCSI disk (SBC-3 / SPC-4): the logical unit of our iSCSI target.

``FileLun`` implements ``LogicalUnit`` (target/lun.py). It runs one command at
a time under a lock; the layouts live in target/scsi_spc.py (INQUIRY, VPD,
MODE SENSE, REPORT LUNS, REPORT SUPPORTED OPERATION CODES) and
target/scsi_sbc.py (block CDBs, the backing file).

Durability policy
-----------------
Writes go through os.pwrite to the backing file.

* ``sync="always"`` (the default): every WRITE / WRITE AND VERIFY is followed
  by fdatasync before it completes, so an acknowledged write survives a crash
  of the target process or the host. The caching mode page says WCE=0.
* ``sync="on-flush"``: writes stay in the page cache until SYNCHRONIZE CACHE,
  a write with FUA=1 or START STOP UNIT (stop); the caching mode page says
  WCE=1, so initiators know they must flush. A READ with FUA=1 flushes first.

Persistent reservations are delegated to a ``Reservations`` object (target/pr.py)
through a narrow seam: PERSISTENT RESERVE IN/OUT go to it, every other command
but the few SPC-4 always allows is first put to its ``check_access`` (RESERVATION
CONFLICT when it says no), the unit attentions it returns are queued, and after
a successful PR OUT its state is written to ``<backing file>.pr`` (temporary
file, fsync, rename, fsync of the directory) when it is ``persistent`` (APTPL),
or that file is removed when it is not. The file is loaded at start.

Unit attentions (SAM-5 / SPC-4 5.14) are kept per I_T nexus: a nexus gets
29/00 the first time it is seen, LOGICAL UNIT RESET gives 29/00 to every nexus,
a lost nexus gets 29/07 when it comes back, the nexuses PREEMPT AND ABORT
aborts get 2F/00 (TAS=0). One is reported per command, to
any command but INQUIRY, REPORT LUNS and REQUEST SENSE (which returns it).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Literal, Protocol, cast

from guestfence.scsi.pr import ScsiProtocolError
from guestfence.scsi.sense import Sense, SenseKey, decode_sense
from guestfence.scsi.transport import Status
from guestfence.target import scsi_sbc as sbc
from guestfence.target import scsi_spc as spc
from guestfence.target.lun import CommandResult, Nexus
from guestfence.target.scsi_spc import CommandError, CommandSpec, invalid_field, spec

SyncPolicy = Literal["always", "on-flush"]

TEST_UNIT_READY, REQUEST_SENSE, INQUIRY = 0x00, 0x03, 0x12
MODE_SENSE_6, START_STOP_UNIT, READ_CAPACITY_10 = 0x1A, 0x1B, 0x25
MODE_SENSE_10, PR_IN, PR_OUT = 0x5A, 0x5E, 0x5F
SERVICE_ACTION_IN_16, REPORT_LUNS, MAINTENANCE_IN = 0x9E, 0xA0, 0xA3
SA_READ_CAPACITY_16, SA_REPORT_SUPPORTED_OPCODES = 0x10, 0x0C

POWER_ON_RESET = (0x29, 0x00)
NEXUS_LOSS = (0x29, 0x07)
COMMANDS_CLEARED = (0x2F, 0x00)

# Reported and accepted with a UNIT ATTENTION pending (SPC-4 5.14).
_NO_UA = frozenset({INQUIRY, REPORT_LUNS, REQUEST_SENSE})
# Allowed in every reservation type (SPC-4 table 63; SBC-3 table 13): never
# put to check_access. PR IN/OUT go to the reservations object itself.
_NO_PR_CHECK = frozenset({INQUIRY, REPORT_LUNS, REQUEST_SENSE, TEST_UNIT_READY,
                          READ_CAPACITY_10, SERVICE_ACTION_IN_16, MAINTENANCE_IN,
                          PR_IN, PR_OUT})

_RW = (0xFE, 0xFF, 0xFF, 0xFF, 0xFF)  # byte 1 PROTECT/DPO/FUA/RARC/FUA_NV, LBA
_WR = (0xFA, 0xFF, 0xFF, 0xFF, 0xFF)
_VF = (0xF6, 0xFF, 0xFF, 0xFF, 0xFF)  # PROTECT/DPO/BYTCHK

# CDB USAGE DATA after the OPERATION CODE; the last byte is CONTROL.
COMMANDS: tuple[CommandSpec, ...] = (
    spec(TEST_UNIT_READY, None, "TEST UNIT READY", 0, 0, 0, 0, 0),
    spec(REQUEST_SENSE, None, "REQUEST SENSE", 0x01, 0, 0, 0xFF, 0),
    spec(sbc.READ_6, None, "READ(6)", 0x1F, 0xFF, 0xFF, 0xFF, 0),
    spec(sbc.WRITE_6, None, "WRITE(6)", 0x1F, 0xFF, 0xFF, 0xFF, 0),
    spec(INQUIRY, None, "INQUIRY", 0x01, 0xFF, 0xFF, 0xFF, 0),
    spec(MODE_SENSE_6, None, "MODE SENSE(6)", 0x08, 0xFF, 0xFF, 0xFF, 0),
    spec(START_STOP_UNIT, None, "START STOP UNIT", 0x01, 0, 0x0F, 0xF7, 0),
    spec(READ_CAPACITY_10, None, "READ CAPACITY(10)", 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x01, 0),
    spec(sbc.READ_10, None, "READ(10)", *_RW, 0x1F, 0xFF, 0xFF, 0),
    spec(sbc.WRITE_10, None, "WRITE(10)", *_WR, 0x1F, 0xFF, 0xFF, 0),
    spec(sbc.WRITE_VERIFY_10, None, "WRITE AND VERIFY(10)", *_VF, 0x1F, 0xFF, 0xFF, 0),
    spec(sbc.VERIFY_10, None, "VERIFY(10)", *_VF, 0x1F, 0xFF, 0xFF, 0),
    spec(sbc.SYNCHRONIZE_CACHE_10, None, "SYNCHRONIZE CACHE(10)",
         0x06, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0),
    spec(MODE_SENSE_10, None, "MODE SENSE(10)", 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0),
    *(spec(PR_IN, sa, "PERSISTENT RESERVE IN", 0x1F, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0)
      for sa in range(0x04)),
    *(spec(PR_OUT, sa, "PERSISTENT RESERVE OUT", 0x1F, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0)
      for sa in range(0x08)),
    spec(sbc.READ_16, None, "READ(16)", *_RW, *(0xFF,) * 8, 0x1F, 0),
    spec(sbc.WRITE_16, None, "WRITE(16)", *_WR, *(0xFF,) * 8, 0x1F, 0),
    spec(sbc.WRITE_VERIFY_16, None, "WRITE AND VERIFY(16)", *_VF, *(0xFF,) * 8, 0x1F, 0),
    spec(sbc.VERIFY_16, None, "VERIFY(16)", *_VF, *(0xFF,) * 8, 0x1F, 0),
    spec(sbc.SYNCHRONIZE_CACHE_16, None, "SYNCHRONIZE CACHE(16)",
         0x06, *(0xFF,) * 12, 0x1F, 0),
    spec(SERVICE_ACTION_IN_16, SA_READ_CAPACITY_16, "READ CAPACITY(16)",
         0x1F, *(0xFF,) * 12, 0x01, 0),
    spec(REPORT_LUNS, None, "REPORT LUNS", 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0),
    spec(MAINTENANCE_IN, SA_REPORT_SUPPORTED_OPCODES, "REPORT SUPPORTED OPERATION CODES",
         0x1F, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0),
    spec(sbc.READ_12, None, "READ(12)", *_RW, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0),
    spec(sbc.WRITE_12, None, "WRITE(12)", *_WR, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0),
    spec(sbc.WRITE_VERIFY_12, None, "WRITE AND VERIFY(12)", *_VF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0),
    spec(sbc.VERIFY_12, None, "VERIFY(12)", *_VF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0),
)

_BY_OPCODE: dict[int, list[CommandSpec]] = {}
for _command in COMMANDS:
    _BY_OPCODE.setdefault(_command.opcode, []).append(_command)


class PrOutcome(Protocol):
    """What the reservations object answers; also read: data, sense, abort_nexuses,
    unit_attentions (a mapping of Nexus to (asc, ascq) pairs or Sense objects)."""

    @property
    def status(self) -> int: ...


class ReservationsLike(Protocol):
    """The seam to target/pr.py's ``Reservations``."""

    def pr_in(self, nexus: Nexus, cdb: bytes, /) -> PrOutcome: ...

    def pr_out(self, nexus: Nexus, cdb: bytes, parameters: bytes, /) -> PrOutcome: ...

    def check_access(self, nexus: Nexus, cdb: bytes, /) -> bool: ...

    def to_bytes(self) -> bytes: ...

    def from_bytes(self, data: bytes, /) -> object: ...

    @property
    def persistent(self) -> bool: ...


def _default_reservations() -> ReservationsLike:
    module = importlib.import_module("guestfence.target.pr")
    return cast(ReservationsLike, module.Reservations())


def _load_reservations(current: ReservationsLike, data: bytes) -> ReservationsLike:
    """``from_bytes`` as a constructor (returns the object) or in place (returns None)."""
    loader: Callable[..., object] = current.from_bytes
    ports = getattr(current, "target_ports", None)  # keep the configuration across a load
    loaded = loader(data) if ports is None else loader(data, ports)
    return current if loaded is None else cast(ReservationsLike, loaded)


def _ua_codes(value: object) -> list[tuple[int, int]]:
    """Unit attentions as (asc, ascq): from a pair, a Sense, encoded sense, or a list of them."""
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return [(int(value[0]), int(value[1]))]
    if isinstance(value, Sense):
        return [(value.asc, value.ascq)]
    if isinstance(value, (bytes, bytearray)):
        try:
            decoded = decode_sense(bytes(value))
        except ScsiProtocolError:
            return []
        return [(decoded.asc, decoded.ascq)]
    if isinstance(value, Iterable):
        return [code for item in value for code in _ua_codes(item)]
    return []


def _sense_bytes(value: object) -> bytes:
    if isinstance(value, Sense):
        return value.encode()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return b""


class FileLun:
    """A disk backed by a file: ``FileLun(path, lun=1, *, block_size=512, serial=...)``.

    ``luns``: the LUNs REPORT LUNS lists (a callable is asked each time; default:
    this one). ``target_name``: the iSCSI target name, for the target port and
    target device designators of the device identification VPD page.
    """

    def __init__(self, path: str | os.PathLike[str], lun: int = 1, *, block_size: int = 512,
                 serial: str, reservations: ReservationsLike | None = None,
                 sync: SyncPolicy = "always",
                 luns: Callable[[], Iterable[int]] | Iterable[int] | None = None,
                 target_name: str | None = None) -> None:
        if sync not in ("always", "on-flush"):
            raise ValueError(f"sync policy {sync!r}: expected 'always' or 'on-flush'")
        if not serial or not serial.isascii() or not serial.isprintable():
            raise ValueError(f"serial {serial!r}: expected printable ASCII")
        self.lun = lun
        self.path = Path(path)
        self.serial = serial
        self.sync: SyncPolicy = sync
        self.target_name = target_name
        self._luns = luns
        self._lock = threading.Lock()
        self._seen: set[Nexus] = set()
        self._ua: dict[Nexus, list[tuple[int, int]]] = {}
        self.state_path = self.path.with_name(self.path.name + ".pr")
        self._backing = sbc.Backing(self.path, block_size)
        try:
            self._pr = reservations if reservations is not None else _default_reservations()
            if self.state_path.exists():
                self._pr = _load_reservations(self._pr, self.state_path.read_bytes())
        except BaseException:
            self._backing.close()
            raise
        self.max_transfer_blocks = max(1, spc.MAX_TRANSFER_BYTES // block_size)
        self._handlers: dict[int, Callable[[Nexus, bytes, bytes], CommandResult]] = {
            TEST_UNIT_READY: lambda n, c, d: CommandResult(Status.GOOD),
            REQUEST_SENSE: self._request_sense,
            INQUIRY: self._inquiry,
            MODE_SENSE_6: self._mode_sense,
            MODE_SENSE_10: self._mode_sense,
            START_STOP_UNIT: self._start_stop,
            READ_CAPACITY_10: self._read_capacity_10,
            SERVICE_ACTION_IN_16: self._read_capacity_16,
            REPORT_LUNS: self._report_luns,
            MAINTENANCE_IN: self._report_opcodes,
            PR_IN: self._pr_in,
            PR_OUT: self._pr_out,
            sbc.SYNCHRONIZE_CACHE_10: self._synchronize_cache,
            sbc.SYNCHRONIZE_CACHE_16: self._synchronize_cache,
        }
        for opcode in sbc.READS | sbc.WRITES | sbc.WRITE_VERIFIES | sbc.VERIFIES:
            self._handlers[opcode] = self._block_io

    @property
    def blocks(self) -> int:
        return self._backing.blocks

    @property
    def block_size(self) -> int:
        return self._backing.block_size

    @property
    def reservations(self) -> ReservationsLike:
        return self._pr

    # --- LogicalUnit --------------------------------------------------------

    def execute(self, nexus: Nexus, cdb: bytes, data_out: bytes,
                allocation: int) -> CommandResult:
        with self._lock:
            try:
                return self._execute(nexus, bytes(cdb), data_out)
            except CommandError as exc:
                return CommandResult(Status.CHECK_CONDITION, sense=exc.sense.encode())

    def nexus_lost(self, nexus: Nexus) -> None:
        with self._lock:
            if nexus in self._seen:
                self._queue(nexus, NEXUS_LOSS)

    def lun_reset(self, by: Nexus) -> None:
        with self._lock:
            for nexus in self._seen | {by}:
                self._seen.add(nexus)
                self._queue(nexus, POWER_ON_RESET, first=True)

    def close(self) -> None:
        with self._lock:
            self._backing.close()

    # --- unit attentions ----------------------------------------------------

    def _queue(self, nexus: Nexus, code: tuple[int, int], *, first: bool = False) -> None:
        pending = self._ua.setdefault(nexus, [])
        if code in pending:
            pending.remove(code)
        pending.insert(0 if first else len(pending), code)

    def _pop_ua(self, nexus: Nexus) -> Sense | None:
        pending = self._ua.get(nexus)
        if not pending:
            return None
        asc, ascq = pending.pop(0)
        return Sense(SenseKey.UNIT_ATTENTION, asc, ascq)

    def pending_unit_attentions(self, nexus: Nexus) -> list[tuple[int, int]]:
        return list(self._ua.get(nexus, ()))

    # --- dispatch -----------------------------------------------------------

    def _execute(self, nexus: Nexus, cdb: bytes, data_out: bytes) -> CommandResult:
        if nexus not in self._seen:
            self._seen.add(nexus)
            self._queue(nexus, POWER_ON_RESET, first=True)
        if not cdb:
            raise spc.invalid_opcode()
        opcode = cdb[0]
        if opcode not in _NO_UA:
            ua = self._pop_ua(nexus)
            if ua is not None:
                return CommandResult(Status.CHECK_CONDITION, sense=ua.encode())
        command = self._lookup(cdb)
        spc.check_cdb(cdb, command)
        if opcode not in _NO_PR_CHECK and not self._pr.check_access(nexus, cdb):
            return CommandResult(Status.RESERVATION_CONFLICT)
        return self._handlers[opcode](nexus, cdb, data_out)

    @staticmethod
    def _lookup(cdb: bytes) -> CommandSpec:
        candidates = _BY_OPCODE.get(cdb[0])
        if not candidates:
            raise spc.invalid_opcode()
        if candidates[0].service_action is None:
            return candidates[0]
        if len(cdb) < 2:
            raise invalid_field(0)
        sa = cdb[1] & 0x1F
        found = next((c for c in candidates if c.service_action == sa), None)
        if found is not None:
            return found
        if cdb[0] in (PR_IN, PR_OUT):
            return candidates[0]  # the reservations object answers unknown actions itself
        raise invalid_field(1, 4)

    # --- SPC commands -------------------------------------------------------

    def _request_sense(self, nexus: Nexus, cdb: bytes, data_out: bytes) -> CommandResult:
        sense = self._pop_ua(nexus) or Sense(SenseKey.NO_SENSE)
        data = sense.encode(descriptor=bool(cdb[1] & 0x01))
        return CommandResult(Status.GOOD, spc.cut(data, cdb[4]))

    def _inquiry(self, nexus: Nexus, cdb: bytes, data_out: bytes) -> CommandResult:
        alloc = int.from_bytes(cdb[3:5], "big")
        if not cdb[1] & 0x01:
            if cdb[2]:
                raise invalid_field(2)
            return CommandResult(Status.GOOD, spc.cut(spc.standard_inquiry(), alloc))
        page = spc.vpd_page(cdb[2], serial=self.serial, target_name=self.target_name,
                            target_port=nexus.target_port,
                            max_transfer_blocks=self.max_transfer_blocks)
        return CommandResult(Status.GOOD, spc.cut(page, alloc))

    def _mode_sense(self, nexus: Nexus, cdb: bytes, data_out: bytes) -> CommandResult:
        data = spc.mode_sense(cdb, blocks=self.blocks, block_size=self.block_size,
                              wce=self.sync == "on-flush")
        return CommandResult(Status.GOOD, data)

    def _start_stop(self, nexus: Nexus, cdb: bytes, data_out: bytes) -> CommandResult:
        start, no_flush = cdb[4] & 0x01, cdb[4] & 0x04
        if not start and not no_flush:
            self._backing.flush()
        return CommandResult(Status.GOOD)

    def _read_capacity_10(self, nexus: Nexus, cdb: bytes, data_out: bytes) -> CommandResult:
        if not cdb[8] & 0x01 and any(cdb[2:6]):
            raise invalid_field(2)  # LOGICAL BLOCK ADDRESS without PMI
        return CommandResult(Status.GOOD, sbc.read_capacity_10(self.blocks, self.block_size))

    def _read_capacity_16(self, nexus: Nexus, cdb: bytes, data_out: bytes) -> CommandResult:
        if not cdb[14] & 0x01 and any(cdb[2:10]):
            raise invalid_field(2)
        alloc = int.from_bytes(cdb[10:14], "big")
        data = sbc.read_capacity_16(self.blocks, self.block_size)
        return CommandResult(Status.GOOD, spc.cut(data, alloc))

    def _report_luns(self, nexus: Nexus, cdb: bytes, data_out: bytes) -> CommandResult:
        select = cdb[2]
        if select not in (0x00, 0x01, 0x02):
            raise invalid_field(2)
        luns: Iterable[int]
        if select == 0x01:
            luns = ()  # well-known LUNs only: we have none
        elif self._luns is None:
            luns = (self.lun,)
        elif callable(self._luns):
            luns = self._luns()
        else:
            luns = self._luns
        alloc = int.from_bytes(cdb[6:10], "big")
        return CommandResult(Status.GOOD, spc.cut(spc.report_luns(luns), alloc))

    def _report_opcodes(self, nexus: Nexus, cdb: bytes, data_out: bytes) -> CommandResult:
        return CommandResult(Status.GOOD, spc.report_supported_opcodes(cdb, COMMANDS))

    # --- SBC commands -------------------------------------------------------

    def _block_io(self, nexus: Nexus, cdb: bytes, data_out: bytes) -> CommandResult:
        opcode = cdb[0]
        rng = sbc.decode_block_cdb(cdb)
        if rng.protect:
            raise invalid_field(1, 7)  # no protection information on this medium
        self._backing.check_range(rng.lba, rng.blocks)
        length_field = {6: 4, 10: 7, 12: 6, 16: 10}[_cdb_size(opcode)]
        sbc.check_transfer(rng.blocks, self.max_transfer_blocks, length_field)
        size = rng.blocks * self.block_size
        if opcode in sbc.READS:
            if rng.fua and self.sync == "on-flush":
                self._backing.flush()
            return CommandResult(Status.GOOD, self._backing.read(rng.lba, rng.blocks))
        if opcode in sbc.VERIFIES:
            return self._verify(rng, data_out)
        if opcode in sbc.WRITE_VERIFIES and rng.bytchk > 1:
            raise invalid_field(1, 2)
        if len(data_out) < size:
            raise invalid_field(length_field)  # the initiator sent less than it announced
        if size:
            self._backing.write(rng.lba, memoryview(data_out)[:size])
            if self.sync == "always" or rng.fua or opcode in sbc.WRITE_VERIFIES:
                self._backing.flush()
        return CommandResult(Status.GOOD)

    def _verify(self, rng: sbc.BlockRange, data_out: bytes) -> CommandResult:
        if rng.bytchk == 0 or not rng.blocks:
            return CommandResult(Status.GOOD)  # medium verification: a readable file is fine
        if rng.bytchk == 2:
            raise invalid_field(1, 2)
        expected_size = self.block_size if rng.bytchk == 3 else rng.blocks * self.block_size
        if len(data_out) < expected_size:
            raise invalid_field(1, 2)
        medium = self._backing.read(rng.lba, rng.blocks)
        expected = (data_out[:expected_size] * (rng.blocks if rng.bytchk == 3 else 1))
        if medium != expected:
            offset = next(i for i, (a, b) in enumerate(zip(medium, expected, strict=True))
                          if a != b)
            raise CommandError(Sense(SenseKey.MISCOMPARE, 0x1D, 0x00, information=offset))
        return CommandResult(Status.GOOD)

    def _synchronize_cache(self, nexus: Nexus, cdb: bytes, data_out: bytes) -> CommandResult:
        rng = sbc.decode_block_cdb(cdb)
        self._backing.check_range(rng.lba, rng.blocks)
        self._backing.flush()
        return CommandResult(Status.GOOD)

    # --- persistent reservations --------------------------------------------

    def _outcome(self, nexus: Nexus, outcome: PrOutcome) -> CommandResult:
        attentions = getattr(outcome, "unit_attentions", None)
        if isinstance(attentions, Mapping):
            for target, value in attentions.items():
                for code in _ua_codes(value):
                    self._queue(target, code)
        aborted = frozenset(getattr(outcome, "abort_nexuses", None) or ()) - {nexus}
        for target in aborted:  # TAS=0 in the control mode page
            self._queue(target, COMMANDS_CLEARED)
        data = getattr(outcome, "data", b"")
        return CommandResult(
            outcome.status,
            data_in=bytes(data) if isinstance(data, (bytes, bytearray)) else b"",
            sense=_sense_bytes(getattr(outcome, "sense", b"")),
            abort_nexuses=aborted,
        )

    def _pr_in(self, nexus: Nexus, cdb: bytes, data_out: bytes) -> CommandResult:
        result = self._outcome(nexus, self._pr.pr_in(nexus, cdb))
        alloc = int.from_bytes(cdb[7:9], "big")
        if result.status == Status.GOOD and len(result.data_in) > alloc:
            return CommandResult(result.status, result.data_in[:alloc], result.sense,
                                 result.abort_nexuses)
        return result

    def _pr_out(self, nexus: Nexus, cdb: bytes, data_out: bytes) -> CommandResult:
        before = copy.deepcopy(self._pr)
        outcome = self._pr.pr_out(nexus, cdb, data_out)
        if outcome.status == Status.GOOD:
            try:
                self._persist()
            except OSError:
                # Not durable, so not done: put the previous state back.
                self._pr = before
                raise spc.hardware_error(0x44, 0x00) from None
        return self._outcome(nexus, outcome)

    def _persist(self) -> None:
        directory = self.state_path.parent
        if not self._pr.persistent:
            if self.state_path.exists():
                self.state_path.unlink()
                _fsync_dir(directory)
            return
        temporary = directory / f".{self.state_path.name}.{os.getpid()}.tmp"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(self._pr.to_bytes())
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, self.state_path)
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        _fsync_dir(directory)


def _cdb_size(opcode: int) -> int:
    return {0: 6, 1: 10, 2: 10, 4: 16, 5: 12}[opcode >> 5]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
