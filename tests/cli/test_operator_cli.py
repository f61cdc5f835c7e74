"""``afield fleet``, ``afield rollout`` and ``afield device ls|show|app`` against a real fleet
manager.

Each module-scoped server is the real ``afield serve`` in a subprocess, with tokens made by the
real ``afield admin token create`` and releases registered through the API; the commands run as
the real ``afield`` in subprocesses. Devices cannot be created through the API yet, so the
device tests write rows straight into the server's SQLite file. The last tests plug an
``httpx.MockTransport`` into :class:`FleetClient` for answers a healthy server never gives
(5xx, oversized answers).
"""

from __future__ import annotations

import datetime
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from afield.errors import FleetError
from afield.fleet.client import FleetClient
from afield.fleet.db import Database
from afield.fleet.models import Device
from tests.conftest import afield, afield_server

COMMIT_1 = "1" * 64
COMMIT_2 = "2" * 64
POLICY = {"batches": [1, "10%", "100%"], "success_threshold": "95%", "health_window": "10m"}


@dataclass(frozen=True)
class Server:
    """A running fleet manager, its database URL and two tokens."""

    url: str
    db: str
    admin: str
    viewer: str

    def run(self, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        """``afield ARGS --server URL --token T`` (the admin token unless told otherwise)."""
        return afield(*args, "--server", self.url, "--token", token or self.admin)

    def json(self, *args: str, token: str | None = None) -> Any:
        """The ``--json`` output of a command that must succeed."""
        result = self.run(*args, "--json", token=token)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


def _token(db: str, name: str, role: str) -> str:
    made = afield("admin", "token", "create", name, "--role", role, "--db", db, "--json")
    assert made.returncode == 0, made.stderr
    token: str = json.loads(made.stdout)["token"]
    return token


def _register(url: str, token: str, version: str, commit: str) -> None:
    body = {"image": "gateway", "arch": "x86_64", "version": version, "commit": commit}
    headers = {"Authorization": f"Bearer {token}"}
    made = httpx.post(f"{url}/api/v1/releases", json=body, headers=headers)
    assert made.status_code == 201, made.text


def _device(device_id: str, labels: dict[str, str], **fields: Any) -> Device:
    return Device(id=device_id, name=f"gateway {device_id}", labels=labels, **fields)


@contextmanager
def _fleet_manager(base: Path, devices: list[Device]) -> Iterator[Server]:
    """``afield serve`` on a new database holding ``devices``, with an admin and a viewer token."""
    db = f"sqlite:///{base / 'fleet.db'}"
    admin, viewer = _token(db, "ops", "admin"), _token(db, "watcher", "viewer")
    database = Database(db)  # migrated by afield admin already
    try:
        with database.transaction() as session:
            session.add_all(devices)
    finally:
        database.close()
    with afield_server(base / "serve.log", "serve", "--db", db) as url:
        yield Server(url, db, admin, viewer)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A fleet manager with releases gateway/x86_64/1.0.0 and 1.1.0 and one offline device.

    Every fleet the tests make selects the offline device (role=gateway), so the server's
    rollout runner keeps their rollouts running (batch 1 waits for it) instead of completing
    them at once as it would for a fleet of no devices.
    """
    offline = _device("gw-offline", {"role": "gateway"}, last_seen=None)
    with _fleet_manager(tmp_path_factory.mktemp("operator"), [offline]) as running:
        _register(running.url, running.admin, "1.0.0", COMMIT_1)
        _register(running.url, running.admin, "1.1.0", COMMIT_2)
        yield running


@pytest.fixture(scope="module")
def devices(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A fleet manager whose database holds five devices in several statuses."""
    now = datetime.datetime.now(datetime.UTC)
    berlin_edge = {"site": "berlin", "tier": "edge"}
    rows = [
        _device("gw-01", berlin_edge, last_seen=now, current_version="1.0.0"),
        _device("gw-02", {"site": "berlin"}, last_seen=now, updating=True),
        _device("gw-03", {"site": "paris"}, last_seen=None),
        _device("gw-04", {"site": "berlin"}, last_seen=now, health_ok=False),
        _device("gw-05", {"site": "paris"}, last_seen=now, current_version="1.0.0"),
    ]
    with _fleet_manager(tmp_path_factory.mktemp("devices"), rows) as running:
        yield running


def _ids(page: dict[str, Any]) -> list[str]:
    return [d["id"] for d in page["data"]]


def _fleet(server: Server, name: str, *extra: str) -> None:
    made = server.run("fleet", "create", name, "--selector", "role=gateway", *extra)
    assert made.returncode == 0, made.stderr


def _start(server: Server, fleet: str) -> int:
    _fleet(server, fleet, "--policy", json.dumps(POLICY))
    started = server.json("rollout", "start", fleet, "--release", "gateway/x86_64/1.1.0")
    rollout_id: int = started["id"]
    return rollout_id


# --- fleets ----------------------------------------------------------------------------------


def test_fleet_create_ls_and_show_print_the_fleet(server: Server, tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(POLICY))
    made = server.run(
        "fleet", "create", "berlin",
        "--selector", "role=gateway,tier!=lab,!legacy",
        "--policy", str(policy),
        "--release", "gateway/x86_64/1.0.0",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "created fleet berlin" in made.stdout
    assert "gateway/x86_64/1.0.0" in made.stdout
    listed = server.run("fleet", "ls", token=server.viewer)
    assert listed.returncode == 0, listed.stderr
    line = next(x for x in listed.stdout.splitlines() if x.startswith("berlin"))
    assert "role=gateway,tier!=lab,!legacy" in line and "1, 10%, 100%" in line
    shown = server.run("fleet", "show", "berlin", token=server.viewer)
    assert shown.returncode == 0, shown.stderr
    assert "policy.success_threshold" in shown.stdout and "0.95" in shown.stdout


def test_fleet_json_is_the_api_answer(server: Server) -> None:
    _fleet(server, "hamburg", "--policy", '{"batches": ["50%"], "manual_approval": true}')
    listed = server.json("fleet", "ls")
    assert listed["count"] == len(listed["data"]) and listed["next_cursor"] is None
    (fleet,) = [f for f in listed["data"] if f["name"] == "hamburg"]
    assert fleet["selector"] == "role=gateway"
    assert fleet["policy"]["batches"] == ["50%", "100%"]  # normalised by the server
    shown = server.json("fleet", "show", "hamburg", token=server.viewer)
    assert shown == fleet


def test_fleet_create_reads_a_toml_policy_file(server: Server, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('batches = [2, "100%"]\nupdate_timeout = "30m"\n')
    _fleet(server, "munich", "--policy", str(policy))
    shown = server.json("fleet", "show", "munich")
    assert shown["policy"]["batches"] == [2, "100%"]
    assert shown["policy"]["update_timeout"] == "30m"


def test_a_bad_policy_exits_2_naming_the_field(server: Server) -> None:
    bad = server.run("fleet", "create", "bad", "--policy", '{"batches": [1, "150%"]}')
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: ") and "policy.batches[1]" in bad.stderr
    assert "over 100%" in bad.stderr and "Traceback" not in bad.stderr
    missing = server.run("fleet", "show", "bad")
    assert missing.returncode == 2 and "no fleet named 'bad'" in missing.stderr


def test_a_policy_with_two_problems_lists_both(server: Server) -> None:
    policy = '{"batches": [0], "success_threshold": 2}'
    bad = server.run("fleet", "create", "twice", "--policy", policy)
    assert bad.returncode == 2
    assert "2 problems" in bad.stderr
    assert "policy.batches[0]" in bad.stderr and "policy.success_threshold" in bad.stderr


def test_a_policy_file_that_is_not_json_exits_2_naming_the_file(
    server: Server, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text("batches: [1]\n")
    bad = server.run("fleet", "create", "yaml", "--policy", str(policy))
    assert bad.returncode == 2
    assert str(policy) in bad.stderr and "not valid JSON" in bad.stderr


def test_a_bad_selector_exits_2_naming_it(server: Server) -> None:
    # Set-based requirements (tier in (a,b)) are not in the server's selector language yet.
    bad = server.run("fleet", "create", "sel", "--selector", "site=berlin,tier in (a,b)")
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: selector") and "tier in (a" in bad.stderr


def test_creating_a_fleet_twice_is_refused(server: Server) -> None:
    _fleet(server, "twins")
    again = server.run("fleet", "create", "twins")
    assert again.returncode == 2 and "a fleet named 'twins' exists already" in again.stderr


# --- rollouts --------------------------------------------------------------------------------


def test_rollout_start_status_pause_resume_and_abort(server: Server) -> None:
    _fleet(server, "potsdam", "--policy", json.dumps(POLICY))
    started = server.run("rollout", "start", "potsdam", "--release", "gateway/x86_64/1.1.0")
    assert started.returncode == 0, started.stderr
    assert "to gateway/x86_64/1.1.0: running" in started.stdout
    (rollout_id,) = [r["id"] for r in server.json("rollout", "ls", "--fleet", "potsdam")["data"]]
    assert f"afield rollout status {rollout_id} --watch" in started.stdout

    status = server.run("rollout", "status", str(rollout_id), token=server.viewer)
    assert status.returncode == 0, status.stderr
    assert "running" in status.stdout and "1 of 3" in status.stdout
    for counter in ("succeeded", "failed", "unavailable", "waiting"):
        assert f"{counter}" in status.stdout
    shown = server.json("rollout", "status", str(rollout_id))
    assert shown["status"] == "running" and shown["batches"] == 3 and shown["batch"] == 0

    paused = server.json("rollout", "pause", str(rollout_id), "--reason", "site visit")
    assert paused["status"] == "paused" and paused["reason"] == "site visit"
    text = server.run("rollout", "status", str(rollout_id))
    assert "paused" in text.stdout and "site visit" in text.stdout
    resumed = server.run("rollout", "resume", str(rollout_id))
    assert resumed.returncode == 0 and "running" in resumed.stdout
    aborted = server.json("rollout", "abort", str(rollout_id))
    assert aborted["status"] == "aborted" and aborted["reason"] == "aborted by admin:ops"
    again = server.run("rollout", "abort", str(rollout_id))
    assert again.returncode == 2 and "aborted" in again.stderr


def test_a_second_rollout_start_is_refused_while_one_runs(server: Server) -> None:
    rollout_id = _start(server, "leipzig")
    second = server.run("rollout", "start", "leipzig")
    assert second.returncode == 2
    assert f"fleet 'leipzig' has rollout {rollout_id} (running); abort it first" in second.stderr


def test_a_viewer_token_cannot_start_a_rollout(server: Server) -> None:
    _fleet(server, "dresden", "--release", "gateway/x86_64/1.0.0")
    refused = server.run("rollout", "start", "dresden", token=server.viewer)
    assert refused.returncode == 2
    assert "viewer token" in refused.stderr and "writing needs admin" in refused.stderr
    assert server.json("rollout", "ls", "--fleet", "dresden")["count"] == 0


def test_rollout_start_uses_the_fleets_target_release(server: Server) -> None:
    _fleet(server, "bonn", "--release", "gateway/x86_64/1.0.0")
    started = server.json("rollout", "start", "bonn")
    assert started["release"]["version"] == "1.0.0" and started["release"]["commit"] == COMMIT_1


def test_rollout_start_without_any_release_exits_2_naming_release(server: Server) -> None:
    _fleet(server, "kiel")
    refused = server.run("rollout", "start", "kiel")
    assert refused.returncode == 2
    assert "release: fleet 'kiel' has no target release" in refused.stderr


def test_an_unregistered_or_malformed_release_exits_2(server: Server) -> None:
    _fleet(server, "ulm")
    unknown = server.run("rollout", "start", "ulm", "--release", "gateway/x86_64/9.9.9")
    assert unknown.returncode == 2 and "no release gateway/x86_64/9.9.9" in unknown.stderr
    malformed = server.run("rollout", "start", "ulm", "--release", "gateway-9.9.9")
    assert malformed.returncode == 2 and "expected image/arch/version" in malformed.stderr


def test_approving_a_running_rollout_is_refused(server: Server) -> None:
    rollout_id = _start(server, "essen")
    refused = server.run("rollout", "approve", str(rollout_id))
    assert refused.returncode == 2
    assert "cannot approve a rollout that is running" in refused.stderr


def test_rollout_status_of_an_unknown_rollout_exits_2(server: Server) -> None:
    missing = server.run("rollout", "status", "999999")
    assert missing.returncode == 2 and "no rollout 999999" in missing.stderr


def _watch(server: Server, rollout_id: int) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "afield.cli", "rollout", "status", str(rollout_id)]
    options = ["--watch", "--interval", "0.2", "--server", server.url, "--token", server.viewer]
    return subprocess.Popen(
        [*command, *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_rollout_watch_ends_when_the_rollout_pauses(server: Server) -> None:
    rollout_id = _start(server, "aachen")
    with _watch(server, rollout_id) as watcher:
        time.sleep(1.5)
        assert watcher.poll() is None  # still watching a running rollout
        server.run("rollout", "pause", str(rollout_id), "--reason", "storm")
        out, err = watcher.communicate(timeout=20)
    assert watcher.returncode == 0, err
    assert "paused" in out and "storm" in out


def test_rollout_watch_stops_at_approval_and_approve_starts_the_next_batch(
    server: Server,
) -> None:
    policy = '{"batches": [1, "100%"], "manual_approval": true}'
    made = server.run("fleet", "create", "gated", "--selector", "role=gated", "--policy", policy)
    assert made.returncode == 0, made.stderr
    now = datetime.datetime.now(datetime.UTC)
    database = Database(server.db)
    try:
        with database.transaction() as session:
            session.add(_device("gated-1", {"role": "gated"}, last_seen=now))
            session.add(_device("gated-2", {"role": "gated"}, last_seen=None))
        rollout_id = server.json("rollout", "start", "gated", "--release", "gateway/x86_64/1.1.0")[
            "id"
        ]
        # The runner tells the online device to update; it then succeeds (as its reports would
        # make it: the device API's side is tested in tests/fleet/test_device_api.py).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with database.transaction() as session:
                device = session.get(Device, "gated-1")
                assert device is not None
                if device.phase == "pending":
                    device.phase, device.current_version = "succeeded", "1.1.0"
                    break
            time.sleep(0.1)
    finally:
        database.close()
    with _watch(server, rollout_id) as watcher:
        out, err = watcher.communicate(timeout=30)  # the runner steps it within seconds
    assert watcher.returncode == 0, err
    assert "waiting_approval" in out and "approve to start batch 2" in out
    assert "1 of 2" in out and "2 devices selected" in out
    succeeded = next(line for line in out.splitlines() if line.startswith("succeeded"))
    assert succeeded.rstrip().endswith("1/2")
    approved = server.json("rollout", "approve", str(rollout_id))
    assert approved["status"] == "running" and approved["batch"] == 1


def test_rollout_watch_with_json_is_refused(server: Server) -> None:
    refused = server.run("rollout", "status", "1", "--watch", "--json")
    assert refused.returncode == 2 and "--watch" in refused.stderr and refused.stdout == ""


def test_rollout_ls_filters_by_status(server: Server) -> None:
    rollout_id = _start(server, "trier")
    server.run("rollout", "pause", str(rollout_id))
    paused = server.json("rollout", "ls", "--status", "paused")
    assert rollout_id in [r["id"] for r in paused["data"]]
    assert {r["status"] for r in paused["data"]} == {"paused"}
    table = server.run("rollout", "ls", "--fleet", "trier")
    assert f"{rollout_id}" in table.stdout and "paused" in table.stdout


# --- applications ----------------------------------------------------------------------------

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


def _manifests(tmp_path: Path, text: str = WEB, name: str = "web.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_fleet_app_set_list_show_and_rm(server: Server, tmp_path: Path) -> None:
    _fleet(server, "apps")
    web = _manifests(tmp_path)
    made = server.run("fleet", "app", "set", "apps", "web", "--manifests", str(web))
    assert made.returncode == 0, made.stderr
    assert "set application web on fleet apps" in made.stdout
    assert "registry.example/web:1.0" in made.stdout  # the images the manifests name
    listed = server.run("fleet", "app", "list", "apps", token=server.viewer)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith("web"))
    assert "registry.example/web:1.0" in row and "admin:ops" in row
    data = server.json("fleet", "app", "list", "apps")
    assert [a["name"] for a in data["data"]] == ["web"] and data["count"] == 1
    shown = server.run("fleet", "app", "show", "apps", "web", token=server.viewer)
    assert shown.returncode == 0 and shown.stdout == WEB
    # The fleet's device (role=gateway) is told to run it; it has not reported it yet.
    device = server.run("device", "show", "gw-offline")
    line = next(x for x in device.stdout.splitlines() if x.startswith("app web"))
    assert "not reported yet" in line and "fleet:apps" in line
    removed = server.run("fleet", "app", "rm", "apps", "web")
    assert removed.returncode == 0 and "removed application web from fleet apps" in removed.stdout
    empty = server.run("fleet", "app", "list", "apps")
    assert empty.returncode == 0 and "no applications on fleet apps" in empty.stdout


def test_device_app_set_takes_images_and_lists_the_devices_own(
    server: Server, tmp_path: Path
) -> None:
    web = _manifests(tmp_path)
    made = server.json(
        "device", "app", "set", "gw-offline", "own", "--manifests", str(web),
        "--image", "registry.example/web@sha256:" + "a" * 64,
    )  # fmt: skip
    assert made["device_id"] == "gw-offline" and made["fleet"] is None
    assert made["images"] == ["registry.example/web@sha256:" + "a" * 64]
    listed = server.json("device", "app", "list", "gw-offline", token=server.viewer)
    assert [a["name"] for a in listed["data"]] == ["own"]
    shown = server.json("device", "show", "gw-offline")
    assert {a["name"]: a["source"] for a in shown["applications"]}["own"] == "device"
    assert server.run("device", "app", "rm", "gw-offline", "own").returncode == 0
    assert server.json("device", "app", "list", "gw-offline")["count"] == 0


def test_manifests_podman_cannot_play_exit_2_naming_the_file_and_field(
    server: Server, tmp_path: Path
) -> None:
    _fleet(server, "bad-apps")
    service = _manifests(tmp_path, "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n")
    bad = server.run("fleet", "app", "set", "bad-apps", "web", "--manifests", str(service))
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.startswith(f"error: {service}: manifests, document 1")
    assert "Service" in bad.stderr and "Traceback" not in bad.stderr
    no_image = _manifests(tmp_path, WEB.replace("    image: registry.example/web:1.0\n", ""))
    bad = server.run("fleet", "app", "set", "bad-apps", "web", "--manifests", str(no_image))
    assert bad.returncode == 2 and "spec.containers[0].image" in bad.stderr
    assert server.json("fleet", "app", "list", "bad-apps")["count"] == 0


def test_a_manifests_file_that_cannot_be_sent_exits_2_naming_it(
    server: Server, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.yaml"
    bad = server.run("fleet", "app", "set", "apps", "web", "--manifests", str(missing))
    assert bad.returncode == 2
    assert f"--manifests {missing}: cannot read it" in bad.stderr
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"kind: Pod\n\xff\xfe")
    bad = server.run("fleet", "app", "set", "apps", "web", "--manifests", str(binary))
    assert bad.returncode == 2 and f"{binary}: not UTF-8 text (byte 10)" in bad.stderr
    empty = _manifests(tmp_path, "\n", "empty.yaml")
    bad = server.run("fleet", "app", "set", "apps", "web", "--manifests", str(empty))
    assert bad.returncode == 2 and f"{empty}: empty" in bad.stderr


def test_app_commands_name_an_unknown_fleet_device_or_application(
    server: Server, tmp_path: Path
) -> None:
    web = _manifests(tmp_path)
    bad = server.run("fleet", "app", "set", "nowhere", "web", "--manifests", str(web))
    assert bad.returncode == 2 and "no fleet named 'nowhere'" in bad.stderr
    bad = server.run("device", "app", "list", "gw-404")
    assert bad.returncode == 2 and "no device 'gw-404'" in bad.stderr
    _fleet(server, "app-less")
    bad = server.run("fleet", "app", "rm", "app-less", "web")
    assert bad.returncode == 2
    assert "fleet 'app-less' has no application named 'web'" in bad.stderr
    bad = server.run("fleet", "app", "set", "app-less", "Web_1", "--manifests", str(web))
    assert bad.returncode == 2 and bad.stderr.startswith("error: name")


def test_a_viewer_token_cannot_set_an_application(server: Server, tmp_path: Path) -> None:
    _fleet(server, "viewed")
    web = _manifests(tmp_path)
    refused = server.run(
        "fleet", "app", "set", "viewed", "web", "--manifests", str(web), token=server.viewer
    )
    assert refused.returncode == 2 and "writing needs admin" in refused.stderr
    assert server.json("fleet", "app", "list", "viewed")["count"] == 0


# --- devices ---------------------------------------------------------------------------------


def test_device_ls_and_show_on_a_fleet_manager_without_devices(tmp_path: Path) -> None:
    with _fleet_manager(tmp_path, []) as empty:
        listed = empty.run("device", "ls", token=empty.viewer)
        assert listed.returncode == 0 and "no devices" in listed.stdout
        assert empty.json("device", "ls") == {"data": [], "count": 0, "next_cursor": None}
        unknown = empty.run("device", "show", "gw-404")
    assert unknown.returncode == 2 and "no device 'gw-404'" in unknown.stderr


def test_device_ls_filters_by_labels_and_status(devices: Server) -> None:
    berlin = devices.json("device", "ls", "--label", "site=berlin")
    assert _ids(berlin) == ["gw-01", "gw-02", "gw-04"]
    edge = devices.json("device", "ls", "--label", "site=berlin", "--label", "tier=edge")
    assert _ids(edge) == ["gw-01"]
    online = devices.json("device", "ls", "--status", "Online")
    assert _ids(online) == ["gw-01", "gw-05"]
    paris_offline = devices.json("device", "ls", "--label", "site=paris", "--status", "Offline")
    assert _ids(paris_offline) == ["gw-03"]


def test_device_ls_prints_a_table(devices: Server) -> None:
    table = devices.run("device", "ls", token=devices.viewer)
    assert table.returncode == 0, table.stderr
    rows = {line.split()[0]: line for line in table.stdout.splitlines()[1:] if line.strip()}
    assert sorted(rows) == ["gw-01", "gw-02", "gw-03", "gw-04", "gw-05"]
    assert "Online" in rows["gw-01"] and "site=berlin,tier=edge" in rows["gw-01"]
    assert "Updating" in rows["gw-02"] and "Offline" in rows["gw-03"]
    assert "Degraded" in rows["gw-04"]


def test_device_ls_pages_with_limit_and_gets_all_with_all(devices: Server) -> None:
    first = devices.run("device", "ls", "--limit", "2")
    assert first.returncode == 0
    assert "gw-01" in first.stdout and "gw-02" in first.stdout and "gw-03" not in first.stdout
    assert "--cursor gw-02" in first.stderr
    second = devices.json("device", "ls", "--limit", "2", "--cursor", "gw-02")
    assert _ids(second) == ["gw-03", "gw-04"] and second["next_cursor"] == "gw-04"
    every = devices.json("device", "ls", "--limit", "2", "--all")
    assert _ids(every) == ["gw-01", "gw-02", "gw-03", "gw-04", "gw-05"]
    assert every["count"] == 5 and every["next_cursor"] is None


def test_device_show_prints_one_device(devices: Server) -> None:
    shown = devices.run("device", "show", "gw-04", token=devices.viewer)
    assert shown.returncode == 0, shown.stderr
    assert "Degraded" in shown.stdout and "failing" in shown.stdout
    data = devices.json("device", "show", "gw-01")
    assert data["labels"] == {"site": "berlin", "tier": "edge"}
    assert data["status"] == "Online" and data["current_version"] == "1.0.0"


def test_device_ls_with_an_unknown_status_exits_2_naming_it(devices: Server) -> None:
    bad = devices.run("device", "ls", "--status", "Sleeping")
    assert bad.returncode == 2 and bad.stderr.startswith("error: status")
    assert "Online" in bad.stderr


# --- reaching the server ---------------------------------------------------------------------


def test_an_unreachable_server_exits_1_naming_its_url() -> None:
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    failed = afield("fleet", "ls", "--server", url, "--token", "afield_" + "x" * 43)
    assert failed.returncode == 1
    assert failed.stderr.startswith(f"error: cannot reach the fleet manager at {url}")
    assert "connection refused" in failed.stderr


def test_a_wrong_server_path_says_it_may_not_be_the_fleet_manager(server: Server) -> None:
    wrong = afield("fleet", "ls", "--server", f"{server.url}/fleet", "--token", server.viewer)
    assert wrong.returncode == 2
    assert f"{server.url}/fleet/api/v1/fleets" in wrong.stderr
    assert "is --server the fleet manager?" in wrong.stderr


def test_a_server_that_is_not_a_url_exits_2() -> None:
    bad = afield("fleet", "ls", "--server", "localhost:8080", "--token", "t")
    assert bad.returncode == 2 and "--server 'localhost:8080'" in bad.stderr


def test_a_missing_token_exits_2_saying_how_to_make_one(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AFIELD_TOKEN", raising=False)
    missing = afield("fleet", "ls", "--server", server.url)
    assert missing.returncode == 2 and "afield admin token create" in missing.stderr


def test_an_unknown_token_is_refused(server: Server) -> None:
    refused = server.run("fleet", "ls", token="afield_" + "x" * 43)
    assert refused.returncode == 2 and "unknown or revoked" in refused.stderr


def test_server_and_token_come_from_the_environment(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fleet(server, "erfurt")
    monkeypatch.setenv("AFIELD_SERVER", server.url)
    monkeypatch.setenv("AFIELD_TOKEN", server.viewer)
    shown = afield("fleet", "show", "erfurt", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["name"] == "erfurt"


# --- the client on its own -------------------------------------------------------------------


def test_the_client_lists_releases_and_events(server: Server) -> None:
    with FleetClient(server.url, server.viewer) as client:
        releases = client.list_releases(image="gateway")
        events = client.list_events(kind="release.create")
    assert {r["version"] for r in releases["data"]} == {"1.0.0", "1.1.0"}
    assert {e["subject"] for e in events["data"]} == {
        "gateway/x86_64/1.0.0",
        "gateway/x86_64/1.1.0",
    }


def test_a_5xx_answer_is_a_failure_naming_the_url() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, json={"error": "internal error: OperationalError"})

    client = FleetClient("http://fleet.test", "t", transport=httpx.MockTransport(broken))
    with pytest.raises(FleetError) as caught:
        client.show_rollout(3)
    assert not caught.value.user_error
    assert "http://fleet.test/api/v1/rollouts/3" in str(caught.value)
    assert "500: internal error: OperationalError" in str(caught.value)


def test_an_answer_over_the_size_limit_is_refused() -> None:
    # A misbehaving or hostile server cannot make the CLI read an unbounded answer.
    def huge(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"[" + b"0," * 100_000 + b"0]")

    client = FleetClient(
        "http://fleet.test", "t", transport=httpx.MockTransport(huge), max_response=10_000
    )
    with pytest.raises(FleetError, match="larger than 10000 bytes"):
        client.list_fleets()


def test_an_answer_that_is_not_json_is_a_user_error() -> None:
    def html(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"<html>router login</html>")

    client = FleetClient("http://fleet.test", "t", transport=httpx.MockTransport(html))
    with pytest.raises(FleetError, match="is --server the fleet manager") as caught:
        client.show_fleet("berlin")
    assert caught.value.user_error
