"""The dashboard in a real browser (Debian's chromium through Playwright) over a live rollout.

A simulated fleet (:mod:`afield.sim`: devices that enroll, poll and report through the real
device API) runs against a fleet manager whose rollout runner ticks on its own, on the real
clock, and which serves a real repository with two signed releases (so the releases page shows
their package diff and delta). An admin logs in through the form and watches a rollout's page
while the rollout moves: the canary succeeds, the last batch follows, and the page changes in
place (server-sent events; a mark set in the page's JavaScript survives, so nothing reloaded
it). A device that joins late fails its health checks on the new release: the rollout pauses
itself and the page says which device and which check. A viewer sees no buttons, and the server
refuses the viewer's resume even when it is forged with the viewer's own CSRF field. The admin
resumes the rollout from the page.

A second test turns JavaScript off: the pages still read (the chart's numbers are a table) and
the forms still work, as plain page loads.

Screenshots of the main pages go to ``$AFIELD_SCREENSHOTS`` when set (``docs/dashboard`` in
the repository holds the ones the README shows), else to the test's temporary directory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from afield.fleet.models import (
    Device,
    utcnow,
)
from afield.fleet.rollout import RolloutState, Status
from afield.release import init_repository, publish
from afield.sim import SimConfig
from afield.trust import Keyring
from tests.sim import simulating, until
from tests.web import NOW, Site, image_commit, rollout_rows, site

pytestmark = pytest.mark.browser

POLICY = {
    "batches": [1, "100%"],
    "health_window": 1,
    "update_timeout": 120,
    # One late device of the last batch fails: resuming accepts it, and the batch still passes.
    "success_threshold": 0.5,
}
FAST = {"poll_interval": 0.3, "download_seconds": 0.2, "reboot_seconds": 0.1, "jitter": 0.2}
WAIT_MS = 60_000


V1 = {"base-files": "12.4", "openssl": "3.0.11", "curl": "7.88.1", "legacy-tool": "0.9"}
V2 = {**{k: v for k, v in V1.items() if k != "legacy-tool"}, "openssl": "3.0.13", "jq": "1.6"}


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[Site, httpx.Client, dict[str, str]]]:
    """A fleet manager on the real clock, its runner ticking, serving a repository with two
    published releases of gateway (1.0.0 and 2.0.0, a delta between them); an admin API client;
    the releases' commits."""
    directory = tmp_path / "repo"
    keyring = Keyring.generate(tmp_path / "keys")
    init_repository(directory, keyring)
    commits = {
        "1.0.0": image_commit(directory, tmp_path, "1.0.0", V1, 118_400_000, "gateway"),
        "2.0.0": image_commit(directory, tmp_path, "2.0.0", V2, 121_900_000, "gateway"),
    }
    for commit in commits.values():
        publish(directory, keyring, commit)
    with (
        site(tmp_path, clock=utcnow, runner_interval=0.3, repo_dir=directory) as served,
        httpx.Client(
            base_url=served.url, headers={"Authorization": f"Bearer {served.admin_token}"}
        ) as api,
    ):
        # The fleet manager registered both releases from the repository's TUF targets.
        listed = api.get("/api/v1/releases").json()["data"]
        assert {r["version"]: r["commit"] for r in listed} == commits
        fleet = {"name": "berlin", "selector": "site=berlin", "policy": POLICY}
        assert api.post("/api/v1/fleets", json=fleet).status_code == 201
        yield served, api, commits


def _config(web: Site, commits: dict[str, str], **settings: Any) -> SimConfig:
    values: dict[str, Any] = {
        "labels": {"site": "berlin"},
        "version": "1.0.0",
        "commit": commits["1.0.0"],
        **FAST,
        **settings,
    }
    return SimConfig(server=web.url, admin_token=web.admin_token, **values)


def _shots() -> Path | None:
    value = os.environ.get("AFIELD_SCREENSHOTS")
    return Path(value) if value else None


def _log_in(browser: Browser, web: Site, token: str, target: str) -> Page:
    page = browser.new_context(viewport={"width": 1360, "height": 900}).new_page()
    page.goto(web.url + target)
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.fill("#token", token)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(web.url + target)
    return page


def _status(api: httpx.Client, rollout_id: int) -> str:
    status: str = api.get(f"/api/v1/rollouts/{rollout_id}").json()["status"]
    return status


