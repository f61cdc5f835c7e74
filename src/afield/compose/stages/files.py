"""Stage afield.files: create the blueprint's directories and files with owners and modes.

Paths are resolved inside the tree (symlinks followed relative to its root), so no blueprint can
write outside the image. Owners may be names, looked up in the image's own passwd and group
files, or numeric ids. Files are written under a temporary name and renamed into place.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from afield.compose._tree import lookup_gid, lookup_uid, resolve_in_tree
from afield.compose.pipeline import Facts, StageContext
from afield.errors import ComposeError, StageError

NAME = "afield.files"
CHECKPOINT = False


def _owner(ctx: StageContext, entry: Mapping[str, Any]) -> tuple[int, int]:
    try:
        return (
            lookup_uid(ctx.tree, entry.get("user") or "root"),
            lookup_gid(ctx.tree, entry.get("group") or "root"),
        )
    except ComposeError as e:
        raise StageError(NAME, f"{entry['path']}: {e.message}", user_error=True) from e


def _parent(ctx: StageContext, entry: Mapping[str, Any], kind: str) -> Path:
    target = resolve_in_tree(ctx.tree, entry["path"])
    parent = target.parent
    if not parent.is_dir():
        if not entry.get("ensure_parents", False):
            raise StageError(
                NAME,
                f"{kind} {entry['path']}: parent directory does not exist in the image; "
                "set ensure_parents = true or add it to customizations.directories",
                user_error=True,
            )
        parent.mkdir(mode=0o755, parents=True)
    return target


def _make_directory(ctx: StageContext, entry: Mapping[str, Any]) -> None:
    target = _parent(ctx, entry, "directory")
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise StageError(
            NAME, f"directory {entry['path']}: a non-directory is already there", user_error=True
        )
    target.mkdir(exist_ok=True)
    uid, gid = _owner(ctx, entry)
    os.chown(target, uid, gid)
    target.chmod(int(entry.get("mode") or "0755", 8))


def _write_file(ctx: StageContext, entry: Mapping[str, Any]) -> None:
    target = _parent(ctx, entry, "file")
    if target.is_dir() and not target.is_symlink():
        raise StageError(
            NAME, f"file {entry['path']}: a directory is already there", user_error=True
        )
    uid, gid = _owner(ctx, entry)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".afield-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(entry.get("data", "").encode())
        os.chown(temp, uid, gid)
        os.chmod(temp, int(entry.get("mode") or "0644", 8))
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def run(ctx: StageContext, options: Mapping[str, Any]) -> Facts:
    """Create directories, then files; no facts."""
    for entry in options["directories"]:
        _make_directory(ctx, entry)
    for entry in options["files"]:
        _write_file(ctx, entry)
    return {}
