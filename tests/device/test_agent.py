"""The device agent (``afield device run``) and the fleet-reachability check (``check-fleet``).

Unit tests cover the configuration, the decision, the identity on disk and the refused commits;
the integration tests run a real fleet manager (:func:`afield.fleet.app.create_app` under
uvicorn on 127.0.0.1) that serves the update repository at ``/repo/`` and real device sysroots
booted by the simulator. The slow test boots the session's composed image, whose required
check ``40-afield-fleet.sh`` runs the image's own ``afield device check-fleet``.
"""

from __future__ import annotations

import json
import random
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI

from afield import blueprint as bp
from afield._serving import running
from afield.compose import compose
from afield.device.agent import (
    Action,
    Agent,
    AgentOptions,
    StepResult,
    check_fleet,
    decide,
    enroll,
    identity_dir,
    load_identity,
    read_config,
    status_report,
    token_file,
)
from afield.device.agent import run as run_agent
from afield.device.bootseq import boot_once
from afield.device.fleetclient import FleetClient, FleetRefusedError
from afield.device.lifecycle import Device
from afield.device.state import atomic_write
from afield.device.transport import RetryPolicy
from afield.device.update import device_arch
from afield.errors import DeviceError, TransportError
from afield.fleet.app import FleetSettings, create_app
from afield.fleet.auth import create_token
from afield.fleet.db import Database
from afield.fleet.protocol import (
    DesiredRelease,
    DesiredState,
    UpdateProgress,
    VersionRef,
    new_device_key,
)
from afield.image import open_repository
from afield.release import init_repository
from afield.trust import Keyring
from afield.workloads.apps import Applications
from afield.workloads.podman import Podman
from tests.conftest import Composed, afield
from tests.device.conftest import NewDevice, Site
from tests.device.images import commit_image

A, B, C = "a" * 64, "b" * 64, "c" * 64
DEAD = "http://127.0.0.1:9"  # the discard port: nothing listens there


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@dataclass(frozen=True)
class Root:
    """A system root as the check sees it: ``etc`` of the deployment, ``var/lib/afield``."""

    path: Path

    @property
    def etc(self) -> Path:
        return self.path / "etc"

    @property
    def var_lib(self) -> Path:
        return self.path / "var" / "lib" / "afield"

    def etc_config(self, text: str) -> Path:
        return _write(self.etc / "afield" / "agent.toml", text)

    def factory_config(self, text: str) -> Path:
        return _write(self.var_lib / "agent.toml", text)

    def onboarding(self, fleet_url: str) -> Path:
        record = {"guid": "g", "completed": True, "fleet_url": fleet_url}
        return _write(self.var_lib / "onboarding.json", json.dumps(record))


@pytest.fixture
def root(tmp_path: Path) -> Root:
    return Root(tmp_path / "root")


# --- configuration -----------------------------------------------------------------------------


def test_config_defaults_when_no_file_exists(root: Root) -> None:
    config = read_config(root.etc, root.var_lib)
    assert config.server is None
    assert (config.poll_wait, config.network_grace) == (60, 300.0)
    assert config.reboot_command == ("systemctl", "reboot")


def test_config_takes_each_key_from_the_first_file_that_sets_it(root: Root) -> None:
    root.onboarding("http://onboarded:1")
    factory = root.factory_config(
        'os = "gateway"\nserver = "http://factory:2/"\ntrust_root = "/x"\npoll_wait = 5\n'
    )
    etc = root.etc_config('network_grace = 2.5\nreboot_command = ["/sbin/reboot", "-f"]\n')
    config = read_config(root.etc, root.var_lib)
    assert config.server == "http://factory:2"  # the factory's beats onboarding's
    assert config.poll_wait == 5 and config.network_grace == 2.5
    assert config.reboot_command == ("/sbin/reboot", "-f")
    assert config.sources == {
        "server": str(factory),
        "poll_wait": str(factory),
        "network_grace": str(etc),
        "reboot_command": str(etc),
    }
    root.etc_config('server = "https://image:3"\nreboot_command = "systemctl reboot --force"\n')
    config = read_config(root.etc, root.var_lib)
    assert config.server == "https://image:3"
    assert config.reboot_command == ("systemctl", "reboot", "--force")


