"""A device through updates, failed updates and rollbacks, on real OSTree sysroots.

Each test boots a simulated device (``afield device boot``: the firmware simulator, then the
boot sequence with greenboot-compatible checks run inside the deployment by bubblewrap).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from afield.device.boot import grubenv
from afield.device.bootseq import boot_marker, boot_once
from afield.device.lifecycle import Device
from afield.device.status import device_status
from afield.errors import DeviceError
from tests.conftest import afield
from tests.device.conftest import Images, NewDevice

pytestmark = pytest.mark.root


def _events(device: Device) -> list[str]:
    return [e["event"] for e in device.state.events()]


def test_good_update_boots_and_is_kept(new_device: NewDevice, images: Images) -> None:
    device = new_device()
    device.stage(images.repo, images.v2)
    status = device_status(device)
    assert status["pending"]["checksum"] == images.v2
    assert status["booted"]["checksum"] == images.v1
    assert status["boot_counter"] == "3" and status["boot_success"] == "0"
    result = boot_once(device)
    assert result.healthy and result.checksum == images.v2 and not result.reboot
    status = device_status(device)
    assert status["booted"]["version"] == "2.0.0"
    assert status["pending"] is None
    assert status["rollback"]["checksum"] == images.v1
    assert status["boot_counter"] is None and status["boot_success"] == "1"
    # Stays on v2 across further boots.
    assert boot_once(device).checksum == images.v2


def test_bad_update_rolls_back_after_the_attempts_run_out(
    new_device: NewDevice, images: Images
) -> None:
    device = new_device()
    device.stage(images.repo, images.broken)
    tried = [boot_once(device) for _ in range(3)]
    assert [r.checksum for r in tried] == [images.broken] * 3
    assert all(r.reboot and not r.healthy for r in tried)
    fallback = boot_once(device)
    assert fallback.checksum == images.v1 and fallback.fallback and fallback.healthy
    status = device_status(device)
    assert status["booted"]["checksum"] == images.v1
    assert status["pending"] is None
    assert status["boot_counter"] is None
    rolled = [e for e in device.state.events() if e["event"] == "rolled back"]
    assert len(rolled) == 1
    assert rolled[0]["from"] == images.broken and rolled[0]["to"] == images.v1
    assert rolled[0]["failed_checks"][0]["name"] == "10-image.sh"
    assert "broken" in rolled[0]["failed_checks"][0]["output"]
    # The broken image never boots again.
    assert {boot_once(device).checksum for _ in range(3)} == {images.v1}


def test_max_boot_attempts_come_from_greenboot_conf(new_device: NewDevice, images: Images) -> None:
    device = new_device()
    conf = device.booted().path / "etc" / "greenboot" / "greenboot.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text("GREENBOOT_MAX_BOOT_ATTEMPTS=1\n")
    device.stage(images.repo, images.broken)
    assert device.read_env()["boot_counter"] == "1"
    assert boot_once(device).checksum == images.broken
    assert boot_once(device).checksum == images.v1


def test_each_boot_is_one_console_line_saying_what_booted_and_what_was_decided(
    new_device: NewDevice, images: Images
) -> None:
    device = new_device()
    conf = device.booted().path / "etc" / "greenboot" / "greenboot.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text("GREENBOOT_MAX_BOOT_ATTEMPTS=1\n")
    device.stage(images.repo, images.broken)
    lines = [boot_marker(boot_once(device)) for _ in range(3)]
    assert lines == [
        f"afield-boot: checksum={images.broken} health=unhealthy rollback=no",
        f"afield-boot: checksum={images.v1} health=healthy rollback=yes",
        f"afield-boot: checksum={images.v1} health=healthy rollback=no",
    ]


def test_a_device_s_own_kernel_arguments_come_first_on_every_deployment(
    tmp_path: Path, images: Images
) -> None:
    device = Device.init(tmp_path / "sysroot", "gateway")
    device.install(images.repo, images.v1, local_kargs=["root=UUID=1234", "rw"])
    device.stage(images.repo, images.v2)
    kargs = [d.kargs for d in device.deployments()]
    assert [k[:3] for k in kargs] == [("root=UUID=1234", "rw", "console=ttyS0,115200")] * 2
    assert device.state.load()["local_kargs"] == ["root=UUID=1234", "rw"]


def test_local_etc_changes_survive_update_failed_update_and_rollback(
    new_device: NewDevice, images: Images
) -> None:
    device = new_device()
    (device.booted().path / "etc" / "site.conf").write_text("mine\n")
    device.stage(images.repo, images.broken)
    for _ in range(4):
        boot_once(device)
    assert (device.booted().path / "etc" / "site.conf").read_text() == "mine\n"
    device.stage(images.repo, images.v2)
    boot_once(device)
    booted = device.booted().path
    assert (booted / "etc" / "site.conf").read_text() == "mine\n"
    # The image's own default changed and the device had not touched it: the new one wins.
    assert (booted / "etc" / "app.conf").read_text() == "level = 2\n"
    device.rollback()
    boot_once(device)
    assert device.booted().checksum == images.v1
    assert (device.booted().path / "etc" / "site.conf").read_text() == "mine\n"


def test_manual_rollback_makes_the_previous_deployment_default(
    new_device: NewDevice, images: Images
) -> None:
    device = new_device()
    device.stage(images.repo, images.v2)
    boot_once(device)
    device.rollback()
    assert "rolled back" in _events(device)
    result = boot_once(device)
    assert result.checksum == images.v1 and not result.fallback


def test_rollback_without_a_previous_deployment_is_refused(new_device: NewDevice) -> None:
    with pytest.raises(DeviceError, match="no previous deployment"):
        new_device().rollback()


@pytest.mark.parametrize(
    ("which", "message"),
    [
        ("no_kernel", "not bootable"),
        ("other_os", "another OS"),
        ("other_arch", "built for aarch64"),
        ("missing", "no commit f{64}"),
    ],
)
def test_staging_a_wrong_commit_fails_and_changes_nothing(
    new_device: NewDevice, images: Images, which: str, message: str
) -> None:
    # Bad input: a commit that cannot or must not boot here is refused before any write.
    device = new_device()
    commit = "f" * 64 if which == "missing" else getattr(images, which)
    before = (device_status(device), device.grubenv_path.read_bytes(), len(_events(device)))
    with pytest.raises(DeviceError, match=message):
        device.stage(images.repo, commit)
    after = (device_status(device), device.grubenv_path.read_bytes(), len(_events(device)))
    assert after == before


def test_staging_the_running_commit_is_refused(new_device: NewDevice, images: Images) -> None:
    with pytest.raises(DeviceError, match="already the running deployment"):
        new_device().stage(images.repo, images.v1)


def test_truncated_grubenv_falls_back_to_the_known_good_deployment(
    new_device: NewDevice, images: Images
) -> None:
    # Fault: the grubenv block is torn (power cut while GRUB saved it, or a bad sector).
    device = new_device()
    device.stage(images.repo, images.v2)
    data = device.grubenv_path.read_bytes()
    device.grubenv_path.write_bytes(data[:300])
    first = boot_once(device)
    booted_event = [e for e in device.state.events() if e["event"] == "booted"][-1]
    assert "grubenv_error" in booted_event
    # GRUB cannot read the counter, so the default (v2, on trial) boots once; userspace sees
    # the torn block and falls back to v1, the last known-good deployment.
    assert first.checksum == images.v2
    assert first.action == "finalize-rollback"
    assert device.deployments()[0].checksum == images.v1
    boot_once(device)
    assert device.booted().checksum == images.v1
    assert grubenv.read_grubenv(device.grubenv_path)["boot_success"] == "1"


def test_generated_grub_cfg_passes_grub_script_check(new_device: NewDevice, images: Images) -> None:
    device = new_device()
    device.stage(images.repo, images.v2)
    result = subprocess.run(
        ["grub-script-check", str(device.grubcfg_path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = device.grubcfg_path.read_text()
    assert text.count("menuentry ") == 2
    assert images.v2[:10] not in text or "ostree=" in text


def test_grub_editenv_reads_what_the_device_wrote(new_device: NewDevice, images: Images) -> None:
    device = new_device()
    device.stage(images.repo, images.v2)
    out = subprocess.run(
        ["grub-editenv", str(device.grubenv_path), "list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "boot_counter=3" in out.splitlines()
    assert "boot_success=0" in out.splitlines()


def test_cli_drives_a_device_from_init_to_rollback(tmp_path: Path, images: Images) -> None:
    sysroot = str(tmp_path / "sysroot")
    repo = str(images.repo)
    afield("device", "init", "--sysroot", sysroot, "--os", "gateway", check=True)
    afield(
        "device", "install", "--sysroot", sysroot, "--repo", repo, "--commit", images.v1, check=True
    )
    first = json.loads(afield("device", "boot", "--sysroot", sysroot, "--json", check=True).stdout)
    assert first["healthy"] is True and first["checksum"] == images.v1
    afield(
        "device",
        "stage",
        "--sysroot",
        sysroot,
        "--repo",
        repo,
        "--commit",
        images.broken[:12],
        check=True,
    )
    for _ in range(4):
        # stdout stays pure JSON even when libostree reports freed objects during cleanup.
        out = afield("device", "boot", "--sysroot", sysroot, "--json", check=True).stdout
        assert json.loads(out)["checksum"] in (images.broken, images.v1)
    status = json.loads(
        afield("device", "status", "--sysroot", sysroot, "--json", check=True).stdout
    )
    assert status["booted"]["checksum"] == images.v1
    assert "rolled back" in [e["event"] for e in status["events"]]
    assert status["last_boot"]["healthy"] is True
    bad = afield("device", "stage", "--sysroot", sysroot, "--repo", repo, "--commit", "nope")
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")


def test_status_of_a_directory_that_is_no_device_fails_clearly(tmp_path: Path) -> None:
    result = afield("device", "status", "--sysroot", str(tmp_path), "--json")
    assert result.returncode == 1
    assert "afield device init" in result.stderr


def test_a_relative_sysroot_path_runs_checks_in_the_right_tree(
    tmp_path: Path, images: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Checks run with / as working directory: a relative sysroot must not break them.
    monkeypatch.chdir(tmp_path)
    device = Device.init(Path("relative-sysroot"), "gateway")
    device.install(images.repo, images.v1)
    assert boot_once(device).healthy
    device.stage(images.repo, images.broken)
    result = boot_once(device)
    assert not result.healthy
    assert "image 3.0.0 says broken" in result.report.failed[0].output
