"""The device API and the rollout runner against a real uvicorn on 127.0.0.1 and a real SQLite
file: enrollment with one-time tokens and the fleet CA, signed requests (and the attacks they
stop), the desired state with ETags and long-polls, status reports moving rollout phases, and
rollouts driven by the runner from the first canary to a pause on a rollback."""

from __future__ import annotations

import datetime
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from afield._serving import running
from afield.fleet.app import FleetSettings, create_app
from afield.fleet.auth import create_token
from afield.fleet.db import Database
from afield.fleet.enrollment import TokenIssuer
from afield.fleet.models import Device
from afield.fleet.protocol import (
    DESIRED_PATH,
    ENROLL_PATH,
    STATUS_PATH,
    authorization,
    make_csr,
    new_device_key,
)
from afield.fleet.rollout import step
from afield.fleet.runner import RolloutRunner
from tests.postgres import cluster, new_database

START = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)
C1, C2, C3 = "1" * 64, "2" * 64, "3" * 64
POLICY = {
    "batches": [1, "100%"],
    "success_threshold": 1.0,
    "failure_threshold": 0.0,
    "health_window": 60,
    "update_timeout": 600,
}


class Clock:
    """The server's time, moved by the tests."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += datetime.timedelta(seconds=seconds)


@dataclass
class Server:
    url: str
    db: Database
    clock: Clock
    runner: RolloutRunner
    admin: httpx.Client
    client: httpx.Client
    devices: list[SimDevice] = field(default_factory=list)

    def tokens(self, count: int = 1, **body: Any) -> list[str]:
        response = self.admin.post("/api/v1/enrollment-tokens", json={"count": count, **body})
        assert response.status_code == 201, response.text
        tokens: list[str] = response.json()["tokens"]
        return tokens

    def enroll(self, token: str | None = None, **fields: Any) -> SimDevice:
        key = new_device_key()
        body = {"token": token or self.tokens()[0], "csr": make_csr(key), **fields}
        response = self.client.post(ENROLL_PATH, json=body)
        assert response.status_code == 201, response.text
        device = SimDevice(self, key, response.json())
        self.devices.append(device)
        return device

    def event_kinds(self) -> list[str]:
        events = self.admin.get("/api/v1/events", params={"limit": 500}).json()["data"]
        return [e["kind"] for e in events]


@dataclass
class SimDevice:
    server: Server
    key: ec.EllipticCurvePrivateKey
    enrolled: dict[str, Any]
    etag: str | None = None

    @property
    def id(self) -> str:
        return str(self.enrolled["device_id"])

    def signed(
        self, method: str, target: str, body: bytes = b"", *, key: Any = None, **headers: str
    ) -> httpx.Response:
        now = self.server.clock().timestamp()
        auth = authorization(key or self.key, self.id, method, target, body, now)
        return self.server.client.request(
            method, target, content=body, headers={"Authorization": auth, **headers}
        )

    def poll(self, wait: int = 0) -> httpx.Response:
        headers = {"If-None-Match": self.etag} if self.etag else {}
        response = self.signed("GET", f"{DESIRED_PATH}?wait={wait}", **headers)
        if response.status_code == 200:
            self.etag = response.headers["ETag"]
        return response

    def desired_version(self) -> str | None:
        self.etag = None
        response = self.poll()
        assert response.status_code == 200, response.text
        release = response.json()["release"]
        return None if release is None else str(release["version"])

    def report(self, **report: Any) -> httpx.Response:
        body = json.dumps({"image": "gateway", "arch": "x86_64", **report}).encode()
        return self.signed("POST", STATUS_PATH, body, **{"Content-Type": "application/json"})

    def runs(self, commit: str, version: str, *, healthy: bool = True, **extra: Any) -> None:
        health = {"ok": healthy, "commit": commit, "failed": [] if healthy else ["50-sensors.sh"]}
        booted = {"version": version, "commit": commit}
        response = self.report(booted=booted, health=health, **extra)
        assert response.status_code == 200, response.text


@contextmanager
def serving(
    tmp_path: Path,
    *,
    runner_interval: float = 0,
    admin_name: str = "ops",
    db_url: str | None = None,
) -> Iterator[Server]:
    clock = Clock()
    settings = FleetSettings(
        db_url=db_url or f"sqlite:///{tmp_path / 'fleet.db'}",
        clock=clock,
        runner_interval=runner_interval,
    )
    app = create_app(settings)
    db: Database = app.state.db
    token = create_token(db, admin_name, "admin")
    with (
        running(app) as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as admin,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        yield Server(url, db, clock, app.state.runner, admin, client)
    db.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with serving(tmp_path) as served:
        yield served


def _refused(response: httpx.Response, status: int, field: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["field"] == field, body
    message: str = body["error"]
    return message


def _releases(server: Server) -> None:
    for version, commit in (("1.0.0", C1), ("1.1.0", C2), ("1.2.0", C3)):
        body = {"image": "gateway", "arch": "x86_64", "version": version, "commit": commit}
        assert server.admin.post("/api/v1/releases", json=body).status_code == 201


def _start(server: Server, version: str, fleet: str = "gateways") -> int:
    release = {"image": "gateway", "arch": "x86_64", "version": version}
    response = server.admin.post(f"/api/v1/fleets/{fleet}/rollouts", json={"release": release})
    assert response.status_code == 201, response.text
    rollout_id: int = response.json()["id"]
    return rollout_id


def _rollout(server: Server, rollout_id: int) -> dict[str, Any]:
    body: dict[str, Any] = server.admin.get(f"/api/v1/rollouts/{rollout_id}").json()
    return body


# --- enrollment ---------------------------------------------------------------------------------


def test_a_device_enrolls_with_a_token_and_gets_a_certificate_from_the_fleet_ca(
    server: Server,
) -> None:
    (token,) = server.tokens(labels={"site": "berlin"})
    device = server.enroll(token, name="gw-1", image="gateway", arch="x86_64")
    cert = x509.load_pem_x509_certificate(device.enrolled["certificate"].encode())
    ca = x509.load_pem_x509_certificate(device.enrolled["ca_certificate"].encode())
    cert.verify_directly_issued_by(ca)
    assert cert.subject.rfc4514_string() == f"CN={device.id}"
    assert cert.public_key() == device.key.public_key()
    shown = server.admin.get(f"/api/v1/devices/{device.id}").json()
    assert shown["labels"] == {"site": "berlin"}
    assert shown["name"] == "gw-1"
    assert "device.enrolled" in server.event_kinds()


def test_an_enrollment_token_works_once(server: Server) -> None:
    # Threat: a token copied from one device's disk enrolls a second, rogue device.
    (token,) = server.tokens()
    server.enroll(token)
    again = {"token": token, "csr": make_csr(new_device_key())}
    message = _refused(server.client.post(ENROLL_PATH, json=again), 401, "token")
    assert "already used" in message


def test_an_expired_or_unknown_token_is_refused(server: Server) -> None:
    (token,) = server.tokens(ttl_seconds=60)
    server.clock.advance(61)
    body = {"token": token, "csr": make_csr(new_device_key())}
    assert "expired" in _refused(server.client.post(ENROLL_PATH, json=body), 401, "token")
    body["token"] = "afield_enroll_" + "x" * 43
    assert "unknown" in _refused(server.client.post(ENROLL_PATH, json=body), 401, "token")


def test_a_bad_csr_is_refused_and_does_not_spend_the_token(server: Server) -> None:
    (token,) = server.tokens()
    bad = {"token": token, "csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA" + "A" * 80}
    assert "PKCS#10" in _refused(server.client.post(ENROLL_PATH, json=bad), 422, "csr")
    rsa_like = {"token": token, "csr": make_csr(ec.generate_private_key(ec.SECP384R1()))}
    assert "P-256" in _refused(server.client.post(ENROLL_PATH, json=rsa_like), 422, "csr")
    server.enroll(token)  # the token still works


def test_the_fdo_owner_hook_stores_a_token_named_after_the_devices_guid(server: Server) -> None:
    guid = "3f2c6d0e-8f1a-4a57-9d35-0d7c1b3a9e42"
    token = TokenIssuer(server.db, labels={"via": "fdo"}, clock=server.clock)(guid)
    device = server.enroll(token)
    assert device.id == guid
    assert server.admin.get(f"/api/v1/devices/{guid}").json()["labels"] == {"via": "fdo"}


def test_making_enrollment_tokens_needs_an_admin(server: Server) -> None:
    viewer = create_token(server.db, "dash", "viewer")
    response = server.client.post(
        "/api/v1/enrollment-tokens", json={}, headers={"Authorization": f"Bearer {viewer}"}
    )
    _refused(response, 403, "Authorization")
    _refused(server.client.post("/api/v1/enrollment-tokens", json={}), 401, "Authorization")


# --- signed requests ----------------------------------------------------------------------------


def test_a_signed_poll_gets_the_desired_state_and_an_etag(server: Server) -> None:
    device = server.enroll()
    response = device.poll()
    assert response.status_code == 200, response.text
    assert response.json() == {
        "device_id": device.id,
        "release": None,
        "rollout_id": None,
        "repo_url": None,
        "poll_seconds": 30,
    }
    assert device.poll().status_code == 304  # same ETag, no wait: unchanged at once
    shown = server.admin.get(f"/api/v1/devices/{device.id}").json()
    assert shown["last_seen"] is not None


def test_device_requests_without_a_valid_signature_are_refused(server: Server) -> None:
    # Threat: anyone on the network reads or writes a device's state.
    device = server.enroll()
    other = server.enroll()
    assert "missing" in _refused(server.client.get(DESIRED_PATH), 401, "Authorization")
    # Another device's key, claiming this device's id.
    forged = device.signed("GET", DESIRED_PATH, key=other.key)
    assert "does not verify" in _refused(forged, 401, "Authorization")
    # A signature over another path (a poll's signature replayed as a report).
    auth = authorization(device.key, device.id, "GET", DESIRED_PATH, b"", START.timestamp())
    moved = server.client.post(STATUS_PATH, content=b"{}", headers={"Authorization": auth})
    assert "does not verify" in _refused(moved, 401, "Authorization")
    # A device the server never enrolled.
    ghost = authorization(device.key, "dev-ghost", "GET", DESIRED_PATH, b"", START.timestamp())
    response = server.client.get(DESIRED_PATH, headers={"Authorization": ghost})
    assert "dev-ghost" in _refused(response, 401, "Authorization")


def test_the_polls_fast_path_answers_as_the_route_does(server: Server) -> None:
    # A plain poll is answered by PollFastPath; the same poll with a query parameter it does
    # not take goes through FastAPI's route. Both must answer alike, refusals included.
    device, other = server.enroll(), server.enroll()

    def both(target: str, *, key: Any = None, **headers: str) -> list[httpx.Response]:
        return [
            device.signed("GET", target, key=key, **headers),
            device.signed("GET", f"{target}{'&' if '?' in target else '?'}via=route", key=key,
                          **headers),
        ]  # fmt: skip

    def alike(answers: list[httpx.Response]) -> httpx.Response:
        fast, route = answers
        assert (fast.status_code, fast.content) == (route.status_code, route.content)
        assert fast.headers.get("ETag") == route.headers.get("ETag")
        assert fast.headers.get("Content-Type") == route.headers.get("Content-Type")
        return fast

    first = alike(both(DESIRED_PATH))
    assert first.status_code == 200 and first.json()["device_id"] == device.id
    etag = first.headers["ETag"]
    assert alike(both(f"{DESIRED_PATH}?wait=0", **{"If-None-Match": etag})).status_code == 304
    assert alike(both(DESIRED_PATH, **{"If-None-Match": '"other"'})).status_code == 200
    forged = alike(both(DESIRED_PATH, key=other.key))
    assert "does not verify" in _refused(forged, 401, "Authorization")
    # Malformed polls are the route's to refuse, with the field named.
    _refused(device.signed("GET", f"{DESIRED_PATH}?wait=999"), 422, "wait")
    _refused(device.signed("GET", f"{DESIRED_PATH}?wait=x"), 422, "wait")
    _refused(
        device.signed("GET", DESIRED_PATH, **{"If-None-Match": "x" * 201}), 422, "if-none-match"
    )
    # Polls answered by the fast path are counted and logged under the route's name.
    metrics = server.client.get("/metrics").text
    assert f'afield_fleet_request_duration_seconds_count{{route="{DESIRED_PATH}"}}' in metrics


def test_a_replayed_or_stale_request_is_refused(server: Server) -> None:
    # Threat: a captured report is sent again later to hide a failure.
    device = server.enroll()
    body = json.dumps({"booted": {"version": "1.0.0", "commit": C1}}).encode()
    auth = authorization(device.key, device.id, "POST", STATUS_PATH, body, START.timestamp())
    headers = {"Authorization": auth, "Content-Type": "application/json"}
    assert server.client.post(STATUS_PATH, content=body, headers=headers).status_code == 200
    again = server.client.post(STATUS_PATH, content=body, headers=headers)
    assert "replayed" in _refused(again, 401, "Authorization")
    server.clock.advance(301)
    old = authorization(device.key, device.id, "GET", DESIRED_PATH, b"", START.timestamp())
    stale = server.client.get(DESIRED_PATH, headers={"Authorization": old})
    assert "clock" in _refused(stale, 401, "Authorization")


def test_a_bad_report_names_the_field_and_changes_nothing(server: Server) -> None:
    device = server.enroll()
    device.runs(C1, "1.0.0")
    response = device.report(booted={"version": "1.0.0", "commit": "not-hex"})
    body = response.json()
    assert response.status_code == 422, body
    assert body["field"] == "booted.commit", body
    assert server.admin.get(f"/api/v1/devices/{device.id}").json()["current_commit"] == C1


def test_a_report_updates_only_the_signing_devices_record(server: Server) -> None:
    one, two = server.enroll(), server.enroll()
    one.runs(C1, "1.0.0")
    two.runs(C2, "1.1.0", healthy=False)
    first = server.admin.get(f"/api/v1/devices/{one.id}").json()
    second = server.admin.get(f"/api/v1/devices/{two.id}").json()
    assert (first["current_version"], first["health_ok"], first["status"]) == (
        "1.0.0",
        True,
        "Online",
    )
    assert (second["current_version"], second["health_ok"], second["status"]) == (
        "1.1.0",
        False,
        "Degraded",
    )


# --- long-poll ----------------------------------------------------------------------------------


def test_an_unchanged_long_poll_waits_then_answers_304(server: Server) -> None:
    device = server.enroll()
    device.poll()
    started = time.monotonic()
    response = device.poll(wait=1)
    assert response.status_code == 304
    assert time.monotonic() - started >= 0.9


def test_a_long_poll_wakes_when_the_runner_assigns_the_device(server: Server) -> None:
    _releases(server)
    server.admin.post("/api/v1/fleets", json={"name": "gateways", "policy": POLICY})
    device = server.enroll()
    device.runs(C1, "1.0.0")
    device.poll()
    answers: list[httpx.Response] = []
    waiting = threading.Thread(target=lambda: answers.append(device.poll(wait=60)))
    started = time.monotonic()
    waiting.start()
    time.sleep(0.5)  # the poll is waiting
    _start(server, "1.1.0")
    server.runner.step_all()
    waiting.join(timeout=30)
    assert answers and answers[0].status_code == 200, answers
    assert answers[0].json()["release"]["version"] == "1.1.0"
    assert time.monotonic() - started < 30


def test_metrics_show_waiting_long_polls_and_rollout_steps(server: Server) -> None:
    _releases(server)
    server.admin.post("/api/v1/fleets", json={"name": "gateways", "policy": POLICY})
    device = server.enroll()
    device.runs(C1, "1.0.0")
    device.poll()
    waiting = threading.Thread(target=device.poll, kwargs={"wait": 3})
    waiting.start()
    deadline = time.monotonic() + 10
    text = ""
    while time.monotonic() < deadline:
        text = server.client.get("/metrics").text
        if "afield_fleet_longpolls_waiting 1" in text:
            break
        time.sleep(0.05)
    assert "afield_fleet_longpolls_waiting 1" in text
    _start(server, "1.1.0")
    server.runner.step_all()
    waiting.join(timeout=10)
    text = server.client.get("/metrics").text
    assert "afield_fleet_rollout_steps_total 1" in text
    assert "afield_fleet_longpolls_waiting 0" in text


# --- rollouts driven by the runner ----------------------------------------------------------------


def _fleet_of_three(server: Server) -> list[SimDevice]:
    _releases(server)
    response = server.admin.post("/api/v1/fleets", json={"name": "gateways", "policy": POLICY})
    assert response.status_code == 201, response.text
    devices = [server.enroll() for _ in range(3)]
    for device in devices:
        device.runs(C1, "1.0.0")
    return devices


def _boot_target(device: SimDevice, commit: str, version: str) -> None:
    update = {"state": "downloading", "version": version, "commit": commit}
    assert device.report(booted={"version": "1.0.0", "commit": C1}, update=update).is_success
    device.runs(commit, version)


def test_a_rollout_goes_canary_first_then_to_everyone(server: Server) -> None:
    devices = _fleet_of_three(server)
    rollout_id = _start(server, "1.1.0")
    (outcome,) = server.runner.step_all()
    assert len(outcome.assigned) == 1
    canary = next(d for d in devices if d.id == outcome.assigned[0])
    others = [d for d in devices if d is not canary]
    assert canary.desired_version() == "1.1.0"
    assert [d.desired_version() for d in others] == [None, None]
    shown = server.admin.get(f"/api/v1/devices/{canary.id}").json()
    assert shown["desired"]["version"] == "1.1.0"
    assert shown["report"]["booted"] == {"version": "1.0.0", "commit": C1}

    _boot_target(canary, C2, "1.1.0")
    assert _rollout(server, rollout_id)["progress"]["unavailable"] == 1
    server.clock.advance(61)
    canary.poll()  # checks in after its health window: succeeded
    (outcome,) = server.runner.step_all()
    assert outcome.succeeded == (canary.id,)
    assert sorted(outcome.assigned) == sorted(d.id for d in others)
    for device in others:
        assert device.desired_version() == "1.1.0"
        _boot_target(device, C2, "1.1.0")
    server.clock.advance(61)
    for device in devices:
        device.poll()
    server.runner.step_all()
    shown = _rollout(server, rollout_id)
    assert shown["status"] == "completed", shown
    assert shown["progress"]["succeeded"] == 3
    kinds = server.event_kinds()
    assert kinds.count("rollout.assign") == 2
    assert "rollout.completed" in kinds


def test_a_canary_that_rolls_back_pauses_the_rollout_and_nobody_else_updates(
    server: Server,
) -> None:
    devices = _fleet_of_three(server)
    rollout_id = _start(server, "1.2.0")
    (outcome,) = server.runner.step_all()
    canary = next(d for d in devices if d.id == outcome.assigned[0])
    update = {"state": "staged", "version": "1.2.0", "commit": C3}
    assert canary.report(booted={"version": "1.0.0", "commit": C1}, update=update).is_success
    rolled_back = {
        "from_commit": C3,
        "to_commit": C1,
        "at": server.clock().timestamp(),
        "reason": "required check 50-sensors.sh failed",
    }
    canary.runs(C1, "1.0.0", rolled_back=rolled_back)
    server.runner.step_all()
    shown = _rollout(server, rollout_id)
    assert shown["status"] == "paused", shown
    assert shown["cause"] == "failures"
    assert canary.id in shown["reason"] and "rolled back" in shown["reason"]
    for _ in range(3):
        server.clock.advance(30)
        server.runner.step_all()
    assert [d.desired_version() for d in devices if d is not canary] == [None, None]
    device = server.admin.get(f"/api/v1/devices/{canary.id}").json()
    assert device["status"] == "RolledBack"
    assert device["rollout"]["phase"] == "rolled_back"
    assert "device.rolled_back" in server.event_kinds()


def test_an_operator_pause_is_never_overwritten_by_the_runner(server: Server) -> None:
    _fleet_of_three(server)
    rollout_id = _start(server, "1.1.0")
    paused = server.admin.post(f"/api/v1/rollouts/{rollout_id}/pause", json={"reason": "hold"})
    assert paused.status_code == 200, paused.text
    (outcome,) = server.runner.step_all()
    assert outcome.assigned == ()
    assert _rollout(server, rollout_id)["status"] == "paused"


def test_a_stale_step_is_dropped_when_the_rollout_changed_meanwhile(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fleet_of_three(server)
    rollout_id = _start(server, "1.1.0")

    def operator_acts_while_the_engine_thinks(*args: Any) -> Any:
        # An operator's action lands between the runner's read and its write.
        paused = server.admin.post(f"/api/v1/rollouts/{rollout_id}/pause", json={})
        assert paused.status_code == 200, paused.text
        return step(*args)

    monkeypatch.setattr("afield.fleet.runner.step", operator_acts_while_the_engine_thinks)
    outcome = server.runner.step_rollout(rollout_id)
    assert outcome is not None and not outcome.written
    with server.db.sessions() as session:
        assigned = session.query(Device).filter(Device.rollout_id == rollout_id).count()
    assert assigned == 0
    assert _rollout(server, rollout_id)["status"] == "paused"


def test_a_restarted_server_continues_the_rollout_where_it_was(tmp_path: Path) -> None:
    with serving(tmp_path) as first:
        devices = _fleet_of_three(first)
        rollout_id = _start(first, "1.1.0")
        (outcome,) = first.runner.step_all()
        canary = next(d for d in devices if d.id == outcome.assigned[0])
        _boot_target(canary, C2, "1.1.0")
        enrolled = [(d.key, d.enrolled) for d in devices]
    with serving(tmp_path, admin_name="ops-2") as second:
        second.clock.advance(61)
        again = [SimDevice(second, key, body) for key, body in enrolled]
        for device in again:
            device.poll()
        (outcome,) = second.runner.step_all()
        assert outcome.succeeded == (canary.id,)
        assert len(outcome.assigned) == 2
        assert _rollout(second, rollout_id)["batch"] == 1


def test_the_runner_thread_steps_rollouts_by_itself(tmp_path: Path) -> None:
    with serving(tmp_path, runner_interval=0.2) as server:
        _fleet_of_three(server)
        rollout_id = _start(server, "1.1.0")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if _rollout(server, rollout_id)["progress"].get("assigned") == 1:
                break
            time.sleep(0.1)
        assert _rollout(server, rollout_id)["progress"]["assigned"] == 1


@pytest.mark.root
def test_enrollment_reports_and_a_rollout_on_postgresql(tmp_path: Path) -> None:
    with cluster() as admin_url, serving(tmp_path, db_url=new_database(admin_url)) as server:
        devices = _fleet_of_three(server)
        rollout_id = _start(server, "1.2.0")
        (outcome,) = server.runner.step_all()
        canary = next(d for d in devices if d.id == outcome.assigned[0])
        assert canary.desired_version() == "1.2.0"
        rolled_back = {"from_commit": C3, "to_commit": C1, "at": server.clock().timestamp()}
        canary.runs(C1, "1.0.0", rolled_back=rolled_back)
        server.runner.step_all()
        shown = _rollout(server, rollout_id)
        assert (shown["status"], shown["cause"]) == ("paused", "failures"), shown
        (token,) = server.tokens()
        server.enroll(token)
        again = {"token": token, "csr": make_csr(new_device_key())}
        assert "already used" in _refused(server.client.post(ENROLL_PATH, json=again), 401, "token")
