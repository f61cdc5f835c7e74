"""The fleet manager's API against a real uvicorn on 127.0.0.1 and a real SQLite file (and one
round trip on PostgreSQL): tokens and roles, fleets, devices, releases and the running-commits
contract, rollouts, the audit trail, bad input, ``/metrics``, ``/healthz`` and ``/repo/``."""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from afield._serving import running
from afield.fleet.app import ACCESS_LOGGER, FleetSettings, create_app
from afield.fleet.auth import create_token, revoke_token
from afield.fleet.db import Database
from afield.fleet.models import Device
from afield.release.fleet import RunningCommit, running_commits
from tests.postgres import cluster, new_database

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)
RECENT = NOW - datetime.timedelta(seconds=30)
C1, C2, C3 = "1" * 64, "2" * 64, "3" * 64
GATEWAY_1 = {"image": "gateway", "arch": "x86_64", "version": "1.0", "commit": C1}
REF_1 = {"image": "gateway", "arch": "x86_64", "version": "1.0"}


@dataclass
class Server:
    url: str
    db: Database
    admin: httpx.Client
    viewer: httpx.Client
    anonymous: httpx.Client

    def add_devices(self, *devices: Device) -> None:
        with self.db.transaction() as session:
            session.add_all(devices)

    def events(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self.admin.get("/api/v1/events").json()["data"]
        return data


@contextmanager
def serving(db_url: str, repo_dir: Path | None = None) -> Iterator[Server]:
    settings = FleetSettings(db_url=db_url, repo_dir=repo_dir, runner_interval=0, clock=lambda: NOW)
    app = create_app(settings)
    db: Database = app.state.db
    admin_token = create_token(db, "ops", "admin")
    viewer_token = create_token(db, "dashboard", "viewer")
    with (
        running(app) as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_token}"}) as admin,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {viewer_token}"}) as viewer,
        httpx.Client(base_url=url) as anonymous,
    ):
        yield Server(url, db, admin, viewer, anonymous)
    db.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with serving(f"sqlite:///{tmp_path / 'fleet.db'}") as served:
        yield served


def _device(device_id: str, **fields: Any) -> Device:
    values: dict[str, Any] = {"id": device_id, "labels": {}, "last_seen": RECENT}
    values.update(fields)
    return Device(**values)


