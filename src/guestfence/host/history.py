"""Duplicate suppression, keyed like the C daemon's history: (op, seqno, domain).

A client repeats the same seqno on every retransmit and sends one copy per
local address, so copies must be dropped. Unlike the C daemon we also drop
copies that arrive while the first one is still being served (the C daemon is
serial, so it never needed to), and we remember a completed request for
``window`` seconds. A request whose call-back or authentication failed is
forgotten, so a genuine retransmit can still get through.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RequestKey = tuple[int, int, str]

HISTORY_WINDOW = 10.0


def request_key(op: int, seqno: int, domain: str) -> RequestKey:
    return (op, seqno, domain.lower())


@dataclass
class History:
    window: float = HISTORY_WINDOW
    _in_flight: set[RequestKey] = field(default_factory=set)
    _done: dict[RequestKey, float] = field(default_factory=dict)

    def begin(self, key: RequestKey, now: float) -> bool:
        """True if the request is new and is now in flight; False for a duplicate."""
        self._purge(now)
        if key in self._in_flight or key in self._done:
            return False
        self._in_flight.add(key)
        return True

    def finish(self, key: RequestKey, now: float, *, served: bool) -> None:
        """``served``: authentication completed and an answer was attempted."""
        self._in_flight.discard(key)
        if served:
            self._done[key] = now

    def _purge(self, now: float) -> None:
        cutoff = now - self.window
        for key in [k for k, t in self._done.items() if t < cutoff]:
            del self._done[key]

    def __len__(self) -> int:
        return len(self._in_flight) + len(self._done)
