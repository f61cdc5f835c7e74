"""What ``podman kube play`` (4.3) accepts, as checks on parsed YAML documents.

:func:`check_document` turns one document into a :class:`Resource` or raises
:class:`~afield.errors.ManifestError` naming where (``origin``, document) and the field: kinds
and apiVersions of :data:`SUPPORTED`, DNS names, containers with images, one replica, readiness
probes in the shapes :mod:`afield.workloads.podman` runs, string data and base64 secrets. Reading
the YAML and directories is left to :mod:`afield.workloads.manifests`.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from afield.errors import ManifestError

__all__ = [
    "DNS_LABEL",
    "SUPPORTED",
    "Resource",
    "check_document",
    "mapping",
    "no_duplicates",
    "strings",
]

#: Kinds ``podman kube play`` 4.3 plays, with the apiVersion each must carry.
SUPPORTED = {
    "Pod": "v1",
    "Deployment": "apps/v1",
    "ConfigMap": "v1",
    "Secret": "v1",
    "PersistentVolumeClaim": "v1",
}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}$")
_PROBE_KINDS = ("exec", "tcpSocket", "httpGet")
_PROBE_NUMBERS = (
    "initialDelaySeconds",
    "periodSeconds",
    "timeoutSeconds",
    "successThreshold",
    "failureThreshold",
)


@dataclass(frozen=True)
class Resource:
    """One Kubernetes object: its kind, name, the document, and where it came from."""

    kind: str
    name: str
    document: Mapping[str, Any]
    origin: str

    def pod_spec(self) -> Mapping[str, Any] | None:
        """The pod spec of a Pod or a Deployment's template; None for other kinds."""
        if self.kind == "Pod":
            return self.document["spec"]  # type: ignore[no-any-return]
        if self.kind == "Deployment":
            return self.document["spec"]["template"]["spec"]  # type: ignore[no-any-return]
        return None


def check_document(document: Any, where: str) -> Resource:
    if not isinstance(document, dict):
        raise ManifestError(f"{where}: a Kubernetes object (a mapping) is expected")
    kind = document.get("kind")
    if not isinstance(kind, str):
        raise ManifestError(f"{where}: kind: missing; one of {_kinds()} is expected")
    if kind not in SUPPORTED:
        raise ManifestError(
            f"{where}: kind {kind!r} is not played by podman; supported: {_kinds()}"
        )
    version = document.get("apiVersion")
    if version != SUPPORTED[kind]:
        raise ManifestError(
            f"{where}: apiVersion {version!r} for {kind}; {SUPPORTED[kind]!r} is expected"
        )
    metadata = mapping(document.get("metadata"), f"{where}: metadata")
    name = metadata.get("name")
    pattern = DNS_LABEL if kind in ("Pod", "Deployment") else _DNS_SUBDOMAIN
    if not isinstance(name, str) or not pattern.match(name):
        raise ManifestError(
            f"{where}: metadata.name {name!r}: a DNS name (lower-case letters, digits, '-') "
            "is expected"
        )
    _labels(metadata, f"{where} ({kind} {name}): metadata")
    where = f"{where} ({kind} {name})"
    check = _CHECKS.get(kind)
    if check is not None:
        check(document, where)
    return Resource(kind, name, document, where)


def _kinds() -> str:
    return ", ".join(SUPPORTED)


def mapping(value: Any, where: str, *, required: bool = True) -> dict[str, Any]:
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise ManifestError(f"{where}: a mapping is expected")
    return value


def _labels(metadata: Mapping[str, Any], where: str) -> None:
    for field in ("labels", "annotations"):
        values = mapping(metadata.get(field), f"{where}.{field}", required=False)
        for key, value in values.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ManifestError(f"{where}.{field}: {key!r}: string keys and values expected")


def _check_pod(document: Mapping[str, Any], where: str) -> None:
    _check_pod_spec(mapping(document.get("spec"), f"{where}: spec"), f"{where}: spec")


