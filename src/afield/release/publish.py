"""Publish OSTree commits as signed releases of an afield repository.

An afield repository ``DIR`` holds ``DIR/ostree`` (the archive-mode OSTree repository) and
``DIR/tuf`` (its TUF metadata). :func:`publish` turns a composed commit into a release: it reads the
commit's afield metadata, checks that the commit object's sha256 is the commit checksum, refuses a
version not newer than the newest release of the same image, architecture and channel
(anti-rollback at the source), and adds a TUF target for the commit object with afield's custom
fields; targets, snapshot and timestamp are signed and written under the repository's lock.
:func:`init_repository`, :func:`refresh` and :func:`list_releases` do the rest of the
``afield release`` commands.

Static deltas: at publish, libostree generates deltas to the new commit from the previous releases
of the same image (:func:`delta_sources`), from commits named on the command line and from the
commits a fleet manager reports its devices run (:mod:`afield.release.fleet`); each is listed in
the target's ``deltas`` field with the length and sha256 of every file, so the device can fetch
and check them itself (:mod:`afield.device.fetch`).

What it leaves to others: serving the repository over HTTP, the TUF mechanics
(:mod:`afield.trust`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from afield.errors import RepositoryError
from afield.image import ImageInfo, image_info, open_repository
from afield.ostree import Repo
from afield.release.fleet import running_commits
from afield.trust import (
    Expiries,
    Keyring,
    MetadataRepository,
    RefreshResult,
    ReleaseTarget,
    commit_target_path,
    version_key,
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


def metadata_dir(directory: Path) -> Path:
    """Where an afield repository keeps its TUF metadata (``DIR/tuf``)."""
    return directory / "tuf"


def init_repository(
    directory: Path,
    keyring: Keyring,
    *,
    expiries: Expiries | None = None,
    now: dt.datetime | None = None,
) -> MetadataRepository:
    """Write the first root (``1.root.json``) and empty targets, snapshot and timestamp."""
    return MetadataRepository.create(metadata_dir(directory), keyring, expiries=expiries, now=now)


# libostree's static delta generation parameters, chosen with benchmarks/wire.py (RESULTS.md):
# bsdiff for changed files is what matters (without it the delta is 4-5x larger: security updates
# change libraries a little); min-fallback-size 0 keeps every object inside the delta, because a
# "fallback" object would have to be pulled loose, and the device applies deltas offline. The
# rest (max-bsdiff-size 128, max-chunk-size 32, xz parts) are libostree's defaults: larger chunks
# or inlined parts saved nothing and make resumable units coarser.
DELTA_PARAMS: dict[str, bool | int | str] = {"bsdiff-enabled": True, "min-fallback-size": 0}


def delta_sources(
    previous: list[ReleaseTarget],
    *,
    count: int,
    extra: list[str],
) -> list[str]:
    """The commits to build deltas from: ``extra`` first, then the newest ``count`` previous.

    A pure choice; duplicates are dropped, the order is kept.
    """
    newest_first = sorted(previous, key=lambda r: r.version_key, reverse=True)
    chosen = [*extra, *(r.commit for r in newest_first[: max(count, 0)])]
    return list(dict.fromkeys(chosen))


def available_deltas(
    repo: Repo,
    commit: str,
    sources: list[str],
    *,
    on_note: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Generate the static deltas ``source -> commit`` and describe them for the target.

    Each entry is what a device needs to fetch and check the delta on its own: ``from``, the
    delta's ``path`` in the afield repository, its total ``length`` and every file with its
    length and sha256. A source commit not in the repository is skipped (``on_note`` says so).
    """
    entries: list[dict[str, Any]] = []
    for source in sources:
        if source == commit:
            continue
        if not repo.has_commit(source):
            if on_note is not None:
                on_note(f"no delta from {source[:12]}: that commit is not in {repo.path}")
            continue
        delta = repo.generate_delta(source, commit, params=DELTA_PARAMS)
        entries.append(
            {
                "from": source,
                "path": f"ostree/{delta.directory}",
                "length": delta.length,
                "files": [
                    {"name": f.name, "length": f.length, "sha256": f.sha256} for f in delta.files
                ],
            }
        )
    return entries


def _user_error(message: str, directory: Path) -> RepositoryError:
    return RepositoryError(message, path=directory, user_error=True)


def _image(repo: Repo, directory: Path, commit: str) -> tuple[ImageInfo, str, str]:
    info = image_info(repo, commit)
    if info.image is None or info.arch is None:
        missing = [
            k for k, v in (("afield.image", info.image), ("afield.arch", info.arch)) if not v
        ]
        raise _user_error(
            f"{directory}: commit {info.checksum} has no {' or '.join(missing)} metadata: "
            "not an afield image (compose one with `afield compose`)",
            directory,
        )
    return info, info.image, info.arch


def _ref(info: ImageInfo, given: str) -> str | None:
    if given in info.refs:
        return given
    ours = [r for r in info.refs if r.startswith(f"afield/{info.image}/{info.arch}/")]
    candidates = ours or list(info.refs)
    return candidates[0] if candidates else None


