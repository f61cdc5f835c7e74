"""A device's status as one JSON-ready dict: deployments, boot counter, last boot, onboarding,
events."""

from __future__ import annotations

from typing import Any

from afield.device.lifecycle import Device
from afield.device.onboard import onboarding_status
from afield.errors import DeviceError
from afield.ostree import Deployment

__all__ = ["device_status"]


def _summary(device: Device, deployment: Deployment | None) -> dict[str, Any] | None:
    if deployment is None:
        return None
    return {
        "checksum": deployment.checksum,
        "version": device.version_of(deployment),
        "deployment": deployment.name,
    }


def device_status(device: Device, *, events: int = 50) -> dict[str, Any]:
    """What `afield device status --json` prints.

    ``booted`` is the deployment that booted last; ``pending`` the default when it is not the
    booted one (an update waiting for its first boot, or on trial); ``rollback`` the other
    deployment the device can fall back to.
    """
    deployments = device.deployments()
    booted = device.booted()
    default = deployments[0] if deployments else None
    pending = None
    if default is not None and booted is not None and default.name != booted.name:
        pending = default
    taken = {d.name for d in (booted, pending, default if booted is None else None) if d}
    rollback = next((d for d in deployments if d.name not in taken), None)
    try:
        env: dict[str, str] | None = device.read_env()
        env_error = None
    except DeviceError as e:
        env, env_error = None, e.message
    state = device.state.load()
    return {
        "os": device.osname,
        "sysroot": str(device.sysroot_path),
        "booted": _summary(device, booted),
        "pending": _summary(device, pending),
        "rollback": _summary(device, rollback),
        "default": _summary(device, default),
        "known_good": state.get("known_good"),
        "boot_counter": None if env is None else env.get("boot_counter"),
        "boot_success": None if env is None else env.get("boot_success"),
        "grubenv_error": env_error,
        "last_boot": state.get("last_boot"),
        "onboarding": onboarding_status(device),
        "events": device.state.events()[-events:],
    }
