"""Boot test images, composed once per session, and a signed repository serving them."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from afield import blueprint as bp
from afield.compose import compose
from afield.disk.qemu import Machine
from afield.release import init_repository, publish
from afield.trust import Keyring
from tests.conftest import Composed, debs_cache, fresh_cache
from tests.disk import boot_blueprint


@dataclass(frozen=True)
class BootImages:
    """x86_64 images in one afield repository: 1.0.0 and 2.0.0 published, a broken 2.0.1 not."""

    repo: Path
    v1: str
    v2: str
    broken: str

    @property
    def trust_root(self) -> Path:
        return self.repo / "tuf" / "root.json"


def _compose(
    text: str, name: str, repo: Path, cache: Path, work: Path, arch: str | None = None
) -> str:
    path = work / f"{name}.toml"
    path.write_text(text)
    return compose(bp.load(path), repo, cache_dir=cache, arch=arch).commit


@pytest.fixture(scope="session")
def boot_images(composed: Composed, tmp_path_factory: pytest.TempPathFactory) -> BootImages:
    """Compose the three x86_64 boot images from the session's cache (the bootstrap and kernel
    checkpoints of ``composed`` are theirs too) and publish 1.0.0 and 2.0.0."""
    work = tmp_path_factory.mktemp("boot-images")
    repo = work / "repo"
    v1 = _compose(boot_blueprint("1.0.0"), "v1", repo, composed.cache, work)
    v2 = _compose(boot_blueprint("2.0.0"), "v2", repo, composed.cache, work)
    broken = _compose(boot_blueprint("2.0.1", broken=True), "broken", repo, composed.cache, work)
    keyring = Keyring.generate(work / "keys")
    init_repository(repo, keyring)
    publish(repo, keyring, v1)
    publish(repo, keyring, v2)
    return BootImages(repo=repo, v1=v1, v2=v2, broken=broken)


@dataclass(frozen=True)
class Arm64Image:
    """An aarch64 image, with the DeviceTree of QEMU's virt machine, in an afield repository."""

    repo: Path
    commit: str
    devicetree: bytes


@pytest.fixture(scope="session")
def arm64_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Arm64Image]:
    """The aarch64 boot image, composed through qemu-user-static.

    Its stage cache lives beside the shared .deb cache, so only a machine's first session pays
    for the emulated package scripts and initramfs; stage ids hash the stages' code, so a
    changed stage still runs again.
    """
    work = tmp_path_factory.mktemp("arm64")
    cache = fresh_cache(debs_cache().parent / "arm64")
    repo = work / "repo"
    # The image carries the DeviceTree of the machine it boots on, as a board's image would.
    Machine(disk=work / "unused.img", arch="aarch64", firmware="uefi").dump_devicetree(
        work / "qemu-virt.dtb"
    )
    text = boot_blueprint("1.0.0", arch="aarch64", devicetree="qemu-virt.dtb")
    # Its packages stay in its own cache: x86_64 composes would only copy them around.
    commit = _compose(text, "arm64", repo, cache, work, "aarch64")
    yield Arm64Image(repo=repo, commit=commit, devicetree=(work / "qemu-virt.dtb").read_bytes())
    shutil.rmtree(work, ignore_errors=True)
