"""``/api/v1/events``: the audit trail, newest first, filtered by kind and actor.

Every admin write records one event in the same transaction as the write (``fleet.create``,
``fleet.update``, ``fleet.delete``, ``release.create``, ``rollout.start``, ``rollout.pause``,
``rollout.resume``, ``rollout.approve``, ``rollout.abort``, ``application.set``,
``application.delete``; ``afield admin`` records ``token.create`` and ``token.revoke`` as
``system``). Devices' reports record what changed on them, once per change
(:mod:`afield.fleet.reports` lists each kind's details): ``device.update_staged``,
``device.booted``, ``device.health_passed``, ``device.health_failed``, ``device.rolled_back``,
``device.update_failed``, ``device.update_refused``, ``device.application_failed``; filtered
by actor (``device:<id>``) they are a device's update history. Pages are keyset-paginated by
event id: ``next_cursor`` is the id of the page's last (oldest) event.

What it leaves to others: device events (the device API, a later slice), retention.
"""

from __future__ import annotations

import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import select

from afield.fleet.api.deps import (
    TEXT,
    IdCursorQuery,
    LimitQuery,
    Page,
    SessionDep,
    iso,
    newest_first,
)
from afield.fleet.auth import ViewerDep
from afield.fleet.models import Event

__all__ = ["EventPublic", "EventsPublic", "router"]

router = APIRouter(prefix="/events", tags=["events"])


class EventPublic(BaseModel):
    """One audit-trail entry."""

    id: int
    time: datetime.datetime
    actor: str
    kind: str
    subject: str
    details: dict[str, Any]


class EventsPublic(Page):
    """One page of events, newest first."""

    data: list[EventPublic]


@router.get("", operation_id="events-list")
def list_events(
    session: SessionDep,
    caller: ViewerDep,
    kind: Annotated[str | None, Query(max_length=64, pattern=TEXT)] = None,
    actor: Annotated[str | None, Query(max_length=200, pattern=TEXT)] = None,
    limit: LimitQuery = 100,
    cursor: IdCursorQuery = None,
) -> EventsPublic:
    """Events, newest first, optionally of one kind or one actor."""
    query = select(Event)
    if kind is not None:
        query = query.where(Event.kind == kind)
    if actor is not None:
        query = query.where(Event.actor == actor)
    rows, next_cursor = newest_first(session, query, Event.id, limit, cursor)
    data = []
    for row in rows:
        time = iso(row.time)
        assert time is not None  # noqa: S101  # NOT NULL column
        data.append(
            EventPublic(
                id=row.id,
                time=time,
                actor=row.actor,
                kind=row.kind,
                subject=row.subject,
                details=row.details,
            )
        )
    return EventsPublic(data=data, count=len(data), next_cursor=next_cursor)
