"""Applications deployed at runtime, on a real uvicorn and a real SQLite file (and one round
trip on PostgreSQL): set, shown and removed on fleets and devices, manifests checked when they
are set, each device's list resolved (fleet or device, selectors, enrollment) into the desired
state it polls, with an ETag that changes exactly when its applications do, long-polls woken,
and the statuses devices report shown beside the digests they should run."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from afield.fleet.auth import create_token
from afield.fleet.models import Device
from afield.fleet.protocol import DesiredState, manifests_digest
from tests.fleet.test_device_api import Server, SimDevice, serving
from tests.postgres import cluster, new_database

WEB = """\
apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  containers:
  - name: web
    image: registry.example/web:1.0
"""
WEB_2 = WEB.replace("web:1.0", "web:2.0")
DB = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: db
spec:
  template:
    spec:
      containers:
      - name: db
        image: registry.example/db:16
      initContainers:
      - name: init
        image: registry.example/busybox:1
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with serving(tmp_path) as served:
        yield served


def _fleet(server: Server, name: str, selector: str = "") -> None:
    made = server.admin.post("/api/v1/fleets", json={"name": name, "selector": selector})
    assert made.status_code == 201, made.text


def _set(
    server: Server, owner: str, name: str, manifests: str = WEB, **body: Any
) -> dict[str, Any]:
    answer = server.admin.put(
        f"/api/v1/{owner}/applications/{name}", json={"manifests": manifests, **body}
    )
    assert answer.status_code in (200, 201), answer.text[:1000]
    shown: dict[str, Any] = answer.json()
    return shown


def _refused(response: httpx.Response, status: int, field: str) -> str:
    assert response.status_code == status, response.text[:1000]
    body = response.json()
    assert body["field"] == field, body
    message: str = body["error"]
    return message


def _enroll(server: Server, **labels: str) -> SimDevice:
    (token,) = server.tokens(labels=labels)
    return server.enroll(token)


def _applications(device: SimDevice) -> dict[str, str]:
    """name -> digest of what the device is told to run (a fresh, unconditional poll)."""
    device.etag = None
    answer = device.poll()
    assert answer.status_code == 200, answer.text
    state = DesiredState.model_validate_json(answer.content)
    return {a.name: a.digest for a in state.applications}


def _shown(server: Server, device: SimDevice) -> dict[str, dict[str, Any]]:
    body = server.admin.get(f"/api/v1/devices/{device.id}").json()
    return {a["name"]: a for a in body["applications"]}


# --- the API ------------------------------------------------------------------------------------


def test_a_fleet_application_is_set_listed_shown_replaced_and_deleted(server: Server) -> None:
    _fleet(server, "berlin")
    created = server.admin.put("/api/v1/fleets/berlin/applications/web", json={"manifests": WEB})
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["name"], body["fleet"], body["device_id"]) == ("web", "berlin", None)
    assert body["digest"] == manifests_digest(WEB)
    assert body["images"] == ["registry.example/web:1.0"]  # from the manifests
    assert body["manifests"] == WEB and body["updated_by"] == "admin:ops"
    listed = server.admin.get("/api/v1/fleets/berlin/applications").json()
    assert listed["count"] == 1 and listed["next_cursor"] is None
    (item,) = listed["data"]
    assert "manifests" not in item and item["manifests_bytes"] == len(WEB)
    replaced = server.admin.put(
        "/api/v1/fleets/berlin/applications/web",
        json={"manifests": WEB_2, "images": ["registry.example/web@sha256:" + "a" * 64]},
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["images"] == ["registry.example/web@sha256:" + "a" * 64]
    shown = server.admin.get("/api/v1/fleets/berlin/applications/web").json()
    assert shown["manifests"] == WEB_2 and shown["digest"] == manifests_digest(WEB_2)
    assert server.admin.delete("/api/v1/fleets/berlin/applications/web").status_code == 204
    assert server.admin.get("/api/v1/fleets/berlin/applications").json()["count"] == 0
    _refused(server.admin.get("/api/v1/fleets/berlin/applications/web"), 404, "name")


def test_images_default_to_every_image_the_manifests_name(server: Server) -> None:
    _fleet(server, "berlin")
    body = _set(server, "fleets/berlin", "db", WEB + "---\n" + DB)
    assert body["images"] == [
        "registry.example/busybox:1",
        "registry.example/db:16",
        "registry.example/web:1.0",
    ]


@pytest.mark.parametrize(
    ("manifests", "words"),
    [
        ("apiVersion: v1\nkind: Service\nmetadata: {name: web}\n", ["document 1", "Service"]),
        (
            WEB + "---\n" + WEB.replace("image: registry.example/web:1.0", "image: 5"),
            ["document 2", "spec.containers[0].image"],
        ),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: [web\n", ["not valid YAML", "line"]),
        ("just text", ["document 1", "mapping"]),
        (WEB + "\x00", ["NUL"]),
        (WEB + "\ud800", ["unicode"]),  # refused as it is parsed
    ],
)
def test_manifests_that_podman_cannot_play_are_422_naming_the_document_and_field(
    server: Server, manifests: str, words: list[str]
) -> None:
    _fleet(server, "berlin")
    answer = server.admin.put(
        "/api/v1/fleets/berlin/applications/web",
        content=json.dumps({"manifests": manifests}).encode(),
        headers={"Content-Type": "application/json"},
    )
    message = _refused(answer, 422, "manifests")
    assert message.startswith("manifests"), message
    assert all(word in message for word in words), message
    assert server.admin.get("/api/v1/fleets/berlin/applications").json()["count"] == 0


def test_a_bad_name_image_or_field_is_422_naming_it(server: Server) -> None:
    _fleet(server, "berlin")
    path = "/api/v1/fleets/berlin/applications"
    _refused(server.admin.put(f"{path}/Web_1", json={"manifests": WEB}), 422, "name")
    _refused(server.admin.put(f"{path}/{'a' * 64}", json={"manifests": WEB}), 422, "name")
    bad_image = {"manifests": WEB, "images": ["ok:1", "no spaces"]}
    _refused(server.admin.put(f"{path}/web", json=bad_image), 422, "images[1]")
    many = {"manifests": WEB, "images": [f"img{i}:1" for i in range(33)]}
    _refused(server.admin.put(f"{path}/web", json=many), 422, "images")
    _refused(server.admin.put(f"{path}/web", json={"manifests": ""}), 422, "manifests")
    _refused(server.admin.put(f"{path}/web", json={}), 422, "manifests")
    unknown = server.admin.put(f"{path}/web", json={"manifests": WEB, "replicas": 2})
    _refused(unknown, 422, "replicas")


def test_unknown_fleets_devices_and_applications_are_404_naming_them(server: Server) -> None:
    _fleet(server, "berlin")
    device = _enroll(server)
    missing_fleet = server.admin.put(
        "/api/v1/fleets/nope/applications/web", json={"manifests": WEB}
    )
    assert "no fleet named 'nope'" in _refused(missing_fleet, 404, "fleet")
    _refused(server.admin.get("/api/v1/fleets/nope/applications"), 404, "fleet")
    missing_device = server.admin.get("/api/v1/devices/dev-nope/applications")
    assert "dev-nope" in _refused(missing_device, 404, "device_id")
    gone = server.admin.delete("/api/v1/fleets/berlin/applications/web")
    assert "fleet 'berlin' has no application named 'web'" in _refused(gone, 404, "name")
    gone = server.admin.delete(f"/api/v1/devices/{device.id}/applications/web")
    assert f"device {device.id!r} has no application named 'web'" in _refused(gone, 404, "name")


def test_a_viewer_reads_applications_but_cannot_write_them(server: Server) -> None:
    # Threat: a read-only dashboard token deploys or removes workloads on devices.
    _fleet(server, "berlin")
    device = _enroll(server)
    _set(server, "fleets/berlin", "web")
    token = create_token(server.db, "dash", "viewer")
    viewer = {"Authorization": f"Bearer {token}"}
    client = server.client
    assert client.get("/api/v1/fleets/berlin/applications", headers=viewer).status_code == 200
    assert client.get("/api/v1/fleets/berlin/applications/web", headers=viewer).status_code == 200
    for owner in ("fleets/berlin", f"devices/{device.id}"):
        path = f"/api/v1/{owner}/applications/web"
        _refused(client.put(path, json={"manifests": WEB_2}, headers=viewer), 403, "Authorization")
        _refused(client.delete(path, headers=viewer), 403, "Authorization")
        _refused(client.put(path, json={"manifests": WEB_2}), 401, "Authorization")
    shown = server.admin.get("/api/v1/fleets/berlin/applications/web").json()
    assert shown["manifests"] == WEB
    assert _applications(device) == {"web": manifests_digest(WEB)}


def test_every_application_write_records_an_event(server: Server) -> None:
    _fleet(server, "berlin")
    device = _enroll(server)
    _set(server, "fleets/berlin", "web")
    _set(server, f"devices/{device.id}", "web", WEB_2)
    server.admin.delete(f"/api/v1/devices/{device.id}/applications/web")
    server.admin.delete("/api/v1/fleets/berlin/applications/web")
    server.admin.delete("/api/v1/fleets/berlin/applications/web")  # refused: records nothing
    events = server.admin.get("/api/v1/events", params={"limit": 10}).json()["data"]
    kept = [(e["kind"], e["subject"]) for e in reversed(events) if e["kind"].startswith("app")]
    assert kept == [
        ("application.set", "fleet:berlin/applications/web"),
        ("application.set", f"device:{device.id}/applications/web"),
        ("application.delete", f"device:{device.id}/applications/web"),
        ("application.delete", "fleet:berlin/applications/web"),
    ]
    first = next(e for e in events if e["kind"] == "application.set")
    assert first["actor"] == "admin:ops"
    assert first["details"]["digest"] == manifests_digest(WEB_2)


# --- what devices get -----------------------------------------------------------------------------


def test_the_etag_changes_exactly_when_a_devices_applications_change(server: Server) -> None:
    _fleet(server, "berlin", "site=berlin")
    _fleet(server, "munich", "site=munich")
    device = _enroll(server, site="berlin")
    first = device.poll()
    assert first.status_code == 200 and "applications" not in first.json()
    without = device.etag
    # Applications of a fleet the device is not in, or the same manifests again: no change.
    _set(server, "fleets/munich", "web")
    assert device.poll().status_code == 304
    _set(server, "fleets/berlin", "web")
    changed = device.poll()
    assert changed.status_code == 200, changed.text
    assert device.etag != without
    (app,) = DesiredState.model_validate_json(changed.content).applications
    assert (app.name, app.manifests, app.images) == ("web", WEB, ["registry.example/web:1.0"])
    assert app.digest == manifests_digest(WEB)
    _set(server, "fleets/berlin", "web")  # the same manifests again
    assert device.poll().status_code == 304
    _set(server, "fleets/munich", "web", WEB_2)
    assert device.poll().status_code == 304
    _set(server, "fleets/berlin", "web", WEB_2)
    assert device.poll().status_code == 200
    # Removed again: the very state (and ETag) it had before applications.
    assert server.admin.delete("/api/v1/fleets/berlin/applications/web").status_code == 204
    last = device.poll()
    assert last.status_code == 200 and device.etag == without
    assert last.content == first.content


def test_a_report_answers_the_etag_a_poll_gets(server: Server) -> None:
    _fleet(server, "berlin")
    device = _enroll(server)
    _set(server, "fleets/berlin", "web")
    device.poll()
    answer = device.report()
    assert answer.status_code == 200, answer.text
    assert answer.json()["desired_etag"] == device.etag


def test_the_polls_fast_path_and_route_answer_applications_alike(server: Server) -> None:
    _fleet(server, "berlin")
    device = _enroll(server)
    _set(server, "fleets/berlin", "web")
    _set(server, "fleets/berlin", "db", DB)
    fast = device.signed("GET", "/api/v1/device/desired")
    route = device.signed("GET", "/api/v1/device/desired?via=route")
    assert (fast.status_code, fast.content) == (route.status_code, route.content)
    assert fast.headers["ETag"] == route.headers["ETag"]
    names = [a.name for a in DesiredState.model_validate_json(fast.content).applications]
    assert names == ["db", "web"]


def test_a_device_application_replaces_the_fleets_of_the_same_name(server: Server) -> None:
    _fleet(server, "berlin")
    one, two = _enroll(server), _enroll(server)
    _set(server, "fleets/berlin", "web")
    _set(server, "fleets/berlin", "db", DB)
    _set(server, f"devices/{one.id}", "web", WEB_2)
    assert _applications(one) == {"web": manifests_digest(WEB_2), "db": manifests_digest(DB)}
    assert _applications(two) == {"web": manifests_digest(WEB), "db": manifests_digest(DB)}
    own = server.admin.get(f"/api/v1/devices/{one.id}/applications").json()
    assert [a["name"] for a in own["data"]] == ["web"] and own["data"][0]["device_id"] == one.id
    shown = _shown(server, one)
    assert (shown["web"]["source"], shown["db"]["source"]) == ("device", "fleet:berlin")
    # Removing the device's own: the fleet's takes its place again.
    assert server.admin.delete(f"/api/v1/devices/{one.id}/applications/web").status_code == 204
    assert _applications(one) == _applications(two)


def test_two_fleets_with_one_name_the_first_fleet_by_name_wins(server: Server) -> None:
    _fleet(server, "b-fleet", "site=berlin")
    _fleet(server, "a-fleet", "tier=edge")
    device = _enroll(server, site="berlin", tier="edge")
    _set(server, "fleets/b-fleet", "web", WEB_2)
    _set(server, "fleets/a-fleet", "web")
    assert _applications(device) == {"web": manifests_digest(WEB)}
    assert _shown(server, device)["web"]["source"] == "fleet:a-fleet"


def test_a_selector_change_or_a_deleted_fleet_re_resolves_its_devices(server: Server) -> None:
    _fleet(server, "edge", "site=berlin")
    berlin, munich = _enroll(server, site="berlin"), _enroll(server, site="munich")
    _set(server, "fleets/edge", "web")
    assert (_applications(berlin), _applications(munich)) == ({"web": manifests_digest(WEB)}, {})
    moved = server.admin.patch("/api/v1/fleets/edge", json={"selector": "site=munich"})
    assert moved.status_code == 200, moved.text
    assert (_applications(berlin), _applications(munich)) == ({}, {"web": manifests_digest(WEB)})
    assert server.admin.patch("/api/v1/fleets/edge", json={"policy": {}}).status_code == 200
    assert munich.poll().status_code == 304  # a change that does not touch applications
    assert server.admin.delete("/api/v1/fleets/edge").status_code == 204
    assert _applications(munich) == {}
    with server.db.sessions() as session:
        assert session.get(Device, munich.id).applications is None  # type: ignore[union-attr]


def test_a_device_that_enrolls_gets_its_fleets_applications(server: Server) -> None:
    _fleet(server, "edge", "site=berlin")
    _set(server, "fleets/edge", "web")
    assert _applications(_enroll(server, site="berlin")) == {"web": manifests_digest(WEB)}
    assert _applications(_enroll(server, site="paris")) == {}


def _enrollments_racing_a_write(server: Server) -> None:
    """Devices enroll in threads while a fleet's application is set: each gets it."""
    _fleet(server, "edge")
    tokens = server.tokens(count=12)
    enrolled: list[SimDevice] = []
    threads = [
        threading.Thread(target=lambda t=token: enrolled.append(server.enroll(t)))
        for token in tokens
    ]
    for thread in threads[:6]:
        thread.start()
    _set(server, "fleets/edge", "web")
    for thread in threads[6:]:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(enrolled) == len(tokens)
    for device in enrolled:
        assert _applications(device) == {"web": manifests_digest(WEB)}, device.id


