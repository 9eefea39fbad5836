"""The keys a listener accepts, and which guest cluster each one belongs to.

Nothing on the wire names the key: a request is H(key || block). So the ring
tries its keys until one reproduces the signature, and that key tells which
cluster sent the request; the challenge/response that follows uses the same
key (a request signed with A's key cannot be completed with B's).

Cost. Every key is 4096 bytes, so hashing key || block from scratch costs
about 3 us per key. The ring keeps, per key and algorithm, the hash state
after the key prefix (``hashlib`` objects can be copied), so one trial only
hashes the 176-byte block: about 0.4 us per key, 20 us for 50 keys. The key
that last verified a request from the same requester is tried first (then
the other key of its cluster, during a rotation, and the keys of up to three
more clusters that verified for that address: a forged source address with
another cluster's valid signature adds to what the ring knows, it does not
replace it), so a valid request normally costs one trial. Every datagram costs at most one
trial per key, whatever it contains; on the multicast listener, where source
addresses can be forged, a source whose datagrams keep matching no key is
limited (FailureLimiter) and full scans for requesters not known yet share a
global budget (ScanBudget), so a flood of forged datagrams costs a few
microseconds each and does not delay genuine requests (bench/cluster_keys.py).

Rotation. Each cluster (and the single key of an old-style config) may have a
successor key file (default ``<key_file>.next``). While it exists both keys
verify. ``guestfence keys retire`` renames the successor over the key file;
the daemon sees the change (``KeyFileWatcher`` polls the files' stat data
twice a second, SIGHUP reloads at once) and from then on the old key fails.
A key file that becomes unreadable or insecure stops working (fail closed).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from guestfence.errors import AuthError, KeyFileError
from guestfence.host.clusters import ClusterConfig, GuestBinding
from guestfence.host.keys import fingerprint, load_daemon_key, load_optional_key, successor_path
from guestfence.virt.wire import (
    DIGESTS,
    HASH_OFFSET,
    FenceRequest,
    HashType,
    parse_signed_request,
    unsigned_block,
)

log = logging.getLogger("guestfenced")

_DIGEST_SIZES = {algorithm: make(b"").digest_size for algorithm, make in DIGESTS.items()}
HINTS_MAX = 4096  # requesters remembered per cluster with the key that verified for them
# clusters remembered per requester address: multicast source addresses can be forged,
# so a guest of another cluster holding a valid key must not be able to make the ring
# forget the real requester's key by signing one datagram "from" its address
HINT_CLUSTERS = 4


@dataclass(frozen=True)
class KeySource:
    """Where a cluster's keys come from (the old single-key config: cluster None)."""

    cluster: str | None
    key_file: str
    successor_file: str
    binding: GuestBinding | None  # None: every guest (no clusters block)


@dataclass
class RingKey:
    """One loaded key. ``role`` is "current" or "successor"."""

    cluster: str | None
    role: str
    path: str
    key: bytes = field(repr=False)  # a repr (a log line, a traceback) names the fingerprint
    fingerprint: str
    binding: GuestBinding | None
    _prefixes: dict[HashType, hashlib._Hash] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for algorithm, make in DIGESTS.items():
            self._prefixes[algorithm] = make(self.key)  # the state after hashing the key

    def signs(self, algorithm: HashType, unsigned: bytes, digest: bytes) -> bool:
        """Whether H(key || unsigned) is ``digest`` (only the digest's own length)."""
        h = self._prefixes[algorithm].copy()
        h.update(unsigned)
        return hmac.compare_digest(h.digest(), digest)

    @property
    def label(self) -> str:
        who = self.cluster if self.cluster is not None else "(all guests)"
        return f"{who} {self.role} {self.fingerprint}"


def sources_from_config(clusters: Sequence[ClusterConfig], listener_key_file: str,
                        listener_successor: str | None = None) -> list[KeySource]:
    if not clusters:
        return [KeySource(None, listener_key_file,
                          successor_path(listener_key_file, listener_successor), None)]
    return [KeySource(c.name, c.key_file, c.successor_key_file, c.binding) for c in clusters]


