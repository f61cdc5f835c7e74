"""``/releases``: every registered version per image and architecture, and what it changes.

Per image and architecture (``?image=`` and ``?arch=`` narrow the page), the registered
releases newest version first, each with its commit, when it was registered and how many
devices run it (one ``GROUP BY devices.current_commit`` over the commits shown: an indexed
query, so the page costs the same at 100 devices and at 100,000). When the fleet manager serves
a repository (``--repo``), each version also shows, from the repository
(:mod:`afield.web._catalog`):

* its package diff against the previous version of the same image and architecture: packages
  added, removed and upgraded (old -> new), folded in a ``<details>`` when long; the oldest
  version says "first release";
* its size and kernel, from the commit's metadata;
* the static deltas published to it (from which version or commit, and their length in bytes),
  and the deltas missing: from the previous version, and from every older version that devices
  run now (those devices would pull the whole commit).

Without a served repository the page says so and shows the rest. A repository that cannot be
read or whose TUF metadata does not verify is said in a note at the top; the page still shows
what it could read. A malformed filter gets a 400 page naming it; an image with no release gets
a page saying so.

What it leaves to others: registering releases (:mod:`afield.fleet.api.releases` and the
runner's :func:`~afield.fleet.runner.sync_releases`), reading and caching the repository
(:mod:`afield.web._catalog`), publishing deltas (:mod:`afield.release.publish`).
"""

from __future__ import annotations

import datetime
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import func, select

from afield.errors import AfieldError
from afield.fleet.models import Device, Release
from afield.image import ImageInfo, PackageDiff, diff_packages
from afield.trust import ReleaseTarget
from afield.web._catalog import Images, catalog
from afield.web._render import render, version_order
from afield.web._session import PageError, ViewerPage

__all__ = ["COLLAPSE", "DeltaRow", "ImageGroup", "VersionRow", "router"]

router = APIRouter()

COLLAPSE = 8
"""A package diff with more lines than this is shown folded."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_LIMITS = {"image": 64, "arch": 32}


@dataclass(frozen=True)
class DeltaRow:
    """A static delta published to a release: from which commit (and version, if registered)."""

    source: str
    version: str | None
    length: int | None
    files: int


@dataclass
class VersionRow:
    """One registered release as the page shows it."""

    id: int
    version: str
    commit: str
    created: datetime.datetime
    devices: int
    previous: str | None = None
    info: ImageInfo | None = None
    unreadable: str | None = None
    diff: PackageDiff | None = None
    no_diff: str | None = None
    target: ReleaseTarget | None = None
    deltas: list[DeltaRow] = field(default_factory=list)
    missing: list[tuple[str, int]] = field(default_factory=list)

    @property
    def diff_lines(self) -> int:
        """How many packages the diff lists."""
        if self.diff is None:
            return 0
        return len(self.diff.added) + len(self.diff.removed) + len(self.diff.changed)


@dataclass
class ImageGroup:
    """The releases of one image for one architecture, newest version first."""

    image: str
    arch: str
    versions: list[VersionRow]

    @property
    def anchor(self) -> str:
        """The HTML id of this group's section."""
        return f"{self.image}-{self.arch}"


def _filter(name: str, value: str | None) -> str | None:
    if value is None or value == "":
        return None
    limit = _LIMITS[name]
    if len(value) > limit or not _NAME.fullmatch(value):
        raise PageError(
            400,
            "Bad filter",
            f"{name}: expected a name of letters, digits, '.', '_' or '-' (at most {limit} "
            f"characters), got {value[:80]!r}",
        )
    return value


def _groups(releases: Sequence[Release], counts: Mapping[str, int]) -> list[ImageGroup]:
    by_key: dict[tuple[str, str], list[Release]] = {}
    for release in releases:
        by_key.setdefault((release.image, release.arch), []).append(release)
    groups = []
    for (image, arch), rows in sorted(by_key.items()):
        newest = sorted(rows, key=lambda r: (version_order(r.version), r.id), reverse=True)
        versions = [
            VersionRow(
                id=r.id,
                version=r.version,
                commit=r.commit,
                created=r.created,
                devices=counts.get(r.commit, 0),
            )
            for r in newest
        ]
        for row, older in itertools.pairwise(versions):
            row.previous = older.version
        groups.append(ImageGroup(image, arch, versions))
    return groups


