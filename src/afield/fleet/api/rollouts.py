"""``/api/v1/fleets/{name}/rollouts`` and ``/api/v1/rollouts``: start, show and steer rollouts.

``POST /api/v1/fleets/{name}/rollouts`` starts a rollout of the fleet to a registered release
(the body's ``release``, else the fleet's target release) and makes that release the fleet's
target; a fleet has at most one rollout that is not over (running, paused, waiting for
approval), so starting a second is 409. ``POST /api/v1/rollouts/{id}/pause|resume|approve|abort``
apply the rollout engine's pure transitions (:func:`afield.fleet.rollout.pause` and the others)
to the stored state; a transition the engine refuses (resuming a running rollout, anything on an
aborted one) is 409 naming the current and the requested state. Every action records an event.
:func:`act` does that for any caller with an ``actor`` name: the dashboard's forms use it too.

The state is the engine's :class:`~afield.fleet.rollout.RolloutState`, stored as JSON
(:func:`afield.fleet.models.state_to_json`) beside its status column. A rollout's ``progress``
shows its counters as the last engine step left them.

Every action rings the rollout runner's doorbell, so the engine takes the new state into
account at once rather than at its next tick.

What it leaves to others: running the engine's :func:`~afield.fleet.rollout.step` and recording
its decisions on the devices (:mod:`afield.fleet.runner`), and the device API that tells
devices to update (:mod:`afield.fleet.api.device`).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Body, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from afield.fleet.api.deps import (
    MAX_ID,
    TEXT,
    ApiError,
    IdCursorQuery,
    LimitQuery,
    NowDep,
    Page,
    SessionDep,
    iso,
    newest_first,
    record,
)
from afield.fleet.api.fleets import ACTIVE, FleetPath, get_fleet
from afield.fleet.api.releases import (
    ReleasePublic,
    ReleaseRef,
    find_release,
    release_public,
)
from afield.fleet.auth import AdminDep, ViewerDep
from afield.fleet.models import Fleet, Rollout, state_from_json, state_to_json
from afield.fleet.policy import RolloutPolicy
from afield.fleet.rollout import (
    RolloutError,
    RolloutState,
    Status,
    abort,
    approve,
    pause,
    resume,
)

__all__ = [
    "Actor",
    "RolloutAction",
    "RolloutCreate",
    "RolloutPublic",
    "RolloutsPublic",
    "act",
    "fleet_router",
    "rollout_public",
    "router",
]

router = APIRouter(prefix="/rollouts", tags=["rollouts"])
fleet_router = APIRouter(prefix="/fleets", tags=["rollouts"])
RolloutPath = Annotated[int, Path(ge=1, le=MAX_ID)]


class RolloutCreate(BaseModel):
    """The release to roll out; the fleet's target release when omitted."""

    model_config = ConfigDict(extra="forbid")

    release: ReleaseRef | None = None


class RolloutAction(BaseModel):
    """Why the operator pauses or aborts (shown as the rollout's reason)."""

    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, Field(min_length=1, max_length=500)] | None = None


class RolloutPublic(BaseModel):
    """A rollout: its fleet, its release, and the engine's state."""

    id: int
    fleet: str
    release: ReleasePublic
    status: Status
    batch: int = Field(description="Index of the current batch into policy.batches.")
    batches: int = Field(description="How many batches the fleet's policy has.")
    reason: str
    cause: str | None
    progress: dict[str, int]
    created: datetime.datetime
    updated: datetime.datetime


class RolloutsPublic(Page):
    """One page of rollouts, newest first."""

    data: list[RolloutPublic]


def rollout_public(rollout: Rollout) -> RolloutPublic:
    """The API's view of a rollout."""
    state = state_from_json(rollout.state)
    batches = len(RolloutPolicy.parse(rollout.fleet.policy).batches)
    created, updated = iso(rollout.created), iso(rollout.updated)
    assert created is not None and updated is not None  # noqa: S101  # NOT NULL columns
    stored: dict[str, Any] = rollout.state
    return RolloutPublic(
        id=rollout.id,
        fleet=rollout.fleet.name,
        release=release_public(rollout.release),
        status=state.status,
        batch=state.batch,
        batches=batches,
        reason=state.reason,
        cause=None if state.cause is None else state.cause.value,
        progress=dict(stored.get("counters", {})),
        created=created,
        updated=updated,
    )


