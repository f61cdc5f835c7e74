"""The one package that talks to libostree (through PyGObject).

Repositories (:class:`Repo`: commits, refs, local pulls) and sysroots (:class:`Sysroot`:
deployments, what ``ostree admin`` does). Everything above it deals in checksums, refs, paths and
dataclasses; no GLib type or ``GLib.Error`` leaves this package.

What it leaves to others: what goes into a commit (``compose``), signing (``trust``), deployment
policy (``device``).
"""

from __future__ import annotations

from afield.ostree._repo import (
    CommitInfo,
    DeltaFile,
    PullStats,
    Repo,
    StaticDelta,
    is_checksum,
    static_delta_dir,
)
from afield.ostree._sysroot import Deployment, Sysroot

__all__ = [
    "CommitInfo",
    "DeltaFile",
    "Deployment",
    "PullStats",
    "Repo",
    "StaticDelta",
    "Sysroot",
    "is_checksum",
    "static_delta_dir",
]
