"""``afield sim``: run a simulated fleet against a fleet manager and print what it measured.

``afield sim --server URL --token ADMIN_TOKEN --devices N`` enrolls N simulated devices
(:mod:`afield.sim`) with one-time tokens made by the admin token (``--label k=v`` labels them),
has them report the release ``--version``/``--commit`` and then poll (``--poll-interval S``,
jittered) or long-poll (``--wait S``) their desired state, update when told to, and fail as
``--failure-rate`` and ``--fail-version`` say. It runs for ``--duration`` seconds or until
Ctrl-C, then prints a summary: devices, how many run each version, requests, p50/p99 latency of
polls and reports, errors (``--json``: the same as JSON). It exits 1 when a request failed.

The simulator needs httpx (the ``server`` extra), imported only when the command runs.

What it leaves to others: the devices' behaviour (:mod:`afield.sim`), starting a rollout
(``afield rollout start``), the fleet manager (``afield serve``).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from afield.cli._output import console, err_console, print_json
from afield.errors import FleetError

if TYPE_CHECKING:
    from afield.sim import SimSummary

__all__ = ["sim_command"]


def _user_error(message: str) -> FleetError:
    error = FleetError(message)
    error.user_error = True
    return error


def _labels(items: list[str]) -> dict[str, str]:
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise _user_error(f"--label {item!r}: expected key=value, such as site=berlin")
        labels[key.strip()] = value.strip()
    return labels


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _print(summary: SimSummary) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    versions = ", ".join(f"{v}: {n}" for v, n in summary.versions.items()) or "-"
    by_kind = ", ".join(f"{k} {n}" for k, n in summary.requests_by_kind.items() if n)
    rate = summary.requests / summary.seconds if summary.seconds else 0.0
    rows = [
        ("devices", f"{summary.enrolled} enrolled of {summary.devices}"),
        ("versions", versions),
        ("run", f"{summary.seconds:.1f} s"),
        ("requests", f"{summary.requests} ({by_kind or 'none'}), {rate:.1f}/s"),
        ("latency", f"p50 {_ms(summary.p50_ms)}, p99 {_ms(summary.p99_ms)} (polls and reports)"),
        ("enrollment", f"p50 {_ms(summary.enroll_p50_ms)}"),
        ("updates", ", ".join(f"{k} {n}" for k, n in summary.events.items()) or "-"),
        ("errors", str(summary.errors)),
    ]
    rows += [(f"  {kind}", str(n)) for kind, n in summary.errors_by_kind.items()]
    for label, value in rows:
        grid.add_row(label, value)
    console.print(grid)
    for sample in summary.error_samples[:5]:
        err_console.print(f"  {sample}", markup=False, soft_wrap=True)


def sim_command(
    server: str = typer.Option(
        "http://127.0.0.1:8080", "--server", envvar="AFIELD_SERVER", help="The fleet manager's URL."
    ),
    token: str | None = typer.Option(
        None,
        "--token",
        envvar="AFIELD_TOKEN",
        show_default=False,
        help="An admin API token (it makes the enrollment tokens); prefer $AFIELD_TOKEN.",
    ),
    devices: int = typer.Option(10, "--devices", min=1, help="How many simulated devices."),
    labels: list[str] = typer.Option(
        [], "--label", "--labels", help="A label k=v for every device; repeat for more."
    ),
    image: str = typer.Option("gateway", "--image", help="The image the devices report."),
    arch: str = typer.Option("x86_64", "--arch", help="The architecture they report."),
    version: str = typer.Option("1.0.0", "--version", help="The release they start on."),
    commit: str | None = typer.Option(
        None,
        "--commit",
        show_default=False,
        help="Its commit (64 hex; default: a stand-in derived from image, arch and version).",
    ),
    poll_interval: float | None = typer.Option(
        None, "--poll-interval", min=0.01, show_default=False, help="Poll every S s (default 30)."
    ),
    wait: int | None = typer.Option(
        None,
        "--wait",
        min=1,
        max=120,
        show_default=False,
        help="Long-poll instead, asking the server to hold each poll up to S s.",
    ),
    download_seconds: float = typer.Option(
        2.0, "--download-seconds", min=0, help="How long a simulated download takes."
    ),
    reboot_seconds: float = typer.Option(
        1.0, "--reboot-seconds", min=0, help="How long a simulated reboot takes."
    ),
    failure_rate: float = typer.Option(
        0.0, "--failure-rate", min=0, max=1, help="Chance an update fails (rollback or health)."
    ),
    fail_versions: list[str] = typer.Option(
        [], "--fail-version", help="A version whose update always fails its health checks."
    ),
    duration: float | None = typer.Option(
        None, "--duration", min=0, show_default=False, help="Stop after S s (default: Ctrl-C)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seeds every random decision of the devices."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Run simulated devices against a fleet manager's device API; print what they measured."""
    if not token:
        raise _user_error(
            "no admin token: pass --token or set AFIELD_TOKEN "
            "(afield admin token create NAME --role admin --db URL makes one)"
        )
    if poll_interval is not None and wait is not None:
        raise _user_error("--poll-interval and --wait: choose one (polling or long-polling)")
    try:
        from afield.sim import SimConfig, SimFleet  # httpx: the server extra
    except ImportError as e:
        raise FleetError(f"afield sim needs httpx ({e}): install afield[server]") from None

    config = SimConfig(
        server=server,
        admin_token=token,
        devices=devices,
        labels=_labels(labels),
        image=image,
        arch=arch,
        version=version,
        commit=commit,
        poll_interval=30.0 if poll_interval is None else poll_interval,
        wait=wait,
        download_seconds=download_seconds,
        reboot_seconds=reboot_seconds,
        failure_rate=failure_rate,
        fail_versions=frozenset(fail_versions),
        seed=seed,
    )
    fleet = SimFleet(config)

    async def main() -> None:
        async with fleet:
            await fleet.enroll()
            if not as_json:
                err_console.print(f"{devices} simulated devices enrolled at {server}")
            await fleet.run(duration)

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends the run: print what it measured
        asyncio.run(main())
    summary = fleet.summary()
    if as_json:
        print_json(summary.to_dict())
    else:
        _print(summary)
    if summary.errors:
        raise typer.Exit(1)
