"""Device fixtures: a repository of small test images and freshly installed devices."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from afield.device.bootseq import boot_once
from afield.device.lifecycle import Device
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
