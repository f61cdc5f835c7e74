"""The tree a compose works on: a plain directory, or an overlay on a cached checkpoint.

A checkpoint is never copied when it can be avoided. After a checkpointed stage the tree itself
moves into the cache (a rename on the same filesystem) and the next stages work on an overlayfs
mount whose lower layer is that cached tree; resuming mounts the same way. The cached tree is
therefore never written to. Where overlayfs is not available the workspace falls back to a copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from afield.compose._cache import StageCache, copy_tree

__all__ = ["Workspace", "clean_stale"]


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True, check=False)
    if os.path.ismount(path):
        subprocess.run(["umount", "--lazy", str(path)], capture_output=True, check=False)


def clean_stale(workroot: Path) -> None:
    """Unmount and remove workspaces left by a compose that was killed."""
    if not workroot.is_dir():
        return
    for entry in workroot.iterdir():
        tree = entry / "tree"
        if os.path.ismount(tree):
            _umount(tree)
        shutil.rmtree(entry, ignore_errors=True)


class Workspace:
    """Scratch space under ``workdir``; the stages' tree is ``workdir/tree``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.tree = workdir / "tree"
        self.overlay = False

    def start_empty(self) -> None:
        """Begin with an empty tree."""
        self.tree.mkdir()

    def start_from(self, lower: Path) -> None:
        """Begin with the content of the cached tree ``lower`` (left unchanged)."""
        self.tree.mkdir(exist_ok=True)
        if self._mount_overlay(lower):
            return
        copy_tree(lower, self.tree)

    def checkpoint(self, cache: StageCache, stage_id: str, facts: dict[str, Any]) -> None:
        """Keep the tree as it is now in the cache as the checkpoint of ``stage_id``."""
        if cache.has_checkpoint(stage_id):
            return
        if self.overlay:
            cache.save_checkpoint(stage_id, self.tree, facts)
            return
        lower = cache.adopt_checkpoint(stage_id, self.tree, facts)
        self.start_from(lower)

    def close(self) -> None:
        """Unmount the overlay (if any) and remove the scratch space."""
        if self.overlay:
            _umount(self.tree)
            self.overlay = False
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _mount_overlay(self, lower: Path) -> bool:
        if any(c in str(lower) + str(self.workdir) for c in ",:\\"):
            return False
        upper, work = self.workdir / "upper", self.workdir / "overlay-work"
        upper.mkdir(exist_ok=True)
        work.mkdir(exist_ok=True)
        options = f"lowerdir={lower},upperdir={upper},workdir={work}"
        result = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(self.tree)],
            capture_output=True,
            check=False,
        )
        self.overlay = result.returncode == 0
        if not self.overlay:
            shutil.rmtree(upper, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)
        return self.overlay
