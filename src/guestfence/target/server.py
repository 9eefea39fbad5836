"""The target: one iSCSI target name, its logical units, a portal, and its sessions.

:class:`Target` is what every connection (target/session.py) shares: the
session registry (TSIH allocation, reinstatement of a session that logs in
again with the same InitiatorName and ISID), routing of commands to LUNs,
aborts across sessions (PREEMPT AND ABORT, CLEAR TASK SET, resets) and
SendTargets.  LUNs that do not exist answer as SPC-4 asks of a target without
them: INQUIRY with peripheral qualifier 011b, REPORT LUNS (so LUN 0 works for
discovery tools), anything else CHECK CONDITION / LOGICAL UNIT NOT SUPPORTED.

:class:`TargetServer` is the asyncio listener; :func:`serve` runs one until a
stop event (SIGTERM in the CLI), then asks every initiator to log out, waits a
moment and closes what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from guestfence.target.login import SESSION_DOES_NOT_EXIST, LoginConfig, LoginError, SessionParams
from guestfence.target.lun import CommandResult, LogicalUnit, Nexus
from guestfence.target.pdu import (
    CLEAR_TASK_SET,
    LOGICAL_UNIT_RESET,
    TARGET_WARM_RESET,
    TASK_REASSIGN,
    TMF_COMPLETE,
    TMF_NO_LUN,
    TMF_NO_REASSIGN,
    TMF_NOT_SUPPORTED,
    async_logout_request,
    encode_lun,
)
from guestfence.target.session import Session

log = logging.getLogger("guestfence.target")

GOOD, CHECK_CONDITION = 0x00, 0x02
INQUIRY, REQUEST_SENSE, REPORT_LUNS = 0x12, 0x03, 0xA0
LOGOUT_GRACE = 2.0  # seconds initiators get to log out when we shut down
READY_LINE = "guestfence target: ready on {portal}"

# write CDBs: opcode -> (offset, size) of TRANSFER LENGTH in blocks (not WRITE(6): 0 = 256)
_WRITE_TL = {0x2A: (7, 2), 0xAA: (6, 4), 0x8A: (10, 4), 0x2E: (7, 2), 0xAE: (6, 4),
             0x8E: (10, 4), 0x8B: (10, 4)}

LunFactory = Callable[[Path, int, str, Callable[[], list[int]]], LogicalUnit]
"""(backing file, LUN number, target name, all LUN numbers) -> a logical unit."""


def fixed_sense(key: int, asc: int, ascq: int) -> bytes:
    """Fixed-format sense data (SPC-4 4.5.3), current error."""
    return bytes([0x70, 0, key, 0, 0, 0, 0, 10, 0, 0, 0, 0, asc, ascq, 0, 0, 0, 0])


NOT_SUPPORTED_SENSE = fixed_sense(0x05, 0x25, 0x00)  # ILLEGAL REQUEST, LU NOT SUPPORTED
INTERNAL_FAILURE_SENSE = fixed_sense(0x04, 0x44, 0x00)  # HARDWARE ERROR, INTERNAL TARGET FAILURE


def file_lun_factory(path: Path, lun: int, target_name: str,
                     luns: Callable[[], list[int]], sync: str = "always") -> LogicalUnit:
    """The default LUs: target/scsi.py's FileLun, imported here so the rest runs without it."""
    from guestfence.target.scsi import FileLun

    # A stable serial (VPD 0x80) per target and LUN: initiators key multipath on it.
    serial = "GF" + hashlib.sha256(f"{target_name}/{lun}".encode()).hexdigest()[:14].upper()
    return FileLun(path, lun, serial=serial, luns=luns, target_name=target_name,
                   sync="on-flush" if sync == "on-flush" else "always")


