"""Stage afield.containers on a bare tree: images from archives and a registry are baked into a
read-only store that podman runs with no registry reachable; inputs are pinned; bad ones fail.

Images are busybox built locally (tests/containers.py); the registry is Debian's docker-registry
on 127.0.0.1. No test needs the internet or a full compose.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from afield import blueprint as bp
from afield.compose import compose
from afield.compose.pipeline import StageContext, StageSpec, load_stage, stage_ids
from afield.compose.plan import Target, plan
from afield.compose.stages import containers
from afield.errors import ComposeError, StageError
from afield.image import image_info, open_repository
from afield.ostree import Repo
from tests.conftest import EXAMPLE, fresh_cache, keep_debs
from tests.containers import (
    build_busybox_image,
    corrupt_blob,
    local_registry,
    push,
    remove_image,
    save_archive,
)

EPOCH = 1767225600
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}[platform.machine()]
MESSAGE = b"baked-ok\n"
STORE = "usr/lib/containers/storage"
TARGET = Target(
    suite="bookworm", debian_arch=ARCH, mirrors=("deb http://deb.invalid/ bookworm main",)
)


@dataclass(frozen=True)
class Images:
    """Test images in the default podman storage, and archives of them."""

    app: str  # busybox plus /etc/message: two layers
    oci: Path
    docker: Path


@pytest.fixture(scope="module")
def images(busybox_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    base = tmp_path_factory.mktemp("archives")
    app = build_busybox_image(
        f"localhost/afield-test/app:{os.getpid()}", {"/etc/message": MESSAGE}, base=busybox_image
    )
    yield Images(
        app=app,
        oci=save_archive(app, base / "app.oci.tar", "oci-archive"),
        docker=save_archive(busybox_image, base / "bb.docker.tar", "docker-archive"),
    )
    remove_image(app)


def blueprint(directory: Path, *entries: dict[str, Any]) -> bp.Blueprint:
    """A blueprint file in ``directory`` with ``[[containers]]`` ``entries``, loaded."""
    text = (
        f'name = "img"\nversion = "1.0.0"\n[customizations.afield]\nsource_date_epoch = {EPOCH}\n'
    )
    for entry in entries:
        text += "[[containers]]\n" + "".join(
            f"{key} = {json.dumps(value)}\n" for key, value in entry.items()
        )
    path = directory / "blueprint.toml"
    path.write_text(text)
    return bp.load(path)


def options(blueprint: bp.Blueprint) -> dict[str, Any]:
    return containers.plan_options(blueprint, architecture=ARCH, source_date_epoch=EPOCH)


def run_stage(tmp_path: Path, opts: dict[str, Any], name: str = "tree") -> Path:
    """Run the stage on an empty tree under ``tmp_path``; the tree."""
    tree = tmp_path / name
    (tree / "usr" / "lib").mkdir(parents=True)
    (tree / "etc").mkdir()
    ctx = StageContext(
        tree=tree,
        workdir=tmp_path / f"{name}-work",
        cache_dir=tmp_path / "cache",
        facts={},
        log=lambda _: None,
    )
    ctx.workdir.mkdir()
    facts = load_stage(containers.NAME).run(ctx, opts)
    assert [f["name"] for f in facts["containers"]] == [i["name"] for i in opts["images"]]
    return tree


def snapshot(directory: Path) -> dict[str, tuple[int, bytes]]:
    """Every file and link under ``directory``: its mode and content (or link target)."""
    found: dict[str, tuple[int, bytes]] = {}
    for root, dirs, files in os.walk(directory):
        for name in [*dirs, *files]:
            path = Path(root, name)
            st = path.lstat()
            if path.is_symlink():
                data = os.readlink(path).encode()
            elif path.is_file():
                data = path.read_bytes()
            else:
                data = b""
            found[str(path.relative_to(directory))] = (st.st_mode, data)
    return found


def run_baked(tree: Path, scratch: Path, image: str, *argv: str) -> str:
    """Run ``image`` from the tree's baked store with podman, as the image's storage.conf says,
    with its own empty store in ``scratch``, no network and no pulling; its output."""
    written = tomllib.loads((tree / "etc/containers/storage.conf").read_text())
    assert written["storage"]["driver"] == "vfs"
    [store] = written["storage"]["options"]["additionalimagestores"]
    scratch.mkdir(exist_ok=True)
    # podman refuses a runroot longer than 50 characters: pytest's tmp_path is too long. The
    # stores are set in storage.conf only: podman --root/--runroot would drop the additional one.
    with tempfile.TemporaryDirectory(prefix="afield-", ignore_cleanup_errors=True) as short:
        conf = scratch / "storage.conf"
        conf.write_text(
            containers.storage_conf(
                graphroot=str(scratch / "root"),
                runroot=f"{short}/run",
                additional=[str(tree / store.lstrip("/"))],
            )
        )
        result = subprocess.run(
            ["podman", "--tmpdir", f"{short}/libpod",
             "run", "--rm", "--network", "none", "--pull", "never", image, *argv],
            capture_output=True,
            text=True,
            env={**os.environ, "CONTAINERS_STORAGE_CONF": str(conf)},
            check=False,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- it works -------------------------------------------------------------------------------


@pytest.mark.podman
@pytest.mark.root
@pytest.mark.parametrize("fmt", ["oci-archive", "docker-archive"])
def test_archive_image_is_baked_and_runs_with_no_registry(
    images: Images, tmp_path: Path, fmt: str
) -> None:
    # The device boots with no network: a baked image must run from the read-only store alone.
    archive = images.oci if fmt == "oci-archive" else images.docker
    (tmp_path / "images").mkdir()
    os.link(archive, tmp_path / "images" / "app.tar")
    name = "localhost/app" if fmt == "oci-archive" else "localhost/bb:1"
    opts = options(blueprint(tmp_path, {"source": f"{fmt}:images/app.tar", "name": name}))
    [image] = opts["images"]
    assert image["path"] == str(tmp_path / "images" / "app.tar")
    assert image["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert image["name"] == ("localhost/app:latest" if fmt == "oci-archive" else name)
    tree = run_stage(tmp_path, opts)
    store_before = snapshot(tree / STORE)
    if fmt == "oci-archive":
        assert run_baked(tree, tmp_path / "podman", image["name"], "cat", "/etc/message") == (
            MESSAGE.decode()
        )
    else:
        assert run_baked(tree, tmp_path / "podman", name, "echo", "hello") == "hello\n"
    # podman used the store read-only: not one byte of it changed.
    assert snapshot(tree / STORE) == store_before


@pytest.mark.podman
@pytest.mark.root
def test_registry_image_is_copied_by_digest_and_runs_after_the_registry_stops(
    images: Images, tmp_path: Path
) -> None:
    # The copy must be the image the plan pinned, and must not need the registry afterwards.
    with local_registry(tmp_path / "registry") as registry:
        reference = push(images.app, registry)
        pushed = subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", "--format", "{{.Digest}}",
             f"docker://{reference}"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        opts = options(blueprint(tmp_path, {"source": reference, "tls-verify": False}))
        [image] = opts["images"]
        assert image["digest"] == pushed
        assert image["repository"] == reference.rsplit(":", 1)[0]
        assert image["name"] == reference
        tree = run_stage(tmp_path, opts)
    # The registry is gone now.
    assert run_baked(tree, tmp_path / "podman", reference, "cat", "/etc/message") == "baked-ok\n"


@pytest.mark.podman
@pytest.mark.root
def test_moving_tag_changes_the_pinned_digest_and_the_stage_id(
    busybox_image: str, images: Images, local_registry_url: str, tmp_path: Path
) -> None:
    # A recompose after the tag moved must not reuse the old image from the cache.
    tag = f"{local_registry_url}/moving/app:{os.getpid()}"
    entry = {"source": tag, "tls-verify": False}
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
         f"containers-storage:{busybox_image}", f"docker://{tag}"],
        check=True,
    )  # fmt: skip
    before = options(blueprint(tmp_path, entry))
    again = options(blueprint(tmp_path, entry))
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
         f"containers-storage:{images.app}", f"docker://{tag}"],
        check=True,
    )  # fmt: skip
    after = options(blueprint(tmp_path, entry))
    assert before == again
    assert before["images"][0]["digest"] != after["images"][0]["digest"]
    ids = [stage_ids([StageSpec(containers.NAME, o)])[0] for o in (before, again, after)]
    assert ids[0] == ids[1] != ids[2]


def test_source_pinned_by_digest_is_not_resolved_again(tmp_path: Path) -> None:
    # A digest in the blueprint is already the pin: planning needs no registry for it.
    digest = "sha256:" + "0" * 64
    opts = options(blueprint(tmp_path, {"source": f"127.0.0.1:1/app@{digest}"}))
    assert opts["images"][0]["digest"] == digest
    assert opts["images"][0]["name"] == f"127.0.0.1:1/app@{digest}"


@pytest.mark.podman
@pytest.mark.root
def test_same_inputs_give_byte_identical_store(images: Images, tmp_path: Path) -> None:
    # Same blueprint, same commit: nothing in the store may depend on when it was written.
    opts = options(
        blueprint(
            tmp_path,
            {"source": f"oci-archive:{images.oci}", "name": "localhost/app:1"},
            {"source": f"docker-archive:{images.docker}", "name": "localhost/bb:1"},
        )
    )
    first = snapshot(run_stage(tmp_path, opts, "one"))
    second = snapshot(run_stage(tmp_path, opts, "two"))
    assert first == second
    layers = json.loads(first[f"{STORE}/vfs-layers/layers.json"][1])
    assert len(layers) == 2  # the app image shares busybox's layer
    assert {layer["created"] for layer in layers} == {"2026-01-01T00:00:00Z"}
    assert all(data == b"" for path, (_, data) in first.items() if path.endswith(".lock"))


@pytest.mark.podman
@pytest.mark.root
def test_store_commits_to_ostree_reproducibly_and_runs_from_a_checkout(
    images: Images, tmp_path: Path
) -> None:
    # The store must survive OSTree (no whiteout devices, modes and xattrs kept), and the same
    # inputs must give the same commit checksum.
    opts = options(
        blueprint(tmp_path, {"source": f"oci-archive:{images.oci}", "name": "localhost/app:1"})
    )
    repo = Repo.create(tmp_path / "repo", mode="bare")
    commits = [
        repo.commit_tree(run_stage(tmp_path, opts, name), subject="t", metadata={}, timestamp=EPOCH)
        for name in ("one", "two")
    ]
    assert commits[0] == commits[1]
    checkout = tmp_path / "checkout"
    subprocess.run(
        ["ostree", f"--repo={tmp_path / 'repo'}", "checkout", commits[0], str(checkout)],
        check=True,
    )
    output = run_baked(checkout, tmp_path / "podman", "localhost/app:1", "cat", "/etc/message")
    assert output == MESSAGE.decode()


@pytest.mark.podman
@pytest.mark.root
def test_storage_conf_makes_the_store_podmans_additional_image_store(
    images: Images, tmp_path: Path
) -> None:
    # The device's podman must find the baked images, and keep its own store in /var.
    opts = options(
        blueprint(tmp_path, {"source": f"oci-archive:{images.oci}", "name": "localhost/a"})
    )
    tree = run_stage(tmp_path, opts)
    conf = tree / "etc/containers/storage.conf"
    assert conf.stat().st_mode & 0o777 == 0o644
    assert tomllib.loads(conf.read_text()) == {
        "storage": {
            "driver": "vfs",
            "graphroot": "/var/lib/containers/storage",
            "runroot": "/run/containers/storage",
            "options": {"additionalimagestores": ["/usr/lib/containers/storage"]},
        }
    }
    assert (tree / "usr/lib/containers").stat().st_mode & 0o777 == 0o755


# --- bad inputs -----------------------------------------------------------------------------


def test_missing_archive_is_a_user_error_naming_the_entry(tmp_path: Path) -> None:
    # A typo in the archive path must be reported before anything runs.
    with pytest.raises(ComposeError) as info:
        options(blueprint(tmp_path, {"source": "oci-archive:nope.tar", "name": "localhost/a:1"}))
    assert info.value.user_error
    assert "containers[0] (oci-archive:nope.tar)" in info.value.message
    assert f"{tmp_path / 'nope.tar'} does not exist" in info.value.message


@pytest.mark.podman
@pytest.mark.root
def test_unreachable_registry_fails_the_plan_naming_the_entry(tmp_path: Path) -> None:
    # A registry that is down must stop the compose with a reason, not a Go stack.
    source = f"127.0.0.1:{free_port()}/app:1"
    with pytest.raises(ComposeError) as info:
        options(blueprint(tmp_path, {"source": source, "tls-verify": False}))
    assert f"containers[0] ({source})" in info.value.message
    assert "cannot reach the registry" in info.value.message
    assert "connection refused" in info.value.message
    assert not info.value.user_error


@pytest.mark.podman
@pytest.mark.root
def test_missing_tag_is_a_user_error(local_registry_url: str, tmp_path: Path) -> None:
    # A tag that was never pushed is the blueprint's mistake.
    source = f"{local_registry_url}/nothing/here:1"
    with pytest.raises(ComposeError) as info:
        options(blueprint(tmp_path, {"source": source, "tls-verify": False}))
    assert info.value.user_error
    assert f"containers[0] ({source}): cannot resolve the tag to a digest" in info.value.message
    assert "the registry has no such image" in info.value.message


@pytest.mark.podman
@pytest.mark.root
def test_plain_http_registry_needs_tls_verify_false(
    local_registry_url: str, tmp_path: Path
) -> None:
    # TLS is verified unless the blueprint turns it off for that entry.
    source = f"{local_registry_url}/any/app:1"
    with pytest.raises(ComposeError) as info:
        options(blueprint(tmp_path, {"source": source}))
    assert info.value.user_error
    assert "TLS failed" in info.value.message


@pytest.mark.podman
@pytest.mark.root
def test_tampered_blob_fails_the_stage_and_leaves_no_store(
    busybox_image: str, tmp_path: Path
) -> None:
    # A registry (or a man in the middle) serving other bytes than the manifest pins must not
    # get them into the image.
    with local_registry(tmp_path / "registry") as registry:
        reference = push(busybox_image, registry)
        opts = options(blueprint(tmp_path, {"source": reference, "tls-verify": False}))
        manifest = json.loads(
            subprocess.run(
                ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{reference}"],
                capture_output=True, check=True,
            ).stdout
        )  # fmt: skip
        corrupt_blob(tmp_path / "registry", manifest["layers"][0]["digest"])
        with pytest.raises(StageError) as info:
            run_stage(tmp_path, opts)
    message = info.value.message
    assert f"containers[0] ({reference})" in message
    assert "does not match its digest" in message
    assert not info.value.user_error
    assert not (tmp_path / "tree" / STORE).exists()


@pytest.mark.podman
@pytest.mark.root
def test_archive_changed_after_planning_is_refused(images: Images, tmp_path: Path) -> None:
    # What the stage copies must be what the plan (and so the stage id) pinned.
    archive = tmp_path / "app.tar"
    archive.write_bytes(images.docker.read_bytes())
    opts = options(blueprint(tmp_path, {"source": "docker-archive:app.tar", "name": "localhost/a"}))
    archive.write_bytes(images.oci.read_bytes())
    with pytest.raises(StageError) as info:
        run_stage(tmp_path, opts)
    assert info.value.user_error
    assert "changed since the compose was planned" in info.value.message
    assert not (tmp_path / "tree" / STORE).exists()


@pytest.mark.podman
@pytest.mark.root
def test_archive_that_is_not_an_image_fails_naming_the_entry(tmp_path: Path) -> None:
    # A wrong file (a tarball of sources, say) must be named, with skopeo's reason.
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all")
    opts = options(blueprint(tmp_path, {"source": "oci-archive:junk.tar", "name": "localhost/j"}))
    with pytest.raises(StageError) as info:
        run_stage(tmp_path, opts)
    assert "containers[0] (oci-archive:junk.tar): cannot copy the archive" in info.value.message
    assert not (tmp_path / "tree" / STORE).exists()


def test_names_equal_after_normalization_are_refused(tmp_path: Path) -> None:
    # localhost/a and localhost/a:latest are one name in podman's store.
    (tmp_path / "a.tar").write_bytes(b"x")
    with pytest.raises(ComposeError) as info:
        options(
            blueprint(
                tmp_path,
                {"source": "oci-archive:a.tar", "name": "localhost/a"},
                {"source": "oci-archive:a.tar", "name": "localhost/a:latest"},
            )
        )
    assert info.value.user_error
    assert "containers[1]" in info.value.message and "containers[0]" in info.value.message


# --- the plan -------------------------------------------------------------------------------


def test_plan_adds_the_stage_after_the_kernel_and_podman_to_the_packages(tmp_path: Path) -> None:
    # Baked images are useless without podman, runc and the CNI plugins in the image.
    (tmp_path / "a.tar").write_bytes(b"archive bytes")
    specs = plan(
        blueprint(tmp_path, {"source": "oci-archive:a.tar", "name": "localhost/a:1"}), TARGET
    )
    names = [s.name for s in specs]
    assert names[names.index("afield.kernel") + 1] == containers.NAME
    for package in ("podman", "catatonit", "runc", "containernetworking-plugins"):
        assert package in specs[0].options["packages"]
    plain = plan(blueprint(tmp_path), TARGET)
    assert containers.NAME not in [s.name for s in plain]
    assert "podman" not in plain[0].options["packages"]


def test_editing_an_archive_changes_the_stage_id_but_not_the_kernels(tmp_path: Path) -> None:
    # The image content is an input: a rebuilt archive must recompose from the kernel on.
    archive = tmp_path / "a.tar"
    archive.write_bytes(b"one")
    entry = {"source": "oci-archive:a.tar", "name": "localhost/a:1"}
    old = stage_ids(plan(blueprint(tmp_path, entry), TARGET))
    archive.write_bytes(b"two")
    new = stage_ids(plan(blueprint(tmp_path, entry), TARGET))
    assert old[:2] == new[:2]
    assert all(a != b for a, b in zip(old[2:], new[2:], strict=True))


# --- a whole image --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.network
@pytest.mark.podman
def test_composed_image_carries_runnable_baked_images_and_manifests(
    images: Images, tmp_path: Path
) -> None:
    # End to end through mmdebstrap and OSTree: the commit holds podman, the store, its
    # storage.conf and the manifests, and the store runs as the device's podman would use it.
    text = EXAMPLE.read_text()
    (tmp_path / "images").mkdir()
    os.link(images.oci, tmp_path / "images" / "app.tar")
    (tmp_path / "k8s" / "web").mkdir(parents=True)
    (tmp_path / "k8s" / "web" / "pod.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n"
        "  - name: main\n    image: localhost/app:1\n"
    )
    text = text.replace(
        "[customizations]\n",
        '[[containers]]\nsource = "oci-archive:images/app.tar"\nname = "localhost/app:1"\n\n'
        "[customizations]\n",
        1,
    )
    text += '\n[[customizations.afield.manifests]]\nsource = "k8s/web"\n'
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    cache = fresh_cache(tmp_path / "cache")
    try:
        result = compose(bp.load(path), tmp_path / "repo", cache_dir=cache)
    finally:
        keep_debs(cache)
    assert containers.NAME in result.ran
    info = image_info(open_repository(tmp_path / "repo"), result.commit)
    for package in containers.PACKAGES:
        assert package in info.packages
    checkout = tmp_path / "checkout"
    subprocess.run(
        ["ostree", f"--repo={tmp_path / 'repo' / 'ostree'}", "checkout", result.commit,
         str(checkout)],
        check=True,
    )  # fmt: skip
    assert (
        (checkout / "usr/lib/afield/manifests.d/web/pod.yaml")
        .read_text()
        .endswith("image: localhost/app:1\n")
    )
    # OSTree moved /etc to /usr/etc; run_baked reads the storage.conf from etc/ of its root.
    (checkout / "etc").symlink_to("usr/etc")
    output = run_baked(checkout, tmp_path / "podman", "localhost/app:1", "cat", "/etc/message")
    assert output == MESSAGE.decode()
