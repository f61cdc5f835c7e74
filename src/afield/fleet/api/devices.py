"""``/api/v1/devices``: list devices (filtered by labels and status, a page at a time) and show one.

``GET /api/v1/devices?label=site=berlin&label=tier=edge&status=Offline&limit=100&cursor=C``
answers ``{"data": [...], "count": n, "next_cursor": C2 | null}``. Pages are keyset-paginated by
device id: ``next_cursor`` is the id of the page's last device and the next page starts after
it, so a page never repeats or skips a device when others are added or removed meanwhile (an
offset would). Label filters are ``key=value`` equalities, all of which must hold, evaluated in
SQL; so is the ``status`` filter (:func:`afield.fleet.models.status_expression`, which a test
holds to :func:`~afield.fleet.models.device_status`, the one definition of a status).

Each device lists its ``applications``: every application it should run (its fleets' and its
own, as resolved by :mod:`afield.fleet.applications`) or still reports, with the digest it
should run beside the digest and state it reported, so an operator sees an application that
runs old manifests, failed (and why) or was never reported. ``source`` (``fleet:NAME`` or
``device``) is shown by ``GET /api/v1/devices/{id}`` only: lists leave it None.

What it leaves to others: creating and updating devices (enrollment and the device API, later
slices), the status definitions (:mod:`afield.fleet.models`).
"""

from __future__ import annotations

import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel
from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from afield.fleet.api.deps import (
    CHECKINS_WRITTEN,
    TEXT,
    ApiError,
    CursorQuery,
    LimitQuery,
    NowDep,
    OfflineAfterDep,
    Page,
    SessionDep,
    iso,
)
from afield.fleet.applications import decode, sources
from afield.fleet.auth import ViewerDep
from afield.fleet.models import Device, DeviceStatus, device_status, status_expression
from afield.fleet.policy import Selector, SelectorError

__all__ = [
    "DeviceApplication",
    "DeviceDesired",
    "DevicePublic",
    "DeviceRollout",
    "DevicesPublic",
    "device_public",
    "label_filter",
    "router",
]

router = APIRouter(prefix="/devices", tags=["devices"])


class DeviceRollout(BaseModel):
    """Where a device is in the rollout it belongs to."""

    rollout_id: int
    phase: str
    batch: int | None
    assigned_at: datetime.datetime | None
    booted_at: datetime.datetime | None


class DeviceDesired(BaseModel):
    """The release a device is told to run."""

    image: str
    arch: str
    version: str
    commit: str


class DeviceApplication(BaseModel):
    """An application of a device: the digest it should run beside what it reported.

    ``desired_digest`` None: the device should not run it (any more); ``reported_digest`` and
    ``state`` None: the device has not reported it. ``up_to_date``: it reported the digest it
    should run. ``source``: ``fleet:NAME`` or ``device`` (in the one-device view only).
    """

    name: str
    source: str | None = None
    desired_digest: str | None
    reported_digest: str | None
    state: str | None
    reason: str
    up_to_date: bool


def device_applications(
    device: Device, source: dict[str, str] | None = None
) -> list[DeviceApplication]:
    """The applications of ``device`` (see :class:`DeviceApplication`), by name."""
    desired = {str(a.get("name")): str(a.get("digest")) for a in decode(device.applications)}
    reported = {
        str(s.get("name")): s
        for s in (device.report or {}).get("applications") or []
        if isinstance(s, dict)
    }
    shown = []
    for name in sorted(desired.keys() | reported.keys()):
        status = reported.get(name, {})
        digest = status.get("digest")
        shown.append(
            DeviceApplication(
                name=name,
                source=(source or {}).get(name),
                desired_digest=desired.get(name),
                reported_digest=None if digest is None else str(digest),
                state=None if status.get("state") is None else str(status["state"]),
                reason=str(status.get("reason") or ""),
                up_to_date=name in desired and digest == desired[name],
            )
        )
    return shown


class DevicePublic(BaseModel):
    """A device as the API shows it, with its derived summary ``status``.

    ``report`` is the device's last status report as it sent it (health checks that failed,
    the update in progress, the last rollback); see :class:`afield.fleet.protocol.StatusReport`.
    ``applications``: see :class:`DeviceApplication`.
    """

    id: str
    name: str
    labels: dict[str, str]
    status: DeviceStatus
    guid: str | None
    image: str | None
    arch: str | None
    enrolled_at: datetime.datetime | None
    desired: DeviceDesired | None
    current_version: str | None
    current_commit: str | None
    pending_version: str | None
    rollback_version: str | None
    last_seen: datetime.datetime | None
    health_ok: bool | None
    updating: bool
    rolled_back_at: datetime.datetime | None
    rollout: DeviceRollout | None
    report: dict[str, Any]
    applications: list[DeviceApplication]


