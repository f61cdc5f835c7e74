"""Kubernetes manifests: parsed with limits, refused with the file, document and field named."""

# The tables of bad manifests read best one case per line.
# ruff: noqa: E501

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from afield.errors import ManifestError
from afield.workloads import manifests
from afield.workloads.manifests import LABEL, POD_LABEL

WEB = """\
apiVersion: v1
kind: ConfigMap
metadata: {name: web-config}
data: {greeting: hello}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, labels: {app: web}}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: httpd
        image: localhost/app:1
        command: [httpd, -f, -p, "8080"]
        readinessProbe:
          httpGet: {path: /, port: 8080}
          periodSeconds: 1
"""

POD = """\
apiVersion: v1
kind: Pod
metadata: {name: worker}
spec:
  containers:
  - {name: main, image: "registry.example:5000/team/worker@sha256:%s"}
""" % ("a" * 64)


def test_a_stream_becomes_resources_with_their_images() -> None:
    resources = manifests.parse(WEB, "web.yaml")
    assert [(r.kind, r.name) for r in resources] == [
        ("ConfigMap", "web-config"),
        ("Deployment", "web"),
    ]
    assert manifests.image_references(resources) == ["localhost/app:1"]
    assert resources[1].origin == "web.yaml, document 2 (Deployment web)"
    spec = resources[1].pod_spec()
    assert spec is not None and spec["containers"][0]["name"] == "httpd"
    assert resources[0].pod_spec() is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n",
            "kind 'Service' is not played by podman; supported: Pod, Deployment",
        ),
        (
            "apiVersion: v1\nkind: Deployment\nmetadata: {name: web}\n",
            "document 1: apiVersion 'v1' for Deployment; 'apps/v1' is expected",
        ),
        (
            "kind: Pod\napiVersion: v1\nmetadata: {name: Web_1}\nspec: {}\n",
            "metadata.name 'Web_1': a DNS name",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n",
            "(Pod p): spec.containers: a list of containers is expected",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c}]}\n",
            "spec.containers[0].image None: an image reference is expected",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: i}, {name: c, image: i}]}\n",
            "containers[1].name 'c': used twice in one pod",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: i, command: sh}]}\n",
            "containers[0].command: a list of strings is expected",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: i, readinessProbe: {grpc: {port: 1}}}]}\n",
            "readinessProbe: exactly one of exec, tcpSocket, httpGet is expected",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: i, readinessProbe: {tcpSocket: {port: http}}}]}\n",
            "readinessProbe.tcpSocket.port 'http': a port number is expected",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: i, readinessProbe: {exec: {command: [x]}, periodSeconds: -1}}]}\n",
            "readinessProbe.periodSeconds -1: 0 to 3600 is expected",
        ),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {replicas: 3, template: {spec: {containers: [{name: c, image: i}]}}}\n",
            "spec.replicas 3: podman plays 0 or 1 replica",
        ),
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {password: 'not base64!'}\n",
            "(Secret s): data.password: base64 is expected",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {port: 8080}\n",
            "data.port: a string value is expected",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {a: 1}}\nspec: {containers: [{name: c, image: i}]}\n",
            "metadata.labels: 'a': string keys and values expected",
        ),
        ("- just\n- a list\n", "document 1: a Kubernetes object (a mapping) is expected"),
        ("base: &b {name: x}\nother: *b\n", "YAML aliases are not accepted (line 2"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: p\n", "not valid YAML"),
        ("", "no Kubernetes documents"),
        ("---\n---\n", "no Kubernetes documents"),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
            "document 2 (ConfigMap c): also defined at x.yaml, document 1",
        ),
    ],
)
def test_bad_manifests_are_refused_naming_document_and_field(text: str, expected: str) -> None:
    with pytest.raises(ManifestError) as caught:
        manifests.parse(text, "x.yaml")
    assert str(caught.value).startswith("x.yaml")
    assert expected in str(caught.value)
    assert caught.value.user_error


