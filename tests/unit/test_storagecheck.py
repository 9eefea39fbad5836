"""storage-check's verdicts against the SPC-4 fake: fit, not fit, and nothing left behind."""

from __future__ import annotations

from guestfence.scsi.storagecheck import check_storage
from guestfence.scsi.transport import ScsiTransport

from .fake_pr_target import FakePrTarget

URL = "iscsi://127.0.0.1/iqn.2026-11.lab:disk/1"


def opener_for(target: FakePrTarget):  # type: ignore[no-untyped-def]
    def opener(url: str, node: str) -> ScsiTransport:
        return target.connect(f"iqn.2026-11.lab:check-{node}")
    return opener


def test_compliant_target_is_fit_and_left_clean() -> None:
    target = FakePrTarget(name="lun")
    (report,) = check_storage([URL], URL, opener_for(target))
    assert report.fit is True, report.verdict()
    assert report.verdict().startswith("fit for fence_scsi")
    assert target.keys == [] and target.reservation is None


def test_target_without_preempt_and_abort_is_not_fit() -> None:
    target = FakePrTarget(name="lun", reject_preempt_and_abort=True)
    (report,) = check_storage([URL], URL, opener_for(target))
    assert report.fit is False
    assert report.verdict() == ("not fit: PREEMPT AND ABORT rejected (ILLEGAL REQUEST: INVALID "
                                "FIELD IN CDB (24/00))")
    assert target.keys == [] and target.reservation is None


def test_without_scratch_only_capabilities_are_asked() -> None:
    target = FakePrTarget(name="lun", reject_preempt_and_abort=True)
    (report,) = check_storage([URL], None, opener_for(target))
    assert report.fit is True  # capabilities alone cannot reveal a missing PREEMPT AND ABORT
    assert "PREEMPT AND ABORT not tried" in report.verdict()
    assert target.writes == []
