"""``/api/v1/releases`` (register and list releases) and ``/api/v1/images/{image}/running``.

A release is one OSTree commit of an image for an architecture, under a version name; (image,
arch, version) is unique and the commit is its 64-hex-digit SHA-256 checksum. Registering one is
an admin write and is recorded as an event.

``GET /api/v1/images/{image}/running?arch=A`` is the endpoint :mod:`afield.release.fleet` calls
to learn which commits devices run, so ``afield release publish`` builds static deltas from
those; its answer is that module's contract::

    {"image": "gateway", "arch": "x86_64",
     "running": [{"commit": "<64 hex>", "version": "1.2.0", "devices": 1200}, ...]}

Devices are grouped by ``current_commit`` among the commits of registered releases of that
image and arch (a delta can only start from a commit the repository has, which is a
release's), most devices first, then by commit. It needs no token: the client sends none, and
it reveals no more than the repository itself (which commits exist) plus counts.

What it leaves to others: registering releases from the repository's TUF targets automatically,
deleting releases, building the deltas (:mod:`afield.release.publish`).
"""

from __future__ import annotations

import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from afield.fleet.api.deps import (
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
from afield.fleet.auth import AdminDep, ViewerDep
from afield.fleet.models import Device, Release

__all__ = [
    "ARCH",
    "IMAGE",
    "VERSION",
    "ReleaseCreate",
    "ReleasePublic",
    "ReleaseRef",
    "ReleasesPublic",
    "RunningCommit",
    "RunningPublic",
    "find_release",
    "images_router",
    "release_public",
    "router",
]

router = APIRouter(prefix="/releases", tags=["releases"])
images_router = APIRouter(prefix="/images", tags=["images"])

IMAGE = r"^[a-z0-9][a-z0-9._-]*$"
ARCH = r"^[A-Za-z0-9_]+$"
VERSION = r"^[A-Za-z0-9][A-Za-z0-9.+~_-]*$"
COMMIT = r"^[0-9a-f]{64}$"

ImageField = Annotated[
    str, Field(min_length=1, max_length=64, pattern=IMAGE, description="Image name.")
]
ArchField = Annotated[
    str, Field(min_length=1, max_length=32, pattern=ARCH, description="Architecture (x86_64).")
]
VersionField = Annotated[
    str, Field(min_length=1, max_length=64, pattern=VERSION, description="Version (1.2.0).")
]


class ReleaseRef(BaseModel):
    """Names a registered release."""

    model_config = ConfigDict(extra="forbid")

    image: ImageField
    arch: ArchField
    version: VersionField

    def __str__(self) -> str:
        return f"{self.image}/{self.arch}/{self.version}"


class ReleaseCreate(ReleaseRef):
    """A release to register."""

    commit: Annotated[
        str, Field(pattern=COMMIT, description="The OSTree commit checksum: 64 lowercase hex.")
    ]


class ReleasePublic(BaseModel):
    """A registered release."""

    id: int
    image: str
    arch: str
    version: str
    commit: str
    created: datetime.datetime


class ReleasesPublic(Page):
    """One page of releases, newest first."""

    data: list[ReleasePublic]


def release_public(release: Release) -> ReleasePublic:
    """The API's view of a release."""
    created = iso(release.created)
    assert created is not None  # noqa: S101  # the column is NOT NULL
    return ReleasePublic(
        id=release.id,
        image=release.image,
        arch=release.arch,
        version=release.version,
        commit=release.commit,
        created=created,
    )


def find_release(session: Session, ref: ReleaseRef, *, field: str) -> Release:
    """The release ``ref`` names; 422 naming ``field`` if none is registered."""
    release = session.scalars(
        select(Release).where(
            Release.image == ref.image, Release.arch == ref.arch, Release.version == ref.version
        )
    ).one_or_none()
    if release is None:
        raise ApiError(
            422,
            f"{field}: no release {ref} is registered (POST /api/v1/releases registers one)",
            field=field,
        )
    return release


@router.post("", status_code=201, operation_id="releases-create")
def create_release(
    body: ReleaseCreate, session: SessionDep, caller: AdminDep, now: NowDep
) -> ReleasePublic:
    """Register a release; 409 if its image, arch and version are taken."""
    release = Release(
        image=body.image, arch=body.arch, version=body.version, commit=body.commit, created=now
    )
    session.add(release)
    record(
        session,
        actor=caller.actor,
        kind="release.create",
        subject=str(body),
        now=now,
        details={"commit": body.commit},
    )
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise ApiError(409, f"release {body} is registered already", field="version") from None
    return release_public(release)


@router.get("", operation_id="releases-list")
def list_releases(
    session: SessionDep,
    caller: ViewerDep,
    image: Annotated[str | None, Query(max_length=64, pattern=TEXT)] = None,
    arch: Annotated[str | None, Query(max_length=32, pattern=TEXT)] = None,
    limit: LimitQuery = 100,
    cursor: IdCursorQuery = None,
) -> ReleasesPublic:
    """Releases, newest first, optionally of one image and arch."""
    query = select(Release)
    if image is not None:
        query = query.where(Release.image == image)
    if arch is not None:
        query = query.where(Release.arch == arch)
    rows, next_cursor = newest_first(session, query, Release.id, limit, cursor)
    data = [release_public(r) for r in rows]
    return ReleasesPublic(data=data, count=len(data), next_cursor=next_cursor)


class RunningCommit(BaseModel):
    """A commit devices run, its release version and how many devices run it."""

    commit: str
    version: str | None
    devices: int


class RunningPublic(BaseModel):
    """The commits devices of an image and arch run, most devices first."""

    image: str
    arch: str
    running: list[RunningCommit]


@images_router.get("/{image}/running", operation_id="images-running")
def running(
    session: SessionDep,
    image: Annotated[str, Path(max_length=64, pattern=TEXT)],
    arch: Annotated[str, Query(min_length=1, max_length=32, pattern=TEXT)],
) -> RunningPublic:
    """Which release commits the devices of ``image``/``arch`` run (no token needed)."""
    versions: dict[str, str] = {}
    for commit, version in session.execute(
        select(Release.commit, Release.version)
        .where(Release.image == image, Release.arch == arch)
        .order_by(Release.id)
    ):
        versions[commit] = version  # the newest registration of a commit names it
    counted = func.count(Device.id).label("devices")
    rows = session.execute(
        select(Device.current_commit, counted)
        .where(
            Device.current_commit.in_(
                select(Release.commit).where(Release.image == image, Release.arch == arch)
            )
        )
        .group_by(Device.current_commit)
        .order_by(counted.desc(), Device.current_commit)
    ).all()
    entries = [
        RunningCommit(commit=str(commit), version=versions.get(str(commit)), devices=int(n))
        for commit, n in rows
    ]
    return RunningPublic(image=image, arch=arch, running=entries)
