"""Play, remove and watch workloads with podman, and run their readiness probes.

``podman kube play`` (4.3) creates pods from manifests but keeps no readiness: it drops
``readinessProbe``. So afield runs the probes itself, from the manifests it played: an ``exec``
probe with ``podman exec``; a ``tcpSocket`` or ``httpGet`` probe from a thread that enters the
pod's network namespace (``setns`` on the infra container's ``/proc/PID/ns/net``), so a port the
pod does not publish is probed where the pod listens, as the kubelet would.

Pods are found by the labels :func:`afield.workloads.manifests.labelled` puts on them
(:data:`~afield.workloads.manifests.LABEL` names the workload, :data:`POD_LABEL` the Pod or
Deployment), never by podman's generated names, which changed between podman releases.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from afield.errors import WorkloadError
from afield.workloads.manifests import LABEL, POD_LABEL, Resource

__all__ = [
    "Podman",
    "State",
    "WorkloadState",
    "readiness",
    "wait_ready",
]

State = Literal["pending", "running", "ready", "failed"]
_CLONE_NEWNET = 0x40000000
_TAIL = 2000


@dataclass(frozen=True)
class WorkloadState:
    """Where a workload is: ``ready`` (every container running and passing its probe),
    ``running`` (running, a probe not passing yet), ``pending`` (not all started) or ``failed``;
    ``reason`` says which container and why when it is not ready."""

    name: str
    state: State
    reason: str = ""


@dataclass
class Podman:
    """The podman command line; every call has a timeout.

    Give another storage through ``env`` (``CONTAINERS_STORAGE_CONF``), not ``--root`` or
    ``--storage-driver`` in ``global_args``: podman 4.3 drops ``additionalimagestores`` (the
    image's baked store) when either flag is given."""

    binary: str = "podman"
    global_args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 300.0

    def run(self, *args: str, timeout: float | None = None, check: bool = True) -> str:
        """podman's stdout; WorkloadError naming the command and podman's message on failure."""
        argv = [self.binary, *self.global_args, *args]
        try:
            proc = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                errors="replace",
                env={**os.environ, **self.env},
                timeout=timeout or self.timeout,
                check=False,
            )
        except FileNotFoundError:
            raise WorkloadError(f"{self.binary} is not installed") from None
        except subprocess.TimeoutExpired:
            raise WorkloadError(
                f"podman {args[0]} {args[1] if len(args) > 1 else ''}: "
                f"no answer within {timeout or self.timeout:.0f} s"
            ) from None
        if check and proc.returncode != 0:
            message = (proc.stderr.strip() or proc.stdout.strip())[-_TAIL:]
            raise WorkloadError(f"podman {' '.join(args[:2])} failed: {message}")
        return proc.stdout

    def play(self, manifest: Path, *, network: str | None = None) -> None:
        """Create (or replace) and start the pods of a rendered manifest file."""
        extra = ["--network", network] if network else []
        self.run("kube", "play", "--replace", *extra, str(manifest))

    def down(self, manifest: Path) -> None:
        """Stop and remove the pods a rendered manifest file created (volumes are kept)."""
        self.run("kube", "down", str(manifest), check=False)

    def image_exists(self, image: str) -> bool:
        return self._rc(60, "image", "exists", image) == 0

    def _rc(self, timeout: float, *args: str) -> int:
        """podman's exit status (its output is not wanted); TimeoutExpired past ``timeout``."""
        argv = [self.binary, *self.global_args, *args]
        return subprocess.run(
            argv,
            capture_output=True,
            env={**os.environ, **self.env},
            timeout=timeout,
            check=False,
        ).returncode

    def pull(self, image: str) -> None:
        """Make ``image`` present locally, pulling it only when it is not."""
        if not self.image_exists(image):
            self.run("pull", "--quiet", image)

    def containers(self, workload: str) -> list[dict[str, Any]]:
        """podman's view of the workload's containers (not infra ones)."""
        out = self.run(
            "ps", "-a", "--pod", "--filter", f"label={LABEL}={workload}", "--format", "json"
        )
        return [c for c in json.loads(out or "[]") if not c.get("IsInfra")]

    def pods(self, workload: str) -> list[dict[str, Any]]:
        out = self.run("pod", "ps", "--filter", f"label={LABEL}={workload}", "--format", "json")
        return list(json.loads(out or "[]"))

    def remove_workload(self, workload: str) -> None:
        """Remove every pod labelled with ``workload``."""
        for pod in self.pods(workload):
            self.run("pod", "rm", "--force", pod["Id"], check=False)

    def delete(self, resources: Sequence[Resource]) -> None:
        """Remove what a ``delete/`` directory names: pods, secrets, claims' volumes."""
        for resource in resources:
            if resource.kind in ("Pod", "Deployment"):
                out = self.run(
                    "pod",
                    "ps",
                    "--filter",
                    f"label={POD_LABEL}={resource.name}",
                    "--format",
                    "json",
                )
                for pod in json.loads(out or "[]"):
                    self.run("pod", "rm", "--force", pod["Id"], check=False)
            elif resource.kind == "Secret":
                self.run("secret", "rm", resource.name, check=False)
            elif resource.kind == "PersistentVolumeClaim":
                self.run("volume", "rm", "--force", resource.name, check=False)

    def exec(self, container: str, argv: Sequence[str], timeout: float) -> bool:
        try:
            return self._rc(timeout, "exec", container, *argv) == 0
        except subprocess.TimeoutExpired:
            return False

    def infra_pid(self, pod: Mapping[str, Any]) -> int | None:
        infra = pod.get("InfraId")
        if not infra:
            return None
        out = self.run("inspect", "--format", "{{.State.Pid}}", infra, check=False).strip()
        return int(out) if out.isdigit() and int(out) > 0 else None


