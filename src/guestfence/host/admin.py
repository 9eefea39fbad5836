"""The admin socket: a root-only UNIX socket on which guestfenced answers ``guestfence status``.

Protocol (version 1): line-delimited JSON over a stream socket. The client
sends one object per line, ``{"version": 1, "command": "status", "requests":
20}``; the daemon answers each with one line, ``{"version": 1, "ok": true,
"command": "status", "status": {...}}`` or ``{"version": 1, "ok": false,
"error": "..."}``. Commands: ``ping`` and ``status``. A request of another
version is answered with an error naming the version this daemon speaks, so a
newer client can tell an old daemon from a broken one.

Who may ask: the socket file is mode 0600 in a directory of mode 0700 (when
guestfenced creates it), and every connection's peer credentials
(SO_PEERCRED) are checked too: a peer that is not root gets a clear refusal
and a log line, even if someone loosened the file's mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from guestfence.errors import ConfigError, GuestfenceError, ProtocolError, TransportError

log = logging.getLogger("guestfenced")

DEFAULT_ADMIN_SOCKET = "/run/guestfenced/admin.sock"
ADMIN_SOCKET_OFF = "off"
PROTOCOL_VERSION = 1
COMMANDS = ("ping", "status")
MAX_REQUEST_LINE = 64 * 1024
MAX_REPLY_LINE = 64 * 1024 * 1024
IDLE_TIMEOUT = 30.0  # an idle admin connection is closed after this long
MAX_SUN_PATH = 107  # sockaddr_un.sun_path is 108 bytes including the final NUL

Reply = dict[str, Any]
Answerer = Callable[[dict[str, Any]], Awaitable[Reply]]


class AdminSocketInUse(GuestfenceError):
    """Another running guestfenced answers on the admin socket's path."""


# ---------------------------------------------------------------- the protocol


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"


def error_reply(message: str) -> Reply:
    return {"version": PROTOCOL_VERSION, "ok": False, "error": message}


def parse_request(line: bytes) -> dict[str, Any]:
    """A client's request line, checked; ProtocolError says what is wrong with it."""
    try:
        request = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"the request is not JSON ({e})") from None
    if not isinstance(request, dict):
        raise ProtocolError("the request is not a JSON object")
    version = request.get("version")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported admin protocol version {version!r}; this guestfenced "
                            f"speaks version {PROTOCOL_VERSION}")
    command = request.get("command")
    if command not in COMMANDS:
        raise ProtocolError(f"unknown command {command!r}; known: {', '.join(COMMANDS)}")
    requests = request.get("requests", 20)
    if type(requests) is not int or requests < 0:
        raise ProtocolError(f"'requests' must be a non-negative integer, not {requests!r}")
    return request


def parse_reply(line: bytes) -> Reply:
    try:
        reply = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"the daemon's answer is not JSON ({e})") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise ProtocolError("the daemon's answer is not an admin protocol reply")
    return reply


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a connected UNIX socket."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return pid, uid, gid


# ---------------------------------------------------------------- the socket file


def socket_path_problem(path: str) -> str | None:
    """What ``path`` should be instead, or None if it can name an admin socket."""
    if path == ADMIN_SOCKET_OFF:
        return None
    if not os.path.isabs(path):
        return f"an absolute path or {ADMIN_SOCKET_OFF!r}"
    if len(os.fsencode(path)) > MAX_SUN_PATH:
        return f"a path of at most {MAX_SUN_PATH} bytes (the limit of a UNIX socket)"
    return None


def check_socket_path(path: str) -> str:
    """``path`` if it can name an admin socket, else ConfigError saying why."""
    problem = socket_path_problem(path)
    if problem is not None:
        raise ConfigError(f"admin socket {path!r}: expected {problem}")
    return path


def _someone_listens(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _prepare_directory(directory: str) -> None:
    created = not os.path.lexists(directory)
    if created:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    # lstat first: a symbolic link (or a directory someone made before us, in a parent
    # others may write to) belongs to its creator, who could point it elsewhere later
    st = os.lstat(directory)
    if stat.S_ISLNK(st.st_mode):
        if st.st_uid != os.geteuid():
            raise ConfigError(f"admin socket directory {directory} is a symbolic link of uid "
                              f"{st.st_uid}: its owner could point it elsewhere; choose "
                              "another admin_socket")
        st = os.stat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"admin socket directory {directory} is not a directory")
    if st.st_uid != os.geteuid():
        raise ConfigError(f"admin socket directory {directory} belongs to uid {st.st_uid}, not "
                          f"to this daemon (uid {os.geteuid()}): its owner could replace the "
                          "socket; choose another admin_socket")
    if created:
        os.chmod(directory, 0o700)  # makedirs' mode is filtered by the umask
    elif st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        raise ConfigError(f"admin socket directory {directory} is writable by everybody: "
                          "anyone could replace the socket; choose another admin_socket")


