"""One iSCSI connection (= one session: MaxConnections=1, ErrorRecoveryLevel=0) on asyncio.

The connection logs in through :class:`LoginMachine`, then runs the full
feature phase: SCSI commands with immediate, unsolicited and solicited (R2T)
data-out, Data-In sized by the initiator's MaxRecvDataSegmentLength, NOP,
Text (SendTargets), Logout and Task Management.

Ordering: non-immediate commands are numbered by CmdSN and handed to the
logical unit in that order (``_queue``), each once all its data-out arrived.
Logical units run synchronously on the event loop thread: one command at a
time for the whole target, which is what makes PREEMPT AND ABORT atomic (the
tasks it aborts are removed, on every session, before its response is
sent).  Aborted tasks vanish without a response (TAS=0); Data-Out that still
arrives for them is dropped.

A malformed PDU, a digest error or a protocol violation closes this
connection only; the caller logs the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from guestfence.target.login import LoginConfig, LoginMachine, SessionParams
from guestfence.target.lun import CommandResult, Nexus
from guestfence.target.pdu import (
    ABORT_TASK,
    ABORT_TASK_SET,
    RESERVED_TAG,
    TMF_COMPLETE,
    TMF_NO_LUN,
    TMF_NO_TASK,
    Op,
    Pdu,
    PduReader,
    ProtocolError,
    RejectReason,
    build_text,
    data_in,
    extended_cdb,
    logout_response,
    nop_in,
    parse_text,
    r2t,
    reject,
    scsi_response,
    task_mgmt_response,
    text_response,
)

log = logging.getLogger("guestfence.target")

CMD_WINDOW = 64  # commands the initiator may have in flight (MaxCmdSN - ExpCmdSN + 1)
LOGIN_TIMEOUT = 15.0
READ_CHUNK = 262144
LOGIN_MAX_DATA = 65536  # text during login is small; bound what a stranger can make us hold

CHECK_CONDITION = 0x02
# fixed-format sense: ABORTED COMMAND, 4B/00 DATA PHASE ERROR
DATA_PHASE_ERROR = bytes([0x70, 0, 0x0B, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x4B, 0, 0, 0, 0, 0])


class TargetContext(Protocol):
    """What a connection needs from the target (server.Target)."""

    login_config: LoginConfig

    def session_established(self, session: Session, params: SessionParams) -> None: ...
    def session_closed(self, session: Session) -> None: ...
    def execute(self, nexus: Nexus, lun: int, cdb: bytes, data_out: bytes,
                allocation: int) -> CommandResult: ...
    def lun_exists(self, lun: int) -> bool: ...
    def clip_write(self, lun: int, cdb: bytes, edtl: int) -> tuple[bytes, int | None]: ...
    def abort(self, nexuses: Iterable[Nexus] | None, lun: int | None) -> None: ...
    def task_management(self, function: int, lun: int, by: Nexus) -> int: ...
    def send_targets(self, which: str, session: Session) -> list[tuple[str, str]]: ...


def sn_lt(a: int, b: int) -> bool:
    """Serial number arithmetic (RFC 1982) on 32 bits: a < b."""
    return a != b and ((b - a) & 0xFFFFFFFF) < 0x80000000


@dataclass
class Task:
    itt: int
    lun_raw: bytes
    lun: int
    cdb: bytes
    edtl: int
    read: bool
    write: bool
    buf: bytearray = field(default_factory=bytearray)
    unsolicited_open: bool = False  # unsolicited Data-Out may still come (F not yet seen)
    next_offset: int = 0  # where the next R2T starts
    r2ts: dict[int, list[int]] = field(default_factory=dict)  # TTT -> [offset, len, got, DataSN]
    r2tsn: int = 0
    unsolicited_datasn: int = 0

    @property
    def ready(self) -> bool:
        return not self.write or (
            not self.unsolicited_open and not self.r2ts and self.next_offset >= self.edtl
        )


class Session:
    def __init__(self, target: TargetContext, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.target = target
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.framer = PduReader(LOGIN_MAX_DATA)
        self.login = LoginMachine(target.login_config, on_complete=self._established)
        self.params = SessionParams()
        self.nexus: Nexus | None = None
        self.statsn = 0
        self.expcmdsn = 0
        self.closed = False
        self._ffp = False
        self._tasks: dict[int, Task] = {}
        self._queue: deque[Task] = deque()
        self._holdback: dict[int, Pdu] = {}
        self._next_ttt = 1
        self._text = b""

    def __repr__(self) -> str:
        p = self.params if self._ffp else self.login.params  # mid-login: what we know so far
        who = p.initiator_name or "?"
        return f"Session({who} isid={p.isid.hex()} tsih={p.tsih} {self.peer})"

    # -- I/O ------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while not self.closed:
                timeout = None if self._ffp else LOGIN_TIMEOUT
                chunk = await asyncio.wait_for(self.reader.read(READ_CHUNK), timeout)
                if not chunk:
                    log.info("%r: connection closed by the initiator", self)
                    break
                for pdu in self.framer.feed(chunk):
                    self._dispatch(pdu)
                    if self.closed:
                        break
                if not self.closed:  # after a logout the transport is already closing
                    await self.writer.drain()
        except ProtocolError as e:
            log.warning("%r: protocol error, dropping the connection: %s", self, e)
        except TimeoutError:
            log.warning("%r: login not finished in %g s, dropping", self, LOGIN_TIMEOUT)
        except (ConnectionError, OSError) as e:
            log.info("%r: connection lost: %s", self, e)
        finally:
            await self.close()

    async def close(self) -> None:
        self.terminate()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.drain()
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()

    def terminate(self) -> None:
        """End the session now (reinstatement, shutdown): tasks are dropped, LUs told."""
        if self.closed:
            return
        self.closed = True
        self._tasks.clear()
        self._queue.clear()
        self._holdback.clear()
        if self._ffp:
            self.target.session_closed(self)
        if not self.writer.is_closing():
            self.writer.close()  # flushes what is buffered (a Logout Response) first

    def send(self, pdu: Pdu, *, status: bool = True) -> None:
        """Number and queue one PDU; ``status``: it carries StatSN (and advances it)."""
        if self.closed:
            return
        pdu.set_sn(self.statsn if status or pdu.opcode == Op.R2T else 0,
                   self.expcmdsn, self.expcmdsn + CMD_WINDOW - 1)
        if status:
            self.statsn = (self.statsn + 1) & 0xFFFFFFFF
        self.writer.write(pdu.encode(header_digest=self.params.header_digest,
                                     data_digest=self.params.data_digest))

    # -- login --------------------------------------------------------------------------

    def _established(self, params: SessionParams) -> None:
        self.params = params
        self.target.session_established(self, params)  # sets the TSIH, may reinstate
        self.nexus = Nexus(params.initiator_name.lower(), params.isid,
                           self.target.login_config.tpgt)

    def _dispatch(self, pdu: Pdu) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%r: got %s flags=0x%02x itt=0x%08x len=%d", self, pdu.name(), pdu.flags,
                      pdu.itt, len(pdu.data))
        if not self._ffp:
            self._login(pdu)
        elif pdu.opcode == Op.DATA_OUT:
            self._data_out(pdu)
        elif pdu.opcode in (Op.SCSI_CMD, Op.NOP_OUT, Op.TASK_MGMT, Op.TEXT, Op.LOGOUT):
            self._numbered(pdu)
        else:  # Login in FFP, SNACK (ERL 0)
            self.send(reject(RejectReason.PROTOCOL_ERROR, pdu.bhs))

    def _login(self, pdu: Pdu) -> None:
        if pdu.opcode != Op.LOGIN:
            raise ProtocolError(f"{pdu.name()} before login")
        if self.login.stage is None:  # first request: the initiator proposes the numbering
            self.statsn = pdu.expstatsn
            self.expcmdsn = pdu.cmdsn
        rsp = self.login.handle(pdu)
        self.send(rsp)
        if self.login.failed:
            log.warning("%r: login failed, status 0x%02x%02x", self, rsp.bhs[36], rsp.bhs[37])
            self.terminate()
        elif self.login.done:
            self._ffp = True
            p = self.params
            self.framer.max_data = p.max_recv_data_segment_length
            self.framer.header_digest = p.header_digest
            self.framer.data_digest = p.data_digest
            log.info("%r: logged in (%s session)", self, p.session_type)

    # -- CmdSN ordering -----------------------------------------------------------------

    def _numbered(self, pdu: Pdu) -> None:
        if pdu.immediate:
            self._command(pdu)
            return
        sn = pdu.cmdsn
        if sn == self.expcmdsn:
            self.expcmdsn = (sn + 1) & 0xFFFFFFFF
            self._command(pdu)
            while self.expcmdsn in self._holdback and not self.closed:
                nxt = self._holdback.pop(self.expcmdsn)
                self.expcmdsn = (self.expcmdsn + 1) & 0xFFFFFFFF
                self._command(nxt)
        elif sn_lt(self.expcmdsn, sn) and sn_lt(sn, self.expcmdsn + CMD_WINDOW):
            self._holdback[sn] = pdu  # a gap: wait for the missing CmdSN
        else:  # outside the window: RFC 7143 4.2.2.1 says to ignore it silently
            log.debug("%r: CmdSN %d outside window at %d, ignored", self, sn, self.expcmdsn)

    def _command(self, pdu: Pdu) -> None:
        op = pdu.opcode
        if op == Op.SCSI_CMD:
            self._scsi_command(pdu)
        elif op == Op.NOP_OUT:
            if pdu.itt != RESERVED_TAG:  # a ping: echo its data
                self.send(nop_in(pdu.itt, lun=pdu.lun_raw, data=pdu.data))
        elif op == Op.TASK_MGMT:
            self._task_mgmt(pdu)
        elif op == Op.TEXT:
            self._text_request(pdu)
        elif op == Op.LOGOUT:
            self._abort_tasks(lambda t: True)
            self.send(logout_response(pdu.itt))
            log.info("%r: logged out", self)
            self.terminate()

    # -- SCSI commands ------------------------------------------------------------------

    def _scsi_command(self, pdu: Pdu) -> None:
        if self.params.discovery:
            self.send(reject(RejectReason.NOT_SUPPORTED, pdu.bhs))
            return
        if pdu.itt in self._tasks:
            self.send(reject(RejectReason.TASK_IN_PROGRESS, pdu.bhs))
            return
        cdb = bytes(pdu.bhs[32:48]) + extended_cdb(pdu.ahs)
        task = Task(pdu.itt, pdu.lun_raw, pdu.lun, cdb, pdu.word(20),
                    read=bool(pdu.flags & 0x40), write=bool(pdu.flags & 0x20))
        data = pdu.data
        p = self.params
        if data and (not task.write or not p.immediate_data or len(data) > p.first_burst_length
                     or len(data) > task.edtl):
            self.send(reject(RejectReason.PROTOCOL_ERROR, pdu.bhs))
            return
        if task.write:
            task.buf = bytearray(task.edtl)
            task.buf[: len(data)] = data
            task.next_offset = len(data)
            # F=0: unsolicited Data-Out follows (only allowed with InitialR2T=No)
            task.unsolicited_open = not pdu.final and not p.initial_r2t
        self._tasks[task.itt] = task
        self._queue.append(task)
        self._issue_r2ts(task)
        self._run_ready()

    def _data_out(self, pdu: Pdu) -> None:
        task = self._tasks.get(pdu.itt)
        if task is None or not task.write:
            log.debug("%r: Data-Out for unknown task 0x%08x dropped", self, pdu.itt)
            return  # an aborted task's data still in flight
        offset, data, ttt = pdu.word(40), pdu.data, pdu.ttt
        end = offset + len(data)
        if end > task.edtl:
            raise ProtocolError(f"Data-Out beyond the expected length ({end} > {task.edtl})")
        datasn = pdu.word(36)
        if ttt == RESERVED_TAG:
            if not task.unsolicited_open or end > self.params.first_burst_length:
                raise ProtocolError("unsolicited Data-Out not allowed here")
            if datasn != task.unsolicited_datasn:
                self._data_sn_error(task, datasn, task.unsolicited_datasn)
                return
            task.unsolicited_datasn += 1
            if pdu.final:
                task.unsolicited_open = False
                task.next_offset = max(task.next_offset, end)
        else:
            burst = task.r2ts.get(ttt)
            if burst is None or offset < burst[0] or end > burst[0] + burst[1]:
                raise ProtocolError(f"Data-Out outside R2T 0x{ttt:08x}")
            if datasn != burst[3]:  # DataSN restarts at 0 for every R2T
                self._data_sn_error(task, datasn, burst[3])
                return
            burst[3] += 1
            burst[2] += len(data)
            if pdu.final or burst[2] >= burst[1]:
                del task.r2ts[ttt]
        task.buf[offset:end] = data
        self._issue_r2ts(task)
        self._run_ready()

    def _data_sn_error(self, task: Task, got: int, expected: int) -> None:
        """A lost or reordered Data-Out: ERL 0 cannot recover the data, so the command fails
        (ABORTED COMMAND / DATA PHASE ERROR) but the session, and its other tasks, go on."""
        log.warning("%r: task 0x%08x: DataSN %d, expected %d; failing the command",
                    self, task.itt, got, expected)
        self._abort_tasks(lambda t: t is task)
        self.send(scsi_response(task.itt, CHECK_CONDITION, sense=DATA_PHASE_ERROR))
        self._run_ready()

    def _issue_r2ts(self, task: Task) -> None:
        p = self.params
        if not task.write or task.unsolicited_open:
            return
        while len(task.r2ts) < p.max_outstanding_r2t and task.next_offset < task.edtl:
            length = min(p.max_burst_length, task.edtl - task.next_offset)
            ttt = self._next_ttt
            self._next_ttt = (ttt % 0xFFFFFFFE) + 1  # never the reserved 0xffffffff, never 0
            task.r2ts[ttt] = [task.next_offset, length, 0, 0]
            self.send(r2t(task.itt, task.lun_raw, ttt, task.r2tsn, task.next_offset, length),
                      status=False)
            task.r2tsn += 1
            task.next_offset += length

    def _run_ready(self) -> None:
        """Hand queued commands to their LU in order while the head has all its data."""
        while self._queue and self._queue[0].ready and not self.closed:
            task = self._queue.popleft()
            del self._tasks[task.itt]
            assert self.nexus is not None
            cdb, data_out, over, under = task.cdb, bytes(task.buf), 0, 0
            if task.write:
                cdb, want = self.target.clip_write(task.lun, cdb, task.edtl)
                if want is not None and want > task.edtl:
                    over = want - task.edtl
                elif want is not None:
                    under, data_out = task.edtl - want, data_out[:want]
            result = self.target.execute(self.nexus, task.lun, cdb, data_out,
                                         task.edtl if task.read else 0)
            if result.abort_nexuses:  # PREEMPT AND ABORT: before its own response goes out
                self.target.abort(result.abort_nexuses, None)
            self._respond(task, result, over, under)

    def _respond(self, task: Task, result: CommandResult, overflow: int = 0,
                 underflow: int = 0) -> None:
        data = result.data_in if task.read else b""
        if task.read:
            overflow = max(0, len(result.data_in) - task.edtl)
            data = data[: task.edtl]
            underflow = task.edtl - len(data)
        p = self.params
        datasn = 0
        collapse = not result.sense
        offset = 0
        while offset < len(data):
            burst_end = min(len(data), offset + p.max_burst_length)
            while offset < burst_end:
                chunk = data[offset: min(burst_end, offset + p.max_send_data_segment_length)]
                last = offset + len(chunk) == len(data)
                end_of_burst = offset + len(chunk) == burst_end
                with_status = last and collapse
                self.send(data_in(task.itt, task.lun_raw, chunk, offset=offset, datasn=datasn,
                                  final=end_of_burst,
                                  status=result.status if with_status else None,
                                  underflow=underflow, overflow=overflow),
                          status=with_status)
                datasn += 1
                offset += len(chunk)
        if data and collapse:
            return
        self.send(scsi_response(task.itt, result.status, sense=result.sense,
                                underflow=underflow, overflow=overflow,
                                expdatasn=datasn or task.r2tsn))

    # -- aborts and task management -----------------------------------------------------

    def abort_lun(self, lun: int | None) -> None:
        """Drop the tasks of ``lun`` (None: all); called by the target for any session."""
        self._abort_tasks(lambda t: lun is None or t.lun == lun)

    def _abort_tasks(self, which: Callable[[Task], bool]) -> None:
        doomed = [t for t in self._tasks.values() if which(t)]
        for t in doomed:
            del self._tasks[t.itt]
            self._queue.remove(t)
        if doomed:
            log.info("%r: aborted %d task(s)", self, len(doomed))

    def _task_mgmt(self, pdu: Pdu) -> None:
        fn, lun = pdu.flags & 0x7F, pdu.lun
        assert self.nexus is not None
        response = TMF_COMPLETE
        if fn == ABORT_TASK:
            task = self._tasks.get(pdu.word(20))
            if task is not None:
                self._abort_tasks(lambda t: t is task)
            elif pdu.word(32) in self._holdback:  # not arrived in order yet: never run it
                del self._holdback[pdu.word(32)]
            else:
                response = TMF_NO_TASK
        elif fn == ABORT_TASK_SET:
            if self.target.lun_exists(lun):
                self.abort_lun(lun)  # this I_T nexus only
            else:
                response = TMF_NO_LUN
        else:  # the rest reach every session of the LU or the target
            response = self.target.task_management(fn, lun, self.nexus)
        self.send(task_mgmt_response(pdu.itt, response))
        self._run_ready()

    # -- text ---------------------------------------------------------------------------

    def _text_request(self, pdu: Pdu) -> None:
        self._text += pdu.data
        if len(self._text) > LOGIN_MAX_DATA:
            raise ProtocolError("text request too long")
        if pdu.flags & 0x40 and not pdu.final:  # C bit: more text follows
            self.send(text_response(pdu.itt, b"", final=False, ttt=0x1))
            return
        pairs, self._text = parse_text(self._text), b""
        answer: list[tuple[str, str]] = []
        for key, value in pairs:
            if key == "SendTargets":
                answer += self.target.send_targets(value, self)
            else:
                answer.append((key, "NotUnderstood"))
        self.send(text_response(pdu.itt, build_text(answer), lun=pdu.lun_raw))