def test_an_operator_watches_a_rollout_advance_pause_and_resume(
    browser: Browser, live: tuple[Site, httpx.Client, dict[str, str]], tmp_path: Path
) -> None:
    web, api, commits = live
    shots = _shots() or tmp_path
    with simulating(_config(web, commits, devices=4)):
        until("4 devices report", lambda: len(api.get("/api/v1/devices").json()["data"]) == 4)
        answer = api.post(
            "/api/v1/fleets/berlin/rollouts",
            json={"release": {"image": "gateway", "arch": "x86_64", "version": "2.0.0"}},
        )
        assert answer.status_code == 201, answer.text
        rollout_id = answer.json()["id"]
        admin = _log_in(browser, web, web.admin_token, f"/rollouts/{rollout_id}")
        admin.evaluate("window.afieldMark = 'the same page'")
        status = admin.locator("#rollout-status")
        expect(admin.locator(".live")).to_have_text("live", timeout=WAIT_MS)
        expect(status).to_have_text("completed", timeout=WAIT_MS)
        expect(admin.locator("#rollout-batch")).to_have_text("batch 2 of 2")
        assert admin.evaluate("window.afieldMark") == "the same page"

        late = _config(web, commits, devices=1, name_prefix="late", fail_versions={"2.0.0"})
        with simulating(late):
            expect(status).to_have_text("paused", timeout=WAIT_MS)
            failed = admin.locator("#failed-devices")
            expect(failed).to_contain_text("90-sim-check.sh", timeout=WAIT_MS)
            assert admin.evaluate("window.afieldMark") == "the same page"
            admin.screenshot(path=str(shots / "rollout.png"), full_page=True)

            viewer = _log_in(browser, web, web.viewer_token, f"/rollouts/{rollout_id}")
            expect(viewer.locator("#rollout-status")).to_have_text("paused")
            expect(viewer.get_by_role("button", name="Resume")).to_have_count(0)
            expect(viewer.get_by_role("button", name="Abort")).to_have_count(0)
            csrf = viewer.locator("input[name=csrf]").first.get_attribute("value")
            forged = viewer.request.post(
                f"{web.url}/rollouts/{rollout_id}/resume", form={"csrf": csrf or ""}
            )
            assert forged.status == 403
            assert "viewer" in forged.text()
            assert _status(api, rollout_id) == "paused"

            admin.get_by_role("button", name="Resume").click()
            expect(admin.locator("#rollout-status")).to_have_text(
                re.compile("running|completed"), timeout=WAIT_MS
            )
            assert _status(api, rollout_id) in ("running", "completed")
            events = api.get("/api/v1/events", params={"kind": "rollout.resume"}).json()["data"]
            assert [e["actor"] for e in events] == ["admin:ops"]

        for name, path in (
            ("overview", "/"),
            ("devices", "/devices"),
            ("events", "/events"),
            ("releases", "/releases"),
        ):
            admin.goto(web.url + path)
            expect(admin.locator("main h1")).to_be_visible()
            admin.screenshot(path=str(shots / f"{name}.png"), full_page=name != "events")
        device_id = api.get("/api/v1/devices").json()["data"][0]["id"]
        admin.goto(f"{web.url}/devices/{device_id}")
        expect(admin.locator("main h1")).to_contain_text(device_id)
        admin.screenshot(path=str(shots / "device.png"), full_page=True)
    for name in ("overview", "devices", "device", "releases", "rollout", "events"):
        assert (shots / f"{name}.png").stat().st_size > 10_000, name


def test_the_pages_read_and_the_forms_work_without_javascript(browser: Browser, web: Site) -> None:
    paused = RolloutState(status=Status.PAUSED, batch=0, reason="1 device rolled back: gw-1")
    web.add(
        *rollout_rows(paused),
        Device(id="gw-1", labels={"site": "berlin"}, last_seen=NOW, current_version="1.0"),
    )
    page = browser.new_context(java_script_enabled=False).new_page()
    page.goto(web.url + "/rollouts/1")
    page.fill("#token", web.admin_token)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#rollout-status")).to_have_text("paused")
    expect(page.locator("#rollout-reason")).to_contain_text("gw-1")
    page.get_by_role("button", name="Resume").click()  # a plain form: a full page load
    expect(page.locator("#rollout-status")).to_have_text("running")
    page.goto(web.url + "/")
    expect(page.locator("table.versions")).to_contain_text("1.0")  # the chart's numbers
    page.goto(web.url + "/devices?label=site%3Dberlin")
    expect(page.locator("main")).to_contain_text("gw-1")
