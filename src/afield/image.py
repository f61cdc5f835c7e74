"""What an image is, read back from its commit: version, packages, kernel, size; and diffs.

Shared by the builder (``afield image show/diff``), the release tooling and the fleet manager's
release pages, so it depends only on :mod:`afield.ostree` and does no I/O of its own beyond the
repository reads it is handed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from afield.errors import RepositoryError
from afield.ostree import CommitInfo, Repo

__all__ = [
    "ImageInfo",
    "PackageChange",
    "PackageDiff",
    "diff_packages",
    "image_info",
    "list_images",
    "open_repository",
]


def open_repository(directory: Path, *, create: bool = False) -> Repo:
    """The OSTree repository of the afield repository ``directory`` (``DIR/ostree``)."""
    if create:
        return Repo.create(directory / "ostree", mode="archive")
    if not (directory / "ostree").is_dir():
        raise RepositoryError(
            f"{directory}: not an afield repository (no ostree/ directory); "
            "compose an image into it first",
            path=directory,
            user_error=True,
        )
    return Repo.open(directory / "ostree")


@dataclass(frozen=True)
class ImageInfo:
    """One composed image: its commit and what afield recorded about it."""

    checksum: str
    refs: tuple[str, ...]
    image: str | None
    arch: str | None
    version: str | None
    timestamp: int
    kernel: str | None
    kernel_args: tuple[str, ...]
    size: int | None
    blueprint_sha256: str | None
    packages: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (lists instead of tuples)."""
        data = asdict(self)
        data["refs"] = list(self.refs)
        data["kernel_args"] = list(self.kernel_args)
        return data


def _str(meta: Any, key: str) -> str | None:
    value = meta.get(key)
    return value if isinstance(value, str) and value else None


def _from_commit(commit: CommitInfo, refs: tuple[str, ...]) -> ImageInfo:
    meta = commit.metadata
    packages: dict[str, str] = {}
    for entry in meta.get("afield.packages", []) or []:
        name, _, version = str(entry).partition("=")
        packages[name] = version
    size = meta.get("afield.size")
    return ImageInfo(
        checksum=commit.checksum,
        refs=refs,
        image=_str(meta, "afield.image"),
        arch=_str(meta, "afield.arch"),
        version=commit.version,
        timestamp=commit.timestamp,
        kernel=_str(meta, "ostree.linux"),
        kernel_args=tuple(str(a) for a in meta.get("afield.kargs", []) or []),
        size=int(size) if isinstance(size, int) else None,
        blueprint_sha256=_str(meta, "afield.blueprint.sha256"),
        packages=dict(sorted(packages.items())),
    )


def image_info(repo: Repo, ref_or_checksum: str) -> ImageInfo:
    """Read the image a ref or (prefix of a) checksum names."""
    commit = repo.commit_info(ref_or_checksum)
    refs = tuple(r for r, c in repo.refs().items() if c == commit.checksum)
    return _from_commit(commit, refs)


def list_images(repo: Repo) -> list[ImageInfo]:
    """Every image a ref points to, by ref name."""
    by_commit: dict[str, list[str]] = {}
    for ref, checksum in repo.refs().items():
        by_commit.setdefault(checksum, []).append(ref)
    images = [_from_commit(repo.commit_info(c), tuple(refs)) for c, refs in by_commit.items()]
    return sorted(images, key=lambda i: (i.refs, i.timestamp))


@dataclass(frozen=True)
class PackageChange:
    """A package whose version differs between two images."""

    name: str
    old: str
    new: str


@dataclass(frozen=True)
class PackageDiff:
    """Packages added, removed and changed from image A to image B (like rpm-ostree db diff)."""

    added: dict[str, str]
    removed: dict[str, str]
    changed: tuple[PackageChange, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "added": self.added,
            "removed": self.removed,
            "changed": [asdict(c) for c in self.changed],
        }

    @property
    def empty(self) -> bool:
        """Whether the two package lists are the same."""
        return not (self.added or self.removed or self.changed)


def diff_packages(old: dict[str, str], new: dict[str, str]) -> PackageDiff:
    """Compare two ``{name: version}`` package lists."""
    return PackageDiff(
        added={n: v for n, v in sorted(new.items()) if n not in old},
        removed={n: v for n, v in sorted(old.items()) if n not in new},
        changed=tuple(
            PackageChange(n, old[n], v) for n, v in sorted(new.items()) if n in old and old[n] != v
        ),
    )
