"""``/devices`` and ``/devices/{id}``: the fleet's devices, filtered in SQL, and one device in full.

``GET /devices`` lists devices by id, :data:`PAGE` at a time, with filters from a plain GET
form (every one optional; an empty field is no filter):

* ``label=site=berlin,tier=edge``: ``key=value`` labels separated by commas, all of which
  must hold (the devices API's JSON lookup, :func:`afield.fleet.api.devices.label_filter`);
* ``status=Offline``: one of the five summary statuses, decided in SQL by
  :func:`afield.fleet.models.status_expression` (the rules of ``device_status``);
* ``version=1.2.0``: the version the device runs (``current_version``, indexed);
* ``seen``: one of :data:`SEEN`: seen within ``5m``, ``1h``, ``1d``; not seen for ``!1h``,
  ``!1d``, ``!7d`` (devices never seen included); ``never`` seen.

Pages are keyset-paginated: ``after=<id>`` starts after that device, so a page costs the same
at the start and in the middle of 100,000 devices and never repeats or skips one when devices
come and go (an offset would); a rare filter does not make a page walk the whole id index
(:func:`_page` says how). The page shows the fleet's total (one index count) but not how many
devices pass the filters: at 100,000 devices that count reads every row through the JSON or
status filter, several times the page's own cost (``benchmarks/dashboard.py`` measures it);
a "Next" link says more follow. A malformed filter is a 400 page naming the filter and what it
accepts. Times compare with the app's clock, as UTC (SQLite keeps UTC wall times, no zone).

``GET /devices/{id}`` (any id the API allows, slashes included: links quote it) shows one
device: identity and status, the versions it boots, has staged, would roll back to and is told
to run, its last health check with the failed checks' output, the health verdicts and updates
of its last boots (bytes downloaded included) from the audit trail (events whose subject is
``device:<id>``, newest first by id), how it was onboarded (enrollment time, certificate serial,
its ``device.enrolled`` events, and the FDO voucher's events, whose subject is ``guid:<guid>``),
its applications, its place in a rollout and its latest :data:`EVENTS` events. An unknown id
is a 404 page naming it.

Everything from a device or an operator is shown through Jinja's autoescaping, never ``|safe``.

What it leaves to others: the status rules and tables (:mod:`afield.fleet.models`), what an
application's state means (:mod:`afield.fleet.api.devices`), sessions and rendering
(:mod:`afield.web._session`, :mod:`afield.web._render`), changing devices (the API).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import ColumnElement, Row, and_, func, or_, select
from sqlalchemy.orm import Session

from afield._sql import as_utc
from afield.fleet.api.deps import CHECKINS_WRITTEN, TEXT, SessionDep
from afield.fleet.api.devices import device_applications, label_filter
from afield.fleet.applications import sources
from afield.fleet.models import (
    Device,
    DeviceStatus,
    Event,
    Rollout,
    status_expression,
)
from afield.fleet.policy import Selector, SelectorError
from afield.web._render import render
from afield.web._session import PageError, ViewerPage

__all__ = ["EVENTS", "HISTORY", "PAGE", "SEEN", "device_path", "router"]

router = APIRouter()

PAGE = 50
"""Devices per page of ``/devices``."""
EVENTS = 50
"""Events of one device shown on its page, newest first."""
HISTORY = 20
"""Boots, health verdicts and update steps shown on a device's page, newest first."""
_PROBE = 5000  # ids a page walks along the id index before it reads the rest otherwise

SEEN: dict[str, tuple[str, int | None]] = {
    "5m": ("seen within 5 min", 300),
    "1h": ("seen within 1 h", 3600),
    "1d": ("seen within 1 day", 86400),
    "!1h": ("not seen for 1 h (or never)", -3600),
    "!1d": ("not seen for 1 day (or never)", -86400),
    "!7d": ("not seen for 7 days (or never)", -7 * 86400),
    "never": ("never seen", None),
}
"""The ``seen`` filter's values: a label for the form and seconds (negative: not seen for)."""

_STATUSES = [s.value for s in DeviceStatus]
_LABEL_EXAMPLE = "site=berlin,tier=edge"
_BOOT_KINDS = ("device.booted", "device.health_passed", "device.health_failed")
_UPDATE_KINDS = (
    "device.update_staged",
    "device.booted",
    "device.update_failed",
    "device.update_refused",
    "device.rolled_back",
)
_ONBOARDING_KINDS = ("device.enrolled", "device.reenrolled")


