"""Fetch a verified release's commit into the device's repository: a static delta, or objects.

Given a release whose target is already verified with TUF (:mod:`afield.trust`), bring its
commit into the device's OSTree repository with the fewest bytes on the wire:

1. **Static delta**, when the release lists one from the commit the device has: the device
   downloads the superblock and parts itself (:func:`afield.device.transport.download`), each
   checked against the length and sha256 signed in the release's target, resumable with Range,
   kept under ``downloads/`` until the delta is applied; libostree then applies them offline
   (checking the parts against the superblock and every object against its checksum). Only the
   delta's bytes cross the wire; a plain ``ostree pull`` that finds a delta also fetches loose
   objects in parallel and moves several times more.
2. **Object pull**, when no delta matches or the delta could not be used: libostree pulls exactly
   the commit checksum, skipping every object the device already has, through the local
   :class:`~afield.device._relay.Relay` that meters it. A pull that fails is retried; objects
   already fetched are kept by libostree, so the retry fetches only the rest.

Both paths share one :class:`~afield.device.transport.Meter`: ``max_rate`` caps them and
``progress`` sees every byte as it arrives. A delta that fails a check (a tampered part) is
reported in :attr:`FetchResult.delta_error` and the object pull takes over; nothing from it is
kept.

What it leaves to others: choosing and verifying the release (:mod:`afield.device.update`),
deploying it (:mod:`afield.device.lifecycle`).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3

from afield.device._relay import Relay
from afield.device.transport import Meter, RetryPolicy, download, retrying
from afield.errors import AfieldError, RepositoryError, TransportError, TrustError
from afield.ostree import Repo, is_checksum, static_delta_dir
from afield.trust import ReleaseTarget

__all__ = ["DeltaRef", "FetchOptions", "FetchResult", "fetch_commit", "parse_deltas"]

_PART = re.compile(r"superblock|0|[1-9][0-9]{0,5}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# libostree's own words for an object whose bytes do not match its name: never worth a retry.
_CORRUPT = re.compile(r"corrupt|checksum|does not match", re.IGNORECASE)


@dataclass(frozen=True)
class DeltaRef:
    """A static delta listed in a release's signed target (its ``deltas`` custom field).

    Attributes:
        from_commit: the commit a device must have to use it.
        to_commit: the release's commit, which applying it writes.
        path: its directory, relative to the afield repository (``ostree/deltas/xx/yyyy-zzzz``).
        files: ``(name, length, sha256)`` of the superblock and every part.
    """

    from_commit: str
    to_commit: str
    path: str
    files: tuple[tuple[str, int, str], ...]

    @property
    def length(self) -> int:
        """The bytes it costs to download."""
        return sum(length for _, length, _ in self.files)


def _delta(entry: Mapping[str, Any], to_commit: str, where: str) -> DeltaRef:
    source = entry.get("from")
    if not isinstance(source, str) or not is_checksum(source):
        raise TrustError(f"{where}: 'from' must be a commit checksum, got {source!r}")
    expected = f"ostree/{static_delta_dir(source, to_commit)}"
    if entry.get("path") != expected:
        raise TrustError(f"{where}: 'path' must be {expected}, got {entry.get('path')!r}")
    files = entry.get("files")
    if not isinstance(files, list) or not files or len(files) > 100_000:
        raise TrustError(f"{where}: 'files' must be a non-empty list")
    parsed: list[tuple[str, int, str]] = []
    for i, item in enumerate(files):
        name = item.get("name") if isinstance(item, Mapping) else None
        length = item.get("length") if isinstance(item, Mapping) else None
        digest = item.get("sha256") if isinstance(item, Mapping) else None
        if (
            not isinstance(name, str)
            or not _PART.fullmatch(name)
            or not isinstance(length, int)
            or isinstance(length, bool)
            or length <= 0
            or not isinstance(digest, str)
            or not _SHA256.fullmatch(digest)
        ):
            raise TrustError(
                f"{where}: files[{i}] must be {{name: 'superblock' or a part number, "
                f"length: positive integer, sha256: 64 hex digits}}, got {item!r}"
            )
        parsed.append((name, length, digest))
    names = [name for name, _, _ in parsed]
    if "superblock" not in names or len(set(names)) != len(names):
        raise TrustError(f"{where}: 'files' must list the superblock and each part once")
    return DeltaRef(source, to_commit, expected, tuple(parsed))


def parse_deltas(release: ReleaseTarget) -> list[DeltaRef]:
    """The static deltas a verified release lists, checked field by field.

    Raises:
        TrustError: an entry is malformed (the message names the release and the field).
    """
    return [
        _delta(entry, release.commit, f"target {release.path}: deltas[{i}]")
        for i, entry in enumerate(release.deltas)
    ]


@dataclass(frozen=True)
class FetchOptions:
    """How to fetch: bandwidth cap, retries and timeouts, progress, delta size limit.

    ``max_delta_bytes`` refuses a delta whose signed size is larger (the object pull is then
    used); ``progress`` is called with the bytes received so far.
    """

    max_rate: int | None = None
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    max_delta_bytes: int = 8 << 30
    use_deltas: bool = True
    progress: Callable[[int], None] | None = None
    on_retry: Callable[[int, BaseException, float], None] | None = None


@dataclass(frozen=True)
class FetchResult:
    """What fetching a commit cost and how it was done."""

    bytes_downloaded: int
    objects_fetched: int
    used_delta: bool
    delta_error: str | None = None


def fetch_commit(
    repo: Repo,
    base_url: str,
    release: ReleaseTarget,
    *,
    have: Sequence[str],
    downloads: Path,
    options: FetchOptions | None = None,
) -> FetchResult:
    """Bring ``release``'s commit into ``repo`` from the afield repository at ``base_url``.

    Args:
        repo: the device's repository.
        base_url: the afield repository's base URL (serving ``ostree/``).
        release: the TUF-verified release to fetch.
        have: commits the device has (booted first): a delta from one of them is used.
        downloads: where delta files are kept until applied (resumable across runs).
        options: bandwidth, retries, progress.

    Raises:
        RepositoryError: the object pull failed for good (a corrupt object on the server, or
            the server unreachable after every retry); nothing was deployed.
        TransportError: the relay could not start.
    """
    if isinstance(have, str):
        raise TypeError("have must be a sequence of commit checksums, not one string")
    options = options or FetchOptions()
    base = base_url.rstrip("/") + "/"
    meter = Meter(options.max_rate, progress=options.progress)
    policy = options.policy
    if options.max_rate is not None and policy.min_rate > options.max_rate // 2:
        # A capped download must not look like a slow retrieval.
        policy = dataclasses.replace(policy, min_rate=max(1, options.max_rate // 2))
    if repo.has_complete_commit(release.commit):
        return FetchResult(bytes_downloaded=0, objects_fetched=0, used_delta=False)
    delta_error: str | None = None
    if options.use_deltas:
        try:
            delta = _choose(parse_deltas(release), have, options.max_delta_bytes)
            if delta is not None:
                _apply_delta(repo, base, delta, downloads, meter, policy)
                return FetchResult(meter.total, 0, used_delta=True)
        except AfieldError as e:
            delta_error = e.message
    objects = _pull_objects(repo, base, release, meter, policy, options)
    return FetchResult(meter.total, objects, used_delta=False, delta_error=delta_error)


def _choose(deltas: list[DeltaRef], have: Sequence[str], limit: int) -> DeltaRef | None:
    for commit in have:
        usable = [d for d in deltas if d.from_commit == commit and d.length <= limit]
        if usable:
            return min(usable, key=lambda d: d.length)
    return None


def _apply_delta(
    repo: Repo, base: str, delta: DeltaRef, downloads: Path, meter: Meter, policy: RetryPolicy
) -> None:
    directory = downloads / delta.path.rsplit("/", 1)[-1]
    directory.mkdir(parents=True, exist_ok=True)
    try:
        with urllib3.PoolManager(num_pools=2, maxsize=1) as pool:
            for name, length, digest in delta.files:
                download(
                    pool,
                    f"{base}{delta.path}/{name}",
                    directory / name,
                    length=length,
                    sha256=digest,
                    meter=meter,
                    policy=policy,
                )
        repo.apply_delta(directory)
    except TransportError:
        raise  # keep what was fetched: the next attempt resumes it
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    # Applied: these bytes are not needed again.
    shutil.rmtree(directory, ignore_errors=True)
    if not repo.has_commit(delta.to_commit):
        raise RepositoryError(f"the static delta {delta.path} did not produce its commit")


def _pull_objects(
    repo: Repo,
    base: str,
    release: ReleaseTarget,
    meter: Meter,
    policy: RetryPolicy,
    options: FetchOptions,
) -> int:
    origin = f"{base}ostree"
    with Relay(
        base,
        meter,
        timeout=policy.timeout,
        min_rate=policy.min_rate,
        min_rate_window=policy.min_rate_window,
    ) as relay:

        def attempt() -> int:
            try:
                stats = repo.pull_url(origin, release.commit, proxy=relay.url)
            except RepositoryError as e:
                detail = f" (upstream: {relay.errors[-1]})" if relay.errors else ""
                if _CORRUPT.search(e.message):
                    raise RepositoryError(f"{e.message}{detail}") from e
                raise TransportError(f"{e.message}{detail}") from e
            return stats.objects_fetched

        try:
            return retrying(
                policy, attempt, what=f"pull {release.commit[:12]}", on_retry=options.on_retry
            )
        except TransportError as e:
            raise RepositoryError(e.message) from e
