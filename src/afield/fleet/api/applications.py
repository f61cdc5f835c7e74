"""``/api/v1/fleets/{fleet}/applications`` and ``/api/v1/devices/{device_id}/applications``.

An application is a name (a DNS label), Kubernetes manifests (one YAML stream) and the images
they use, set on a fleet (every device its selector matches) or on one device (where it
replaces a fleet's application of the same name). Per owner::

    GET    .../applications           the owner's applications (no manifests), by name
    GET    .../applications/{name}    one, with its manifests
    PUT    .../applications/{name}    set it: {"manifests": "...", "images": [...]} (201 new)
    DELETE .../applications/{name}    remove it (devices remove it at their next poll)

Reads need a viewer token, writes an admin token; every write records an event
(``application.set``, ``application.delete``). Manifests are checked when they are set, by
:func:`afield.workloads.manifests.parse` (YAML, kinds podman plays, limits): a problem is 422
naming ``manifests``, the document and the field. Without ``images`` the images are the ones the
manifests name. The digest (SHA-256 of the manifests) is computed here. A write re-resolves the
devices it reaches (:func:`afield.fleet.applications.refresh`) in its transaction and wakes
their long-polls once committed; a write that would give a device more than a device takes
(:data:`~afield.fleet.protocol.MAX_APPLICATIONS` applications, or more JSON than
:data:`~afield.fleet.applications.MAX_TEXT_BYTES`) is refused with 422 naming the device.
A body may be up to :data:`MAX_BODY_BYTES` here (the server's limit is smaller elsewhere).

What it leaves to others: what a device gets (:mod:`afield.fleet.applications`), how devices
report them (:mod:`afield.fleet.reports`), the device view (:mod:`afield.fleet.api.devices`).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from afield.errors import ManifestError
from afield.fleet.api.deps import (
    TEXT,
    ApiError,
    NotifierDep,
    NowDep,
    Page,
    Problem,
    SessionDep,
    iso,
    record,
)
from afield.fleet.api.fleets import FleetPath, get_fleet
from afield.fleet.applications import matching_devices, refresh
from afield.fleet.auth import AdminDep, Caller, ViewerDep
from afield.fleet.models import Application, Device
from afield.fleet.notify import Notifier
from afield.fleet.protocol import (
    APP_NAME,
    MAX_APPLICATIONS,
    MAX_MANIFEST_CHARS,
    manifests_digest,
)
from afield.workloads import manifests as kube

__all__ = [
    "MAX_BODY_BYTES",
    "ApplicationDetail",
    "ApplicationPublic",
    "ApplicationSet",
    "ApplicationsPublic",
    "device_router",
    "fleet_router",
]

fleet_router = APIRouter(prefix="/fleets", tags=["applications"])
device_router = APIRouter(prefix="/devices", tags=["applications"])

MAX_BODY_BYTES = 5 * MAX_MANIFEST_CHARS
"""The largest body a ``PUT`` of an application may have: manifests of the longest length as
JSON (escapes and multi-byte characters included)."""
MAX_IMAGES = 32
IMAGE = r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}$"

AppPath = Annotated[
    str, Path(max_length=63, pattern=APP_NAME, description="The application's name: a DNS label.")
]
DevicePath = Annotated[str, Path(max_length=128, pattern=TEXT)]
ImageRef = Annotated[
    str,
    Field(
        min_length=1,
        max_length=255,
        pattern=IMAGE,
        description="An image reference, such as registry.example/app:1.2 or name@sha256:...",
    ),
]


class ApplicationSet(BaseModel):
    """An application's manifests, and the images to pull (default: the ones they name)."""

    model_config = ConfigDict(extra="forbid")

    manifests: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_MANIFEST_CHARS,
            description="Kubernetes manifests: one YAML stream of kinds podman plays.",
        ),
    ]
    images: Annotated[list[ImageRef], Field(max_length=MAX_IMAGES)] | None = None


class ApplicationPublic(BaseModel):
    """An application as lists show it: its owner (a fleet or a device), digest and images."""

    name: str
    fleet: str | None
    device_id: str | None
    digest: str
    images: list[str]
    manifests_bytes: int
    created: datetime.datetime
    updated: datetime.datetime
    updated_by: str


class ApplicationDetail(ApplicationPublic):
    """One application, with its manifests."""

    manifests: str


class ApplicationsPublic(Page):
    """An owner's applications, by name (all of them: an owner has at most 64)."""

    data: list[ApplicationPublic]


def _public(row: Application, fleet: str | None) -> dict[str, object]:
    created, updated = iso(row.created), iso(row.updated)
    return {
        "name": row.name,
        "fleet": fleet,
        "device_id": row.device_id,
        "digest": row.digest,
        "images": list(row.images),
        "manifests_bytes": len(row.manifests.encode()),
        "created": created,
        "updated": updated,
        "updated_by": row.updated_by,
    }


def _detail(row: Application, owner: _Owner) -> ApplicationDetail:
    shown = {**_public(row, owner.fleet), "manifests": row.manifests}
    return ApplicationDetail.model_validate(shown)


