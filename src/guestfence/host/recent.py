"""The daemon's short memory of its last requests and of the requests being served now.

``guestfence status`` shows both. The ring buffer is bounded, so a flood of
requests costs a fixed amount of memory; it is filled where FenceService writes
each request's log line, so it holds exactly what the log holds.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any

RECENT_REQUESTS = 200


@dataclass(frozen=True)
class RequestRecord:
    """One finished request, as logged."""

    finished: float
    """Wall-clock time (seconds since the epoch) when the request's log line was written."""
    listener: str
    requester: str
    target: str
    action: str
    seqno: int
    cluster: str | None
    outcome: str
    duration_ms: float
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class RecentRequests:
    """The last ``size`` requests, oldest first.

    Appended to on the event loop, read by the admin server on the event loop and
    by a metrics scrape in another thread: a lock keeps a reader's copy consistent.
    """

    def __init__(self, size: int = RECENT_REQUESTS) -> None:
        if size < 1:
            raise ValueError("the ring buffer needs room for at least one request")
        self._records: deque[RequestRecord] = deque(maxlen=size)
        self._lock = threading.Lock()
        self.total = 0
        """Requests recorded since start-up, including those the buffer forgot."""

    @property
    def size(self) -> int:
        return self._records.maxlen or 0

    def add(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)
            self.total += 1

    def last(self, count: int) -> list[RequestRecord]:
        """The newest ``count`` records (at most the buffer's size), oldest first."""
        if count <= 0:
            return []
        with self._lock:
            records = list(self._records)
        return records[-count:]

    def __len__(self) -> int:
        return len(self._records)


class ActiveRequests:
    """Requests being served now, by listener: ``async with active.serving("tcp"): ...``."""

    def __init__(self) -> None:
        self._by_listener: Counter[str] = Counter()

    def serving(self, listener: str) -> _Serving:
        return _Serving(self._by_listener, listener)

    def by_listener(self) -> dict[str, int]:
        return {k: v for k, v in self._by_listener.items() if v > 0}

    def total(self) -> int:
        return sum(self._by_listener.values())


class _Serving:
    def __init__(self, counts: Counter[str], listener: str) -> None:
        self._counts = counts
        self._listener = listener

    async def __aenter__(self) -> None:
        self._counts[self._listener] += 1

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._counts[self._listener] -= 1


def now() -> float:
    """Wall-clock time for records (monotonic time is for durations only)."""
    return time.time()
