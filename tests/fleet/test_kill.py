"""Killing the fleet manager mid-rollout loses nothing: ``afield serve`` is killed with SIGKILL
while the canary is in its health window, started again on the same SQLite file, and the
rollout goes on from where it was (the real CLI, the real runner thread, real time)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from afield.fleet.auth import create_token
from afield.fleet.db import Database
from afield.fleet.protocol import (
    DESIRED_PATH,
    ENROLL_PATH,
    STATUS_PATH,
    authorization,
    make_csr,
    new_device_key,
)

C1, C2 = "1" * 64, "2" * 64
POLICY = {"batches": [1, "100%"], "health_window": 1, "update_timeout": 600}


@contextmanager
def serve(db_url: str, log: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    argv = [sys.executable, "-m", "afield.cli", "serve", "--db", db_url, "--port", "0"]
    argv += ["--runner-interval", "0.2"]
    with log.open("a") as errors:
        process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "serving on http://127.0.0.1:" in line, line + log.read_text()
        yield line.rsplit(" ", 1)[1].strip(), process
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


class Device:
    """A device speaking the device API with real time."""

    def __init__(self, url: str, token: str) -> None:
        self.key = new_device_key()
        answer = httpx.post(f"{url}{ENROLL_PATH}", json={"token": token, "csr": make_csr(self.key)})
        assert answer.status_code == 201, answer.text
        self.id: str = answer.json()["device_id"]

    def send(self, url: str, method: str, target: str, body: bytes = b"") -> httpx.Response:
        auth = authorization(self.key, self.id, method, target, body, time.time())
        headers = {"Authorization": auth, "Content-Type": "application/json"}
        return httpx.request(method, f"{url}{target}", content=body, headers=headers)

    def report(self, url: str, **report: Any) -> None:
        answer = self.send(url, "POST", STATUS_PATH, json.dumps(report).encode())
        assert answer.status_code == 200, answer.text

    def runs(self, url: str, commit: str, version: str) -> None:
        health = {"ok": True, "commit": commit}
        self.report(url, booted={"version": version, "commit": commit}, health=health)


def _until(check: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not reached in {timeout} s: {check}")


def test_a_killed_server_continues_the_rollout_where_it_was(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'fleet.db'}"
    database = Database(db_url)
    database.upgrade()
    token = create_token(database, "ops", "admin")
    database.close()
    headers = {"Authorization": f"Bearer {token}"}
    log = tmp_path / "serve.log"
    with serve(db_url, log) as (url, process):
        admin = httpx.Client(base_url=url, headers=headers)
        for version, commit in (("1.0.0", C1), ("1.1.0", C2)):
            release = {"image": "gw", "arch": "x86_64", "version": version, "commit": commit}
            assert admin.post("/api/v1/releases", json=release).status_code == 201
        assert admin.post("/api/v1/fleets", json={"name": "f", "policy": POLICY}).is_success
        tokens = admin.post("/api/v1/enrollment-tokens", json={"count": 3}).json()["tokens"]
        devices = [Device(url, t) for t in tokens]
        for device in devices:
            device.runs(url, C1, "1.0.0")
        release = {"image": "gw", "arch": "x86_64", "version": "1.1.0"}
        started = admin.post("/api/v1/fleets/f/rollouts", json={"release": release}).json()
        rollout = f"/api/v1/rollouts/{started['id']}"
        _until(lambda: admin.get(rollout).json()["progress"]["assigned"] == 1)
        canary = next(
            d for d in devices if admin.get(f"/api/v1/devices/{d.id}").json()["desired"] is not None
        )
        canary.runs(url, C2, "1.1.0")
        admin.close()
        process.send_signal(signal.SIGKILL)  # mid health window: no shutdown at all
        process.wait(timeout=10)
    with serve(db_url, log) as (url, _):
        admin = httpx.Client(base_url=url, headers=headers)
        before = admin.get(rollout).json()
        assert (before["status"], before["progress"]["assigned"]) == ("running", 1), before
        time.sleep(1.1)  # past the health window
        assert canary.send(url, "GET", DESIRED_PATH).status_code == 200  # checks in
        after = _until(lambda: (r := admin.get(rollout).json())["batch"] == 1 and r)
        assert after["progress"]["assigned"] == 3, after
        assert after["progress"]["succeeded"] == 1, after
        kinds = [e["kind"] for e in admin.get("/api/v1/events").json()["data"]]
        assert kinds.count("rollout.assign") == 2 and "device.enrolled" in kinds
        admin.close()
