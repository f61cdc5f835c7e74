"""The device agent: enroll once, then report, long-poll the desired state, update, reboot.

``afield device run`` (``afield-agent.service`` on a device) does, in order:

1. read its configuration (:func:`read_config`): ``/etc/afield/agent.toml`` of the booted
   deployment, then the factory ``/var/lib/afield/agent.toml``, then the fleet manager
   onboarding named (``/var/lib/afield/onboarding.json``), key by key;
2. enroll once (:func:`enroll`): a P-256 key kept in ``/var/lib/afield/identity/device.key``
   (written before the CSR is sent), the one-time token from FDO
   (``/var/lib/afield/fdo/enroll-token``, deleted once spent) or ``--token``; the certificate,
   the CA and ``identity.json`` (device id, fleet URL) are written atomically, ``identity.json``
   last, so a device is enrolled exactly when that file exists;
3. report what it runs (:func:`status_report`), then loop: long-poll the desired state and act
   on the pure :func:`decide`: a release that is new, not staged and not refused is downloaded
   and staged (:func:`afield.device.update.update`, TUF-verified), then the device reboots
   (``reboot_command``; the simulator boots it in-process with
   :func:`afield.device.bootseq.boot_once`) and reports how the boot went.

A commit the device fell back from (a ``rolled back`` event in the journal) is refused from then
on and kept in ``/var/lib/afield/agent-state.json``: the fleet manager learns it from the
``refused`` update state instead of watching the device try again and again. When the fleet
manager cannot be reached the agent keeps running offline and retries with exponential backoff
and full jitter; it reports again as soon as it is back. While idle, the long-poll does the
waiting: an idle device holds one quiet connection.

:func:`check_fleet` is the greenboot required check ``40-afield-fleet.sh`` every image ships: a
deployment whose configuration cannot reach its fleet manager within ``network_grace`` seconds
is unhealthy, so an update that breaks the agent's configuration rolls back by itself.

What it leaves to others: the wire format (:mod:`afield.fleet.protocol`), HTTP
(:mod:`afield.device.fleetclient`), the update, boot and rollback themselves.
"""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from afield.device._agentconfig import CONFIG, AgentConfig, check_fleet, read_config
from afield.device._identity import Identity, enroll, identity_dir, load_identity, token_file
from afield.device.bootseq import BootResult, ExecutorFactory, boot_once, bubblewrap_executor
from afield.device.fleetclient import FleetClient
from afield.device.lifecycle import Device
from afield.device.state import atomic_write
from afield.device.transport import RetryPolicy, retrying
from afield.device.update import device_arch, trust_dir, update
from afield.errors import AfieldError, DeviceError, TransportError, TrustError
from afield.fleet.protocol import (
    NAME,
    VERSION,
    ApplicationStatus,
    DesiredState,
    HealthReport,
    Rollback,
    StatusReport,
    UpdateProgress,
    VersionRef,
)
from afield.ostree import Deployment
from afield.trust import ReleaseTarget, TrustedUpdater, version_key
from afield.workloads.apps import Applications, Wanted

__all__ = [
    "Action",
    "Agent",
    "AgentConfig",
    "AgentOptions",
    "Decision",
    "Identity",
    "StepResult",
    "check_fleet",
    "decide",
    "device_config",
    "enroll",
    "identity_dir",
    "load_identity",
    "read_config",
    "run",
    "status_report",
    "token_file",
]

MAX_REFUSED = 100
_VERSION = re.compile(VERSION)
_NAME = re.compile(NAME)
_COMMIT = re.compile(r"^[0-9a-f]{64}$")


# --- what runs, and the decision --------------------------------------------------------------


def _booted(device: Device) -> Deployment | None:
    return device.booted() or next(iter(device.deployments()), None)


def device_config(device: Device) -> AgentConfig:
    """The agent's configuration as the booted deployment of ``device`` sees it."""
    booted = _booted(device)
    etc = booted.path / "etc" if booted is not None else device.state.directory / "no-etc"
    return read_config(etc, device.state.directory)


def _ref(device: Device, deployment: Deployment | None) -> VersionRef | None:
    if deployment is None:
        return None
    version = device.version_of(deployment)
    ok = version is not None and len(version) <= 64 and _VERSION.match(version)
    return VersionRef(version=version if ok else None, commit=deployment.checksum)


