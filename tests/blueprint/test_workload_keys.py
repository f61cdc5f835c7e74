"""Blueprint keys for baked workloads: ``[[containers]]`` and
``[[customizations.afield.manifests]]``; every rule rejects its bad input with a located message."""

from __future__ import annotations

from pathlib import Path

import pytest

from afield.blueprint import Container, ManifestDirectory, load, parse
from afield.errors import BlueprintError, Problem

HEAD = 'name = "img"\nversion = "1.0.0"\n'
DIGEST = "sha256:" + "ab" * 32


def problems(toml: str) -> list[Problem]:
    """Parse ``HEAD + toml`` expecting failure; return the problems."""
    with pytest.raises(BlueprintError) as info:
        parse(HEAD + toml)
    return info.value.problems


def only(toml: str) -> Problem:
    """Parse ``HEAD + toml`` expecting exactly one problem; return it."""
    found = problems(toml)
    assert len(found) == 1, found
    return found[0]


def container(**keys: str | bool) -> str:
    """One ``[[containers]]`` table with ``keys`` (``tls_verify`` written ``tls-verify``)."""
    lines = ["[[containers]]"]
    for key, value in keys.items():
        rendered = ("true" if value else "false") if isinstance(value, bool) else f'"{value}"'
        lines.append(f"{key.replace('_', '-')} = {rendered}")
    return "\n".join(lines) + "\n"


def manifests(**keys: str) -> str:
    """One ``[[customizations.afield.manifests]]`` table with ``keys``."""
    body = "".join(f'{key} = "{value}"\n' for key, value in keys.items())
    return f"[[customizations.afield.manifests]]\n{body}"


# --- [[containers]] -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "registry.example/ns/app:1",
        "registry.example:5000/app",
        "localhost/app:latest",
        "127.0.0.1:5000/a/b/c:v1.2_3",
        f"quay.io/ns/app@{DIGEST}",
        f"quay.io/ns/app:1@{DIGEST}",
        "[::1]:5000/app:1",
    ],
)
def test_registry_reference_is_accepted_and_names_the_image(source: str) -> None:
    # The reference is what podman pulls by, so it is also the image's default local name.
    [image] = parse(HEAD + container(source=source)).containers
    assert image.transport == "docker"
    assert image.local_name == source
    assert image.archive is None
    assert image.tls_verify is True


@pytest.mark.parametrize("transport", ["oci-archive", "docker-archive"])
def test_archive_source_with_a_name_is_accepted(transport: str) -> None:
    # Images built in CI arrive as archives next to the blueprint.
    [image] = parse(
        HEAD + container(source=f"{transport}:images/app.tar", name="localhost/app:1")
    ).containers
    assert (image.transport, image.archive, image.local_name) == (
        transport,
        "images/app.tar",
        "localhost/app:1",
    )


def test_tls_verify_is_read_from_the_osbuild_key() -> None:
    # osbuild spells it tls-verify; a plain-HTTP lab registry needs it off.
    [image] = parse(HEAD + container(source="registry.lab:5000/app:1", tls_verify=False)).containers
    assert image.tls_verify is False


def test_source_is_required() -> None:
    # Without a source there is nothing to bake.
    problem = only(container(name="localhost/app:1"))
    assert (problem.location, problem.message) == (
        "containers[0].source",
        "required key is missing",
    )


@pytest.mark.parametrize("source", ["app:1", "ns/app:1", "library/alpine"])
def test_short_name_source_is_rejected(source: str) -> None:
    # A short name resolves through the builder's search list: not reproducible, maybe hostile.
    problem = only(container(source=source))
    assert problem.location == "containers[0].source"
    assert "fully qualified" in problem.message


@pytest.mark.parametrize(
    "source",
    [
        "registry.example/NS/app:1",
        "registry.example/app:",
        "registry.example/app@sha256:abc",
        "registry.example/app:1\n",
        "",
    ],
)
def test_malformed_reference_is_rejected(source: str) -> None:
    # skopeo would reject it later, after minutes of mmdebstrap; say so at once.
    problem = only(container(source=source.replace("\n", "\\n")))
    assert problem.location == "containers[0].source"
    assert "registry.example/ns/app:1" in problem.message or "control" in problem.message


@pytest.mark.parametrize(
    "source", ["docker://registry.example/app:1", "dir:/tmp/x", "containers-storage:app"]
)
def test_other_transport_is_rejected(source: str) -> None:
    # Only registries and the two archive formats are supported.
    problem = only(container(source=source))
    assert problem.location == "containers[0].source"
    assert "unsupported transport" in problem.message


@pytest.mark.parametrize("source", ["oci-archive:", "docker-archive:a.tar:app:1"])
def test_archive_without_a_plain_path_is_rejected(source: str) -> None:
    # An empty path, or choosing an image inside an archive, is not supported.
    problem = only(container(source=source, name="localhost/a:1"))
    assert problem.location == "containers[0].source"


def test_archive_without_a_name_is_rejected() -> None:
    # An archive has no reference afield could name the image by.
    problem = only(container(source="oci-archive:app.tar"))
    assert problem.location == "containers[0].name"
    assert "required for an archive source" in problem.message


@pytest.mark.parametrize("name", ["app:1", "Localhost/app", "oci-archive:x", "localhost/app:"])
def test_bad_local_name_is_rejected(name: str) -> None:
    # A short name would be stored as docker.io/library/..., not what the manifests say.
    problem = only(container(source="registry.example/app:1", name=name))
    assert problem.location == "containers[0].name"


