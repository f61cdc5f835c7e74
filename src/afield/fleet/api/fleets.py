"""``/api/v1/fleets``: create, list, show, change and delete fleets.

A fleet is a name, a label selector (``site=berlin,tier!=lab``, parsed by
:meth:`afield.fleet.policy.Selector.parse`), an optional target release and a rollout policy
(parsed by :meth:`afield.fleet.policy.RolloutPolicy.parse`, stored in its normalised form, so
what the API shows back parses to the same policy). A selector or policy that does not parse
is 422 naming the field (``selector``, ``policy.batches[2]``) and listing every problem.
A fleet with a rollout that is not over (running, paused or waiting for approval) cannot be
deleted (409); deleting one deletes its finished rollouts and its applications. Every write
records an event. A fleet's applications (:mod:`afield.fleet.api.applications`) go to the
devices its selector matches, so changing the selector or deleting the fleet re-resolves the
devices it matched and matches (:func:`afield.fleet.applications.refresh`) and wakes those whose
applications changed; a new selector that would give a device more applications than it takes
is refused (422, ``selector``).

What it leaves to others: rollouts (:mod:`afield.fleet.api.rollouts`), which devices a fleet
holds at a moment (the rollout runner, a later slice).
"""

from __future__ import annotations

import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from afield.fleet.api.deps import (
    TEXT,
    ApiError,
    CursorQuery,
    LimitQuery,
    NotifierDep,
    NowDep,
    Page,
    Problem,
    SessionDep,
    iso,
    record,
)
from afield.fleet.api.releases import (
    ReleasePublic,
    ReleaseRef,
    find_release,
    release_public,
)
from afield.fleet.applications import matching_devices, refresh
from afield.fleet.auth import AdminDep, ViewerDep
from afield.fleet.models import Application, Device, Fleet, Rollout
from afield.fleet.policy import RolloutPolicy, RolloutPolicyError, Selector, SelectorError
from afield.fleet.rollout import Status

__all__ = [
    "ACTIVE",
    "FleetCreate",
    "FleetPublic",
    "FleetUpdate",
    "FleetsPublic",
    "fleet_public",
    "get_fleet",
    "router",
]

router = APIRouter(prefix="/fleets", tags=["fleets"])

NAME = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"
ACTIVE = (Status.RUNNING.value, Status.PAUSED.value, Status.WAITING_APPROVAL.value)
NameField = Annotated[
    str,
    Field(
        min_length=1,
        max_length=63,
        pattern=NAME,
        description="Lowercase letters, digits and '-', 1-63 characters.",
    ),
]
SelectorField = Annotated[
    str, Field(max_length=1024, description="Label selector, e.g. site=berlin,tier!=lab.")
]
PolicyField = Annotated[
    dict[str, Any],
    Field(description='Rollout policy (afield.fleet.policy), e.g. {"batches": [1, "10%"]}.'),
]
FleetPath = Annotated[str, Path(max_length=63, pattern=TEXT)]


class FleetCreate(BaseModel):
    """A fleet to create; the policy defaults to one batch of 100%."""

    model_config = ConfigDict(extra="forbid")

    name: NameField
    selector: SelectorField = ""
    target_release: ReleaseRef | None = None
    policy: PolicyField | None = None


class FleetUpdate(BaseModel):
    """Fields to change; ``target_release: null`` clears the target."""

    model_config = ConfigDict(extra="forbid")

    selector: SelectorField | None = None
    target_release: ReleaseRef | None = None
    policy: PolicyField | None = None


class FleetPublic(BaseModel):
    """A fleet as the API shows it."""

    name: str
    selector: str
    target_release: ReleasePublic | None
    policy: dict[str, Any]
    created: datetime.datetime
    updated: datetime.datetime


class FleetsPublic(Page):
    """One page of fleets, by name."""

    data: list[FleetPublic]


def fleet_public(fleet: Fleet) -> FleetPublic:
    """The API's view of a fleet."""
    target = fleet.target_release
    created, updated = iso(fleet.created), iso(fleet.updated)
    assert created is not None and updated is not None  # noqa: S101  # NOT NULL columns
    return FleetPublic(
        name=fleet.name,
        selector=fleet.selector,
        target_release=None if target is None else release_public(target),
        policy=fleet.policy,
        created=created,
        updated=updated,
    )


def _selector(text: str) -> str:
    try:
        return str(Selector.parse(text))
    except SelectorError as e:
        raise ApiError(422, f"selector: {e}", field="selector") from None