def _health(device: Device, booted: Deployment) -> HealthReport | None:
    last = device.state.load().get("last_boot")
    if not isinstance(last, dict) or "healthy" not in last:
        return None
    checks = [c for c in last.get("checks", []) if isinstance(c, dict)]
    failed = [c for c in checks if not c.get("ok") and c.get("stage") == "required"]
    lines = [f"{c.get('name')}: {c.get('reason')}" for c in failed]
    lines += [str(w) for w in last.get("warnings", [])]
    return HealthReport(
        ok=bool(last["healthy"]),
        commit=booted.checksum,
        failed=[str(c.get("name"))[:255] for c in failed][:64],
        detail="; ".join(lines)[:500],
    )


def _rollbacks(device: Device) -> list[dict[str, Any]]:
    return [
        e
        for e in device.state.events()
        if e.get("event") == "rolled back"
        and _COMMIT.match(str(e.get("from")))
        and _COMMIT.match(str(e.get("to")))
    ]


def _rollback_of(event: dict[str, Any]) -> Rollback:
    failed = [str(c.get("name")) for c in event.get("failed_checks", []) if isinstance(c, dict)]
    reason = str(event.get("reason") or "")
    if failed:
        reason += f"; failed: {', '.join(failed)}"
    return Rollback(
        from_commit=event["from"],
        to_commit=event["to"],
        at=max(0.0, float(event.get("time", 0))),
        reason=reason[:500],
    )


def status_report(
    device: Device,
    update: UpdateProgress | None = None,
    applications: list[ApplicationStatus] | None = None,
) -> StatusReport:
    """What the device runs now, as the fleet manager's :class:`StatusReport`."""
    deployments = device.deployments()
    booted = _booted(device)
    default = deployments[0] if deployments else None
    pending = default if booted and default and default.name != booted.name else None
    taken = {d.name for d in (booted, pending) if d is not None}
    rollback = next((d for d in deployments if d.name not in taken), None)
    rollbacks = _rollbacks(device)
    return StatusReport(
        image=device.osname if _NAME.match(device.osname) else None,
        arch=device_arch(),
        booted=_ref(device, booted),
        pending=_ref(device, pending),
        rollback=_ref(device, rollback),
        health=_health(device, booted) if booted is not None else None,
        update=update,
        rolled_back=_rollback_of(rollbacks[-1]) if rollbacks else None,
        applications=applications,
    )


class Action(StrEnum):
    """What the agent does about the desired state."""

    IDLE = "idle"  # nothing to do: no release, or it runs
    REFUSE = "refuse"  # rolled back from it before, or older than what runs
    INSTALL = "install"  # download, stage, reboot
    REBOOT = "reboot"  # already staged: boot it


@dataclass(frozen=True)
class Decision:
    """An :class:`Action` and one line saying why."""

    action: Action
    reason: str


def decide(
    desired: DesiredState | None,
    *,
    booted: VersionRef | None,
    pending: str | None,
    refused: Mapping[str, str],
) -> Decision:
    """What to do about ``desired`` (pure).

    Args:
        desired: the fleet manager's desired state (None: none received yet).
        booted: what runs.
        pending: the commit staged to boot next, if any.
        refused: commits the device will not install, with why.
    """
    release = desired.release if desired is not None else None
    if release is None:
        return Decision(Action.IDLE, "the fleet manager names no release")
    name = f"{release.version} ({release.commit[:12]})"
    if booted is not None and release.commit == booted.commit:
        return Decision(Action.IDLE, f"{name} runs")
    if release.commit in refused:
        return Decision(Action.REFUSE, f"{name}: {refused[release.commit]}")
    if booted is not None and booted.version is not None:
        try:
            older = version_key(release.version) <= version_key(booted.version)
        except TrustError:
            older = False  # not a release version: the signed metadata decides
        if older:
            return Decision(Action.REFUSE, f"{name} is not newer than the running {booted.version}")
    if release.commit == pending:
        return Decision(Action.REBOOT, f"{name} is staged; it boots next")
    return Decision(Action.INSTALL, f"installing {name}")


# --- the agent ---------------------------------------------------------------------------------


def _quiet(_line: str) -> None:
    pass


