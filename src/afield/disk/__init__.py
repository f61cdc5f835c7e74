"""Bootable disk images: a composed commit installed on a GPT disk with GRUB, ready to boot.

``build_disk`` does what a factory does to a device's disk, into a file:

1. lay out an OSTree sysroot in a work directory and install the commit as its only deployment
   (:class:`afield.device.lifecycle.Device`, the same code a device runs), with the disk's root
   filesystem on the kernel command line and its ``/etc/fstab`` mounting ``/boot``;
2. build the ``/boot`` and root filesystems from that directory, each in its own sparse file;
3. write a GPT and copy the filesystems into their partitions;
4. install GRUB for the firmware: BIOS (``boot.img`` + core image) or UEFI (a removable-media
   EFI binary on a FAT system partition).

Between 1 and 2 a caller may change the sysroot as a device would, e.g. stage an update, which
is how the tests make a disk whose next boot tries a new release under the boot counter.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from afield.device.lifecycle import Device
from afield.disk._grub import EFI_NAMES, PLATFORMS, copy_modules, core_image, install_bios
from afield.disk._grub import modules_dir as grub_modules_dir
from afield.disk._layout import MIB, Layout, copy_into, make_ext4, make_vfat, write_partition_table
from afield.errors import DiskError
from afield.image import image_info, open_repository

__all__ = ["MIB", "DiskImage", "Layout", "assemble", "build_disk", "parse_size", "prepare"]

Progress = Callable[[str], None]

_UNITS = {"": 1, "K": 1024, "M": MIB, "G": 1024 * MIB, "T": 1024 * 1024 * MIB}
MAX_SIZE = 2 * 1024 * 1024 * MIB  # 2 TiB


def parse_size(text: str) -> int:
    """``4G``, ``512M``, ``3500M``... as bytes (powers of 1024); a whole number of MiB."""
    raw = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = raw[-1:] if raw[-1:] in _UNITS else ""
    number = raw[: len(raw) - len(unit)]
    if not number.isdigit() or len(number) > 12:
        raise DiskError(
            f"size {text!r}: expected a number with K, M, G or T, e.g. 4G", user_error=True
        )
    size = int(number) * _UNITS[unit]
    if size % MIB or not 0 < size <= MAX_SIZE:
        raise DiskError(f"size {text!r}: must be a whole number of MiB up to 2T", user_error=True)
    return size


@dataclass(frozen=True)
class DiskImage:
    """A built disk: where it is, its layout, what it boots, and its size on the host."""

    path: Path
    layout: Layout
    commit: str
    version: str | None
    allocated: int

    def to_dict(self) -> dict[str, object]:
        """JSON-ready."""
        return {
            "path": str(self.path),
            "commit": self.commit,
            "version": self.version,
            "arch": self.layout.arch,
            "firmware": self.layout.firmware,
            "size": self.layout.size,
            "allocated": self.allocated,
            "boot_uuid": self.layout.boot_uuid,
            "root_uuid": self.layout.root_uuid,
            "partitions": [
                {"name": p.name, "type": p.type_guid, "start": p.start, "size": p.size}
                for p in self.layout.partitions()
            ],
        }


def prepare(
    repo_dir: Path,
    commit: str,
    sysroot: Path,
    layout: Layout,
    *,
    server: str | None = None,
    trust_root: Path | None = None,
) -> Device:
    """Lay out the sysroot at ``sysroot`` with ``commit`` installed for ``layout``'s disk."""
    info = image_info(open_repository(repo_dir), commit)
    if not info.image:
        raise DiskError(
            f"{commit}: not an afield image (no afield.image metadata)", user_error=True
        )
    if info.arch and info.arch != layout.arch:
        raise DiskError(
            f"{info.checksum[:12]} is a {info.arch} image; it cannot boot on a {layout.arch} disk",
            user_error=True,
        )
    device = Device.init(sysroot, info.image, server=server, trust_root=trust_root)
    deployment = device.install(
        repo_dir, info.checksum, arch=layout.arch, local_kargs=layout.kernel_args()
    )
    (deployment.path / "etc" / "fstab").write_text(layout.fstab())
    return device


def _allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def assemble(
    device: Device,
    layout: Layout,
    output: Path,
    *,
    grub_lib: Path = Path("/usr/lib/grub"),
    progress: Progress | None = None,
) -> int:
    """Write the disk file ``output`` from the prepared ``device``; its allocated bytes."""
    say = progress or (lambda _: None)
    platform = PLATFORMS[(layout.arch, layout.firmware)]
    # The image's own GRUB when it carries one (arm64 images do), else the builder's.
    image_grub = device.deployments()[0].path / "usr" / "lib" / "grub"
    modules = grub_modules_dir(platform, image_grub, grub_lib)
    firmware_part, boot_part, root_part = layout.partitions()
    sysroot = device.sysroot_path
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.") as tmp:
        work = Path(tmp)
        boot_tree = work / "boot"
        # /boot is its own filesystem: move its content aside so the root gets an empty mountpoint.
        os.rename(sysroot / "boot", boot_tree)
        (sysroot / "boot").mkdir()
        try:
            copy_modules(platform, modules, boot_tree)
            say(f"GRUB {platform} core image")
            core_image(platform, modules, layout.boot_uuid, work / "core.img")
            say("/boot filesystem (ext4)")
            make_ext4(
                work / "boot.ext4",
                boot_part.size,
                boot_tree,
                label="boot",
                fs_uuid=layout.boot_uuid,
            )
            say("root filesystem (ext4)")
            make_ext4(
                work / "root.ext4", root_part.size, sysroot, label="root", fs_uuid=layout.root_uuid
            )
        finally:
            (sysroot / "boot").rmdir()
            os.rename(boot_tree, sysroot / "boot")
        say("partition table and partitions")
        write_partition_table(output, layout)
        copy_into(output, work / "boot.ext4", boot_part.start, boot_part.size)
        copy_into(output, work / "root.ext4", root_part.start, root_part.size)
        if layout.firmware == "bios":
            install_bios(
                output, work / "core.img", modules, firmware_part.start, firmware_part.size
            )
        else:
            esp = work / "esp.vfat"
            make_vfat(
                esp,
                firmware_part.size,
                {f"EFI/BOOT/{EFI_NAMES[layout.arch]}": work / "core.img"},
                label="ESP",
                serial=layout.esp_serial,
            )
            copy_into(output, esp, firmware_part.start, firmware_part.size)
    return _allocated(output)


def build_disk(
    repo_dir: Path,
    commit: str,
    output: Path,
    layout: Layout,
    *,
    server: str | None = None,
    trust_root: Path | None = None,
    grub_lib: Path = Path("/usr/lib/grub"),
    progress: Progress | None = None,
) -> DiskImage:
    """Build a bootable disk image of ``commit`` at ``output`` (replaced only when complete)."""
    say = progress or (lambda _: None)
    output = output.absolute()
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.") as tmp:
        say("install the commit into a sysroot")
        device = prepare(
            repo_dir, commit, Path(tmp) / "sysroot", layout, server=server, trust_root=trust_root
        )
        partial = Path(tmp) / "disk.img"
        allocated = assemble(device, layout, partial, grub_lib=grub_lib, progress=progress)
        deployed = device.deployments()[0]
        version = device.version_of(deployed)
        shutil.move(partial, output)
    return DiskImage(
        path=output, layout=layout, commit=deployed.checksum, version=version, allocated=allocated
    )