def _check_object(repo: Repo, checksum: str) -> int:
    path = repo.commit_object_path(checksum)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise RepositoryError(
            f"{path}: cannot read the commit object ({e.strerror}); is {repo.path} an "
            "archive-mode repository?",
            path=path,
        ) from e
    digest = hashlib.sha256(data).hexdigest()
    if digest != checksum:
        raise RepositoryError(
            f"{path}: sha256 {digest} is not the commit checksum {checksum}; the repository is "
            "corrupt or not in archive mode",
            path=path,
        )
    return len(data)


def publish(
    directory: Path,
    keyring: Keyring,
    commit: str,
    *,
    version: str | None = None,
    channel: str = "stable",
    deltas: int = 3,
    delta_from: list[str] | None = None,
    fleet_url: str | None = None,
    expiries: Expiries | None = None,
    now: dt.datetime | None = None,
    on_note: Callable[[str], None] | None = None,
) -> ReleaseTarget:
    """Publish ``commit`` (checksum, unique prefix or ref in ``DIR/ostree``) as a release.

    Args:
        directory: the afield repository.
        keyring: keys for targets, snapshot and timestamp.
        commit: the commit to release.
        version: the release version; default the commit's ``version`` metadata.
        channel: the channel devices follow.
        deltas: build static deltas from this many previous releases of the same image and
            architecture (any channel), newest first.
        delta_from: also build deltas from these commits (checksums, prefixes or refs).
        fleet_url: also build deltas from the commits the devices of this fleet manager run
            (:func:`afield.release.fleet.running_commits`).
        expiries: validity periods of the metadata signed now.
        now: the signing time (tests sign in the past to make expired metadata).
        on_note: told about deltas that could not be built (a base commit not in the repo).

    Returns:
        The release target as signed.

    Raises:
        RepositoryError: the commit does not exist, is not an afield image, has no version,
            or its version is not newer than the channel's newest release (user errors); the
            fleet manager cannot be asked.
        TrustError: metadata does not verify or a key is missing.
    """
    repo = open_repository(directory)
    info, image, arch = _image(repo, directory, commit)
    release_version = version or info.version
    if release_version is None:
        raise _user_error(
            f"{directory}: commit {info.checksum} has no version metadata; pass --version",
            directory,
        )
    key = version_key(release_version)
    length = _check_object(repo, info.checksum)
    extra = [repo.resolve(c) for c in delta_from or []]
    if fleet_url is not None:
        extra += [r.commit for r in running_commits(fleet_url, image, arch)]
    with MetadataRepository.edit(metadata_dir(directory)) as meta:
        same = [
            r for r in meta.releases() if (r.image, r.arch, r.channel) == (image, arch, channel)
        ]
        newest = max(same, key=lambda r: r.version_key, default=None)
        if newest is not None and key <= newest.version_key:
            raise _user_error(
                f"{directory}: version {release_version} of {image}/{arch} is not "
                f"newer than {newest.version} already published on channel {channel} "
                f"(commit {newest.commit[:12]}); publish a higher version",
                directory,
            )
        path = commit_target_path(info.checksum)
        for existing in meta.releases():
            if existing.path == path:
                raise _user_error(
                    f"{directory}: commit {info.checksum[:12]} is already published as "
                    f"{existing.image} {existing.version} on channel {existing.channel}",
                    directory,
                )
        release = ReleaseTarget(
            path=path,
            length=length,
            sha256=info.checksum,
            image=image,
            arch=arch,
            version=release_version,
            channel=channel,
            ref=_ref(info, commit),
            deltas=tuple(
                available_deltas(
                    repo,
                    info.checksum,
                    delta_sources(
                        [r for r in meta.releases() if (r.image, r.arch) == (image, arch)],
                        count=deltas,
                        extra=extra,
                    ),
                    on_note=on_note,
                )
            ),
        )
        meta.add_release(release, keyring, expiries=expiries, now=now)
    return release


def refresh(
    directory: Path,
    keyring: Keyring,
    *,
    expiries: Expiries | None = None,
    now: dt.datetime | None = None,
) -> RefreshResult:
    """Re-sign timestamp (and snapshot, targets when half their period is spent)."""
    with MetadataRepository.edit(metadata_dir(directory)) as meta:
        return meta.refresh(keyring, expiries=expiries, now=now)


@dataclass(frozen=True)
class ReleaseListing:
    """The releases of a repository and the state of its metadata."""

    releases: list[ReleaseTarget]
    metadata: dict[str, dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``afield release ls --json``)."""
        return {
            "releases": [r.to_dict() for r in self.releases],
            "metadata": self.metadata,
        }


def list_releases(directory: Path) -> ReleaseListing:
    """The published releases, newest version first per image/arch/channel, and metadata state.

    The metadata is verified (signatures against root, hash chain) before it is listed.
    """
    meta = MetadataRepository.open(metadata_dir(directory))
    newest_first = sorted(meta.releases(), key=lambda r: r.version_key, reverse=True)
    releases = sorted(newest_first, key=lambda r: (r.image, r.arch, r.channel))
    return ReleaseListing(releases=releases, metadata=meta.status())
