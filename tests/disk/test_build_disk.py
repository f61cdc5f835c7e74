"""``afield image build-disk`` on small test images: what lands in each partition."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from afield.disk import MIB, Layout, assemble, build_disk, prepare
from afield.errors import DiskError
from tests.conftest import afield
from tests.device.images import commit_image
from tests.disk import debugfs, grubenv_on, partition_offset

pytestmark = pytest.mark.root


@dataclass(frozen=True)
class Small:
    repo: Path
    v1: str
    v2: str
    arm: str


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Small:
    work = tmp_path_factory.mktemp("small")
    repo = work / "repo"
    return Small(
        repo=repo,
        v1=commit_image(repo, work, version="1.0.0"),
        v2=commit_image(repo, work, version="2.0.0"),
        arm=commit_image(repo, work, version="1.0.1", arch="aarch64"),
    )


def test_a_bios_disk_holds_grub_the_boot_entries_and_the_deployment(
    small: Small, tmp_path: Path
) -> None:
    layout = Layout.new(arch="x86_64", firmware="bios", size=1024 * MIB)
    disk = build_disk(
        small.repo, small.v1, tmp_path / "disk.img", layout, server="http://fleet.test"
    )
    assert disk.commit == small.v1 and disk.version == "1.0.0"
    assert disk.allocated < 64 * MIB  # sparse
    assert not list(tmp_path.glob(".disk.img.*"))  # the work directory is gone

    entries = debugfs(disk.path, "boot", "ls -p /loader/entries")
    assert "ostree-1-gateway.conf" in entries
    entry = debugfs(disk.path, "boot", "cat /loader/entries/ostree-1-gateway.conf")
    options = next(line for line in entry.splitlines() if line.startswith("options "))
    assert options.startswith(
        f"options root=UUID={layout.root_uuid} rw console=ttyS0,115200 ostree="
    )
    grub_cfg = debugfs(disk.path, "boot", "cat /grub2/grub.cfg")
    assert "menuentry" in grub_cfg and "load_env boot_counter boot_success" in grub_cfg
    assert "normal.mod" in debugfs(disk.path, "boot", "ls /grub2/i386-pc")
    assert grubenv_on(disk.path, tmp_path) == {"boot_success": "1"}

    deployment = f"/ostree/deploy/gateway/deploy/{small.v1}.0"
    assert debugfs(disk.path, "root", f"cat {deployment}/etc/fstab") == layout.fstab()
    # /boot on the root filesystem is only the mountpoint; its content is the boot partition's.
    names = [line.split("/")[5] for line in debugfs(disk.path, "root", "ls -p /boot").split()]
    assert sorted(names) == [".", ".."]
    agent = debugfs(disk.path, "root", "cat /ostree/deploy/gateway/var/lib/afield/agent.toml")
    assert 'server = "http://fleet.test"' in agent


def test_an_update_staged_before_assembly_keeps_the_disk_s_kernel_arguments(
    small: Small, tmp_path: Path
) -> None:
    layout = Layout.new(arch="x86_64", firmware="uefi", size=1024 * MIB)
    device = prepare(small.repo, small.v1, tmp_path / "sysroot", layout)
    device.stage(small.repo, small.v2)
    for entry in sorted(device.entries_dir.glob("*.conf")):
        assert (
            f"options root=UUID={layout.root_uuid} rw console=ttyS0,115200 ostree="
            in entry.read_text()
        )
    assert device.read_env()["boot_counter"] == "3"
    # The merged /etc of the new deployment keeps the disk's fstab.
    assert (device.deployments()[0].path / "etc" / "fstab").read_text() == layout.fstab()
    disk = tmp_path / "disk.img"
    assemble(device, layout, disk)
    assert (device.sysroot_path / "boot" / "loader").exists()  # the sysroot is whole again
    esp = partition_offset(disk, "esp")
    assert esp == MIB
    grub_cfg = debugfs(disk, "boot", "cat /grub2/grub.cfg")
    assert grub_cfg.count("menuentry ") == 2 and "x86_64-efi" not in grub_cfg
    assert "normal.mod" in debugfs(disk, "boot", "ls /grub2/x86_64-efi")


def test_the_command_line_builds_a_disk_and_prints_json(small: Small, tmp_path: Path) -> None:
    out = tmp_path / "cli.img"
    done = afield(
        "image", "build-disk", "--repo", str(small.repo), "--commit", small.v1[:12],
        "--firmware", "uefi", "--size", "900M", "-o", str(out), "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["commit"] == small.v1 and data["firmware"] == "uefi" and data["size"] == 900 * MIB
    assert [p["name"] for p in data["partitions"]] == ["esp", "boot", "root"]
    assert out.stat().st_size == 900 * MIB


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--commit", "0" * 64], "0000000000"),
        (
            ["--commit", "ARM", "--firmware", "uefi"],
            "is a aarch64 image; it cannot boot on a x86_64 disk",
        ),
        (["--arch", "aarch64", "--firmware", "bios"], "aarch64 has no BIOS firmware"),
        (["--size", "12Q"], "size '12Q'"),
        (["--size", "300M"], "too small"),
    ],
)
def test_bad_requests_exit_non_zero_naming_the_problem(
    small: Small, tmp_path: Path, args: list[str], message: str
) -> None:
    args = [small.arm if a == "ARM" else a for a in args]
    if "--commit" not in args:
        args = ["--commit", small.v1, *args]
    out = tmp_path / "bad.img"
    done = afield("image", "build-disk", "--repo", str(small.repo), "-o", str(out), *args)
    assert done.returncode != 0
    assert message in done.stdout + done.stderr, done.stderr
    assert not out.exists()
    assert not list(tmp_path.glob(".bad.img.*"))


def test_a_disk_for_another_architecture_needs_its_grub_modules(
    small: Small, tmp_path: Path
) -> None:
    layout = Layout.new(arch="aarch64", firmware="uefi", size=1024 * MIB)
    with pytest.raises(DiskError, match="arm64-efi"):
        build_disk(small.repo, small.arm, tmp_path / "arm.img", layout, grub_lib=tmp_path)
