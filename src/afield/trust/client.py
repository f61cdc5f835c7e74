"""What a device calls: verify the repository's TUF metadata and pick the release to install.

:class:`TrustedUpdater` wraps python-tuf's ``ngclient.Updater``: from the device's trusted
``root.json`` it walks every root rotation, then timestamp, snapshot and targets, with every TUF
check (signature thresholds, versions against the last trusted ones, expiry, lengths and hashes)
and a byte limit on every download (:class:`UpdaterLimits`). It lists the verified release
targets, chooses the newest one of an image, architecture and channel that is newer than what
the device runs (anti-rollback), and downloads a commit object verified against its target.
Every failure comes out as a :class:`~afield.errors.TrustError` or
:class:`~afield.errors.TransportError` naming the failed check; no tuf exception leaks.

What it leaves to others: pulling the commit's objects or static deltas with libostree and
deploying them (the device agent), retries and bandwidth limits (the agent's transport).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tuf.api.metadata import Metadata, Targets
from tuf.api.serialization import DeserializationError
from tuf.ngclient import Updater, UpdaterConfig, Urllib3Fetcher

from afield.errors import TrustError
from afield.trust._errors import translate
from afield.trust.targets import ReleaseTarget, version_key

__all__ = ["TrustedUpdater", "UpdaterLimits"]

_OBJECTS = "ostree/objects/"


@dataclass(frozen=True)
class UpdaterLimits:
    """Byte limits on every download, like TUF's ``*_max_length``, and the network timeout.

    Snapshot and targets are fetched with the length signed one level up when it is there;
    their limits here apply only when it is not. A commit object is refused before download
    when its signed length exceeds ``commit_max_length``.
    """

    root_max_length: int = 512_000
    timestamp_max_length: int = 16_384
    snapshot_max_length: int = 2_000_000
    targets_max_length: int = 5_000_000
    commit_max_length: int = 4_000_000
    max_root_rotations: int = 32
    timeout: int = 30


class _Fetcher(Urllib3Fetcher):
    """ngclient's urllib3 fetcher that remembers the last URL, so errors can name the file."""

    def __init__(self, timeout: int) -> None:
        super().__init__(socket_timeout=timeout, app_user_agent="afield")
        self.last_url: str | None = None
        self.bytes_fetched = 0

    def _fetch(self, url: str) -> Iterator[bytes]:
        self.last_url = url
        return self._count(super()._fetch(url))

    def _count(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.bytes_fetched += len(chunk)
            yield chunk


class TrustedUpdater:
    """Verified access to one afield repository from one device.

    Args:
        metadata_dir: the device's trusted metadata directory; it must hold the trusted
            ``root.json`` unless ``trusted_root`` is given. Verified metadata is kept there.
        repo_url: the afield repository's base URL (it serves ``tuf/`` and ``ostree/``).
        limits: byte limits and timeout.
        trusted_root: the bytes of a trusted root metadata file to start from instead.

    Raises:
        TrustError: there is no trusted root, or it does not verify.
    """

    def __init__(
        self,
        metadata_dir: Path,
        repo_url: str,
        *,
        limits: UpdaterLimits | None = None,
        trusted_root: bytes | None = None,
    ) -> None:
        self.metadata_dir = metadata_dir
        self.repo_url = repo_url.rstrip("/") + "/"
        self.limits = limits or UpdaterLimits()
        if trusted_root is None:
            try:
                trusted_root = (metadata_dir / "root.json").read_bytes()
            except OSError as e:
                error = TrustError(
                    f"{metadata_dir / 'root.json'}: no trusted root metadata ({e.strerror}); "
                    "give the device one with `afield device init --trust-root`"
                )
                error.user_error = True
                raise error from None
        self._trusted_root = trusted_root
        self._fetcher = _Fetcher(self.limits.timeout)
        self._updater: Updater | None = None

    def __enter__(self) -> TrustedUpdater:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Forget the verified state; a later call refreshes again."""
        self._updater = None

    @property
    def bytes_fetched(self) -> int:
        """Bytes of metadata and target files received so far (for the update's byte count)."""
        return self._fetcher.bytes_fetched

    def _new_updater(self) -> Updater:
        config = UpdaterConfig(
            max_root_rotations=self.limits.max_root_rotations,
            root_max_length=self.limits.root_max_length,
            timestamp_max_length=self.limits.timestamp_max_length,
            snapshot_max_length=self.limits.snapshot_max_length,
            targets_max_length=self.limits.targets_max_length,
            app_user_agent="afield",
        )
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        try:
            return Updater(
                metadata_dir=str(self.metadata_dir),
                metadata_base_url=f"{self.repo_url}tuf/",
                target_base_url=self.repo_url,
                fetcher=self._fetcher,
                config=config,
                bootstrap=self._trusted_root,
            )
        except Exception as e:
            raise translate(e, url=None) from e

    def refresh(self) -> None:
        """Download and verify root (every rotation), timestamp, snapshot and targets.

        Raises:
            TrustError: a check failed; the message names it (signature, version, expiry,
                length/hash, length limit).
            TransportError: the repository could not be reached.
        """
        self._refresh()

    def _refresh(self) -> Updater:
        updater = self._new_updater()
        self._fetcher.last_url = None
        try:
            updater.refresh()
        except Exception as e:
            raise translate(e, url=self._fetcher.last_url) from e
        # Later refreshes start from the root just verified (ngclient links root.json to it).
        self._trusted_root = (self.metadata_dir / "root.json").read_bytes()
        self._updater = updater
        return updater

    def _verified(self) -> Updater:
        return self._updater or self._refresh()

    def releases(self) -> list[ReleaseTarget]:
        """Every release in the verified targets metadata (refreshes first if needed)."""
        updater = self._verified()
        # ngclient keeps the targets.json it just verified in metadata_dir; it only tells us
        # which paths exist: every target returned is looked up in ngclient's trusted set.
        try:
            listed = Metadata[Targets].from_bytes((self.metadata_dir / "targets.json").read_bytes())
        except (OSError, DeserializationError) as e:
            raise TrustError(f"{self.metadata_dir}: cannot read verified targets: {e}") from e
        releases: list[ReleaseTarget] = []
        for path in sorted(listed.signed.targets):
            if not path.startswith(_OBJECTS):
                continue
            try:
                info = updater.get_targetinfo(path)
            except Exception as e:
                raise translate(e, url=self._fetcher.last_url) from e
            if info is not None:
                releases.append(ReleaseTarget.from_target_file(info))
        return releases

    def latest(
        self, image: str, arch: str, channel: str = "stable", *, newer_than: str | None = None
    ) -> ReleaseTarget | None:
        """The newest release of ``image``/``arch`` on ``channel``, if newer than ``newer_than``.

        Returns None when nothing newer is published: a device never moves to an older or equal
        version through this call (anti-rollback).
        """
        floor = version_key(newer_than) if newer_than is not None else None
        candidates = [
            r
            for r in self.releases()
            if r.image == image and r.arch == arch and r.channel == channel
        ]
        if not candidates:
            return None
        best = max(candidates, key=lambda r: r.version_key)
        if floor is not None and best.version_key <= floor:
            return None
        return best

    def download(self, release: ReleaseTarget, directory: Path) -> Path:
        """Download ``release``'s commit object into ``directory``, verified; its path.

        Raises:
            TrustError: the release is not a verified target, its signed length is over the
                limit, or the file does not match its signed length and sha256.
        """
        updater = self._verified()
        if release.length > self.limits.commit_max_length:
            raise TrustError(
                f"length limit check failed: {release.path} is signed as {release.length} "
                f"bytes, over commit_max_length {self.limits.commit_max_length}"
            )
        try:
            info = updater.get_targetinfo(release.path)
            if info is None or ReleaseTarget.from_target_file(info) != release:
                raise TrustError(
                    f"target check failed: {release.path} is not a verified target of the "
                    "repository with these fields"
                )
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / f"{release.commit}.commit"
            updater.download_target(info, filepath=str(path))
        except TrustError:
            raise
        except Exception as e:
            raise translate(e, url=self._fetcher.last_url) from e
        return path
