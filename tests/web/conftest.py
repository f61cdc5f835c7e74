"""Fixtures of the dashboard's tests: a served fleet manager per test (``web``), and a real browser
for the whole session (``browser``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.web import Site, site


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Site]:
    """A fleet manager with its dashboard on 127.0.0.1, on a fresh SQLite file."""
    with site(tmp_path) as served:
        yield served


CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Debian's chromium driven by Playwright (no browser download: ``executable_path``)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make bootstrap` installs Debian's chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield launched
        launched.close()
