"""Simulated fleets (:mod:`afield.sim`, ``afield sim``) against a real fleet manager: uvicorn on
127.0.0.1 with an SQLite file and its rollout runner ticking every 0.2 s. The devices enroll,
report and poll through the real device API; rollouts run from the canary to the last batch, or
stop at a canary whose health checks fail. Polls are frequent and health windows short, since
a device succeeds only once it checks in after its window (and a poll records a check-in at
most every 5 s)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from afield._serving import running
from afield.cli.sim import sim_command
from afield.errors import FleetError
from afield.fleet.app import FleetSettings, create_app
from afield.fleet.auth import create_token
from afield.fleet.protocol import DesiredRelease, VersionRef
from afield.sim import SimConfig, SimConfigError, commit_of
from afield.sim.fleet import _Device, _outcome
from tests.sim import simulating, until

POLICY = {
    "batches": [1, "50%", "100%"],
    "health_window": 1,
    "update_timeout": 60,
    "failure_threshold": 0.0,
}
TOKEN = "afield_not-a-real-token"  # noqa: S105  # settings that never reach a server
FAST = {"download_seconds": 0.2, "reboot_seconds": 0.1, "jitter": 0.2}


@dataclass(frozen=True)
class Served:
    url: str
    token: str
    admin: httpx.Client

    def config(self, **settings: Any) -> SimConfig:
        values: dict[str, Any] = {"devices": 20, "labels": {"site": "sim"}, **FAST, **settings}
        return SimConfig(server=self.url, admin_token=self.token, **values)

    def devices(self) -> list[dict[str, Any]]:
        response = self.admin.get("/api/v1/devices", params={"label": "site=sim", "limit": 500})
        assert response.status_code == 200, response.text
        data: list[dict[str, Any]] = response.json()["data"]
        return data

    def release(self, version: str) -> None:
        body = {"image": "gateway", "arch": "x86_64", "version": version}
        commit = commit_of("gateway", "x86_64", version)
        response = self.admin.post("/api/v1/releases", json={**body, "commit": commit})
        assert response.status_code == 201, response.text

    def rollout(self, version: str) -> int:
        if self.admin.get("/api/v1/fleets/sims").status_code == 404:
            fleet = {"name": "sims", "selector": "site=sim", "policy": POLICY}
            response = self.admin.post("/api/v1/fleets", json=fleet)
            assert response.status_code == 201, response.text
        release = {"image": "gateway", "arch": "x86_64", "version": version}
        response = self.admin.post("/api/v1/fleets/sims/rollouts", json={"release": release})
        assert response.status_code == 201, response.text
        rollout_id: int = response.json()["id"]
        return rollout_id

    def status(self, rollout_id: int) -> dict[str, Any]:
        body: dict[str, Any] = self.admin.get(f"/api/v1/rollouts/{rollout_id}").json()
        return body

    def server_errors(self) -> list[str]:
        metrics = httpx.get(f"{self.url}/metrics").text
        return [
            line
            for line in metrics.splitlines()
            if line.startswith("afield_fleet_requests_total") and re.search(r'code="5\d\d"', line)
        ]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    settings = FleetSettings(
        db_url=f"sqlite:///{tmp_path / 'fleet.db'}", runner_interval=0.2, offline_after=30
    )
    app = create_app(settings)
    token = create_token(app.state.db, "ops", "admin")
    with (
        running(app) as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as admin,
    ):
        yield Served(url, token, admin)
    app.state.db.close()


# --- enrollment and status ------------------------------------------------------------------


def test_simulated_devices_enroll_report_and_show_up_online(served: Served) -> None:
    with simulating(served.config(poll_interval=0.3)) as fleet:

        def all_online() -> bool:
            devices = served.devices()
            return len(devices) == 20 and all(
                d["status"] == "Online" and d["current_version"] == "1.0.0" for d in devices
            )

        until("20 devices Online on 1.0.0", all_online, timeout=15)
        time.sleep(1)  # a few polls each
    devices = served.devices()
    assert {d["labels"]["site"] for d in devices} == {"sim"}
    assert sorted(d["name"] for d in devices) == [f"sim-{n:05d}" for n in range(20)]
    summary = fleet.summary()
    assert summary.errors == 0, summary.error_samples
    assert summary.enrolled == 20 and summary.versions == {"1.0.0": 20}
    assert summary.requests_by_kind["enroll"] == 20
    assert summary.requests_by_kind["status"] == 20
    assert summary.requests_by_kind["desired"] >= 40
    assert summary.p50_ms is not None and summary.p99_ms is not None
    assert served.server_errors() == []


# --- rollouts ---------------------------------------------------------------------------------


def test_a_rollout_reaches_every_simulated_device_batch_by_batch(served: Served) -> None:
    served.release("1.0.0")
    served.release("1.1.0")
    with simulating(served.config(wait=2)) as fleet:
        until("20 devices report", lambda: len(served.devices()) == 20, timeout=15)
        rollout_id = served.rollout("1.1.0")
        until(
            "the rollout completes",
            lambda: served.status(rollout_id)["status"] == "completed",
            timeout=45,
        )
    shown = served.status(rollout_id)
    assert shown["progress"]["succeeded"] == 20, shown
    assert {d["current_version"] for d in served.devices()} == {"1.1.0"}
    summary = fleet.summary()
    assert summary.versions == {"1.1.0": 20}
    assert summary.events == {"updated": 20}
    assert summary.errors == 0, summary.error_samples
    assert summary.requests_by_kind["wait"] > 0  # long-polls held by the server
    assert served.server_errors() == []


def test_a_release_that_fails_health_pauses_after_the_canary_and_nobody_else_updates(
    served: Served,
) -> None:
    # Threat: a broken release spreads over the fleet before anyone notices.
    served.release("1.0.0")
    served.release("1.2.0")
    config = served.config(poll_interval=0.3, fail_versions={"1.2.0"})
    with simulating(config) as fleet:
        until("20 devices report", lambda: len(served.devices()) == 20, timeout=15)
        rollout_id = served.rollout("1.2.0")
        until("the rollout pauses", lambda: served.status(rollout_id)["status"] == "paused")
        time.sleep(2)  # runner ticks and polls: nobody else is told to update
        shown = served.status(rollout_id)
        devices = served.devices()
    assert shown["status"] == "paused" and shown["cause"] == "failures", shown
    assert shown["progress"]["assigned"] == 1, shown
    (canary,) = [d for d in devices if d["rollout"] is not None]
    assert canary["rollout"]["phase"] in ("health_failed", "rolled_back")
    assert canary["id"] in shown["reason"]
    assert {d["current_version"] for d in devices} == {"1.0.0"}
    summary = fleet.summary()
    # The canary failed once, fell back, and refused the release from then on.
    assert summary.events == {"health_failed": 1, "rolled_back": 1}
    assert summary.versions == {"1.0.0": 20}
    assert summary.errors == 0, summary.error_samples
    assert served.server_errors() == []


# --- decisions ------------------------------------------------------------------------------


def test_failures_are_the_same_for_the_same_seed() -> None:
    release = DesiredRelease(
        image="gateway", arch="x86_64", version="2.0.0", commit=commit_of("g", "x", "2.0.0")
    )
    start = VersionRef(version="1.0.0", commit=commit_of("g", "x", "1.0.0"))

    def outcomes(seed: int) -> list[str]:
        config = SimConfig(server="http://x", admin_token=TOKEN, failure_rate=0.3, seed=seed)
        devices = [_Device(n, f"sim-{n:05d}", None, start) for n in range(400)]  # type: ignore[arg-type]
        return [_outcome(config, d, release) for d in devices]

    first = outcomes(7)
    assert first == outcomes(7)
    assert first != outcomes(8)
    assert 80 <= first.count("rollback") + first.count("health") <= 160
    assert first.count("rollback") > 20 and first.count("health") > 20


def test_a_bad_setting_names_every_problem() -> None:
    with pytest.raises(SimConfigError) as caught:
        SimConfig(server="ftp://x", admin_token=TOKEN, devices=0, failure_rate=2, commit="abc")
    where = [p.location for p in caught.value.problems]
    assert where == ["server", "devices", "commit", "failure_rate"]


# --- the command ----------------------------------------------------------------------------


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command("sim")(sim_command)

    @app.callback()
    def root() -> None:
        """The test's stand-in for the afield app."""

    return app