def test_limits_on_size_documents_and_encoding() -> None:
    with pytest.raises(ManifestError, match=r"x.yaml: \d+ bytes; at most 1048576"):
        manifests.parse("#" * (manifests.MAX_BYTES + 1), "x.yaml")
    many = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c%d}\n---\n"
    with pytest.raises(ManifestError, match="more than 256 documents"):
        manifests.parse("".join(many % i for i in range(300)), "x.yaml")
    with pytest.raises(ManifestError, match="not UTF-8 text"):
        manifests.parse(b"kind: \xff", "x.yaml")
    with pytest.raises(ManifestError, match=r"nested too deeply|not valid YAML"):
        manifests.parse("[" * 100_000, "x.yaml")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_any_bytes_parse_or_raise_a_manifest_error(data: bytes) -> None:
    try:
        resources = manifests.parse(data, "fuzz.yaml")
    except ManifestError as error:
        assert str(error).startswith("fuzz.yaml")
    else:
        assert all(r.kind in manifests.SUPPORTED for r in resources)


_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=30,
)
_objects = st.fixed_dictionaries(
    {
        "apiVersion": st.sampled_from(["v1", "apps/v1", "x"]),
        "kind": st.sampled_from([*manifests.SUPPORTED, "Service"]),
        "metadata": st.fixed_dictionaries({"name": st.sampled_from(["a", "web", "B", ""])})
        | _values,
    },
    optional={"spec": _values, "data": _values, "template": _values},
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_objects, min_size=1, max_size=3))
def test_any_object_shape_parses_or_raises_a_manifest_error(objects: list[object]) -> None:
    text = yaml.safe_dump_all(objects)
    try:
        resources = manifests.parse(text, "fuzz.yaml")
    except ManifestError:
        return
    # What parses can be rendered, labelled and parsed again to the same resources.
    again = manifests.parse(manifests.render(manifests.labelled(resources, "w")), "again.yaml")
    assert sorted((r.kind, r.name) for r in again) == sorted((r.kind, r.name) for r in resources)


# -- directories -------------------------------------------------------------------------------


def _write(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return directory


def test_a_plain_directory_is_read_in_name_order_and_delete_is_separate(tmp_path: Path) -> None:
    source = _write(
        tmp_path / "web",
        {
            "b.yaml": WEB,
            "a.yml": POD,
            "notes.txt": "ignored",
            "delete/old.yaml": POD.replace("worker", "old"),
        },
    )
    resources = manifests.load_directory(source)
    assert [r.name for r in resources] == ["worker", "web-config", "web"]
    assert [r.name for r in manifests.deletions(source)] == ["old"]
    assert manifests.deletions(tmp_path / "web" / "delete") == []


def test_a_kustomization_adds_labels_overrides_images_and_nests(tmp_path: Path) -> None:
    source = _write(
        tmp_path / "app",
        {
            "kustomization.yaml": (
                "resources: [web.yaml, worker]\n"
                "namespace: edge\n"
                "commonLabels: {tier: front}\n"
                "commonAnnotations: {owner: ops}\n"
                "images:\n- {name: localhost/app, newTag: '2'}\n"
            ),
            "web.yaml": WEB,
            "unlisted.yaml": "this file is not a resource: never read",
            "worker/kustomization.yaml": "resources: [pod.yaml]\nimages:\n- {name: registry.example:5000/team/worker, newName: localhost/worker, digest: 'sha256:%s'}\n"
            % ("b" * 64),
            "worker/pod.yaml": POD,
        },
    )
    resources = {r.name: r for r in manifests.load_directory(source)}
    web = resources["web"].document
    assert web["metadata"]["labels"] == {"app": "web", "tier": "front"}
    assert web["metadata"]["namespace"] == "edge"
    assert web["spec"]["template"]["metadata"]["labels"]["tier"] == "front"
    assert web["spec"]["selector"]["matchLabels"] == {"app": "web", "tier": "front"}
    assert resources["web-config"].document["metadata"]["annotations"] == {"owner": "ops"}
    assert manifests.image_references(resources.values()) == [
        "localhost/app:2",
        "localhost/worker@sha256:" + "b" * 64,
    ]


@pytest.mark.parametrize(
    ("kustomization", "expected"),
    [
        (
            "resources: [web.yaml]\npatches: []\n",
            "patches is not supported by afield; supported: apiVersion, commonAnnotations",
        ),
        ("resources: [../web.yaml]\n", "resources: '../web.yaml': a path inside"),
        ("resources: [/etc/passwd]\n", "a path inside"),
        ("resources: [https://example.org/x.yaml]\n", "a path inside"),
        ("resources: [missing.yaml]\n", "'missing.yaml' is not a file or kustomization"),
        ("resources: []\n", "resources: a non-empty list of relative paths is expected"),
        (
            "resources: [web.yaml]\nimages: [{newTag: '2'}]\n",
            "images[0]: name with newName, newTag or digest is expected",
        ),
        (
            "resources: [web.yaml]\nnamespace: Bad_NS\n",
            "namespace 'Bad_NS': a DNS label is expected",
        ),
        ("[a list]\n", "a mapping is expected"),
    ],
)
def test_a_bad_kustomization_is_refused_naming_the_file(
    tmp_path: Path, kustomization: str, expected: str
) -> None:
    source = _write(tmp_path / "app", {"kustomization.yaml": kustomization, "web.yaml": WEB})
    with pytest.raises(ManifestError) as caught:
        manifests.load_directory(source)
    assert str(source / "kustomization.yaml") in str(caught.value)
    assert expected in str(caught.value)


def test_a_symlink_out_of_the_source_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "secret.yaml").write_text(POD)
    source = _write(tmp_path / "app", {"kustomization.yaml": "resources: [link.yaml]\n"})
    (source / "link.yaml").symlink_to(tmp_path / "secret.yaml")
    with pytest.raises(ManifestError, match=r"link.yaml: leaves .*; only files inside it are read"):
        manifests.load_directory(source)


