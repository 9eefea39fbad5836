"""Is this host in a quorate partition of the host cluster? corosync's quorum API via ctypes.

In host-cluster (cpg) mode a surviving member answers for the guests of a
host that left the group. A host cut off from the ring sees itself alone, so
without this check it would answer (fail) for every other host's guests, and
guests that still reach it would take its "fail" before the real owner's
success (fence_xvm takes the first answer). With it, a host answers for guests
it does not own only while corosync says its partition is quorate; its own
guests it still executes (it acts locally and verifies).

Quorum is corosync's (votequorum behind ``libquorum.so.5``), never ours:

:class:`QuorumGate`
    pure, thread-safe state: the last quorum notification (quorate, ring) and
    the ring CPG last reported. A CPG configuration change with ``NODEDOWN``
    announces a new ring; until corosync has told the quorum of that ring
    (the two arrive on separate IPC channels, in either order) the gate stays
    closed, so the instant after a partition never answers on old news.
:class:`QuorumWatch`
    the ctypes binding on an asyncio loop: ``quorum_initialize`` with a
    notification callback, ``quorum_trackstart(CS_TRACK_CURRENT|CS_TRACK_CHANGES)``,
    ``quorum_fd_get`` + ``quorum_dispatch(CS_DISPATCH_ALL)`` in
    ``loop.add_reader``, ``quorum_getquorate`` at start, ``quorum_finalize``;
    reconnects with backoff when corosync goes away (closed meanwhile).

Facts from corosync 3.1.7's ``quorum.h``/``corotypes.h`` and its sources
(exec/vsf_quorum.c, exec/votequorum.c): ``quorum_handle_t`` is ``uint64_t``;
``quorum_callbacks_t`` is one function pointer ``void (*)(quorum_handle_t,
uint32_t quorate, uint64_t ring_seq, uint32_t view_list_entries, uint32_t
*view_list)``; ``quorum_initialize(handle *, callbacks *, uint32_t *quorum_type)``
gives ``QUORUM_FREE`` (0: no quorum provider configured, corosync then reports
quorate forever and notifies no ring change) or ``QUORUM_SET`` (1); votequorum
notifies at the end of every membership sync (and on any quorum change) with
the same totem ring sequence CPG's totem callback carries.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
from dataclasses import dataclass

from guestfence.tracking.corosync_ipc import (
    CS_DISPATCH_ALL,
    CS_OK,
    CorosyncError,
    ReconnectingClient,
    check,
    load_typed_library,
    unreachable_message,
)
from guestfence.tracking.corosync_ipc import cs_error_t as cs_error_t  # re-exported

log = logging.getLogger("guestfenced")

QUORUM_FREE = 0
QUORUM_SET = 1
CS_TRACK_CURRENT = 0x01
CS_TRACK_CHANGES = 0x02

quorum_handle_t = ctypes.c_uint64
QuorumNotifyFn = ctypes.CFUNCTYPE(None, quorum_handle_t, ctypes.c_uint32, ctypes.c_uint64,
                                  ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32))


class QuorumCallbacks(ctypes.Structure):
    """``quorum_callbacks_t``: the v0 model's one notification function."""

    _fields_ = [("quorum_notify_fn", QuorumNotifyFn)]


assert ctypes.sizeof(QuorumCallbacks) == 8


class QuorumError(CorosyncError):
    """A libquorum call failed; ``code`` is the ``cs_error_t``."""


class QuorumUnreachable(QuorumError):
    """``quorum_initialize`` failed: the same words as CPG's, the same causes."""

    def __init__(self, code: int) -> None:
        super().__init__("quorum_initialize", code)
        self.args = (unreachable_message(code),)


_lib: ctypes.CDLL | None = None


def load_library() -> ctypes.CDLL:
    """``libquorum.so.5`` with typed signatures; QuorumError when it is not installed."""
    global _lib
    if _lib is not None:
        return _lib
    handle, ptr = quorum_handle_t, ctypes.POINTER
    signatures: dict[str, list[type]] = {
        "quorum_initialize": [ptr(handle), ptr(QuorumCallbacks), ptr(ctypes.c_uint32)],
        "quorum_finalize": [handle],
        "quorum_fd_get": [handle, ptr(ctypes.c_int)],
        "quorum_dispatch": [handle, ctypes.c_int],
        "quorum_getquorate": [handle, ptr(ctypes.c_int)],
        "quorum_trackstart": [handle, ctypes.c_uint],
    }
    _lib = load_typed_library("quorum", "libquorum.so.5", "libquorum5", signatures,
                              QuorumError)
    return _lib


# -- the gate (pure) -----------------------------------------------------------------


@dataclass(frozen=True)
class QuorumView:
    quorate: bool
    ring: int
    nodes: tuple[int, ...]