def bind_admin_socket(path: str) -> socket.socket:
    """A listening socket at ``path``, mode 0600; a stale socket file is replaced.

    AdminSocketInUse when a live daemon answers there; ConfigError when the path
    is unusable."""
    _prepare_directory(os.path.dirname(path))
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise ConfigError(f"admin socket {path} exists and is not a socket; remove it or "
                              "choose another admin_socket")
        if _someone_listens(path):
            raise AdminSocketInUse(f"admin socket {path} is in use by another running "
                                   "guestfenced")
        os.unlink(path)  # left by a daemon that did not stop cleanly
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        # before listen(): nobody can connect while the file still has the umask's mode
        os.chmod(path, 0o600)
        sock.listen(16)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


# ---------------------------------------------------------------- the server


class AdminServer:
    """Serves the admin protocol on ``path``; ``answer`` turns a checked request into a reply."""

    def __init__(self, path: str, answer: Answerer) -> None:
        self.path = path
        self.answer = answer
        self._server: asyncio.base_events.Server | None = None
        self._inode: int | None = None

    async def start(self) -> None:
        sock = bind_admin_socket(self.path)
        self._inode = os.stat(self.path).st_ino
        self._server = await asyncio.start_unix_server(self._on_connection, sock=sock,
                                                       limit=MAX_REQUEST_LINE)
        log.info("admin socket %s (root only)", self.path)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 5.0)
        self._server = None
        # remove the file only if it is still ours (not a successor daemon's)
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)

    async def _on_connection(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            pid, uid, _gid = peer_credentials(sock)
            if uid != 0:
                # read the request first, so the client is not cut off while it sends
                with contextlib.suppress(ValueError, TimeoutError, OSError):
                    await asyncio.wait_for(reader.readline(), 2.0)
                log.warning("admin socket: refused pid %d of uid %d: only root may use the "
                            "admin socket", pid, uid)
                writer.write(encode(error_reply(
                    f"permission denied: the guestfenced admin socket answers only root "
                    f"(uid 0); this process runs as uid {uid}")))
                await asyncio.wait_for(writer.drain(), 5.0)
                return
            await self._conversation(reader, writer)
        except (OSError, TimeoutError, ConnectionError):
            pass  # the client went away; nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 2.0)

    async def _conversation(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                line = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT)
            except ValueError:  # longer than the reader's limit
                writer.write(encode(error_reply(
                    f"request line longer than {MAX_REQUEST_LINE} bytes")))
                await asyncio.wait_for(writer.drain(), 5.0)
                return
            if not line.strip():
                if not line:
                    return  # end of file: the client is done
                continue
            try:
                reply = await self.answer(parse_request(line))
            except ProtocolError as e:
                reply = error_reply(str(e))
            except Exception as e:  # a bug must not kill the daemon, nor hang the client
                log.exception("admin request failed")
                reply = error_reply(f"internal error: {type(e).__name__}: {e}")
            writer.write(encode(reply))
            await asyncio.wait_for(writer.drain(), 10.0)


# ---------------------------------------------------------------- the client


def query(path: str, request: dict[str, Any], timeout: float = 15.0) -> Reply:
    """Send one request to the daemon at ``path``; its reply (``ok`` may be false).

    TransportError with an explanation when nobody answers."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise TransportError(
                f"no admin socket at {path}: guestfenced is not running, or it uses another "
                "admin socket (admin_socket in fence_virt.conf, guestfenced --admin-socket; "
                "give it with --socket PATH)") from None
        except PermissionError:
            raise TransportError(
                f"permission denied on {path}: the admin socket is for root only; run "
                "guestfence status as root") from None
        except ConnectionRefusedError:
            raise TransportError(
                f"nobody listens on {path}: guestfenced is not running (the socket file was "
                "left by an earlier run)") from None
        except OSError as e:
            raise TransportError(f"cannot connect to the admin socket {path}: "
                                 f"{e.strerror or e}") from None
        return _exchange(sock, path, {"version": PROTOCOL_VERSION, **request})
    finally:
        sock.close()


def _exchange(sock: socket.socket, path: str, request: dict[str, Any]) -> Reply:
    buffer = b""
    try:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            # a daemon that refuses us may answer and close before reading our request:
            # its answer is still there to read
            sock.sendall(encode(request))
        while b"\n" not in buffer:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            buffer += chunk
            if len(buffer) > MAX_REPLY_LINE:
                raise TransportError(f"the answer on {path} exceeds {MAX_REPLY_LINE} bytes")
    except TimeoutError:
        raise TransportError(f"guestfenced did not answer on {path} in time") from None
    except OSError as e:
        if not buffer:  # a refusal may be followed by a reset: keep what was said first
            raise TransportError(f"the admin connection on {path} failed: "
                                 f"{e.strerror or e}") from None
    if not buffer.strip():
        raise TransportError(f"guestfenced closed the admin connection on {path} "
                             "without an answer")
    try:
        return parse_reply(buffer.split(b"\n", 1)[0])
    except ProtocolError as e:
        raise TransportError(f"{path}: {e}") from None
