"""Workloads baked into the image (and local ones under /etc): brought up at every boot, waited
for by the greenboot check.

At boot ``afield-workloads.service`` runs :func:`up`: every source of
:func:`afield.workloads.manifests.sources` is rendered, labelled ``baked.<name>``, to
``/run/afield/manifests/<name>.yaml``; the resources its ``delete/`` directory names are removed;
then each rendered file is started as ``podman-kube@<file>.service`` (podman's own template
unit, so systemd restarts and stops the pods), or played directly when systemd is not PID 1
(the simulator, tests). A source that does not load is reported and skipped; the others still
start.

The required health check ``50-afield-workloads.sh`` runs :func:`wait`: it fails the boot unless
every baked workload is ready within the timeout (5 minutes unless
``AFIELD_WORKLOADS_WAIT_TIMEOUT_SEC`` in greenboot.conf says otherwise), so an OS update that
breaks the application rolls back.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from afield.errors import ManifestError, WorkloadError
from afield.workloads import manifests
from afield.workloads.manifests import Resource
from afield.workloads.podman import Podman, WorkloadState, wait_ready

__all__ = ["DEFAULT_TIMEOUT", "RUN_DIR", "Baked", "load", "systemd_running", "up", "wait"]

RUN_DIR = Path("/run/afield/manifests")
DEFAULT_TIMEOUT = 300.0
PREFIX = "baked."


@dataclass(frozen=True)
class Baked:
    """One source: its workload label, the rendered file, what it runs and what it deletes;
    ``error`` when it did not load (then it runs nothing)."""

    source: manifests.Source
    workload: str
    rendered: Path
    resources: Sequence[Resource] = ()
    deletions: Sequence[Resource] = ()
    error: str = ""


def load(root: Path = Path("/"), run_dir: Path = RUN_DIR) -> list[Baked]:
    """Every source under ``root``, with where :func:`up` renders it in ``run_dir`` (nothing
    is written here: ``wait`` and ``status`` only read)."""
    out = []
    for source in manifests.sources(root):
        workload = PREFIX + source.name
        rendered = run_dir / f"{source.name}.yaml"
        try:
            resources = manifests.labelled(manifests.load_directory(source.path), workload)
            deletions = manifests.deletions(source.path)
        except ManifestError as error:
            out.append(Baked(source, workload, rendered, error=str(error)))
            continue
        out.append(Baked(source, workload, rendered, resources, deletions))
    return out


def systemd_running() -> bool:
    """Whether systemd is PID 1 here (``/run/systemd/system`` exists, as sd_booted says)."""
    return Path("/run/systemd/system").is_dir()


def up(
    podman: Podman,
    baked: Sequence[Baked],
    *,
    systemd: bool | None = None,
    say: Callable[[str], None] = print,
) -> bool:
    """Remove what ``delete/`` names, then render and start every loaded source; False if any
    failed."""
    use_systemd = systemd_running() if systemd is None else systemd
    ok = True
    for item in baked:
        if item.error:
            say(f"{item.source.path}: not started: {item.error}")
            ok = False
            continue
        podman.delete(item.deletions)
    for item in baked:
        if item.error or not item.resources:
            continue
        item.rendered.parent.mkdir(parents=True, exist_ok=True)
        temporary = item.rendered.with_suffix(".tmp")
        temporary.write_text(manifests.render(item.resources))
        temporary.replace(item.rendered)
        try:
            if use_systemd:
                _start_unit(item.rendered)
            else:
                podman.play(item.rendered)
            say(f"{item.source.path}: started ({len(item.resources)} resources)")
        except WorkloadError as error:
            say(f"{item.source.path}: not started: {error}")
            ok = False
    return ok


def _start_unit(rendered: Path) -> None:
    escaped = subprocess.run(
        ["systemd-escape", "--template=podman-kube@.service", str(rendered)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    proc = subprocess.run(
        ["systemctl", "start", "--no-block", escaped], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise WorkloadError(f"systemctl start {escaped}: {proc.stderr.strip()}")


def wait(
    podman: Podman,
    baked: Sequence[Baked],
    timeout: float = DEFAULT_TIMEOUT,
    *,
    say: Callable[[str], None] = print,
) -> bool:
    """Wait until every baked workload is ready; True when all are (none is also True)."""
    ok = True
    for item in baked:
        if item.error:
            say(f"{item.workload}: failed: {item.error}")
            ok = False
    running = {item.workload: item.resources for item in baked if not item.error}
    states: list[WorkloadState] = wait_ready(podman, running, timeout) if running else []
    for state in states:
        say(f"{state.name}: {state.state}" + (f": {state.reason}" if state.reason else ""))
        ok = ok and state.state == "ready"
    return ok
