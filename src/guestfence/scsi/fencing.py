"""I/O fencing with SCSI-3 persistent reservations, across every shared device at once.

Model (as fence-agents' fence_scsi): each node registers its key on every
shared LUN; one Write Exclusive - Registrants Only (type 5) reservation is
held; fencing a node removes its key with PREEMPT AND ABORT, which also aborts
its outstanding commands. Its later writes get RESERVATION CONFLICT.

Every action runs on all devices in parallel and is verified: a device that
fails makes the whole action fail, naming the device and the reason. Fencing
never reports success unless, on every device, the victim's key is gone and a
reservation is held (we take one ourselves if the target lost it, for
example after a restart: without it the victim could write again).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from guestfence.errors import GuestfenceError
from guestfence.scsi.prclient import WERO, PrClient
from guestfence.scsi.sense import IllegalRequest, ReservationConflict, ScsiError
from guestfence.scsi.transport import ScsiTransport

log = logging.getLogger("guestfence.fence_scsi")
T = TypeVar("T")
MAX_PARALLEL = 32


class FencingError(GuestfenceError):
    """An action failed on one or more devices; the message names each with its reason."""

    def __init__(self, action: str, failures: dict[str, str]) -> None:
        self.failures = failures
        lines = "; ".join(f"{dev}: {why}" for dev, why in failures.items())
        super().__init__(f"{action} failed on {len(failures)} device(s): {lines}")


@dataclass(frozen=True)
class FenceOutcome:
    preempted: bool  # the victim was registered on this device and was removed
    method: str  # "PREEMPT AND ABORT", "PREEMPT (fallback)" or "" when nothing was needed


Opener = Callable[[str], ScsiTransport]


class SharedStorage:
    """The shared devices of a cluster, opened on demand, acted on in parallel."""

    def __init__(self, devices: Sequence[str], opener: Opener, *, aptpl: bool = False,
                 preempt_fallback: bool = False) -> None:
        if not devices:
            raise GuestfenceError("no devices given (devices=/dev/... or iscsi://...)")
        self.devices = tuple(devices)
        self.opener = opener
        self.aptpl = aptpl
        self.preempt_fallback = preempt_fallback

    # ------------------------------------------------------------------ plumbing

    def _on_each(self, action: str, work: Callable[[PrClient], T]) -> dict[str, T]:
        """Run ``work`` on every device in parallel; all results, or FencingError."""

        def one(device: str) -> T:
            transport = self.opener(device)
            try:
                # no TEST UNIT READY first (fence-agents sends one to consume a pending
                # unit attention): PrClient retries every command after a unit attention
                return work(PrClient(transport))
            finally:
                transport.close()

        results: dict[str, T] = {}
        failures: dict[str, str] = {}
        workers = min(MAX_PARALLEL, len(self.devices))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pr") as pool:
            futures = {dev: pool.submit(one, dev) for dev in self.devices}
            for dev, future in futures.items():
                try:
                    results[dev] = future.result()
                except GuestfenceError as e:
                    failures[dev] = _reason(e, dev)
        if failures:
            raise FencingError(action, failures)
        return results

    def _register(self, client: PrClient, key: int) -> tuple[int, ...]:
        """Make sure ``key`` is registered on this I_T nexus; returns the keys then registered.

        One REGISTER quoting ``key`` as the current key asks the device itself: it
        succeeds only if this nexus holds ``key`` (and changes nothing), else it is a
        RESERVATION CONFLICT. Otherwise as fence-agents' register_dev: if the key was
        registered elsewhere it may belong to a stale nexus (an iSCSI re-login with a
        new ISID): a PREEMPT of our own key clears those, and, when we do not hold the
        reservation, also our fresh registration, so we register again.
        """
        try:
            client.register(key, current=key, aptpl=self.aptpl)
            return client.read_keys().keys
        except ReservationConflict:
            pass
        already = key in client.read_keys().keys
        client.register_and_ignore(key, aptpl=self.aptpl)
        if already:
            client.preempt(key, key, WERO)
            held = client.read_reservation().reservation
            if held is None or held.key != key:
                client.register_and_ignore(key, aptpl=self.aptpl)
        keys = client.read_keys().keys
        if key not in keys:
            raise GuestfenceError(f"key {key:x} is not registered after REGISTER")
        return keys

    # ------------------------------------------------------------------ actions

    def keys(self) -> dict[str, tuple[int, ...]]:
        return self._on_each("READ KEYS", lambda c: c.read_keys().keys)

    def is_registered(self, key: int) -> bool:
        """"on" means the key is registered on at least one device (fence-agents' status)."""
        return any(key in keys for keys in self.keys().values())

    def check_reachable(self) -> None:
        def work(client: PrClient) -> None:
            client.test_unit_ready()
            client.read_keys()

        self._on_each("monitor", work)

    def unfence(self, key: int) -> None:
        """Register ``key`` everywhere and make sure a type 5 reservation is held."""

        def work(client: PrClient) -> None:
            self._register(client, key)
            if client.read_reservation().reservation is None:
                client.reserve(key, WERO)
                if client.read_reservation().reservation is None:
                    raise GuestfenceError("no reservation after RESERVE")

        self._on_each("unfence", work)

    def fence(self, own_key: int, victim: int) -> dict[str, FenceOutcome]:
        """Remove ``victim`` from every device; verified: gone, and a reservation held."""
        if own_key == victim:
            raise GuestfenceError("you can not fence yourself: the victim's key is this "
                                  f"node's key ({own_key:x})")

        def attempt(client: PrClient) -> FenceOutcome:
            outcome = FenceOutcome(False, "")
            if victim in self._fencer_registration(client, own_key):
                outcome = FenceOutcome(True, self._preempt(client, own_key, victim))
            if client.read_reservation().reservation is None:
                # the target lost the reservation (restart, or the victim released it):
                # without one the victim could write again, so take it
                client.reserve(own_key, WERO)
                if client.read_reservation().reservation is None:
                    raise GuestfenceError("no reservation is held after fencing")
            if victim in client.read_keys().keys:
                raise GuestfenceError(f"key {victim:x} is still registered after preempting it")
            return outcome

        def work(client: PrClient) -> FenceOutcome:
            try:
                return attempt(client)
            except ReservationConflict:
                # our registration vanished under us (the session was re-established and
                # the target dropped it): once more, with the same guard against being
                # the fenced one
                log.warning("%s: reservation conflict while fencing; checking our "
                            "registration again", client.name)
                return attempt(client)

        return self._on_each("fence", work)

    def _fencer_registration(self, client: PrClient, own_key: int) -> tuple[int, ...]:
        """Our key on this nexus before we fence; the keys then registered.

        A node that has itself been fenced must not come back by fencing others (a
        split brain: both sides fence). Fencing removed every registration with its
        key, so: if other keys are registered and ours is not, refuse. fence-agents
        gets the same refusal from the target (a PREEMPT from an unregistered nexus
        is a RESERVATION CONFLICT) on versions that do not register first. Only an
        empty key list (the target lost its state, e.g. a restart without APTPL)
        lets us register again, so that a reservation can be re-established.
        """
        try:
            client.register(own_key, current=own_key)  # does this nexus hold our key?
            return client.read_keys().keys
        except ReservationConflict:
            pass
        keys = client.read_keys().keys
        if keys and own_key not in keys:
            raise GuestfenceError(
                f"this node's key {own_key:x} is not registered while others are: this node "
                "has been fenced (or was never unfenced), so it must not fence others"
            )
        return self._register(client, own_key)

    def _preempt(self, client: PrClient, own_key: int, victim: int) -> str:
        try:
            client.preempt_and_abort(own_key, victim, WERO)
            return "PREEMPT AND ABORT"
        except IllegalRequest as e:
            if not e.unsupported:
                raise
            if not self.preempt_fallback:
                raise GuestfenceError(
                    f"the target rejects PREEMPT AND ABORT ({e.detail}); it is not fit for "
                    "fence_scsi, which must abort the victim's outstanding commands. Use a "
                    "target that supports it, or set preempt_fallback=1 to use PREEMPT "
                    "(the victim's commands already queued may still complete)"
                ) from e
        log.warning("%s: PREEMPT AND ABORT is not supported by the target; falling back to "
                    "PREEMPT as preempt_fallback asks (commands the victim already queued are "
                    "not aborted)", client.name)
        client.preempt(own_key, victim, WERO)
        return "PREEMPT (fallback)"


def _reason(error: GuestfenceError, device: str) -> str:
    """The error text without repeating the device name the caller already shows."""
    text = str(error)
    prefix = f"{device}: "
    if isinstance(error, ScsiError) and text.startswith(prefix):
        return text[len(prefix):]
    return text