def _add_images(groups: list[ImageGroup], images: Images) -> None:
    for group in groups:
        for index, row in enumerate(group.versions):
            row.info = images.found.get(row.commit)
            row.unreadable = images.problems.get(row.commit)
            if index + 1 == len(group.versions):
                continue  # the first release: nothing to compare with
            older = group.versions[index + 1]
            before = images.found.get(older.commit)
            if row.info is None:
                row.no_diff = "this commit cannot be read"
            elif before is None:
                row.no_diff = f"{older.version}'s commit cannot be read"
            else:
                row.diff = diff_packages(before.packages, row.info.packages)


def _delta(entry: Mapping[str, Any], versions: Mapping[str, str]) -> DeltaRow:
    source = str(entry.get("from", ""))
    length = entry.get("length")
    files = entry.get("files")
    return DeltaRow(
        source=source,
        version=versions.get(source),
        length=length if isinstance(length, int) else None,
        files=len(files) if isinstance(files, list) else 0,
    )


def _add_deltas(groups: list[ImageGroup], published: Sequence[ReleaseTarget]) -> None:
    by_commit = {target.sha256: target for target in published}
    for group in groups:
        versions = {row.commit: row.version for row in reversed(group.versions)}
        for index, row in enumerate(group.versions):
            row.target = by_commit.get(row.commit)
            if row.target is None:
                continue
            row.deltas = [_delta(entry, versions) for entry in row.target.deltas]
            sources = {delta.source for delta in row.deltas}
            older = group.versions[index + 1 :]
            row.missing = [
                (old.version, old.devices)
                for position, old in enumerate(older)
                if (position == 0 or old.devices > 0)
                and old.commit not in sources
                and old.commit != row.commit
            ]


def _read_repository(
    request: Request, directory: Path, groups: list[ImageGroup]
) -> tuple[list[str], int]:
    """Fill in packages and deltas; notes on what failed, and unregistered published releases."""
    notes = []
    kept = catalog(request.app.state, directory)
    commits = [row.commit for group in groups for row in group.versions]
    try:
        _add_images(groups, kept.images(commits))
    except AfieldError as e:
        notes.append(f"Package lists and sizes could not be read from the repository: {e}")
    unregistered = 0
    try:
        listing = kept.listing()
    except AfieldError as e:
        notes.append(
            f"The repository's TUF metadata could not be read or verified, so no deltas are "
            f"shown: {e}"
        )
    else:
        _add_deltas(groups, listing.releases)
        registered = set(commits)
        shown = {(g.image, g.arch) for g in groups}
        unregistered = sum(
            1
            for target in listing.releases
            if (target.image, target.arch) in shown and target.sha256 not in registered
        )
    return notes, unregistered


@router.get("/releases")
def releases_page(
    request: Request,
    caller: ViewerPage,
    image: str | None = None,
    arch: str | None = None,
) -> HTMLResponse:
    """The releases page (see the module docstring)."""
    filters = {"image": _filter("image", image), "arch": _filter("arch", arch)}
    state = request.app.state
    directory: Path | None = state.settings.repo_dir
    query = select(Release)
    if filters["image"] is not None:
        query = query.where(Release.image == filters["image"])
    if filters["arch"] is not None:
        query = query.where(Release.arch == filters["arch"])
    with state.db.sessions() as session:
        rows = session.scalars(query).all()
        commits = sorted({r.commit for r in rows})
        counts: dict[str, int] = {}
        if commits:
            counts = {
                commit: int(n)
                for commit, n in session.execute(
                    select(Device.current_commit, func.count())
                    .where(Device.current_commit.in_(commits))
                    .group_by(Device.current_commit)
                )
            }
        images = session.scalars(select(Release.image).distinct().order_by(Release.image)).all()
        arches = session.scalars(select(Release.arch).distinct().order_by(Release.arch)).all()
        groups = _groups(rows, counts)
    notes: list[str] = []
    unregistered = 0
    if directory is not None and groups:
        notes, unregistered = _read_repository(request, directory, groups)
    return render(
        request,
        "releases.html",
        caller=caller,
        section="releases",
        groups=groups,
        filters=filters,
        images=list(images),
        arches=list(arches),
        served=directory is not None,
        notes=notes,
        unregistered=unregistered,
        collapse=COLLAPSE,
    )