# --- owners -------------------------------------------------------------------------------------


class _Owner:
    """A fleet or a device: how its applications are found, named and re-resolved."""

    def __init__(self, *, fleet_id: int | None, fleet: str | None, device_id: str | None) -> None:
        self.fleet_id = fleet_id
        self.fleet = fleet
        self.device_id = device_id

    @property
    def label(self) -> str:
        return f"fleet {self.fleet!r}" if self.fleet is not None else f"device {self.device_id!r}"

    @property
    def subject(self) -> str:
        return f"fleet:{self.fleet}" if self.fleet is not None else f"device:{self.device_id}"

    def where(self) -> ColumnElement[bool]:
        if self.fleet_id is not None:
            return Application.fleet_id == self.fleet_id
        return Application.device_id == self.device_id

    def devices(self, session: Session, selector: str | None) -> list[str]:
        if self.device_id is not None:
            return [self.device_id]
        return matching_devices(session, [selector or ""])


def _fleet_owner(session: Session, name: str) -> tuple[_Owner, str]:
    fleet = get_fleet(session, name, field="fleet")
    return _Owner(fleet_id=fleet.id, fleet=fleet.name, device_id=None), fleet.selector


def _device_owner(session: Session, device_id: str) -> tuple[_Owner, None]:
    if session.get(Device, device_id) is None:
        raise ApiError(404, f"no device {device_id!r}", field="device_id")
    return _Owner(fleet_id=None, fleet=None, device_id=device_id), None


def _rows(session: Session, owner: _Owner) -> list[Application]:
    query = select(Application).where(owner.where()).order_by(Application.name)
    return list(session.scalars(query))


def _row(session: Session, owner: _Owner, name: str) -> Application:
    query = select(Application).where(owner.where(), Application.name == name)
    row = session.scalars(query).first()
    if row is None:
        raise ApiError(404, f"{owner.label} has no application named {name!r}", field="name")
    return row


# --- checks -------------------------------------------------------------------------------------


def _unicode(value: str, where: str) -> None:
    """Refuse text PostgreSQL cannot store or an answer cannot carry: a NUL, a lone surrogate."""
    try:
        value.encode()
    except UnicodeEncodeError as e:
        raise ApiError(
            422, f"{where}: not Unicode text (a lone surrogate at character {e.start})", field=where
        ) from None
    if "\x00" in value:
        position = value.index("\x00")
        raise ApiError(422, f"{where}: a NUL character at {position}", field=where)


def _images(body: ApplicationSet) -> list[str]:
    """The images of the body's manifests (checked here), or the ones it gives."""
    _unicode(body.manifests, "manifests")
    try:
        resources = kube.parse(body.manifests, "manifests")
    except ManifestError as e:
        raise ApiError(422, str(e), field="manifests") from None
    if body.images is not None:
        return list(body.images)
    found = kube.image_references(resources)
    if len(found) > MAX_IMAGES:
        raise ApiError(
            422,
            f"manifests: they use {len(found)} images; an application pulls at most {MAX_IMAGES} "
            "(split it in two)",
            field="manifests",
        )
    return found


def _too_large(problems: Sequence[object]) -> ApiError:
    listed = [Problem("manifests", str(p)) for p in problems]
    return ApiError(422, f"manifests: {listed[0].error}", field="manifests", problems=listed)


# --- the routes, once per owner -----------------------------------------------------------------


def _list(session: Session, owner: _Owner) -> ApplicationsPublic:
    rows = _rows(session, owner)
    data = [ApplicationPublic.model_validate(_public(r, owner.fleet)) for r in rows]
    return ApplicationsPublic(data=data, count=len(data))


def _show(session: Session, owner: _Owner, name: str) -> ApplicationDetail:
    row = _row(session, owner, name)
    return _detail(row, owner)


def _set(
    session: Session,
    owner: _Owner,
    selector: str | None,
    name: str,
    body: ApplicationSet,
    *,
    caller: Caller,
    now: datetime.datetime,
    response: Response,
    notifier: Notifier,
) -> ApplicationDetail:
    images = _images(body)
    digest = manifests_digest(body.manifests)
    query = select(Application).where(owner.where(), Application.name == name)
    row = session.scalars(query).first()
    created = row is None
    if row is None:
        count = session.scalar(select(func.count(Application.id)).where(owner.where()))
        if (count or 0) >= MAX_APPLICATIONS:
            raise ApiError(
                409,
                f"{owner.label} has {count} applications, the most a device runs; remove one first",
                field="name",
            )
        row = Application(
            fleet_id=owner.fleet_id, device_id=owner.device_id, name=name, created=now
        )
        session.add(row)
    row.manifests, row.images, row.digest = body.manifests, images, digest
    row.updated, row.updated_by = now, caller.actor
    try:
        session.flush()
    except IntegrityError:  # another request created it meanwhile
        session.rollback()
        raise ApiError(
            409, f"{owner.label}: application {name!r} was set meanwhile; try again", field="name"
        ) from None
    refreshed = refresh(session, owner.devices(session, selector))
    if refreshed.too_large:
        raise _too_large(refreshed.too_large)
    record(
        session,
        actor=caller.actor,
        kind="application.set",
        subject=f"{owner.subject}/applications/{name}",
        now=now,
        details={
            "digest": digest,
            "images": images,
            "created": created,
            "devices_changed": len(refreshed.changed),
        },
    )
    session.commit()
    notifier.wake(refreshed.changed)
    response.status_code = 201 if created else 200
    return _detail(row, owner)


