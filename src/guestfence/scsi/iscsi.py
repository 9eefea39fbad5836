"""SCSI transport for an iSCSI LUN through libiscsi 1.19 (Debian ``libiscsi7``), via ctypes.

No kernel initiator and no compiled extension: libiscsi speaks iSCSI from user
space, and this module drives one libiscsi context (= one iSCSI session = one
I_T nexus) per :class:`IscsiTransport`.

URLs
    ``iscsi://[user%password@]host[:port]/iqn.yyyy-mm.naming-authority:unique/lun``
    (libiscsi's syntax; ``user:password@`` is accepted too, as libiscsi does;
    IPv6 portals go in brackets).  :func:`parse_iscsi_url` parses them in
    Python rather than through libiscsi's ``iscsi_parse_full_url``, because in
    1.19 that function cannot be fed an arbitrary configuration string safely:
    ``?header_digest`` without ``=`` dereferences NULL (the process dies with
    SIGSEGV); it copies the URL into a 256-byte stack buffer with
    ``strncpy(…, 255)`` and no terminator, so a longer URL is read past its
    end; the LUN goes through ``strtol`` into an ``int`` (``-1`` is accepted,
    ``99999999999`` silently becomes 1215752191) while the wire format only
    carries 0..255 (``iscsi_pdu_set_lun`` writes 16 bits, peripheral
    addressing); the port is never checked (``h:notaport`` passes); and it
    silently takes CHAP credentials from ``LIBISCSI_CHAP_*`` environment
    variables.  The Python parser accepts the same well-formed URLs (an
    integration test compares the two) and rejects the rest with a message
    that shows the expected form, never the password.

ISID
    libiscsi gives every new context a random ISID, so every login would be a
    new initiator port.  Here the ISID is *stable*: the "random" ISID format
    of RFC 7143 (T=10b: 0x80, a 24-bit value, a 16-bit qualifier, set with
    ``iscsi_set_isid_random``) filled from SHA-256 of the ISID seed (the node
    name, say; by default the initiator name), the target and the LUN.  The
    OUI and EN formats would need an IEEE OUI or an IANA enterprise number we
    do not own; the random format only asks for a value unlikely to collide,
    which 40 hash bits give.  The target and LUN are mixed in so that two
    transports of one node to different LUNs of one target never present the
    same InitiatorName+ISID (a spec-following target would treat the second
    login as a reinstatement of the first session and close it).

Reconnects
    libiscsi's own reconnect (automatic, or ``iscsi_reconnect_sync``) is
    switched off (``iscsi_set_noautoreconnect``): in 1.19 it builds the new
    session in a context from ``iscsi_create_context``, i.e. with a *new random
    ISID*, retries forever by default and waits at least 3 s between tries.
    Instead, when a command finds the session gone, the transport destroys the
    context, logs in afresh with the same settings (same ISID) within
    ``connect_timeout`` and sends the command once more.  That is visible:
    :attr:`IscsiTransport.reconnected` and :attr:`IscsiTransport.reconnects`.
    A new login is a new iSCSI session; targets that bind persistent
    reservations to the session rather than to the initiator port (tgt does:
    TSIH + creation time) then no longer count this initiator as registered,
    so the PR layer must re-register after a reconnect.  Two more things the
    caller should know: the login runs TEST UNIT READY until the unit
    attentions of a fresh session (29/00 and the like) are consumed, so the
    retried command does not see them; and a command whose answer was lost
    with the connection may have been carried out already, and is sent again.

Waiting
    Login and logout use libiscsi's asynchronous calls (``iscsi_full_connect_async``,
    ``iscsi_logout_async``) under a poll() loop here, with a real deadline,
    rather than ``iscsi_full_connect_sync``: 1.19's synchronous connect has no
    bound on the TCP connect (a SYN to a dead portal waits for the kernel's
    retries, about two minutes) and checks its own timeouts in whole seconds,
    once a second.  Commands go
    through ``iscsi_scsi_command_sync`` with ``iscsi_set_timeout`` (whole
    seconds, checked about once a second: a command times out between
    ``timeout - 1`` and ``timeout + 1`` s).  The sync wrappers keep their state
    on the C stack; if poll() inside them is interrupted by a signal they
    return while the command is still queued, and a later cleanup calls back
    into the dead stack frame.  So signals are blocked in the calling thread
    for the duration of the call and delivered right after it.

Struct layouts
    ``struct scsi_task`` (176 bytes on x86-64) is read directly: status, the
    raw sense bytes and the data-in buffer are all in it.  Its layout is that
    of libiscsi 1.19 (1.20 enlarged ``struct scsi_sense`` under the same
    soname: ``ptr`` moves from offset 88 to 96), so it is checked against the
    loaded library at first use and a different layout is refused with an
    error instead of read wrongly.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import re
import select
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import IPv6Address

from guestfence.errors import ConfigError
from guestfence.scsi.transport import (
    DEFAULT_TIMEOUT,
    Direction,
    ScsiResult,
    ScsiTransportError,
)

log = logging.getLogger("guestfence.scsi.iscsi")

LIBRARY = "libiscsi.so.7"
PACKAGE = "libiscsi7"
DEFAULT_PORT = 3260
URL_FORM = "iscsi://host[:port]/iqn.yyyy-mm.naming-authority:unique/lun"
URL_FORM_CHAP = "iscsi://user%password@host[:port]/iqn.yyyy-mm.naming-authority:unique/lun"
MAX_LUN = 255  # libiscsi 1.19 puts the LUN in 16 bits with peripheral addressing
MAX_NAME = 223  # RFC 7143: iSCSI names are at most 223 bytes
MAX_CDB = 16  # SCSI_CDB_MAX_SIZE
REDACTED = "***"
LOGOUT_TIMEOUT = 2.0

# enum values from <iscsi/iscsi.h> and <iscsi/scsi-lowlevel.h>
ISCSI_SESSION_NORMAL = 2
ISCSI_HEADER_DIGEST_NONE_CRC32C = 1  # offer none, accept crc32c
SCSI_XFER = {Direction.NONE: 0, Direction.FROM_DEVICE: 1, Direction.TO_DEVICE: 2}
SCSI_STATUS_CHECK_CONDITION = 0x02
SCSI_STATUS_CANCELLED = 0x0F000000
SCSI_STATUS_ERROR = 0x0F000001
SCSI_STATUS_TIMEOUT = 0x0F000002
ISID_FORMAT_RANDOM = 0x80


# ---------------------------------------------------------------------------------
# URLs


class IscsiUrlError(ConfigError, ValueError):
    """An iSCSI URL is malformed; the message shows the expected form (no password)."""


@dataclass(frozen=True)
class IscsiUrl:
    """One LUN behind one iSCSI portal, with optional CHAP credentials."""

    host: str
    port: int
    target: str
    lun: int
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def portal(self) -> str:
        """``host:port`` as libiscsi wants it (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def geturl(self, *, redact: bool = True) -> str:
        """The URL, with the password replaced by ``***`` unless ``redact=False``."""
        cred = ""
        if self.user is not None:
            secret = REDACTED if redact else (self.password or "")
            cred = f"{self.user}%{secret}@"
        return f"iscsi://{cred}{self.portal}/{self.target}/{self.lun}"

    def __str__(self) -> str:
        return self.geturl()


_HEX2 = re.compile(r"%([0-9A-Fa-f]{2})")
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_IQN = re.compile(r"iqn\.\d{4}-(0[1-9]|1[0-2])\.[a-z0-9][a-z0-9.-]*(:\S+)?", re.IGNORECASE)
_EUI = re.compile(r"eui\.[0-9A-F]{16}", re.IGNORECASE)
_NAA = re.compile(r"naa\.(?:[0-9A-F]{16}|[0-9A-F]{32})", re.IGNORECASE)


def _redact_raw(url: str) -> str:
    """``url`` with whatever stands between the user and the ``@`` replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    userinfo, _, tail = rest.partition("@")
    for mark in ("%", ":"):
        if mark in userinfo:
            userinfo = userinfo.split(mark, 1)[0] + mark + REDACTED
            break
    return f"{scheme}://{userinfo}@{tail}"


def _percent_decode(text: str) -> str:
    """Decode ``%XX`` escapes (libiscsi decodes them in the target name too)."""
    if re.search(r"%(?![0-9A-Fa-f]{2})", text):
        raise ValueError("a '%' in the target name must start a %XX escape")
    return _HEX2.sub(lambda m: chr(int(m.group(1), 16)), text)


def _check_name(name: str, what: str = "target") -> str | None:
    """Why ``name`` is not an iSCSI name (RFC 7143 iqn./eui./naa. forms), or None."""
    if not name:
        return f"the {what} name is empty"
    if len(name.encode()) > MAX_NAME:
        return f"the {what} name is longer than {MAX_NAME} bytes"
    if any(c.isspace() or not c.isprintable() for c in name):
        return f"the {what} name contains blanks or control characters"
    if _IQN.fullmatch(name) or _EUI.fullmatch(name) or _NAA.fullmatch(name):
        return None
    return (
        f"{what} name {name!r} is not an iSCSI name "
        "(iqn.yyyy-mm.naming-authority[:unique], eui.<16 hex>, naa.<16 or 32 hex>)"
    )


def _split_hostport(hostport: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` -> (host, port); ValueError why not."""
    port_text: str | None = None
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise ValueError("an IPv6 portal needs a closing ']'")
        host, after = hostport[1:end], hostport[end + 1 :]
        if after:
            if not after.startswith(":"):
                raise ValueError(f"unexpected {after!r} after ']'")
            port_text = after[1:]
        try:
            IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address") from None
    else:
        if hostport.count(":") > 1:
            raise ValueError("an IPv6 portal must be written in brackets: [addr]:port")
        host, colon, port_text_ = hostport.partition(":")
        port_text = port_text_ if colon else None
        if not host:
            raise ValueError("the host is missing")
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(f"{host!r} is not a host name or address")
    port = DEFAULT_PORT
    if port_text is not None:
        if not port_text.isdigit() or not port_text.isascii():
            raise ValueError(f"port {port_text!r} is not a number")
        port = int(port_text)
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is out of range 1..65535")
    return host, port


def parse_iscsi_url(url: str) -> IscsiUrl:
    """Parse ``iscsi://[user%password@]host[:port]/target-iqn/lun`` (port 3260 by default).

    Raises :class:`IscsiUrlError` (a ``ConfigError`` and a ``ValueError``) saying
    what is wrong and which form is expected; the message never contains the
    password.
    """
    if not isinstance(url, str):
        raise IscsiUrlError(f"an iSCSI URL must be a string, not {type(url).__name__}")
    shown = _redact_raw(url)

    def bad(why: str) -> IscsiUrlError:
        return IscsiUrlError(
            f"bad iSCSI URL {shown!r}: {why}; expected {URL_FORM} (with CHAP: {URL_FORM_CHAP})"
        )

    if url[:8].lower() != "iscsi://":
        raise bad("it must start with iscsi://")
    rest = url[8:]
    if any(c.isspace() or not c.isprintable() for c in rest):
        raise bad("it contains blanks or control characters")
    if "?" in rest or "#" in rest:
        raise bad("query parameters (?...) and fragments (#...) are not supported")
    user: str | None = None
    password: str | None = None
    if "@" in rest:
        # as libiscsi: the first '@' ends the credentials, '%' (or ':') splits them
        userinfo, _, rest = rest.partition("@")
        sep = "%" if "%" in userinfo else ":"
        user, has_sep, password = userinfo.partition(sep)
        if not user or not has_sep or not password:
            raise bad("CHAP credentials need both a user and a password (user%password@)")
    hostport, slash, path = rest.partition("/")
    if not slash:
        raise bad("the /target-iqn/lun part is missing")
    try:
        host, port = _split_hostport(hostport)
    except ValueError as exc:
        raise bad(str(exc)) from None
    target_raw, slash, lun_text = path.partition("/")
    if not slash:
        raise bad("the /lun part is missing")
    try:
        target = _percent_decode(target_raw)
    except ValueError as exc:
        raise bad(str(exc)) from None
    why = _check_name(target)
    if why is not None:
        raise bad(why)
    if not lun_text:
        raise bad("the LUN is missing")
    if not lun_text.isdigit() or not lun_text.isascii():
        raise bad(f"LUN {lun_text!r} is not a decimal number")
    lun = int(lun_text)
    if lun > MAX_LUN:
        raise bad(f"LUN {lun} is out of range 0..{MAX_LUN}")
    return IscsiUrl(host, port, target, lun, user, password)


# ---------------------------------------------------------------------------------
# libiscsi 1.19 structures (x86-64 offsets in the comments; ctypes applies the ABI)


class ScsiSense(ctypes.Structure):
    """``struct scsi_sense``: libiscsi's parse of the sense data (16 bytes)."""

    _fields_ = (
        ("error_type", ctypes.c_ubyte),  # 0: response code, 0x70..0x73
        ("key", ctypes.c_int),  # 4: enum scsi_sense_key
        ("ascq", ctypes.c_int),  # 8: ASC << 8 | ASCQ
        # 12: the bit-fields sense_specific:1, ill_param_in_cdb:1, bit_pointer_valid:1.
        # GCC packs them into this one byte and places the next char right after it.
        ("bitfields", ctypes.c_ubyte),
        ("bit_pointer", ctypes.c_ubyte),  # 13
        ("field_pointer", ctypes.c_uint16),  # 14
    )


class ScsiData(ctypes.Structure):
    """``struct scsi_data``: a buffer libiscsi allocated (freed with the task)."""

    _fields_ = (("size", ctypes.c_int), ("data", ctypes.c_void_p))


class ScsiIovector(ctypes.Structure):
    """``struct scsi_iovector``."""

    _fields_ = (
        ("iov", ctypes.c_void_p),  # struct scsi_iovec *
        ("niov", ctypes.c_int),
        ("nalloc", ctypes.c_int),
        ("offset", ctypes.c_size_t),
        ("consumed", ctypes.c_int),
    )


class ScsiIovec(ctypes.Structure):
    """``struct scsi_iovec`` (the layout of POSIX ``struct iovec``)."""

    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class ScsiTask(ctypes.Structure):
    """``struct scsi_task`` of libiscsi 1.19 (176 bytes on x86-64)."""

    _fields_ = (
        ("status", ctypes.c_int),  # 0
        ("cdb_size", ctypes.c_int),  # 4
        ("xfer_dir", ctypes.c_int),  # 8
        ("expxferlen", ctypes.c_int),  # 12
        ("cdb", ctypes.c_ubyte * MAX_CDB),  # 16
        ("residual_status", ctypes.c_int),  # 32: enum scsi_residual
        ("residual", ctypes.c_size_t),  # 40
        ("sense", ScsiSense),  # 48
        # 64: data in on GOOD; on CHECK CONDITION the response's data segment,
        # i.e. a 2-byte SenseLength followed by the sense bytes
        ("datain", ScsiData),
        ("mem", ctypes.c_void_p),  # 80
        ("ptr", ctypes.c_void_p),  # 88: private pointer
        ("itt", ctypes.c_uint32),  # 96
        ("cmdsn", ctypes.c_uint32),  # 100
        ("lun", ctypes.c_uint32),  # 104
        ("iovector_in", ScsiIovector),  # 112
        ("iovector_out", ScsiIovector),  # 144
    )


class IscsiData(ctypes.Structure):
    """``struct iscsi_data``: the data-out buffer handed to ``iscsi_scsi_command_sync``."""

    _fields_ = (("size", ctypes.c_size_t), ("data", ctypes.c_void_p))


class _Done(ctypes.Structure):
    """Where the asynchronous callback leaves its result (owned by Python)."""

    _fields_ = (("done", ctypes.c_int), ("status", ctypes.c_int))


# void (*iscsi_command_cb)(struct iscsi_context *, int status, void *command_data, void *private)
COMMAND_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


def _on_done(_ctx: int | None, status: int, _data: int | None, private: int | None) -> None:
    if private:
        cell = _Done.from_address(private)
        cell.status = status
        cell.done = 1


_ON_DONE = COMMAND_CB(_on_done)  # module-level: lives as long as any context may call it

# void (*iscsi_log_fn)(int level, const char *message): no private pointer, so the
# messages go to whichever session this thread is working for (see _Session.collect)
LOG_FN = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p)
LOG_LEVEL_ERRORS = 1  # iscsi_set_error() logs every error text at level 1
_log_sink = threading.local()


