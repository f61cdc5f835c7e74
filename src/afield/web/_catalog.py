"""What the served repository says about releases, read once and kept: package lists and deltas.

The releases page needs two things from the afield repository the fleet manager serves:

* per commit, its :class:`~afield.image.ImageInfo` (package list, size, kernel), read from the
  commit's metadata in ``DIR/ostree``. A commit never changes, so each one is read once and kept
  in a bounded least-recently-used map (:data:`MAX_IMAGES` commits; a page showing more rereads
  the oldest);
* the TUF listing (:func:`afield.release.list_releases`: every published release with its
  static deltas), which is verified (signatures against root, hash chain) before it is
  believed. It changes only when ``DIR/tuf/{root,targets,snapshot,timestamp}.json`` change, so
  the result (listing or error) is kept under those files' size, mtime and inode and reread
  when any of them differs.

One :class:`Catalog` per app, made on first use and kept in ``app.state`` (:func:`catalog`).
Its methods do blocking file and libostree I/O: call them from the threadpool (a sync route).
A repository that cannot be opened or verified raises :class:`~afield.errors.AfieldError`; one
commit that cannot be read is reported per commit, so a page shows what it could read.

What it leaves to others: what the metadata means and how it is verified
(:mod:`afield.release`, :mod:`afield.trust`), reading commits (:mod:`afield.image`), showing
any of it (:mod:`afield.web.releases`). Refs are not tracked: an ``ImageInfo`` kept here may
name refs that have moved since.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from afield.errors import AfieldError, RepositoryError
from afield.image import ImageInfo, image_info, open_repository
from afield.ostree import Repo, is_checksum
from afield.release import ReleaseListing, list_releases, metadata_dir

__all__ = ["MAX_IMAGES", "Catalog", "Images", "catalog"]

MAX_IMAGES = 512
"""Commits whose image information a catalog keeps (the least recently used go first)."""

_ROLES = ("root", "targets", "snapshot", "timestamp")
_Signature = tuple[tuple[int, int, int] | None, ...]
_made = threading.Lock()


@dataclass
class Images:
    """Image information of some commits: those read, and why the others could not be."""

    found: dict[str, ImageInfo] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)


class Catalog:
    """The served repository's package lists and TUF listing, cached (see the module docstring).

    Args:
        directory: the afield repository (``DIR/ostree`` and ``DIR/tuf``).
        max_images: how many commits' image information to keep.
    """

    def __init__(self, directory: Path, *, max_images: int = MAX_IMAGES) -> None:
        self.directory = directory
        self.max_images = max(max_images, 1)
        self.listing_reads = 0  # verifications of the TUF metadata done, for tests and metrics
        self.image_reads = 0  # commits read from the OSTree repository
        self._lock = threading.Lock()
        self._listing_lock = threading.Lock()
        self._images: OrderedDict[str, ImageInfo] = OrderedDict()
        self._listing: tuple[_Signature, ReleaseListing | AfieldError] | None = None

    # -- the TUF listing -----------------------------------------------------------------------

    def _signature(self) -> _Signature:
        stamps: list[tuple[int, int, int] | None] = []
        for role in _ROLES:
            try:
                found = os.stat(metadata_dir(self.directory) / f"{role}.json")
            except OSError:
                stamps.append(None)
            else:
                stamps.append((found.st_mtime_ns, found.st_size, found.st_ino))
        return tuple(stamps)

    def listing(self) -> ReleaseListing:
        """The published releases, verified; reread only when the metadata files changed.

        Raises:
            AfieldError: the metadata is missing, malformed or does not verify (the same error
                is raised again, without rereading, until the files change).
        """
        signature = self._signature()
        with self._listing_lock:
            if self._listing is None or self._listing[0] != signature:
                self.listing_reads += 1
                result: ReleaseListing | AfieldError
                try:
                    result = list_releases(self.directory)
                except AfieldError as e:
                    result = e
                # Files replaced while they were read: keyed by what was seen before, so the
                # next request sees a different signature and reads again.
                self._listing = (signature, result)
            kept = self._listing[1]
        if isinstance(kept, AfieldError):
            raise kept
        return kept

    # -- image information per commit ---------------------------------------------------------

    def _kept(self, commit: str) -> ImageInfo | None:
        with self._lock:
            info = self._images.get(commit)
            if info is not None:
                self._images.move_to_end(commit)
            return info

    def _keep(self, info: ImageInfo) -> None:
        with self._lock:
            self._images[info.checksum] = info
            self._images.move_to_end(info.checksum)
            while len(self._images) > self.max_images:
                self._images.popitem(last=False)

    def cached(self) -> int:
        """How many commits' image information is kept now."""
        with self._lock:
            return len(self._images)

    def images(self, commits: Iterable[str]) -> Images:
        """The image information of ``commits``: kept ones at once, the others read now.

        A commit that is not a full checksum or is not in the repository is listed in
        ``problems`` with the reason (and not kept: it may be pulled in later).

        Raises:
            AfieldError: the OSTree repository cannot be opened (only asked when some commit
                is not kept yet).
        """
        answer = Images()
        repo: Repo | None = None
        for commit in dict.fromkeys(commits):
            info = self._kept(commit)
            if info is not None:
                answer.found[commit] = info
                continue
            if not is_checksum(commit):
                answer.problems[commit] = f"{commit[:64]!r} is not an OSTree commit checksum"
                continue
            if repo is None:
                repo = open_repository(self.directory)
            try:
                self.image_reads += 1
                info = image_info(repo, commit)
            except RepositoryError as e:
                answer.problems[commit] = str(e)
                continue
            self._keep(info)
            answer.found[commit] = info
        return answer


def catalog(state: Any, directory: Path) -> Catalog:
    """The catalog of ``directory`` kept in ``state`` (an app's ``app.state``), made once."""
    with _made:
        kept = getattr(state, "release_catalog", None)
        if isinstance(kept, Catalog) and kept.directory == directory:
            return kept
        made = Catalog(directory)
        state.release_catalog = made
        return made
