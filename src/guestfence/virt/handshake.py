"""The stream leg of the protocol as two sans-I/O state machines.

After the request block has been delivered (multicast datagram, or the first
176 bytes of a TCP/vsock stream) both ends run a mutual challenge/response and
then the daemon sends its result. The fencing client always speaks first, even
when the daemon opened the connection:

    client -> daemon   64-byte challenge Cc
    daemon -> client   pad64(H(key || Cc)), then its own 64-byte challenge Cd
    client -> daemon   pad64(H(key || Cd))
    daemon -> client   result byte [253 + host records + terminator + trailer byte]

With auth "none" the four challenge steps are skipped. The algorithm is not
negotiated: both ends must be configured alike.

Both classes take bytes in and hand bytes out; the caller moves them and owns
every timeout. Nothing here blocks, sleeps or reads the clock.
"""

from __future__ import annotations

import enum
import hmac
import os
from collections.abc import Callable

from guestfence.errors import AuthError, ProtocolError
from guestfence.virt.wire import (
    CHALLENGE_SIZE,
    DIGEST_FIELD,
    HOST_LIST_END,
    HOST_RECORD_SIZE,
    HashType,
    HostRecord,
    Result,
    digest_field,
    parse_host_record,
)

Rng = Callable[[int], bytes]


def answer_challenge(auth: HashType, key: bytes, challenge: bytes) -> bytes:
    return digest_field(auth, key, challenge)


class _Buffer:
    """Accumulates received bytes and hands out exact-size pieces."""

    def __init__(self) -> None:
        self._data = bytearray()

    def feed(self, data: bytes) -> None:
        self._data += data

    def take(self, n: int) -> bytes | None:
        if len(self._data) < n:
            return None
        piece = bytes(self._data[:n])
        del self._data[:n]
        return piece

    def __len__(self) -> int:
        return len(self._data)


# ---------------------------------------------------------------------------- client


class ClientState(enum.Enum):
    AWAIT_ANSWER = "waiting for the daemon's answer to our challenge"
    AWAIT_CHALLENGE = "waiting for the daemon's challenge"
    AWAIT_RESULT = "waiting for the result byte"
    AWAIT_HOSTS = "reading host records"
    DONE = "done"


class ClientOutcome:
    """What the client learnt once the exchange is complete."""

    def __init__(self) -> None:
        self.result: int | None = None
        self.hosts: list[HostRecord] = []


class ClientSession:
    """Client role: challenge first, verify the answer, answer back, read the result."""

    def __init__(self, key: bytes, auth: HashType, rng: Rng = os.urandom) -> None:
        self._key = key
        self._auth = auth
        self._buf = _Buffer()
        self.outcome = ClientOutcome()
        if auth is HashType.NONE:
            self._challenge = b""
            self.state = ClientState.AWAIT_RESULT
        else:
            self._challenge = rng(CHALLENGE_SIZE)
            self.state = ClientState.AWAIT_ANSWER

    def initial_bytes(self) -> bytes:
        """What to send as soon as the stream is up (empty with auth none)."""
        return self._challenge

    @property
    def done(self) -> bool:
        return self.state is ClientState.DONE

    def receive(self, data: bytes) -> bytes:
        """Feed received bytes; returns bytes to send. Raises AuthError/ProtocolError."""
        if self.done and data:
            return b""  # the C daemon may send a trailing byte after a host list
        self._buf.feed(data)
        out = b""
        while not self.done:
            step = self._step()
            if step is None:
                break
            out += step
        return out

    def _step(self) -> bytes | None:
        if self.state is ClientState.AWAIT_ANSWER:
            answer = self._buf.take(DIGEST_FIELD)
            if answer is None:
                return None
            expected = answer_challenge(self._auth, self._key, self._challenge)
            if not hmac.compare_digest(answer, expected):
                raise AuthError("Invalid response to challenge")
            self.state = ClientState.AWAIT_CHALLENGE
            return b""
        if self.state is ClientState.AWAIT_CHALLENGE:
            challenge = self._buf.take(CHALLENGE_SIZE)
            if challenge is None:
                return None
            self.state = ClientState.AWAIT_RESULT
            return answer_challenge(self._auth, self._key, challenge)
        if self.state is ClientState.AWAIT_RESULT:
            code = self._buf.take(1)
            if code is None:
                return None
            self.outcome.result = code[0]
            self.state = (
                ClientState.AWAIT_HOSTS if code[0] == Result.HOSTLIST else ClientState.DONE
            )
            return b""
        if self.state is ClientState.AWAIT_HOSTS:
            raw = self._buf.take(HOST_RECORD_SIZE)
            if raw is None:
                return None
            record = parse_host_record(raw)
            if record is None:
                self.state = ClientState.DONE
            else:
                self.outcome.hosts.append(record)
            return b""
        raise AssertionError(self.state)

    def eof(self) -> None:
        """The daemon closed the stream; complain unless we already have the result."""
        if not self.done:
            raise ProtocolError(f"connection closed while {self.state.value}")


# ---------------------------------------------------------------------------- daemon


class DaemonState(enum.Enum):
    AWAIT_CHALLENGE = "waiting for the client's challenge"
    AWAIT_ANSWER = "waiting for the client's answer"
    AUTHENTICATED = "authenticated"


class DaemonSession:
    """Daemon role: answer the client's challenge, challenge back, verify."""

    def __init__(self, key: bytes, auth: HashType, rng: Rng = os.urandom) -> None:
        self._key = key
        self._auth = auth
        self._rng = rng
        self._buf = _Buffer()
        self._challenge = b""
        self.state = (
            DaemonState.AUTHENTICATED if auth is HashType.NONE else DaemonState.AWAIT_CHALLENGE
        )

    @property
    def authenticated(self) -> bool:
        return self.state is DaemonState.AUTHENTICATED

    def receive(self, data: bytes) -> bytes:
        """Feed received bytes; returns bytes to send. Raises AuthError on a wrong answer."""
        if self.authenticated:
            if data:
                raise ProtocolError("unexpected bytes after authentication")
            return b""
        self._buf.feed(data)
        out = b""
        if self.state is DaemonState.AWAIT_CHALLENGE:
            theirs = self._buf.take(CHALLENGE_SIZE)
            if theirs is None:
                return out
            self._challenge = self._rng(CHALLENGE_SIZE)
            out += answer_challenge(self._auth, self._key, theirs) + self._challenge
            self.state = DaemonState.AWAIT_ANSWER
        if self.state is DaemonState.AWAIT_ANSWER:
            answer = self._buf.take(DIGEST_FIELD)
            if answer is None:
                return out
            expected = answer_challenge(self._auth, self._key, self._challenge)
            if not hmac.compare_digest(answer, expected):
                raise AuthError("client failed the challenge")
            if len(self._buf):
                raise ProtocolError("unexpected bytes after the challenge answer")
            self.state = DaemonState.AUTHENTICATED
        return out

    @staticmethod
    def result_bytes(code: int) -> bytes:
        return bytes([code & 0xFF])

    @staticmethod
    def host_list_bytes(records: list[HostRecord], trailer: int = Result.SUCCESS) -> bytes:
        """253, the records, the all-zero terminator and the trailing result byte."""
        body = b"".join(r.pack() for r in records)
        return bytes([Result.HOSTLIST]) + body + HOST_LIST_END + bytes([trailer])
