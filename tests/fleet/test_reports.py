"""What a device's reports record in the audit trail (``apply_report``): each change once, with
the details the device page's update history shows (bytes downloaded, health-check output),
however many polls repeat it."""

from __future__ import annotations

import datetime
from typing import Any

from afield.fleet.models import Device
from afield.fleet.protocol import StatusReport
from afield.fleet.reports import ReportEvent, apply_report

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)
C1, C2, C3 = "1" * 64, "2" * 64, "3" * 64
V1 = {"version": "1.0.0", "commit": C1}
V2 = {"version": "1.1.0", "commit": C2}


def _report(device: Device, **report: Any) -> list[ReportEvent]:
    """Apply one report (the JSON a device sends) to ``device``; the events it records."""
    body = {"image": "gateway", "arch": "x86_64", **report}
    return apply_report(
        device,
        StatusReport.model_validate(body),
        rollout_commit=None,
        desired_commit=None,
        now=NOW,
    )


def _kinds(events: list[ReportEvent]) -> list[str]:
    return [e.kind for e in events]


def _health(commit: str, *, ok: bool, detail: str = "") -> dict[str, Any]:
    failed = [] if ok else ["50-sensors.sh"]
    return {"ok": ok, "commit": commit, "failed": failed, "detail": detail}


def _update(state: str, commit: str = C2, bytes_downloaded: int = 0) -> dict[str, Any]:
    return {
        "state": state,
        "version": "1.1.0",
        "commit": commit,
        "bytes_downloaded": bytes_downloaded,
    }


def _running_v1() -> Device:
    """A device that reported once: it runs 1.0.0 and its checks pass."""
    device = Device(id="dev-1")
    _report(device, booted=V1, health=_health(C1, ok=True))
    return device


# --- device.update_staged ----------------------------------------------------------------------


def test_a_staged_update_is_one_event_with_its_bytes_however_often_it_is_reported() -> None:
    # Threat: every poll of a device waiting to reboot adds a line to the update history.
    device = _running_v1()
    downloading = _update("downloading", bytes_downloaded=4096)
    assert _report(device, booted=V1, health=_health(C1, ok=True), update=downloading) == []
    staged = _update("staged", bytes_downloaded=52_428_800)
    first = _report(device, booted=V1, health=_health(C1, ok=True), update=staged)
    assert first == [
        ReportEvent(
            "device.update_staged",
            {"version": "1.1.0", "commit": C2, "bytes_downloaded": 52_428_800},
        )
    ]
    for _ in range(3):
        assert _report(device, booted=V1, health=_health(C1, ok=True), update=staged) == []


def test_staging_another_commit_or_staging_again_after_a_failure_is_a_new_event() -> None:
    # Threat: a second staged update hides behind the first in the history.
    device = _running_v1()
    healthy = _health(C1, ok=True)
    assert _kinds(_report(device, booted=V1, health=healthy, update=_update("staged"))) == [
        "device.update_staged"
    ]
    again = _report(device, booted=V1, health=healthy, update=_update("staged", C3))
    assert [(e.kind, e.details["commit"]) for e in again] == [("device.update_staged", C3)]
    failed = {**_update("failed", C3), "error": "disk full"}
    assert _kinds(_report(device, booted=V1, health=healthy, update=failed)) == [
        "device.update_failed"
    ]
    assert _kinds(_report(device, booted=V1, health=healthy, update=_update("staged", C3))) == [
        "device.update_staged"
    ]


# --- device.booted -------------------------------------------------------------------------------


def test_booting_the_staged_commit_records_the_bytes_its_update_downloaded() -> None:
    # Threat: the history cannot say what an update cost a metered link.
    device = _running_v1()
    staged = _update("staged", bytes_downloaded=52_428_800)
    _report(device, booted=V1, health=_health(C1, ok=True), update=staged)
    events = _report(device, booted=V2, health=_health(C2, ok=True), update={"state": "idle"})
    assert events[0] == ReportEvent(
        "device.booted", {"commit": C2, "version": "1.1.0", "bytes_downloaded": 52_428_800}
    )