def _get(session: Session, rollout_id: int) -> Rollout:
    rollout = session.get(Rollout, rollout_id)
    if rollout is None:
        raise ApiError(404, f"no rollout {rollout_id}", field="rollout_id")
    return rollout


@fleet_router.post("/{name}/rollouts", status_code=201, operation_id="rollouts-start")
def start_rollout(
    request: Request,
    name: FleetPath,
    session: SessionDep,
    caller: AdminDep,
    now: NowDep,
    body: Annotated[RolloutCreate | None, Body()] = None,
) -> RolloutPublic:
    """Start rolling the fleet out to a release; 409 while another rollout of it is not over."""
    fleet = get_fleet(session, name)
    ref = None if body is None else body.release
    if ref is not None:
        release = find_release(session, ref, field="release")
    elif fleet.target_release is not None:
        release = fleet.target_release
    else:
        raise ApiError(
            422,
            f"release: fleet {name!r} has no target release; name one as "
            '{"release": {"image": ..., "arch": ..., "version": ...}}',
            field="release",
        )
    active = session.scalars(
        select(Rollout).where(Rollout.fleet_id == fleet.id, Rollout.status.in_(ACTIVE))
    ).first()
    if active is not None:
        raise ApiError(
            409,
            f"fleet {name!r} has rollout {active.id} ({active.status}); abort it first",
            field="name",
        )
    state = RolloutState()
    rollout = Rollout(
        fleet=fleet,
        release=release,
        status=state.status.value,
        state=state_to_json(state),
        created=now,
        updated=now,
    )
    fleet.target_release = release
    fleet.updated = now
    session.add(rollout)
    session.flush()
    shown = f"{release.image}/{release.arch}/{release.version}"
    record(
        session,
        actor=caller.actor,
        kind="rollout.start",
        subject=f"rollout:{rollout.id}",
        now=now,
        details={"fleet": name, "release": shown},
    )
    session.commit()
    _ring(request)
    return rollout_public(rollout)


@router.get("", operation_id="rollouts-list")
def list_rollouts(
    session: SessionDep,
    caller: ViewerDep,
    fleet: Annotated[str | None, Query(max_length=63, pattern=TEXT)] = None,
    status: Annotated[Status | None, Query()] = None,
    limit: LimitQuery = 100,
    cursor: IdCursorQuery = None,
) -> RolloutsPublic:
    """Rollouts, newest first, optionally of one fleet or in one status."""
    query = select(Rollout)
    if fleet is not None:
        query = query.join(Rollout.fleet).where(Fleet.name == fleet)
    if status is not None:
        query = query.where(Rollout.status == status.value)
    rows, next_cursor = newest_first(session, query, Rollout.id, limit, cursor)
    data = [rollout_public(r) for r in rows]
    return RolloutsPublic(data=data, count=len(data), next_cursor=next_cursor)


@router.get("/{rollout_id}", operation_id="rollouts-show")
def show_rollout(rollout_id: RolloutPath, session: SessionDep, caller: ViewerDep) -> RolloutPublic:
    """One rollout."""
    return rollout_public(_get(session, rollout_id))


def _ring(request: Request) -> None:
    """Ask the rollout runner to step now."""
    request.app.state.devices.doorbell.ring()


class Actor(Protocol):
    """Whoever acts on a rollout: the API's :class:`~afield.fleet.auth.Caller` or a dashboard
    login; events name it by :attr:`actor` (``admin:<token name>``)."""

    @property
    def actor(self) -> str:
        """How the audit trail names this caller."""
        ...


