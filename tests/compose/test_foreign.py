"""Composing for another architecture: the target, its kernel, and binfmt_misc registration."""

from __future__ import annotations

from pathlib import Path

import pytest

from afield import blueprint as bp
from afield.compose._foreign import ensure_emulation
from afield.compose.plan import host_target, kernel_package, plan
from afield.errors import ComposeError

_REGISTRATION = (
    ":qemu-aarch64:M::\\x7fELF:\\xff\\xff:/usr/libexec/qemu-binfmt/aarch64-binfmt-P:POCF"
)


def _blueprint(kernel: str | None) -> bp.Blueprint:
    text = 'name = "edge"\nversion = "1.0.0"\n'
    if kernel is not None:
        text += f'[customizations.kernel]\nname = "{kernel}"\n'
    return bp.parse(text)


def test_targets_take_ostree_or_debian_architecture_names() -> None:
    for name in ("aarch64", "arm64"):
        target = host_target("debian-12", name)
        assert (target.debian_arch, target.arch) == ("arm64", "aarch64")
    assert host_target("debian-12", "x86_64").debian_arch == "amd64"
    with pytest.raises(ComposeError, match="cannot compose for riscv64") as caught:
        host_target("debian-12", "riscv64")
    assert caught.value.user_error


def test_the_default_kernel_follows_the_target_and_a_foreign_kernel_is_refused() -> None:
    arm = host_target("debian-12", "aarch64")
    assert kernel_package(_blueprint(None), arm) == "linux-image-arm64"
    assert kernel_package(_blueprint("linux-image-cloud-arm64"), arm) == "linux-image-cloud-arm64"
    with pytest.raises(ComposeError, match="is an amd64 kernel; the image is built for arm64"):
        kernel_package(_blueprint("linux-image-cloud-amd64"), arm)


def test_an_arm64_image_carries_its_own_grub_and_lands_on_an_aarch64_ref() -> None:
    specs = plan(_blueprint(None), host_target("debian-12", "arm64"))
    bootstrap = specs[0].options
    assert bootstrap["architecture"] == "arm64"
    assert {"grub-efi-arm64-bin", "linux-image-arm64"} <= set(bootstrap["packages"])
    assert specs[-1].options["ref"] == "afield/edge/aarch64/stable"
    x86 = plan(_blueprint(None), host_target("debian-12", "x86_64"))[0].options["packages"]
    assert "grub-efi-arm64-bin" not in x86


def test_emulation_is_registered_once_from_the_qemu_user_static_config(tmp_path: Path) -> None:
    misc, configs = tmp_path / "binfmt_misc", tmp_path / "binfmt.d"
    misc.mkdir()
    configs.mkdir()
    (misc / "register").write_text("")
    with pytest.raises(ComposeError, match="needs qemu-user-static") as caught:
        ensure_emulation("arm64", misc=misc, configs=configs)
    assert caught.value.user_error
    (configs / "qemu-aarch64.conf").write_text(f"# comment\n{_REGISTRATION}\n")
    assert ensure_emulation("arm64", misc=misc, configs=configs)
    assert (misc / "register").read_text() == _REGISTRATION
    # Registered and enabled: nothing is written again.
    (misc / "register").write_text("")
    (misc / "qemu-aarch64").write_text("enabled\ninterpreter /usr/libexec/qemu-binfmt\n")
    assert ensure_emulation("arm64", misc=misc, configs=configs)
    assert (misc / "register").read_text() == ""
    # Registered but disabled: enabled again.
    (misc / "qemu-aarch64").write_text("disabled\n")
    ensure_emulation("arm64", misc=misc, configs=configs)
    assert (misc / "qemu-aarch64").read_text() == "1"


def test_the_builder_s_own_architecture_needs_no_emulation(tmp_path: Path) -> None:
    assert not ensure_emulation("amd64", misc=tmp_path, configs=tmp_path)
