"""The truth test: composed images boot in QEMU with real firmware, GRUB, kernel and systemd,
and a bad update rolls itself back across real reboots.

Each QEMU run is one power cycle (``-no-reboot``); the next run boots the same disk, with the
grubenv where GRUB and the health check left it. The guest reports every boot on its serial
console with one line, ``afield-boot: checksum=... health=... rollback=...``. TCG only (no KVM):
a boot takes one to two minutes, so these tests are few and share their images.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from afield.disk import MIB, Layout, assemble, build_disk, prepare
from afield.disk.qemu import GUEST_HOST, BootRun, Machine, boot
from afield.release.serve import ACCESS_LOGGER, running
from tests.conftest import REPORTS
from tests.disk import UPDATE_URL_FILE, debugfs, debugfs_bytes, grubenv_on
from tests.disk.conftest import Arm64Image, BootImages

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.network, pytest.mark.qemu]

BOOT_TIMEOUT = 480  # seconds; a boot under load on 2 cores takes up to ~150


def _boot(machine: Machine, log: Path, what: str) -> BootRun:
    run = boot(machine, timeout=BOOT_TIMEOUT, log=log)
    assert not run.timed_out, f"{what}: no power-off within {BOOT_TIMEOUT} s\n{run.tail()}"
    assert run.marker is not None, f"{what}: no afield-boot line\n{run.tail()}"
    REPORTS.append(
        f"qemu {machine.arch}/{machine.firmware} {what}: userspace {run.userspace} s, "
        f"marker {run.marker.seconds} s, off {run.seconds} s"
    )
    return run


def _said(run: BootRun) -> tuple[str, bool, bool]:
    """What the boot's marker line says: the commit, healthy, rollback made permanent."""
    assert run.marker is not None
    return run.marker.checksum, run.marker.healthy, run.marker.rollback


def test_bios_boot_then_an_update_over_the_network_boots_and_is_marked_good(
    boot_images: BootImages, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    layout = Layout.new(arch="x86_64", firmware="bios", size=4096 * MIB)
    disk = tmp_path / "disk.img"
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER), running(boot_images.repo) as url:
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        device = prepare(
            boot_images.repo,
            boot_images.v1,
            tmp_path / "sysroot",
            layout,
            trust_root=boot_images.trust_root,
        )
        var = device.sysroot_path / "ostree" / "deploy" / device.osname
        (var / UPDATE_URL_FILE).write_text(f"http://{GUEST_HOST}:8080\n")
        assemble(device, layout, disk)
        machine = Machine(disk=disk, forwards={8080: port})

        first = _boot(machine, tmp_path / "boot1.log", "v1 + network update")
        assert _said(first) == (boot_images.v1, True, False)
        assert first.marker is not None and first.userspace is not None
        assert first.userspace < first.marker.seconds
        assert "GNU GRUB" in first.console  # GRUB's own menu, on the serial port
        # The guest's update pulled 2.0.0 through the forward and armed the counter.
        assert "downloaded" in first.console, first.tail()
        assert grubenv_on(disk, tmp_path) == {"boot_counter": "1", "boot_success": "0"}
        served = [
            json.loads(r.getMessage())["path"] for r in caplog.records if r.name == ACCESS_LOGGER
        ]
        assert "/tuf/timestamp.json" in served
        assert any(path.startswith("/ostree/") for path in served)

        second = _boot(machine, tmp_path / "boot2.log", "v2 after the update")
    assert _said(second) == (boot_images.v2, True, False)
    assert grubenv_on(disk, tmp_path) == {"boot_success": "1"}


def test_a_failing_update_falls_back_after_the_counter_runs_out_and_the_rollback_sticks(
    boot_images: BootImages, tmp_path: Path
) -> None:
    layout = Layout.new(arch="x86_64", firmware="bios", size=4096 * MIB)
    device = prepare(boot_images.repo, boot_images.v1, tmp_path / "sysroot", layout)
    device.stage(boot_images.repo, boot_images.broken)
    assert device.read_env() == {"boot_counter": "1", "boot_success": "0"}
    disk = tmp_path / "disk.img"
    assemble(device, layout, disk)
    machine = Machine(disk=disk)

    trial = _boot(machine, tmp_path / "boot1.log", "broken update on trial")
    assert _said(trial) == (boot_images.broken, False, False)
    assert "failed required/50-broken.sh" in trial.console
    assert grubenv_on(disk, tmp_path) == {"boot_counter": "0", "boot_success": "0"}

    fallback = _boot(machine, tmp_path / "boot2.log", "fallback")
    assert _said(fallback) == (boot_images.v1, True, True)
    # Permanent: 1.0.0 is the default entry again, and the counter is gone.
    assert grubenv_on(disk, tmp_path) == {"boot_success": "1"}
    grub_cfg = debugfs(disk, "boot", "cat /grub2/grub.cfg")
    first_entry = grub_cfg.split("menuentry ", 2)[1]
    assert "1.0.0" in first_entry.splitlines()[0]


def test_uefi_boot_of_the_same_image(boot_images: BootImages, tmp_path: Path) -> None:
    layout = Layout.new(arch="x86_64", firmware="uefi", size=4096 * MIB)
    disk = build_disk(boot_images.repo, boot_images.v1, tmp_path / "uefi.img", layout)
    run = _boot(Machine(disk=disk.path, firmware="uefi"), tmp_path / "boot.log", "v1")
    assert _said(run) == (boot_images.v1, True, False)
    assert "efi: EFI v" in run.console  # the kernel started from UEFI firmware (OVMF)


def test_arm64_uefi_boot_with_the_image_s_devicetree(
    arm64_image: Arm64Image, tmp_path: Path
) -> None:
    layout = Layout.new(arch="aarch64", firmware="uefi", size=4096 * MIB)
    disk = build_disk(arm64_image.repo, arm64_image.commit, tmp_path / "arm64.img", layout)
    # The boot entry and GRUB's menu entry name the image's DeviceTree, copied to /boot.
    entry = debugfs(disk.path, "boot", "cat /loader/entries/ostree-1-gateway.conf")
    path = next(line.split()[1] for line in entry.splitlines() if line.startswith("devicetree "))
    assert debugfs_bytes(disk.path, "boot", path, tmp_path) == arm64_image.devicetree
    assert f"devicetree '{path}'" in debugfs(disk.path, "boot", "cat /grub2/grub.cfg")
    kver = path.rsplit("devicetree-", 1)[1]
    deployment = f"/ostree/deploy/gateway/deploy/{arm64_image.commit}.0"
    in_image = f"{deployment}/usr/lib/modules/{kver}/dtb/qemu-virt.dtb"
    assert debugfs_bytes(disk.path, "root", in_image, tmp_path) == arm64_image.devicetree

    run = _boot(
        Machine(disk=disk.path, arch="aarch64", firmware="uefi"), tmp_path / "boot.log", "v1"
    )
    assert _said(run) == (arm64_image.commit, True, False)
    assert "EFI stub: Booting Linux Kernel" in run.console  # GRUB's EFI binary ran the kernel
    # GRUB handed over the image's DeviceTree (AAVMF's own would make the kernel use ACPI).
    assert "Machine model: linux,dummy-virt" in run.console
