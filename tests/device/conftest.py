"""Device fixtures: a repository of small test images and freshly installed devices."""

from __future__ import annotations

import base64
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from afield.device.bootseq import boot_once
from afield.device.lifecycle import Device
from afield.release import init_repository, publish
from afield.trust import Keyring
from tests.device.images import commit_image


@dataclass(frozen=True)
class Images:
    """A repository with the images the device tests stage."""

    repo: Path
    v1: str
    v2: str
    broken: str
    no_kernel: str
    other_os: str
    other_arch: str


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    """Commit the test images once per session."""
    work = tmp_path_factory.mktemp("images")
    repo = work / "repo"
    return Images(
        repo=repo,
        v1=commit_image(repo, work, version="1.0.0", etc={"app.conf": "level = 1\n"}),
        v2=commit_image(repo, work, version="2.0.0", etc={"app.conf": "level = 2\n"}),
        broken=commit_image(repo, work, version="3.0.0", healthy=False),
        no_kernel=commit_image(repo, work, version="4.0.0", kernel=None),
        other_os=commit_image(repo, work, version="5.0.0", image="camera"),
        other_arch=commit_image(repo, work, version="6.0.0", arch="aarch64"),
    )


NewDevice = Callable[[], Device]


@pytest.fixture
def new_device(tmp_path: Path, images: Images) -> NewDevice:
    """Make a device with v1 installed and booted once (healthy)."""
    counter = iter(range(1000))

    def make() -> Device:
        device = Device.init(tmp_path / f"sysroot{next(counter)}", "gateway")
        device.install(images.repo, images.v1)
        result = boot_once(device)
        assert result.healthy, result.report
        return device

    return make


@dataclass(frozen=True)
class Site:
    """An afield repository with images 1.0.0 and 2.0.0 committed (not yet published)."""

    tmp: Path
    directory: Path
    keyring: Keyring
    v1: str
    v2: str

    def publish(self, *commits: str, deltas: int = 3) -> None:
        for commit in commits:
            publish(self.directory, self.keyring, commit, deltas=deltas)

    def device(self, installed: str, *, trusted: bool = True, name: str = "sysroot") -> Device:
        """A device with ``installed`` deployed and booted once (healthy)."""
        root = self.directory / "tuf" / "root.json" if trusted else None
        device = Device.init(self.tmp / name, "gateway", trust_root=root)
        device.install(self.directory, installed)
        assert boot_once(device).healthy
        return device


def _site(tmp_path: Path, new_files: dict[str, str]) -> Site:
    directory = tmp_path / "server"
    work = tmp_path / "work"
    v1 = commit_image(directory, work, version="1.0.0", etc={"app.conf": "level = 1\n"})
    v2 = commit_image(
        directory, work, version="2.0.0", etc={"app.conf": "level = 2\n", **new_files}
    )
    keyring = Keyring.generate(tmp_path / "keys")
    init_repository(directory, keyring)
    return Site(tmp_path, directory, keyring, v1, v2)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    """Releases 1.0.0 and 2.0.0 that differ in a few bytes."""
    return _site(tmp_path, {})


BLOB_BYTES = 600_000


@pytest.fixture
def big_site(tmp_path: Path) -> Site:
    """Like ``site``, but 2.0.0 adds ~600 kB that does not compress: transfers take a while."""
    noise = random.Random(2026).randbytes(BLOB_BYTES * 3 // 4)  # noqa: S311 (test data)
    return _site(tmp_path, {"blob.txt": base64.b64encode(noise).decode()})
