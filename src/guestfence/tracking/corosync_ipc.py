"""What the ctypes bindings of corosync's client libraries (libcpg, libquorum) share.

Every corosync client library returns ``cs_error_t`` (``CS_OK`` is 1, not 0),
gives its handle's IPC fd for ``poll`` and runs callbacks inside
``*_dispatch(CS_DISPATCH_ALL)``, which answers ``CS_ERR_LIBRARY`` once corosync
is gone. So the library loading, the error type, and the asyncio glue (the fd
in ``loop.add_reader``, reconnection with backoff) are written once here;
:mod:`guestfence.tracking.cpg` and :mod:`guestfence.tracking.quorum` bind their
own calls and structures on top.

Facts from corosync 3.1.7's ``corotypes.h``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
from typing import ClassVar, Generic, Protocol, TypeVar

from guestfence.errors import BackendError

log = logging.getLogger("guestfenced")

CS_OK = 1
CS_ERR_LIBRARY = 2
CS_ERR_TRY_AGAIN = 6
CS_ERR_NOT_EXIST = 12
CS_ERROR_NAMES = {
    1: "CS_OK", 2: "CS_ERR_LIBRARY", 3: "CS_ERR_VERSION", 4: "CS_ERR_INIT",
    5: "CS_ERR_TIMEOUT", 6: "CS_ERR_TRY_AGAIN", 7: "CS_ERR_INVALID_PARAM",
    8: "CS_ERR_NO_MEMORY", 9: "CS_ERR_BAD_HANDLE", 10: "CS_ERR_BUSY", 11: "CS_ERR_ACCESS",
    12: "CS_ERR_NOT_EXIST", 13: "CS_ERR_NAME_TOO_LONG", 14: "CS_ERR_EXIST",
    15: "CS_ERR_NO_SPACE", 16: "CS_ERR_INTERRUPT", 17: "CS_ERR_NAME_NOT_FOUND",
    18: "CS_ERR_NO_RESOURCES", 19: "CS_ERR_NOT_SUPPORTED", 20: "CS_ERR_BAD_OPERATION",
    21: "CS_ERR_FAILED_OPERATION", 22: "CS_ERR_MESSAGE_ERROR", 23: "CS_ERR_QUEUE_FULL",
    24: "CS_ERR_QUEUE_NOT_AVAILABLE", 25: "CS_ERR_BAD_FLAGS", 26: "CS_ERR_TOO_BIG",
    27: "CS_ERR_NO_SECTIONS", 28: "CS_ERR_CONTEXT_NOT_FOUND", 30: "CS_ERR_TOO_MANY_GROUPS",
    100: "CS_ERR_SECURITY",
}
CS_DISPATCH_ALL = 2  # run every pending callback, never block

cs_error_t = ctypes.c_int  # a C enum


def error_name(code: int) -> str:
    return CS_ERROR_NAMES.get(code, str(code))


class CorosyncError(BackendError):
    """A corosync client library call failed; ``code`` is the ``cs_error_t``."""

    def __init__(self, func: str, code: int, hint: str = "") -> None:
        super().__init__(f"{func} failed ({error_name(code)}){': ' + hint if hint else ''}")
        self.func = func
        self.code = code


def unreachable_message(code: int) -> str:
    """What a failed ``*_initialize`` means and what to check (CPG and quorum alike)."""
    return (f"cannot connect to corosync ({error_name(code)}): is corosync running, and is "
            "guestfenced in its network and mount namespace?")


def check(error: type[CorosyncError], func: str, rc: int) -> None:
    if rc != CS_OK:
        raise error(func, rc)


def load_typed_library(name: str, soname: str, debian_package: str,
                       signatures: dict[str, list[type]],
                       error: type[CorosyncError]) -> ctypes.CDLL:
    """``lib<name>`` with every function in ``signatures`` typed to return ``cs_error_t``."""
    path = ctypes.util.find_library(name) or soname
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise error("dlopen", CS_ERR_LIBRARY,
                    f"cannot load {path} ({e}); install Debian's {debian_package}") from e
    for func_name, argtypes in signatures.items():
        func = getattr(lib, func_name)
        func.argtypes = argtypes
        func.restype = cs_error_t
    return lib


class DispatchHandle(Protocol):
    fd: int

    def dispatch(self) -> int: ...

    def finalize(self) -> None: ...


H = TypeVar("H", bound=DispatchHandle)


class ReconnectingClient(Generic[H]):
    """One handle's fd on an asyncio loop; when corosync goes away, reconnect with backoff.

    A subclass opens its handle in :meth:`_connect` (raising its ``ERROR`` when
    corosync is not reachable) and says what losing it means in :meth:`_lost`.
    """

    RECONNECT_MIN = 0.5
    RECONNECT_MAX = 5.0
    LOG_NAME: ClassVar[str]
    ERROR: ClassVar[type[CorosyncError]]

    def __init__(self) -> None:
        self.handle: H | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def _connect(self) -> None:
        raise NotImplementedError

    def _lost(self) -> None:
        """The handle was dropped (already finalized); never raises."""

    def _watch(self, handle: H) -> None:
        assert self._loop is not None
        self.handle = handle
        self._loop.add_reader(handle.fd, self._readable)

    def _readable(self) -> None:
        handle = self.handle
        if handle is None:
            return
        rc = handle.dispatch()
        if rc in (CS_OK, CS_ERR_TRY_AGAIN):
            return
        log.error("%s: lost corosync (%s); reconnecting", self.LOG_NAME, error_name(rc))
        self._drop()
        if not self._stopping and self._loop is not None:
            self._tasks.append(self._loop.create_task(self._reconnect()))

    def _unwatch(self) -> H | None:
        """Take the handle off the loop (not finalized); None when there was none."""
        handle, self.handle = self.handle, None
        if handle is not None and self._loop is not None:
            self._loop.remove_reader(handle.fd)
        return handle

    def _drop(self) -> None:
        handle = self._unwatch()
        if handle is None:
            return
        handle.finalize()
        self._lost()

    async def _reconnect(self) -> None:
        delay = self.RECONNECT_MIN
        while not self._stopping and self.handle is None:
            await asyncio.sleep(delay)
            try:
                self._connect()
            except self.ERROR as e:
                log.debug("%s: reconnect: %s", self.LOG_NAME, e)
                delay = min(delay * 2, self.RECONNECT_MAX)

    async def _cancel_tasks(self) -> None:
        """Stop reconnecting (and whatever else the subclass started): the first step of stop."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
