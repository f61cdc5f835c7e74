"""The benchmark's workload: the blueprint and its variants, the package pool, scratch space.

Every figure starts from a fresh compose cache whose ``debs/`` is hard-linked from one package
pool, so no figure measures the network's speed for packages. The pool is the compose cache's own
``debs/`` by default (what ``afield compose`` keeps), filled once, untimed, before any figure.
Measuring and reporting are left to ``run.py``; the raw baseline to ``_baseline.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Variants",
    "link_pool",
    "remove_tree",
    "tree_size",
    "write_variants",
]

# The line of the blueprint's file data that the files-only variant changes.
FILES_ONLY_FROM = "interval_seconds = 30"
FILES_ONLY_TO = "interval_seconds = 60"
_VERSION_LINE = re.compile(r'^version = "(\d+)\.(\d+)\.(\d+)"$', re.MULTILINE)


@dataclass(frozen=True)
class Variants:
    """The blueprint files a run composes (copies, in the benchmark's scratch directory)."""

    original: Path
    files_only: Path
    version_bump: Path


def _replace_once(text: str, old: str, new: str, source: Path) -> str:
    if text.count(old) != 1:
        raise SystemExit(f"{source}: expected exactly one line {old!r} to change")
    return text.replace(old, new)


def _bump_patch(match: re.Match[str]) -> str:
    major, minor, patch = match.groups()
    return f'version = "{major}.{minor}.{int(patch) + 1}"'


def write_variants(source: Path, directory: Path) -> Variants:
    """Copy ``source`` into ``directory`` with a files-only and a version-bump variant."""
    directory.mkdir(parents=True, exist_ok=True)
    text = source.read_text()
    original = directory / source.name
    original.write_text(text)
    files_only = directory / f"{source.stem}-files-only.toml"
    files_only.write_text(_replace_once(text, FILES_ONLY_FROM, FILES_ONLY_TO, source))
    bumped, count = _VERSION_LINE.subn(_bump_patch, text, count=1)
    if count != 1:
        raise SystemExit(f'{source}: no top-level version = "X.Y.Z" line to bump')
    version_bump = directory / f"{source.stem}-version-bump.toml"
    version_bump.write_text(bumped)
    return Variants(original=original, files_only=files_only, version_bump=version_bump)


def link_pool(pool: Path, debs: Path) -> int:
    """Fill ``debs`` with hard links to the pool's packages (copies across filesystems).

    Returns the number of packages.
    """
    debs.mkdir(parents=True, exist_ok=True)
    count = 0
    for deb in sorted(pool.glob("*.deb")):
        try:
            os.link(deb, debs / deb.name)
        except OSError:
            shutil.copy2(deb, debs / deb.name)
        count += 1
    return count


def tree_size(path: Path) -> tuple[int, int]:
    """``(files, bytes)`` of the regular files under ``path`` (apparent sizes)."""
    files = size = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            st = os.lstat(os.path.join(root, name))
            if stat.S_ISREG(st.st_mode):
                files += 1
                size += st.st_size
    return files, size


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()).rstrip("/") + "/"
    found: list[str] = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                found.append(point)
    # Deepest first, so nested mounts (a chroot's /proc under an overlay) come off in order.
    return sorted(found, key=len, reverse=True)


def remove_tree(path: Path) -> None:
    """Unmount whatever a killed compose left mounted under ``path``, then remove it."""
    if not path.exists():
        return
    for point in _mounts_under(path):
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
    shutil.rmtree(path, ignore_errors=True)
