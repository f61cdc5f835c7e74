"""``/events``: the audit trail, newest first, filtered and paged in SQL.

``GET /events`` lists events :data:`PAGE` at a time, newest first (keyset: ``before=<id>``
shows the events older than that one, so a page costs the same at any depth and never repeats
one when events arrive meanwhile). Filters come from a plain GET form; each is optional and an
empty field is no filter:

* ``kind``: exactly this kind (``rollout.pause``); the form offers :data:`KNOWN_KINDS` and
  takes any other text;
* ``actor``: exactly this actor (``admin:ops``, ``device:gw-1``, ``system``);
* ``subject``: exactly this subject (``rollout:12``, ``berlin``), or every subject starting
  with it when it ends in ``:`` (``device:``) or ``*`` (``release:gateway/*``);
* ``since`` and ``until``: a date (``2026-01-31``) or a time (``2026-01-31T12:00``, UTC unless
  it names its offset); both ends count, and a date as ``until`` means the end of that day.

A malformed filter (a time that is not one, ``since`` after ``until``, a cursor that is not an
id) is a 400 page naming the filter and what it accepts. Details are shown as ``key: value``
pairs through Jinja's autoescaping: the audit trail holds what devices and operators wrote.

What it leaves to others: recording events (:func:`afield.fleet.api.deps.record` and its
callers), retention, sessions and rendering (:mod:`afield.web._session`,
:mod:`afield.web._render`).
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import ColumnElement, select

from afield.fleet.api.deps import TEXT, SessionDep, newest_first
from afield.fleet.models import Event
from afield.web._render import before_cursor, render
from afield.web._session import PageError, ViewerPage
from afield.web.devices import device_path

__all__ = ["KNOWN_KINDS", "PAGE", "EventFilters", "router", "subject_link"]

router = APIRouter()

PAGE = 50
"""Events per page of ``/events``."""
KNOWN_KINDS = (
    "application.delete",
    "application.set",
    "device.application_failed",
    "device.booted",
    "device.enrolled",
    "device.health_failed",
    "device.health_passed",
    "device.reenrolled",
    "device.rolled_back",
    "device.update_failed",
    "device.update_refused",
    "device.update_staged",
    "enrollment_token.create",
    "fleet.create",
    "fleet.delete",
    "fleet.update",
    "release.create",
    "rollout.abort",
    "rollout.aborted",
    "rollout.approve",
    "rollout.assign",
    "rollout.batch",
    "rollout.completed",
    "rollout.pause",
    "rollout.paused",
    "rollout.resume",
    "rollout.running",
    "rollout.start",
    "rollout.waiting_approval",
    "token.create",
    "token.revoke",
    "voucher.import",
)
"""The kinds the fleet manager records (:mod:`afield.fleet.api.events` lists who records which)."""

_CURSOR = re.compile(r"[0-9]{1,10}")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TIME_HINT = "expected a date (2026-01-31) or a time (2026-01-31T12:00, UTC unless it says)"


@dataclass(frozen=True)
class EventFilters:
    """The filters of one ``/events`` page, checked (see the module docstring)."""

    kind: str = ""
    actor: str = ""
    subject: str = ""
    since: datetime.datetime | None = None
    until: datetime.datetime | None = None
    until_day: bool = False  # ``until`` was a date: events before the next day's start

    def conditions(self) -> list[ColumnElement[bool]]:
        """The SQL conditions of these filters."""
        where: list[ColumnElement[bool]] = []
        if self.kind:
            where.append(Event.kind == self.kind)
        if self.actor:
            where.append(Event.actor == self.actor)
        if self.subject.endswith("*"):
            where.append(Event.subject.startswith(self.subject[:-1], autoescape=True))
        elif self.subject.endswith(":"):
            where.append(Event.subject.startswith(self.subject, autoescape=True))
        elif self.subject:
            where.append(Event.subject == self.subject)
        if self.since is not None:
            where.append(Event.time >= self.since)
        if self.until is not None:
            where.append(Event.time < self.until if self.until_day else Event.time <= self.until)
        return where


def _time(name: str, raw: str) -> tuple[datetime.datetime | None, bool]:
    """A filter's time as UTC, and whether it was a date only; PageError naming ``name``."""
    raw = raw.strip()
    if not raw:
        return None, False
    try:
        if _DATE.fullmatch(raw):
            day = datetime.date.fromisoformat(raw)
            return datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC), True
        moment = datetime.datetime.fromisoformat(raw)
    except ValueError:
        raise PageError(400, "Bad filter", f"{name}: {raw!r} is not a time; {_TIME_HINT}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.astimezone(datetime.UTC), False


def _filters(kind: str, actor: str, subject: str, since: str, until: str) -> EventFilters:
    start, _ = _time("since", since)
    end, day = _time("until", until)
    if day and end is not None:
        end += datetime.timedelta(days=1)
    if start is not None and end is not None and start >= end:
        raise PageError(
            400, "Bad filter", f"since: {since!r} is not before until {until!r}; swap them"
        )
    return EventFilters(kind.strip(), actor.strip(), subject.strip(), start, end, day)


def subject_link(subject: str) -> str | None:
    """The dashboard page of an event's subject, if it has one (devices and rollouts)."""
    kind, _, name = subject.partition(":")
    if kind == "device" and name:
        return device_path(name)
    if kind == "rollout" and _CURSOR.fullmatch(name):
        return f"/rollouts/{name}"
    return None


@router.get("/events")
def events_page(
    request: Request,
    caller: ViewerPage,
    session: SessionDep,
    kind: Annotated[str, Query(max_length=64, pattern=TEXT)] = "",
    actor: Annotated[str, Query(max_length=200, pattern=TEXT)] = "",
    subject: Annotated[str, Query(max_length=255, pattern=TEXT)] = "",
    since: Annotated[str, Query(max_length=40)] = "",
    until: Annotated[str, Query(max_length=40)] = "",
    before: Annotated[str, Query(max_length=16)] = "",
) -> HTMLResponse:
    """The audit trail, newest first, filtered, :data:`PAGE` at a time."""
    filters = _filters(kind, actor, subject, since, until)
    cursor = before_cursor(before, "an event")
    query = select(Event).where(*filters.conditions())
    rows, next_cursor = newest_first(session, query, Event.id, PAGE, cursor)
    params = {"kind": kind, "actor": actor, "subject": subject, "since": since, "until": until}
    return render(
        request,
        "events.html",
        caller=caller,
        section="events",
        events=rows,
        params=params,
        filtered=any(params.values()),
        kinds=KNOWN_KINDS,
        subject_link=subject_link,
        before=cursor,
        next_before=next_cursor,
        page_size=PAGE,
    )
