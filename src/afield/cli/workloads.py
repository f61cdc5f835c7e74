"""``afield workloads``: check manifests, bring up the baked workloads, wait for them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from afield.cli._output import console, print_json
from afield.errors import DeviceError, WorkloadError
from afield.workloads import baked, manifests
from afield.workloads.podman import Podman, readiness

__all__ = ["app"]

app = typer.Typer(help="Podman workloads: Kubernetes manifests baked into the image or local.")

JsonOption = typer.Option(False, "--json", help="Print JSON.")
RootOption = typer.Option(Path("/"), "--root", help="The root whose /usr/lib and /etc to read.")
TIMEOUT_VARIABLE = "AFIELD_WORKLOADS_WAIT_TIMEOUT_SEC"


@app.command("check")
def check(
    directories: list[Path] = typer.Argument(..., help="Manifest directories to check."),
    as_json: bool = JsonOption,
) -> None:
    """Check manifest directories as compose does: kinds podman plays, fields, kustomization."""
    found: list[dict[str, Any]] = []
    for directory in directories:
        resources = manifests.load_directory(directory)
        found.append(
            {
                "directory": str(directory),
                "resources": [{"kind": r.kind, "name": r.name} for r in resources],
                "images": manifests.image_references(resources),
                "deletes": [
                    {"kind": r.kind, "name": r.name} for r in manifests.deletions(directory)
                ],
            }
        )
    if as_json:
        print_json(found)
        return
    for entry in found:
        kinds = ", ".join(f"{r['kind']} {r['name']}" for r in entry["resources"])
        console.print(f"{entry['directory']}: {kinds}", markup=False)
        console.print(f"  images: {', '.join(entry['images'])}", markup=False)


@app.command("up")
def up(root: Path = RootOption, run_dir: Path = typer.Option(baked.RUN_DIR, "--run-dir")) -> None:
    """At boot (afield-workloads.service): remove what delete/ names, start every source."""
    loaded = baked.load(root, run_dir)
    if not baked.up(Podman(), loaded, say=_say):
        raise WorkloadError("some workloads did not start (see above)")


@app.command("wait")
def wait(
    root: Path = RootOption,
    run_dir: Path = typer.Option(baked.RUN_DIR, "--run-dir"),
    timeout: float | None = typer.Option(
        None,
        "--timeout",
        min=0,
        max=86400,
        help=f"Seconds to wait (default: ${TIMEOUT_VARIABLE}, else 300).",
    ),
) -> None:
    """Health check: exit 0 once every baked workload is ready, 1 if one is not in time."""
    seconds = timeout if timeout is not None else _timeout_from_environment()
    if not baked.wait(Podman(), baked.load(root, run_dir), seconds, say=_say):
        raise WorkloadError(f"baked workloads not ready within {seconds:.0f} s")


@app.command("status")
def status(
    root: Path = RootOption,
    run_dir: Path = typer.Option(baked.RUN_DIR, "--run-dir"),
    as_json: bool = JsonOption,
) -> None:
    """The baked and local workloads and whether each is ready now (no waiting)."""
    podman, rows = Podman(), []
    for item in baked.load(root, run_dir):
        if item.error:
            rows.append({"workload": item.workload, "state": "failed", "reason": item.error})
            continue
        state = readiness(podman, item.workload, item.resources)
        rows.append({"workload": item.workload, "state": state.state, "reason": state.reason})
    if as_json:
        print_json(rows)
        return
    if not rows:
        console.print("no workloads", markup=False)
    for row in rows:
        reason = f": {row['reason']}" if row["reason"] else ""
        console.print(f"{row['workload']}: {row['state']}{reason}", markup=False)


def _timeout_from_environment() -> float:
    value = os.environ.get(TIMEOUT_VARIABLE, "")
    if not value:
        return baked.DEFAULT_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 86400:
        raise DeviceError(
            f"{TIMEOUT_VARIABLE}={value!r} (greenboot.conf): seconds from 0 to 86400 expected",
            user_error=True,
        )
    return seconds


def _say(line: str) -> None:
    console.print(f"afield: {line}", soft_wrap=True, markup=False)