def _on_log(_level: int, message: bytes | None) -> None:
    text = (message or b"").decode(errors="replace").strip()
    sink: list[str] | None = getattr(_log_sink, "messages", None)
    if sink is not None and text:
        sink.append(text)


_ON_LOG = LOG_FN(_on_log)


class IscsiLibraryError(ScsiTransportError):
    """libiscsi.so.7 is missing or is not the version whose structures this module knows."""


_VP, _CP, _INT = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
_PROTOTYPES: tuple[tuple[str, object, tuple[object, ...]], ...] = (
    ("iscsi_create_context", _VP, (_CP,)),
    ("iscsi_destroy_context", _INT, (_VP,)),
    ("iscsi_get_error", _CP, (_VP,)),
    ("iscsi_set_targetname", _INT, (_VP, _CP)),
    ("iscsi_set_session_type", _INT, (_VP, _INT)),
    ("iscsi_set_header_digest", _INT, (_VP, _INT)),
    ("iscsi_set_isid_random", _INT, (_VP, ctypes.c_uint32, ctypes.c_uint32)),
    ("iscsi_set_initiator_username_pwd", _INT, (_VP, _CP, _CP)),
    ("iscsi_set_noautoreconnect", None, (_VP, _INT)),
    ("iscsi_set_log_level", None, (_VP, _INT)),
    ("iscsi_set_log_fn", None, (_VP, LOG_FN)),
    ("iscsi_set_timeout", _INT, (_VP, _INT)),
    ("iscsi_full_connect_async", _INT, (_VP, _CP, _INT, COMMAND_CB, _VP)),
    ("iscsi_logout_async", _INT, (_VP, COMMAND_CB, _VP)),
    ("iscsi_is_logged_in", _INT, (_VP,)),
    ("iscsi_get_fd", _INT, (_VP,)),
    ("iscsi_which_events", _INT, (_VP,)),
    ("iscsi_service", _INT, (_VP, _INT)),
    ("scsi_create_task", _VP, (_INT, _CP, _INT, _INT)),
    ("scsi_free_scsi_task", None, (_VP,)),
    ("scsi_set_task_private_ptr", None, (_VP, _VP)),
    ("iscsi_scsi_command_sync", _VP, (_VP, _INT, _VP, ctypes.POINTER(IscsiData))),
)

