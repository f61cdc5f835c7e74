"""Stage afield.manifests on a bare tree, and its planning: manifests are checked before any stage
runs, pinned by content, and copied as they are, with fixed modes; bad directories fail clearly."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from afield import blueprint as bp
from afield.compose import compose
from afield.compose.pipeline import StageContext, load_stage, stage_ids
from afield.compose.plan import Target, plan
from afield.compose.stages import manifests
from afield.errors import ManifestError, StageError
from afield.workloads.manifests import load_directory

EPOCH = 1767225600
TARGET = Target(suite="bookworm", debian_arch="amd64", mirrors=("deb http://deb.invalid/ x main",))
IMAGE = "localhost/app:1"


def pod(name: str = "web", image: str = IMAGE) -> str:
    return (
        "apiVersion: v1\nkind: Pod\n"
        f"metadata:\n  name: {name}\n"
        f"spec:\n  containers:\n  - name: main\n    image: {image}\n"
        '    command: ["sleep", "infinity"]\n'
    )


CONFIG = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  level: debug\n"


def write(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return directory


def blueprint(
    directory: Path,
    entries: list[dict[str, str]],
    images: tuple[str, ...] = (IMAGE,),
) -> bp.Blueprint:
    """A blueprint in ``directory`` baking ``images`` (as archives) and the manifest ``entries``."""
    text = (
        f'name = "img"\nversion = "1.0.0"\n[customizations.afield]\nsource_date_epoch = {EPOCH}\n'
    )
    for entry in entries:
        text += "[[customizations.afield.manifests]]\n" + "".join(
            f"{key} = {json.dumps(value)}\n" for key, value in entry.items()
        )
    for index, image in enumerate(images):
        (directory / f"image{index}.tar").write_bytes(b"an archive")
        text += f'[[containers]]\nsource = "oci-archive:image{index}.tar"\nname = "{image}"\n'
    path = directory / "blueprint.toml"
    path.write_text(text)
    return bp.load(path)


def run_stage(tmp_path: Path, options: dict[str, Any]) -> Path:
    tree = tmp_path / "tree"
    (tree / "usr" / "lib").mkdir(parents=True)
    ctx = StageContext(
        tree=tree,
        workdir=tmp_path / "work",
        cache_dir=tmp_path / "cache",
        facts={},
        log=lambda _: None,
    )
    facts = load_stage(manifests.NAME).run(ctx, options)
    assert facts == {"manifests": [entry["name"] for entry in options["manifests"]]}
    return tree


def plan_error(directory: Path, entries: list[dict[str, str]], **kwargs: Any) -> str:
    with pytest.raises(ManifestError) as info:
        manifests.plan_options(blueprint(directory, entries, **kwargs))
    assert info.value.user_error
    return info.value.message


# --- it works -------------------------------------------------------------------------------


def test_directory_is_copied_as_it_is_with_fixed_modes(tmp_path: Path) -> None:
    # The device plays exactly what was validated; modes do not depend on the builder's umask.
    source = write(
        tmp_path / "k8s" / "web",
        {"pod.yaml": pod(), "config.yml": CONFIG, "delete/old.yaml": pod("old")},
    )
    os.chmod(source / "pod.yaml", 0o600)
    options = manifests.plan_options(blueprint(tmp_path, [{"source": "k8s/web"}]))
    [entry] = options["manifests"]
    assert (entry["name"], entry["source"]) == ("web", str(source))
    assert entry["directories"] == ["delete"]
    assert [f["path"] for f in entry["files"]] == ["config.yml", "delete/old.yaml", "pod.yaml"]
    tree = run_stage(tmp_path, options)
    baked = tree / "usr/lib/afield/manifests.d/web"
    for name in ("pod.yaml", "config.yml", "delete/old.yaml"):
        assert (baked / name).read_bytes() == (source / name).read_bytes()
        assert stat.S_IMODE((baked / name).stat().st_mode) == 0o644
    for directory in (baked, baked / "delete", baked.parent, baked.parent.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o755
    assert [r.name for r in load_directory(baked)] == [r.name for r in load_directory(source)]


def test_kustomization_with_a_base_directory_is_copied(tmp_path: Path) -> None:
    # A kustomization may pull resources from a subdirectory: it must be there on the device.
    write(
        tmp_path / "k8s" / "shop",
        {
            "kustomization.yaml": "resources:\n- base\n- config.yaml\nnamespace: shop\n",
            "config.yaml": CONFIG,
            "base/kustomization.yaml": "resources:\n- pod.yaml\n",
            "base/pod.yaml": pod("shop"),
        },
    )
    options = manifests.plan_options(blueprint(tmp_path, [{"source": "k8s/shop", "name": "s"}]))
    tree = run_stage(tmp_path, options)
    baked = tree / "usr/lib/afield/manifests.d/s"
    assert sorted(r.name for r in load_directory(baked)) == ["settings", "shop"]


def test_link_to_a_file_inside_is_copied_as_that_file(tmp_path: Path) -> None:
    # A shared file linked into the directory is baked as a plain file.
    source = write(tmp_path / "k8s" / "web", {"shared/pod.yaml": pod()})
    (source / "pod.yaml").symlink_to("shared/pod.yaml")
    tree = run_stage(tmp_path, manifests.plan_options(blueprint(tmp_path, [{"source": "k8s/web"}])))
    copied = tree / "usr/lib/afield/manifests.d/web/pod.yaml"
    assert not copied.is_symlink()
    assert copied.read_text() == pod()


@pytest.mark.parametrize(
    ("baked", "used"),
    [
        ("localhost/app", "localhost/app:latest"),
        ("localhost/app:latest", "localhost/app"),
        (f"registry.example/app@sha256:{'a' * 64}", f"registry.example/app@sha256:{'a' * 64}"),
    ],
)
def test_images_are_compared_as_podman_names_them(tmp_path: Path, baked: str, used: str) -> None:
    # localhost/app and localhost/app:latest are one image to podman.
    write(tmp_path / "web", {"pod.yaml": pod(image=used)})
    manifests.plan_options(blueprint(tmp_path, [{"source": "web"}], images=(baked,)))


def test_editing_a_manifest_changes_the_stage_id(tmp_path: Path) -> None:
    # An edited manifest must be baked: a stale cached commit must not be reused.
    source = write(tmp_path / "web", {"pod.yaml": pod()})
    old = stage_ids(plan(blueprint(tmp_path, [{"source": "web"}]), TARGET))
    (source / "pod.yaml").write_text(pod() + "# edited\n")
    new = stage_ids(plan(blueprint(tmp_path, [{"source": "web"}]), TARGET))
    names = [s.name for s in plan(blueprint(tmp_path, [{"source": "web"}]), TARGET)]
    at = names.index(manifests.NAME)
    assert old[:at] == new[:at]
    assert all(a != b for a, b in zip(old[at:], new[at:], strict=True))


def test_plan_puts_manifests_after_the_agent_and_adds_podman(tmp_path: Path) -> None:
    # The agent stage creates /usr/lib/afield; the device needs podman to play the manifests.
    write(tmp_path / "web", {"pod.yaml": pod()})
    specs = plan(blueprint(tmp_path, [{"source": "web"}]), TARGET)
    names = [s.name for s in specs]
    assert names.index("afield.device.agent") + 1 == names.index(manifests.NAME)
    assert names[names.index(manifests.NAME) + 1] == "afield.ostree.prepare"
    for package in ("podman", "catatonit", "runc", "containernetworking-plugins"):
        assert package in specs[0].options["packages"]


# --- bad directories ------------------------------------------------------------------------


@pytest.mark.root
def test_unsupported_kind_fails_the_compose_before_any_stage_runs(tmp_path: Path) -> None:
    # A Service (podman 4.3 cannot play it) must fail at once, not after minutes of mmdebstrap.
    write(tmp_path / "web", {"pod.yaml": pod(), "svc.yaml": "apiVersion: v1\nkind: Service\n"})
    started = time.monotonic()
    with pytest.raises(ManifestError) as info:
        compose(
            blueprint(tmp_path, [{"source": "web"}]), tmp_path / "repo", cache_dir=tmp_path / "c"
        )
    assert time.monotonic() - started < 10
    message = info.value.message
    assert message.startswith("customizations.afield.manifests[0] (web): ")
    assert f"{tmp_path / 'web' / 'svc.yaml'}, document 1: kind 'Service'" in message
    assert not (tmp_path / "c" / "stages").exists()
    assert not (tmp_path / "repo").exists()


def test_image_not_baked_is_refused_naming_source_and_image(tmp_path: Path) -> None:
    # A baked workload whose image needs a registry would not start on a device offline.
    write(tmp_path / "web", {"pod.yaml": pod(image="registry.example/other:2")})
    message = plan_error(tmp_path, [{"source": "web"}])
    assert message.startswith("customizations.afield.manifests[0] (web): ")
    assert "image registry.example/other:2 is not baked" in message
    assert "localhost/app:1" in message


def test_invalid_yaml_fails_naming_the_file(tmp_path: Path) -> None:
    # A syntax error is reported with the file, not as a traceback.
    write(tmp_path / "web", {"pod.yaml": "kind: [unclosed\n"})
    message = plan_error(tmp_path, [{"source": "web"}])
    assert f"{tmp_path / 'web' / 'pod.yaml'}: not valid YAML" in message


def test_bad_kustomization_fails_naming_it(tmp_path: Path) -> None:
    # Kustomize features afield does not implement must not be silently ignored.
    write(tmp_path / "web", {"kustomization.yaml": "resources: [pod.yaml]\npatches: []\n"})
    write(tmp_path / "web", {"pod.yaml": pod()})
    message = plan_error(tmp_path, [{"source": "web"}])
    assert "kustomization.yaml: patches is not supported" in message


def test_bad_delete_directory_fails(tmp_path: Path) -> None:
    # delete/ is played on the device too; it must be checked with the rest.
    write(tmp_path / "web", {"pod.yaml": pod(), "delete/x.yaml": "kind: Nope\n"})
    assert "delete" in plan_error(tmp_path, [{"source": "web"}])


def test_missing_directory_is_a_user_error(tmp_path: Path) -> None:
    # A typo in the source path names the entry and the path looked for.
    message = plan_error(tmp_path, [{"source": "nope"}])
    assert message == (
        f"customizations.afield.manifests[0] (nope): {tmp_path / 'nope'} does not exist"
    )


def test_link_leaving_the_directory_is_refused(tmp_path: Path) -> None:
    # A link could bake any file of the builder (an SSH key) into a public image.
    write(tmp_path / "web", {"pod.yaml": pod()})
    (tmp_path / "secret.yaml").write_text(CONFIG)
    (tmp_path / "web" / "leak.yaml").symlink_to("../secret.yaml")
    message = plan_error(tmp_path, [{"source": "web"}])
    assert "leak.yaml is a symbolic link to ../secret.yaml, outside the directory" in message


def test_link_to_a_directory_is_refused(tmp_path: Path) -> None:
    # Directory links could loop or alias; only file links are followed.
    write(tmp_path / "web", {"pod.yaml": pod(), "real/a.yaml": CONFIG})
    (tmp_path / "web" / "alias").symlink_to("real")
    assert "alias is a symbolic link" in plan_error(tmp_path, [{"source": "web"}])


def test_other_files_are_refused(tmp_path: Path) -> None:
    # What is in the directory is what the device gets: no stray files.
    write(tmp_path / "web", {"pod.yaml": pod(), "README.md": "notes"})
    assert "README.md is not a manifest" in plan_error(tmp_path, [{"source": "web"}])


def test_fifo_is_refused(tmp_path: Path) -> None:
    # A FIFO would hang the copy; a device node has no place in manifests.
    write(tmp_path / "web", {"pod.yaml": pod()})
    os.mkfifo(tmp_path / "web" / "pipe.yaml")
    assert "pipe.yaml is not a regular file or directory" in plan_error(
        tmp_path, [{"source": "web"}]
    )


def test_file_changed_after_planning_is_refused(tmp_path: Path) -> None:
    # What the stage bakes must be what the plan validated and the stage id pins.
    source = write(tmp_path / "web", {"pod.yaml": pod()})
    options = manifests.plan_options(blueprint(tmp_path, [{"source": "web"}]))
    (source / "pod.yaml").write_text(pod(image="registry.example/evil:1"))
    with pytest.raises(StageError) as info:
        run_stage(tmp_path, options)
    assert info.value.user_error
    assert "pod.yaml changed since the compose was planned" in info.value.message


def test_path_escaping_the_target_is_refused_by_the_stage(tmp_path: Path) -> None:
    # Options come from the plan, but the stage still never writes outside its directory.
    options = {
        "manifests": [
            {
                "index": 0,
                "name": "web",
                "source": str(tmp_path),
                "directories": [],
                "files": [{"path": "../../../../etc/passwd", "sha256": "0" * 64}],
            }
        ]
    }
    with pytest.raises(StageError, match="is not a path inside the directory"):
        run_stage(tmp_path, options)
