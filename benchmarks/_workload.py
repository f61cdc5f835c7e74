"""The benchmark's workload: the blueprint and its variants, the download pool, scratch space.

Every figure starts from a fresh compose cache whose download directories (``debs/``, ``wheels/``)
are hard-linked from one pool, so no figure measures the network. The pool is the default compose
cache (only its download directories are read and added to), filled once, untimed, by a throwaway
compose before any figure. Measuring and reporting are left to ``run.py``; the raw baseline to
``_baseline.py``.
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
    "DOWNLOADS",
    "Variants",
    "keep_downloads",
    "link_downloads",
    "remove_tree",
    "snapshot_source",
    "tree_size",
    "write_variants",
]

# What a compose cache keeps of its downloads: .debs (afield.debian.bootstrap) and Python wheels
# (afield.device.agent). The rest of a cache is stage state, which every figure starts without.
DOWNLOADS = ("debs", "wheels")
# The line of the blueprint's file data that the files-only variant changes.
FILES_ONLY_FROM = "interval_seconds = 30"
FILES_ONLY_TO = "interval_seconds = 60"
# What afield.device.agent builds afield's wheel from, besides src/afield.
_PROJECT_FILES = ("pyproject.toml", "README.md", "LICENSE", "LICENSE.txt", "COPYING", "NOTICE")
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


def _link_files(source: Path, target: Path) -> int:
    """Hard-link (or copy, across filesystems) the files of ``source`` missing in ``target``."""
    count = 0
    for path in sorted(source.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        destination = target / path.relative_to(source)
        if destination.exists():
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, destination)
        except OSError:
            shutil.copy2(path, destination)
        count += 1
    return count


def link_downloads(pool: Path, cache: Path) -> dict[str, int]:
    """Give the compose cache ``cache`` the pool's downloads; files linked per directory."""
    return {
        name: _link_files(pool / name, cache / name) for name in DOWNLOADS if (pool / name).is_dir()
    }


def keep_downloads(cache: Path, pool: Path) -> dict[str, int]:
    """Add what a compose into ``cache`` downloaded to the pool; files added per directory."""
    return {
        name: _link_files(cache / name, pool / name)
        for name in DOWNLOADS
        if (cache / name).is_dir()
    }


def snapshot_source(root: Path, into: Path) -> Path:
    """Copy afield's source checkout at ``root`` (src/afield and project files) to ``into``.

    afield.device.agent builds the image's afield from the checkout it runs from and fails when
    that changes during a compose; a snapshot keeps the benchmark on one version of the code
    while others edit. Returns the snapshot's ``src`` directory (for ``PYTHONPATH``).
    """
    for name in _PROJECT_FILES:
        if (root / name).is_file():
            shutil.copy2(root / name, into / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")
    shutil.copytree(root / "src" / "afield", into / "src" / "afield", ignore=ignore)
    return into / "src"


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
