"""Releases: publish composed OSTree commits as signed TUF targets of an afield repository.

A release is a TUF target whose file is the commit object (``ostree/objects/xx/yyyy….commit``), so
the signed sha256 is the commit checksum and the commit pins every byte of the tree. This package
decides what may be released (an afield image, a version newer than the channel's newest) and
leaves the TUF mechanics to :mod:`afield.trust` and commit reading to :mod:`afield.image`. Shared by
the builder and the fleet manager; it never imports the device, the compose pipeline or the CLI.

Publishing also generates the static deltas devices will use (from previous releases, named
commits, and the commits a fleet manager reports running).

What it leaves to others: serving the repository (:mod:`afield.release.serve`), the device's choice.
"""

from __future__ import annotations

from afield.release.publish import (
    DELTA_PARAMS,
    ReleaseListing,
    available_deltas,
    delta_sources,
    init_repository,
    list_releases,
    metadata_dir,
    publish,
    refresh,
)

__all__ = [
    "DELTA_PARAMS",
    "ReleaseListing",
    "available_deltas",
    "delta_sources",
    "init_repository",
    "list_releases",
    "metadata_dir",
    "publish",
    "refresh",
]
