"""Fixtures for workload tests: the session's busybox image, and pods that are cleaned up."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from afield.workloads.manifests import LABEL


@pytest.fixture
def app_image(busybox_image: str) -> str:
    """The session's busybox image (sh, httpd, wget, sleep), in the host's podman storage."""
    return busybox_image


@pytest.fixture
def pods() -> Iterator[None]:
    """Remove, after the test, every pod afield labelled (baked, applications)."""
    yield
    out = subprocess.run(
        ["podman", "pod", "ps", "--filter", f"label={LABEL}", "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    for pod in json.loads(out or "[]"):
        subprocess.run(
            ["podman", "pod", "rm", "--force", "--time", "0", pod["Id"]],
            capture_output=True,
            check=False,
        )
