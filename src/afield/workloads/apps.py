"""Applications the fleet manager deploys at runtime: applied, updated, rolled back, removed.

Each application is a name, Kubernetes manifests and the images they use, with the digest of
the manifests (:class:`Wanted`). The device keeps what it runs under
``/var/lib/afield/applications/<name>/``: ``current.yaml`` (the rendered manifests that run),
``state.json`` (their digest, and the outcome of the last digest tried). Reconciling one
application whose digest changed:

1. parse the manifests and pull every image; a failure here changes nothing on the device;
2. write ``next.yaml``, take the current pods down, play the new ones, wait until they are ready;
3. ready: ``next.yaml`` becomes ``current.yaml``. Not ready: the new pods go down, the previous
   manifests are played again, and the digest is remembered as failed with the reason, so it is
   not retried until the fleet manager sends a different one.

A power cut between 2 and 3 leaves ``next.yaml``: the next reconcile takes it down, plays
``current.yaml`` again and starts over, so no half-applied state survives. Pods are labelled
``app.<name>``; an application whose Pod or Deployment name belongs to another workload (a baked
one, another application) is refused instead of replacing it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from afield.errors import ManifestError, WorkloadError
from afield.workloads import manifests
from afield.workloads.manifests import LABEL, POD_LABEL, Resource
from afield.workloads.podman import Podman, State, WorkloadState, readiness, wait_ready

__all__ = ["PREFIX", "Applications", "Status", "Wanted"]

PREFIX = "app."


@dataclass(frozen=True)
class Wanted:
    """An application as the fleet manager wants it."""

    name: str
    manifests: str
    images: Sequence[str]
    digest: str


@dataclass(frozen=True)
class Status:
    """How an application is: ``pending``, ``running``, ``ready`` or ``failed`` (with why), for
    the manifests of ``digest``."""

    name: str
    digest: str
    state: State
    reason: str = ""


class Applications:
    """The runtime applications of one device, kept under ``directory``."""

    def __init__(
        self,
        directory: Path,
        podman: Podman | None = None,
        *,
        timeout: float = 300.0,
        log: Callable[[str], None] = lambda _line: None,
    ) -> None:
        self.directory = directory
        self.podman = podman or Podman()
        self.timeout = timeout
        self.log = log

    def installed(self) -> list[str]:
        """Names of the applications the device has state for."""
        if not self.directory.is_dir():
            return []
        return sorted(p.name for p in self.directory.iterdir() if (p / "state.json").exists())

    def reconcile(self, wanted: Sequence[Wanted]) -> list[Status]:
        """Make the device run exactly ``wanted``; the status of each, in ``wanted``'s order."""
        names = {app.name for app in wanted}
        for name in self.installed():
            if name not in names:
                self.remove(name)
        return [self._one(app) for app in wanted]

    def remove(self, name: str) -> None:
        """Take an application's pods down and forget it (its volumes stay)."""
        home = self.directory / name
        for rendered in (home / "next.yaml", home / "current.yaml"):
            if rendered.exists():
                self.podman.down(rendered)
        self.podman.remove_workload(PREFIX + name)
        shutil.rmtree(home, ignore_errors=True)
        self.log(f"application {name}: removed")

    # -- one application -----------------------------------------------------------------------

    def _one(self, app: Wanted) -> Status:
        home = self.directory / app.name
        state = _read_state(home)
        self._recover(app.name, home)
        if state.get("digest") == app.digest and state.get("outcome") == "ready":
            return self._current(app)
        if state.get("tried") == app.digest:
            return Status(app.name, app.digest, "failed", str(state.get("reason", "")))
        return self._apply(app, home, state)

    def _current(self, app: Wanted) -> Status:
        current = self.directory / app.name / "current.yaml"
        try:
            parsed = manifests.parse(current.read_bytes(), str(current))
        except (OSError, ManifestError) as error:
            return Status(app.name, app.digest, "failed", f"{current}: {error}")
        now = readiness(self.podman, PREFIX + app.name, parsed)
        return Status(app.name, app.digest, now.state, now.reason)

    def _recover(self, name: str, home: Path) -> None:
        """Undo an update a power cut interrupted: its pods down, the current ones back."""
        interrupted = home / "next.yaml"
        if not interrupted.exists():
            return
        self.log(f"application {name}: an interrupted update is undone")
        self.podman.down(interrupted)
        interrupted.unlink()
        current = home / "current.yaml"
        if current.exists():
            self.podman.play(current)

    def _apply(self, app: Wanted, home: Path, state: dict[str, Any]) -> Status:
        workload = PREFIX + app.name
        try:
            parsed = manifests.parse(app.manifests, f"application {app.name}")
            resources = manifests.labelled(parsed, workload)
            self._no_conflict(app.name, resources)
            for image in sorted({*app.images, *manifests.image_references(resources)}):
                try:
                    self.podman.pull(image)
                except WorkloadError as error:
                    raise WorkloadError(f"image {image}: {error}") from None
        except (ManifestError, WorkloadError) as error:
            return self._failed(app, home, state, str(error))
        home.mkdir(parents=True, exist_ok=True)
        current, following = home / "current.yaml", home / "next.yaml"
        _write(following, manifests.render(resources))
        self.log(f"application {app.name}: applying {app.digest[:12]}")
        try:
            if current.exists():
                self.podman.down(current)
            self.podman.play(following)
            (outcome,) = wait_ready(self.podman, {workload: resources}, self.timeout)
        except WorkloadError as error:
            outcome = WorkloadState(workload, "failed", str(error))
        if outcome.state == "ready":
            following.replace(current)
            _write_state(home, {"digest": app.digest, "outcome": "ready"})
            self.log(f"application {app.name}: {app.digest[:12]} ready")
            return Status(app.name, app.digest, "ready")
        self.podman.down(following)
        following.unlink()
        reason = outcome.reason
        if current.exists():
            try:
                self.podman.play(current)
                reason += f"; rolled back to {str(state.get('digest', ''))[:12]}"
            except WorkloadError as error:
                reason += f"; rolling back failed too: {error}"
        return self._failed(app, home, state, reason)

    def _failed(self, app: Wanted, home: Path, state: dict[str, Any], reason: str) -> Status:
        home.mkdir(parents=True, exist_ok=True)
        kept = {k: v for k, v in state.items() if k in ("digest", "outcome")}
        _write_state(home, {**kept, "tried": app.digest, "reason": reason[:2000]})
        self.log(f"application {app.name}: {app.digest[:12]} failed: {reason}")
        return Status(app.name, app.digest, "failed", reason[:500])

    def _no_conflict(self, name: str, resources: Sequence[Resource]) -> None:
        mine = PREFIX + name
        pods = json.loads(self.podman.run("pod", "ps", "--format", "json") or "[]")
        owners = {
            (pod.get("Labels") or {}).get(POD_LABEL): (pod.get("Labels") or {}).get(LABEL)
            for pod in pods
        }
        for resource in resources:
            owner = owners.get(resource.name)
            if resource.pod_spec() is not None and owner not in (None, mine):
                raise WorkloadError(
                    f"{resource.kind} {resource.name} belongs to workload {owner}; "
                    "choose another name"
                )


def _read_state(home: Path) -> dict[str, Any]:
    try:
        data = json.loads((home / "state.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_state(home: Path, state: dict[str, Any]) -> None:
    _write(home / "state.json", json.dumps(state, indent=1, sort_keys=True) + "\n")


def _write(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)
