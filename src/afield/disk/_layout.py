"""A disk image file: its GPT partitions, their filesystems, and writing them without loop devices.

The host kernel here makes no partition devices for loop files, and building filesystems in
place would need them. So each filesystem is built in its own sparse file (``mkfs.ext4 -d`` fills
ext4 from a directory, mtools fills FAT), the partition table is written into the disk file by
``sfdisk``, and the filesystem files are copied to their partitions' offsets, data extents only,
so the disk stays sparse.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from afield.disk._tools import run
from afield.errors import DiskError

SECTOR = 512
MIB = 1024 * 1024
# GPT partition type GUIDs (UEFI specification; the root types are the Discoverable Partitions
# Specification's, so tools such as systemd-dissect recognise the root of each architecture).
BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_DATA = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
ROOT_TYPES = {
    "x86_64": "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
    "aarch64": "B921B045-1DF0-41C3-AF44-4C6F280D3FAE",
}
# GRUB 2.06 (Debian 12) cannot read ext4 with these e2fsprogs 1.47 features.
_EXT4_FEATURES = "^orphan_file,^metadata_csum_seed"


@dataclass(frozen=True)
class Partition:
    """One partition: its GPT name and type, where it starts and how long it is (bytes)."""

    name: str
    type_guid: str
    start: int
    size: int


@dataclass(frozen=True)
class Layout:
    """Where everything goes on one disk, and the identifiers that tie boot and fstab to it.

    Partition 1 is the firmware's (``bios``: GRUB's core image; ``uefi``: the EFI system
    partition), 2 is ``/boot`` (GRUB's files, kernels, boot entries, the grubenv), 3 the root.
    """

    arch: str
    firmware: str
    size: int
    boot_size: int
    disk_guid: str
    boot_uuid: str
    root_uuid: str
    esp_serial: str

    @classmethod
    def new(cls, *, arch: str, firmware: str, size: int, boot_size: int = 512 * MIB) -> Layout:
        """A layout with fresh identifiers (every disk built is its own device)."""
        if arch not in ROOT_TYPES:
            raise DiskError(f"arch {arch!r} is not supported; supported: {', '.join(ROOT_TYPES)}")
        if firmware not in ("bios", "uefi"):
            raise DiskError(f"firmware {firmware!r} is not supported; supported: bios, uefi")
        if firmware == "bios" and arch != "x86_64":
            raise DiskError(f"{arch} has no BIOS firmware; use --firmware uefi")
        layout = cls(
            arch=arch,
            firmware=firmware,
            size=size,
            boot_size=boot_size,
            disk_guid=str(uuid.uuid4()).upper(),
            boot_uuid=str(uuid.uuid4()),
            root_uuid=str(uuid.uuid4()),
            esp_serial=os.urandom(4).hex().upper(),
        )
        if layout.partitions()[-1].size < 256 * MIB:
            minimum = (layout.partitions()[-1].start + 256 * MIB + MIB) // MIB
            raise DiskError(f"--size {size // MIB} MiB is too small; at least {minimum} MiB")
        return layout

    @property
    def esp_size(self) -> int:
        """The EFI system partition: room for GRUB's EFI binary, with FAT's overhead."""
        return 64 * MIB

    def partitions(self) -> list[Partition]:
        """The three partitions, MiB-aligned; the last MiB is left for the backup GPT."""
        first = (
            Partition("bios", BIOS_BOOT, MIB, MIB)
            if self.firmware == "bios"
            else Partition("esp", ESP, MIB, self.esp_size)
        )
        boot = Partition("boot", LINUX_DATA, first.start + first.size, self.boot_size)
        root_start = boot.start + boot.size
        root = Partition("root", ROOT_TYPES[self.arch], root_start, self.size - root_start - MIB)
        return [first, boot, root]

    def kernel_args(self) -> list[str]:
        """What the kernel needs from the disk: the root filesystem, mounted writable."""
        return [f"root=UUID={self.root_uuid}", "rw"]

    def fstab(self) -> str:
        """The deployment's ``/etc/fstab``: the root and ``/boot`` by filesystem UUID."""
        return (
            "# Written by afield image build-disk.\n"
            f"UUID={self.root_uuid} / ext4 defaults 0 1\n"
            f"UUID={self.boot_uuid} /boot ext4 defaults,nodev,nosuid 0 2\n"
        )


def make_ext4(image: Path, size: int, source: Path, *, label: str, fs_uuid: str) -> None:
    """Build an ext4 filesystem of ``size`` bytes in the file ``image`` holding ``source``."""
    image.unlink(missing_ok=True)
    with image.open("wb") as f:
        f.truncate(size)
    try:
        run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-L",
                label,
                "-U",
                fs_uuid,
                "-O",
                _EXT4_FEATURES,
                "-E",
                "root_owner=0:0",
                "-d",
                source,
                image,
            ]
        )
    except DiskError as e:
        if "allocate" in e.message or "No space" in e.message:
            raise DiskError(
                f"the {label} filesystem does not fit in {size // MIB} MiB; give a larger --size",
                user_error=True,
            ) from e
        raise


def make_vfat(
    image: Path, size: int, files: Mapping[str, Path], *, label: str, serial: str
) -> None:
    """Build a FAT filesystem of ``size`` bytes in ``image`` with ``files`` (FAT path -> file)."""
    image.unlink(missing_ok=True)
    with image.open("wb") as f:
        f.truncate(size)
    run(["mkfs.vfat", "-n", label, "-i", serial, image])
    made: set[str] = set()
    for target in sorted(files):
        parts = target.strip("/").split("/")
        for depth in range(1, len(parts)):
            directory = "/".join(parts[:depth])
            if directory not in made:
                run(["mmd", "-i", image, f"::/{directory}"])
                made.add(directory)
        run(["mcopy", "-i", image, files[target], f"::/{'/'.join(parts)}"])


def write_partition_table(disk: Path, layout: Layout) -> None:
    """Create the sparse disk file and write its GPT (and protective MBR) with sfdisk."""
    disk.unlink(missing_ok=True)
    with disk.open("wb") as f:
        f.truncate(layout.size)
    lines = ["label: gpt", f"label-id: {layout.disk_guid}", "unit: sectors", ""]
    for p in layout.partitions():
        lines.append(
            f"start={p.start // SECTOR}, size={p.size // SECTOR}, type={p.type_guid}, "
            f'name="{p.name}"'
        )
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", disk], input_text="\n".join(lines))


def copy_into(disk: Path, image: Path, offset: int, limit: int) -> None:
    """Copy the data extents of ``image`` into ``disk`` at ``offset``; holes stay holes."""
    size = image.stat().st_size
    if size > limit:
        raise DiskError(f"{image.name} is {size} bytes, larger than its partition ({limit})")
    chunk = 4 * MIB
    with image.open("rb") as src, disk.open("r+b") as dst:
        fd = src.fileno()
        position = 0
        while position < size:
            try:
                start = os.lseek(fd, position, os.SEEK_DATA)
            except OSError:
                break  # only a hole is left
            end = os.lseek(fd, start, os.SEEK_HOLE)
            src.seek(start)
            dst.seek(offset + start)
            remaining = end - start
            while remaining:
                data = src.read(min(chunk, remaining))
                dst.write(data)
                remaining -= len(data)
            position = end
