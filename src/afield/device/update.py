"""Device update: verify the repository with TUF, choose a release, pull it with OSTree, stage it.

One update, in the order that keeps every check before any write to the deployments:

1. refresh the TUF metadata from ``{server}/tuf/`` starting from the device's trusted root
   (``/var/lib/afield/trust/root.json``, written by ``afield device init --trust-root``); the
   verified metadata stays in that directory, so the next refresh is incremental and a server
   cannot roll the metadata back across runs;
2. choose the release (:func:`choose_release`, a pure decision): the requested version, else the
   newest for the device's OS, architecture and channel; a release older than or equal to the
   booted one is refused (anti-rollback), the booted release itself is "up to date";
3. download the release's commit object through TUF (signed length and sha256, which is the
   commit checksum), then pull exactly that checksum with libostree from ``{server}/ostree``
   into the sysroot's repository: libostree verifies every object against the checksums the
   commit pins;
4. stage it with :meth:`~afield.device.lifecycle.Device.stage_pulled` (boot counter armed
   before the new default is written) and record an ``update staged`` event with the bytes
   downloaded.

Any failure leaves the deployments as they were; it is recorded as ``update failed`` and
re-raised (:class:`~afield.errors.TrustError` / :class:`~afield.errors.TransportError` from TUF
name the failed check). Objects of an interrupted pull stay in the repository, marked partial,
and the next attempt fetches only what is missing.

What it leaves to others: static deltas (:func:`delta_for` is the hook, ``used_delta`` is always
False for now), retries with backoff, ``--max-rate`` and a resumable byte-range download (later
steps), booting and health checks (:mod:`afield.device.bootseq`).
"""

from __future__ import annotations

import platform
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from afield.device.lifecycle import Device
from afield.errors import AfieldError, DeviceError, RepositoryError
from afield.ostree import Deployment
from afield.trust import ReleaseTarget, TrustedUpdater, UpdaterLimits, version_key

__all__ = ["UpdateResult", "choose_release", "delta_for", "trust_dir", "update"]

_ARCH = {"x86_64": "x86_64", "aarch64": "aarch64", "amd64": "x86_64", "arm64": "aarch64"}

Progress = Callable[[int], None]