class KeyRing:
    """An immutable set of keys; the daemon swaps in a new ring when key files change."""

    def __init__(self, keys: Sequence[RingKey], clustered: bool) -> None:
        self.keys = tuple(keys)
        self.clustered = clustered  # a clusters block: every request must match a key
        # requester -> the keys that verified for it, one per cluster, most recent first;
        # and per cluster its requesters, least recently seen first: each cluster forgets
        # its own oldest, so one cluster's guests (valid key, forged sources) cannot make
        # the ring forget another cluster's requesters
        self._hints: dict[str, tuple[RingKey, ...]] = {}
        self._recent: dict[str | None, OrderedDict[str, None]] = {}
        # each cluster's keys, current first: a known requester's cluster is tried whole
        # (at most two keys) before the budgets are asked, so a rotation never mutes it
        self._by_cluster: dict[str | None, list[RingKey]] = {}
        for k in sorted(self.keys, key=lambda k: k.role != "current"):
            self._by_cluster.setdefault(k.cluster, []).append(k)

    @classmethod
    def load(cls, sources: Sequence[KeySource], *, strict: bool) -> KeyRing:
        """Read every key file. ``strict`` (start-up): a bad or missing current key is an error;
        otherwise (reload) that key is left out and logged, so it stops working."""
        keys: list[RingKey] = []
        for src in sources:
            try:
                current: bytes | None = load_daemon_key(src.key_file)
            except KeyFileError as e:
                if strict:
                    raise
                log.error("%s; the key of %s stops working until fixed", e,
                          src.cluster or "the listener")
                current = None
            try:
                successor = load_optional_key(src.successor_file)
            except KeyFileError as e:
                if strict:
                    raise
                log.error("successor key: %s; it is not used", e)
                successor = None
            for role, key, path in (("current", current, src.key_file),
                                    ("successor", successor, src.successor_file)):
                if key is not None:
                    keys.append(RingKey(src.cluster, role, path, key, fingerprint(key),
                                        src.binding))
        return cls(_without_shared_keys(keys, strict), clustered=sources[0].cluster is not None)

    @classmethod
    def single(cls, key: bytes, path: str = "(key)") -> KeyRing:
        """One key valid for every guest: fence_virtd's model (empty key: no key at all)."""
        if not key:
            return cls.keyless()
        return cls([RingKey(None, "current", path, key, fingerprint(key), None)],
                   clustered=False)

    @classmethod
    def keyless(cls) -> KeyRing:
        """hash and auth none (or the serial listener): no key at all."""
        return cls((), clustered=False)

    def describe(self) -> list[str]:
        return [k.label for k in self.keys]

    def identify(self, block: bytes, minimum: HashType, hint: str | None = None,
                 may_scan: Callable[[], bool] | None = None
                 ) -> tuple[FenceRequest, RingKey | None]:
        """Decode a request and find the key that signed it.

        The key that last verified a request from ``hint`` (the requester's address) is
        tried first; the other keys only if ``may_scan()`` allows it (the flood budget),
        else ScanRefused. Raises ProtocolError for a malformed block, AuthError when the
        request is too weak or no key signed it. An unsigned request (allowed only with
        hash none and no clusters block) comes back with no key.
        """
        request = parse_signed_request(block, minimum)
        if request.hash_type is HashType.NONE:
            if self.clustered:
                raise AuthError("unsigned request, but every cluster has its own key")
            return request, None
        size = _DIGEST_SIZES[request.hash_type]
        field_bytes = block[HASH_OFFSET:]
        if any(field_bytes[size:]):  # the C client pads with zeros; nothing else verifies
            raise AuthError(self._no_match())
        digest = field_bytes[:size]
        unsigned = unsigned_block(block)
        hinted = self._hints.get(hint, ()) if hint is not None else ()
        tried: set[int] = set()  # id() of the keys tried (the ring holds them all)
        for learnt in hinted:  # its keys first, then their clusters' other key (a rotation)
            for key in (learnt, *self._by_cluster.get(learnt.cluster, ())):
                if id(key) in tried:
                    continue
                tried.add(id(key))
                if key.signs(request.hash_type, unsigned, digest):
                    self._remember(hint, key)  # type: ignore[arg-type]
                    return request, key
        if may_scan is not None and not may_scan():
            raise ScanRefused("not tried against every key: too many datagrams that match "
                              "no key")
        for key in self.keys:  # at most one trial per key: the work per datagram is bounded
            if id(key) not in tried and key.signs(request.hash_type, unsigned, digest):
                if hint is not None:
                    self._remember(hint, key)
                return request, key
        raise AuthError(self._no_match())

    def key_for_unsigned(self) -> bytes | None:
        """The key that answers the challenge/response of an unsigned request (hash "none"
        with an auth algorithm; only without a clusters block): the current key as the
        files say now, so a retired or insecure key stops working here too. None: no
        usable key (refuse the request)."""
        if self.clustered or not self.keys:
            return None
        current = [k for k in self.keys if k.role == "current"]
        return (current or list(self.keys))[0].key

    def _no_match(self) -> str:
        if len(self.keys) <= 1:
            return "request signature does not match the key"
        return f"request signature does not match any of the {len(self.keys)} keys"

    def adopt_hints(self, older: KeyRing) -> None:
        """Keep what an older ring learnt about requesters: the same key if this ring still
        has it, else (the key was retired) its cluster's current key. A hint only orders
        the trials; the signature decides."""
        by_bytes = {(k.cluster, k.key): k for k in self.keys}
        for cluster, order in older._recent.items():
            for hint in order:  # least recent first, as they were
                old = next((k for k in older._hints.get(hint, ()) if k.cluster == cluster),
                           None)
                if old is None:
                    continue
                new = by_bytes.get((old.cluster, old.key))
                if new is None and self._by_cluster.get(old.cluster):
                    new = self._by_cluster[old.cluster][0]
                if new is not None:
                    self._remember(hint, new)

    def _remember(self, hint: str, key: RingKey) -> None:
        """``key`` first for ``hint``; the other clusters learnt for it stay behind it."""
        others = tuple(k for k in self._hints.get(hint, ()) if k.cluster != key.cluster)
        learnt = (key, *others)
        for dropped in learnt[HINT_CLUSTERS:]:
            self._recent.get(dropped.cluster, OrderedDict()).pop(hint, None)
        self._hints[hint] = learnt[:HINT_CLUSTERS]
        order = self._recent.setdefault(key.cluster, OrderedDict())
        order[hint] = None
        order.move_to_end(hint)
        while len(order) > HINTS_MAX:  # this cluster forgets its own least recent requester
            oldest, _ = order.popitem(last=False)
            left = tuple(k for k in self._hints.get(oldest, ()) if k.cluster != key.cluster)
            if left:
                self._hints[oldest] = left
            else:
                self._hints.pop(oldest, None)


