"""The boot sequence: what runs after the firmware handed over to a deployment.

The same code runs on a real device (``afield-healthcheck.service``, root ``/``) and in the
simulator (``afield device boot``, root a deployment directory, checks inside bubblewrap with
the stateroot's ``/var`` and the host's network):

1. record which deployment booted and why (a fallback, an unreadable grubenv);
2. run the greenboot-compatible required and wanted checks;
3. act on :func:`afield.device.boot.counter.after_boot`: mark the boot good and run ``green.d``;
   or record the failure, run ``red.d`` and ask for a reboot; or make a rollback permanent
   (the recorded known-good deployment becomes the default, ``grub.cfg`` falls back to it)
   and record the ``rolled back`` event with the checks that failed.

Each step is one atomic write, so a power cut between any two is recovered by the next boot.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from afield.device import fault
from afield.device.boot import counter, grubenv
from afield.device.boot.firmware import PowerOn, power_on
from afield.device.health import (
    BubblewrapExecutor,
    Executor,
    HealthReport,
    HostExecutor,
    load_config,
    run_checks,
    run_green,
    run_red,
)
from afield.device.lifecycle import Device
from afield.errors import DeviceError
from afield.ostree import Deployment

__all__ = [
    "BootResult",
    "ExecutorFactory",
    "boot_marker",
    "boot_once",
    "bubblewrap_executor",
    "healthcheck_booted",
    "host_executor",
    "run_boot_sequence",
]

ExecutorFactory = Callable[[Device, Deployment], Executor]


def bubblewrap_executor(device: Device, deployment: Deployment) -> Executor:
    """Run checks inside the deployment, with the stateroot's /var as /var and the host's
    network (as at boot: a booted device has its network, and checks such as the
    fleet-reachability check need it)."""
    var = device.sysroot_path / "ostree" / "deploy" / device.osname / "var"
    return BubblewrapExecutor(
        deployment.path, extra_args=("--bind", str(var), "/var"), share_net=True
    )


def host_executor(device: Device, deployment: Deployment) -> Executor:
    """Run checks directly: on a real device the booted deployment already is ``/``."""
    return HostExecutor(Path("/"))


@dataclass(frozen=True)
class BootResult:
    """One boot: what booted, the health report, and what the agent did about it."""

    checksum: str
    version: str | None
    fallback: bool
    healthy: bool
    action: str
    reason: str
    report: HealthReport
    reboot: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "checksum": self.checksum,
            "version": self.version,
            "fallback": self.fallback,
            "healthy": self.healthy,
            "action": self.action,
            "reason": self.reason,
            "reboot": self.reboot,
            "report": self.report.to_dict(),
        }


def boot_marker(result: BootResult) -> str:
    """The one line a boot's outcome is reported by on the console.

    ``afield-boot: checksum=<booted commit> health=<healthy|unhealthy> rollback=<yes|no>``,
    where ``rollback=yes`` means this boot made a fallback to the known-good release permanent.
    """
    health = "healthy" if result.healthy else "unhealthy"
    rollback = "yes" if result.action == counter.Action.FINALIZE_ROLLBACK.value else "no"
    return f"afield-boot: checksum={result.checksum} health={health} rollback={rollback}"


def _failed_checks(report: HealthReport) -> list[dict[str, Any]]:
    return [
        {"name": c.name, "stage": c.stage, "reason": c.reason, "output": c.output[-4096:]}
        for c in report.failed
    ]


def _deployment(device: Device, directory: Path) -> Deployment:
    for d in device.deployments():
        if d.path.resolve() == directory.resolve():
            return d
    raise DeviceError(f"{directory}: booted directory is not a deployment of {device.osname}")


def run_boot_sequence(
    device: Device,
    booted: Deployment,
    *,
    index: int,
    fallback: bool = False,
    env_error: str | None = None,
    executor_factory: ExecutorFactory = bubblewrap_executor,
) -> BootResult:
    """Run the agent's boot sequence on the deployment that just booted."""
    state = device.state
    version = device.version_of(booted)
    state.update(booted=booted.name)
    state.record(
        "booted",
        checksum=booted.checksum,
        version=version,
        entry=index,
        fallback=fallback,
        **({"grubenv_error": env_error} if env_error else {}),
    )
    env: dict[str, str] | None
    try:
        env = None if env_error else grubenv.read_grubenv(device.grubenv_path)
    except DeviceError as e:
        env, env_error = None, e.message
    executor = executor_factory(device, booted)
    config = load_config(booted.path)
    report = run_checks(booted.path, executor, config)
    outcome = counter.after_boot(env, healthy=report.healthy, booted_index=index)
    fault.point("boot:checked")
    reboot = False
    action = outcome.action
    if action is counter.Action.FINALIZE_ROLLBACK:
        _finalize_rollback(device, booted, report, outcome.reason, executor_factory)
    if action is counter.Action.MARK_GOOD:
        state.update(known_good=booted.name, last_boot=report.to_dict())
    if outcome.write_env:
        device.write_env(outcome.env, point=action.value)
    if report.healthy:
        state.update(last_boot=report.to_dict())
        green = run_green(booted.path, executor, config)
        state.record("boot healthy", checksum=booted.checksum, green=[c.name for c in green])
    else:
        failed = _failed_checks(report)
        state.update(
            last_boot=report.to_dict(), last_failure={"checksum": booted.checksum, "checks": failed}
        )
        state.record("health failed", checksum=booted.checksum, checks=failed, action=action.value)
        red = run_red(booted.path, executor, config)
        state.record("red", checksum=booted.checksum, scripts=[c.name for c in red])
        reboot = action is counter.Action.REBOOT_TO_RETRY
    return BootResult(
        checksum=booted.checksum,
        version=version,
        fallback=fallback,
        healthy=report.healthy,
        action=action.value,
        reason=outcome.reason,
        report=report,
        reboot=reboot,
    )