@dataclass(frozen=True)
class UpdateResult:
    """What one ``afield device update`` did.

    Attributes:
        updated: whether a new release was staged (it boots next, under the boot counter).
        reason: one line saying what happened ("staged ...", "already up to date ...").
        channel: the channel followed.
        booted_version: the version running when the update started.
        target: the chosen release's TUF target path, if one was chosen.
        version: the chosen release's version.
        commit: the chosen release's commit checksum.
        bytes_downloaded: bytes of the commit object and the OSTree objects pulled.
        objects_fetched: OSTree objects fetched (those already on the device are skipped).
        used_delta: whether a static delta was used (not yet: always False).
    """

    updated: bool
    reason: str
    channel: str
    booted_version: str | None
    target: str | None = None
    version: str | None = None
    commit: str | None = None
    bytes_downloaded: int = 0
    objects_fetched: int = 0
    used_delta: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``afield device update --json`` prints)."""
        return {
            "updated": self.updated,
            "reason": self.reason,
            "channel": self.channel,
            "booted_version": self.booted_version,
            "target": self.target,
            "version": self.version,
            "commit": self.commit,
            "bytes_downloaded": self.bytes_downloaded,
            "objects_fetched": self.objects_fetched,
            "used_delta": self.used_delta,
        }


def trust_dir(device: Device) -> Path:
    """Where the device keeps its trusted TUF metadata (``/var/lib/afield/trust``)."""
    return device.state.directory / "trust"


def device_arch() -> str:
    """The architecture name afield images use for this machine."""
    machine = platform.machine()
    return _ARCH.get(machine, machine)


def choose_release(
    releases: Iterable[ReleaseTarget],
    *,
    image: str,
    arch: str,
    channel: str,
    booted_version: str | None,
    booted_commit: str,
    staged_commit: str | None = None,
    version: str | None = None,
) -> tuple[ReleaseTarget | None, str]:
    """Decide what to install: the release to stage (or None) and why. No I/O.

    Args:
        releases: the verified releases of the repository.
        image: the device's OS (image name).
        arch: the device's architecture.
        channel: the channel the device follows.
        booted_version: the running release's version (None when its commit has none).
        booted_commit: the running deployment's commit.
        staged_commit: the commit already staged to boot next, if any.
        version: the version asked for; default the newest on the channel.

    Raises:
        DeviceError: the asked-for version is not published (a user error), or the chosen
            release is older than or equal to the booted one but another commit
            (anti-rollback; a user error when the version was asked for).
    """
    where = f"{image}/{arch} on channel {channel}"
    candidates = [r for r in releases if (r.image, r.arch, r.channel) == (image, arch, channel)]
    if version is not None:
        wanted = version_key(version)
        matches = [r for r in candidates if r.version_key == wanted]
        if not matches:
            published = ", ".join(sorted({r.version for r in candidates})) or "none"
            raise DeviceError(
                f"no release {version} of {where}; published: {published}", user_error=True
            )
        chosen = matches[0]
    elif candidates:
        chosen = max(candidates, key=lambda r: r.version_key)
    else:
        return None, f"no release of {where} is published"
    if chosen.commit == booted_commit:
        return None, f"already up to date: {chosen.version} ({chosen.commit[:12]}) is running"
    if booted_version is not None and chosen.version_key <= version_key(booted_version):
        raise DeviceError(
            f"anti-rollback check failed: release {chosen.version} ({chosen.commit[:12]}) of "
            f"{where} is not newer than the running {booted_version}; a device never moves to "
            "an older or equal version",
            user_error=version is not None,
        )
    if chosen.commit == staged_commit:
        return None, f"already staged: {chosen.version} ({chosen.commit[:12]}) boots next"
    return chosen, f"staged {chosen.version} ({chosen.commit[:12]}); it boots next"


def delta_for(release: ReleaseTarget, booted_commit: str) -> Mapping[str, Any] | None:
    """The static delta from ``booted_commit`` to ``release`` to use, if any.

    The hook for static deltas: a later step matches ``release.deltas`` against the booted
    commit and pulls the delta instead of objects. Until then there is none.
    """
    del release, booted_commit
    return None


def _running(device: Device) -> tuple[Deployment, Deployment | None]:
    deployments = device.deployments()
    current = device.booted() or next(iter(deployments), None)
    if current is None:
        raise DeviceError(f"{device.sysroot_path}: nothing installed; use `afield device install`")
    default = deployments[0] if deployments else None
    staged = default if default is not None and default.name != current.name else None
    return current, staged


def update(
    device: Device,
    server_url: str,
    *,
    version: str | None = None,
    channel: str = "stable",
    limits: UpdaterLimits | None = None,
    progress: Progress | None = None,
) -> UpdateResult:
    """Update ``device`` from the afield repository at ``server_url`` (see the module docs).

    Args:
        device: the device.
        server_url: the afield repository's base URL (serving ``tuf/`` and ``ostree/``).
        version: the version to install; default the newest on ``channel``.
        channel: the channel to follow.
        limits: TUF download limits and network timeout.
        progress: called with the bytes pulled so far, while libostree reports them.

    Returns:
        What was done; ``updated`` is False when the device is already up to date.

    Raises:
        DeviceError: no trusted root, nothing installed, the version is refused
            (anti-rollback) or the pull failed (a corrupt or missing object on the server).
        TrustError: a TUF check failed; the message names it.
        TransportError: the repository could not be reached.
    """
    base = server_url.rstrip("/") + "/"
    try:
        return _update(device, base, version, channel, limits, progress)
    except AfieldError as e:
        device.state.record("update failed", server=base, channel=channel, error=str(e))
        raise


def _update(
    device: Device,
    base: str,
    version: str | None,
    channel: str,
    limits: UpdaterLimits | None,
    progress: Progress | None,
) -> UpdateResult:
    trusted = trust_dir(device)
    if not (trusted / "root.json").is_file():
        raise DeviceError(
            f"{trusted / 'root.json'}: the device has no trusted TUF root; give it the "
            "repository's root.json with `afield device init --trust-root`",
            user_error=True,
        )
    current, staged = _running(device)
    booted_version = device.version_of(current)
    with TrustedUpdater(trusted, base, limits=limits) as updater:
        updater.refresh()
        release, reason = choose_release(
            updater.releases(),
            image=device.osname,
            arch=device_arch(),
            channel=channel,
            booted_version=booted_version,
            booted_commit=current.checksum,
            staged_commit=staged.checksum if staged is not None else None,
            version=version,
        )
        if release is None:
            return UpdateResult(
                updated=False, reason=reason, channel=channel, booted_version=booted_version
            )
        with tempfile.TemporaryDirectory(prefix="afield-update-") as tmp:
            commit_bytes = updater.download(release, Path(tmp)).stat().st_size
    delta = delta_for(release, current.checksum)
    repo = device.sysroot.repo()
    origin = f"{base}ostree"
    report = None if progress is None else (lambda s: progress(commit_bytes + s.bytes_transferred))
    try:
        stats = repo.pull_url(origin, release.commit, progress=report)
    except RepositoryError as e:
        raise DeviceError(
            f"cannot pull release {release.version} ({release.commit}) from {origin}: "
            f"{e.message}; nothing was staged"
        ) from e
    device.stage_pulled(release.commit, version=release.version)
    result = UpdateResult(
        updated=True,
        reason=reason,
        channel=channel,
        booted_version=booted_version,
        target=release.path,
        version=release.version,
        commit=release.commit,
        bytes_downloaded=commit_bytes + stats.bytes_transferred,
        objects_fetched=stats.objects_fetched,
        used_delta=delta is not None,
    )
    device.state.record(
        "update staged",
        server=base,
        channel=channel,
        target=result.target,
        version=result.version,
        commit=result.commit,
        bytes_downloaded=result.bytes_downloaded,
        objects_fetched=result.objects_fetched,
        used_delta=result.used_delta,
    )
    return result