def test_devices_enrolling_while_an_application_is_set_all_get_it(server: Server) -> None:
    # Threat: a device that enrolls while an operator sets an application is resolved from
    # a state without it, and the write's own resolution misses the new device: it never
    # runs the application until something else changes.
    _enrollments_racing_a_write(server)


def test_a_long_poll_wakes_when_an_application_is_set(server: Server) -> None:
    _fleet(server, "berlin")
    device = _enroll(server)
    device.poll()
    answers: list[httpx.Response] = []
    waiting = threading.Thread(target=lambda: answers.append(device.poll(wait=60)))
    started = time.monotonic()
    waiting.start()
    time.sleep(0.5)  # the poll is waiting
    _set(server, "fleets/berlin", "web")
    waiting.join(timeout=30)
    assert answers and answers[0].status_code == 200, answers
    assert [a["name"] for a in answers[0].json()["applications"]] == ["web"]
    assert time.monotonic() - started < 30


def test_a_device_takes_at_most_64_applications_and_1_mib_of_them(server: Server) -> None:
    # Threat: an operator's write makes a device's desired state larger than a device reads
    # (it could then never learn its state again) or than it can report on.
    _fleet(server, "berlin")
    device = _enroll(server)
    for n in range(64):
        _set(server, f"devices/{device.id}", f"app-{n}")
    full = server.admin.put(
        f"/api/v1/devices/{device.id}/applications/one-more", json={"manifests": WEB}
    )
    assert "64 applications" in _refused(full, 409, "name")
    # A fleet's application that would make it 65: refused naming the device.
    answer = server.admin.put("/api/v1/fleets/berlin/applications/web", json={"manifests": WEB})
    assert "would run 65 applications" in _refused(answer, 422, "manifests")
    assert server.admin.get("/api/v1/fleets/berlin/applications").json()["count"] == 0
    for n in range(64):
        server.admin.delete(f"/api/v1/devices/{device.id}/applications/app-{n}")
    big = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: big}\ndata:\n  blob: " + "x" * 260_000
    for name in ("a", "b", "c"):
        _set(server, "fleets/berlin", name, big.replace("big", name))
    too_much = server.admin.put(
        "/api/v1/fleets/berlin/applications/d", json={"manifests": big.replace("big", "d")}
    )
    message = _refused(too_much, 422, "manifests")
    assert device.id in message and "bytes of applications" in message
    assert sorted(_applications(device)) == ["a", "b", "c"]


