"""The disk layout, filesystems and GRUB's boot sectors, checked with the real tools."""

from __future__ import annotations

import itertools
import json
import struct
import subprocess
from pathlib import Path

import pytest

from afield.disk import MIB, Layout, parse_size
from afield.disk._grub import core_image, install_bios, modules_dir
from afield.disk._layout import copy_into, make_ext4, make_vfat, write_partition_table
from afield.errors import DiskError


def test_sizes_parse_in_powers_of_1024_and_refuse_what_is_not_a_whole_mib() -> None:
    assert parse_size("4G") == 4096 * MIB
    assert parse_size("3500M") == 3500 * MIB
    assert parse_size("1GiB") == 1024 * MIB
    assert parse_size("2t") == 2 * 1024 * 1024 * MIB
    for bad in ("", "G", "-1G", "1.5G", "4X", "1000K", "3T", "0M", "9" * 20):
        with pytest.raises(DiskError, match="size"):
            parse_size(bad)


def test_a_layout_is_three_aligned_partitions_that_fill_the_disk() -> None:
    for firmware, first in (("bios", "bios"), ("uefi", "esp")):
        layout = Layout.new(arch="x86_64", firmware=firmware, size=4096 * MIB)
        parts = layout.partitions()
        assert [p.name for p in parts] == [first, "boot", "root"]
        assert all(p.start % MIB == 0 and p.size % MIB == 0 for p in parts)
        for before, after in itertools.pairwise(parts):
            assert before.start + before.size == after.start
        assert parts[-1].start + parts[-1].size == layout.size - MIB  # room for the backup GPT
    arm = Layout.new(arch="aarch64", firmware="uefi", size=2048 * MIB)
    assert arm.partitions()[-1].type_guid == "B921B045-1DF0-41C3-AF44-4C6F280D3FAE"
    assert arm.kernel_args() == [f"root=UUID={arm.root_uuid}", "rw"]
    assert f"UUID={arm.boot_uuid} /boot ext4" in arm.fstab()
    # Each disk is its own device: fresh identifiers every time.
    assert Layout.new(arch="aarch64", firmware="uefi", size=2048 * MIB).root_uuid != arm.root_uuid


@pytest.mark.parametrize(
    ("arch", "firmware", "size", "message"),
    [
        ("aarch64", "bios", 4096 * MIB, "no BIOS"),
        ("riscv64", "uefi", 4096 * MIB, "arch 'riscv64' is not supported"),
        ("x86_64", "coreboot", 4096 * MIB, "firmware 'coreboot'"),
        ("x86_64", "uefi", 600 * MIB, "too small; at least 834 MiB"),
    ],
)
def test_a_layout_that_cannot_boot_is_refused(
    arch: str, firmware: str, size: int, message: str
) -> None:
    with pytest.raises(DiskError, match=message):
        Layout.new(arch=arch, firmware=firmware, size=size)


def _table(disk: Path) -> dict[str, object]:
    done = subprocess.run(
        ["sfdisk", "--json", str(disk)], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)["partitiontable"]  # type: ignore[no-any-return]


def test_the_partition_table_is_a_gpt_sfdisk_reads_back(tmp_path: Path) -> None:
    layout = Layout.new(arch="x86_64", firmware="uefi", size=1024 * MIB)
    disk = tmp_path / "disk.img"
    write_partition_table(disk, layout)
    table = _table(disk)
    assert table["label"] == "gpt"
    assert table["id"] == layout.disk_guid
    parts = table["partitions"]
    assert isinstance(parts, list)
    assert [(p["name"], p["type"], p["start"] * 512, p["size"] * 512) for p in parts] == [
        (p.name, p.type_guid, p.start, p.size) for p in layout.partitions()
    ]
    assert disk.stat().st_blocks * 512 < MIB  # sparse: only the tables are written


def test_filesystems_are_built_from_directories_and_copied_in_sparsely(tmp_path: Path) -> None:
    source = tmp_path / "tree"
    (source / "grub2").mkdir(parents=True)
    (source / "grub2" / "grub.cfg").write_text("set timeout=0\n")
    (source / "link").symlink_to("grub2/grub.cfg")
    image = tmp_path / "boot.ext4"
    make_ext4(image, 64 * MIB, source, label="boot", fs_uuid="0c0ffee0-0000-4000-8000-000000000001")
    probe = subprocess.run(
        ["blkid", "-p", "-o", "export", str(image)], capture_output=True, text=True
    )
    assert "UUID=0c0ffee0-0000-4000-8000-000000000001" in probe.stdout
    assert "LABEL=boot" in probe.stdout
    listing = subprocess.run(
        ["debugfs", "-R", "cat /grub2/grub.cfg", str(image)], capture_output=True, text=True
    )
    assert listing.stdout == "set timeout=0\n"
    features = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True).stdout
    assert "orphan_file" not in features and "metadata_csum_seed" not in features  # GRUB 2.06

    disk = tmp_path / "disk.img"
    with disk.open("wb") as f:
        f.truncate(256 * MIB)
    copy_into(disk, image, 8 * MIB, 64 * MIB)
    with disk.open("rb") as f:
        f.seek(8 * MIB)
        assert f.read(64 * MIB) == image.read_bytes()
    assert disk.stat().st_blocks * 512 <= image.stat().st_blocks * 512 + MIB
    with pytest.raises(DiskError, match="larger than its partition"):
        copy_into(disk, image, 0, 32 * MIB)


