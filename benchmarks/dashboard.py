"""Benchmark the dashboard's pages on a fleet of 100,000 devices (SQLite), against the JSON API.

The fleet, built with bulk ``INSERT``s into a fresh SQLite file under ``/var/tmp``: 100,000
devices with four labels (ten sites, two tiers, fifty racks, two hardware models), a status
report each (health, update, two applications), versions 1.0.0 / 1.1.0 / 1.2.0, last check-ins
from seconds to weeks ago (2% never), some updating, degraded, rolled back or with an update
staged; three releases, a fleet, a completed and a running rollout (a fifth of the devices in
it, by batch); an enrollment token per device and 10,000 events about devices.

The fleet manager's app (:func:`afield.fleet.app.create_app`, the dashboard installed, the
clock fixed) is called in this process through :class:`starlette.testclient.TestClient`,
logged in through the login form. Each figure is the median of ``--repeat`` requests
(:func:`time.perf_counter` around the request: routing, the queries, the template, no network):

* the dashboard's pages: ``/devices`` (first page of 50), a deep page (``after=`` the middle
  id), filtered pages (``status=Offline``, ``label=site=oslo``, ``seen=!1d``, the rarer
  ``status=RolledBack`` (1%) and label ``site=oslo,rack=r7`` (0.2% of the fleet), and
  ``version=1.1.0``), one device's page, and the overview ``/``;
* the baseline, same run: ``GET /api/v1/devices?limit=50`` with the same filter (the API the
  page replaces; it has no ``seen`` or ``version`` filter, so those rows compare with the
  unfiltered API) and ``GET /api/v1/devices/{id}``; ``page / API`` is what the page costs
  over the JSON;
* the goal: 200 ms a page (``page / goal``);
* for orientation, what a total would cost: ``SELECT count(*)`` with each filter (the list
  shows none), and the ``DISTINCT`` of versions the filter form suggests.

``.venv/bin/python benchmarks/dashboard.py [--devices N] [--repeat N] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from rich.console import Console
from rich.table import Table
from sqlalchemy import Select, func, insert, select
from sqlalchemy.orm import Session

from afield.fleet.api.devices import label_filter
from afield.fleet.app import FleetSettings, create_app
from afield.fleet.auth import create_token
from afield.fleet.db import Database
from afield.fleet.models import (
    Device,
    EnrollmentToken,
    Event,
    Fleet,
    Release,
    Rollout,
    state_to_json,
    status_expression,
)
from afield.fleet.rollout import RolloutState, Status
from afield.web.devices import PAGE

GOAL_MS = 200.0
NOW = datetime.datetime(2026, 12, 3, 12, 0, tzinfo=datetime.UTC)
OFFLINE_AFTER = 300.0
SITES = (
    "berlin",
    "paris",
    "oslo",
    "madrid",
    "rome",
    "vienna",
    "prague",
    "lisbon",
    "dublin",
    "riga",
)
VERSIONS = ("1.0.0", "1.1.0", "1.2.0")
CHUNK = 5000
EVENTS = 10_000


def _commit(version: str) -> str:
    return hashlib.sha256(f"gw/x86_64/{version}".encode()).hexdigest()


def device_id(n: int) -> str:
    """The ``n``th device's id: ``dev-`` and 32 hex digits, in no order (as enrollment makes)."""
    return "dev-" + hashlib.sha256(n.to_bytes(8, "big")).hexdigest()[:32]