def _delete(
    session: Session,
    owner: _Owner,
    selector: str | None,
    name: str,
    *,
    caller: Caller,
    now: datetime.datetime,
    notifier: Notifier,
) -> Response:
    row = _row(session, owner, name)
    digest = row.digest
    session.delete(row)
    refreshed = refresh(session, owner.devices(session, selector))
    record(
        session,
        actor=caller.actor,
        kind="application.delete",
        subject=f"{owner.subject}/applications/{name}",
        now=now,
        details={"digest": digest, "devices_changed": len(refreshed.changed)},
    )
    session.commit()
    notifier.wake(refreshed.changed)
    return Response(status_code=204)


_CREATED: dict[int | str, dict[str, Any]] = {
    201: {"model": ApplicationDetail, "description": "Created."}
}


@fleet_router.get("/{fleet}/applications", operation_id="applications-fleet-list")
def list_fleet_applications(
    fleet: FleetPath, session: SessionDep, caller: ViewerDep
) -> ApplicationsPublic:
    """A fleet's applications, by name (without their manifests)."""
    return _list(session, _fleet_owner(session, fleet)[0])


@fleet_router.get("/{fleet}/applications/{name}", operation_id="applications-fleet-show")
def show_fleet_application(
    fleet: FleetPath, name: AppPath, session: SessionDep, caller: ViewerDep
) -> ApplicationDetail:
    """One application of a fleet, with its manifests."""
    return _show(session, _fleet_owner(session, fleet)[0], name)


@fleet_router.put(
    "/{fleet}/applications/{name}", operation_id="applications-fleet-set", responses=_CREATED
)
def set_fleet_application(
    fleet: FleetPath,
    name: AppPath,
    body: ApplicationSet,
    session: SessionDep,
    caller: AdminDep,
    now: NowDep,
    response: Response,
    notifier: NotifierDep,
) -> ApplicationDetail:
    """Set an application on every device of a fleet (201 when it is new)."""
    owner, selector = _fleet_owner(session, fleet)
    return _set(
        session,
        owner,
        selector,
        name,
        body,
        caller=caller,
        now=now,
        response=response,
        notifier=notifier,
    )


@fleet_router.delete(
    "/{fleet}/applications/{name}", status_code=204, operation_id="applications-fleet-delete"
)
def delete_fleet_application(
    fleet: FleetPath,
    name: AppPath,
    session: SessionDep,
    caller: AdminDep,
    now: NowDep,
    notifier: NotifierDep,
) -> Response:
    """Remove an application from a fleet: its devices remove it (unless they have their own)."""
    owner, selector = _fleet_owner(session, fleet)
    return _delete(session, owner, selector, name, caller=caller, now=now, notifier=notifier)


@device_router.get("/{device_id}/applications", operation_id="applications-device-list")
def list_device_applications(
    device_id: DevicePath, session: SessionDep, caller: ViewerDep
) -> ApplicationsPublic:
    """A device's own applications, by name (not its fleets'; the device shows them all)."""
    return _list(session, _device_owner(session, device_id)[0])


@device_router.get("/{device_id}/applications/{name}", operation_id="applications-device-show")
def show_device_application(
    device_id: DevicePath, name: AppPath, session: SessionDep, caller: ViewerDep
) -> ApplicationDetail:
    """One of a device's own applications, with its manifests."""
    return _show(session, _device_owner(session, device_id)[0], name)


@device_router.put(
    "/{device_id}/applications/{name}", operation_id="applications-device-set", responses=_CREATED
)
def set_device_application(
    device_id: DevicePath,
    name: AppPath,
    body: ApplicationSet,
    session: SessionDep,
    caller: AdminDep,
    now: NowDep,
    response: Response,
    notifier: NotifierDep,
) -> ApplicationDetail:
    """Set an application on one device; it replaces a fleet's of the same name (201 if new)."""
    owner, selector = _device_owner(session, device_id)
    return _set(
        session,
        owner,
        selector,
        name,
        body,
        caller=caller,
        now=now,
        response=response,
        notifier=notifier,
    )


@device_router.delete(
    "/{device_id}/applications/{name}", status_code=204, operation_id="applications-device-delete"
)
def delete_device_application(
    device_id: DevicePath,
    name: AppPath,
    session: SessionDep,
    caller: AdminDep,
    now: NowDep,
    notifier: NotifierDep,
) -> Response:
    """Remove a device's own application (a fleet's of the same name takes its place)."""
    owner, selector = _device_owner(session, device_id)
    return _delete(session, owner, selector, name, caller=caller, now=now, notifier=notifier)