class Target:
    def __init__(self, login_config: LoginConfig, luns: Mapping[int, LogicalUnit]) -> None:
        self.login_config = login_config
        self.luns = dict(luns)
        self.sessions: set[Session] = set()
        self._by_port: dict[tuple[str, bytes], Session] = {}
        self._tsih = 0

    # -- sessions -----------------------------------------------------------------------

    def session_established(self, session: Session, params: SessionParams) -> None:
        key = (params.initiator_name.lower(), params.isid)
        old = None if params.discovery else self._by_port.get(key)
        if params.tsih and (old is None or old.params.tsih != params.tsih):
            raise LoginError(SESSION_DOES_NOT_EXIST, f"no session with TSIH {params.tsih}")
        if old is not None and old is not session:
            # Same initiator port logs in again: RFC 7143 6.3.5 session reinstatement.
            log.info("%r: reinstated by a new login from %s", old, session.peer)
            old.terminate()
        if not params.tsih:
            params.tsih = self._new_tsih()
        if not params.discovery:
            self._by_port[key] = session
        self.sessions.add(session)

    def _new_tsih(self) -> int:
        used = {s.params.tsih for s in self.sessions}
        while True:
            self._tsih = self._tsih % 0xFFFF + 1  # 16 bits, never 0
            if self._tsih not in used:
                return self._tsih

    def session_closed(self, session: Session) -> None:
        self.sessions.discard(session)
        key = (session.params.initiator_name.lower(), session.params.isid)
        if self._by_port.get(key) is session:
            del self._by_port[key]
        if session.nexus is not None and not session.params.discovery:
            for lu in self.luns.values():
                lu.nexus_lost(session.nexus)

    # -- commands -----------------------------------------------------------------------

    def lun_exists(self, lun: int) -> bool:
        return lun in self.luns

    def lun_numbers(self) -> list[int]:
        return sorted(self.luns)

    def execute(self, nexus: Nexus, lun: int, cdb: bytes, data_out: bytes,
                allocation: int) -> CommandResult:
        lu = self.luns.get(lun)
        if lu is None:
            return self._no_lun(cdb, allocation)
        try:
            return lu.execute(nexus, cdb, data_out, allocation)
        except Exception:  # a bug in one LU must not take the connection (or target) down
            log.exception("LUN %d failed on CDB %s", lun, cdb[:16].hex())
            return CommandResult(CHECK_CONDITION, sense=INTERNAL_FAILURE_SENSE)

    def _no_lun(self, cdb: bytes, allocation: int) -> CommandResult:
        op = cdb[0]
        if op == INQUIRY and not cdb[1] & 1:
            data = bytes([0x7F, 0, 6, 0x12, 31, 0, 0, 0]) + b"GFENCE  " + b"NO LUN".ljust(16)
            return CommandResult(GOOD, (data + b"0001")[:allocation])
        if op == REPORT_LUNS:
            body = b"".join(encode_lun(n) for n in self.lun_numbers())
            data = len(body).to_bytes(4, "big") + bytes(4) + body
            return CommandResult(GOOD, data[: int.from_bytes(cdb[6:10], "big")])
        if op == REQUEST_SENSE:
            return CommandResult(GOOD, NOT_SUPPORTED_SENSE[:allocation])
        return CommandResult(CHECK_CONDITION, sense=NOT_SUPPORTED_SENSE)

    def clip_write(self, lun: int, cdb: bytes, edtl: int) -> tuple[bytes, int | None]:
        """(CDB, SCSI data-out length) for a write whose EDTL may differ from its CDB.

        RFC 7143 11.4.5: the target reports the difference as residual
        over/underflow, and writes no more than either says; when the CDB asks
        for more than EDTL the CDB's TRANSFER LENGTH is cut to what arrived.
        None: a CDB whose data-out length we do not know (the LU checks it).
        """
        lu = self.luns.get(lun)
        field = _WRITE_TL.get(cdb[0]) if cdb else None
        if lu is None or field is None:
            return cdb, None
        start, size = field
        block = int(getattr(lu, "block_size", 512))
        blocks = int.from_bytes(cdb[start:start + size], "big")
        want = blocks * block
        if want > edtl:
            fit = edtl // block
            cdb = cdb[:start] + fit.to_bytes(size, "big") + cdb[start + size:]
        return cdb, want

    def abort(self, nexuses: Iterable[Nexus] | None, lun: int | None) -> None:
        """Abort the outstanding tasks of ``nexuses`` (None: all) on ``lun`` (None: all)."""
        wanted = None if nexuses is None else frozenset(nexuses)
        for s in list(self.sessions):
            if wanted is None or s.nexus in wanted:
                s.abort_lun(lun)

    def task_management(self, function: int, lun: int, by: Nexus) -> int:
        """The task management functions that reach beyond one session; the response code."""
        if function in (CLEAR_TASK_SET, LOGICAL_UNIT_RESET):
            if lun not in self.luns:
                return TMF_NO_LUN
            self.abort(None, lun)
            if function == LOGICAL_UNIT_RESET:
                self.luns[lun].lun_reset(by)
            return TMF_COMPLETE
        if function == TARGET_WARM_RESET:
            self.abort(None, None)
            for lu in self.luns.values():
                lu.lun_reset(by)
            return TMF_COMPLETE
        # ERL 0 has no task reassignment; CLEAR ACA (no NACA support), cold reset: not offered
        return TMF_NO_REASSIGN if function == TASK_REASSIGN else TMF_NOT_SUPPORTED

    def send_targets(self, which: str, session: Session) -> list[tuple[str, str]]:
        name = self.login_config.target_name
        if which not in ("All", "") and which.lower() != name.lower():
            return []
        sock = session.writer.get_extra_info("sockname")
        host, port = (sock[0], sock[1]) if isinstance(sock, tuple) else ("127.0.0.1", 3260)
        host = f"[{host}]" if ":" in host else host
        return [("TargetName", name),
                ("TargetAddress", f"{host}:{port},{self.login_config.tpgt}")]

    def close(self) -> None:
        for lu in self.luns.values():
            lu.close()


class TargetServer:
    """The listening socket; one :class:`Session` task per accepted connection."""

    def __init__(self, target: Target, host: str, port: int) -> None:
        self.target = target
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port,
                                                  reuse_address=True)
        sock = self._server.sockets[0].getsockname()
        self.port = sock[1]  # port 0: the kernel chose one

    @property
    def portal(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:  # notice initiators that vanished without a FIN
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = Session(self.target, reader, writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await session.run()
        except Exception:  # last line of defence: one connection's bug stays there
            log.exception("%r: unexpected error", session)
            session.terminate()
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def stop(self, grace: float = LOGOUT_GRACE) -> None:
        if self._server is not None:
            self._server.close()
        sessions = [s for s in self.target.sessions if not s.closed]
        for s in sessions:  # Async Message event 1: please log out
            s.send(async_logout_request(time2retain=0))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while any(not s.closed for s in sessions) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for s in list(self.target.sessions):
            s.terminate()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)
        if self._server is not None:
            await self._server.wait_closed()
        self.target.close()


async def serve(target: Target, host: str, port: int, stop: asyncio.Event,
                on_ready: Callable[[TargetServer], None] | None = None,
                grace: float = LOGOUT_GRACE) -> None:
    server = TargetServer(target, host, port)
    await server.start()
    log.info(READY_LINE.format(portal=server.portal))
    if on_ready is not None:
        on_ready(server)
    try:
        await stop.wait()
    finally:
        log.info("guestfence target: stopping, logging out %d session(s)", len(target.sessions))
        await server.stop(grace)