def _finalize_rollback(
    device: Device,
    booted: Deployment,
    report: HealthReport,
    reason: str,
    executor_factory: ExecutorFactory,
) -> None:
    """Make the known-good deployment the default, idempotently; record the rollback once."""
    state = device.state
    saved = state.load()
    good_name = saved.get("known_good") or (booted.name if report.healthy else None)
    deployments = device.deployments()
    good = next((d for d in deployments if d.name == good_name), None)
    if good is None:
        state.record("rollback impossible", reason="no known-good deployment", booted=booted.name)
        return
    if deployments and deployments[0].name != good.name:
        # Record first: a power cut after it repeats the record, never loses it.
        failure = saved.get("last_failure") or {}
        state.record(
            "rolled back",
            to=good.checksum,
            **{"from": deployments[0].checksum},
            reason=reason,
            failed_checks=failure.get("checks", []),
        )
        device.make_default(good)
        run_red(good.path, executor_factory(device, good), load_config(good.path))
    else:
        device.make_default(good)


def boot_once(
    device: Device, *, executor_factory: ExecutorFactory = bubblewrap_executor
) -> BootResult:
    """Power the simulated device on once: firmware decision, then the boot sequence."""
    fault.point("power-on")
    chosen: PowerOn = power_on(device.sysroot_path)
    booted = _deployment(device, chosen.deployment_dir)
    return run_boot_sequence(
        device,
        booted,
        index=chosen.index,
        fallback=chosen.fallback,
        env_error=chosen.env_error,
        executor_factory=executor_factory,
    )


def healthcheck_booted(device: Device) -> BootResult:
    """The boot sequence on a real OSTree-booted device (``afield-healthcheck.service``)."""
    booted = device.sysroot.booted()
    if booted is None:
        raise DeviceError(
            f"{device.sysroot_path}: not booted from an OSTree deployment "
            "(no ostree= on the kernel command line); use `afield device boot` to simulate"
        )
    try:
        fallback = device.read_env().get(counter.COUNTER) == counter.FALLBACK_COUNTER
        env_error = None
    except DeviceError as e:
        fallback, env_error = False, e.message
    return run_boot_sequence(
        device,
        booted,
        index=booted.index,
        fallback=fallback,
        env_error=env_error,
        executor_factory=host_executor,
    )