def act(
    request: Request,
    session: Session,
    caller: Actor,
    now: datetime.datetime,
    rollout_id: int,
    action: str,
    transition: Callable[[RolloutState], RolloutState],
    reason: str | None = None,
) -> RolloutPublic:
    """Apply an engine transition to a stored rollout, record it and ring the runner.

    The rollout's state goes through ``transition`` (:func:`~afield.fleet.rollout.pause` and
    the others); the new state, status, time and a bumped ``revision`` are stored, an event
    ``rollout.<action>`` (details ``from``, ``to`` and ``reason`` when given) is recorded in
    the same transaction, which is committed, and the rollout runner is rung. Shared by the
    API's actions and the dashboard's forms.

    Args:
        request: the request (its app's runner is rung).
        session: a session without a transaction in progress; committed here.
        caller: who acts (the event's actor).
        now: the time of the action.
        rollout_id: the rollout to act on.
        action: the event's kind after ``rollout.`` (``pause``, ``resume``...).
        transition: the engine's pure transition.
        reason: the operator's words, recorded in the event when given.

    Returns:
        The rollout as the API shows it after the action.

    Raises:
        ApiError: 404 for an unknown rollout, 409 when the engine refuses the transition
            (the message names the current and the requested state).
    """
    rollout = _get(session, rollout_id)
    before = state_from_json(rollout.state)
    try:
        after = transition(before)
    except RolloutError as e:
        raise ApiError(
            409,
            f"rollout {rollout_id}: {e} (current state {e.current}, requested {e.requested})",
            field="status",
        ) from None
    rollout.state = state_to_json(after)
    rollout.status = after.status.value
    rollout.updated = now
    rollout.revision += 1
    details: dict[str, Any] = {"from": before.status.value, "to": after.status.value}
    if reason:
        details["reason"] = reason
    record(
        session,
        actor=caller.actor,
        kind=f"rollout.{action}",
        subject=f"rollout:{rollout_id}",
        now=now,
        details=details,
    )
    session.commit()
    _ring(request)
    return rollout_public(rollout)


ReasonBody = Annotated[RolloutAction | None, Body()]


@router.post("/{rollout_id}/pause", operation_id="rollouts-pause")
def pause_rollout(
    request: Request,
    rollout_id: RolloutPath,
    session: SessionDep,
    caller: AdminDep,
    now: NowDep,
    body: ReasonBody = None,
) -> RolloutPublic:
    """Stop telling devices to update; 409 if the rollout is paused or aborted."""
    reason = body.reason if body is not None and body.reason else None
    text = reason or f"paused by {caller.actor}"
    return act(request, session, caller, now, rollout_id, "pause", lambda s: pause(s, text), reason)


@router.post("/{rollout_id}/resume", operation_id="rollouts-resume")
def resume_rollout(
    request: Request, rollout_id: RolloutPath, session: SessionDep, caller: AdminDep, now: NowDep
) -> RolloutPublic:
    """Run a paused rollout again, accepting the failures so far; 409 unless it is paused."""
    return act(request, session, caller, now, rollout_id, "resume", resume)


@router.post("/{rollout_id}/approve", operation_id="rollouts-approve")
def approve_rollout(
    request: Request, rollout_id: RolloutPath, session: SessionDep, caller: AdminDep, now: NowDep
) -> RolloutPublic:
    """Start the next batch; 409 unless the rollout waits for approval."""
    return act(request, session, caller, now, rollout_id, "approve", approve)


@router.post("/{rollout_id}/abort", operation_id="rollouts-abort")
def abort_rollout(
    request: Request,
    rollout_id: RolloutPath,
    session: SessionDep,
    caller: AdminDep,
    now: NowDep,
    body: ReasonBody = None,
) -> RolloutPublic:
    """End the rollout for good; 409 if it was aborted already."""
    reason = body.reason if body is not None and body.reason else None
    text = reason or f"aborted by {caller.actor}"
    return act(request, session, caller, now, rollout_id, "abort", lambda s: abort(s, text), reason)