# -- readiness ---------------------------------------------------------------------------------


def readiness(podman: Podman, workload: str, resources: Sequence[Resource]) -> WorkloadState:
    """The workload's state now, probing every running container that has a readiness probe."""
    containers = podman.containers(workload)
    pods = {pod["Name"]: pod for pod in podman.pods(workload)}
    by_pod: dict[str, list[dict[str, Any]]] = {}
    for container in containers:
        by_pod.setdefault(container.get("Labels", {}).get(POD_LABEL, ""), []).append(container)
    waiting: list[str] = []
    for resource in resources:
        spec = resource.pod_spec()
        if spec is None or (
            resource.kind == "Deployment" and resource.document["spec"].get("replicas", 1) == 0
        ):
            continue
        found = by_pod.get(resource.name, [])
        for container_spec in spec["containers"]:
            name = container_spec["name"]
            what = f"{resource.kind} {resource.name}, container {name}"
            matches = [c for c in found if _k8s_name(c) == name]
            actual = matches[0] if matches else None
            if actual is None:
                waiting.append(f"{what}: not created")
                continue
            state = actual.get("State", "")
            if state in ("exited", "stopped", "dead"):
                code = actual.get("ExitCode", 0)
                return WorkloadState(workload, "failed", f"{what}: exited with code {code}")
            if state != "running":
                waiting.append(f"{what}: {state or 'unknown state'}")
                continue
            probe = container_spec.get("readinessProbe")
            if probe is not None and not _probe(podman, actual, probe, pods):
                waiting.append(f"{what}: readiness probe failing")
    if not waiting:
        return WorkloadState(workload, "ready")
    running = all("probe" in reason for reason in waiting)
    return WorkloadState(workload, "running" if running else "pending", "; ".join(waiting))


def wait_ready(
    podman: Podman,
    workloads: Mapping[str, Sequence[Resource]],
    timeout: float,
    *,
    interval: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    on_state: Callable[[WorkloadState], None] | None = None,
) -> list[WorkloadState]:
    """Wait up to ``timeout`` s until every workload is ready; their last states. A workload
    that is not ready by then is ``failed`` with the reason it was waiting on."""
    deadline = clock() + timeout
    states: dict[str, WorkloadState] = {}
    while True:
        for name, resources in workloads.items():
            if name in states and states[name].state in ("ready", "failed"):
                continue
            states[name] = readiness(podman, name, resources)
            if on_state is not None:
                on_state(states[name])
        pending = [s for s in states.values() if s.state not in ("ready", "failed")]
        if not pending:
            break
        if clock() >= deadline:
            for state in pending:
                states[state.name] = WorkloadState(
                    state.name, "failed", f"not ready after {timeout:.0f} s: {state.reason}"
                )
            break
        time.sleep(interval)
    return [states[name] for name in workloads]


def _k8s_name(container: Mapping[str, Any]) -> str:
    """The manifest's container name: podman names it ``<pod>-<container>``."""
    names = container.get("Names") or [""]
    full = names[0] if isinstance(names, list) else str(names)
    pod = container.get("PodName", "")
    return full[len(pod) + 1 :] if pod and full.startswith(pod + "-") else full


def _probe(
    podman: Podman,
    container: Mapping[str, Any],
    probe: Mapping[str, Any],
    pods: Mapping[str, Mapping[str, Any]],
) -> bool:
    timeout = float(probe.get("timeoutSeconds", 1) or 1)
    if "exec" in probe:
        names = container.get("Names") or [container["Id"]]
        return podman.exec(names[0], probe["exec"]["command"], timeout + 5)
    pod = pods.get(container.get("PodName", ""))
    pid = podman.infra_pid(pod) if pod is not None else None
    if pid is None:
        return False
    if "tcpSocket" in probe:
        return _in_netns(pid, lambda: _tcp(probe["tcpSocket"]["port"], timeout))
    get = probe["httpGet"]
    return _in_netns(pid, lambda: _http(get["port"], get.get("path", "/"), timeout))


def _tcp(port: int, timeout: float) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout):
        return True


def _http(port: int, path: str, timeout: float) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        status = conn.recv(64).split(b" ", 2)
    return len(status) >= 2 and status[1].isdigit() and 200 <= int(status[1]) < 400


def _in_netns(pid: int, action: Callable[[], bool]) -> bool:
    """``action()`` in a thread that joined ``pid``'s network namespace; False on any error."""
    result = [False]

    def run() -> None:
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    return
            finally:
                os.close(fd)
            result[0] = action()
        except OSError:
            result[0] = False

    thread = threading.Thread(target=run, name=f"probe-{pid}", daemon=True)
    thread.start()
    thread.join()
    return result[0]
