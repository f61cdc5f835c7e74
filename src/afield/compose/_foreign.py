"""Composing for another architecture: package scripts run through qemu-user-static.

mmdebstrap runs each package's maintainer scripts inside the tree; for a foreign architecture
the kernel hands those binaries to QEMU's user-mode emulator through ``binfmt_misc``. Debian's
``qemu-user-static`` ships the registrations in ``/usr/lib/binfmt.d`` with the ``F`` flag (the
interpreter is opened at registration, so it works inside the chroot), but a machine without
systemd-binfmt, such as a container, has ``binfmt_misc`` neither mounted nor filled. This module
does both, once, as ``systemd-binfmt`` would.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

from afield.errors import ComposeError

__all__ = ["ensure_emulation"]

_QEMU_NAMES = {"amd64": "x86_64", "arm64": "aarch64"}
_MISC = Path("/proc/sys/fs/binfmt_misc")
_CONFIGS = Path("/usr/lib/binfmt.d")


def ensure_emulation(debian_arch: str, *, misc: Path = _MISC, configs: Path = _CONFIGS) -> bool:
    """Make sure binaries of ``debian_arch`` run on this machine; whether emulation is used."""
    qemu = _QEMU_NAMES[debian_arch]
    if qemu == platform.machine():
        return False
    entry = misc / f"qemu-{qemu}"
    if entry.is_file() and entry.read_text().startswith("enabled"):
        return True
    config = configs / f"qemu-{qemu}.conf"
    if not config.is_file():
        raise ComposeError(
            f"composing for {debian_arch} needs qemu-user-static ({config} is missing); "
            "install it with apt",
            user_error=True,
        )
    try:
        if not (misc / "register").exists():
            subprocess.run(
                ["mount", "-t", "binfmt_misc", "binfmt_misc", str(misc)],
                check=True,
                capture_output=True,
            )
        if entry.is_file():
            entry.write_text("1")
        else:
            line = next(raw for raw in config.read_text().splitlines() if raw.startswith(":"))
            (misc / "register").write_text(line)
    except (OSError, subprocess.CalledProcessError, StopIteration) as e:
        raise ComposeError(f"cannot register {config} with binfmt_misc: {e}") from e
    return True