# --- reports ------------------------------------------------------------------------------------


def test_reported_statuses_are_shown_beside_the_digest_the_device_should_run(
    server: Server,
) -> None:
    _fleet(server, "berlin")
    device = _enroll(server)
    _set(server, "fleets/berlin", "web")
    _set(server, "fleets/berlin", "db", DB)
    old, new = manifests_digest(WEB_2), manifests_digest(WEB)
    statuses = [
        {"name": "web", "digest": old, "state": "ready"},  # runs an old version
        {"name": "db", "digest": manifests_digest(DB), "state": "failed", "reason": "image pull"},
        {"name": "gone", "digest": old, "state": "running"},  # not desired any more
    ]
    assert device.report(applications=statuses).status_code == 200
    shown = _shown(server, device)
    assert shown["web"] == {
        "name": "web",
        "source": "fleet:berlin",
        "desired_digest": new,
        "reported_digest": old,
        "state": "ready",
        "reason": "",
        "up_to_date": False,
    }
    assert (shown["db"]["state"], shown["db"]["reason"], shown["db"]["up_to_date"]) == (
        "failed",
        "image pull",
        True,
    )
    assert (shown["gone"]["desired_digest"], shown["gone"]["state"]) == (None, "running")
    # A report that does not say keeps what the device said before.
    assert device.report(booted={"version": "1.0.0", "commit": "1" * 64}).status_code == 200
    assert _shown(server, device)["db"]["state"] == "failed"
    listed = server.admin.get("/api/v1/devices").json()["data"][0]["applications"]
    assert [(a["name"], a["source"]) for a in listed] == [
        ("db", None),
        ("gone", None),
        ("web", None),
    ]
    # [] says the device runs none.
    assert device.report(applications=[]).status_code == 200
    assert _shown(server, device)["web"]["state"] is None


