"""What real libostree (2022.7) makes of an image's device trees, and the grub.cfg afield writes.

afield.devicetree puts the blueprint's device trees in ``/usr/lib/modules/$kver/dtb/`` and the
default one at ``/usr/lib/modules/$kver/devicetree``. At deployment OSTree copies the default to
``/boot/ostree/<os>-<bootcsum>/devicetree-$kver`` and writes a ``devicetree`` line into the boot
entry, which must reach GRUB's ``devicetree`` command; with no default it copies ``dtb/`` and
writes ``fdtdir`` (U-Boot's key), which GRUB has no command for. A device tree shipped with the
blueprint (a ``./`` name) is planned, installed by the real stage and deployed the same way.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from afield import blueprint as bp
from afield.compose.pipeline import StageContext, load_stage
from afield.compose.plan import Target, plan
from afield.device.boot import bls
from afield.device.bootseq import boot_once
from afield.device.lifecycle import Device
from tests.conftest import EXAMPLE
from tests.device.images import KERNEL, commit_image

pytestmark = pytest.mark.root

BOARD = b"\xd0\x0d\xfe\xed\x00\x00\x00\x48 afield test board"
OTHER = b"\xd0\x0d\xfe\xed\x00\x00\x00\x48 afield other board"


def _install(
    tmp_path: Path, *, devicetree: bytes | None = None, dtbs: dict[str, bytes] | None = None
) -> Device:
    """A device with a test image holding these device trees installed."""
    repo = tmp_path / "repo"
    commit = commit_image(
        repo, tmp_path / "work", version="1.0.0", devicetree=devicetree, dtbs=dtbs
    )
    device = Device.init(tmp_path / "sysroot", "gateway")
    device.install(repo, commit)
    return device


def _menuentry(grub_cfg: str) -> list[str]:
    """The lines of the first menu entry in ``grub_cfg``."""
    lines = grub_cfg.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("menuentry "))
    end = lines.index("}", start)
    return lines[start : end + 1]


def test_default_device_tree_reaches_the_entry_boot_and_grub_cfg(tmp_path: Path) -> None:
    device = _install(
        tmp_path,
        devicetree=BOARD,
        dtbs={"afield/test-board.dtb": BOARD, "afield/other.dtb": OTHER},
    )
    [deployment] = device.deployments()
    boot_dir = f"/ostree/gateway-{deployment.bootcsum}"
    expected = f"{boot_dir}/devicetree-{KERNEL}"

    [entry] = bls.load_entries(device.entries_dir)
    assert f"devicetree {expected}\n" in entry.path.read_text()
    assert entry.devicetree == expected
    assert entry.linux == f"{boot_dir}/vmlinuz-{KERNEL}"
    # With a single blob OSTree 2022.7 neither copies dtb/ to /boot nor writes fdtdir.
    assert entry.extra == ()
    assert not (device.sysroot_path / "boot" / boot_dir.lstrip("/") / "dtb").exists()

    assert (device.sysroot_path / "boot" / expected.lstrip("/")).read_bytes() == BOARD
    # Every listed device tree stays in the deployment, next to its kernel.
    dtb = deployment.path / "usr" / "lib" / "modules" / KERNEL / "dtb" / "afield"
    assert (dtb / "other.dtb").read_bytes() == OTHER

    menu = _menuentry(device.grubcfg_path.read_text())
    assert f"  devicetree '{expected}'" in menu
    assert menu.index(f"  devicetree '{expected}'") > 1  # after the linux and initrd lines


def test_device_tree_changes_the_boot_directory(tmp_path: Path) -> None:
    # A new device tree must not be hidden behind an old /boot copy: OSTree hashes it with the
    # kernel and initramfs into the bootcsum that names the directory.
    plain = _install(tmp_path / "plain")
    board = _install(tmp_path / "board", devicetree=BOARD)
    other = _install(tmp_path / "other", devicetree=OTHER)
    csums = {d.deployments()[0].bootcsum for d in (plain, board, other)}
    assert len(csums) == 3


def test_device_tree_directory_alone_gives_fdtdir_and_no_grub_devicetree(tmp_path: Path) -> None:
    device = _install(tmp_path, dtbs={"afield/test-board.dtb": BOARD})
    [deployment] = device.deployments()
    boot_dir = f"/ostree/gateway-{deployment.bootcsum}"

    [entry] = bls.load_entries(device.entries_dir)
    assert f"fdtdir {boot_dir}/dtb\n" in entry.path.read_text()
    assert entry.devicetree is None
    assert entry.extra == (("fdtdir", f"{boot_dir}/dtb"),)
    copied = device.sysroot_path / "boot" / boot_dir.lstrip("/") / "dtb" / "afield"
    assert (copied / "test-board.dtb").read_bytes() == BOARD

    assert not any("devicetree" in line for line in _menuentry(device.grubcfg_path.read_text()))


def test_image_with_a_device_tree_boots_healthy(tmp_path: Path) -> None:
    # The simulated firmware reads the same entries; the extra line must not trip it.
    device = _install(tmp_path, devicetree=BOARD, dtbs={"afield/test-board.dtb": BOARD})
    result = boot_once(device)
    assert result.healthy, result.report


def test_device_tree_shipped_with_the_blueprint_reaches_boot(tmp_path: Path) -> None:
    # From the blueprint's directory through the plan and the stage to /boot and grub.cfg.
    (tmp_path / "bp" / "boards").mkdir(parents=True)
    (tmp_path / "bp" / "boards" / "gateway.dtb").write_bytes(BOARD)
    blueprint = tmp_path / "bp" / "gateway.toml"
    blueprint.write_text(
        EXAMPLE.read_text() + "\n[customizations.afield.devicetree]\n"
        'files = ["./boards/gateway.dtb"]\ndefault = "./boards/gateway.dtb"\n'
    )
    target = Target(suite="bookworm", debian_arch="amd64", mirrors=())
    [spec] = [s for s in plan(bp.load(blueprint), target) if s.name == "afield.devicetree"]
    staged = tmp_path / "staged"
    modules = staged / "usr" / "lib" / "modules" / KERNEL
    modules.mkdir(parents=True)
    ctx = StageContext(
        tree=staged, workdir=tmp_path, cache_dir=tmp_path / "cache", facts={}, log=lambda _: None
    )
    load_stage("afield.devicetree").run(ctx, spec.options)

    device = _install(
        tmp_path / "device",
        devicetree=(modules / "devicetree").read_bytes(),
        dtbs={"boards/gateway.dtb": (modules / "dtb" / "boards" / "gateway.dtb").read_bytes()},
    )
    [deployment] = device.deployments()
    expected = f"/ostree/gateway-{deployment.bootcsum}/devicetree-{KERNEL}"
    [entry] = bls.load_entries(device.entries_dir)
    assert entry.devicetree == expected
    assert (device.sysroot_path / "boot" / expected.lstrip("/")).read_bytes() == BOARD
    assert f"  devicetree '{expected}'" in _menuentry(device.grubcfg_path.read_text())
