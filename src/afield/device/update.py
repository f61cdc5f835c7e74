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
   commit checksum), then bring that exact commit into the sysroot's repository
   (:func:`afield.device.fetch.fetch_commit`): a signed static delta from the booted commit
   when the release lists one, else an object pull; both are checked against the checksums the
   commit pins, metered (``max_rate``, progress) and resumable;
4. stage it with :meth:`~afield.device.lifecycle.Device.stage_pulled` (boot counter armed
   before the new default is written) and record an ``update staged`` event with the bytes
   downloaded.

Transfers that fail (server down, 5xx, a cut connection, a stall) are retried with exponential
backoff and full jitter (:class:`~afield.device.transport.RetryPolicy`); failed checks never
are. Any failure leaves the deployments as they were; it is recorded as ``update failed`` with
the bytes it cost and re-raised (:class:`~afield.errors.TrustError` /
:class:`~afield.errors.TransportError` name the failed check). Objects and delta files of an
interrupted update stay on the device and the next attempt fetches only what is missing.

What it leaves to others: booting and health checks (:mod:`afield.device.bootseq`).
"""

from __future__ import annotations

import platform
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from afield.device.fetch import FetchOptions, fetch_commit
from afield.device.lifecycle import Device
from afield.device.transport import RetryPolicy, retrying
from afield.errors import AfieldError, DeviceError, RepositoryError
from afield.ostree import Deployment
from afield.trust import ReleaseTarget, TrustedUpdater, UpdaterLimits, version_key

__all__ = ["UpdateResult", "choose_release", "downloads_dir", "trust_dir", "update"]

_ARCH = {"x86_64": "x86_64", "aarch64": "aarch64", "amd64": "x86_64", "arm64": "aarch64"}

Progress = Callable[[int], None]
OnRetry = Callable[[int, BaseException, float], None]


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
        bytes_downloaded: bytes received: TUF metadata, the commit object, and the delta
            files or OSTree objects.
        objects_fetched: OSTree objects fetched by an object pull (those already on the device
            are skipped; 0 when a delta was used).
        used_delta: whether a static delta was used.
        delta_error: why a listed delta could not be used (the object pull took over).
        max_rate: the bandwidth cap in bytes/s, if any.
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
    delta_error: str | None = None
    max_rate: int | None = None

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
            "delta_error": self.delta_error,
            "max_rate": self.max_rate,
        }


def trust_dir(device: Device) -> Path:
    """Where the device keeps its trusted TUF metadata (``/var/lib/afield/trust``)."""
    return device.state.directory / "trust"


def downloads_dir(device: Device) -> Path:
    """Where delta files wait to be applied (``/var/lib/afield/downloads``); kept across runs."""
    return device.state.directory / "downloads"


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
    max_rate: int | None = None,
    policy: RetryPolicy | None = None,
    use_deltas: bool = True,
    progress: Progress | None = None,
    on_retry: OnRetry | None = None,
) -> UpdateResult:
    """Update ``device`` from the afield repository at ``server_url`` (see the module docs).

    Args:
        device: the device.
        server_url: the afield repository's base URL (serving ``tuf/`` and ``ostree/``).
        version: the version to install; default the newest on ``channel``.
        channel: the channel to follow.
        limits: TUF download limits and network timeout.
        max_rate: cap on the delta and object download rate, bytes/s (metered links).
        policy: retries, backoff and timeouts of every transfer.
        use_deltas: use a static delta when one matches (False: always pull objects).
        progress: called with the bytes of the release received so far, as they arrive.
        on_retry: told about each retry (attempt, error, seconds until the next).

    Returns:
        What was done; ``updated`` is False when the device is already up to date.

    Raises:
        DeviceError: no trusted root, nothing installed, the version is refused
            (anti-rollback) or the pull failed (a corrupt or missing object on the server).
        TrustError: a TUF check failed; the message names it.
        TransportError: the repository could not be reached.
    """
    base = server_url.rstrip("/") + "/"
    spent = _Spent(progress)
    options = FetchOptions(
        max_rate=max_rate,
        policy=policy or RetryPolicy(),
        use_deltas=use_deltas,
        progress=spent.fetched,
        on_retry=on_retry,
    )
    try:
        return _update(device, base, version, channel, limits, options, spent)
    except AfieldError as e:
        device.state.record(
            "update failed",
            server=base,
            channel=channel,
            error=str(e),
            bytes_downloaded=spent.total,
            max_rate=max_rate,
        )
        raise


class _Spent:
    """The bytes an update has cost so far: TUF downloads plus the release's bytes."""

    def __init__(self, progress: Progress | None) -> None:
        self.metadata = 0
        self.release = 0
        self._progress = progress

    @property
    def total(self) -> int:
        return self.metadata + self.release

    def fetched(self, count: int) -> None:
        self.release = count
        if self._progress is not None:
            self._progress(count)


def _update(
    device: Device,
    base: str,
    version: str | None,
    channel: str,
    limits: UpdaterLimits | None,
    options: FetchOptions,
    spent: _Spent,
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
    policy = options.policy
    with TrustedUpdater(trusted, base, limits=limits) as updater:
        try:
            retrying(
                policy,
                updater.refresh,
                what="refresh the TUF metadata",
                on_retry=options.on_retry,
            )
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
                retrying(
                    policy,
                    lambda: updater.download(release, Path(tmp)),
                    what=f"download {release.path}",
                    on_retry=options.on_retry,
                )
        finally:
            spent.metadata = updater.bytes_fetched
    have = [current.checksum, *(d.checksum for d in device.deployments())]
    try:
        fetched = fetch_commit(
            device.sysroot.repo(),
            base,
            release,
            have=list(dict.fromkeys(have)),
            downloads=downloads_dir(device),
            options=options,
        )
    except RepositoryError as e:
        raise DeviceError(
            f"cannot fetch release {release.version} ({release.commit}) from {base}: "
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
        bytes_downloaded=spent.metadata + fetched.bytes_downloaded,
        objects_fetched=fetched.objects_fetched,
        used_delta=fetched.used_delta,
        delta_error=fetched.delta_error,
        max_rate=options.max_rate,
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
        delta_error=result.delta_error,
        max_rate=result.max_rate,
    )
    return result