def _device(n: int, rollout_id: int, release_id: int) -> dict[str, Any]:
    """The ``n``th device's row (deterministic; see the module docstring)."""
    bucket = n % 100
    version = VERSIONS[0] if bucket < 30 else VERSIONS[1] if bucket < 90 else VERSIONS[2]
    if n % 50 == 3:
        last_seen: datetime.datetime | None = None
    elif n % 20 == 1:
        last_seen = NOW - datetime.timedelta(days=1 + n % 20, seconds=n % 3600)
    elif n % 25 == 2:
        last_seen = NOW - datetime.timedelta(minutes=10 + n % 600)
    else:
        last_seen = NOW - datetime.timedelta(seconds=n % 120)
    commit = _commit(version)
    healthy = bucket != 41 and bucket != 42
    report = {
        "image": "gw",
        "arch": "x86_64",
        "booted": {"version": version, "commit": commit},
        "pending": None,
        "rollback": {"version": "0.9.0", "commit": _commit("0.9.0")},
        "health": {
            "ok": healthy,
            "commit": commit,
            "failed": [] if healthy else ["disk-space"],
            "detail": "" if healthy else "disk-space: /var is 97% full",
        },
        "update": {"state": "idle", "version": None, "commit": None, "bytes_downloaded": 0,
                   "error": ""},
        "rolled_back": None,
        "applications": [
            {"name": "metrics", "digest": "sha256:" + "1" * 64, "state": "ready", "reason": ""},
            {"name": "proxy", "digest": "sha256:" + "2" * 64, "state": "running", "reason": ""},
        ],
    }  # fmt: skip
    in_rollout = n % 5 == 0
    return {
        "id": device_id(n),
        "name": f"gateway {n}",
        "labels": {
            "site": SITES[n % len(SITES)],
            "tier": "edge" if n % 4 else "core",
            "rack": f"r{n % 50}",
            "hw": "gw-100" if n % 3 else "gw-200",
        },
        "current_version": version,
        "current_commit": commit,
        "pending_version": VERSIONS[1] if bucket in (50, 51) else None,
        "rollback_version": "0.9.0",
        "last_seen": last_seen,
        "health_ok": healthy,
        "updating": bucket in (60, 61, 62),
        "rolled_back_at": NOW - datetime.timedelta(hours=2) if bucket == 77 else None,
        "rollout_id": rollout_id if in_rollout else None,
        "phase": ("succeeded", "booted", "updating", "pending")[n % 4] if in_rollout else "idle",
        "batch": n % 3 if in_rollout else None,
        "assigned_at": NOW - datetime.timedelta(hours=1) if in_rollout else None,
        "booted_at": None,
        "created": NOW - datetime.timedelta(days=60),
        "guid": None,
        "image": "gw",
        "arch": "x86_64",
        "public_key": "-----BEGIN PUBLIC KEY-----\n" + "A" * 120 + "\n-----END PUBLIC KEY-----\n",
        "cert_serial": hashlib.sha1(str(n).encode()).hexdigest(),  # noqa: S324  # an id
        "enrolled_at": NOW - datetime.timedelta(days=60),
        "desired_release_id": release_id,
        "report": report,
        "applications": None,
    }


