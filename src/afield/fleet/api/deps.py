"""What every API route shares: the error type, its JSON form, sessions, the clock, events.

:class:`ApiError` is the one error a route raises for a refused request: an HTTP status, a
message that says what is accepted, and the field at fault. :func:`error_body` is the JSON every
4xx answer has::

    {"error": "policy.batches[2]: \"150%\" is over 100%", "field": "policy.batches[2]",
     "problems": [{"field": "policy.batches[2]", "error": "\"150%\" is over 100%"}]}

``problems`` lists every problem found (a policy with three mistakes gets three), ``error`` and
``field`` repeat the first. Dependencies come as typed aliases: :data:`SessionDep` (a session
closed after the request), :data:`NowDep` (the app's clock, so tests can fix time),
:data:`OfflineAfterDep` (seconds without a check-in before a device counts as offline) and
:data:`NotifierDep` (wakes the long-polls of devices whose desired state a write changed).
Parameters stay within what a database can take (:data:`TEXT` has no NUL, :data:`MAX_ID` and
:data:`IdCursorQuery` fit PostgreSQL's 32-bit ids), so such a parameter is a 422 naming it,
never a 500 from SQL.
:func:`record` adds an event to the audit trail in the caller's transaction, so a write and its
event commit together or not at all.

What it leaves to others: authentication (:mod:`afield.fleet.auth`), the routes (one module per
resource beside this one), turning errors into responses (:mod:`afield.fleet.app`).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Query, Request
from pydantic import BaseModel
from sqlalchemy import Select
from sqlalchemy.orm import Session

from afield._sql import as_utc
from afield.errors import FleetError
from afield.fleet.models import Event
from afield.fleet.notify import Notifier

__all__ = [
    "MAX_ID",
    "MAX_PAGE",
    "TEXT",
    "ApiError",
    "CursorQuery",
    "IdCursorQuery",
    "LimitQuery",
    "NotifierDep",
    "NowDep",
    "OfflineAfterDep",
    "Page",
    "Problem",
    "SessionDep",
    "error_body",
    "iso",
    "record",
]

MAX_PAGE = 500
MAX_ID = 2**31 - 1
"""The largest id a parameter may name: ids are 32-bit INTEGER columns on PostgreSQL."""
TEXT = r"^[^\x00]*$"
"""Text parameters hold no NUL, which PostgreSQL text cannot store."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a request: the field and what would be accepted."""

    field: str
    error: str


class ApiError(FleetError):
    """A request the API refuses: ``status`` (4xx), the ``field`` at fault, every problem."""

    user_error = True

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        problems: Sequence[Problem] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.problems = list(problems) or [Problem(field or "", message)]


def error_body(message: str, field: str | None, problems: Sequence[Problem] = ()) -> dict[str, Any]:
    """The JSON of every refused request (see the module docstring)."""
    listed = [{"field": p.field, "error": p.error} for p in problems] or [
        {"field": field or "", "error": message}
    ]
    return {"error": message, "field": field, "problems": listed}


def _session(request: Request) -> Iterator[Session]:
    with request.app.state.db.sessions() as session:
        yield session


def _now(request: Request) -> datetime.datetime:
    clock: Callable[[], datetime.datetime] = request.app.state.clock
    return clock()


def _offline_after(request: Request) -> float:
    seconds: float = request.app.state.offline_after
    return seconds


def _notifier(request: Request) -> Notifier:
    notifier: Notifier = request.app.state.devices.notifier
    return notifier


def _checkins_written(request: Request) -> None:
    request.app.state.devices.checkins.flush()


SessionDep = Annotated[Session, Depends(_session)]
# On a route that reads ``last_seen``: the polls noted so far are written first.
CHECKINS_WRITTEN = Depends(_checkins_written)
NowDep = Annotated[datetime.datetime, Depends(_now)]
OfflineAfterDep = Annotated[float, Depends(_offline_after)]
NotifierDep = Annotated[Notifier, Depends(_notifier)]
LimitQuery = Annotated[
    int, Query(ge=1, le=MAX_PAGE, description=f"At most this many items (1-{MAX_PAGE}).")
]
CursorQuery = Annotated[
    str | None,
    Query(max_length=128, pattern=TEXT, description="The next_cursor of the previous page."),
]
IdCursorQuery = Annotated[
    int | None,
    Query(ge=0, le=MAX_ID, description="The next_cursor of the previous page."),
]


class Page(BaseModel):
    """What every list answers besides its items."""

    count: int
    next_cursor: str | None = None


_Row = TypeVar("_Row")


def newest_first(
    session: Session, query: Select[_Row], id_column: Any, limit: int, cursor: int | None
) -> tuple[list[_Row], str | None]:
    """One page of ``query`` by descending integer id: the rows and the next page's cursor.

    The cursor is the last row's id (keyset pagination: a page costs the same at any depth and
    rows added meanwhile neither repeat nor go missing); one more row than ``limit`` is read to
    know whether another page follows.
    """
    query = query.order_by(id_column.desc()).limit(limit + 1)
    if cursor is not None:
        query = query.where(id_column < cursor)
    rows = list(session.scalars(query).unique().all())
    more = len(rows) > limit
    rows = rows[:limit]
    last: Any = rows[-1] if more else None  # every paged model has an integer ``id``
    return rows, (str(last.id) if last is not None else None)


def iso(value: datetime.datetime | None) -> datetime.datetime | None:
    """A stored time as UTC (SQLite keeps no zone), for answers."""
    return None if value is None else as_utc(value)


def record(
    session: Session,
    *,
    actor: str,
    kind: str,
    subject: str,
    now: datetime.datetime,
    details: dict[str, Any] | None = None,
) -> None:
    """Add an event to the audit trail in ``session``'s transaction (committed with the write)."""
    session.add(Event(time=now, actor=actor, kind=kind, subject=subject, details=details or {}))