_lib_lock = threading.Lock()
_lib_cache: ctypes.CDLL | None = None


def load_libiscsi() -> ctypes.CDLL:
    """The loaded libiscsi.so.7 with prototypes set, its struct layout checked (once)."""
    global _lib_cache
    with _lib_lock:
        if _lib_cache is None:
            try:
                lib = ctypes.CDLL(LIBRARY)
            except OSError as exc:
                raise IscsiLibraryError(
                    f"cannot load {LIBRARY} ({exc}); install the Debian package {PACKAGE} "
                    f"(apt-get install {PACKAGE})"
                ) from None
            for name, restype, argtypes in _PROTOTYPES:
                try:
                    fn = getattr(lib, name)
                except AttributeError:
                    raise IscsiLibraryError(
                        f"{LIBRARY} has no {name}(); this module needs libiscsi 1.19 ({PACKAGE})"
                    ) from None
                fn.restype = restype
                fn.argtypes = argtypes
            _check_task_layout(lib)
            _lib_cache = lib
        return _lib_cache


def _check_task_layout(lib: ctypes.CDLL) -> None:
    """Fill a task through the library and read it back through :class:`ScsiTask`."""
    cdb = bytes(range(0xA0, 0xA0 + MAX_CDB))
    task = lib.scsi_create_task(len(cdb), cdb, 1, 0x1234)
    if not task:
        raise IscsiLibraryError("scsi_create_task failed (out of memory?)")
    try:
        lib.scsi_set_task_private_ptr(task, 0x5A5A5A5A)
        t = ScsiTask.from_address(task)
        seen = (t.cdb_size, t.xfer_dir, t.expxferlen, bytes(t.cdb), t.ptr)
        want = (len(cdb), 1, 0x1234, cdb, 0x5A5A5A5A)
    finally:
        lib.scsi_free_scsi_task(task)
    if seen != want:
        raise IscsiLibraryError(
            f"{LIBRARY} does not have the struct scsi_task layout of libiscsi 1.19 "
            f"(read back {seen!r}, expected {want!r}); refusing to read its results"
        )