def _without_shared_keys(keys: list[RingKey], strict: bool) -> list[RingKey]:
    """One key bytes, one cluster: a key shared by two clusters cannot tell who is asking."""
    owners: dict[bytes, set[str | None]] = {}
    for k in keys:
        owners.setdefault(k.key, set()).add(k.cluster)
    shared = {key for key, who in owners.items() if len(who) > 1}
    if not shared:
        return keys
    clashes = sorted({f"{k.cluster} ({k.path})" for k in keys if k.key in shared})
    message = ("the same key is used by several clusters: " + ", ".join(clashes)
               + "; give each cluster its own key (guestfence keys new FILE)")
    if strict:
        raise KeyFileError(message)
    log.error("%s; that key is not accepted for any of them", message)
    return [k for k in keys if k.key not in shared]


def file_signature(path: str) -> tuple[int, ...] | None:
    """What changes when a key file is replaced, rewritten, re-moded or removed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size, st.st_mode, st.st_uid)


class KeyFileWatcher:
    """Notices changed key files; the caller polls it (twice a second) and on SIGHUP."""

    def __init__(self, sources: Sequence[KeySource]) -> None:
        self.paths = tuple(p for s in sources for p in (s.key_file, s.successor_file))
        self._seen = self._snapshot()

    def _snapshot(self) -> tuple[tuple[int, ...] | None, ...]:
        return tuple(file_signature(p) for p in self.paths)

    def changed(self) -> bool:
        now = self._snapshot()
        if now == self._seen:
            return False
        self._seen = now
        return True


class ScanRefused(AuthError):
    """A datagram not tried against every key: its source, or all sources together, sent
    too many datagrams that matched no key lately."""


class ScanBudget:
    """A token bucket for full key scans of datagrams from requesters not known yet.

    Known requesters (whose key the ring remembers) are tried with their key first and
    never wait for this budget; so a flood from many (spoofed) addresses costs at most
    ``rate`` full scans a second (50 keys: about 40 us each), the rest a dictionary
    lookup, and the event loop keeps up instead of queueing genuine requests behind
    the flood. A new requester during such a flood may need its client's retransmission.
    """

    def __init__(self, rate: float = 2000.0, burst: float = 500.0) -> None:
        self.rate, self.burst = rate, burst
        self._tokens, self._when = burst, 0.0

    def take(self, now: float) -> bool:
        self._tokens = min(self.burst, self._tokens + (now - self._when) * self.rate)
        self._when = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class FailureLimiter:
    """Per source address, a budget of datagrams that verify with no key.

    A source that spent its budget (a burst of ``burst``, refilled at ``rate`` per
    second) has its datagrams tried only against the key it last verified with (if
    any), not against every key, until the budget refills. A guest with the right key
    never fails, so only a flooding (or misconfigured) source is ever limited; its
    flood then costs a dictionary lookup per datagram instead of one trial per key,
    and leaves the global ScanBudget to the requesters the daemon does not know yet.
    """

    def __init__(self, rate: float = 1.0, burst: float = 5.0,
                 sources_max: int = 65536) -> None:
        self.rate, self.burst, self.sources_max = rate, burst, sources_max
        self._budget: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, when

    def _tokens(self, source: str, now: float) -> float:
        tokens, when = self._budget.get(source, (self.burst, now))
        return min(self.burst, tokens + (now - when) * self.rate)

    def allows(self, source: str, now: float) -> bool:
        return source not in self._budget or self._tokens(source, now) >= 1.0

    def failed(self, source: str, now: float) -> None:
        # never below zero: a source that stops flooding is heard again within 1/rate s
        self._budget[source] = (max(0.0, self._tokens(source, now) - 1.0), now)
        self._budget.move_to_end(source)
        while len(self._budget) > self.sources_max:
            self._budget.popitem(last=False)