def _chunks(count: int, make: Callable[[int], dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, count, CHUNK):
        yield [make(n) for n in range(start, min(count, start + CHUNK))]


def build(db: Database, devices: int) -> dict[str, Any]:
    """Fill ``db`` with the fleet of the module docstring; what the figures need of it."""
    started = time.perf_counter()
    with db.transaction() as session:
        releases = [
            Release(image="gw", arch="x86_64", version=v, commit=_commit(v), created=NOW)
            for v in VERSIONS
        ]
        fleet = Fleet(name="all", selector="", policy={}, created=NOW, updated=NOW)
        session.add_all([*releases, fleet])
        session.flush()
        completed = state_to_json(RolloutState(status=Status.COMPLETED, batch=3))
        batch = state_to_json(RolloutState(batch=1, batch_started_at=NOW.timestamp() - 600))
        done = Rollout(fleet_id=fleet.id, release_id=releases[1].id, status="completed",
                       state=completed, created=NOW, updated=NOW)  # fmt: skip
        running = Rollout(fleet_id=fleet.id, release_id=releases[2].id, status="running",
                          state=batch, created=NOW, updated=NOW)  # fmt: skip
        session.add_all([done, running])
        session.flush()
        rollout_id, release_id = running.id, releases[1].id
    with db.engine.begin() as connection:
        for rows in _chunks(devices, lambda n: _device(n, rollout_id, release_id)):
            connection.execute(insert(Device), rows)
        for rows in _chunks(
            devices,
            lambda n: {
                "token_sha256": hashlib.sha256(f"token {n}".encode()).hexdigest(),
                "guid": None,
                "labels": {},
                "created_by": "admin:ops",
                "created": NOW - datetime.timedelta(days=61),
                "expires": NOW - datetime.timedelta(days=54),
                "used_at": NOW - datetime.timedelta(days=60),
                "device_id": device_id(n),
            },
        ):
            connection.execute(insert(EnrollmentToken), rows)
        kinds = ("device.update_staged", "device.booted", "device.health_passed")
        for rows in _chunks(
            min(EVENTS, 3 * devices),
            lambda n: {
                "time": NOW - datetime.timedelta(seconds=EVENTS - n),
                "actor": f"device:{device_id(n // 3)}",
                "kind": kinds[n % 3],
                "subject": f"device:{device_id(n // 3)}",
                "details": {"version": "1.1.0", "commit": _commit("1.1.0"),
                            "bytes_downloaded": 48_500_000},
            },
        ):  # fmt: skip
            connection.execute(insert(Event), rows)
    ids = sorted(device_id(n) for n in range(devices))
    return {
        "build_s": round(time.perf_counter() - started, 1),
        "middle_id": ids[len(ids) // 2],
        "device_with_events": device_id(0),
    }


async def _median_ms(
    client: httpx.AsyncClient, url: str, repeat: int, headers: dict[str, str]
) -> float:
    answer = await client.get(url, headers=headers)  # warm: the first of a kind compiles SQL
    if answer.status_code >= 400:
        raise RuntimeError(f"{url}: {answer.status_code} {answer.text[:300]}")
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        answer = await client.get(url, headers=headers)
        times.append(time.perf_counter() - started)
        assert answer.status_code == 200, (url, answer.status_code)
    return statistics.median(times) * 1000


def _counts(db: Database, repeat: int) -> dict[str, float]:
    """Milliseconds of ``count(*)`` with each filter, and of the versions' ``DISTINCT``."""
    seen_cutoff = NOW - datetime.timedelta(days=1)
    filters: dict[str, list[Any]] = {
        "all": [],
        "status=Offline": [status_expression(NOW, OFFLINE_AFTER) == "Offline"],
        "label site=oslo": [label_filter("site", "oslo")],
        "seen=!1d": [(Device.last_seen.is_(None)) | (Device.last_seen < seen_cutoff)],
    }
    figures = {}
    with db.sessions() as session:
        for name, where in filters.items():
            query = select(func.count()).select_from(Device).where(*where)
            figures[f"count(*) {name}"] = _time_ms(session, query, repeat)
        distinct = select(Device.current_version).distinct()
        figures["DISTINCT current_version"] = _time_ms(session, distinct, repeat)
    return figures


def _time_ms(session: Session, statement: Select[Any], repeat: int) -> float:
    session.execute(statement).all()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        session.execute(statement).all()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 2)


@contextmanager
def _fleet(devices: int) -> Iterator[tuple[Database, dict[str, Any]]]:
    with tempfile.TemporaryDirectory(prefix="afield-bench-dashboard-", dir="/var/tmp") as scratch:
        db = Database(f"sqlite:///{Path(scratch) / 'fleet.db'}")
        try:
            db.upgrade()
            yield db, build(db, devices)
        finally:
            db.close()


def measure(devices: int, repeat: int) -> dict[str, Any]:
    """Every figure of the module docstring, on a fleet of ``devices``."""
    results: dict[str, Any] = {"devices": devices, "repeat": repeat, "machine": _machine()}
    with _fleet(devices) as (db, fleet):
        results["build_s"] = fleet["build_s"]
        api_token = create_token(db, "bench-api", "admin")
        web_token = create_token(db, "bench-web", "viewer")
        settings = FleetSettings(
            db_url=db.url, runner_interval=0, clock=lambda: NOW, offline_after=OFFLINE_AFTER
        )
        app = create_app(settings, db=db)
        api = {"Authorization": f"Bearer {api_token}"}
        middle, one = fleet["middle_id"], fleet["device_with_events"]
        limit = f"/api/v1/devices?limit={PAGE}"
        rows: list[tuple[str, str, str]] = [
            ("/devices, first page", "/devices", limit),
            ("deep page (after= the middle id)", f"/devices?after={middle}",
             f"{limit}&cursor={middle}"),
            ("status=Offline", "/devices?status=Offline", f"{limit}&status=Offline"),
            ("label site=oslo", "/devices?label=site%3Doslo", f"{limit}&label=site%3Doslo"),
            ("seen=!1d (API: no such filter)", "/devices?seen=%211d", limit),
            ("status=RolledBack (1%)", "/devices?status=RolledBack",
             f"{limit}&status=RolledBack"),
            ("version=1.1.0 (60%; API: no such filter)", "/devices?version=1.1.0", limit),
            ("rare label site=oslo,rack=r7", "/devices?label=site%3Doslo%2Crack%3Dr7",
             f"{limit}&label=site%3Doslo&label=rack%3Dr7"),
            ("one device's page", f"/devices/{one}", f"/api/v1/devices/{one}"),
        ]  # fmt: skip
        figures, overview = asyncio.run(_requests(app, web_token, api, rows, repeat))
        results["overview"] = overview
        results["figures"] = figures
        results["orientation_ms"] = _counts(db, repeat)
    return results


async def _requests(
    app: FastAPI,
    web_token: str,
    api_headers: dict[str, str],
    rows: list[tuple[str, str, str]],
    repeat: int,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Each row's page and API figures, and the overview's, through the ASGI app (lifespan
    started, logged in through the form)."""
    transport = httpx.ASGITransport(app=app)
    figures = []
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client,
    ):
        login = await client.post("/login", data={"token": web_token, "next": "/"})
        assert login.status_code == 303, login.text
        for name, page, baseline in rows:
            page_ms = await _median_ms(client, page, repeat, {})
            api_ms = await _median_ms(client, baseline, repeat, api_headers)
            figures.append(
                {
                    "figure": name,
                    "page": page,
                    "page_ms": round(page_ms, 1),
                    "api": baseline,
                    "api_ms": round(api_ms, 1),
                    "page_to_api": round(page_ms / api_ms, 2),
                    "page_to_goal": round(page_ms / GOAL_MS, 3),
                }
            )
        answer = await client.get("/")
        if answer.status_code != 200:
            return figures, {"status": answer.status_code, "page_ms": None}
        overview_ms = await _median_ms(client, "/", repeat, {})
    return figures, {
        "page_ms": round(overview_ms, 1),
        "page_to_goal": round(overview_ms / GOAL_MS, 3),
    }


def _machine() -> dict[str, Any]:
    import sqlalchemy

    return {
        "date": datetime.date.today().isoformat(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "sqlalchemy": sqlalchemy.__version__,
        "load_average": os.getloadavg(),
    }


def _print(results: dict[str, Any]) -> None:
    console = Console()
    table = Table(
        title=f"dashboard pages on {results['devices']:,} devices (SQLite), median of "
        f"{results['repeat']}"
    )
    for column in ("figure", "page", "API (JSON)", "page / API", "page / goal", "result"):
        table.add_column(column)
    for row in results["figures"]:
        verdict = "pass" if row["page_ms"] < GOAL_MS else "FAIL"
        table.add_row(
            row["figure"],
            f"{row['page_ms']} ms",
            f"{row['api_ms']} ms",
            str(row["page_to_api"]),
            str(row["page_to_goal"]),
            verdict,
        )
    overview = results["overview"]
    if overview.get("page_ms") is None:
        table.add_row("overview /", f"HTTP {overview['status']} (not written yet)", "-", "-",
                      "-", "-")  # fmt: skip
    else:
        verdict = "pass" if overview["page_ms"] < GOAL_MS else "FAIL"
        table.add_row("overview /", f"{overview['page_ms']} ms", "-", "-",
                      str(overview["page_to_goal"]), verdict)  # fmt: skip
    console.print(table)
    orientation = Table(title="for orientation: what a total or the version list would cost")
    orientation.add_column("query")
    orientation.add_column("median")
    for name, ms in results["orientation_ms"].items():
        orientation.add_row(name, f"{ms} ms")
    console.print(orientation)
    console.print(f"fleet built in {results['build_s']} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    results = measure(args.devices, args.repeat)
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    else:
        _print(results)


if __name__ == "__main__":
    main()
