"""``afield device``: a device's sysroot from the factory to the field (and the simulator)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import typer

from afield.cli._output import console, err_console, print_json
from afield.cli._progress import DownloadProgress
from afield.cli.operator import device_apps
from afield.device.agent import AgentOptions, check_fleet
from afield.device.agent import run as run_agent
from afield.device.bootseq import boot_marker, boot_once, healthcheck_booted
from afield.device.lifecycle import Device
from afield.device.onboard import OnboardOptions, onboard
from afield.device.onboard import manufacture as manufacture_device
from afield.device.status import device_status
from afield.device.update import update as update_device
from afield.errors import TransportError

app = typer.Typer(
    help="Install, update, boot and roll back a device's sysroot.", no_args_is_help=True
)
# The fleet manager's applications of one device (operator commands, afield.cli.operator).
app.add_typer(device_apps, name="app")

SysrootOption = typer.Option(..., "--sysroot", help="The device's sysroot directory.")
RepoOption = typer.Option(..., "--repo", help="The afield repository holding the commit.")
CommitOption = typer.Option(..., "--commit", help="Commit checksum (or unique prefix) or ref.")
JsonOption = typer.Option(False, "--json", help="Print JSON.")


@app.command("init")
def init(
    sysroot: Path = SysrootOption,
    os_name: str = typer.Option(..., "--os", help="The OS (stateroot) name, e.g. gateway."),
    server: str | None = typer.Option(None, "--server", help="Fleet manager URL."),
    trust_root: Path | None = typer.Option(None, "--trust-root", help="TUF root.json."),
) -> None:
    """Lay out an empty sysroot, grubenv and agent configuration."""
    Device.init(sysroot, os_name, server=server, trust_root=trust_root)
    console.print(f"initialised {sysroot} for {os_name}")


@app.command("install")
def install(
    sysroot: Path = SysrootOption, repo: Path = RepoOption, commit: str = CommitOption
) -> None:
    """Factory install: deploy a first image."""
    deployment = Device.open(sysroot).install(repo, commit)
    console.print(f"installed {deployment.checksum}")


@app.command("stage")
def stage(
    sysroot: Path = SysrootOption, repo: Path = RepoOption, commit: str = CommitOption
) -> None:
    """Stage an update as the new default and arm the boot counter."""
    deployment = Device.open(sysroot).stage(repo, commit)
    console.print(f"staged {deployment.checksum}; it boots next, under the boot counter")


@app.command("update")
def update(
    sysroot: Path = SysrootOption,
    server: str = typer.Option(
        ..., "--server", help="The afield repository's URL (serving tuf/ and ostree/)."
    ),
    version: str | None = typer.Option(
        None, "--version", help="The version to install; default the newest on the channel."
    ),
    channel: str = typer.Option("stable", "--channel", help="The channel to follow."),
    max_rate: str | None = typer.Option(
        None,
        "--max-rate",
        help="Cap the download rate, bytes/s (suffixes k, M: 200k, 1.5M) for metered links.",
    ),
    no_deltas: bool = typer.Option(
        False, "--no-deltas", help="Pull objects even when a static delta matches."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Verify the repository (TUF), fetch the chosen release (delta or objects), stage it."""
    rate = parse_rate(max_rate) if max_rate is not None else None
    device = Device.open(sysroot)
    with DownloadProgress(err_console, "update") as bar:

        def retried(attempt: int, error: BaseException, wait: float) -> None:
            bar.note(f"attempt {attempt} failed ({error}); retrying in {wait:.1f} s")

        result = update_device(
            device,
            server,
            version=version,
            channel=channel,
            max_rate=rate,
            use_deltas=not no_deltas,
            progress=bar.received,
            on_retry=retried,
        )
    if as_json:
        print_json(result.to_dict())
        return
    console.print(result.reason)
    if result.updated:
        how = "static delta" if result.used_delta else f"{result.objects_fetched} objects"
        console.print(
            f"  downloaded {result.bytes_downloaded:,} bytes ({how}); "
            "run `afield device boot` (or reboot) to boot it under the boot counter"
        )
        if result.delta_error:
            console.print(f"  the static delta was not used: {result.delta_error}")