def _release(server: Server, **fields: str) -> dict[str, Any]:
    response = server.admin.post("/api/v1/releases", json={**GATEWAY_1, **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _fleet(server: Server, name: str = "berlin", **fields: Any) -> dict[str, Any]:
    response = server.admin.post("/api/v1/fleets", json={"name": name, **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _refused(response: httpx.Response, status: int, field: str) -> str:
    """Check a refusal's status and field; returns its message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["field"] == field, body
    assert body["problems"], body
    message: str = body["error"]
    return message


# --- tokens and roles ---------------------------------------------------------------------------


def test_a_request_without_a_token_is_401(server: Server) -> None:
    # Threat: anyone on the network reads the fleet.
    response = server.anonymous.get("/api/v1/fleets")
    _refused(response, 401, "Authorization")
    assert response.headers["www-authenticate"] == "Bearer"
    other_scheme = server.anonymous.get("/api/v1/fleets", headers={"Authorization": "Basic eDp5"})
    _refused(other_scheme, 401, "Authorization")


def test_an_unknown_token_is_401(server: Server) -> None:
    # Threat: a guessed or forged token that looks like ours.
    forged = "afield_" + "A" * 43
    response = server.anonymous.get("/api/v1/fleets", headers={"Authorization": f"Bearer {forged}"})
    _refused(response, 401, "Authorization")


def test_a_revoked_token_is_401(server: Server) -> None:
    # Threat: a token that leaked keeps working after the operator revoked it.
    assert server.viewer.get("/api/v1/fleets").status_code == 200
    assert revoke_token(server.db, "dashboard")
    _refused(server.viewer.get("/api/v1/fleets"), 401, "Authorization")


def test_a_viewer_can_read(server: Server) -> None:
    _fleet(server)
    assert server.viewer.get("/api/v1/fleets").json()["count"] == 1
    assert server.viewer.get("/api/v1/fleets/berlin").status_code == 200
    assert server.viewer.get("/api/v1/devices").status_code == 200
    assert server.viewer.get("/api/v1/events").status_code == 200


def test_a_viewer_that_writes_gets_403_and_nothing_changes(server: Server) -> None:
    # Threat: a read-only dashboard token creates fleets or starts rollouts.
    _release(server)
    _fleet(server, target_release=REF_1)
    before = server.events()
    _refused(server.viewer.post("/api/v1/fleets", json={"name": "x"}), 403, "Authorization")
    _refused(
        server.viewer.patch("/api/v1/fleets/berlin", json={"selector": "a=b"}), 403, "Authorization"
    )
    _refused(server.viewer.delete("/api/v1/fleets/berlin"), 403, "Authorization")
    _refused(server.viewer.post("/api/v1/fleets/berlin/rollouts"), 403, "Authorization")
    _refused(
        server.viewer.post("/api/v1/releases", json={**GATEWAY_1, "version": "2"}),
        403,
        "Authorization",
    )
    assert [f["name"] for f in server.admin.get("/api/v1/fleets").json()["data"]] == ["berlin"]
    assert server.admin.get("/api/v1/fleets/berlin").json()["selector"] == ""
    assert server.admin.get("/api/v1/rollouts").json()["count"] == 0
    assert server.admin.get("/api/v1/releases").json()["count"] == 1
    assert server.events() == before


# --- fleets ---------------------------------------------------------------------------------------


def test_fleets_are_created_listed_shown_changed_and_deleted(server: Server) -> None:
    _release(server)
    created = _fleet(server, selector="site=berlin, tier!=lab", policy={"batches": [1, "50%"]})
    assert created["selector"] == "site=berlin,tier!=lab"
    assert created["policy"]["batches"] == [1, "50%", "100%"]  # the implicit last batch
    assert created["target_release"] is None
    _fleet(server, "munich")
    listed = server.admin.get("/api/v1/fleets", params={"limit": 1}).json()
    assert [f["name"] for f in listed["data"]] == ["berlin"] and listed["next_cursor"] == "berlin"
    rest = server.admin.get("/api/v1/fleets", params={"cursor": "berlin"}).json()
    assert [f["name"] for f in rest["data"]] == ["munich"] and rest["next_cursor"] is None
    changed = server.admin.patch(
        "/api/v1/fleets/berlin", json={"target_release": REF_1, "policy": {"batches": ["10%"]}}
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["target_release"]["commit"] == C1
    assert changed.json()["selector"] == "site=berlin,tier!=lab"  # untouched
    cleared = server.admin.patch("/api/v1/fleets/berlin", json={"target_release": None}).json()
    assert cleared["target_release"] is None
    assert server.admin.delete("/api/v1/fleets/berlin").status_code == 204
    _refused(server.admin.get("/api/v1/fleets/berlin"), 404, "name")


def test_a_policy_error_is_422_naming_batches_2(server: Server) -> None:
    response = server.admin.post(
        "/api/v1/fleets",
        json={"name": "berlin", "policy": {"batches": [1, "10%", "150%"], "health_window": "x"}},
    )
    message = _refused(response, 422, "policy.batches[2]")
    assert "150%" in message and "over 100%" in message
    fields = [p["field"] for p in response.json()["problems"]]
    assert fields == ["policy.batches[2]", "policy.health_window"]  # every problem, in one go
    assert server.admin.get("/api/v1/fleets").json()["count"] == 0


def test_a_selector_error_is_422_naming_the_part(server: Server) -> None:
    response = server.admin.post(
        "/api/v1/fleets", json={"name": "berlin", "selector": "site=berlin,=lab"}
    )
    message = _refused(response, 422, "selector")
    assert 'part 2 "=lab"' in message and "no label key" in message
    patched = server.admin.patch("/api/v1/fleets/none", json={"selector": "a=b"})
    _refused(patched, 404, "name")


def test_a_fleet_name_taken_is_409(server: Server) -> None:
    _fleet(server)
    _refused(server.admin.post("/api/v1/fleets", json={"name": "berlin"}), 409, "name")


def test_a_fleet_target_release_must_be_registered(server: Server) -> None:
    response = server.admin.post("/api/v1/fleets", json={"name": "b", "target_release": REF_1})
    assert "gateway/x86_64/1.0" in _refused(response, 422, "target_release")


# --- devices ------------------------------------------------------------------------------------


def test_device_pages_filter_by_label_with_stable_cursors(server: Server) -> None:
    devices = [
        _device(f"dev-{i:03d}", labels={"site": "berlin" if i % 2 else "munich", "tier": "edge"})
        for i in range(250)
    ]
    server.add_devices(*devices)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"label": ["site=berlin", "tier=edge"], "limit": 40}
        if cursor:
            params["cursor"] = cursor
        page = server.viewer.get("/api/v1/devices", params=params).json()
        pages += 1
        seen += [d["id"] for d in page["data"]]
        assert page["count"] == len(page["data"])
        if pages == 1:
            # Devices added before the cursor do not shift later pages (an offset would).
            server.add_devices(_device("dev-000a", labels={"site": "berlin", "tier": "edge"}))
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert cursor == seen[-1]
    expected = [f"dev-{i:03d}" for i in range(1, 250, 2)]
    assert seen == expected and pages == 4  # 125 devices: 40 + 40 + 40 + 5
    everyone = server.viewer.get("/api/v1/devices", params={"limit": 500}).json()
    assert everyone["count"] == 251 and everyone["next_cursor"] is None


def test_device_list_filters_by_status_and_shows_one_device(server: Server) -> None:
    stale = NOW - datetime.timedelta(hours=1)
    server.add_devices(
        _device("a-online", current_version="1.0", current_commit=C1),
        _device("b-offline", last_seen=stale),
        _device("c-updating", updating=True),
        _device("d-degraded", health_ok=False),
        _device("e-rolled-back", rolled_back_at=RECENT, rollback_version="0.9"),
        _device("f-never-seen", last_seen=None),
    )
    listed = server.viewer.get("/api/v1/devices").json()["data"]
    assert {d["id"]: d["status"] for d in listed} == {
        "a-online": "Online",
        "b-offline": "Offline",
        "c-updating": "Updating",
        "d-degraded": "Degraded",
        "e-rolled-back": "RolledBack",
        "f-never-seen": "Offline",
    }
    offline = server.viewer.get("/api/v1/devices", params={"status": "Offline", "limit": 1}).json()
    assert [d["id"] for d in offline["data"]] == ["b-offline"]
    assert offline["next_cursor"] == "b-offline"
    more = server.viewer.get(
        "/api/v1/devices", params={"status": "Offline", "cursor": "b-offline"}
    ).json()
    assert [d["id"] for d in more["data"]] == ["f-never-seen"] and more["next_cursor"] is None
    one = server.viewer.get("/api/v1/devices/a-online").json()
    assert one["current_commit"] == C1 and one["status"] == "Online" and one["rollout"] is None
    _refused(server.viewer.get("/api/v1/devices/nope"), 404, "device_id")
    _refused(server.viewer.get("/api/v1/devices", params={"status": "Sleeping"}), 422, "status")


def test_device_list_limit_and_label_syntax_are_checked(server: Server) -> None:
    _refused(server.viewer.get("/api/v1/devices", params={"limit": 501}), 422, "limit")
    _refused(server.viewer.get("/api/v1/devices", params={"limit": 0}), 422, "limit")
    _refused(server.viewer.get("/api/v1/devices", params={"label": "site"}), 422, "label[0]")
    bad_key = server.viewer.get("/api/v1/devices", params={"label": ["a=b", "s p=x"]})
    _refused(bad_key, 422, "label[1]")


# --- releases and the running-commits contract ---------------------------------------------------


def test_a_release_commit_must_be_64_hex_digits(server: Server) -> None:
    response = server.admin.post("/api/v1/releases", json={**GATEWAY_1, "commit": "ABC"})
    _refused(response, 422, "commit")
    upper = server.admin.post("/api/v1/releases", json={**GATEWAY_1, "commit": "A" * 64})
    _refused(upper, 422, "commit")


def test_a_release_registered_twice_is_409(server: Server) -> None:
    _release(server)
    again = server.admin.post("/api/v1/releases", json={**GATEWAY_1, "commit": C2})
    assert "gateway/x86_64/1.0" in _refused(again, 409, "version")
    listed = server.viewer.get("/api/v1/releases", params={"image": "gateway"}).json()
    assert [r["commit"] for r in listed["data"]] == [C1]


def test_running_commits_answer_the_release_client_contract(server: Server) -> None:
    _release(server)
    _release(server, version="1.1", commit=C2)
    _release(server, arch="aarch64", version="1.1", commit=C3)
    server.add_devices(
        *(_device(f"old-{i}", current_commit=C1) for i in range(2)),
        *(_device(f"new-{i}", current_commit=C2) for i in range(5)),
        *(_device(f"arm-{i}", current_commit=C3) for i in range(9)),  # another arch
        _device("unregistered", current_commit="f" * 64),
        _device("blank"),
    )
    # Both ends of the contract: the real client parses what the server answers.
    found = running_commits(server.url, "gateway", "x86_64")
    assert found == [RunningCommit(C2, 5), RunningCommit(C1, 2)]
    raw = server.anonymous.get("/api/v1/images/gateway/running", params={"arch": "x86_64"})
    assert raw.json() == {
        "image": "gateway",
        "arch": "x86_64",
        "running": [
            {"commit": C2, "version": "1.1", "devices": 5},
            {"commit": C1, "version": "1.0", "devices": 2},
        ],
    }
    assert running_commits(server.url, "nothing", "x86_64") == []
    _refused(server.anonymous.get("/api/v1/images/gateway/running"), 422, "arch")


# --- rollouts -----------------------------------------------------------------------------------


def _started(server: Server) -> dict[str, Any]:
    _release(server)
    _fleet(server, selector="site=berlin")
    response = server.admin.post("/api/v1/fleets/berlin/rollouts", json={"release": REF_1})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_rollout_starts_pauses_resumes_and_aborts(server: Server) -> None:
    rollout = _started(server)
    assert rollout["status"] == "running" and rollout["fleet"] == "berlin"
    assert rollout["release"]["commit"] == C1 and rollout["batches"] == 1
    assert server.viewer.get("/api/v1/fleets/berlin").json()["target_release"]["version"] == "1.0"
    path = f"/api/v1/rollouts/{rollout['id']}"
    paused = server.admin.post(f"{path}/pause", json={"reason": "lunch break"}).json()
    assert paused["status"] == "paused" and paused["reason"] == "lunch break"
    assert paused["cause"] == "operator"
    resumed = server.admin.post(f"{path}/resume").json()
    assert resumed["status"] == "running" and resumed["reason"] == ""
    aborted = server.admin.post(f"{path}/abort").json()
    assert aborted["status"] == "aborted" and aborted["reason"] == "aborted by admin:ops"
    assert server.viewer.get(path).json()["status"] == "aborted"
    listed = server.viewer.get("/api/v1/rollouts", params={"fleet": "berlin"}).json()
    assert [r["id"] for r in listed["data"]] == [rollout["id"]]


def test_impossible_rollout_transitions_are_409_naming_both_states(server: Server) -> None:
    rollout = _started(server)
    path = f"/api/v1/rollouts/{rollout['id']}"
    message = _refused(server.admin.post(f"{path}/resume"), 409, "status")
    assert "current state running" in message and "requested running" in message
    message = _refused(server.admin.post(f"{path}/approve"), 409, "status")
    assert "current state running" in message
    assert server.admin.post(f"{path}/abort").status_code == 200
    for action in ("pause", "resume", "approve", "abort"):
        message = _refused(server.admin.post(f"{path}/{action}"), 409, "status")
        assert "current state aborted" in message
    assert server.viewer.get(path).json()["status"] == "aborted"
    _refused(server.admin.post("/api/v1/rollouts/999/pause"), 404, "rollout_id")


def test_a_rollout_needs_a_registered_release(server: Server) -> None:
    _fleet(server)
    no_target = server.admin.post("/api/v1/fleets/berlin/rollouts")
    assert "no target release" in _refused(no_target, 422, "release")
    missing = server.admin.post("/api/v1/fleets/berlin/rollouts", json={"release": REF_1})
    assert "no release gateway/x86_64/1.0" in _refused(missing, 422, "release")
    _refused(server.admin.post("/api/v1/fleets/nope/rollouts"), 404, "name")


def test_a_fleet_has_one_rollout_at_a_time_and_keeps_it_until_it_is_over(server: Server) -> None:
    rollout = _started(server)
    _refused(server.admin.post("/api/v1/fleets/berlin/rollouts"), 409, "name")
    _refused(server.admin.delete("/api/v1/fleets/berlin"), 409, "name")
    server.admin.post(f"/api/v1/rollouts/{rollout['id']}/abort")
    again = server.admin.post("/api/v1/fleets/berlin/rollouts")  # the fleet's target release
    assert again.status_code == 201 and again.json()["id"] != rollout["id"]
    server.admin.post(f"/api/v1/rollouts/{again.json()['id']}/abort")
    assert server.admin.delete("/api/v1/fleets/berlin").status_code == 204
    _refused(server.viewer.get(f"/api/v1/rollouts/{rollout['id']}"), 404, "rollout_id")


# --- the audit trail ------------------------------------------------------------------------------


def test_every_admin_write_records_an_event(server: Server) -> None:
    rollout = _started(server)
    path = f"/api/v1/rollouts/{rollout['id']}"
    server.admin.patch("/api/v1/fleets/berlin", json={"selector": "site=munich"})
    server.admin.post(f"{path}/pause")
    server.admin.post(f"{path}/resume")
    server.admin.post(f"{path}/abort")
    server.admin.delete("/api/v1/fleets/berlin")
    server.admin.post(f"{path}/abort")  # refused: records nothing
    events = server.events()
    assert [e["kind"] for e in reversed(events)] == [
        "release.create",
        "fleet.create",
        "rollout.start",
        "fleet.update",
        "rollout.pause",
        "rollout.resume",
        "rollout.abort",
        "fleet.delete",
    ]
    assert {e["actor"] for e in events} == {"admin:ops"}
    assert all(e["time"] == "2026-01-01T12:00:00Z" for e in events)
    update = next(e for e in events if e["kind"] == "fleet.update")
    assert update["subject"] == "berlin" and update["details"] == {"selector": "site=munich"}


def test_events_filter_by_kind_and_actor_a_page_at_a_time(server: Server) -> None:
    for version in ("1", "2", "3"):
        _release(server, version=version)
    _fleet(server)
    page = server.viewer.get("/api/v1/events", params={"kind": "release.create", "limit": 2})
    first = page.json()
    assert [e["subject"] for e in first["data"]] == ["gateway/x86_64/3", "gateway/x86_64/2"]
    rest = server.viewer.get(
        "/api/v1/events", params={"kind": "release.create", "cursor": first["next_cursor"]}
    ).json()
    assert [e["subject"] for e in rest["data"]] == ["gateway/x86_64/1"]
    assert rest["next_cursor"] is None
    assert server.viewer.get("/api/v1/events", params={"actor": "system"}).json()["count"] == 0
    _refused(server.viewer.get("/api/v1/events", params={"cursor": "x"}), 422, "cursor")


# --- bad input: always a 4xx naming the field, never a 500 ---------------------------------------


def test_malformed_json_is_422_naming_the_body(server: Server) -> None:
    response = server.admin.post(
        "/api/v1/fleets", content=b'{"name": ', headers={"Content-Type": "application/json"}
    )
    assert "not valid JSON" in _refused(response, 422, "body")


def test_an_unknown_field_is_422_naming_it(server: Server) -> None:
    response = server.admin.post("/api/v1/fleets", json={"name": "berlin", "colour": "blue"})
    assert "unknown field" in _refused(response, 422, "colour")
    nested = server.admin.post(
        "/api/v1/fleets", json={"name": "b", "target_release": {**REF_1, "stream": "stable"}}
    )
    _refused(nested, 422, "target_release.stream")


def test_an_oversized_string_is_422_naming_the_field(server: Server) -> None:
    _refused(server.admin.post("/api/v1/fleets", json={"name": "a" * 64}), 422, "name")
    long_selector = {"name": "b", "selector": "a=b," * 300}
    _refused(server.admin.post("/api/v1/fleets", json=long_selector), 422, "selector")
    _refused(
        server.admin.post("/api/v1/releases", json={**GATEWAY_1, "version": "1" * 65}),
        422,
        "version",
    )
    _refused(server.viewer.get(f"/api/v1/devices/{'d' * 129}"), 422, "device_id")


def test_an_oversized_body_is_413_before_it_is_read(server: Server) -> None:
    huge = {"name": "b", "policy": {"batches": [1] * 100_000}}
    response = server.admin.post("/api/v1/fleets", json=huge)
    assert response.status_code == 413 and response.json()["field"] == "body"


@pytest.mark.parametrize(
    "body",
    [
        [],
        "name",
        None,
        {"name": None},
        {"name": 5},
        {"name": "b", "policy": "fast"},
        {"name": "b", "policy": {"batches": "all"}},
        {"name": "b", "policy": {"batches": [{"x": 1}], "maintenance_window": {"cron": 5}}},
        {"name": "b", "selector": ["a=b"]},
        {"name": "b", "target_release": "gateway/1.0"},
        {"name": "Ünïcode"},
    ],
)
def test_wrong_shapes_are_a_4xx_never_a_500(server: Server, body: object) -> None:
    response = server.admin.post("/api/v1/fleets", json=body)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]


def test_an_unknown_route_is_a_json_404(server: Server) -> None:
    response = server.admin.get("/api/v1/nothing")
    assert response.status_code == 404, response.text
    assert response.json()["field"] == "path"
    assert "/api/v1/nothing: no such resource" in response.json()["error"]


# --- the edges: /healthz, /metrics, access log, /docs, /repo/ ------------------------------------


def test_healthz_answers_ok_when_the_database_answers(server: Server) -> None:
    response = server.anonymous.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_metrics_count_requests_by_route_and_devices_by_status(server: Server) -> None:
    server.add_devices(
        _device("a"), _device("b"), _device("c", updating=True), _device("d", last_seen=None)
    )
    server.viewer.get("/api/v1/devices/a")
    server.viewer.get("/api/v1/devices/b")
    server.anonymous.get("/api/v1/devices")
    text = server.anonymous.get("/metrics").text
    assert (
        'afield_fleet_requests_total{method="GET",route="/api/v1/devices/{device_id}",code="200"} 2'
        in text
    )
    assert 'afield_fleet_requests_total{method="GET",route="/api/v1/devices",code="401"} 1' in text
    assert (
        'afield_fleet_request_duration_seconds_bucket{route="/api/v1/devices/{device_id}",'
        'le="+Inf"} 2' in text
    )
    assert 'afield_fleet_request_duration_seconds_count{route="/api/v1/devices"} 1' in text
    assert 'afield_fleet_devices{status="Online"} 2' in text
    assert 'afield_fleet_devices{status="Updating"} 1' in text
    assert 'afield_fleet_devices{status="Offline"} 1' in text
    assert 'afield_fleet_devices{status="Degraded"} 0' in text


def test_every_request_is_one_json_access_log_line(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        server.viewer.get("/api/v1/fleets")
        server.anonymous.get("/api/v1/fleets")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == ACCESS_LOGGER]
    assert [(e["route"], e["status"], e["actor"]) for e in lines] == [
        ("/api/v1/fleets", 200, "viewer:dashboard"),
        ("/api/v1/fleets", 401, None),
    ]
    assert all(e["method"] == "GET" and e["duration_ms"] >= 0 for e in lines)


def test_openapi_is_served_with_stable_operation_ids(server: Server) -> None:
    schema = server.anonymous.get("/openapi.json").json()
    operations = {op["operationId"] for path in schema["paths"].values() for op in path.values()}
    assert {"devices-list", "fleets-create", "rollouts-pause", "images-running"} <= operations
    assert server.anonymous.get("/docs").status_code == 200


def test_the_update_repository_is_served_at_repo(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "ostree").mkdir(parents=True)
    (repo / "ostree" / "config").write_text("[core]\nmode=archive-z2\n")
    with serving(f"sqlite:///{tmp_path / 'fleet.db'}", repo_dir=repo) as server:
        response = server.anonymous.get("/repo/ostree/config")
        assert response.status_code == 200 and "archive-z2" in response.text
        assert server.anonymous.get("/repo/keys/root.key").status_code == 404


# --- PostgreSQL -----------------------------------------------------------------------------------


@pytest.mark.root
def test_a_round_trip_on_postgresql() -> None:
    with cluster() as admin_url, serving(new_database(admin_url)) as server:
        _release(server)
        _fleet(server, selector="site=berlin", target_release=REF_1)
        server.add_devices(
            *(_device(f"dev-{i}", labels={"site": "berlin"}, current_commit=C1) for i in range(3)),
            _device("dev-x", labels={"site": "munich"}),
        )
        page = server.viewer.get("/api/v1/devices", params={"label": "site=berlin", "limit": 2})
        assert [d["id"] for d in page.json()["data"]] == ["dev-0", "dev-1"]
        assert running_commits(server.url, "gateway", "x86_64") == [RunningCommit(C1, 3)]
        rollout = server.admin.post("/api/v1/fleets/berlin/rollouts").json()
        paused = server.admin.post(f"/api/v1/rollouts/{rollout['id']}/pause").json()
        assert paused["status"] == "paused"
        assert [e["kind"] for e in server.events()][:2] == ["rollout.pause", "rollout.start"]