def test_an_application_that_fails_is_one_event_per_failure(server: Server) -> None:
    _fleet(server, "berlin")
    device = _enroll(server)
    _set(server, "fleets/berlin", "web")
    failed = {"name": "web", "digest": manifests_digest(WEB), "state": "failed", "reason": "oom"}
    for _ in range(3):
        assert device.report(applications=[failed]).status_code == 200
    other = {**failed, "digest": manifests_digest(WEB_2)}
    assert device.report(applications=[other]).status_code == 200
    events = server.admin.get("/api/v1/events", params={"kind": "device.application_failed"})
    data = events.json()["data"]
    assert [e["details"]["digest"] for e in reversed(data)] == [
        manifests_digest(WEB),
        manifests_digest(WEB_2),
    ]
    assert data[0]["subject"] == f"device:{device.id}" and data[0]["details"]["reason"] == "oom"


def test_a_report_with_a_bad_application_status_names_the_field(server: Server) -> None:
    device = _enroll(server)
    bad = [{"name": "web", "digest": "x", "state": "ready"}]
    _refused(device.report(applications=bad), 422, "applications[0].digest")
    bad = [{"name": "web", "digest": "a" * 64, "state": "sleeping"}]
    _refused(device.report(applications=bad), 422, "applications[0].state")


# --- PostgreSQL -----------------------------------------------------------------------------------


@pytest.mark.root
def test_applications_on_postgresql(tmp_path: Path) -> None:
    with cluster() as admin_url, serving(tmp_path, db_url=new_database(admin_url)) as server:
        _fleet(server, "edge", "site=berlin")
        device = _enroll(server, site="berlin")
        device.poll()
        _set(server, "fleets/edge", "web")
        assert device.poll().status_code == 200
        assert device.poll().status_code == 304
        _set(server, f"devices/{device.id}", "web", WEB_2)
        assert _applications(device) == {"web": manifests_digest(WEB_2)}
        later = _enroll(server, site="berlin")
        assert _applications(later) == {"web": manifests_digest(WEB)}
        server.admin.patch("/api/v1/fleets/edge", json={"selector": "site=munich"})
        assert _applications(later) == {}
        assert _applications(device) == {"web": manifests_digest(WEB_2)}


@pytest.mark.root
def test_devices_enrolling_while_an_application_is_set_on_postgresql(tmp_path: Path) -> None:
    with cluster() as admin_url, serving(tmp_path, db_url=new_database(admin_url)) as server:
        _enrollments_racing_a_write(server)
