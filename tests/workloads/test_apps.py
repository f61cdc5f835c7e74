"""Runtime applications with real podman: applied, updated, rolled back, removed."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import pytest

from afield.workloads import baked, manifests
from afield.workloads.apps import Applications, Wanted
from afield.workloads.podman import Podman
from tests.containers import build_busybox_image, corrupt_blob, local_registry, push, remove_image
from tests.workloads.test_podman import _source, web

pytestmark = [pytest.mark.podman, pytest.mark.root]


def wanted(name: str, text: str, images: tuple[str, ...] = ()) -> Wanted:
    return Wanted(name, text, images, hashlib.sha256(text.encode()).hexdigest())


def page(name: str) -> str:
    """What the application's web server serves, read inside its pod."""
    return subprocess.run(
        [
            "podman",
            "exec",
            f"{name}-pod-0-httpd",
            "wget",
            "-q",
            "-O",
            "-",
            "http://127.0.0.1:8080/",
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()


def test_apply_update_roll_back_and_remove(tmp_path: Path, app_image: str, pods: None) -> None:
    apps = Applications(tmp_path / "applications", timeout=6)
    v1 = wanted("shop", web(app_image, "shop"))
    (status,) = apps.reconcile([v1])
    assert (status.state, status.digest, status.reason) == ("ready", v1.digest, "")
    assert page("shop") == "hello from shop"

    # Unchanged: checked, not replayed.
    (again,) = apps.reconcile([v1])
    assert again.state == "ready"

    # v2 never becomes ready (nothing listens on the probed port): v1 comes back.
    v2 = wanted("shop", web(app_image, "shop").replace("-p 8080", "-p 8081"))
    (failed,) = apps.reconcile([v2])
    assert failed.state == "failed" and failed.digest == v2.digest
    assert "readiness probe failing" in failed.reason
    assert f"rolled back to {v1.digest[:12]}" in failed.reason
    assert page("shop") == "hello from shop"
    state = json.loads((tmp_path / "applications/shop/state.json").read_text())
    assert state["digest"] == v1.digest and state["tried"] == v2.digest

    # The failed digest is not tried again on every poll.
    (still,) = apps.reconcile([v2])
    assert still == failed.__class__(failed.name, failed.digest, "failed", failed.reason[:500])

    # v3 works: it replaces v1.
    v3 = wanted("shop", web(app_image, "shop").replace("hello from", "v3 of"))
    (ready,) = apps.reconcile([v3])
    assert ready.state == "ready"
    assert page("shop") == "v3 of shop"

    # Not wanted any more: removed with its state.
    assert apps.reconcile([]) == []
    assert Podman().pods("app.shop") == []
    assert not (tmp_path / "applications/shop").exists()


def test_a_missing_image_changes_nothing(tmp_path: Path, app_image: str, pods: None) -> None:
    apps = Applications(tmp_path / "applications", timeout=20)
    v1 = wanted("shop", web(app_image, "shop"))
    assert apps.reconcile([v1])[0].state == "ready"
    # A registry on a closed port of 127.0.0.1: the pull fails before anything is taken down.
    missing = "127.0.0.1:9/afield/absent:1"
    v2 = wanted("shop", web(missing, "shop"))
    (failed,) = apps.reconcile([v2])
    assert failed.state == "failed"
    assert failed.reason.startswith(f"image {missing}: podman pull")
    assert page("shop") == "hello from shop"


def test_bad_manifests_are_refused_before_anything_runs(
    tmp_path: Path, app_image: str, pods: None
) -> None:
    apps = Applications(tmp_path / "applications", timeout=20)
    (failed,) = apps.reconcile(
        [wanted("svc", "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n")]
    )
    assert failed.state == "failed"
    assert failed.reason.startswith("application svc, document 1: kind 'Service' is not played")
    assert Podman().pods("app.svc") == []


def test_an_application_may_not_take_over_a_baked_workload(
    tmp_path: Path, app_image: str, pods: None
) -> None:
    root = tmp_path / "root"
    _source(root, "web", web(app_image, "web"))
    assert baked.up(Podman(), baked.load(root, tmp_path / "run"), systemd=False)
    apps = Applications(tmp_path / "applications", timeout=20)
    (refused,) = apps.reconcile([wanted("intruder", web(app_image, "web"))])
    assert refused.state == "failed"
    assert refused.reason == "Deployment web belongs to workload baked.web; choose another name"
    assert len(Podman().pods("baked.web")) == 1


def test_an_update_cut_by_power_loss_is_undone(tmp_path: Path, app_image: str, pods: None) -> None:
    apps = Applications(tmp_path / "applications", timeout=20)
    v1 = wanted("shop", web(app_image, "shop"))
    assert apps.reconcile([v1])[0].state == "ready"
    home = tmp_path / "applications/shop"
    # The agent died after playing v2's pods and before deciding: next.yaml is left behind.
    v2_text = web(app_image, "shop").replace("hello from", "half-applied")
    podman = Podman()
    podman.down(home / "current.yaml")
    rendered = manifests.render(manifests.labelled(manifests.parse(v2_text, "v2"), "app.shop"))
    (home / "next.yaml").write_text(rendered)
    podman.play(home / "next.yaml")
    (status,) = Applications(tmp_path / "applications", timeout=20).reconcile([v1])
    assert status.state in ("ready", "running", "pending")
    assert not (home / "next.yaml").exists()
    assert _eventually_page("shop") == "hello from shop"


def _eventually_page(name: str) -> str:
    for _ in range(30):
        text = page(name)
        if text:
            return text
        time.sleep(0.5)
    return page(name)


def test_images_are_pulled_and_a_tampered_layer_changes_nothing(
    tmp_path: Path, app_image: str, pods: None
) -> None:
    # Threat: a registry (or a man in the middle) serving a layer whose bytes do not match the
    # digest the image's manifest pins. podman verifies it; the update fails and v1 keeps serving.
    v2_local = build_busybox_image(f"{app_image}-v2", {"/www/index.html": b"v2\n"}, base=app_image)
    with local_registry(tmp_path / "registry") as registry:
        registries = tmp_path / "registries.conf"
        registries.write_text(f'[[registry]]\nlocation = "{registry}"\ninsecure = true\n')
        podman = Podman(env={"CONTAINERS_REGISTRIES_CONF": str(registries)})
        v1_image = push(app_image, registry)
        v2_image = push(v2_local, registry)
        remove_image(v2_local)
        apps = Applications(tmp_path / "applications", podman, timeout=20)
        try:
            (ready,) = apps.reconcile([wanted("shop", web(v1_image, "shop"), (v1_image,))])
            assert ready.state == "ready", ready.reason
            assert podman.image_exists(v1_image)
            manifest = json.loads(
                subprocess.run(
                    ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{v2_image}"],
                    capture_output=True, check=True,
                ).stdout
            )  # fmt: skip
            corrupt_blob(tmp_path / "registry", manifest["layers"][-1]["digest"])
            (failed,) = apps.reconcile([wanted("shop", web(v2_image, "shop"))])
            assert failed.state == "failed"
            assert failed.reason.startswith(f"image {v2_image}: podman pull"), failed.reason
            assert "Digest did not match" in failed.reason, failed.reason
            assert not podman.image_exists(v2_image)
            assert page("shop") == "hello from shop"
        finally:
            apps.reconcile([])
            remove_image(v1_image)
