"""Corosync CPG (closed process groups) through ctypes on Debian's ``libcpg.so.4``.

No Python binding of libcpg exists on PyPI or in Debian, so this module binds
the handful of C calls guestfence needs. Membership, ordering and failure
detection are corosync's: nothing here decides who is a member.

:class:`CpgHandle`
    one libcpg handle joined to one group: blocking C calls, callbacks run
    inside :meth:`CpgHandle.dispatch` on the calling thread.
:class:`CpgMember`
    the asyncio glue: the handle's fd in ``loop.add_reader``, ordered sending
    with ``CS_ERR_TRY_AGAIN`` retries, and reconnection with backoff when
    corosync goes away (``cpg_dispatch`` returns ``CS_ERR_LIBRARY``).

Facts from corosync 3.1.7's ``cpg.h``/``corotypes.h`` (sizes checked with gcc):
every call returns ``cs_error_t`` where ``CS_OK`` is 1 (not 0); struct sizes are
asserted at import. A client must share corosync's network namespace (libqb
uses abstract unix sockets) AND its mount namespace (ring buffers in /dev/shm).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from guestfence.tracking.corosync_ipc import (
    CS_DISPATCH_ALL,
    CS_ERR_LIBRARY,
    CS_ERR_NOT_EXIST,
    CS_ERR_TRY_AGAIN,
    CS_ERROR_NAMES,
    CS_OK,
    CorosyncError,
    ReconnectingClient,
    check,
    cs_error_t,
    error_name,
    load_typed_library,
    unreachable_message,
)

__all__ = ["CS_DISPATCH_ALL", "CS_ERROR_NAMES", "CS_ERR_LIBRARY", "CS_ERR_NOT_EXIST",
           "CS_ERR_TRY_AGAIN", "CS_OK", "Address", "CorosyncUnreachable", "CpgError",
           "CpgHandle", "CpgMember", "cs_error_t", "group_name", "load_library"]

log = logging.getLogger("guestfenced")

# -- cpg.h --------------------------------------------------------------------------
CPG_TYPE_AGREED = 2
CPG_MODEL_V1 = 1
CPG_MODEL_V1_DELIVER_INITIAL_TOTEM_CONF = 0x01
CPG_MAX_NAME_LENGTH = 128
CPG_MEMBERS_MAX = 128
REASON_NAMES = {0: "UNDEFINED", 1: "JOIN", 2: "LEAVE", 3: "NODEDOWN", 4: "NODEUP",
                5: "PROCDOWN"}

cpg_handle_t = ctypes.c_uint64


class CpgName(ctypes.Structure):
    """``struct cpg_name``: a length-counted name, no NUL needed."""

    _fields_ = [("length", ctypes.c_uint32), ("value", ctypes.c_char * CPG_MAX_NAME_LENGTH)]


class CpgAddress(ctypes.Structure):
    """``struct cpg_address``: one member process."""

    _fields_ = [("nodeid", ctypes.c_uint32), ("pid", ctypes.c_uint32),
                ("reason", ctypes.c_uint32)]


class CpgRingId(ctypes.Structure):
    """``struct cpg_ring_id`` (4 bytes of padding after nodeid), passed by value."""

    _fields_ = [("nodeid", ctypes.c_uint32), ("seq", ctypes.c_uint64)]


class IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


DeliverFn = ctypes.CFUNCTYPE(None, cpg_handle_t, ctypes.POINTER(CpgName), ctypes.c_uint32,
                             ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t)
ConfchgFn = ctypes.CFUNCTYPE(None, cpg_handle_t, ctypes.POINTER(CpgName),
                             ctypes.POINTER(CpgAddress), ctypes.c_size_t,
                             ctypes.POINTER(CpgAddress), ctypes.c_size_t,
                             ctypes.POINTER(CpgAddress), ctypes.c_size_t)
TotemConfchgFn = ctypes.CFUNCTYPE(None, cpg_handle_t, CpgRingId, ctypes.c_uint32,
                                  ctypes.POINTER(ctypes.c_uint32))


class CpgModelV1Data(ctypes.Structure):
    """``cpg_model_v1_data_t``."""

    _fields_ = [("model", ctypes.c_int), ("cpg_deliver_fn", DeliverFn),
                ("cpg_confchg_fn", ConfchgFn), ("cpg_totem_confchg_fn", TotemConfchgFn),
                ("flags", ctypes.c_uint)]


# The C sizes (gcc, x86_64/aarch64 LP64): a mismatch would corrupt memory silently.
STRUCT_SIZES = {CpgName: 132, CpgAddress: 12, CpgRingId: 16, IoVec: 16, CpgModelV1Data: 40}
for _struct, _size in STRUCT_SIZES.items():
    assert ctypes.sizeof(_struct) == _size, f"{_struct.__name__}: {ctypes.sizeof(_struct)}"
assert CpgModelV1Data.flags.offset == 32


class CpgError(CorosyncError):
    """A libcpg call failed; ``code`` is the ``cs_error_t``."""


class CorosyncUnreachable(CpgError):
    """``cpg_model_initialize`` failed: corosync is not running or not reachable from here."""

    def __init__(self, code: int) -> None:
        super().__init__("cpg_model_initialize", code)
        self.args = (unreachable_message(code),)


@dataclass(frozen=True)
class Address:
    """One group member process, and (in left/joined lists) why it changed."""

    nodeid: int
    pid: int
    reason: str = "UNDEFINED"


_lib: ctypes.CDLL | None = None


def load_library() -> ctypes.CDLL:
    """``libcpg.so.4`` with typed signatures; CpgError when it is not installed."""
    global _lib
    if _lib is not None:
        return _lib
    handle, ptr = cpg_handle_t, ctypes.POINTER
    signatures: dict[str, list[type]] = {
        "cpg_model_initialize": [ptr(handle), ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p],
        "cpg_finalize": [handle],
        "cpg_fd_get": [handle, ptr(ctypes.c_int)],
        "cpg_dispatch": [handle, ctypes.c_int],
        "cpg_join": [handle, ptr(CpgName)],
        "cpg_leave": [handle, ptr(CpgName)],
        "cpg_mcast_joined": [handle, ctypes.c_int, ptr(IoVec), ctypes.c_uint],
        "cpg_membership_get": [handle, ptr(CpgName), ptr(CpgAddress), ptr(ctypes.c_int)],
        "cpg_local_get": [handle, ptr(ctypes.c_uint)],
    }
    _lib = load_typed_library("cpg", "libcpg.so.4", "libcpg4", signatures, CpgError)
    return _lib


def group_name(name: str) -> CpgName:
    raw = name.encode()
    if not raw or len(raw) > CPG_MAX_NAME_LENGTH:
        raise CpgError("cpg_join", 13, f"group name must be 1..{CPG_MAX_NAME_LENGTH} bytes")
    out = CpgName()
    out.length = len(raw)
    # out.value would be a copy (bytes): write into the structure itself
    ctypes.memmove(ctypes.addressof(out) + CpgName.value.offset, raw, len(raw))
    return out


def _addresses(array: ctypes._Pointer[CpgAddress], count: int) -> list[Address]:
    return [Address(array[i].nodeid, array[i].pid,
                    REASON_NAMES.get(array[i].reason, str(array[i].reason)))
            for i in range(count)]


OnDeliver = Callable[[int, int, bytes], None]
OnConfchg = Callable[[list[Address], list[Address], list[Address]], None]
OnRing = Callable[[int, tuple[int, ...]], None]
"""``on_ring(seq, nodeids)``: a new totem ring (every corosync node, group member or not)."""


class CpgHandle:
    """One libcpg handle in one group. Callbacks run inside :meth:`dispatch`.

    The callbacks never let an exception reach C (ctypes would print and drop it);
    a failing callback is logged.
    """

    def __init__(self, group: str, on_deliver: OnDeliver, on_confchg: OnConfchg) -> None:
        self.lib = load_library()
        self.group = group_name(group)
        self.on_deliver = on_deliver
        self.on_confchg = on_confchg
        self.on_ring: OnRing = lambda _seq, _nodes: None
        # The C side keeps these function pointers: they live as long as the handle.
        self._model = CpgModelV1Data(
            CPG_MODEL_V1, DeliverFn(self._deliver), ConfchgFn(self._confchg),
            TotemConfchgFn(self._totem), CPG_MODEL_V1_DELIVER_INITIAL_TOTEM_CONF)
        self.handle = cpg_handle_t(0)
        self.fd = -1
        self.nodeid = 0
        self.closed = True

    def open(self) -> None:
        rc = self.lib.cpg_model_initialize(ctypes.byref(self.handle), CPG_MODEL_V1,
                                           ctypes.byref(self._model), None)
        if rc != CS_OK:
            raise CorosyncUnreachable(rc)
        self.closed = False
        try:
            fd = ctypes.c_int(-1)
            self._check("cpg_fd_get", self.lib.cpg_fd_get(self.handle, ctypes.byref(fd)))
            nodeid = ctypes.c_uint(0)
            self._check("cpg_local_get",
                        self.lib.cpg_local_get(self.handle, ctypes.byref(nodeid)))
        except CpgError:
            self.finalize()
            raise
        self.fd, self.nodeid = fd.value, nodeid.value

    @staticmethod
    def _check(func: str, rc: int) -> None:
        check(CpgError, func, rc)

    def _retry(self, func: str, call: Callable[[], int], timeout: float = 5.0) -> None:
        # TRY_AGAIN: a membership change or flow control is in progress.
        deadline = time.monotonic() + timeout
        while True:
            rc = call()
            if rc != CS_ERR_TRY_AGAIN or time.monotonic() > deadline:
                self._check(func, rc)
                return
            time.sleep(0.01)

    def join(self) -> None:
        self._retry("cpg_join", lambda: self.lib.cpg_join(self.handle, ctypes.byref(self.group)))

    def leave(self) -> None:
        self._retry("cpg_leave",
                    lambda: self.lib.cpg_leave(self.handle, ctypes.byref(self.group)))

    def mcast(self, payload: bytes) -> int:
        """One agreed-order multicast; returns the cs_error_t (TRY_AGAIN: try later)."""
        buf = ctypes.create_string_buffer(payload, len(payload))
        iov = IoVec(ctypes.cast(buf, ctypes.c_void_p), len(payload))
        return int(self.lib.cpg_mcast_joined(self.handle, CPG_TYPE_AGREED,
                                             ctypes.byref(iov), 1))

    def dispatch(self) -> int:
        """Run every pending callback without blocking; CS_ERR_LIBRARY: corosync is gone."""
        return int(self.lib.cpg_dispatch(self.handle, CS_DISPATCH_ALL))

    def membership(self) -> list[Address]:
        array = (CpgAddress * CPG_MEMBERS_MAX)()
        count = ctypes.c_int(CPG_MEMBERS_MAX)
        self._check("cpg_membership_get", self.lib.cpg_membership_get(
            self.handle, ctypes.byref(self.group), array, ctypes.byref(count)))
        return _addresses(ctypes.cast(array, ctypes.POINTER(CpgAddress)), count.value)

    def finalize(self) -> None:
        if not self.closed:
            self.closed = True
            self.lib.cpg_finalize(self.handle)

    # -- C callbacks ------------------------------------------------------------

    def _deliver(self, _handle: int, _group: object, nodeid: int, pid: int,
                 msg: int | None, msg_len: int) -> None:
        try:
            self.on_deliver(nodeid, pid, ctypes.string_at(msg, msg_len) if msg else b"")
        except Exception:  # a callback must never raise into C
            log.exception("cpg: deliver callback failed")

    def _confchg(self, _handle: int, _group: object,
                 members: ctypes._Pointer[CpgAddress], n_members: int,
                 left: ctypes._Pointer[CpgAddress], n_left: int,
                 joined: ctypes._Pointer[CpgAddress], n_joined: int) -> None:
        try:
            self.on_confchg(_addresses(members, n_members), _addresses(left, n_left),
                            _addresses(joined, n_joined))
        except Exception:
            log.exception("cpg: configuration change callback failed")

    def _totem(self, _handle: int, ring: CpgRingId, count: int,
               nodes: ctypes._Pointer[ctypes.c_uint32]) -> None:
        try:
            log.debug("cpg: totem ring %x.%x with %d nodes", ring.nodeid, ring.seq, count)
            self.on_ring(int(ring.seq),
                         tuple(int(nodes[i]) for i in range(count)) if nodes else ())
        except Exception:
            log.exception("cpg: totem callback failed")


class CpgMember(ReconnectingClient[CpgHandle]):
    """A :class:`CpgHandle` on an asyncio loop, reconnecting when corosync restarts.

    ``on_connected`` runs after every (re)join, ``on_disconnected`` when the
    handle was lost; messages queued while disconnected are dropped (the
    owner re-announces on the next membership change anyway).
    """

    LOG_NAME = "cpg"
    ERROR = CpgError
    SEND_TIMEOUT = 10.0

    def __init__(self, group: str, on_deliver: OnDeliver, on_confchg: OnConfchg,
                 on_connected: Callable[[], None] = lambda: None,
                 on_disconnected: Callable[[], None] = lambda: None,
                 on_ring: OnRing = lambda _seq, _nodes: None) -> None:
        super().__init__()
        self.group = group
        self.on_ring = on_ring  # each new totem ring: its sequence and every node in it
        self.on_deliver = on_deliver
        self.on_confchg = on_confchg
        self.on_connected = on_connected
        self.on_disconnected = on_disconnected
        self.pid = os.getpid()
        self._queue: list[bytes] = []
        self._wakeup = asyncio.Event()

    @property
    def nodeid(self) -> int:
        return self.handle.nodeid if self.handle else 0

    @property
    def connected(self) -> bool:
        return self.handle is not None

    async def start(self) -> None:
        """Connect and join; CpgError (with the namespace hint) when corosync is not there."""
        self._loop = asyncio.get_running_loop()
        self._connect()
        self._tasks.append(self._loop.create_task(self._sender()))

    def _connect(self) -> None:
        handle = CpgHandle(self.group, self.on_deliver, self.on_confchg)
        handle.on_ring = self.on_ring
        handle.open()
        try:
            handle.join()
        except CpgError:
            handle.finalize()
            raise
        self._watch(handle)
        log.info("cpg: joined group %r as node %d pid %d", self.group, handle.nodeid, self.pid)
        self.on_connected()

    def _drop(self) -> None:
        self._queue.clear()
        super()._drop()

    def _lost(self) -> None:
        try:
            self.on_disconnected()
        except Exception:
            log.exception("cpg: disconnect handler failed")

    def send(self, payload: bytes) -> None:
        """Queue one agreed-order multicast; order is kept, TRY_AGAIN is retried."""
        if self.handle is None:
            return
        self._queue.append(payload)
        self._wakeup.set()

    async def _sender(self) -> None:
        while not self._stopping:
            await self._wakeup.wait()
            self._wakeup.clear()
            started = time.monotonic()
            while self._queue and self.handle is not None:
                rc = self.handle.mcast(self._queue[0])
                if rc == CS_OK:
                    self._queue.pop(0)
                    started = time.monotonic()
                elif rc == CS_ERR_TRY_AGAIN and time.monotonic() - started < self.SEND_TIMEOUT:
                    await asyncio.sleep(0.005)  # let dispatch drain deliveries
                else:
                    log.error("cpg: cpg_mcast_joined failed (%s); message dropped",
                              error_name(rc))
                    self._queue.pop(0)

    def membership(self) -> list[Address]:
        return self.handle.membership() if self.handle else []

    async def stop(self) -> None:
        """Leave the group and finalize; idempotent."""
        await self._cancel_tasks()
        handle = self._unwatch()
        if handle is None:
            return
        with contextlib.suppress(CpgError):
            handle.leave()
        handle.finalize()