def test_afield_sim_runs_a_fleet_for_a_duration_and_prints_a_json_summary(
    served: Served,
) -> None:
    args = ["sim", "--server", served.url, "--token", served.token, "--devices", "5"]
    args += ["--label", "site=sim", "--poll-interval", "0.2", "--duration", "2", "--json"]
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["devices"] == 5 and summary["enrolled"] == 5
    assert summary["versions"] == {"1.0.0": 5}
    assert summary["errors"] == 0
    assert summary["requests_by_kind"]["desired"] >= 10
    assert summary["p50_ms"] > 0 and summary["p99_ms"] >= summary["p50_ms"]
    assert len(served.devices()) == 5


def test_afield_sim_prints_a_readable_summary(served: Served) -> None:
    args = ["sim", "--server", served.url, "--token", served.token, "--devices", "3"]
    args += ["--label", "site=sim", "--version", "2.0.0", "--poll-interval", "0.2"]
    result = CliRunner().invoke(_cli(), [*args, "--duration", "1"])
    assert result.exit_code == 0, result.output
    assert "3 enrolled of 3" in result.stdout
    assert "2.0.0: 3" in result.stdout
    assert re.search(r"p50 [\d.]+ ms, p99 [\d.]+ ms", result.stdout)


def test_afield_sim_refuses_both_polling_and_long_polling(served: Served) -> None:
    args = ["sim", "--server", served.url, "--token", served.token, "--poll-interval", "1"]
    result = CliRunner().invoke(_cli(), [*args, "--wait", "5"])
    assert isinstance(result.exception, FleetError) and result.exception.user_error
    assert "--poll-interval and --wait" in str(result.exception)
    assert served.devices() == []


def test_afield_sim_with_an_unknown_token_fails_naming_the_refusal(served: Served) -> None:
    args = ["sim", "--server", served.url, "--token", "afield_" + "x" * 43, "--duration", "1"]
    result = CliRunner().invoke(_cli(), args)
    assert isinstance(result.exception, FleetError) and result.exception.user_error
    assert "HTTP 401" in str(result.exception)