def test_config_falls_back_to_the_fleet_manager_onboarding_named(root: Root) -> None:
    record = root.onboarding("http://onboarded:1")
    root.factory_config('os = "gateway"\n')
    config = read_config(root.etc, root.var_lib)
    assert config.server == "http://onboarded:1"
    assert config.sources["server"] == str(record)


def test_an_empty_server_in_the_image_means_unmanaged(root: Root) -> None:
    root.onboarding("http://onboarded:1")
    root.factory_config('server = "http://factory:2"\n')
    root.etc_config('server = ""\n')
    assert read_config(root.etc, root.var_lib).server is None


def test_config_errors_name_every_file_and_key_at_once(root: Root) -> None:
    etc = root.etc_config('server = "ftp://x"\npoll_wait = 500\nnetwork_grace = true\nsrever = 1\n')
    factory = root.factory_config('reboot_command = ""\n')
    with pytest.raises(DeviceError) as raised:
        read_config(root.etc, root.var_lib)
    message = str(raised.value)
    assert raised.value.user_error
    assert "5 problems" in message
    assert f"{etc}: server: 'ftp://x' is not an http:// or https:// URL" in message
    assert f"{etc}: poll_wait: expected whole seconds from 0 to 120, got 500" in message
    assert f"{etc}: network_grace: expected seconds from 0 to 3600, got True" in message
    assert f"{etc}: srever: unknown key; accepted: server, poll_wait" in message
    assert f"{factory}: reboot_command: expected a command line" in message


def test_config_that_is_not_toml_or_too_large_is_refused(root: Root) -> None:
    path = root.etc_config("server = \n")
    with pytest.raises(DeviceError, match=rf"{path}: not valid TOML"):
        read_config(root.etc, root.var_lib)
    path.write_text("# padding\n" * 8000)
    with pytest.raises(DeviceError, match=rf"{path}: larger than 65536 bytes"):
        read_config(root.etc, root.var_lib)


def test_a_corrupt_onboarding_record_is_named(root: Root) -> None:
    record = _write(root.var_lib / "onboarding.json", "{not json")
    with pytest.raises(DeviceError, match=rf"{record}: fleet_url: not usable"):
        read_config(root.etc, root.var_lib)


# --- the reachability check --------------------------------------------------------------------