def _check_deployment(document: Mapping[str, Any], where: str) -> None:
    spec = mapping(document.get("spec"), f"{where}: spec")
    replicas = spec.get("replicas", 1)
    if replicas not in (0, 1) or isinstance(replicas, bool):
        raise ManifestError(f"{where}: spec.replicas {replicas!r}: podman plays 0 or 1 replica")
    template = mapping(spec.get("template"), f"{where}: spec.template")
    _labels(
        mapping(template.get("metadata"), f"{where}: spec.template.metadata", required=False),
        f"{where}: spec.template.metadata",
    )
    _check_pod_spec(
        mapping(template.get("spec"), f"{where}: spec.template.spec"),
        f"{where}: spec.template.spec",
    )


def _check_pod_spec(spec: Mapping[str, Any], where: str) -> None:
    for field in ("containers", "initContainers"):
        containers = spec.get(field, [] if field == "initContainers" else None)
        if not isinstance(containers, list) or (field == "containers" and not containers):
            raise ManifestError(f"{where}.{field}: a list of containers is expected")
        names: set[str] = set()
        for index, container in enumerate(containers):
            at = f"{where}.{field}[{index}]"
            container = mapping(container, at)
            name = container.get("name")
            if not isinstance(name, str) or not DNS_LABEL.match(name):
                raise ManifestError(f"{at}.name {name!r}: a DNS label is expected")
            if name in names:
                raise ManifestError(f"{at}.name {name!r}: used twice in one pod")
            names.add(name)
            image = container.get("image")
            if not isinstance(image, str) or not _IMAGE.match(image):
                raise ManifestError(f"{at}.image {image!r}: an image reference is expected")
            for argv in ("command", "args"):
                value = container.get(argv)
                if value is not None and not strings(value):
                    raise ManifestError(f"{at}.{argv}: a list of strings is expected")
            if "readinessProbe" in container:
                _check_probe(container["readinessProbe"], f"{at}.readinessProbe")


def _check_probe(probe: Any, where: str) -> None:
    probe = mapping(probe, where)
    given = [kind for kind in _PROBE_KINDS if kind in probe]
    if len(given) != 1:
        raise ManifestError(f"{where}: exactly one of {', '.join(_PROBE_KINDS)} is expected")
    action = mapping(probe[given[0]], f"{where}.{given[0]}")
    if given[0] == "exec":
        if not strings(action.get("command")) or not action["command"]:
            raise ManifestError(f"{where}.exec.command: a non-empty list of strings is expected")
    else:
        port = action.get("port")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ManifestError(f"{where}.{given[0]}.port {port!r}: a port number is expected")
        path = action.get("path", "/")
        if given[0] == "httpGet" and (not isinstance(path, str) or not path.startswith("/")):
            raise ManifestError(f"{where}.httpGet.path {path!r}: an absolute path is expected")
    for field in _PROBE_NUMBERS:
        value = probe.get(field)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 3600
        ):
            raise ManifestError(f"{where}.{field} {value!r}: 0 to 3600 is expected")


def _check_config(document: Mapping[str, Any], where: str) -> None:
    for field in ("data", "stringData", "binaryData"):
        values = mapping(document.get(field), f"{where}: {field}", required=False)
        for key, value in values.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ManifestError(f"{where}: {field}.{key}: a string value is expected")
            if field == "binaryData" or (field == "data" and document["kind"] == "Secret"):
                try:
                    base64.b64decode(value, validate=True)
                except binascii.Error:
                    raise ManifestError(f"{where}: {field}.{key}: base64 is expected") from None


_CHECKS = {
    "Pod": _check_pod,
    "Deployment": _check_deployment,
    "ConfigMap": _check_config,
    "Secret": _check_config,
}


def strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def no_duplicates(resources: Iterable[Resource]) -> None:
    seen: dict[tuple[str, str], str] = {}
    for resource in resources:
        key = (resource.kind, resource.name)
        if key in seen:
            raise ManifestError(f"{resource.origin}: also defined at {seen[key]}")
        seen[key] = resource.origin
