"""GRUB for a disk image file: a core image that finds ``/boot`` by UUID, written where firmware
looks, without ``grub-install`` (which cannot probe a disk image file's partitions here).

The core image embeds a three-line configuration: find the boot filesystem by its UUID, make
``/grub2`` on it the prefix, and go on to normal mode, which reads ``/grub2/grub.cfg`` there
(the file :mod:`afield.device.lifecycle` regenerates after every deployment change). All modules
of the platform are copied to ``/grub2/<platform>/`` as ``grub-install`` does, so anything the
configuration needs beyond the embedded set loads from disk.

BIOS: the core image goes at the start of the BIOS boot partition and GRUB's ``boot.img`` into
the MBR's code area, told where the core image starts. The offsets are GRUB's
(``include/grub/i386/pc/boot.h``: the core image's first sector at 0x5c, the drive-check jump at
0x66; ``util/setup.c``: the core image's first sector holds a 12-byte block list at its end,
start sector, sector count and load segment 0x820, for the sectors after it).
UEFI: the core image is the removable-media path ``/EFI/BOOT/BOOTX64.EFI`` (``BOOTAA64.EFI``) on
the EFI system partition, which firmware boots with no boot entries in NVRAM.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

from afield.disk._layout import SECTOR
from afield.disk._tools import run
from afield.errors import DiskError

__all__ = ["EFI_NAMES", "PLATFORMS", "copy_modules", "core_image", "install_bios"]

# (arch, firmware) -> GRUB platform directory under /usr/lib/grub.
PLATFORMS = {
    ("x86_64", "bios"): "i386-pc",
    ("x86_64", "uefi"): "x86_64-efi",
    ("aarch64", "uefi"): "arm64-efi",
}
# The removable-media boot file of each UEFI architecture (UEFI specification, 3.5.1.1).
EFI_NAMES = {"x86_64": "BOOTX64.EFI", "aarch64": "BOOTAA64.EFI"}
_DEBIAN_PACKAGES = {
    "i386-pc": "grub-pc-bin",
    "x86_64-efi": "grub-efi-amd64-bin",
    "arm64-efi": "grub-efi-arm64-bin",
}
# Built into the core image: what it takes to reach grub.cfg and run it.
_COMMON_MODULES = [
    "part_gpt",
    "part_msdos",
    "ext2",
    "fat",
    "search",
    "search_fs_uuid",
    "normal",
    "configfile",
    "loadenv",
    "test",
    "echo",
    "linux",
    "gzio",
    "minicmd",
    "reboot",
    "halt",
]
_PLATFORM_MODULES = {
    "i386-pc": ["biosdisk", "serial", "terminal"],
    "x86_64-efi": ["efi_gop", "serial", "terminal"],
    "arm64-efi": ["efi_gop", "fdt"],
}
_KERNEL_SECTOR = 0x5C
_DRIVE_CHECK = 0x66
_MBR_KEEP = slice(0x1B8, 0x1FE)  # disk signature and partition table: sfdisk's, kept
_CORE_SEGMENT = 0x820
_BLOCKLIST = struct.Struct("<QHH")


def modules_dir(platform: str, *grub_libs: Path) -> Path:
    """The first of ``grub_libs`` (default ``/usr/lib/grub``) with GRUB's ``platform`` modules;
    DiskError naming the Debian package when none has them."""
    searched = grub_libs or (Path("/usr/lib/grub"),)
    for grub_lib in searched:
        directory = grub_lib / platform
        if (directory / "moddep.lst").is_file():
            return directory
    package = _DEBIAN_PACKAGES.get(platform, f"GRUB for {platform}")
    places = ", ".join(str(g / platform) for g in searched)
    raise DiskError(
        f"GRUB's {platform} modules are in none of {places} (Debian package {package}; "
        "images composed for arm64 carry it)"
    )


def core_image(platform: str, modules: Path, boot_uuid: str, output: Path) -> None:
    """Make GRUB's core image for ``platform`` that boots ``/grub2/grub.cfg`` of ``boot_uuid``."""
    early = output.with_suffix(".cfg")
    lines = [
        f"search --no-floppy --fs-uuid --set=root {boot_uuid}",
        "set prefix=($root)/grub2",
    ]
    if platform == "i386-pc":
        # BIOS output goes to the screen only; the serial port makes a headless boot visible.
        lines += [
            "serial --unit=0 --speed=115200",
            "terminal_input serial console",
            "terminal_output serial console",
        ]
    early.write_text("\n".join(lines) + "\n")
    run(
        [
            "grub-mkimage",
            "--format",
            platform,
            "--directory",
            modules,
            "--prefix",
            "/grub2",
            "--config",
            early,
            "--output",
            output,
            *_COMMON_MODULES,
            *_PLATFORM_MODULES[platform],
        ]
    )


def copy_modules(platform: str, modules: Path, boot_root: Path) -> None:
    """Copy the platform's modules and lists to ``/grub2/<platform>`` of the boot filesystem."""
    target = boot_root / "grub2" / platform
    target.mkdir(parents=True, exist_ok=True)
    for item in sorted(modules.iterdir()):
        if item.suffix in (".mod", ".lst"):
            shutil.copy2(item, target / item.name)


def install_bios(disk: Path, core: Path, modules: Path, core_start: int, core_room: int) -> None:
    """Write ``boot.img`` to the MBR and the core image at byte ``core_start`` of ``disk``.

    ``core_room`` is the BIOS boot partition's size; a core image that does not fit is refused.
    """
    data = bytearray(core.read_bytes())
    if len(data) > core_room:
        raise DiskError(f"GRUB's core image is {len(data)} bytes, more than {core_room}")
    data += bytes(-len(data) % SECTOR)
    sectors = len(data) // SECTOR
    first = core_start // SECTOR
    # The first sector of the core image (diskboot) loads the rest as one block list.
    _BLOCKLIST.pack_into(data, SECTOR - _BLOCKLIST.size, first + 1, sectors - 1, _CORE_SEGMENT)
    boot = bytearray((modules / "boot.img").read_bytes())
    if len(boot) != SECTOR:
        raise DiskError(f"{modules / 'boot.img'} is not one sector")
    with disk.open("r+b") as f:
        mbr = f.read(SECTOR)
        boot[_MBR_KEEP] = mbr[_MBR_KEEP]
        struct.pack_into("<Q", boot, _KERNEL_SECTOR, first)
        # A hard disk: turn on GRUB's workaround for BIOSes that pass a floppy's drive number.
        boot[_DRIVE_CHECK : _DRIVE_CHECK + 2] = b"\x90\x90"
        f.seek(0)
        f.write(boot)
        f.seek(core_start)
        f.write(data)
