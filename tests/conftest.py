"""Shared fixtures: where composes cache packages, and one composed image per test session.

Composing an image takes minutes, so the slow tests share one: ``composed`` composes
``examples/gateway.toml`` once per session into a session repository. Downloaded packages are
kept in ``$AFIELD_TEST_CACHE`` (default ``~/.cache/afield-tests``) across sessions, so only the
first run on a machine downloads; stage checkpoints and results live in a per-session directory
so every session composes from scratch with the code under test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from afield import blueprint as bp
from afield.compose import ComposeResult, compose

PROJECT = Path(__file__).resolve().parents[1]
# Lines tests want in the terminal summary of every run (e.g. the power-loss campaign's counts).
REPORTS: list[str] = []
EXAMPLE = PROJECT / "examples" / "gateway.toml"


def debs_cache() -> Path:
    """The .deb cache shared by every test session on this machine."""
    base = Path(os.environ.get("AFIELD_TEST_CACHE", Path.home() / ".cache" / "afield-tests"))
    path = base / "debs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def fresh_cache(directory: Path) -> Path:
    """A compose cache with no stages yet, whose debs/ and wheels/ link to the shared caches."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("debs", "wheels"):
        target = directory / name
        if not target.exists():
            target.mkdir()
            for item in (debs_cache().parent / name).glob("*"):
                if item.is_file():
                    os.link(item, target / item.name)
    return directory


def keep_debs(cache: Path) -> None:
    """Copy packages and wheels a compose downloaded into the shared caches for later sessions."""
    for name in ("debs", "wheels"):
        shared = debs_cache().parent / name
        shared.mkdir(parents=True, exist_ok=True)
        for item in (cache / name).glob("*"):
            if item.is_file() and not (shared / item.name).exists():
                shutil.copy2(item, shared / item.name)


def afield(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the real ``afield`` command line in a subprocess."""
    result = subprocess.run(
        [sys.executable, "-m", "afield.cli", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"afield {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@contextmanager
def afield_server(log: Path, *args: str) -> Iterator[str]:
    """Run ``afield <args> --port 0`` (a server) until the block ends; yield the URL it prints
    ("... serving on http://127.0.0.1:PORT"); its stderr goes to ``log``."""
    with (
        log.open("w") as errors,
        subprocess.Popen(
            [sys.executable, "-m", "afield.cli", *args, "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        ) as server,
    ):
        try:
            assert server.stdout is not None
            line = server.stdout.readline()
            assert "serving on http://127.0.0.1:" in line, line + log.read_text()
            yield line.rsplit(" ", 1)[1].strip()
        finally:
            server.terminate()
            server.wait(timeout=10)


@dataclass(frozen=True)
class Composed:
    """The session's composed example image."""

    repo: Path
    cache: Path
    blueprint: Path
    result: ComposeResult


@pytest.fixture(scope="session")
def composed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Composed]:
    """``examples/gateway.toml`` composed once for the whole session."""
    base = tmp_path_factory.mktemp("composed")
    cache = fresh_cache(base / "cache")
    blueprint_file = base / "gateway.toml"
    shutil.copy(EXAMPLE, blueprint_file)
    result = compose(bp.load(blueprint_file), base / "repo", cache_dir=cache)
    keep_debs(cache)
    yield Composed(repo=base / "repo", cache=cache, blueprint=blueprint_file, result=result)
    _unmount_leftovers(base)


def _unmount_leftovers(base: Path) -> None:
    for line in Path("/proc/mounts").read_text().splitlines():
        mountpoint = line.split()[1]
        if mountpoint.startswith(str(base)):
            subprocess.run(["umount", "--lazy", mountpoint], check=False)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print what tests left in REPORTS, whatever the capture mode."""
    if REPORTS:
        terminalreporter.section("afield reports")
        for line in REPORTS:
            terminalreporter.write_line(line)


# --- container images and a registry (tests/containers.py), shared by compose and workloads ---


@pytest.fixture(scope="session")
def busybox_image() -> Iterator[str]:
    """A one-layer busybox image in the default podman storage, built once per session."""
    from tests.containers import build_busybox_image, remove_image

    tag = build_busybox_image(f"localhost/afield-test/busybox:{os.getpid()}")
    yield tag
    remove_image(tag)


@pytest.fixture(scope="session")
def local_registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A registry on 127.0.0.1 (``127.0.0.1:PORT``, plain HTTP) for the whole session."""
    from tests.containers import local_registry

    with local_registry(tmp_path_factory.mktemp("registry")) as address:
        yield address