def device_path(device_id: str) -> str:
    """The page of device ``device_id`` (every character that is not a letter, digit or
    ``_.-~`` percent-encoded, ``/`` included)."""
    return "/devices/" + quote(device_id, safe="")


# --- the list ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """The list's filters as the form sent them (empty: no filter); :func:`_conditions` checks
    them."""

    label: str = ""
    status: str = ""
    version: str = ""
    seen: str = ""

    def params(self) -> dict[str, str]:
        """The filters as query parameters (what links to other pages keep)."""
        return {
            "label": self.label,
            "status": self.status,
            "version": self.version,
            "seen": self.seen,
        }

    def any(self) -> bool:
        """Whether any filter is set."""
        return any(self.params().values())


def _labels(text: str) -> list[tuple[str, str]]:
    """The ``key=value`` pairs of the ``label`` filter.

    Raises:
        PageError: 400 naming the filter, the part at fault and an example.
    """
    try:
        selector = Selector.parse(text)
    except SelectorError as e:
        raise PageError(
            400,
            "Bad filter",
            f"label: {e}; expected key=value labels separated by commas, such as {_LABEL_EXAMPLE}",
        ) from None
    pairs = []
    for key, op, value in selector.requirements:
        if op != "=":
            shown = {"!=": f"{key}!={value}", "exists": key, "absent": f"!{key}"}[op]
            raise PageError(
                400,
                "Bad filter",
                f"label: {shown!r} is not key=value; the label filter takes key=value labels "
                f"separated by commas, such as {_LABEL_EXAMPLE}",
            )
        pairs.append((key, value))
    return pairs


def _conditions(filters: Filters, now: datetime.datetime, offline_after: float) -> list[Any]:
    """The SQL conditions of ``filters`` at ``now``.

    Raises:
        PageError: 400 for a malformed filter, naming it and what it accepts.
    """
    conditions: list[ColumnElement[bool]] = []
    if filters.label:
        conditions += [label_filter(key, value) for key, value in _labels(filters.label)]
    if filters.status:
        if filters.status not in _STATUSES:
            raise PageError(
                400,
                "Bad filter",
                f"status: {filters.status!r} is not a status; expected one of "
                f"{', '.join(_STATUSES)} (or empty for any)",
            )
        conditions.append(status_expression(now, offline_after) == filters.status)
    if filters.version:
        conditions.append(Device.current_version == filters.version)
    if filters.seen:
        if filters.seen not in SEEN:
            raise PageError(
                400,
                "Bad filter",
                f"seen: {filters.seen!r} is not accepted; expected one of {', '.join(SEEN)} "
                "(5m: seen within 5 minutes, !1d: not seen for a day, never: never seen)",
            )
        seconds = SEEN[filters.seen][1]
        if seconds is None:
            conditions.append(Device.last_seen.is_(None))
        else:
            cutoff = as_utc(now) - datetime.timedelta(seconds=abs(seconds))
            if seconds > 0:
                conditions.append(Device.last_seen >= cutoff)
            else:
                conditions.append(or_(Device.last_seen.is_(None), Device.last_seen < cutoff))
    return conditions


@dataclass(frozen=True)
class DeviceRow:
    """One line of the list."""

    id: str
    url: str
    name: str
    status: str
    labels: list[tuple[str, str]]
    image: str | None
    arch: str | None
    current_version: str | None
    pending_version: str | None
    last_seen: datetime.datetime | None
    rollout_id: int | None
    phase: str
    batch: int | None


def _label_pairs(labels: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    return sorted((str(k), str(v)) for k, v in (labels or {}).items())


def _rows(
    session: Session,
    conditions: Sequence[Any],
    status: ColumnElement[str],
    limit: int,
    *,
    window: tuple[str | None, str | None] = (None, None),
    beyond: str | None = None,
) -> list[Row[Any]]:
    """Up to ``limit`` rows of the list passing ``conditions``, by id.

    ``window``: ids in (low, high] only, walked along the id index. ``beyond``: ids above it,
    compared as ``id || ''`` so that no database walks the id index for them: it reads the
    rows the other conditions' indexes choose (all of them, for a label filter) and sorts
    the few that pass.
    """
    query = select(
        Device.id,
        Device.name,
        Device.labels,
        Device.image,
        Device.arch,
        Device.current_version,
        Device.pending_version,
        Device.last_seen,
        Device.rollout_id,
        Device.phase,
        Device.batch,
        status,
    ).where(*conditions)
    low, high = window
    if low is not None:
        query = query.where(Device.id > low)
    if high is not None:
        query = query.where(Device.id <= high)
    if beyond is not None:
        unindexed = Device.id.concat("")
        query = query.where(unindexed > beyond).order_by(unindexed)
    else:
        query = query.order_by(Device.id)
    return list(session.execute(query.limit(limit)).all())


def _page(
    session: Session,
    conditions: Sequence[Any],
    after: str | None,
    now: datetime.datetime,
    offline_after: float,
) -> tuple[list[DeviceRow], bool]:
    """Up to :data:`PAGE` devices after ``after`` by id, and whether more follow.

    Walking the id index and reading each row it names finds a page at once when many
    devices pass the filters, but reads the rows in random order: through a filter that 0.2%
    of 100,000 devices pass it took 250 ms, four times a plain scan. So the walk covers the
    next :data:`_PROBE` ids only; if they hold less than a page, the rest of the page comes
    from the devices beyond them, read the way the filters' indexes (or a scan) read best.
    """
    status = status_expression(now, offline_after).label("status")
    wanted = PAGE + 1  # one more than shown: whether a next page exists
    edge = select(Device.id).order_by(Device.id).offset(_PROBE - 1).limit(1)
    if after is not None:
        edge = edge.where(Device.id > after)
    high = session.scalar(edge)
    rows = _rows(session, conditions, status, wanted, window=(after, high))
    if len(rows) < wanted and high is not None:
        rows += _rows(session, conditions, status, wanted - len(rows), beyond=high)
    shown = [
        DeviceRow(
            id=row.id,
            url=device_path(row.id),
            name=row.name,
            status=row.status,
            labels=_label_pairs(row.labels),
            image=row.image,
            arch=row.arch,
            current_version=row.current_version,
            pending_version=row.pending_version,
            last_seen=row.last_seen,
            rollout_id=row.rollout_id,
            phase=row.phase,
            batch=row.batch,
        )
        for row in rows[:PAGE]
    ]
    return shown, len(rows) > PAGE


def _versions(session: Session) -> list[str]:
    """The versions devices run, for the form's suggestions (a walk of the version index)."""
    query = select(Device.current_version).where(Device.current_version.is_not(None)).distinct()
    return sorted(str(v) for v in session.scalars(query))


