"""What a device's status report changes: its record, its phase in a rollout, the audit trail.

:func:`apply_report` takes a device row, its report (:class:`~afield.fleet.protocol.StatusReport`)
and the release of the rollout the device is in, and updates the row in place. It returns the
events worth recording: only changes, so a fleet of devices that report every minute does not
flood the audit trail. "Before" is the report stored last (``report``); each event is recorded
once per change, however many polls repeat it:

* ``device.update_staged`` {``version``, ``commit``, ``bytes_downloaded``}: an update is staged
  for the next boot (the stored update was not staged for that commit);
* ``device.booted`` {``commit``, ``version``, and ``bytes_downloaded`` when the stored update
  was of that commit}: the device runs another commit than before;
* ``device.health_failed`` {``commit``, ``failed``, ``detail``} and ``device.health_passed``
  {``commit``, ``detail``}: the health checks of the booted commit turned bad or good (the
  stored health was not the same verdict on the same commit; ``detail`` is the checks' output);
* ``device.rolled_back`` {``from``, ``to``, ``reason``}: a rollback newer than the recorded one;
* ``device.update_failed`` / ``device.update_refused`` {``version``, ``commit``, ``error``}: an
  update failed or was refused, with another error or commit than before;
* ``device.application_failed`` {``name``, ``digest``, ``reason``}: see below.

Together they are a device's update history: what was staged (and how much it downloaded),
what it booted, and how its checks went there.

The report is stored as sent (``report``), except that a report whose ``applications`` is None
(the device did not say: an agent that predates applications, or one that skipped them) keeps
the application statuses of the report before: the device API shows them beside the digests
the device should run. An application whose state turns ``failed`` (or fails again with other
manifests) is a ``device.application_failed`` event.

The fields the summary status reads (:func:`afield.fleet.models.device_status`):

* ``current_*`` from ``booted``; ``pending_version`` and ``rollback_version`` from ``pending``
  and ``rollback`` (the commit's first 12 digits when a deployment has no version);
* ``health_ok`` from ``health`` when it is about the booted commit (else unknown);
* ``updating`` while the update is ``downloading``;
* ``rolled_back_at`` when a rollback newer than the one recorded arrives; cleared once the
  device runs the release it is told to run and its health checks pass.

The phase in a rollout (the engine's :class:`~afield.fleet.rollout.Phase`) moves only from
``pending``, ``updating`` or ``booted``, and only on news about the rollout's commit:
``rolled_back`` when the device fell back from it (or refuses it: it fell back from it
before), ``health_failed`` when its checks failed on it, ``booted`` (at the report's time) when
it runs it with passing checks, ``updating`` while it downloads or has staged it.

What it leaves to others: authenticating the device and storing (:mod:`afield.fleet.api.device`),
deciding success and timeouts (the rollout engine).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from afield._sql import as_utc
from afield.fleet.models import Device
from afield.fleet.protocol import HealthReport, StatusReport, UpdateProgress, VersionRef
from afield.fleet.rollout import Phase

__all__ = ["ReportEvent", "apply_report"]

_MOVABLE = frozenset({Phase.PENDING.value, Phase.UPDATING.value, Phase.BOOTED.value})


@dataclass(frozen=True)
class ReportEvent:
    """An event a report caused: ``kind`` (``device.booted`` ...) and its details."""

    kind: str
    details: dict[str, Any] = field(default_factory=dict)


def _name(ref: VersionRef | None) -> str | None:
    if ref is None:
        return None
    return ref.version or ref.commit[:12]


def apply_report(
    device: Device,
    report: StatusReport,
    *,
    rollout_commit: str | None,
    desired_commit: str | None,
    now: datetime.datetime,
) -> list[ReportEvent]:
    """Update ``device`` from ``report`` (see the module docstring); the events to record.

    Args:
        device: the reporting device's row.
        report: what it reported.
        rollout_commit: the commit of the rollout the device is in (None: in none).
        desired_commit: the commit the device is told to run (None: none).
        now: the server's time of the report.
    """
    events: list[ReportEvent] = []
    before = device.report or {}
    booted = report.booted
    previous_commit = device.current_commit
    stored = report.model_dump(mode="json")
    if report.applications is None and before.get("applications") is not None:
        stored["applications"] = before["applications"]
    device.report = stored
    events += _application_events(report, before)
    device.last_seen = now
    device.image = report.image or device.image
    device.arch = report.arch or device.arch
    device.current_version = None if booted is None else booted.version
    device.current_commit = None if booted is None else booted.commit
    device.pending_version = _name(report.pending)
    device.rollback_version = _name(report.rollback)
    health = report.health
    about_booted = health is not None and booted is not None and health.commit == booted.commit
    device.health_ok = health.ok if about_booted and health is not None else None
    update = report.update
    device.updating = update is not None and update.state == "downloading"

    old_update = before.get("update") or {}
    if booted is not None and booted.commit != previous_commit:
        booted_details: dict[str, Any] = {"commit": booted.commit, "version": booted.version}
        if old_update.get("commit") == booted.commit:
            booted_details["bytes_downloaded"] = old_update.get("bytes_downloaded", 0)
        events.append(ReportEvent("device.booted", booted_details))
    if about_booted and health is not None:
        events += _health_events(health, before.get("health") or {})
    rollback = report.rolled_back
    if rollback is not None:
        at = datetime.datetime.fromtimestamp(rollback.at, datetime.UTC)
        recorded = device.rolled_back_at
        if recorded is None or at > as_utc(recorded) + datetime.timedelta(milliseconds=1):
            device.rolled_back_at = at
            events.append(
                ReportEvent(
                    "device.rolled_back",
                    {
                        "from": rollback.from_commit,
                        "to": rollback.to_commit,
                        "reason": rollback.reason,
                    },
                )
            )
    if update is not None:
        events += _update_events(update, old_update)

    healthy_on_desired = (
        booted is not None and booted.commit == desired_commit and device.health_ok is True
    )
    if healthy_on_desired and (rollback is None or rollback.from_commit != desired_commit):
        device.rolled_back_at = None

    if rollout_commit is not None and device.phase in _MOVABLE:
        _move_phase(device, report, rollout_commit, now)
    return events


def _update_events(update: UpdateProgress, old: dict[str, Any]) -> list[ReportEvent]:
    """``device.update_staged`` when ``update`` is newly staged (``old``, the update stored
    before, was not staged for that commit), ``device.update_failed`` or ``_refused`` when it
    failed or was refused with another commit or error than ``old``."""
    was = (old.get("state"), old.get("commit"))
    if update.state == "staged" and was != ("staged", update.commit):
        details = {
            "version": update.version,
            "commit": update.commit,
            "bytes_downloaded": update.bytes_downloaded,
        }
        return [ReportEvent("device.update_staged", details)]
    if update.state in ("failed", "refused") and (*was, old.get("error")) != (
        update.state,
        update.commit,
        update.error,
    ):
        details = {"version": update.version, "commit": update.commit, "error": update.error}
        return [ReportEvent(f"device.update_{update.state}", details)]
    return []


def _health_events(health: HealthReport, old: dict[str, Any]) -> list[ReportEvent]:
    """``device.health_failed`` or ``device.health_passed`` when the health checks of the
    booted commit turned to that verdict: ``old`` (the health stored before) had another verdict,
    was about another commit, or is empty (none was reported)."""
    if old.get("ok") is health.ok and old.get("commit") == health.commit:
        return []
    if health.ok:
        return [
            ReportEvent("device.health_passed", {"commit": health.commit, "detail": health.detail})
        ]
    details = {"commit": health.commit, "failed": health.failed, "detail": health.detail}
    return [ReportEvent("device.health_failed", details)]


def _application_events(report: StatusReport, before: dict[str, Any]) -> list[ReportEvent]:
    """A ``device.application_failed`` for each application that failed since the last report."""
    if not report.applications:
        return []
    old = {
        str(item.get("name")): item
        for item in before.get("applications") or []
        if isinstance(item, dict)
    }
    events = []
    for status in report.applications:
        if status.state != "failed":
            continue
        was = old.get(status.name) or {}
        if (was.get("state"), was.get("digest")) != ("failed", status.digest):
            details = {"name": status.name, "digest": status.digest, "reason": status.reason}
            events.append(ReportEvent("device.application_failed", details))
    return events


def _move_phase(device: Device, report: StatusReport, commit: str, now: datetime.datetime) -> None:
    booted, health, update = report.booted, report.health, report.update
    rollback = report.rolled_back
    assigned = None if device.assigned_at is None else as_utc(device.assigned_at).timestamp()
    fell_back = (
        rollback is not None
        and rollback.from_commit == commit
        and (assigned is None or rollback.at >= assigned)
    )
    refused = update is not None and update.state == "refused" and update.commit == commit
    if fell_back or refused:
        device.phase = Phase.ROLLED_BACK.value
    elif booted is not None and booted.commit == commit:
        if health is not None and health.commit == commit:
            if not health.ok:
                device.phase = Phase.HEALTH_FAILED.value
            elif device.phase != Phase.BOOTED.value:
                device.phase = Phase.BOOTED.value
                device.booted_at = now
    elif (
        update is not None
        and update.commit == commit
        and update.state in ("downloading", "staged")
        and device.phase == Phase.PENDING.value
    ):
        device.phase = Phase.UPDATING.value