class QuorumGate:
    """Whether this host may answer for guests it does not own. Thread-safe.

    Closed until corosync has told us the quorum at least once, while the
    quorum connection is lost, while CPG's newest ring is newer than the last
    quorum notification, and of course while not quorate. ``free`` (no quorum
    provider in corosync.conf): corosync cannot tell a partition from a
    cluster, so the gate stays open (the answers are "fail" or a confirmed
    fence anyway) and a warning says so once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.free = False
        self._view: QuorumView | None = None
        self._cpg_ring = -1
        self._ring_pending = False  # a NODEDOWN was seen; its ring's number not yet
        self._open_logged: bool | None = None

    def provider(self, quorum_type: int) -> None:
        with self._lock:
            self.free = quorum_type == QUORUM_FREE
        if quorum_type == QUORUM_FREE:
            log.warning("host cluster: corosync has no quorum provider: a host cut off "
                        "from the ring still answers (fail) for other hosts' guests; "
                        "configure quorum { provider: corosync_votequorum }")

    def notified(self, quorate: bool, ring: int, nodes: tuple[int, ...] = ()) -> None:
        with self._lock:
            self._view = QuorumView(quorate, ring, nodes)
        log.info("host cluster: quorum %s (ring %d, nodes %s)",
                 "quorate" if quorate else "NOT quorate", ring,
                 ",".join(map(str, nodes)) or "-")
        self._log_change()

    def lost(self) -> None:
        """The quorum connection is gone: nothing is known until it is back."""
        with self._lock:
            self._view = None
        self._log_change()

    def cpg_ring(self, seq: int) -> None:
        """CPG's totem callback: the ring the group's membership belongs to."""
        with self._lock:
            self._cpg_ring = max(self._cpg_ring, seq)
            self._ring_pending = False
        self._log_change()

    def cpg_nodes_down(self) -> None:
        """A CPG configuration change with NODEDOWN: a new ring, number still to come."""
        with self._lock:
            self._ring_pending = True
        self._log_change()

    def cpg_lost(self) -> None:
        """The CPG connection is gone: its ring is unknown until it joins again."""
        self.cpg_nodes_down()

    def may_answer_for_others(self) -> bool:
        return self.why_closed() is None

    def why_closed(self) -> str | None:
        """None when open, else the reason (for the log)."""
        with self._lock:
            if self.free:
                return None
            view = self._view
            if view is None:
                return "quorum unknown (no word from corosync's quorum service)"
            if self._ring_pending or view.ring < self._cpg_ring:
                return "waiting for the quorum of the new membership"
            if not view.quorate:
                return f"this host's partition is not quorate (ring {view.ring})"
            return None

    def _log_change(self) -> None:
        why = self.why_closed()
        is_open = why is None
        if is_open == self._open_logged:
            return
        self._open_logged = is_open
        if is_open:
            log.info("host cluster: quorate: this host answers for departed hosts' guests "
                     "when it is the responder")
        else:
            log.warning("host cluster: %s: silent for other hosts' guests, acting only for "
                        "its own", why)


# -- the binding ----------------------------------------------------------------------


class QuorumHandle:
    """One libquorum handle; the callback runs inside :meth:`dispatch`."""

    def __init__(self, gate: QuorumGate) -> None:
        self.lib = load_library()
        self.gate = gate
        self._callbacks = QuorumCallbacks(QuorumNotifyFn(self._notify))  # kept alive
        self.handle = quorum_handle_t(0)
        self.fd = -1
        self.quorum_type = QUORUM_SET
        self.closed = True

    def open(self) -> None:
        qtype = ctypes.c_uint32(0)
        rc = self.lib.quorum_initialize(ctypes.byref(self.handle), ctypes.byref(self._callbacks),
                                        ctypes.byref(qtype))
        if rc != CS_OK:
            raise QuorumUnreachable(rc)
        self.closed = False
        try:
            self.quorum_type = qtype.value
            fd = ctypes.c_int(-1)
            self._check("quorum_fd_get", self.lib.quorum_fd_get(self.handle, ctypes.byref(fd)))
            self.fd = fd.value
            quorate = ctypes.c_int(0)
            self._check("quorum_getquorate",
                        self.lib.quorum_getquorate(self.handle, ctypes.byref(quorate)))
            self._check("quorum_trackstart", self.lib.quorum_trackstart(
                self.handle, CS_TRACK_CURRENT | CS_TRACK_CHANGES))
        except QuorumError:
            self.finalize()
            raise
        self.gate.provider(self.quorum_type)
        # the ring comes with the CS_TRACK_CURRENT notification; until then the gate waits
        log.info("host cluster: quorum service reached (%s)",
                 "quorate" if quorate.value else "not quorate")

    @staticmethod
    def _check(func: str, rc: int) -> None:
        check(QuorumError, func, rc)

    def dispatch(self) -> int:
        return int(self.lib.quorum_dispatch(self.handle, CS_DISPATCH_ALL))

    def finalize(self) -> None:
        if not self.closed:
            self.closed = True
            self.lib.quorum_finalize(self.handle)

    def _notify(self, _handle: int, quorate: int, ring_seq: int, entries: int,
                view: ctypes._Pointer[ctypes.c_uint32]) -> None:
        try:
            nodes = tuple(int(view[i]) for i in range(entries)) if view else ()
            self.gate.notified(bool(quorate), int(ring_seq), nodes)
        except Exception:  # a callback must never raise into C
            log.exception("quorum: notification callback failed")


class QuorumWatch(ReconnectingClient[QuorumHandle]):
    """A :class:`QuorumHandle` on an asyncio loop feeding a :class:`QuorumGate`."""

    LOG_NAME = "quorum"
    ERROR = QuorumError

    def __init__(self, gate: QuorumGate | None = None) -> None:
        super().__init__()
        self.gate = gate or QuorumGate()

    async def start(self) -> None:
        """Connect; QuorumError (saying what to check) when corosync is not reachable."""
        self._loop = asyncio.get_running_loop()
        self._connect()

    def _connect(self) -> None:
        handle = QuorumHandle(self.gate)
        handle.open()
        self._watch(handle)

    def _lost(self) -> None:
        self.gate.lost()

    async def stop(self) -> None:
        await self._cancel_tasks()
        self._drop()
