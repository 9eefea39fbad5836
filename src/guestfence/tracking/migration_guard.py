"""This host's libvirt backend in host-cluster mode: no "off" while a migrated copy may live on.

An off on the source of a live migration destroys the source's qemu, but the
destination's incoming qemu may already hold the whole guest: libvirt resumes
it there if the switch-over was done before the destroy (the client's Finish
step), and tears it down otherwise. In host-cluster mode this host cannot look
at the destination's libvirt; the CPG announcements can. So when the guest was
migrating out of this host (an active libvirt job, or another host listing a
copy), a successful local off answers success only once no other host lists
the guest any more (the destination's ``STOPPED/FAILED`` removes its copy),
after a short settling time for a destination event still in flight;
otherwise, after :attr:`timeout`, failure. A later request then finds the
guest where it runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from guestfence.host.backends.libvirt import LibvirtBackend
from guestfence.virt.wire import Op, Result

log = logging.getLogger("guestfenced")

SETTLE = 0.5  # seconds for a destination's lifecycle event to reach us through CPG
POLL = 0.02


class GuardedLibvirtBackend(LibvirtBackend):
    def __init__(self, uris: Sequence[str], *, settle: float = SETTLE, **kwargs: object) -> None:
        super().__init__(uris, **kwargs)  # type: ignore[arg-type]
        self.settle = settle
        self._migrating_out: Callable[[str], bool] = lambda _uuid: False
        self._copies_elsewhere: Callable[[str], list[str]] = lambda _uuid: []

    def guard(self, migrating_out: Callable[[str], bool],
              copies_elsewhere: Callable[[str], list[str]]) -> None:
        """``migrating_out(uuid)``: a migration job runs here; ``copies_elsewhere(uuid)``:
        other hosts whose announcements list the guest (not shut off)."""
        self._migrating_out = migrating_out
        self._copies_elsewhere = copies_elsewhere

    def execute(self, op: int, target: str) -> int:
        if op not in (Op.OFF, Op.REBOOT):
            return super().execute(op, target)
        racing = self._migrating_out(target) or bool(self._copies_elsewhere(target))
        code = super().execute(op, target)
        if code != Result.SUCCESS:
            return code
        # asked again after the off: a migration that started between the first look
        # and the destroy could have switched over meanwhile
        racing = racing or self._migrating_out(target) or bool(self._copies_elsewhere(target))
        if not racing:
            return code
        started = time.monotonic()
        while True:
            others = self._copies_elsewhere(target)
            waited = time.monotonic() - started
            if not others and waited >= self.settle:
                log.info("%s: off here during a migration; no copy left elsewhere", target)
                return code
            if waited > self.power_timeout:
                log.warning("%s: off here during a migration, but %s still lists a copy "
                            "after %.0f s: fail", target, ", ".join(others), waited)
                return Result.FAIL
            time.sleep(POLL)
