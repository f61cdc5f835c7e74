"""Kubernetes manifests as podman plays them: parsed with limits, checked, laid out.

This module is pure (no podman, no I/O but reading the files it is given) and is the one part of
:mod:`afield.workloads` the builder (compose checks baked manifests) and the fleet manager
(it checks an application when it is set) import; the import contracts keep it that way.

Manifests are untrusted bytes (a blueprint's directory, a fleet manager's message), so they are
read with :func:`yaml.safe_load` through a loader that refuses aliases (no "billion laughs"),
under size and count limits, and every document is checked (``_schema``) against what
``podman kube play`` (4.3, Debian 12) really does: :data:`SUPPORTED` kinds only, one replica,
images named, probes in the shapes :mod:`afield.workloads.podman` runs. A problem is a
:class:`ManifestError` naming the origin (file), the document (1-based) and the field, found at
compose time or when the fleet manager accepts an application, never on the device.

A source directory holds either a ``kustomization.yaml`` (the subset afield implements:
``resources``, ``namespace``, ``commonLabels``, ``commonAnnotations``, ``images``) or plain
``*.yaml``/``*.yml`` files, read in name order; its ``delete/`` subdirectory, in the same form,
lists resources to remove. On a device (MicroShift's layout with afield's names) sources are
``/usr/lib/afield/manifests``, ``/usr/lib/afield/manifests.d/*`` (baked into the image), then
``/etc/afield/manifests`` and ``/etc/afield/manifests.d/*`` (local); a local source replaces the
baked one of the same name.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from afield.errors import ManifestError
from afield.workloads._schema import (
    DNS_LABEL,
    SUPPORTED,
    Resource,
    check_document,
    mapping,
    no_duplicates,
    strings,
)

__all__ = [
    "BAKED_DIR",
    "LABEL",
    "LOCAL_DIR",
    "MAX_BYTES",
    "MAX_DOCUMENTS",
    "POD_LABEL",
    "SUPPORTED",
    "Resource",
    "Source",
    "deletions",
    "image_references",
    "labelled",
    "load_directory",
    "normalize_image",
    "parse",
    "render",
    "sources",
]

#: The largest manifest file or message read, in bytes.
MAX_BYTES = 1 << 20
#: The most documents in one file, and the most resources in one source.
MAX_DOCUMENTS = 256
#: The label afield puts on every pod it plays: the workload (source or application) it came from.
LABEL = "afield.io/workload"
#: The label naming the Pod or Deployment a pod was played from.
POD_LABEL = "afield.io/pod"
BAKED_DIR = "usr/lib/afield"
LOCAL_DIR = "etc/afield"
KUSTOMIZATIONS = ("kustomization.yaml", "kustomization.yml", "Kustomization")
KUSTOMIZE_KEYS = frozenset(
    {"apiVersion", "kind", "resources", "namespace", "commonLabels", "commonAnnotations", "images"}
)


@dataclass(frozen=True)
class Source:
    """A manifest directory on a device: its name, path, and whether it was baked in."""

    name: str
    path: Path
    baked: bool


class _Loader(yaml.SafeLoader):
    """safe_load that refuses aliases: a manifest has no use for them, and they can multiply."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.MarkedYAMLError(
                "while reading", None, "YAML aliases are not accepted", event.start_mark
            )
        return super().compose_node(parent, index)


# -- parsing -----------------------------------------------------------------------------------


def parse(text: str | bytes, origin: str) -> list[Resource]:
    """The resources of a YAML stream; raises ManifestError naming ``origin``, document, field."""
    data = text.encode() if isinstance(text, str) else text
    if len(data) > MAX_BYTES:
        raise ManifestError(f"{origin}: {len(data)} bytes; at most {MAX_BYTES} are accepted")
    try:
        decoded = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ManifestError(f"{origin}: not UTF-8 text (byte {error.start})") from None
    documents: list[Any] = []
    try:
        for document in yaml.load_all(decoded, Loader=_Loader):  # safe loader
            if document is None:
                continue
            documents.append(document)
            if len(documents) > MAX_DOCUMENTS:
                raise ManifestError(f"{origin}: more than {MAX_DOCUMENTS} documents")
    except yaml.YAMLError as error:
        raise ManifestError(f"{origin}: not valid YAML: {_yaml_problem(error)}") from None
    except RecursionError:
        raise ManifestError(f"{origin}: nested too deeply") from None
    if not documents:
        raise ManifestError(f"{origin}: no Kubernetes documents")
    resources = [check_document(d, f"{origin}, document {i}") for i, d in enumerate(documents, 1)]
    no_duplicates(resources)
    return resources