_FilterQuery = Annotated[str, Query(max_length=512, pattern=TEXT)]


@router.get("/devices", dependencies=[CHECKINS_WRITTEN])
def devices_page(
    request: Request,
    caller: ViewerPage,
    session: SessionDep,
    label: _FilterQuery = "",
    status: _FilterQuery = "",
    version: _FilterQuery = "",
    seen: _FilterQuery = "",
    after: Annotated[str | None, Query(max_length=128, pattern=TEXT)] = None,
) -> HTMLResponse:
    """The devices, :data:`PAGE` at a time, filtered (see the module docstring)."""
    now: datetime.datetime = request.app.state.clock()
    offline_after: float = request.app.state.offline_after
    filters = Filters(label.strip(), status.strip(), version.strip(), seen.strip())
    conditions = _conditions(filters, now, offline_after)
    rows, more = _page(session, conditions, after or None, now, offline_after)
    return render(
        request,
        "devices.html",
        caller=caller,
        section="devices",
        filters=filters,
        params=filters.params(),
        rows=rows,
        after=after or None,
        next_after=rows[-1].id if more else None,
        page_size=PAGE,
        statuses=_STATUSES,
        versions=_versions(session),
        total=session.scalar(select(func.count()).select_from(Device)),
        seen_choices=[(value, text) for value, (text, _) in SEEN.items()],
        label_example=_LABEL_EXAMPLE,
    )


# --- one device ----------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryRow:
    """One boot, health verdict or update step of a device, from an event."""

    time: datetime.datetime
    kind: str
    what: str
    badge: str
    version: str | None = None
    commit: str | None = None
    bytes_downloaded: int | None = None
    failed: list[str] = field(default_factory=list)
    detail: str = ""
    note: str = ""