def test_non_boolean_tls_verify_is_rejected() -> None:
    # "false" as a string must not silently mean true.
    problem = only('[[containers]]\nsource = "r.example/a:1"\ntls-verify = "false"\n')
    assert problem.location == "containers[0].tls-verify"
    assert "boolean" in problem.message


def test_unknown_container_key_lists_the_osbuild_keys() -> None:
    # tls_verify (underscore) is a misspelling of osbuild's tls-verify, not a synonym.
    problem = only('[[containers]]\nsource = "r.example/a:1"\ntls_verify = false\n')
    assert problem.location == "containers[0].tls_verify"
    assert problem.message == "unknown key; accepted keys: name, source, tls-verify"


def test_duplicate_local_names_are_rejected() -> None:
    # Two images under one name: the second would silently take the name from the first.
    found = problems(
        container(source="r.example/a:1")
        + container(source="r.example/a:1")
        + container(source="oci-archive:b.tar", name="r.example/a:1")
    )
    assert [p.location for p in found] == ["containers[1].source", "containers[2].name"]
    assert all("already used by containers[0].source" in p.message for p in found)


def test_every_container_problem_is_reported_at_once() -> None:
    # A user fixes the blueprint in one pass.
    found = problems(container(source="app:1") + container(source="oci-archive:x.tar"))
    assert [p.location for p in found] == ["containers[0].source", "containers[1].name"]


# --- [[customizations.afield.manifests]] ----------------------------------------------------


def test_manifests_name_defaults_to_the_directory_name() -> None:
    # manifests/web/ becomes /usr/lib/afield/manifests.d/web.
    blueprint = parse(HEAD + manifests(source="manifests/web/") + manifests(source="/srv/db"))
    assert [m.local_name for m in blueprint.customizations.afield.manifests] == ["web", "db"]


def test_manifests_name_can_be_given() -> None:
    # A directory named for the repository layout may be baked under another name.
    [entry] = parse(
        HEAD + manifests(source="k8s/Web_App", name="web")
    ).customizations.afield.manifests
    assert (entry.source, entry.local_name) == ("k8s/Web_App", "web")


@pytest.mark.parametrize("name", ["Web", "-web", "web-", "a_b", "a" * 64, ""])
def test_manifests_name_must_be_a_dns_label(name: str) -> None:
    # The name becomes a directory and a workload label on the device.
    problem = only(manifests(source="k8s/web", name=name))
    assert problem.location == "customizations.afield.manifests[0].name"
    assert "DNS label" in problem.message


def test_directory_name_that_is_no_dns_label_needs_a_name() -> None:
    # Web_App cannot be a workload name; the user must choose one.
    problem = only(manifests(source="k8s/Web_App"))
    assert problem.location == "customizations.afield.manifests[0].name"
    assert "'Web_App'" in problem.message and "set name" in problem.message


def test_manifests_source_is_required() -> None:
    # Without a directory there is nothing to bake.
    problem = only(manifests(name="web"))
    assert problem.location == "customizations.afield.manifests[0].source"


def test_duplicate_manifests_names_are_rejected() -> None:
    # Two directories under one name: one would replace the other on the device.
    found = problems(
        manifests(source="a/web") + manifests(source="b/web") + manifests(source="c", name="web")
    )
    assert [p.location for p in found] == [
        "customizations.afield.manifests[1].name",
        "customizations.afield.manifests[2].name",
    ]
    assert "already used by customizations.afield.manifests[0].name" in found[0].message


def test_unknown_manifests_key_lists_accepted_keys() -> None:
    # A misspelt key must not be ignored.
    problem = only(manifests(source="k8s/web", path="x"))
    assert problem.location == "customizations.afield.manifests[0].path"
    assert problem.message == "unknown key; accepted keys: name, source"


# --- relative paths -------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_blueprint_file(tmp_path: Path) -> None:
    # The compose may run from any directory; the blueprint's own files must still be found.
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "bp.toml"
    path.write_text(
        HEAD
        + container(source="oci-archive:../images/app.tar", name="localhost/app:1")
        + manifests(source="k8s/web")
    )
    blueprint = load(path)
    assert blueprint.directory == tmp_path / "sub"
    image = blueprint.containers[0]
    assert isinstance(image, Container) and image.archive is not None
    assert blueprint.resolve_path(image.archive) == tmp_path / "sub" / ".." / "images" / "app.tar"
    entry = blueprint.customizations.afield.manifests[0]
    assert isinstance(entry, ManifestDirectory)
    assert blueprint.resolve_path(entry.source) == tmp_path / "sub" / "k8s" / "web"
    assert blueprint.resolve_path("/abs/app.tar") == Path("/abs/app.tar")


def test_blueprint_from_text_resolves_against_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Parsed without a file there is no blueprint directory: paths are as a shell sees them.
    monkeypatch.chdir(tmp_path)
    blueprint = parse(HEAD + manifests(source="k8s/web"))
    assert blueprint.directory is None
    assert blueprint.resolve_path("k8s/web") == tmp_path / "k8s" / "web"


def test_relative_source_path_makes_a_relative_blueprint_path_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `afield compose bp.toml` passes a relative path; the directory must not depend on a later
    # change of the current directory.
    (tmp_path / "bp.toml").write_text(HEAD)
    monkeypatch.chdir(tmp_path)
    blueprint = load(Path("bp.toml"))
    assert blueprint.directory == tmp_path
    monkeypatch.chdir("/")
    assert blueprint.resolve_path("a.tar") == tmp_path / "a.tar"