# ---------------------------------------------------------------------------------
# the transport

_SYNC_FAULTS = {
    signal.SIGKILL,
    signal.SIGSTOP,
    signal.SIGSEGV,
    signal.SIGBUS,
    signal.SIGFPE,
    signal.SIGILL,
    signal.SIGTRAP,
    signal.SIGSYS,
    signal.SIGABRT,
}
_DEFERRABLE = set(signal.valid_signals()) - _SYNC_FAULTS


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Block (not lose) signals in this thread while a libiscsi *_sync call runs."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRABLE)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def derive_isid(seed: str, target: str, lun: int) -> tuple[int, int]:
    """(24-bit value, 16-bit qualifier) of the stable random-format ISID for this nexus."""
    digest = hashlib.sha256(
        b"guestfence-isid\0" + seed.encode() + b"\0" + target.encode() + b"\0" + str(lun).encode()
    ).digest()
    return int.from_bytes(digest[:3], "big"), int.from_bytes(digest[3:5], "big")


class _ServiceFailed(Exception):
    """iscsi_service() gave up (the reason is in the session's messages)."""


class _SessionLost(Exception):
    """The session is gone (dropped by the target, or never answered): log in again."""


class _Session:
    """One libiscsi context; ``cell`` outlives every callback that may write it.

    libiscsi keeps only its *last* error text, and on the way out of a failed
    connect it overwrites the cause ("Connection refused") with a generic
    "Can not reconnect right now"; so the error texts it logs (level 1) are
    collected too, and :meth:`explain` reports the first one.
    """

    def __init__(self, lib: ctypes.CDLL, ctx: int, target: str) -> None:
        self.lib = lib
        self.ctx: int | None = ctx
        self.cell = _Done()
        self.messages: list[str] = []
        self._suffix = f" [{target}]"  # iscsi_log_message appends the target name
        lib.iscsi_set_log_fn(ctx, _ON_LOG)
        lib.iscsi_set_log_level(ctx, LOG_LEVEL_ERRORS)

    @contextmanager
    def collect(self) -> Iterator[int]:
        """Route this thread's libiscsi error messages here, afresh; yields the mark (0).

        Every CHECK CONDITION logs its sense as an error, so the list is
        emptied at each call rather than kept for the life of the session.
        """
        previous = getattr(_log_sink, "messages", None)
        self.messages.clear()
        _log_sink.messages = self.messages
        try:
            yield 0
        finally:
            _log_sink.messages = previous

    def error(self) -> str:
        """``iscsi_get_error()``: libiscsi's last error text."""
        if not self.ctx:
            return "no context"
        raw: bytes | None = self.lib.iscsi_get_error(self.ctx)
        text = (raw or b"").decode(errors="replace").strip()
        return text or "no detail from libiscsi"

    def explain(self, mark: int = 0) -> str | None:
        """The first error libiscsi reported since ``mark``, and its last if that differs."""
        new = [m.removesuffix(self._suffix) for m in self.messages[mark:]]
        if not new:
            return None
        first, last = new[0], self.error()
        return first if last in (first, "no context") else f"{first} (then: {last})"

    def destroy(self) -> None:
        """Disconnect and free the context (pending callbacks land in ``cell``)."""
        if self.ctx:
            ctx, self.ctx = self.ctx, None
            with _signals_deferred():
                self.lib.iscsi_destroy_context(ctx)

    def service_until_done(self, deadline: float) -> bool:
        """Run libiscsi's state machine until the callback fired (True) or ``deadline``."""
        lib, ctx = self.lib, self.ctx
        while not self.cell.done:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not ctx:
                return False
            fd = int(lib.iscsi_get_fd(ctx))
            events = int(lib.iscsi_which_events(ctx))
            revents = 0
            if fd >= 0 and events:
                poller = select.poll()
                poller.register(fd, events)
                # wake at least twice a second so libiscsi scans its own PDU timeouts
                ready = poller.poll(max(1, math.ceil(min(remaining, 0.5) * 1000)))
                revents = ready[0][1] if ready else 0
            elif fd < 0:
                raise _ServiceFailed
            else:
                time.sleep(min(remaining, 0.05))
            # callbacks run inside iscsi_service(); a signal handler raising there
            # would be swallowed by ctypes, so signals wait for poll() instead
            with _signals_deferred():
                failed = int(lib.iscsi_service(ctx, revents)) < 0
            if failed:
                raise _ServiceFailed
        return True