def test_an_empty_or_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not a directory of manifests"):
        manifests.load_directory(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match=r"no kustomization\.yaml and no \*\.yaml files"):
        manifests.load_directory(tmp_path / "empty")


def test_sources_follow_the_layout_and_local_replaces_baked(tmp_path: Path) -> None:
    for directory in (
        "usr/lib/afield/manifests",
        "usr/lib/afield/manifests.d/20-web",
        "usr/lib/afield/manifests.d/10-db",
        "etc/afield/manifests.d/20-web",
        "etc/afield/manifests.d/30-local",
    ):
        (tmp_path / directory).mkdir(parents=True)
    (tmp_path / "usr/lib/afield/manifests.d/README").write_text("not a source")
    found = [
        (s.name, s.path.relative_to(tmp_path).as_posix(), s.baked)
        for s in manifests.sources(tmp_path)
    ]
    assert found == [
        ("manifests", "usr/lib/afield/manifests", True),
        ("10-db", "usr/lib/afield/manifests.d/10-db", True),
        ("20-web", "etc/afield/manifests.d/20-web", False),
        ("30-local", "etc/afield/manifests.d/30-local", False),
    ]
    assert manifests.sources(tmp_path / "nowhere") == []


def test_labelled_marks_every_pod_and_render_puts_config_first() -> None:
    resources = manifests.labelled(manifests.parse(POD + "---\n" + WEB, "x.yaml"), "baked.web")
    rendered = list(yaml.safe_load_all(manifests.render(resources)))
    assert [d["kind"] for d in rendered] == ["ConfigMap", "Pod", "Deployment"]
    assert rendered[1]["metadata"]["labels"] == {LABEL: "baked.web", POD_LABEL: "worker"}
    assert rendered[2]["spec"]["template"]["metadata"]["labels"] == {
        "app": "web",
        LABEL: "baked.web",
        POD_LABEL: "web",
    }
    # The resources it was given are not changed.
    original = manifests.parse(POD, "p.yaml")
    manifests.labelled(original, "w")
    assert "labels" not in original[0].document["metadata"]


@pytest.mark.parametrize(
    ("reference", "normal"),
    [
        ("localhost/app", "localhost/app:latest"),
        ("localhost/app:1", "localhost/app:1"),
        ("registry.example:5000/app", "registry.example:5000/app:latest"),
        ("registry.example:5000/app:2", "registry.example:5000/app:2"),
        ("r.example/app:2@sha256:" + "c" * 64, "r.example/app@sha256:" + "c" * 64),
    ],
)
def test_normalize_image_names_as_podman_stores_them(reference: str, normal: str) -> None:
    assert manifests.normalize_image(reference) == normal