def _yaml_problem(error: yaml.YAMLError) -> str:
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"{error.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return str(error).splitlines()[0] if str(error) else type(error).__name__


# -- directories and kustomizations ------------------------------------------------------------


def load_directory(directory: Path) -> list[Resource]:
    """The resources of a source directory (kustomization or plain YAML; not ``delete/``)."""
    if not directory.is_dir():
        raise ManifestError(f"{directory}: not a directory of manifests")
    kustomization = _kustomization_file(directory)
    if kustomization is None:
        files = [
            path
            for path in sorted(directory.iterdir())
            if path.suffix in (".yaml", ".yml") and path.is_file()
        ]
        if not files:
            raise ManifestError(f"{directory}: no kustomization.yaml and no *.yaml files")
        resources = [r for path in files for r in parse(_read(path, directory), str(path))]
    else:
        resources = _kustomize(kustomization, directory, depth=0)
    if len(resources) > MAX_DOCUMENTS:
        raise ManifestError(f"{directory}: more than {MAX_DOCUMENTS} resources")
    no_duplicates(resources)
    return resources


def deletions(directory: Path) -> list[Resource]:
    """The resources a source's ``delete/`` subdirectory names; empty without one."""
    delete = directory / "delete"
    if not delete.is_dir():
        return []
    return load_directory(delete)


def _kustomization_file(directory: Path) -> Path | None:
    for name in KUSTOMIZATIONS:
        if (directory / name).is_file():
            return directory / name
    return None


def _read(path: Path, root: Path) -> bytes:
    try:
        inside = path.resolve().is_relative_to(root.resolve())
        if not inside:
            raise ManifestError(f"{path}: leaves {root}; only files inside it are read")
        with path.open("rb") as stream:
            data = stream.read(MAX_BYTES + 1)
    except OSError as error:
        raise ManifestError(f"{path}: cannot be read: {error.strerror}") from None
    if len(data) > MAX_BYTES:
        raise ManifestError(f"{path}: larger than {MAX_BYTES} bytes")
    return data


def _kustomize(path: Path, root: Path, *, depth: int) -> list[Resource]:
    if depth > 8:
        raise ManifestError(f"{path}: kustomizations nested more than 8 deep")
    documents = parse_yamlmapping(_read(path, root), str(path))
    unknown = sorted(set(documents) - KUSTOMIZE_KEYS)
    if unknown:
        raise ManifestError(
            f"{path}: {unknown[0]} is not supported by afield; "
            f"supported: {', '.join(sorted(KUSTOMIZE_KEYS))}"
        )
    entries = documents.get("resources", [])
    if not strings(entries) or not entries:
        raise ManifestError(f"{path}: resources: a non-empty list of relative paths is expected")
    resources: list[Resource] = []
    for entry in entries:
        relative = PurePosixPath(entry)
        if relative.is_absolute() or ".." in relative.parts or "://" in entry:
            raise ManifestError(
                f"{path}: resources: {entry!r}: a path inside {path.parent} is expected"
            )
        target = path.parent / relative
        nested = _kustomization_file(target) if target.is_dir() else None
        if nested is not None:
            resources.extend(_kustomize(nested, root, depth=depth + 1))
        elif target.is_file():
            resources.extend(parse(_read(target, root), str(target)))
        else:
            raise ManifestError(f"{path}: resources: {entry!r} is not a file or kustomization")
    return _customized(resources, documents, path)


def parse_yamlmapping(data: bytes, origin: str) -> dict[str, Any]:
    """One YAML mapping (a kustomization), under the same limits as manifests."""
    try:
        document = yaml.load(data.decode("utf-8"), Loader=_Loader)  # noqa: S506  # safe loader
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        problem = _yaml_problem(error) if isinstance(error, yaml.YAMLError) else "not UTF-8"
        raise ManifestError(f"{origin}: not valid YAML: {problem}") from None
    except RecursionError:
        raise ManifestError(f"{origin}: nested too deeply") from None
    return mapping(document, origin)