def _escaped(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _not_text(raw: object, where: str) -> list[Problem]:
    """Strings (keys too) in free-form JSON that are not Unicode text.

    JSON can carry a lone surrogate (``"\\ud800"``); it cannot be stored, nor echoed back in an
    error message (an answer is UTF-8), so it is refused here naming where it is, escaped.
    """
    if isinstance(raw, str):
        if _escaped(raw) == raw:
            return []
        return [Problem(where, f'"{_escaped(raw)}" is not Unicode text (a lone surrogate)')]
    problems: list[Problem] = []
    if isinstance(raw, dict):
        for key, value in raw.items():
            inner = f"{where}.{_escaped(key)}"
            if _escaped(key) != key:
                problems.append(Problem(inner, "the key is not Unicode text (a lone surrogate)"))
            problems += _not_text(value, inner)
    elif isinstance(raw, list):
        for index, item in enumerate(raw):
            problems += _not_text(item, f"{where}[{index}]")
    return problems


def _policy(raw: dict[str, Any] | None) -> dict[str, Any]:
    problems = _not_text(raw, "policy")
    if not problems:
        try:
            return (RolloutPolicy() if raw is None else RolloutPolicy.parse(raw)).to_json()
        except RolloutPolicyError as e:
            problems = [Problem(f"policy.{p.location}", p.message) for p in e.problems]
    first = problems[0]
    raise ApiError(422, f"{first.field}: {first.error}", field=first.field, problems=problems)


def get_fleet(session: Session, name: str, *, field: str = "name") -> Fleet:
    """The fleet called ``name``; 404 naming ``field`` (the parameter) if there is none."""
    fleet = session.scalars(select(Fleet).where(Fleet.name == name)).unique().one_or_none()
    if fleet is None:
        raise ApiError(404, f"no fleet named {name!r}", field=field)
    return fleet


def _has_applications(session: Session, fleet: Fleet) -> bool:
    query = select(Application.id).where(Application.fleet_id == fleet.id).limit(1)
    return session.scalar(query) is not None


@router.post("", status_code=201, operation_id="fleets-create")
def create_fleet(
    body: FleetCreate, session: SessionDep, caller: AdminDep, now: NowDep
) -> FleetPublic:
    """Create a fleet; 409 if the name is taken."""
    selector, policy = _selector(body.selector), _policy(body.policy)
    target = None
    if body.target_release is not None:
        target = find_release(session, body.target_release, field="target_release")
    fleet = Fleet(
        name=body.name,
        selector=selector,
        target_release=target,
        policy=policy,
        created=now,
        updated=now,
    )
    session.add(fleet)
    details = {"selector": selector, "policy": policy, "target_release": str(body.target_release)}
    record(
        session,
        actor=caller.actor,
        kind="fleet.create",
        subject=body.name,
        now=now,
        details=details,
    )
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise ApiError(409, f"a fleet named {body.name!r} exists already", field="name") from None
    return fleet_public(fleet)


@router.get("", operation_id="fleets-list")
def list_fleets(
    session: SessionDep, caller: ViewerDep, limit: LimitQuery = 100, cursor: CursorQuery = None
) -> FleetsPublic:
    """Fleets by name, a page at a time."""
    query = select(Fleet).order_by(Fleet.name).limit(limit + 1)
    if cursor is not None:
        query = query.where(Fleet.name > cursor)
    rows = list(session.scalars(query).unique().all())
    more = len(rows) > limit
    rows = rows[:limit]
    data = [fleet_public(f) for f in rows]
    return FleetsPublic(data=data, count=len(data), next_cursor=rows[-1].name if more else None)


@router.get("/{name}", operation_id="fleets-show")
def show_fleet(name: FleetPath, session: SessionDep, caller: ViewerDep) -> FleetPublic:
    """One fleet."""
    return fleet_public(get_fleet(session, name))


@router.patch("/{name}", operation_id="fleets-update")
def update_fleet(
    name: FleetPath,
    body: FleetUpdate,
    session: SessionDep,
    caller: AdminDep,
    now: NowDep,
    notifier: NotifierDep,
) -> FleetPublic:
    """Change a fleet's selector, target release or policy (only the fields given)."""
    fleet = get_fleet(session, name)
    given = body.model_fields_set
    changes: dict[str, Any] = {}
    reached: list[str] = []  # devices the old or the new selector matches, if that matters
    if "selector" in given:
        old, new = fleet.selector, _selector(body.selector or "")
        fleet.selector = changes["selector"] = new
        if new != old and _has_applications(session, fleet):
            reached = matching_devices(session, [old, new])  # after the write: see refresh()
    if "policy" in given:
        fleet.policy = changes["policy"] = _policy(body.policy)
    if "target_release" in given:
        ref = body.target_release
        fleet.target_release = (
            None if ref is None else find_release(session, ref, field="target_release")
        )
        changes["target_release"] = None if ref is None else str(ref)
    fleet.updated = now
    refreshed = refresh(session, reached)
    if refreshed.too_large:
        problems = [Problem("selector", str(p)) for p in refreshed.too_large]
        first = problems[0].error
        raise ApiError(422, f"selector: {first}", field="selector", problems=problems)
    record(session, actor=caller.actor, kind="fleet.update", subject=name, now=now, details=changes)
    session.commit()
    notifier.wake(refreshed.changed)
    return fleet_public(fleet)


@router.delete("/{name}", status_code=204, operation_id="fleets-delete")
def delete_fleet(
    name: FleetPath, session: SessionDep, caller: AdminDep, now: NowDep, notifier: NotifierDep
) -> Response:
    """Delete a fleet, its finished rollouts and its applications; 409 while a rollout of it
    is not over."""
    fleet = get_fleet(session, name)
    rollouts = session.scalars(select(Rollout).where(Rollout.fleet_id == fleet.id)).unique().all()
    active = [r for r in rollouts if r.status in ACTIVE]
    if active:
        shown = ", ".join(f"{r.id} ({r.status})" for r in active)
        raise ApiError(
            409,
            f"fleet {name!r} has a rollout that is not over: {shown}; abort it first",
            field="name",
        )
    # Portable cascades: SQLite enforces no foreign keys unless asked to.
    ids = [r.id for r in rollouts]
    if ids:
        session.execute(
            update(Device)
            .where(Device.rollout_id.in_(ids))
            .values(rollout_id=None, phase="idle", batch=None, assigned_at=None, booted_at=None)
        )
    for rollout in rollouts:
        session.delete(rollout)
    removed = session.execute(delete(Application).where(Application.fleet_id == fleet.id))
    reached = []  # read after the write: see afield.fleet.applications.refresh
    if getattr(removed, "rowcount", 0):
        reached = matching_devices(session, [fleet.selector])
    session.delete(fleet)
    refreshed = refresh(session, reached)
    record(
        session,
        actor=caller.actor,
        kind="fleet.delete",
        subject=name,
        now=now,
        details={"rollouts": ids},
    )
    session.commit()
    notifier.wake(refreshed.changed)
    return Response(status_code=204)
