"""Zero-touch onboarding on the device: find the owner (TO1), prove both sides and take what the
owner gives (TO2), then keep it, all from the credential DI left in ``/var/lib/afield/fdo``.

The device walks its RendezvousInfo as the specification asks: each directive meant for devices
in order; a rendezvous server tells it (TO1) where its owner waits, or a bypass directive names
the owner directly; it tries each owner address in turn (TO2). A directive that fails is
followed by its ``RVDelaysec`` delay (with up to 25 % random jitter); a pass over the whole list
that fails everywhere is followed by the specification's pause of 120 s ± 30 s (``retry_wait``
changes it), for ``rounds`` passes. Every failure (server unreachable, an Error message, a check
the owner fails, service info the device refuses) moves on to the next address or directive:
a rendezvous server could point anywhere, so no single answer is trusted to end the search.

What the owner gave (:class:`afield.fdo.modules.Handoff`) is kept only once TO2 has finished,
in this order, each file replaced atomically:

1. downloads under the stateroot's ``/var``, SSH keys in ``/var/roothome/.ssh/authorized_keys``
   (root's home on an OSTree system), the TUF root in ``/var/lib/afield/trust/root.json``, the
   enrollment token in ``/var/lib/afield/fdo/enroll-token`` (mode 0600);
2. the replacement credential (the owner's new GUID and RendezvousInfo; the key stays);
3. ``/var/lib/afield/onboarding.json``: the record ``afield device status`` shows.

A power cut between 2 and 3 leaves a device with its new credential and no record: onboarding
again with it works, because the owner keeps the replacement voucher.

What it leaves to others: enrolling with the fleet manager using the token (the agent), the
protocols themselves (:mod:`afield.fdo.to1`, :mod:`afield.fdo.to2`).
"""

from __future__ import annotations

import json
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from afield.device.lifecycle import Device
from afield.device.state import atomic_write
from afield.errors import DeviceError, FdoError, TransportError
from afield.fdo.cbor import decode, encode
from afield.fdo.client import manufacture as fdo_manufacture
from afield.fdo.credential import DeviceCredential
from afield.fdo.modules import AFIELD, DOWNLOAD, DeviceModules, Handoff
from afield.fdo.pki import load_private_key
from afield.fdo.rendezvous import RendezvousInfo
from afield.fdo.serviceinfo import Devmod
from afield.fdo.to1 import device_rv_targets, find_owner
from afield.fdo.to2 import owner_urls, run_to2

__all__ = [
    "CREDENTIAL",
    "OnboardOptions",
    "OnboardResult",
    "manufacture",
    "onboard",
    "onboarding_status",
]

CREDENTIAL = "credential.cbor"
RECORD = "onboarding.json"
ALL_FAILED_WAIT = 120.0
"""Seconds the specification has a device wait after every directive failed (± 25 %)."""


@dataclass(frozen=True)
class OnboardOptions:
    """How hard the device tries.

    Args:
        rounds: passes over the RendezvousInfo before giving up.
        retry_wait: seconds between passes (± 25 % jitter); the specification's 120 by default.
        timeout: seconds for connecting and for each answer.
        sleep: how to wait (tests pass a recorder).
    """

    rounds: int = 3
    retry_wait: float = ALL_FAILED_WAIT
    timeout: float = 30.0
    sleep: Callable[[float], None] = time.sleep


@dataclass
class OnboardResult:
    """What an onboarding did, for ``--json`` and the journal."""

    guid: str
    new_guid: str
    owner_url: str
    rendezvous_url: str | None
    handoff: dict[str, Any]
    attempts: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "guid": self.guid,
            "new_guid": self.new_guid,
            "owner_url": self.owner_url,
            "rendezvous_url": self.rendezvous_url,
            "handoff": self.handoff,
            "failed_attempts": self.attempts,
            "seconds": round(self.seconds, 3),
        }


def _fdo_dir(device: Device) -> Path:
    return device.state.directory / "fdo"


def manufacture(
    device: Device,
    url: str,
    *,
    device_info: str,
    key_curve: str = "P-384",
    serial_number: str | None = None,
) -> tuple[DeviceCredential, Path]:
    """DI at the factory: the credential and key go to ``/var/lib/afield/fdo`` (mode 0700) and
    the journal records it; returns the credential and its path."""
    directory = _fdo_dir(device)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / CREDENTIAL
    credential = fdo_manufacture(
        url, path, device_info=device_info, key_curve=key_curve, serial_number=serial_number
    )
    device.state.record(
        "manufactured", guid=str(credential.guid), device_info=credential.device_info
    )
    return credential, path


def _read_credential(path: Path) -> DeviceCredential:
    try:
        return DeviceCredential.from_cbor(decode(path.read_bytes()))
    except FileNotFoundError:
        raise DeviceError(
            f"{path}: no FDO credential; run `afield device manufacture` first"
        ) from None
    except FdoError as e:
        raise DeviceError(f"{path}: not an FDO device credential: {e}") from None


def load_credential(device: Device) -> tuple[DeviceCredential, Any]:
    """The device's credential and private key, as DI left them."""
    path = _fdo_dir(device) / CREDENTIAL
    return _read_credential(path), load_private_key(Path(f"{path}.key.pem"))


def _devmod(device: Device, credential: DeviceCredential) -> Devmod:
    machine = platform.machine() or "unknown"
    return Devmod(
        os="Linux",
        arch=machine,
        version=platform.release() or "unknown",
        device=credential.device_info,
        sep=":",
        bin=machine,
        modules=("devmod", AFIELD, DOWNLOAD),
    )


_RNG = random.Random()  # noqa: S311 (jitter spreads retries out; it protects no secret)