def _customized(
    resources: list[Resource], kustomization: Mapping[str, Any], path: Path
) -> list[Resource]:
    labels = _string_map(kustomization.get("commonLabels"), f"{path}: commonLabels")
    annotations = _string_map(kustomization.get("commonAnnotations"), f"{path}: commonAnnotations")
    namespace = kustomization.get("namespace")
    if namespace is not None and (not isinstance(namespace, str) or not DNS_LABEL.match(namespace)):
        raise ManifestError(f"{path}: namespace {namespace!r}: a DNS label is expected")
    images = _image_overrides(kustomization.get("images"), path)
    out = []
    for resource in resources:
        document = _copy(resource.document)
        metadata = document.setdefault("metadata", {})
        if namespace is not None:
            metadata["namespace"] = namespace
        _merge(metadata, "labels", labels)
        _merge(metadata, "annotations", annotations)
        if resource.kind == "Deployment":
            template = document["spec"]["template"]
            _merge(template.setdefault("metadata", {}), "labels", labels)
            selector = document["spec"].setdefault("selector", {})
            _merge(selector, "matchLabels", labels)
        spec = Resource(resource.kind, resource.name, document, resource.origin).pod_spec()
        for container in _containers(spec):
            container["image"] = _override(container["image"], images)
        out.append(Resource(resource.kind, resource.name, document, resource.origin))
    return out


def _string_map(value: Any, where: str) -> dict[str, str]:
    values = mapping(value, where, required=False)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in values.items()):
        raise ManifestError(f"{where}: string keys and values are expected")
    return values


def _image_overrides(value: Any, path: Path) -> dict[str, dict[str, str]]:
    if value is None:
        return {}
    if not isinstance(value, list):
        raise ManifestError(f"{path}: images: a list is expected")
    overrides: dict[str, dict[str, str]] = {}
    for index, entry in enumerate(value):
        at = f"{path}: images[{index}]"
        entry = _string_map(entry, at)
        unknown = set(entry) - {"name", "newName", "newTag", "digest"}
        if "name" not in entry or unknown:
            raise ManifestError(f"{at}: name with newName, newTag or digest is expected")
        overrides[entry["name"]] = entry
    return overrides


def _override(image: str, overrides: Mapping[str, Mapping[str, str]]) -> str:
    name, tag, digest = _split_image(image)
    rule = overrides.get(name)
    if rule is None:
        return image
    name = rule.get("newName", name)
    if "digest" in rule:
        return f"{name}@{rule['digest']}"
    tag = rule.get("newTag", tag)
    return name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def _split_image(image: str) -> tuple[str, str, str]:
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = ""
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    return name, tag, digest


def _merge(mapping: dict[str, Any], key: str, values: Mapping[str, str]) -> None:
    if values:
        mapping[key] = {**(mapping.get(key) or {}), **values}


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _containers(spec: Mapping[str, Any] | None) -> Iterator[dict[str, Any]]:
    if spec is None:
        return
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


# -- images, rendering, layout -----------------------------------------------------------------


def image_references(resources: Iterable[Resource]) -> list[str]:
    """Every image the resources' containers use, sorted, each once."""
    return sorted(
        {container["image"] for r in resources for container in _containers(r.pod_spec())}
    )


def normalize_image(reference: str) -> str:
    """``reference`` as podman names a local image: a tag (``latest``) unless a digest is given.

    The registry is left as written: afield never resolves short names through a search list.
    """
    name, tag, digest = _split_image(reference)
    if digest:
        return f"{name}@{digest}"
    return f"{name}:{tag or 'latest'}"


def labelled(resources: Iterable[Resource], workload: str) -> list[Resource]:
    """The resources with :data:`LABEL` = ``workload`` and :data:`POD_LABEL` on every pod."""
    out = []
    for resource in resources:
        document = _copy(resource.document)
        labels = {LABEL: workload, POD_LABEL: resource.name}
        if resource.kind == "Pod":
            _merge(document.setdefault("metadata", {}), "labels", labels)
        elif resource.kind == "Deployment":
            template = document["spec"]["template"]
            _merge(template.setdefault("metadata", {}), "labels", labels)
        out.append(Resource(resource.kind, resource.name, document, resource.origin))
    return out


def render(resources: Iterable[Resource]) -> str:
    """One YAML stream for ``podman kube play``: ConfigMaps, Secrets and claims before pods."""
    order = {"ConfigMap": 0, "Secret": 0, "PersistentVolumeClaim": 1, "Deployment": 2, "Pod": 2}
    ordered = sorted(resources, key=lambda r: order[r.kind])
    return yaml.safe_dump_all([dict(r.document) for r in ordered], sort_keys=False)


def sources(root: Path = Path("/")) -> list[Source]:
    """The device's manifest sources in apply order; a local one replaces a baked one by name."""
    found: dict[str, Source] = {}
    for base, baked in ((root / BAKED_DIR, True), (root / LOCAL_DIR, False)):
        candidates = [("manifests", base / "manifests")]
        drop_in = base / "manifests.d"
        if drop_in.is_dir():
            candidates += [(p.name, p) for p in sorted(drop_in.iterdir()) if p.is_dir()]
        for name, path in candidates:
            if path.is_dir():
                found.pop(name, None)
                found[name] = Source(name, path, baked)
    return list(found.values())