def parse_rate(text: str) -> int:
    """Bytes per second from ``200000``, ``200k`` or ``1.5M`` (powers of 1000)."""
    units = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3}
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgG]?)(?:[bB](?:/s)?)?\s*", text)
    value = float(match.group(1)) * units[match.group(2).lower()] if match else 0
    if value < 1:
        raise typer.BadParameter(
            f"{text!r}: expected a positive rate in bytes/s, e.g. 200000, 200k or 1.5M",
            param_hint="--max-rate",
        )
    return int(value)


@app.command("manufacture")
def manufacture(
    sysroot: Path = SysrootOption,
    manufacturer: str = typer.Option(
        ..., "--manufacturer", help="The manufacturer's DI server URL (afield fdo serve)."
    ),
    device_info: str = typer.Option(
        "afield device", "--device-info", help="The model string written into the voucher."
    ),
    serial: str | None = typer.Option(None, "--serial", help="Serial number (default: random)."),
    curve: str = typer.Option("P-384", "--curve", help="Device key curve: P-384 or P-256."),
    as_json: bool = JsonOption,
) -> None:
    """Device Initialize (FDO DI): get the device's credential; the factory keeps the voucher."""
    device = Device.open(sysroot)
    credential, path = manufacture_device(
        device, manufacturer, device_info=device_info, key_curve=curve, serial_number=serial
    )
    guid = str(credential.guid)
    if as_json:
        print_json({"guid": guid, "device_info": credential.device_info, "credential": str(path)})
        return
    console.print(f"manufactured: device GUID {guid}; credential in {path.parent}", soft_wrap=True)


@app.command("onboard")
def onboard_command(
    sysroot: Path = SysrootOption,
    rounds: int = typer.Option(
        3, "--rounds", min=1, help="Passes over the rendezvous directives before giving up."
    ),
    retry_wait: float = typer.Option(
        120.0, "--retry-wait", min=0, help="Seconds between passes (the FDO spec's 120, ±25%)."
    ),
    timeout: float = typer.Option(30.0, "--timeout", min=0.1, help="Seconds per answer."),
    as_json: bool = JsonOption,
) -> None:
    """Zero-touch onboarding (FDO TO1 + TO2): find the owner, take what it hands over."""
    options = OnboardOptions(rounds=rounds, retry_wait=retry_wait, timeout=timeout)
    result = onboard(Device.open(sysroot), options)
    if as_json:
        print_json(result.to_dict())
        return
    handoff = result.handoff
    console.print(
        f"onboarded: owner {result.owner_url}, device GUID {result.guid} -> {result.new_guid} "
        f"in {result.seconds:.2f} s",
        soft_wrap=True,
        markup=False,
    )
    console.print(f"  fleet manager {handoff['fleet_url'] or '-'}", soft_wrap=True, markup=False)
    given = [
        "an enrollment token" if handoff["enrollment_token"] else "",
        "the update repository's TUF root" if handoff["tuf_root_sha256"] else "",
        f"{handoff['ssh_keys']} SSH keys" if handoff["ssh_keys"] else "",
        f"{len(handoff['files'])} files" if handoff["files"] else "",
    ]
    console.print(f"  received {', '.join(g for g in given if g) or 'nothing else'}")
    for failure in result.attempts:
        console.print(f"  after a failed attempt: {failure}", soft_wrap=True, markup=False)


@app.command("boot")
def boot(sysroot: Path = SysrootOption, as_json: bool = JsonOption) -> None:
    """Power the simulated device on once: firmware, health checks, and their outcome."""
    result = boot_once(Device.open(sysroot))
    if as_json:
        print_json(result.to_dict())
        return
    health = "healthy" if result.healthy else "unhealthy"
    via = " (fallback)" if result.fallback else ""
    console.print(f"booted {result.version} {result.checksum[:12]}{via}: {health}; {result.reason}")
    for check in result.report.failed:
        console.print(f"  failed {check.stage}/{check.name}: {check.reason}")
    if result.reboot:
        console.print("the agent asks for a reboot (run `afield device boot` again)")