def _jitter(seconds: float) -> float:
    return seconds * _RNG.uniform(0.75, 1.25) if seconds > 0 else 0.0


class _Attempt:
    """One onboarding: the credential, the key and the failures seen so far."""

    def __init__(self, device: Device, options: OnboardOptions) -> None:
        self.device = device
        self.options = options
        self.credential, self.key = load_credential(device)
        self.failures: list[str] = []

    def owner(self, url: str, rendezvous: str | None, to1d: Any) -> OnboardResult | None:
        modules = DeviceModules()
        try:
            result = run_to2(
                url,
                self.credential,
                self.key,
                to1d=to1d,
                devmod=_devmod(self.device, self.credential),
                handler=modules,
                timeout=self.options.timeout,
            )
            handoff = modules.handoff()
        except (FdoError, TransportError) as e:
            self.failures.append(f"TO2 {url}: {e}")
            return None
        _keep(self.device, handoff, result.credential)
        return OnboardResult(
            guid=str(self.credential.guid),
            new_guid=str(result.credential.guid),
            owner_url=url,
            rendezvous_url=rendezvous,
            handoff=handoff.to_dict(),
        )

    def directive(self, url: str, bypass: bool) -> OnboardResult | None:
        if bypass:
            return self.owner(url, None, None)
        try:
            found = find_owner(url, self.credential, self.key, timeout=self.options.timeout)
        except (FdoError, TransportError) as e:
            self.failures.append(f"TO1 {url}: {e}")
            return None
        for owner in owner_urls(found.addrs):
            result = self.owner(owner, url, found.to1d)
            if result is not None:
                return result
        return None

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self.options.sleep(_jitter(seconds))

    def rounds(self, rv_info: RendezvousInfo) -> OnboardResult:
        targets = device_rv_targets(rv_info)
        if not targets:
            raise DeviceError("the credential's RendezvousInfo has no directive for devices")
        for round_ in range(self.options.rounds):
            if round_:
                self._wait(self.options.retry_wait)
            for index, target in enumerate(targets):
                result = self.directive(target.url, target.bypass)
                if result is not None:
                    return result
                if index < len(targets) - 1:
                    self._wait(target.delay)
        shown = "; ".join(self.failures[-4:])
        raise DeviceError(
            f"onboarding failed after {self.options.rounds} passes over "
            f"{len(targets)} rendezvous directives ({len(self.failures)} failures); last: {shown}"
        )


def onboard(device: Device, options: OnboardOptions | None = None) -> OnboardResult:
    """Run TO1 and TO2 with the device's credential and keep what the owner gives.

    Raises:
        DeviceError: no credential, the device is already onboarded, or every attempt failed
            (the message lists the last failures).
    """
    options = options or OnboardOptions()
    started = time.monotonic()
    attempt = _Attempt(device, options)
    record = _record(device)
    if record.get("completed"):
        raise DeviceError(
            f"device {record['guid']} is already onboarded (owner {record.get('owner_url')})"
        )
    result = attempt.rounds(attempt.credential.rv_info)
    result.attempts = attempt.failures
    result.seconds = time.monotonic() - started
    _write_record(device, result)
    device.state.record("onboarded", **result.to_dict())
    return result


def _stateroot_var(device: Device) -> Path:
    return device.state.directory.parent.parent


def _write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data, point=f"onboard:{path.name}", mode=mode)


def _authorized_keys(path: Path, keys: tuple[str, ...]) -> None:
    present = path.read_text().splitlines() if path.exists() else []
    lines = present + [k for k in keys if k not in present]
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write(path, ("\n".join(lines) + "\n").encode(), mode=0o600)


def _keep(device: Device, handoff: Handoff, credential: DeviceCredential) -> None:
    var = _stateroot_var(device)
    for file in handoff.files:
        _write(var / file.path.removeprefix("/var/"), file.data)
    if handoff.ssh_keys:
        _authorized_keys(var / "roothome/.ssh/authorized_keys", handoff.ssh_keys)
    if handoff.tuf_root is not None:
        _write(device.state.directory / "trust/root.json", handoff.tuf_root)
    if handoff.enrollment_token is not None:
        token = handoff.enrollment_token.encode()
        _write(_fdo_dir(device) / "enroll-token", token, mode=0o600)
    _write(_fdo_dir(device) / CREDENTIAL, encode(credential.to_cbor()), mode=0o600)


def _write_record(device: Device, result: OnboardResult) -> None:
    record = {
        "guid": result.new_guid,
        "completed": True,
        "previous_guid": result.guid,
        "owner_url": result.owner_url,
        "fleet_url": result.handoff["fleet_url"],
        "time": round(time.time(), 3),
    }
    _write(device.state.directory / RECORD, json.dumps(record, indent=2).encode())


def _record(device: Device) -> dict[str, Any]:
    """``onboarding.json``, or ``{}`` when the device has not onboarded."""
    record = device.state.directory / RECORD
    if not record.exists():
        return {}
    try:
        data: dict[str, Any] = json.loads(record.read_text())
        return data
    except ValueError as e:
        return {"completed": False, "error": f"{record}: {e}"}


def onboarding_status(device: Device) -> dict[str, Any]:
    """``{guid, completed, fleet_url, owner_url}``; ``{}`` for a device never manufactured."""
    record = _record(device)
    if record:
        return record
    path = _fdo_dir(device) / CREDENTIAL
    if not path.exists():
        return {}
    try:
        credential = _read_credential(path)
    except DeviceError as e:
        return {"completed": False, "error": e.message}
    return {"guid": str(credential.guid), "completed": False, "fleet_url": None}
