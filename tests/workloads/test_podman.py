"""Baked workloads with real podman: played from the image's layout, probed, waited for, deleted."""

# ruff: noqa: E501

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from afield.errors import WorkloadError
from afield.workloads import baked, manifests
from afield.workloads.podman import Podman, readiness, wait_ready

pytestmark = [pytest.mark.podman, pytest.mark.root]


def web(image: str, name: str = "web", *, probe: str = "httpGet: {path: /, port: 8080}") -> str:
    return f"""\
apiVersion: v1
kind: ConfigMap
metadata: {{name: {name}-config}}
data: {{greeting: hello from {name}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: 1
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: {image}
        command: [sh, -c, 'mkdir -p /www && echo "$GREETING" > /www/index.html && httpd -f -p 8080 -h /www & trap "exit 0" TERM; wait']
        env:
        - name: GREETING
          valueFrom: {{configMapKeyRef: {{name: {name}-config, key: greeting}}}}
        readinessProbe:
          {probe}
          periodSeconds: 1
"""


def pod(image: str, name: str, command: str, probe: str | None = None) -> str:
    probe_line = f"\n    readinessProbe: {probe}" if probe else ""
    return f"""\
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    command: [sh, -c, 'trap "exit 0" TERM; {command}']{probe_line}
"""


def _source(root: Path, name: str, text: str, *, local: bool = False) -> Path:
    base = root / ("etc/afield" if local else "usr/lib/afield") / "manifests.d" / name
    base.mkdir(parents=True)
    (base / "app.yaml").write_text(text)
    return base


