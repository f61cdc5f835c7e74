"""Running the host tools a disk image is built with, with errors that name the tool."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from afield.errors import DiskError

# Tool -> the Debian package that provides it, for the error a missing tool gives.
PACKAGES = {
    "sfdisk": "fdisk",
    "mkfs.ext4": "e2fsprogs",
    "mkfs.vfat": "dosfstools",
    "mmd": "mtools",
    "mcopy": "mtools",
    "grub-mkimage": "grub-common",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-system-aarch64": "qemu-system-arm",
}


def require(tool: str) -> str:
    """The path of ``tool``; DiskError naming its Debian package when it is missing."""
    found = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if found is None:
        package = PACKAGES.get(tool, tool)
        raise DiskError(
            f"{tool} is not installed (Debian package {package}; `make demo` installs it)"
        )
    return found


def run(
    argv: Sequence[str | Path],
    *,
    input_text: str | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run a tool to completion; its stdout, or DiskError with the tail of its output."""
    args = [str(a) for a in argv]
    args[0] = require(args[0])
    result = subprocess.run(
        args,
        input=input_text,
        capture_output=True,
        text=True,
        check=False,
        env=None if env is None else dict(env),
    )
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip()[-2000:]
        raise DiskError(f"{Path(args[0]).name} failed (exit {result.returncode}): {tail}")
    return result.stdout