class DevicesPublic(Page):
    """One page of devices."""

    data: list[DevicePublic]


def device_public(
    device: Device,
    now: datetime.datetime,
    offline_after: float,
    source: dict[str, str] | None = None,
) -> DevicePublic:
    """The API's view of ``device`` at ``now`` (``source``: where its applications come from)."""
    rollout = None
    if device.rollout_id is not None:
        rollout = DeviceRollout(
            rollout_id=device.rollout_id,
            phase=device.phase,
            batch=device.batch,
            assigned_at=iso(device.assigned_at),
            booted_at=iso(device.booted_at),
        )
    desired = device.desired_release
    return DevicePublic(
        id=device.id,
        name=device.name,
        labels={str(k): str(v) for k, v in (device.labels or {}).items()},
        status=device_status(device, now, offline_after),
        guid=device.guid,
        image=device.image,
        arch=device.arch,
        enrolled_at=iso(device.enrolled_at),
        desired=None
        if desired is None
        else DeviceDesired(
            image=desired.image,
            arch=desired.arch,
            version=desired.version,
            commit=desired.commit,
        ),
        current_version=device.current_version,
        current_commit=device.current_commit,
        pending_version=device.pending_version,
        rollback_version=device.rollback_version,
        last_seen=iso(device.last_seen),
        health_ok=device.health_ok,
        updating=device.updating,
        rolled_back_at=iso(device.rolled_back_at),
        rollout=rollout,
        report=dict(device.report or {}),
        applications=device_applications(device, source),
    )


def label_filter(key: str, value: str) -> ColumnElement[bool]:
    """SQL that holds for devices whose label ``key`` is ``value`` (a JSON lookup in ``labels``).

    The devices API and the dashboard filter with it; checking ``key`` and ``value`` (a
    :class:`~afield.fleet.policy.Selector` parses them) is the caller's.
    """
    matches: ColumnElement[bool] = Device.labels[key].as_string() == value
    return matches


def _label_filters(labels: list[str]) -> list[ColumnElement[bool]]:
    filters: list[ColumnElement[bool]] = []
    for index, item in enumerate(labels):
        where = f"label[{index}]"
        try:
            selector = Selector.parse(item)
        except SelectorError as e:
            raise ApiError(422, f"{where}: {e}", field=where) from None
        requirements = selector.requirements
        if len(requirements) != 1 or requirements[0][1] != "=":
            raise ApiError(
                422,
                f"{where}: {item!r} is not one key=value label (such as site=berlin); "
                "repeat label= for more",
                field=where,
            )
        key, _, value = requirements[0]
        filters.append(label_filter(key, value))
    return filters


def _page(
    session: Session, filters: list[ColumnElement[bool]], cursor: str | None, limit: int
) -> tuple[list[Device], str | None]:
    """Up to ``limit`` devices after ``cursor`` that pass ``filters``, by id, and the next
    page's cursor (one row more than ``limit`` is read to know whether there is one)."""
    query = select(Device).where(*filters).order_by(Device.id).limit(limit + 1)
    if cursor is not None:
        query = query.where(Device.id > cursor)
    devices = list(session.scalars(query).all())
    if len(devices) > limit:
        return devices[:limit], devices[limit - 1].id
    return devices, None


@router.get("", operation_id="devices-list", dependencies=[CHECKINS_WRITTEN])
def list_devices(
    session: SessionDep,
    caller: ViewerDep,
    now: NowDep,
    offline_after: OfflineAfterDep,
    label: Annotated[
        list[str],
        Query(max_length=20, description="key=value; repeat for more (all must hold)."),
    ] = [],  # noqa: B006  # FastAPI copies defaults
    status: Annotated[
        DeviceStatus | None, Query(description="Only devices in this status.")
    ] = None,
    limit: LimitQuery = 100,
    cursor: CursorQuery = None,
) -> DevicesPublic:
    """Devices by id, a page at a time, filtered by labels and status."""
    filters = _label_filters(label)
    if status is not None:
        filters.append(status_expression(now, offline_after) == status.value)
    devices, next_cursor = _page(session, filters, cursor, limit)
    data = [device_public(d, now, offline_after) for d in devices]
    return DevicesPublic(data=data, count=len(data), next_cursor=next_cursor)


@router.get("/{device_id}", operation_id="devices-show", dependencies=[CHECKINS_WRITTEN])
def show_device(
    session: SessionDep,
    caller: ViewerDep,
    now: NowDep,
    offline_after: OfflineAfterDep,
    device_id: Annotated[str, Path(max_length=128, pattern=TEXT)],
) -> DevicePublic:
    """One device."""
    device = session.get(Device, device_id)
    if device is None:
        raise ApiError(404, f"no device {device_id!r}", field="device_id")
    return device_public(device, now, offline_after, sources(session, device.id, device.labels))
