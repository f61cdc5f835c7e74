"""The firmware simulator: power on a sysroot directory the way GRUB with afield's grub.cfg would.

It reads what GRUB reads (the grubenv block, the generated ``grub.cfg`` for the fallback entry,
and the Boot Loader Specification entries that ``grub.cfg`` was rendered from), makes the counter
decision with :func:`afield.device.boot.counter.firmware_choose` (the Python twin of the GRUB
script in ``grub.cfg``), saves the variables as GRUB's ``save_env`` would, and says which entry
and which deployment directory boot. Running the booted system is the caller's
(:mod:`afield.device.bootseq`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from afield.device import fault
from afield.device.boot import counter, grubenv
from afield.device.boot.bls import BootEntry, load_entries
from afield.device.boot.grubcfg import COUNTER_BEGIN, COUNTER_END
from afield.errors import DeviceError

__all__ = ["PowerOn", "fallback_index", "power_on", "save_env_in_place"]

_DEFAULT = re.compile(r"^\s*set default=(\d+)\s*$", re.M)


def fallback_index(grub_cfg: str) -> int:
    """The entry the counter block of a generated ``grub.cfg`` falls back to.

    A missing or foreign ``grub.cfg`` gives greenboot's 1 (the previous deployment).
    """
    start, end = grub_cfg.find(COUNTER_BEGIN), grub_cfg.find(COUNTER_END)
    if start < 0 or end < start:
        return 1
    match = _DEFAULT.search(grub_cfg, start, end)
    return int(match.group(1)) if match else 1


def save_env_in_place(path: Path, env: dict[str, str]) -> None:
    """Save variables the way GRUB's ``save_env`` does: overwrite the block in place.

    GRUB cannot create or rename files; it rewrites the existing 1024 bytes. A power cut in the
    middle leaves a torn block, which the next reader detects (a fault point sits halfway).
    """
    data = grubenv.format_grubenv(env)
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError:
        return  # no block to write into: GRUB's save_env fails and the boot goes on
    try:
        if os.fstat(fd).st_size != len(data):
            return
        os.write(fd, data[: len(data) // 2])
        os.fsync(fd)
        fault.point("firmware:save_env:half-written")
        os.write(fd, data[len(data) // 2 :])
        os.fsync(fd)
    finally:
        os.close(fd)
    fault.point("firmware:save_env:done")


@dataclass(frozen=True)
class PowerOn:
    """What the firmware did: the entry and deployment it booted, and why.

    Attributes:
        entry: The booted boot entry.
        index: Its menu index (0 is the default).
        deployment_dir: The deployment's root directory, from the entry's ``ostree=`` argument.
        fallback: Whether the counter sent this boot to the fallback entry.
        env_error: Why the grubenv could not be read, when it could not.
        reason: The counter's one-line explanation.
    """

    entry: BootEntry
    index: int
    deployment_dir: Path
    fallback: bool
    env_error: str | None
    reason: str


def _deployment_dir(sysroot: Path, entry: BootEntry) -> Path:
    """Follow the entry's ``ostree=`` path (a symlink chain in the sysroot) to a deployment."""
    target = entry.ostree_path
    if target is None:
        raise DeviceError(f"{entry.path}: no ostree= kernel argument; not an OSTree entry")
    link = sysroot / target.lstrip("/")
    resolved = Path(os.path.realpath(link))
    if not resolved.is_dir() or sysroot.resolve() not in resolved.parents:
        raise DeviceError(f"{entry.path}: ostree={target} does not lead to a deployment")
    return resolved


def power_on(sysroot: Path) -> PowerOn:
    """Boot the sysroot once, up to handing over to the booted deployment."""
    env_path = sysroot / "boot" / "grub2" / "grubenv"
    cfg_path = sysroot / "boot" / "grub2" / "grub.cfg"
    env: dict[str, str] | None
    env_error: str | None = None
    try:
        env = grubenv.read_grubenv(env_path)
    except DeviceError as e:
        env, env_error = None, e.message
    try:
        fallback = fallback_index(cfg_path.read_text())
    except (OSError, UnicodeDecodeError):
        fallback = 1
    entries = load_entries(sysroot / "boot" / "loader" / "entries")
    choice = counter.firmware_choose(env, len(entries), fallback_index=fallback)
    if choice.entry_index is None:
        raise DeviceError(f"{sysroot}: no boot entries; the device has nothing to boot")
    if choice.env is not None:
        save_env_in_place(env_path, choice.env)
    entry = entries[choice.entry_index]
    return PowerOn(
        entry=entry,
        index=choice.entry_index,
        deployment_dir=_deployment_dir(sysroot, entry),
        fallback=choice.fallback,
        env_error=env_error,
        reason=choice.reason,
    )