class _Answer(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        body = b'{"status": "ok"}' if self.path == "/healthz" and self.status == 200 else b"{}"
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def answering() -> Iterator[tuple[str, type[_Answer]]]:
    """A tiny HTTP server whose ``/healthz`` answers ``handler.status``."""
    handler = type("Handler", (_Answer,), {"status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_an_unmanaged_device_passes_the_check(root: Root) -> None:
    assert check_fleet(root.path) == (True, "not managed by a fleet manager")


def test_the_check_passes_when_healthz_answers(
    root: Root, answering: tuple[str, type[_Answer]]
) -> None:
    url, _ = answering
    root.factory_config(f'server = "{url}"\n')
    reachable, why = check_fleet(root.path)
    assert reachable and url in why


def test_the_check_retries_for_the_grace_period_then_fails(root: Root) -> None:
    # Threat: an update that points the agent at a fleet manager it cannot reach (the device
    # would be lost to its fleet) must fail its boot, after giving the network time to come up.
    path = root.etc_config(f'server = "{DEAD}"\nnetwork_grace = 30\n')
    now = [0.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    reachable, why = check_fleet(root.path, sleep=sleep, clock=lambda: now[0])
    assert not reachable
    assert waits == [3.0] * 10
    assert f"fleet manager {DEAD} (server in {path}) unreachable for 30 s, 11 attempts" in why


def test_the_check_fails_on_a_server_error(
    root: Root, answering: tuple[str, type[_Answer]]
) -> None:
    url, handler = answering
    handler.status = 503
    root.factory_config(f'server = "{url}"\n')
    reachable, why = check_fleet(root.path, grace=0)
    assert not reachable and "HTTP 503" in why


def test_check_fleet_command_exit_codes(root: Root, answering: tuple[str, type[_Answer]]) -> None:
    url, _ = answering
    unmanaged = afield("device", "check-fleet", "--sysroot", str(root.path))
    assert unmanaged.returncode == 0 and "not managed" in unmanaged.stdout
    root.etc_config(f'server = "{url}"\n')
    live = afield("device", "check-fleet", "--sysroot", str(root.path))
    assert live.returncode == 0, live.stdout + live.stderr
    root.etc_config(f'server = "{DEAD}"\nnetwork_grace = 1\n')
    started = time.monotonic()
    dead = afield("device", "check-fleet", "--sysroot", str(root.path))
    assert dead.returncode == 1, dead.stdout + dead.stderr
    assert dead.stderr.startswith("error: fleet manager") and "unreachable for 1 s" in dead.stderr
    assert time.monotonic() - started < 30
    root.etc_config("poll_wait = -1\n")
    bad = afield("device", "check-fleet", "--sysroot", str(root.path))
    assert bad.returncode == 2 and bad.stderr.startswith("error: agent configuration")


# --- the decision ------------------------------------------------------------------------------


def _desired(commit: str | None, version: str = "2.0.0") -> DesiredState:
    release = None
    if commit is not None:
        release = DesiredRelease(image="gateway", arch="x86_64", version=version, commit=commit)
    return DesiredState(device_id="dev-1", release=release, repo_url="/repo/")


RUNNING = VersionRef(version="1.0.0", commit=A)


@pytest.mark.parametrize(
    ("desired", "pending", "refused", "action"),
    [
        (None, None, {}, Action.IDLE),
        (_desired(None), None, {}, Action.IDLE),
        (_desired(A, "1.0.0"), None, {}, Action.IDLE),
        (_desired(B), None, {}, Action.INSTALL),
        (_desired(B), B, {}, Action.REBOOT),
        (_desired(B), C, {}, Action.INSTALL),
        (_desired(B), None, {B: "rolled back"}, Action.REFUSE),
        (_desired(B, "1.0.0"), None, {}, Action.REFUSE),
        (_desired(B, "0.9"), None, {}, Action.REFUSE),
        (_desired(B, "2.0.0-rc1"), None, {}, Action.INSTALL),  # the signed metadata decides
    ],
)
def test_decide(
    desired: DesiredState | None, pending: str | None, refused: dict[str, str], action: Action
) -> None:
    assert decide(desired, booted=RUNNING, pending=pending, refused=refused).action is action


def test_a_commit_rolled_back_from_is_refused_even_when_newer() -> None:
    # Threat: a fleet manager (or an operator) pushing the release that just failed its health
    # checks again, so the device boots a broken image over and over.
    decision = decide(_desired(B, "9.0"), booted=RUNNING, pending=None, refused={B: "bad"})
    assert decision.action is Action.REFUSE and "bad" in decision.reason


# --- identity and agent state ------------------------------------------------------------------


def _sysroot(tmp_path: Path) -> Device:
    return Device.init(tmp_path / "sysroot", "gateway", server=DEAD)


@pytest.mark.root
def test_an_enrollment_cut_off_keeps_its_key_and_token_for_the_next_try(tmp_path: Path) -> None:
    device = _sysroot(tmp_path)
    _write(token_file(device), "t" * 32 + "\n")
    with (
        FleetClient(DEAD, timeout=2) as client,
        pytest.raises(TransportError, match="cannot reach"),
    ):
        enroll(device, client)
    key_file = identity_dir(device) / "device.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert token_file(device).exists()  # not spent
    assert load_identity(device) is None  # not enrolled
    first = key_file.read_bytes()
    with FleetClient(DEAD, timeout=2) as client, pytest.raises(TransportError):
        enroll(device, client)
    assert key_file.read_bytes() == first  # the same key is offered again


@pytest.mark.root
def test_a_device_without_identity_or_token_says_how_to_enroll(tmp_path: Path) -> None:
    # Neither gets better by waiting: the agent stops at once (no retry loop).
    device = _sysroot(tmp_path)
    with pytest.raises(DeviceError, match=r"no enrollment token.*enroll-token, or pass --token"):
        run_agent(device, AgentOptions(sleep=_no_sleep))
    unmanaged = Device.init(tmp_path / "other", "gateway")
    with pytest.raises(DeviceError, match="no fleet manager configured"):
        run_agent(unmanaged, AgentOptions(sleep=_no_sleep))


def _no_sleep(seconds: float) -> None:
    raise AssertionError(f"the agent waited {seconds} s to retry what cannot succeed")


def _fake_identity(device: Device, device_id: str = "dev-1") -> None:
    """Identity files as an enrollment leaves them (for tests that need no fleet manager)."""
    directory = identity_dir(device)
    directory.mkdir(parents=True, mode=0o700)
    key = new_device_key().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    atomic_write(directory / "device.key", key, point="k", mode=0o600)
    record = {"device_id": device_id, "fleet_url": DEAD}
    atomic_write(directory / "identity.json", json.dumps(record).encode(), point="i")


@pytest.mark.root
def test_commits_rolled_back_from_stay_refused_after_the_journal_is_lost(tmp_path: Path) -> None:
    device = _sysroot(tmp_path)
    _fake_identity(device)
    agent = Agent(device)
    assert agent.identity.device_id == "dev-1"
    assert agent.refused() == {}
    device.state.record("rolled back", reason="fallback boot", to=A, **{"from": B})
    refused = agent.refused()
    assert list(refused) == [B] and "rolled back" in refused[B]
    device.state.journal.unlink()  # the journal is not the only record
    assert Agent(device).refused() == refused
    saved = json.loads((device.state.directory / "agent-state.json").read_text())
    assert saved == {"refused": refused}


@pytest.mark.root
def test_status_report_of_a_booted_device(new_device: NewDevice) -> None:
    device = new_device()
    report = status_report(device, UpdateProgress(state="idle"))
    (booted,) = device.deployments()
    assert report.booted == VersionRef(version="1.0.0", commit=booted.checksum)
    assert report.pending is None and report.rollback is None
    assert report.health is not None and report.health.ok and report.health.failed == []
    assert report.image == "gateway" and report.rolled_back is None


@pytest.mark.root
@pytest.mark.parametrize("enrolled", [True, False])
def test_the_agent_keeps_retrying_with_backoff_while_the_server_is_down(
    tmp_path: Path, enrolled: bool
) -> None:
    # The fleet manager is down for good here; the agent must wait longer and longer between
    # tries instead of hammering it, and never give up (enrolling, or reporting).
    device = _sysroot(tmp_path)
    if enrolled:
        _fake_identity(device)
    else:
        _write(token_file(device), "t" * 32)
    waits: list[float] = []

    class Enough(Exception):
        pass

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 8:
            raise Enough

    backoff = RetryPolicy(base_delay=1.0, max_delay=300.0, rng=random.Random(7))  # noqa: S311
    options = AgentOptions(sleep=sleep, timeout=2, backoff=backoff)
    with pytest.raises(Enough):
        run_agent(device, options)
    # Full jitter under a ceiling that doubles: 1, 2, 4, ... 128 s.
    same = RetryPolicy(base_delay=1.0, max_delay=300.0, rng=random.Random(7))  # noqa: S311
    assert waits == [same.delay(attempt) for attempt in range(1, 9)]
    assert all(w <= 2 ** (n - 1) for n, w in enumerate(waits, 1))
    assert load_identity(device) is None or enrolled
    assert token_file(device).exists() is not enrolled


# --- with a real fleet manager -----------------------------------------------------------------


@dataclass
class Fleet:
    """A fleet manager on 127.0.0.1 serving ``site`` at /repo/, and an admin client."""

    url: str
    app: FastAPI
    admin: httpx.Client
    site: Site

    def token(self) -> str:
        body = {"count": 1, "ttl_seconds": 600, "labels": {"site": "lab"}}
        answer = self.admin.post("/api/v1/enrollment-tokens", json=body)
        assert answer.status_code == 201, answer.text
        token: str = answer.json()["tokens"][0]
        return token

    def device(self, name: str = "sysroot") -> Device:
        """A device with 1.0.0 booted, configured for this fleet manager, given a token as
        onboarding leaves it."""
        root = self.site.directory / "tuf" / "root.json"
        device = Device.init(self.site.tmp / name, "gateway", server=self.url, trust_root=root)
        device.install(self.site.directory, self.site.v1)
        assert boot_once(device).healthy
        _write(token_file(device), self.token() + "\n")
        return device

    def shown(self, device_id: str) -> dict[str, Any]:
        answer = self.admin.get(f"/api/v1/devices/{device_id}")
        assert answer.status_code == 200, answer.text
        shown: dict[str, Any] = answer.json()
        return shown

    def roll_out(self, version: str) -> None:
        """Roll ``version`` out to the fleet "lab" and step the runner once."""
        release = {"image": "gateway", "arch": device_arch(), "version": version}
        if self.admin.get("/api/v1/fleets/lab").status_code == 404:
            made = self.admin.post("/api/v1/fleets", json={"name": "lab", "selector": "site=lab"})
            assert made.status_code == 201, made.text
        started = self.admin.post("/api/v1/fleets/lab/rollouts", json={"release": release})
        assert started.status_code == 201, started.text
        self.app.state.runner.step_all()


@contextmanager
def _fleet(site: Site, db: str) -> Iterator[Fleet]:
    app = create_app(FleetSettings(db_url=db, repo_dir=site.directory, runner_interval=0))
    token = create_token(Database(db), "ops", "admin")
    with (
        running(app) as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as admin,
    ):
        yield Fleet(url, app, admin, site)


@pytest.fixture
def fleet(site: Site, tmp_path: Path) -> Iterator[Fleet]:
    """Releases 1.0.0 and 2.0.0 and an unhealthy 3.0.0, published and served."""
    broken = commit_image(site.directory, tmp_path / "work", version="3.0.0", healthy=False)
    site.publish(site.v1, site.v2, broken)
    with _fleet(site, f"sqlite:///{tmp_path / 'fleet.db'}") as served:
        yield served


def _once(device: Device, **options: Any) -> StepResult:
    return run_agent(device, AgentOptions(once=True, simulate_reboot=True, **options))


@pytest.mark.root
def test_a_device_enrolls_once_and_reports_what_it_runs(fleet: Fleet) -> None:
    device = fleet.device()
    assert token_file(device).exists()
    result = _once(device)
    assert result.action == "idle"
    identity = load_identity(device)
    assert identity is not None and identity.device_id == result.device_id
    directory = identity_dir(device)
    assert stat.S_IMODE((directory / "device.key").stat().st_mode) == 0o600
    assert {p.name for p in directory.iterdir()} == {
        "device.key",
        "device.crt",
        "ca.crt",
        "identity.json",
    }
    assert not token_file(device).exists()  # spent, so deleted
    assert json.loads((directory / "identity.json").read_text()) == {
        "device_id": result.device_id,
        "fleet_url": fleet.url,
    }
    shown = fleet.shown(result.device_id)
    assert shown["current_version"] == "1.0.0"
    assert shown["current_commit"] == fleet.site.v1
    assert shown["health_ok"] is True and shown["labels"] == {"site": "lab"}
    # The next run is the same device: no second enrollment.
    assert _once(device).device_id == result.device_id
    assert [e["event"] for e in device.state.events()].count("enrolled") == 1


@pytest.mark.root
def test_afield_device_run_once_prints_the_round_as_json(fleet: Fleet) -> None:
    device = fleet.device()
    ran = afield(
        "device", "run", "--sysroot", str(device.sysroot_path), "--once", "--json", check=True
    )
    result = json.loads(ran.stdout)
    assert result["action"] == "idle" and result["boots"] == [] and result["update"] is None
    assert "enrolled as" in ran.stderr
    assert fleet.shown(result["device_id"])["current_version"] == "1.0.0"


@pytest.mark.root
def test_a_spent_enrollment_token_is_refused(fleet: Fleet) -> None:
    # Threat: a leaked (already used) token enrolling a second, rogue device.
    first = fleet.device("first")
    token = token_file(first).read_text().strip()
    _once(first)
    second = fleet.device("second")
    with FleetClient(fleet.url) as client, pytest.raises(FleetRefusedError) as refused:
        enroll(second, client, token=token)
    assert refused.value.status == 401 and refused.value.field == "token"
    assert load_identity(second) is None
    assert token_file(second).exists()  # its own token was not touched


@pytest.mark.root
def test_the_agent_installs_the_desired_release_and_boots_it(fleet: Fleet) -> None:
    device = fleet.device()
    device_id = _once(device).device_id
    fleet.roll_out("2.0.0")
    result = _once(device)
    assert result.update is not None and result.update["commit"] == fleet.site.v2
    assert [b.healthy for b in result.boots] == [True]
    assert result.action == "idle" and "runs" in result.reason
    booted = device.booted()
    assert booted is not None and booted.checksum == fleet.site.v2
    shown = fleet.shown(device_id)
    assert shown["current_version"] == "2.0.0" and shown["health_ok"] is True
    assert shown["pending_version"] is None and shown["rollback_version"] == "1.0.0"
    # Nothing more to do: the next round downloads nothing.
    staged = [e for e in device.state.events() if e["event"] == "update staged"]
    assert _once(device).action == "idle"
    assert [e for e in device.state.events() if e["event"] == "update staged"] == staged


@pytest.mark.root
def test_a_release_that_fails_its_checks_rolls_back_and_is_refused_after(fleet: Fleet) -> None:
    # Threat: a broken release pushed to the fleet; the device must fall back by itself and
    # then refuse that release instead of boot-looping on it.
    device = fleet.device()
    device_id = _once(device).device_id
    fleet.roll_out("3.0.0")
    result = _once(device)
    broken = result.update["commit"] if result.update else None
    assert [b.healthy for b in result.boots] == [False, False, False, True]
    assert result.boots[-1].fallback
    assert result.action == "refuse" and "rolled back from it" in result.reason
    booted = device.booted()
    assert booted is not None and booted.checksum == fleet.site.v1
    shown = fleet.shown(device_id)
    assert shown["current_version"] == "1.0.0" and shown["rolled_back_at"] is not None
    assert shown["health_ok"] is True
    state = json.loads((device.state.directory / "agent-state.json").read_text())
    assert broken in state["refused"]
    events = len(device.state.events())
    again = _once(device)
    assert again.action == "refuse" and again.update is None and again.boots == []
    assert all(e["event"] != "update staged" for e in device.state.events()[events:])


def _shop(image: str, port: int) -> str:
    """A web application whose readiness probe passes only when it listens on 8080."""
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: shop}}
spec:
  template:
    spec:
      containers:
      - name: web
        image: {image}
        command: [sh, -c, 'mkdir -p /www && httpd -f -p {port} -h /www & trap "exit 0" TERM; wait']
        readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
"""


@pytest.mark.root
@pytest.mark.podman
def test_the_agent_runs_the_fleets_applications_and_reports_them(
    fleet: Fleet, busybox_image: str, tmp_path: Path
) -> None:
    device = fleet.device()
    device_id = _once(device).device_id
    fleet.roll_out("1.0.0")
    put = fleet.admin.put(
        "/api/v1/fleets/lab/applications/shop", json={"manifests": _shop(busybox_image, 8080)}
    )
    assert put.status_code in (200, 201), put.text
    apps = Applications(device.state.directory / "applications", timeout=8)
    try:
        assert _once(device, applications=apps).action == "idle"
        shown = fleet.shown(device_id)["applications"]
        assert [(a["name"], a["state"]) for a in shown] == [("shop", "ready")]
        assert Podman().pods("app.shop") != []

        # An update that never becomes ready: rolled back on the device, failed on the server.
        fleet.admin.put(
            "/api/v1/fleets/lab/applications/shop", json={"manifests": _shop(busybox_image, 8081)}
        )
        _once(device, applications=apps)
        (failed,) = fleet.shown(device_id)["applications"]
        assert failed["state"] == "failed" and "rolled back to" in failed["reason"]
        assert len(Podman().pods("app.shop")) == 1

        # Removed from the fleet: removed from the device.
        assert fleet.admin.delete("/api/v1/fleets/lab/applications/shop").status_code == 204
        _once(device, applications=apps)
        assert Podman().pods("app.shop") == []
        assert fleet.shown(device_id)["applications"] == []
    finally:
        apps.reconcile([])


@pytest.mark.root
def test_check_fleet_against_a_live_and_a_dead_fleet_manager(fleet: Fleet, root: Root) -> None:
    root.factory_config(f'server = "{fleet.url}"\n')
    live = afield("device", "check-fleet", "--sysroot", str(root.path))
    assert live.returncode == 0 and f"fleet manager {fleet.url} is reachable" in live.stdout
    root.etc_config(f'server = "{DEAD}"\n')
    dead = afield("device", "check-fleet", "--sysroot", str(root.path), "--grace", "1")
    assert dead.returncode == 1 and f"fleet manager {DEAD}" in dead.stderr


# --- the composed image: its own check-fleet ---------------------------------------------------

AGENT_V2 = f'''
[[customizations.files]]
path = "/etc/afield/agent.toml"
ensure_parents = true
data = """
# This release points the agent at a fleet manager that does not answer.
server = "{DEAD}"
network_grace = 2
"""
'''


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.network
def test_an_update_that_cuts_the_device_off_its_fleet_rolls_back(
    composed: Composed, tmp_path: Path
) -> None:
    # Threat: a release whose agent configuration cannot reach the fleet manager; booted for
    # good, the device would be lost to its fleet. Its required check 40-afield-fleet.sh (the
    # image's own `afield device check-fleet`) fails, and the device falls back to 1.0.0.
    text = composed.blueprint.read_text()
    assert 'version = "1.0.0"' in text
    variant = composed.blueprint.parent / "agent-v2.toml"
    variant.write_text(text.replace('version = "1.0.0"', 'version = "2.0.0"', 1) + AGENT_V2)
    v1 = composed.result.commit
    v2 = compose(bp.load(variant), composed.repo, cache_dir=composed.cache, ref="test/agent-v2")
    directory = tmp_path / "server"
    source, repo = open_repository(composed.repo), open_repository(directory, create=True)
    for commit in (v1, v2.commit):
        repo.pull_local(source, commit)
    keyring = Keyring.generate(tmp_path / "keys")
    init_repository(directory, keyring)
    site = Site(tmp_path, directory, keyring, v1, v2.commit)
    site.publish(v1, v2.commit, deltas=0)
    with _fleet(site, f"sqlite:///{tmp_path / 'fleet.db'}") as fleet:
        device = fleet.device()  # 1.0.0 booted healthy: its fleet check reached the fleet
        checks = device.state.load()["last_boot"]["checks"]
        # The workloads check passes at once: this image bakes no manifests.
        assert [(c["name"], c["ok"]) for c in checks] == [
            ("40-afield-fleet.sh", True),
            ("50-afield-workloads.sh", True),
        ]
        device_id = _once(device).device_id
        fleet.roll_out("2.0.0")
        result = _once(device)
        assert result.update is not None and result.update["commit"] == v2.commit
        assert [b.healthy for b in result.boots] == [False, False, False, True]
        failed = result.boots[0].report.failed[0]
        assert failed.name == "40-afield-fleet.sh"
        assert f"fleet manager {DEAD}" in failed.output and "unreachable for 2 s" in failed.output
        assert result.action == "refuse"
        booted = device.booted()
        assert booted is not None and booted.checksum == v1
        shown = fleet.shown(device_id)
        assert shown["current_version"] == "1.0.0" and shown["rolled_back_at"] is not None
        rollback = [e for e in device.state.events() if e["event"] == "rolled back"][-1]
        assert rollback["from"] == v2.commit and rollback["to"] == v1
