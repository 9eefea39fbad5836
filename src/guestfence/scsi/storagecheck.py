"""Is this storage fit for fence_scsi in a guest cluster? Ask it, then try it.

For every LUN: TEST UNIT READY, READ KEYS and REPORT CAPABILITIES (does it
offer type 5, Write Exclusive - Registrants Only). On the LUN the operator
names as scratch, a live trial with two sessions acting as two nodes:
register both, reserve type 5, write from both, PREEMPT AND ABORT one, check
that its next write gets RESERVATION CONFLICT, check that a registration
survives a re-login of the same node, then CLEAR everything. The trial's
writes put back the data just read, so the LUN's content is unchanged; it
still must not be in use by a cluster (the trial takes its reservation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from guestfence.errors import GuestfenceError
from guestfence.scsi.pr import PrType
from guestfence.scsi.prclient import WERO, PrClient
from guestfence.scsi.sense import IllegalRequest, ScsiError, SenseKey, decode_sense
from guestfence.scsi.transport import Direction, ScsiTransport, Status

KEY_A, KEY_B = 0x67660A, 0x67660B  # "gf" + A/B: recognisable if a trial is interrupted
READ10 = bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0])
BLOCK = 512

# opener(url, node) -> a session of that "node" (its own initiator name and ISID)
Opener = Callable[[str, str], ScsiTransport]


@dataclass
class LunReport:
    url: str
    fit: bool | None = None  # None: could not tell
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def verdict(self) -> str:
        if self.fit is None:
            return "could not check: " + "; ".join(self.reasons)
        if not self.fit:
            return "not fit: " + "; ".join(self.reasons)
        return "fit for fence_scsi" + (f" ({'; '.join(self.notes)})" if self.notes else "")


def capabilities(url: str, opener: Opener) -> LunReport:
    report = LunReport(url)
    try:
        transport = opener(url, "a")
    except GuestfenceError as e:
        report.reasons.append(str(e))
        return report
    try:
        client = PrClient(transport)
        client.test_unit_ready()
        client.read_keys()
        try:
            caps = client.report_capabilities()
        except IllegalRequest:
            report.notes.append("REPORT CAPABILITIES not supported; types not advertised")
            report.fit = True
            return report
        supports = caps.supports(PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY)
        if supports is False:
            report.fit = False
            report.reasons.append("reservation type 5 (Write Exclusive, registrants only) "
                                  "not supported")
            return report
        report.fit = True
        if not caps.ptpl_c:
            report.notes.append("no APTPL: registrations are lost when the target restarts")
    except ScsiError as e:
        report.fit = False
        report.reasons.append(f"persistent reservations not usable: {e.detail}")
    except GuestfenceError as e:
        report.reasons.append(str(e))
    finally:
        transport.close()
    return report


def _write_back(transport: ScsiTransport) -> int:
    """Read block 0 and write the same bytes back; the WRITE's status (after unit attentions)."""
    data = b""
    for _ in range(4):
        got = transport.execute(READ10, Direction.FROM_DEVICE, data_in_length=BLOCK)
        if got.status == Status.GOOD:
            data = got.data
            break
    if len(data) != BLOCK:
        raise GuestfenceError("cannot read block 0 of the scratch LUN")
    write = bytes([0x2A]) + READ10[1:]
    status = Status.GOOD
    for _ in range(4):
        result = transport.execute(write, Direction.TO_DEVICE, data)
        status = Status(result.status)
        if status != Status.CHECK_CONDITION or (
                decode_sense(result.sense).key != SenseKey.UNIT_ATTENTION):
            break
    return status


def trial(url: str, opener: Opener, report: LunReport) -> None:
    """The two-node trial on a scratch LUN; leaves no key and no reservation behind."""
    a, b = opener(url, "a"), opener(url, "b")
    node_a, node_b = PrClient(a), PrClient(b)
    try:
        for client, key in ((node_a, KEY_A), (node_b, KEY_B)):
            client.test_unit_ready()
            client.register_and_ignore(key)
        node_a.reserve(KEY_A, WERO)
        if _write_back(a) != Status.GOOD or _write_back(b) != Status.GOOD:
            report.fit = False
            report.reasons.append("a registered node cannot write under a type 5 reservation")
            return
        try:
            node_a.preempt_and_abort(KEY_A, KEY_B, WERO)
        except IllegalRequest as e:
            report.fit = False
            report.reasons.append(f"PREEMPT AND ABORT rejected ({e.detail})")
            return
        if _write_back(b) != Status.RESERVATION_CONFLICT:
            report.fit = False
            report.reasons.append("a preempted node can still write")
            return
        a.close()
        a = opener(url, "a")  # the same node logs in again (same initiator name and ISID)
        node_a = PrClient(a)
        node_a.test_unit_ready()
        if _write_back(a) != Status.GOOD:
            report.notes.append("registrations do not survive a re-login (the target binds "
                                "them to the session): a node whose session drops loses its "
                                "access until it is unfenced again")
    finally:
        _clean_up(a, b)


def _clean_up(*transports: ScsiTransport) -> None:
    for transport, key in zip(transports, (KEY_A, KEY_B), strict=True):
        try:
            client = PrClient(transport)
            client.register_and_ignore(key)
            client.clear(key)  # removes every registration and the reservation
            break
        except GuestfenceError:
            continue
    for transport in transports:
        transport.close()


def check_storage(urls: list[str], scratch: str | None, opener: Opener) -> list[LunReport]:
    reports = [capabilities(url, opener) for url in urls]
    for report in reports:
        if report.fit and report.url != scratch:
            report.notes.append("PREEMPT AND ABORT not tried: name a scratch LUN of this "
                                "target with --scratch")
    if scratch is not None:
        found = next((r for r in reports if r.url == scratch), None)
        report = found if found is not None else capabilities(scratch, opener)
        if found is None:
            reports.append(report)
        if report.fit:
            try:
                trial(scratch, opener, report)
            except GuestfenceError as e:
                report.fit = None
                report.reasons.append(f"trial failed: {e}")
    return reports