@dataclass(frozen=True)
class AgentOptions:
    """How the agent runs.

    Args:
        token: the enrollment token (default: the one onboarding left).
        simulate_reboot: boot in-process with the simulator's firmware instead of rebooting.
        once: one iteration: report, poll once without waiting, act, report.
        poll_wait: long-poll seconds (default: ``poll_wait`` of the configuration).
        policy: retries and timeouts of the update's downloads.
        backoff: the waits between failed rounds (``attempts`` is ignored).
        timeout: seconds to connect to the fleet manager and to wait for an answer.
        max_boots: simulated boots after an update before giving up on reaching a decision.
        progress_every: seconds between progress reports while downloading.
        executor_factory: how the simulator runs health checks.
        applications: runs the fleet manager's applications (default: podman, with state in
            the device's ``/var/lib/afield/applications``).
        app_timeout: seconds an updated application has to become ready before it is rolled
            back to its previous manifests.
        log: told one line per thing the agent does.
    """

    token: str | None = None
    simulate_reboot: bool = False
    once: bool = False
    poll_wait: int | None = None
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    backoff: RetryPolicy = field(default_factory=lambda: RetryPolicy(max_delay=300.0))
    timeout: float = 30.0
    max_boots: int = 10
    progress_every: float = 10.0
    executor_factory: ExecutorFactory = bubblewrap_executor
    applications: Applications | None = None
    app_timeout: float = 300.0
    sleep: Callable[[float], None] = time.sleep
    log: Callable[[str], None] = _quiet


@dataclass
class StepResult:
    """What one round of the agent did (``afield device run --once --json`` prints it)."""

    device_id: str
    action: str
    reason: str
    update: dict[str, Any] | None = None
    boots: list[BootResult] = field(default_factory=list)
    exit: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "device_id": self.device_id,
            "action": self.action,
            "reason": self.reason,
            "update": self.update,
            "boots": [b.to_dict() for b in self.boots],
        }