def _afield(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "afield.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_baked_workloads_start_and_pass_their_probes(
    tmp_path: Path, app_image: str, pods: None
) -> None:
    root = tmp_path / "root"
    _source(root, "10-web", web(app_image))
    _source(root, "20-tcp", web(app_image, "tcp", probe="tcpSocket: {port: 8080}"))
    _source(
        root,
        "30-exec",
        pod(
            app_image,
            "worker",
            "touch /ready; sleep 1000 & wait",
            "{exec: {command: [test, -e, /ready]}}",
        ),
    )
    run_dir = tmp_path / "run"
    up = _afield("workloads", "up", "--root", str(root), "--run-dir", str(run_dir))
    assert up.returncode == 0, up.stderr
    assert "10-web: started (2 resources)" in up.stdout
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "10-web.yaml",
        "20-tcp.yaml",
        "30-exec.yaml",
    ]
    waited = _afield(
        "workloads", "wait", "--root", str(root), "--run-dir", str(run_dir), "--timeout", "60"
    )
    assert waited.returncode == 0, waited.stdout + waited.stderr
    for workload in ("baked.10-web", "baked.20-tcp", "baked.30-exec"):
        assert f"{workload}: ready" in waited.stdout
    status = _afield(
        "workloads", "status", "--root", str(root), "--run-dir", str(run_dir), "--json"
    )
    assert '"state": "ready"' in status.stdout and status.returncode == 0
    # The page the probe read is the one the ConfigMap wrote, served inside the pod's network.
    served = subprocess.run(
        ["podman", "exec", "web-pod-0-httpd", "wget", "-q", "-O", "-", "http://127.0.0.1:8080/"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert served.stdout.strip() == "hello from web"


def test_a_workload_that_never_becomes_ready_fails_the_check_with_its_reason(
    tmp_path: Path, app_image: str, pods: None
) -> None:
    root = tmp_path / "root"
    # Listens on 8081, so the probe on 8080 never passes.
    _source(root, "web", web(app_image).replace("-p 8080", "-p 8081"))
    run_dir = tmp_path / "run"
    assert (
        _afield("workloads", "up", "--root", str(root), "--run-dir", str(run_dir)).returncode == 0
    )
    waited = _afield(
        "workloads", "wait", "--root", str(root), "--run-dir", str(run_dir), "--timeout", "4"
    )
    assert waited.returncode == 1
    assert (
        "baked.web: failed: not ready after 4 s: Deployment web, container httpd: readiness probe failing"
        in waited.stdout
    )
    assert "error: baked workloads not ready within 4 s" in waited.stderr


def test_a_container_that_exits_fails_at_once_naming_its_exit_code(
    app_image: str, tmp_path: Path, pods: None
) -> None:
    resources = manifests.labelled(
        manifests.parse(pod(app_image, "crash", "exit 3"), "crash.yaml"), "baked.crash"
    )
    rendered = tmp_path / "crash.yaml"
    rendered.write_text(manifests.render(resources))
    podman = Podman()
    with contextlib.suppress(WorkloadError):  # podman may report the start failure itself
        podman.play(rendered)
    (state,) = wait_ready(podman, {"baked.crash": resources}, 30)
    assert state.state == "failed"
    assert state.reason == "Pod crash, container main: exited with code 3"


def test_a_bad_local_source_is_reported_and_the_others_still_start(
    tmp_path: Path, app_image: str, pods: None
) -> None:
    root = tmp_path / "root"
    _source(root, "good", web(app_image))
    _source(root, "bad", "apiVersion: v1\nkind: Service\nmetadata: {name: x}\n", local=True)
    run_dir = tmp_path / "run"
    up = _afield("workloads", "up", "--root", str(root), "--run-dir", str(run_dir))
    assert up.returncode == 1
    assert "kind 'Service' is not played by podman" in up.stdout
    assert "good: started" in up.stdout
    assert readiness_eventually(root, run_dir, "baked.good")


def readiness_eventually(root: Path, run_dir: Path, workload: str) -> bool:
    loaded = {b.workload: b for b in baked.load(root, run_dir)}
    (state,) = wait_ready(Podman(), {workload: loaded[workload].resources}, 60)
    return state.state == "ready"


def test_delete_removes_what_a_source_names(tmp_path: Path, app_image: str, pods: None) -> None:
    root = tmp_path / "root"
    _source(root, "old", pod(app_image, "legacy", "sleep 1000 & wait"))
    run_dir = tmp_path / "run"
    assert baked.up(Podman(), baked.load(root, run_dir), systemd=False)
    loaded = baked.load(root, run_dir)
    assert readiness(Podman(), "baked.old", loaded[0].resources).state in ("ready", "pending")
    # The next image drops the old workload and names it under delete/.
    new = _source(root, "new", web(app_image))
    (new / "delete").mkdir()
    (new / "delete" / "legacy.yaml").write_text(pod(app_image, "legacy", "true"))
    for path in (root / "usr/lib/afield/manifests.d/old").iterdir():
        path.unlink()
    (root / "usr/lib/afield/manifests.d/old").rmdir()
    said: list[str] = []
    assert baked.up(Podman(), baked.load(root, run_dir), systemd=False, say=said.append)
    assert Podman().pods("baked.old") == []
    assert said == [f"{new}: started (2 resources)"]


CHECK = "/usr/lib/greenboot/check/required.d/50-afield-workloads.sh"


def _run_check(
    tmp_path: Path, manifests_dir: Path | None, conf: str
) -> subprocess.CompletedProcess[str]:
    """The image's required check, run as greenboot would, in a mount namespace where
    /usr/lib/afield holds ``manifests_dir`` and /usr/bin/afield is this checkout's CLI."""
    from afield.compose.stages.device_agent import CHECKS

    tmp_path.mkdir()
    script = tmp_path / "check.sh"
    script.write_text(CHECKS[CHECK])
    shim = tmp_path / "afield"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m afield.cli "$@"\n')
    shim.chmod(0o755)
    afield_dir = tmp_path / "usr-lib-afield"
    (afield_dir / "manifests.d").mkdir(parents=True)
    greenboot = tmp_path / "greenboot"
    greenboot.mkdir()
    (greenboot / "greenboot.conf").write_text(conf)
    argv = [
        "bwrap",
        "--dev-bind",
        "/",
        "/",
        "--bind",
        str(afield_dir),
        "/usr/lib/afield",
        "--ro-bind",
        str(shim),
        "/usr/bin/afield",
        "--bind",
        str(greenboot),
        "/etc/greenboot",
        "--tmpfs",
        "/etc/afield",
        "--bind",
        str(tmp_path / "run"),
        "/run/afield",
    ]
    (tmp_path / "run").mkdir()
    if manifests_dir is not None:
        argv += ["--ro-bind", str(manifests_dir), "/usr/lib/afield/manifests.d/web"]
        (afield_dir / "manifests.d" / "web").mkdir()
    return subprocess.run(
        [*argv, "sh", str(script)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")},
    )


def test_the_greenboot_check_passes_without_workloads_and_gates_on_readiness(
    tmp_path: Path, app_image: str, pods: None
) -> None:
    empty = _run_check(tmp_path / "empty", None, "")
    assert empty.returncode == 0 and empty.stdout == ""
    source = tmp_path / "web"
    source.mkdir()
    # Never ready: listens on 8081, probed on 8080. The timeout comes from greenboot.conf.
    (source / "app.yaml").write_text(web(app_image).replace("-p 8080", "-p 8081"))
    root = tmp_path / "root"
    (root / "usr/lib/afield/manifests.d").mkdir(parents=True)
    (root / "usr/lib/afield/manifests.d/web").symlink_to(source)
    assert baked.up(Podman(), baked.load(root, tmp_path / "played"), systemd=False)
    failed = _run_check(tmp_path / "bad", source, "AFIELD_WORKLOADS_WAIT_TIMEOUT_SEC=3\n")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "baked.web: failed: not ready after 3 s" in failed.stdout
    Podman().remove_workload("baked.web")
    (source / "app.yaml").write_text(web(app_image))
    assert baked.up(Podman(), baked.load(root, tmp_path / "played"), systemd=False)
    passed = _run_check(tmp_path / "good", source, "AFIELD_WORKLOADS_WAIT_TIMEOUT_SEC=60\n")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "baked.web: ready" in passed.stdout