class IscsiTransport:
    """One iSCSI LUN through libiscsi: one session, logged in at construction.

    ``url``: ``iscsi://[user%password@]host[:port]/target-iqn/lun`` (or an
    :class:`IscsiUrl`); ``initiator_name``: this node's IQN; ``isid_seed``:
    what the stable ISID is derived from (default: the initiator name; see the
    module docstring); ``connect_timeout``: seconds for TCP connect + login
    (+ libiscsi's TEST UNIT READY loop that clears the unit attentions of a
    fresh login), also for each transparent re-login.
    """

    def __init__(
        self,
        url: str | IscsiUrl,
        initiator_name: str,
        *,
        isid_seed: str | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self.url = url if isinstance(url, IscsiUrl) else parse_iscsi_url(url)
        why = _check_name(initiator_name, "initiator")
        if why is not None:
            raise ConfigError(f"bad initiator name: {why}")
        if not connect_timeout > 0:
            raise ValueError(f"connect_timeout must be positive, not {connect_timeout!r}")
        self.initiator_name = initiator_name
        self.isid_seed = initiator_name if isid_seed is None else isid_seed
        self.connect_timeout = float(connect_timeout)
        self._isid = derive_isid(self.isid_seed, self.url.target, self.url.lun)
        self.reconnects = 0
        """How many times the session was re-established after the first login."""
        self.reconnected = False
        """True when the last :meth:`execute` ran on a session it had to log in again."""
        self._lock = threading.Lock()
        self._closed = False
        self._lib = load_libiscsi()
        self._session: _Session | None = self._login()

    # -- identity -------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.url.geturl()

    @property
    def isid(self) -> bytes:
        """The 6-byte ISID this transport logs in with (the same on every re-login)."""
        rnd, qualifier = self._isid
        return bytes([ISID_FORMAT_RANDOM]) + rnd.to_bytes(3, "big") + qualifier.to_bytes(2, "big")

    @property
    def logged_in(self) -> bool:
        s = self._session
        return s is not None and bool(s.ctx) and bool(self._lib.iscsi_is_logged_in(s.ctx))

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("logged in" if self.logged_in else "not logged in")
        return (
            f"IscsiTransport({self.name}, initiator={self.initiator_name}, "
            f"isid={self.isid.hex()}, {state}, reconnects={self.reconnects})"
        )

    def __enter__(self) -> IscsiTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- session --------------------------------------------------------------------

    def _fail(self, what: str, detail: str) -> ScsiTransportError:
        return ScsiTransportError(f"{self.name}: {what}: {detail}")

    def _login(self) -> _Session:
        """Create a context and log in within ``connect_timeout``; ScsiTransportError if not."""
        lib, u = self._lib, self.url
        ctx = lib.iscsi_create_context(self.initiator_name.encode())
        if not ctx:
            raise self._fail("login failed", "iscsi_create_context failed (out of memory?)")
        session = _Session(lib, ctx, u.target)
        failed = f"login to {u.portal} as {self.initiator_name} failed"
        try:
            with session.collect() as mark:
                rnd, qualifier = self._isid
                digest = ISCSI_HEADER_DIGEST_NONE_CRC32C
                steps = (
                    ("target name", lib.iscsi_set_targetname(ctx, u.target.encode())),
                    ("session type", lib.iscsi_set_session_type(ctx, ISCSI_SESSION_NORMAL)),
                    ("header digest", lib.iscsi_set_header_digest(ctx, digest)),
                    ("ISID", lib.iscsi_set_isid_random(ctx, rnd, qualifier)),
                    # libiscsi's own PDU timeout (whole seconds, may fire up to 1 s
                    # early) only as a backstop: the deadline below is the real one
                    ("timeout", lib.iscsi_set_timeout(ctx, math.ceil(self.connect_timeout) + 1)),
                )
                for what, rc in steps:
                    if rc != 0:
                        raise self._fail(f"cannot set the {what}", session.error())
                if u.user is not None and u.password is not None:
                    user, password = u.user.encode(), u.password.encode()
                    if lib.iscsi_set_initiator_username_pwd(ctx, user, password) != 0:
                        raise self._fail("cannot set the CHAP credentials", session.error())
                lib.iscsi_set_noautoreconnect(ctx, 1)
                deadline = time.monotonic() + self.connect_timeout
                cell = ctypes.addressof(session.cell)
                if lib.iscsi_full_connect_async(ctx, u.portal.encode(), u.lun, _ON_DONE, cell):
                    raise self._fail(failed, session.explain(mark) or session.error())
                try:
                    finished = session.service_until_done(deadline)
                except _ServiceFailed:
                    finished = True
                    session.cell.status = -1
                if not finished or session.cell.status == SCSI_STATUS_TIMEOUT:
                    why = session.explain(mark)
                    raise self._fail(
                        failed,
                        f"no answer within {self.connect_timeout:g} s"
                        + (f" ({why})" if why else ""),
                    )
                if session.cell.status != 0:
                    why = session.explain(mark) or session.error()
                    if "LOGICAL_UNIT_NOT_SUPPORTED" in why:
                        why = f"the target has no LUN {u.lun} ({why})"
                    raise self._fail(failed, why)
        except BaseException:
            session.destroy()
            raise
        return session

    def _drop(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            session.destroy()

    def _relogin(self, why: str) -> None:
        log.warning("%s: session lost (%s); logging in again", self.name, why)
        self._session = self._login()
        self.reconnects += 1
        self.reconnected = True
        log.warning(
            "%s: logged in again as %s (a new I_T nexus for targets that bind "
            "reservations to the session)",
            self.name,
            self.initiator_name,
        )

    # -- commands -------------------------------------------------------------------

    def execute(
        self,
        cdb: bytes,
        direction: Direction = Direction.NONE,
        data_out: bytes = b"",
        data_in_length: int = 0,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> ScsiResult:
        """Run one CDB; re-login and retry once if the session turns out to be gone."""
        cdb = bytes(cdb)
        data_out = bytes(data_out)
        if not 6 <= len(cdb) <= MAX_CDB:
            raise ValueError(f"a CDB has 6 to {MAX_CDB} bytes, not {len(cdb)}")
        if direction is Direction.TO_DEVICE:
            if not data_out or data_in_length:
                raise ValueError("TO_DEVICE needs data_out and no data_in_length")
        elif direction is Direction.FROM_DEVICE:
            if data_out or data_in_length <= 0:
                raise ValueError("FROM_DEVICE needs data_in_length > 0 and no data_out")
        elif data_out or data_in_length:
            raise ValueError("Direction.NONE takes neither data_out nor data_in_length")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        with self._lock:
            if self._closed:
                raise ScsiTransportError(f"{self.name}: transport is closed")
            self.reconnected = False
            if self._session is None:  # lost by an earlier command that could not log in
                self._relogin("no session")
            try:
                return self._run(cdb, direction, data_out, data_in_length, timeout)
            except _SessionLost as first:
                self._drop()
                try:
                    self._relogin(str(first))
                except ScsiTransportError as exc:
                    raise ScsiTransportError(
                        f"{exc} (after the session was lost: {first})"
                    ) from None
            try:
                return self._run(cdb, direction, data_out, data_in_length, timeout)
            except _SessionLost as second:
                self._drop()
                raise self._fail(
                    "session lost again right after a new login", str(second)
                ) from None

    def _run(
        self, cdb: bytes, direction: Direction, data_out: bytes, data_in_length: int, timeout: float
    ) -> ScsiResult:
        session = self._session
        assert session is not None and session.ctx
        lib, ctx = self._lib, session.ctx
        xfer_len = len(data_out) if direction is Direction.TO_DEVICE else data_in_length
        task = lib.scsi_create_task(len(cdb), cdb, SCSI_XFER[direction], xfer_len)
        if not task:
            raise self._fail("cannot create a task", "scsi_create_task failed (out of memory?)")
        try:
            out_buf = ctypes.create_string_buffer(data_out, len(data_out)) if data_out else None
            out = IscsiData(len(data_out), ctypes.addressof(out_buf)) if out_buf else None
            lib.iscsi_set_timeout(ctx, math.ceil(timeout))
            with session.collect() as mark, _signals_deferred():
                done = lib.iscsi_scsi_command_sync(
                    ctx, self.url.lun, task, ctypes.byref(out) if out else None
                )
            t = ScsiTask.from_address(task)
            status = int(t.status)
            # libiscsi sets no error text when the target simply closes the connection
            why = session.explain(mark) or "the target closed the connection"
            if not done:
                # not sent (not logged in) or the event loop failed: either way the
                # session is unusable; destroy it while the task is still alive
                self._drop()
                raise _SessionLost(why)
            if status == SCSI_STATUS_TIMEOUT:
                self._drop()  # the target may still answer it; start clean next time
                raise self._fail(f"no answer within {timeout:g} s", why)
            if status in (SCSI_STATUS_CANCELLED, SCSI_STATUS_ERROR):
                raise _SessionLost(why)
            if not 0 <= status <= 0xFF:
                raise self._fail("unexpected status from libiscsi", f"{status:#x} ({why})")
            return ScsiResult(
                status=status, sense=_sense(t), data=_data_in(t, status, data_in_length)
            )
        finally:
            lib.scsi_free_scsi_task(task)

    # -- shutdown -------------------------------------------------------------------

    def close(self) -> None:
        """Log out (bounded by a few seconds) and free the context; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            session, self._session = self._session, None
            if session is None or not session.ctx:
                return
            try:
                if self._lib.iscsi_is_logged_in(session.ctx):
                    session.cell.done = 0
                    self._lib.iscsi_set_timeout(session.ctx, math.ceil(LOGOUT_TIMEOUT))
                    cell = ctypes.addressof(session.cell)
                    with session.collect() as mark:
                        if self._lib.iscsi_logout_async(session.ctx, _ON_DONE, cell) == 0:
                            try:
                                session.service_until_done(time.monotonic() + LOGOUT_TIMEOUT)
                            except _ServiceFailed:
                                log.debug("%s: logout: %s", self.name, session.explain(mark))
            finally:
                session.destroy()


def _sense(t: ScsiTask) -> bytes:
    """Raw sense bytes of a CHECK CONDITION: the data segment minus its 2-byte length."""
    if t.status != SCSI_STATUS_CHECK_CONDITION or not t.datain.data or t.datain.size < 2:
        return b""
    segment = ctypes.string_at(t.datain.data, t.datain.size)
    length = int.from_bytes(segment[:2], "big")
    return segment[2 : 2 + length]


def _data_in(t: ScsiTask, status: int, data_in_length: int) -> bytes:
    if status == SCSI_STATUS_CHECK_CONDITION or not data_in_length:
        return b""
    if not t.datain.data or t.datain.size <= 0:
        return b""
    return ctypes.string_at(t.datain.data, min(t.datain.size, data_in_length))