class Agent:
    """The agent of one device (see the module docs); :meth:`run` is the loop."""

    def __init__(self, device: Device, options: AgentOptions | None = None) -> None:
        self.device = device
        self.options = options or AgentOptions()
        self.config = device_config(device)
        self.desired: DesiredState | None = None
        self.etag: str | None = None
        self.progress = UpdateProgress(state="idle")
        self.app_statuses: list[ApplicationStatus] | None = None
        self._apps = self.options.applications
        self._sent: StatusReport | None = None
        self._client: FleetClient | None = None
        self._identity = load_identity(device)

    # -- setup --------------------------------------------------------------------------------

    def _new_client(self, identity: Identity | None) -> FleetClient:
        if self.config.server is None:
            raise DeviceError(
                f"{self.device.sysroot_path}: no fleet manager configured: set server in "
                f"/{CONFIG} or /var/lib/afield/agent.toml, or onboard the device",
                user_error=True,
            )
        return FleetClient(
            self.config.server,
            device_id=identity.device_id if identity else None,
            key=identity.key if identity else None,
            timeout=self.options.timeout,
        )

    @property
    def enrolled(self) -> bool:
        """Whether the device has its identity."""
        return self._identity is not None

    @property
    def identity(self) -> Identity:
        """The device's identity; enrolls first if it has none (see :func:`enroll`).

        Raises:
            DeviceError: not enrolled and no token, or no fleet manager configured.
            FleetRefusedError: the token was refused.
            TransportError: the fleet manager cannot be reached.
        """
        if self._identity is None:
            path = self.device.sysroot_path
            name = socket.gethostname() if path == Path("/") else path.name
            with self._new_client(None) as client:
                self._identity = enroll(self.device, client, token=self.options.token, name=name)
            self.options.log(f"enrolled as {self._identity.device_id} with {client.base_url}")
        return self._identity

    @property
    def client(self) -> FleetClient:
        """The signed client for the configured fleet manager."""
        if self._client is None or self._client.base_url != self.config.server:
            if self._client is not None:
                self._client.close()
            self._client = self._new_client(self.identity)
        return self._client

    # -- state ----------------------------------------------------------------------------------

    @property
    def _state_file(self) -> Path:
        return self.device.state.directory / "agent-state.json"

    def refused(self) -> dict[str, str]:
        """Commits the device will not install, with why; adds those it rolled back from."""
        try:
            saved = json.loads(self._state_file.read_text()).get("refused", {})
        except (OSError, ValueError, AttributeError):
            saved = {}
        refused = {str(k): str(v) for k, v in saved.items()} if isinstance(saved, dict) else {}
        before = dict(refused)
        for event in _rollbacks(self.device):
            why = event.get("reason") or "no reason recorded"
            refused.setdefault(event["from"], f"the device rolled back from it: {why}")
        if refused != before:
            kept = dict(list(refused.items())[-MAX_REFUSED:])
            data = json.dumps({"refused": kept}, indent=1, sort_keys=True) + "\n"
            atomic_write(self._state_file, data.encode(), point="agent-state")
            refused = kept
        return refused

    def report(self, *, force: bool = False) -> None:
        """Send the status report if it changed since the last one sent (or ``force``)."""
        report = status_report(self.device, self.progress, self.app_statuses)
        if force or report != self._sent:
            self.client.report(report)
            self._sent = report

    # -- one round ------------------------------------------------------------------------------

    def decision(self) -> Decision:
        """What :func:`decide` says about the last desired state."""
        status = status_report(self.device)
        pending = status.pending.commit if status.pending else None
        return decide(self.desired, booted=status.booted, pending=pending, refused=self.refused())

    def poll(self, wait: float) -> bool:
        """Long-poll the desired state; whether the server sent one (not "unchanged")."""
        sent = self.etag
        state, etag = self.client.get_desired(sent, wait)
        if state is None:
            return False
        self.desired, self.etag = state, etag
        return etag is None or etag != sent

    def act(self) -> StepResult:
        """Do what the decision says about the desired state; report what happened."""
        decision = self.decision()
        result = StepResult(self.identity.device_id, decision.action.value, decision.reason)
        release = self.desired.release if self.desired else None
        if decision.action is Action.IDLE:
            self.progress = UpdateProgress(state="idle")
        elif decision.action is Action.REFUSE and release is not None:
            self.progress = UpdateProgress(
                state="refused",
                version=release.version,
                commit=release.commit,
                error=decision.reason[:500],
            )
        elif decision.action is Action.INSTALL:
            if not self._install(result):
                self.report()
                return result
            self._reboot(result)
        elif decision.action is Action.REBOOT and release is not None:
            self.progress = UpdateProgress(
                state="staged", version=release.version, commit=release.commit
            )
            self.report()
            self._reboot(result)
        if not result.exit:
            self._run_applications()
            self.report()
        return result

    @property
    def applications(self) -> Applications:
        """The device's runtime applications (podman runs only for a device that has or is
        sent some)."""
        if self._apps is None:
            self._apps = Applications(
                self.device.state.directory / "applications",
                timeout=self.options.app_timeout,
                log=self.options.log,
            )
        return self._apps

    def _run_applications(self) -> None:
        """Apply, update or remove the desired applications; keep their statuses to report.

        An old fleet manager sends no applications and is sent no statuses; a device that runs
        none and is sent none reports none."""
        wanted = list(self.desired.applications) if self.desired is not None else []
        if not wanted and not self.applications.installed():
            return
        statuses = self.applications.reconcile(
            [Wanted(a.name, a.manifests, tuple(a.images), a.digest) for a in wanted]
        )
        self.app_statuses = [
            ApplicationStatus(name=s.name, digest=s.digest, state=s.state, reason=s.reason[:500])
            for s in statuses
        ]

    def _install(self, result: StepResult) -> bool:
        assert self.desired is not None and self.desired.release is not None  # noqa: S101
        release, device = self.desired.release, self.device
        self.progress = UpdateProgress(
            state="downloading", version=release.version, commit=release.commit
        )
        self.report()
        self.options.log(result.reason)
        repo = urljoin(self.client.base_url + "/", self.desired.repo_url or "repo/")
        last = [time.monotonic()]

        def progress(count: int) -> None:
            self.progress = self.progress.model_copy(update={"bytes_downloaded": count})
            if time.monotonic() - last[0] >= self.options.progress_every:
                last[0] = time.monotonic()
                try:
                    self.report()
                except AfieldError as e:
                    self.options.log(f"progress report failed: {e}")

        try:
            target = self._signed_release(repo)
            done = update(
                device,
                repo,
                version=target.version,
                channel=target.channel,
                policy=self.options.policy,
                progress=progress,
            )
            if done.commit not in (None, release.commit):
                raise DeviceError(
                    f"release {target.version} on channel {target.channel} is "
                    f"{done.commit}, not the desired {release.commit}"
                )
        except AfieldError as e:
            refused = isinstance(e, DeviceError) and "anti-rollback" in e.message
            self.progress = self.progress.model_copy(
                update={"state": "refused" if refused else "failed", "error": str(e)[:500]}
            )
            result.action, result.reason = self.progress.state, str(e)
            self.options.log(f"update {release.version} {self.progress.state}: {e}")
            return False
        self.progress = self.progress.model_copy(
            update={"state": "staged", "bytes_downloaded": done.bytes_downloaded}
        )
        result.update = done.to_dict()
        self.report()
        return True

    def _signed_release(self, repo: str) -> ReleaseTarget:
        """The signed release of the desired commit for this device, to learn its channel."""
        assert self.desired is not None and self.desired.release is not None  # noqa: S101
        wanted, device = self.desired.release, self.device
        with TrustedUpdater(trust_dir(device), repo) as updater:
            retrying(self.options.policy, updater.refresh, what="refresh the TUF metadata")
            for target in updater.releases():
                if (target.commit, target.image, target.arch) == (
                    wanted.commit,
                    device.osname,
                    device_arch(),
                ):
                    return target
        message = (
            f"release {wanted.version} ({wanted.commit}) of {device.osname}/{device_arch()} is "
            f"not in the signed repository {repo}"
        )
        device.state.record("update failed", server=repo, error=message)
        raise DeviceError(message)

    def _reboot(self, result: StepResult) -> None:
        if not self.options.simulate_reboot:
            command = self.config.reboot_command
            self.device.state.record("reboot", command=list(command))
            self.options.log(f"rebooting: {shlex.join(command)}")
            try:
                code = subprocess.run(command, check=False).returncode
            except OSError as e:
                code, why = 127, f"{shlex.join(command)}: {e.strerror or e}"
            else:
                why = f"{shlex.join(command)} exited {code}"
            if code == 0:
                result.exit = True
                return
            self.progress = self.progress.model_copy(update={"state": "failed", "error": why})
            result.action, result.reason = "failed", f"cannot reboot: {why}"
            self.options.log(result.reason)
            return
        for _ in range(self.options.max_boots):
            boot = boot_once(self.device, executor_factory=self.options.executor_factory)
            result.boots.append(boot)
            health = "healthy" if boot.healthy else "unhealthy"
            self.options.log(f"booted {boot.version} {boot.checksum[:12]}: {health}; {boot.reason}")
            if not boot.reboot:
                break
        # Another deployment runs now: its configuration, maybe a rollback to report.
        self.config = device_config(self.device)
        decision = self.decision()
        self.progress = (
            UpdateProgress(state="idle")
            if decision.action is not Action.REFUSE
            else self.progress.model_copy(
                update={"state": "refused", "error": decision.reason[:500]}
            )
        )
        result.action, result.reason = decision.action.value, decision.reason

    def step(self, wait: float) -> tuple[StepResult, bool]:
        """One round: poll (waiting up to ``wait`` s while nothing changes), then act; the
        result and whether the server sent a new desired state."""
        fresh = self.poll(wait)
        return self.act(), fresh

    def run(self) -> StepResult:
        """Report, then poll and act until told to stop (``once``) or rebooting.

        Raises:
            AfieldError: with ``once``, whatever failed; otherwise only what retrying cannot
                fix: no fleet manager configured, no enrollment token or a refused one.
        """
        options, failures, dirty = self.options, 0, True
        while True:
            wait = options.poll_wait if options.poll_wait is not None else self.config.poll_wait
            try:
                if dirty:
                    self.identity  # noqa: B018 (enrolls the device the first time)
                    self.report(force=True)
                    dirty = False
                started = time.monotonic()
                result, fresh = self.step(0 if options.once else wait)
            except AfieldError as e:
                if options.once or not (self.enrolled or isinstance(e, TransportError)):
                    raise
                failures += 1
                pause = options.backoff.delay(min(failures, 16))
                what = "unreachable" if isinstance(e, TransportError) else "failed"
                options.log(f"fleet manager {what} ({e}); retrying in {pause:.1f} s")
                dirty = True
                options.sleep(pause)
                continue
            if options.once or result.exit:
                return result
            if result.action == "failed":
                failures += 1
                options.sleep(options.backoff.delay(min(failures, 16)))
                continue
            failures = 0
            if not fresh and (wait == 0 or time.monotonic() - started < wait / 2):
                # "Unchanged" at once: the server does not hold long-polls; do not hammer it.
                poll = self.desired.poll_seconds if self.desired else 30
                options.sleep(max(1.0, float(poll)))

    def close(self) -> None:
        """Close the connections."""
        if self._client is not None:
            self._client.close()


def run(device: Device, options: AgentOptions | None = None) -> StepResult:
    """Run the agent of ``device`` (see :class:`Agent`)."""
    agent = Agent(device, options)
    try:
        return agent.run()
    finally:
        agent.close()