def test_booting_a_commit_no_update_named_records_no_bytes() -> None:
    # Threat: a rollback or a first report is shown with another update's download size.
    device = Device(id="dev-1")
    (booted, _passed) = _report(device, booted=V1, health=_health(C1, ok=True))
    assert booted == ReportEvent("device.booted", {"commit": C1, "version": "1.0.0"})
    _report(device, booted=V1, update=_update("staged", C3, bytes_downloaded=100))
    elsewhere = _report(device, booted=V2, health=_health(C2, ok=True))  # not the staged C3
    assert elsewhere[0] == ReportEvent("device.booted", {"commit": C2, "version": "1.1.0"})


# --- device.health_failed and device.health_passed -----------------------------------------------


def test_failed_health_checks_carry_their_output() -> None:
    # Threat: an operator sees that checks failed but not why.
    device = _running_v1()
    output = "50-sensors.sh: /dev/ttyUSB0 not found"
    events = _report(device, booted=V1, health=_health(C1, ok=False, detail=output))
    assert events == [
        ReportEvent(
            "device.health_failed",
            {"commit": C1, "failed": ["50-sensors.sh"], "detail": output},
        )
    ]


def test_passing_health_checks_are_recorded_once_per_commit_with_their_output() -> None:
    # Threat: every healthy poll adds a line to the history, burying the updates.
    device = Device(id="dev-1")
    warning = "40-disk.sh: 91% used"
    first = _report(device, booted=V1, health=_health(C1, ok=True, detail=warning))
    assert first == [
        ReportEvent("device.booted", {"commit": C1, "version": "1.0.0"}),
        ReportEvent("device.health_passed", {"commit": C1, "detail": warning}),
    ]
    for _ in range(3):
        assert _report(device, booted=V1, health=_health(C1, ok=True)) == []
    assert _kinds(_report(device, booted=V2, health=_health(C2, ok=True))) == [
        "device.booted",
        "device.health_passed",
    ]


def test_health_turning_good_again_on_the_same_commit_is_recorded() -> None:
    # Threat: the history shows a device failing its checks long after it recovered.
    device = _running_v1()
    failing = _health(C1, ok=False)
    assert _kinds(_report(device, booted=V1, health=failing)) == ["device.health_failed"]
    assert _report(device, booted=V1, health=failing) == []
    recovered = _report(device, booted=V1, health=_health(C1, ok=True, detail="all 4 passed"))
    assert recovered == [
        ReportEvent("device.health_passed", {"commit": C1, "detail": "all 4 passed"})
    ]


def test_health_of_another_commit_than_the_booted_one_records_nothing() -> None:
    # Threat: checks of a deployment the device left are shown as the booted one's.
    device = _running_v1()
    assert _report(device, booted=V1, health=_health(C2, ok=False)) == []
    assert _report(device, booted=V1, health=_health(C2, ok=True)) == []


# --- a whole update, as the device page shows it -------------------------------------------------


def test_an_update_leaves_staged_booted_and_passed_in_that_order_once_each() -> None:
    # Threat: the update history misses a step or repeats one for every poll.
    device = Device(id="dev-1")
    healthy_v1, healthy_v2 = _health(C1, ok=True), _health(C2, ok=True)
    polls = [
        {"booted": V1, "health": healthy_v1},
        {"booted": V1, "health": healthy_v1, "update": _update("downloading", bytes_downloaded=1)},
        {"booted": V1, "health": healthy_v1, "update": _update("staged", bytes_downloaded=9)},
        {"booted": V1, "health": healthy_v1, "update": _update("staged", bytes_downloaded=9)},
        {"booted": V2, "health": healthy_v2, "update": {"state": "idle"}},
        {"booted": V2, "health": healthy_v2, "update": {"state": "idle"}},
    ]
    kinds = [kind for poll in polls for kind in _kinds(_report(device, **poll))]
    assert kinds == [
        "device.booted",
        "device.health_passed",
        "device.update_staged",
        "device.booted",
        "device.health_passed",
    ]