_WHAT = {
    "device.booted": ("booted", "booted"),
    "device.health_passed": ("health checks passed", "ok"),
    "device.health_failed": ("health checks failed", "health_failed"),
    "device.update_staged": ("update staged", "pending"),
    "device.update_failed": ("update failed", "failed"),
    "device.update_refused": ("update refused", "failed"),
    "device.rolled_back": ("rolled back", "rolled_back"),
}


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _history(event: Event) -> HistoryRow:
    """``event`` (one of the kinds in :data:`_WHAT`) as a line of a history table."""
    details = event.details or {}
    what, badge = _WHAT.get(event.kind, (event.kind, ""))
    raw_bytes = details.get("bytes_downloaded")
    failed = details.get("failed")
    note = _text(details.get("error")) or _text(details.get("reason")) or ""
    commit = _text(details.get("commit"))
    if event.kind == "device.rolled_back":
        commit = _text(details.get("from"))
        note = f"to {str(details.get('to') or '?')[:12]}" + (f": {note}" if note else "")
    return HistoryRow(
        time=event.time,
        kind=event.kind,
        what=what,
        badge=badge,
        version=_text(details.get("version")),
        commit=commit,
        bytes_downloaded=raw_bytes if isinstance(raw_bytes, int) else None,
        failed=[str(f) for f in failed] if isinstance(failed, list) else [],
        detail=str(details.get("detail") or ""),
        note=note,
    )


def _details_text(details: Mapping[str, Any] | None) -> str:
    """An event's details as ``key=value`` text (non-strings as JSON)."""
    parts = []
    for key, value in (details or {}).items():
        shown = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        parts.append(f"{key}={shown}")
    return ", ".join(parts)


def _events(session: Session, where: ColumnElement[bool], limit: int) -> list[Event]:
    """The newest ``limit`` events for which ``where`` holds, newest first."""
    query = select(Event).where(where).order_by(Event.id.desc()).limit(limit)
    return list(session.scalars(query))


def _health(report: Mapping[str, Any]) -> dict[str, Any] | None:
    health = report.get("health")
    if not isinstance(health, dict):
        return None
    failed = health.get("failed")
    return {
        "ok": bool(health.get("ok")),
        "commit": _text(health.get("commit")),
        "failed": [str(f) for f in failed] if isinstance(failed, list) else [],
        "detail": str(health.get("detail") or ""),
    }


def _part(report: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    value = report.get(name)
    return value if isinstance(value, dict) else None


def _rollback_time(rolled_back: Mapping[str, Any] | None) -> datetime.datetime | None:
    at = None if rolled_back is None else rolled_back.get("at")
    if not isinstance(at, int | float) or not 0 <= at < 2**40:
        return None
    return datetime.datetime.fromtimestamp(at, datetime.UTC)


def _device_context(session: Session, device: Device) -> dict[str, Any]:
    """What ``device.html`` shows of ``device`` besides the row itself."""
    report = device.report or {}
    about = Event.subject == f"device:{device.id}"
    onboarded: ColumnElement[bool] = and_(about, Event.kind.in_(_ONBOARDING_KINDS))
    if device.guid:  # the FDO voucher's events name the GUID
        onboarded = or_(onboarded, Event.subject == f"guid:{device.guid}")
    rolled_back = _part(report, "rolled_back")
    return {
        "labels": _label_pairs(device.labels),
        "health": _health(report),
        "update": _part(report, "update"),
        "rolled_back": rolled_back,
        "rolled_back_time": _rollback_time(rolled_back),
        "boots": [
            _history(e) for e in _events(session, and_(about, Event.kind.in_(_BOOT_KINDS)), HISTORY)
        ],
        "updates": [
            _history(e)
            for e in _events(session, and_(about, Event.kind.in_(_UPDATE_KINDS)), HISTORY)
        ],
        "onboarding": [(e, _details_text(e.details)) for e in _events(session, onboarded, HISTORY)],
        "applications": device_applications(device, sources(session, device.id, device.labels)),
        "rollout": None if device.rollout_id is None else session.get(Rollout, device.rollout_id),
        "events": [(e, _details_text(e.details)) for e in _events(session, about, EVENTS)],
        "events_limit": EVENTS,
    }


@router.get("/devices/{device_id:path}", dependencies=[CHECKINS_WRITTEN])
def device_page(
    request: Request,
    caller: ViewerPage,
    session: SessionDep,
    device_id: Annotated[str, Path(max_length=128, pattern=TEXT)],
) -> HTMLResponse:
    """One device in full (see the module docstring)."""
    now: datetime.datetime = request.app.state.clock()
    status = status_expression(now, request.app.state.offline_after).label("status")
    found = session.execute(select(Device, status).where(Device.id == device_id)).one_or_none()
    if found is None:
        raise PageError(
            404,
            "No such device",
            f"there is no device {device_id!r}; the devices page lists every device",
        )
    device: Device = found[0]
    return render(
        request,
        "device.html",
        caller=caller,
        section="devices",
        device=device,
        device_status=found[1],
        **_device_context(session, device),
    )