def test_a_tree_larger_than_its_filesystem_names_the_size_option(tmp_path: Path) -> None:
    source = tmp_path / "tree"
    source.mkdir()
    (source / "big").write_bytes(b"x" * (12 * MIB))
    with pytest.raises(DiskError, match="larger --size"):
        make_ext4(
            tmp_path / "small.ext4",
            8 * MIB,
            source,
            label="root",
            fs_uuid="0c0ffee0-0000-4000-8000-000000000002",
        )


def test_the_esp_holds_the_removable_media_boot_file(tmp_path: Path) -> None:
    binary = tmp_path / "grub.efi"
    binary.write_bytes(b"MZ" + bytes(4094))
    image = tmp_path / "esp.vfat"
    make_vfat(image, 64 * MIB, {"EFI/BOOT/BOOTX64.EFI": binary}, label="ESP", serial="1234ABCD")
    listing = subprocess.run(
        ["mdir", "-b", "-i", str(image), "::/EFI/BOOT"], capture_output=True, text=True
    )
    assert "BOOTX64.EFI" in listing.stdout
    copied = tmp_path / "back.efi"
    subprocess.run(["mcopy", "-i", str(image), "::/EFI/BOOT/BOOTX64.EFI", str(copied)], check=True)
    assert copied.read_bytes() == binary.read_bytes()


def test_bios_boot_sectors_point_at_the_core_image_and_keep_the_partition_table(
    tmp_path: Path,
) -> None:
    layout = Layout.new(arch="x86_64", firmware="bios", size=1024 * MIB)
    disk = tmp_path / "disk.img"
    write_partition_table(disk, layout)
    with disk.open("rb") as f:
        mbr_before = f.read(512)
    modules = modules_dir("i386-pc")
    core = tmp_path / "core.img"
    core_image("i386-pc", modules, layout.boot_uuid, core)
    bios = layout.partitions()[0]
    install_bios(disk, core, modules, bios.start, bios.size)
    with disk.open("rb") as f:
        mbr = f.read(512)
        f.seek(bios.start)
        written = f.read(len(core.read_bytes()))
    boot = (modules / "boot.img").read_bytes()
    assert mbr[0x1B8:0x1FE] == mbr_before[0x1B8:0x1FE]  # the protective MBR's partition entry
    assert mbr[0x1FE:] == b"\x55\xaa"
    assert mbr[:0x5C] == boot[:0x5C]
    assert struct.unpack_from("<Q", mbr, 0x5C)[0] == bios.start // 512
    assert mbr[0x66:0x68] == b"\x90\x90"
    sectors = -(-len(written) // 512)
    start, count, segment = struct.unpack_from("<QHH", written, 500)
    assert (start, count, segment) == (bios.start // 512 + 1, sectors - 1, 0x820)
    assert written[512:] == core.read_bytes()[512:]
    assert _table(disk)["label"] == "gpt"  # sfdisk still reads the disk


def test_core_images_embed_the_search_for_the_boot_filesystem(tmp_path: Path) -> None:
    # The EFI image keeps its modules and configuration uncompressed (BIOS's is LZMA-packed
    # and is checked by booting it in tests/disk/test_boot.py).
    core = tmp_path / "core.efi"
    core_image(
        "x86_64-efi", modules_dir("x86_64-efi"), "0c0ffee0-0000-4000-8000-000000000003", core
    )
    data = core.read_bytes()
    assert data[:2] == b"MZ"  # a PE/COFF EFI application
    assert b"search --no-floppy --fs-uuid --set=root 0c0ffee0-0000-4000-8000-000000000003" in data
    assert b"set prefix=($root)/grub2" in data


def test_missing_grub_modules_name_the_debian_package(tmp_path: Path) -> None:
    with pytest.raises(DiskError, match="grub-efi-arm64-bin"):
        modules_dir("arm64-efi", tmp_path)
