"""Rules on fence_scsi and the shared storage it fences.

They apply only to clusters that list fence_scsi: storage without fence_scsi
needs no SCSI-3 persistent reservations (the seed says the RHEL iSCSI server is
fine as storage "in conjunction with other fence devices").

Target software: "tgt", "scsi-target-utils", "iscsitarget", "ietd" (the
iSCSI servers shipped with RHEL, per the seed without SCSI-3 PR) are errors
whatever the flags say; "guestfence" (our own target) supports both features.
Anything else is judged by the `persistent_reservations` and
`preempt_and_abort` flags; unknown flags are a warning.
"""

from __future__ import annotations

from collections.abc import Iterator

from guestfence.check.model import Finding, Storage, Topology
from guestfence.check.rules_common import ClusterView, Rule, layout, names

RHEL_TARGETS = frozenset({"tgt", "tgtd", "scsi-target-utils", "iscsitarget", "ietd"})
PR_TARGETS = frozenset({"guestfence"})


def _scsi_iscsi(v: ClusterView) -> list[Storage]:
    return [s for s in v.cluster.storage if s.kind == "iscsi"] if v.scsi else []


def _software(s: Storage) -> str:
    return (s.software or "").strip().lower()


def scsi_no_storage(topology: Topology) -> Iterator[Finding]:
    """fence_scsi needs shared storage to fence."""
    for v in layout(topology).clusters:
        if v.scsi and not v.cluster.storage:
            yield SCSI_NO_STORAGE.finding(
                f"cluster {v.name} uses fence_scsi but lists no shared storage",
                f"add the cluster's iSCSI LUNs under `storage:` of {v.name} (fence_scsi fences "
                "by removing a node's registration from them)",
                cluster=v.name, origin=v.cluster.origin)


SCSI_NO_STORAGE = Rule(
    "SCSI-NO-STORAGE", "error", scsi_no_storage,
    "fence_scsi can be used to provide I/O fencing for shared storage provided over iSCSI if "
    "the iSCSI target properly supports SCSI 3 persistent reservations and the PREEMPT AND "
    "ABORT command.")


def scsi_iscsi_only(topology: Topology) -> Iterator[Finding]:
    """With fence_scsi, all shared storage is iSCSI."""
    for v in layout(topology).clusters:
        native = [s for s in v.cluster.storage if s.kind == "native"] if v.scsi else []
        if native:
            yield SCSI_ISCSI_ONLY.finding(
                f"cluster {v.name} uses fence_scsi with native shared storage "
                f"{names(s.target for s in native)}",
                f"move {names(s.target for s in native)} to iSCSI, or fence {v.name} with the "
                "platform's own agent instead of fence_scsi",
                cluster=v.name, origin=native[0].origin)


SCSI_ISCSI_ONLY = Rule(
    "SCSI-ISCSI-ONLY", "error", scsi_iscsi_only,
    "If fence_scsi is used as the fence agent, all shared storage must be over iSCSI. Mixing "
    "of iSCSI and native shared storage is not permitted.")


def scsi_rhel_target(topology: Topology) -> Iterator[Finding]:
    """fence_scsi storage is not served by the iSCSI server shipped with RHEL."""
    for v in layout(topology).clusters:
        for s in _scsi_iscsi(v):
            if _software(s) in RHEL_TARGETS:
                yield SCSI_RHEL_TARGET.finding(
                    f"cluster {v.name} uses fence_scsi on {s.target}, served by {s.software}",
                    f"serve {s.target} from a target with SCSI-3 persistent reservations and "
                    "PREEMPT AND ABORT (e.g. guestfence's), or fence without fence_scsi",
                    cluster=v.name, origin=s.origin)


SCSI_RHEL_TARGET = Rule(
    "SCSI-RHEL-TARGET", "error", scsi_rhel_target,
    "The iSCSI server software shipped with Red Hat Enterprise Linux does not support SCSI 3 "
    "persistent reservations; therefore, it cannot be used with fence_scsi.")


def _lacks(s: Storage) -> list[str]:
    return [what for what, flag in (("SCSI-3 persistent reservations", s.persistent_reservations),
                                    ("PREEMPT AND ABORT", s.preempt_and_abort)) if flag is False]


def scsi_pr(topology: Topology) -> Iterator[Finding]:
    """fence_scsi targets support SCSI-3 PR with PREEMPT AND ABORT."""
    for v in layout(topology).clusters:
        for s in _scsi_iscsi(v):
            lacks = _lacks(s)
            if lacks and _software(s) not in RHEL_TARGETS:
                yield SCSI_PR.finding(
                    f"cluster {v.name} uses fence_scsi on {s.target}, which lacks "
                    f"{names(lacks)}",
                    f"serve {s.target} from a target that supports both, or fence {v.name} "
                    "without fence_scsi", cluster=v.name, origin=s.origin)


SCSI_PR = Rule(
    "SCSI-PR", "error", scsi_pr,
    "Use of fence_scsi with iSCSI storage is limited to iSCSI servers that support SCSI 3 "
    "Persistent Reservations with the PREEMPT AND ABORT command.")


def scsi_pr_unknown(topology: Topology) -> Iterator[Finding]:
    """fence_scsi targets whose PR support is not known are to be checked with the vendor."""
    for v in layout(topology).clusters:
        for s in _scsi_iscsi(v):
            sw = _software(s)
            unknown = [what for what, flag in (("persistent_reservations",
                                                s.persistent_reservations),
                                               ("preempt_and_abort", s.preempt_and_abort))
                       if flag is None]
            if unknown and not _lacks(s) and sw not in RHEL_TARGETS | PR_TARGETS:
                yield SCSI_PR_UNKNOWN.finding(
                    f"cluster {v.name} uses fence_scsi on {s.target}"
                    + (f" ({s.software})" if s.software else "")
                    + f", whose {names(unknown)} support is not stated",
                    "check with your storage vendor that the target supports SCSI-3 persistent "
                    f"reservations with PREEMPT AND ABORT, then set {names(unknown)}: true",
                    cluster=v.name, origin=s.origin)


SCSI_PR_UNKNOWN = Rule(
    "SCSI-PR-UNKNOWN", "warning", scsi_pr_unknown,
    "Check with your storage vendor to ensure that your server is compliant with SCSI 3 "
    "Persistent Reservation support.")