@app.command("healthcheck")
def healthcheck(
    sysroot: Path = typer.Option(Path("/"), "--sysroot", help="The booted system's root."),
    no_reboot: bool = typer.Option(False, "--no-reboot", help="Never ask systemd to reboot."),
    as_json: bool = JsonOption,
) -> None:
    """On a booted device: run the health checks and act (afield-healthcheck.service)."""
    result = healthcheck_booted(Device.open(sysroot))
    if as_json:
        print_json(result.to_dict())
    else:
        state = "healthy" if result.healthy else "unhealthy"
        console.print(f"afield: {result.version} {result.checksum[:12]} {state}: {result.reason}")
        for check in result.report.failed:
            console.print(f"  failed {check.stage}/{check.name}: {check.reason}", markup=False)
        # One unwrapped line for the serial console (the unit sends stdout there), which QEMU
        # tests and a technician with a serial cable read.
        print(boot_marker(result), flush=True)
    if result.reboot and not no_reboot:
        # greenboot's redboot-auto-reboot: an update on trial failed, try again (or fall back).
        subprocess.run(["systemctl", "reboot"], check=False)
    if not result.healthy:
        raise typer.Exit(1)


@app.command("run")
def run(
    sysroot: Path = typer.Option(Path("/"), "--sysroot", help="The device's sysroot directory."),
    token: str | None = typer.Option(
        None, "--token", help="Enrollment token (default: the one onboarding left)."
    ),
    simulate_reboot: bool = typer.Option(
        False,
        "--simulate-reboot",
        help="Boot staged updates in-process with the simulator's firmware instead of rebooting.",
    ),
    once: bool = typer.Option(
        False, "--once", help="One round: report, poll without waiting, act, report; then exit."
    ),
    poll_wait: int | None = typer.Option(
        None,
        "--poll-wait",
        min=0,
        max=120,
        help="Seconds a long-poll waits (default: poll_wait of the agent configuration).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result of --once as JSON."),
) -> None:
    """The device agent: enroll once, report, follow the fleet manager's desired state."""

    def log(line: str) -> None:
        err_console.print(f"afield agent: {line}", soft_wrap=True, markup=False)

    options = AgentOptions(
        token=token, simulate_reboot=simulate_reboot, once=once, poll_wait=poll_wait, log=log
    )
    result = run_agent(Device.open(sysroot), options)
    if as_json:
        print_json(result.to_dict())
        return
    console.print(f"{result.device_id}: {result.action}: {result.reason}", markup=False)


@app.command("check-fleet")
def check_fleet_command(
    sysroot: Path = typer.Option(
        Path("/"), "--sysroot", help="The root of the running system (its /etc and /var)."
    ),
    grace: float | None = typer.Option(
        None,
        "--grace",
        min=0,
        max=3600,
        help="Seconds to keep trying (default: network_grace of the agent configuration).",
    ),
) -> None:
    """Health check: exit 0 when the configured fleet manager answers (or none is configured)."""
    reachable, why = check_fleet(sysroot, grace=grace)
    if not reachable:
        # An AfieldError is how a command exits 1 (main() drops typer.Exit's code).
        raise TransportError(why)
    console.print(f"afield: {why}", soft_wrap=True, markup=False)


@app.command("status")
def status(sysroot: Path = SysrootOption, as_json: bool = JsonOption) -> None:
    """Booted, pending and rollback deployments, the boot counter, the last boot, events."""
    data = device_status(Device.open(sysroot))
    if as_json:
        print_json(data)
        return
    for key in ("booted", "pending", "rollback"):
        value = data[key]
        text = f"{value['version']} {value['checksum'][:12]}" if value else "-"
        console.print(f"{key:9} {text}")
    onboarding = data["onboarding"]
    if onboarding:
        done = "onboarded" if onboarding.get("completed") else "not onboarded"
        fleet = f", fleet {onboarding['fleet_url']}" if onboarding.get("fleet_url") else ""
        console.print(f"fdo       {onboarding.get('guid')} {done}{fleet}", markup=False)
    console.print(
        f"counter   boot_counter={data['boot_counter']} boot_success={data['boot_success']}"
    )
    for event in data["events"][-10:]:
        console.print(f"  {event['event']}")


@app.command("rollback")
def rollback(sysroot: Path = SysrootOption) -> None:
    """Make the previous deployment the default (manual rollback)."""
    deployment = Device.open(sysroot).rollback()
    console.print(f"rolled back: {deployment.checksum} boots next")
