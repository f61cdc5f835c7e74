"""Stage afield.containers: bake container images into a read-only image store in the tree.

Each ``[[containers]]`` entry is copied with skopeo into :data:`STORE`, a containers-storage store
with the ``vfs`` driver: OSTree (Debian's 2022.7) cannot commit the character-device whiteouts of
the overlay driver, and it deduplicates the files vfs repeats in every layer anyway. The image's
``/etc/containers/storage.conf`` makes the store podman's additional image store, so baked images
run with no registry reachable; images pulled later go to ``/var/lib/containers/storage`` with the
same driver (containers-storage uses one driver for all its stores).

:func:`plan_options` pins every input when the compose is planned: the sha256 of an archive, the
manifest digest a registry tag points to (``skopeo inspect --raw``, hashed). The stage copies
exactly that: the archive is hashed while it is staged, a registry image is copied by digest, and
skopeo checks every blob against its digest. A tag that moves therefore changes the stage id.
The store is then made reproducible: layer creation times (and image creation times the image's
config does not give) become SOURCE_DATE_EPOCH and the lock files are emptied, so the same inputs
give the same commit.

What podman does with the images on the device is :mod:`afield.workloads`' business.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from afield.blueprint import Blueprint, Container
from afield.compose._tree import make_parents
from afield.compose.pipeline import Facts, StageContext
from afield.errors import ComposeError, StageError
from afield.workloads.manifests import normalize_image

__all__ = [
    "GRAPHROOT",
    "PACKAGES",
    "RUNROOT",
    "STORAGE_CONF",
    "STORE",
    "plan_options",
    "storage_conf",
    "store_name",
]

NAME = "afield.containers"
# After this stage the tree is kept: editing files or users reuses the copied images.
CHECKPOINT = True

# Debian packages an image with baked containers or manifests needs to run them.
PACKAGES = ("podman", "catatonit", "runc", "containernetworking-plugins")
# The baked, read-only image store, and podman's own (Debian's defaults).
STORE = "/usr/lib/containers/storage"
GRAPHROOT = "/var/lib/containers/storage"
RUNROOT = "/run/containers/storage"
STORAGE_CONF = "/etc/containers/storage.conf"
# How long resolving a tag to a digest may take when planning.
INSPECT_TIMEOUT = 120

_CHUNK = 1 << 20
_FATAL = re.compile(r'level=fatal msg="((?:[^"\\]|\\.)*)"')
# What skopeo's message says -> what it means for the user, and whether their input is wrong.
_EXPLANATIONS: tuple[tuple[tuple[str, ...], str, bool], ...] = (
    (
        ("Digest did not match", "does not match expected", "invalid checksum", "corrupt input"),
        "the content does not match its digest (corrupt or tampered with)",
        False,
    ),
    (
        ("manifest unknown", "name unknown", "not found", "NAME_UNKNOWN", "MANIFEST_UNKNOWN"),
        "the registry has no such image",
        True,
    ),
    (
        ("unauthorized", "denied", "authentication required"),
        "the registry refused access (log in on the builder with `skopeo login`)",
        True,
    ),
    (
        ("server gave HTTP response to HTTPS client", "x509:", "tls:"),
        "TLS failed (tls-verify = false is for a registry without TLS on a network you trust)",
        True,
    ),
    (
        ("connection refused", "no such host", "i/o timeout", "unreachable", "dial tcp"),
        "cannot reach the registry",
        False,
    ),
)


def storage_conf(*, graphroot: str, runroot: str, additional: Sequence[str] = ()) -> str:
    """A containers-storage ``storage.conf`` with the vfs driver."""
    lines = [
        "[storage]",
        'driver = "vfs"',
        f"graphroot = {json.dumps(graphroot)}",
        f"runroot = {json.dumps(runroot)}",
    ]
    if additional:
        stores = ", ".join(json.dumps(path) for path in additional)
        lines += ["", "[storage.options]", f"additionalimagestores = [{stores}]"]
    return "\n".join(lines) + "\n"


_IMAGE_STORAGE_CONF = (
    "# Written by afield (stage afield.containers). Images baked into this OS image are a\n"
    f"# read-only store under {STORE}; podman's own store must use the same driver (vfs).\n"
    + storage_conf(graphroot=GRAPHROOT, runroot=RUNROOT, additional=[STORE])
)


def store_name(container: Container) -> str:
    """The name an image gets in the baked store: its local name as podman normalizes it."""
    return normalize_image(container.local_name)


def _where(index: int, source: str) -> str:
    return f"containers[{index}] ({source})"


def _explain(stderr: str) -> tuple[str, bool]:
    """skopeo's failure as one line (its fatal message) with what it means, and whether the
    user's input is what is wrong."""
    fatal = _FATAL.findall(stderr)
    if fatal:
        reason = fatal[-1].replace('\\"', '"').replace("\\\\", "\\")
    else:
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else "no output"
    for needles, meaning, user_error in _EXPLANATIONS:
        if any(needle in reason for needle in needles):
            return f"{meaning}: {reason}", user_error
    return reason, False


def _skopeo(
    argv: Sequence[str],
    *,
    where: str,
    what: str,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> bytes:
    """Run skopeo; its stdout, or ComposeError naming the entry, what was done and why not."""
    try:
        result = subprocess.run(
            ["skopeo", *argv],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as e:
        raise ComposeError("skopeo is not installed (run `make bootstrap`)") from e
    except subprocess.TimeoutExpired as e:
        raise ComposeError(f"{where}: {what}: no answer within {timeout:.0f} s") from e
    if result.returncode != 0:
        reason, user_error = _explain(result.stderr.decode(errors="replace"))
        raise ComposeError(f"{where}: {what}: {reason}", user_error=user_error)
    return result.stdout


def _repository(reference: str) -> str:
    """``reference`` without its tag and digest."""
    name = reference.split("@", 1)[0]
    head, slash, last = name.rpartition("/")
    return head + slash + last.split(":", 1)[0]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _registry_options(index: int, container: Container) -> dict[str, Any]:
    source = container.source
    where = _where(index, source)
    repository = _repository(source)
    if "@" in source:
        digest = source.split("@", 1)[1]  # pinned by the blueprint itself: nothing to ask
    else:
        argv = [f"--command-timeout={INSPECT_TIMEOUT}s", "inspect", "--raw", "--no-tags"]
        if not container.tls_verify:
            argv.append("--tls-verify=false")
        raw = _skopeo(
            [*argv, f"docker://{source}"],
            where=where,
            what="cannot resolve the tag to a digest",
            timeout=INSPECT_TIMEOUT + 10,
        )
        digest = f"sha256:{hashlib.sha256(raw).hexdigest()}"
    return {
        "index": index,
        "source": source,
        "transport": "docker",
        "repository": repository,
        "digest": digest,
        "tls_verify": container.tls_verify,
        "name": store_name(container),
    }


def _archive_options(index: int, container: Container, blueprint: Blueprint) -> dict[str, Any]:
    path = blueprint.resolve_path(container.archive or "")
    where = _where(index, container.source)
    if not path.is_file():
        problem = "does not exist" if not path.exists() else "is not a regular file"
        raise ComposeError(f"{where}: the archive {path} {problem}", user_error=True)
    try:
        sha256 = _sha256_file(path)
    except OSError as e:
        raise ComposeError(
            f"{where}: cannot read the archive {path}: {e.strerror}", user_error=True
        ) from e
    return {
        "index": index,
        "source": container.source,
        "transport": container.transport,
        "path": str(path),
        "sha256": sha256,
        "name": store_name(container),
    }


def plan_options(
    blueprint: Blueprint, *, architecture: str, source_date_epoch: int
) -> dict[str, Any]:
    """The options that bake ``blueprint``'s ``[[containers]]``, every input pinned.

    Raises:
        ComposeError: an archive is missing, a registry cannot be asked or has no such image,
            or two entries get the same name in the store; names the entry.
    """
    images: list[dict[str, Any]] = []
    first: dict[str, int] = {}
    for index, container in enumerate(blueprint.containers):
        name = store_name(container)
        if name in first:
            raise ComposeError(
                f"{_where(index, container.source)}: the image name {name} is already used by "
                f"containers[{first[name]}]",
                user_error=True,
            )
        first[name] = index
    for index, container in enumerate(blueprint.containers):
        if container.transport == "docker":
            images.append(_registry_options(index, container))
        else:
            images.append(_archive_options(index, container, blueprint))
    return {
        "images": images,
        "architecture": architecture,
        "source_date_epoch": source_date_epoch,
    }


def _stage_archive(image: Mapping[str, Any], into: Path) -> Path:
    """Copy the archive into ``into`` while hashing it; the copy, if it is what was planned."""
    where = _where(image["index"], image["source"])
    source = Path(image["path"])
    staged = into / f"{image['index']}.tar"
    digest = hashlib.sha256()
    try:
        with source.open("rb") as stream, staged.open("wb") as out:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except FileNotFoundError as e:
        raise StageError(NAME, f"{where}: the archive {source} is gone", user_error=True) from e
    if digest.hexdigest() != image["sha256"]:
        raise StageError(
            NAME,
            f"{where}: the archive {source} changed since the compose was planned "
            f"(sha256 {digest.hexdigest()}, planned {image['sha256']}); compose again",
            user_error=True,
        )
    return staged


def _layer_dirs(store: Path) -> set[str]:
    layers = store / "vfs" / "dir"
    return set(os.listdir(layers)) if layers.is_dir() else set()


def _refuse_special_files(store: Path, layers: set[str], where: str) -> None:
    """OSTree commits regular files, directories and symlinks only: refuse anything else."""
    for layer in sorted(layers):
        top = store / "vfs" / "dir" / layer
        for root, dirs, files in os.walk(top):
            dirs.sort()
            for name in sorted([*dirs, *files]):
                mode = os.lstat(os.path.join(root, name)).st_mode
                if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
                    inside = "/" + os.path.relpath(os.path.join(root, name), top)
                    raise StageError(
                        NAME,
                        f"{where}: the image contains {inside}, which is not a regular file, "
                        "directory or symbolic link (a device node, FIFO or socket); an OSTree "
                        "commit cannot hold it, so the image cannot be baked",
                        user_error=True,
                    )


def _copy(
    ctx: StageContext, image: Mapping[str, Any], store: Path, work: Path, architecture: str
) -> None:
    """Copy one image into the store; refuse it if OSTree could not commit its files."""
    where = _where(image["index"], image["source"])
    argv = [f"--tmpdir={work / 'tmp'}", f"--override-arch={architecture}"]
    argv += ["--override-os=linux", "copy", "--quiet", "--retry-times=2"]
    if image["transport"] == "docker":
        if not image["tls_verify"]:
            argv.append("--src-tls-verify=false")
        source = f"docker://{image['repository']}@{image['digest']}"
        what = f"cannot copy {image['repository']}@{image['digest']}"
    else:
        staged = _stage_archive(image, work / "archives")
        source = f"{image['transport']}:{staged}"
        what = f"cannot copy the archive {image['path']}"
    destination = f"containers-storage:[vfs@{store}+{work / 'run'}]{image['name']}"
    before = _layer_dirs(store)
    ctx.log(f"containers: {image['source']} -> {image['name']}")
    try:
        _skopeo(
            [*argv, source, destination],
            where=where,
            what=what,
            env={
                "CONTAINERS_STORAGE_CONF": str(work / "storage.conf"),
                "TMPDIR": str(work / "tmp"),
            },
        )
    except ComposeError as e:
        raise StageError(NAME, e.message, user_error=e.user_error) from e
    finally:
        if image["transport"] != "docker":
            (work / "archives" / f"{image['index']}.tar").unlink(missing_ok=True)
    _refuse_special_files(store, _layer_dirs(store) - before, where)


def _timestamp(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rewrite_json(path: Path, data: Any) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(data, separators=(",", ":"), ensure_ascii=False))
    partial.chmod(stat.S_IMODE(path.stat().st_mode))
    partial.replace(path)


def _config_created(store: Path, image_id: str) -> bool:
    """Whether the image's config gives its creation time (then the store copied it)."""
    key = base64.b64encode(f"sha256:{image_id}".encode()).decode()
    config = store / "vfs-images" / image_id / f"={key}"
    try:
        return bool(json.loads(config.read_bytes()).get("created"))
    except (OSError, ValueError, AttributeError):
        return False


def _normalise(store: Path, epoch: int) -> list[dict[str, Any]]:
    """Make the store's bytes a function of its inputs; the images as the store lists them."""
    created = _timestamp(epoch)
    layers_json = store / "vfs-layers" / "layers.json"
    layers = json.loads(layers_json.read_bytes())
    for layer in layers:
        layer["created"] = created
    _rewrite_json(layers_json, layers)
    images_json = store / "vfs-images" / "images.json"
    images = json.loads(images_json.read_bytes())
    for image in images:
        if not _config_created(store, image["id"]):
            image["created"] = created
    _rewrite_json(images_json, images)
    for lock in sorted(store.rglob("*.lock")):
        if lock.is_file() and not lock.is_symlink():
            lock.write_bytes(b"")
    return [
        {"id": image["id"], "digest": image.get("digest", ""), "names": image.get("names", [])}
        for image in images
    ]


def run(ctx: StageContext, options: Mapping[str, Any]) -> Facts:
    """Copy every image into the store, normalise it, write storage.conf; facts ``containers``."""
    store = make_parents(ctx.tree, STORE)
    if store.exists() or store.is_symlink():
        raise StageError(NAME, f"{STORE} already exists in the image")
    work = ctx.workdir / "containers"
    shutil.rmtree(work, ignore_errors=True)
    for sub in ("run", "tmp", "archives"):
        (work / sub).mkdir(parents=True)
    # skopeo must not read the builder's storage.conf: its additional stores would lend layers.
    (work / "storage.conf").write_text(
        storage_conf(graphroot=str(store), runroot=str(work / "run"))
    )
    try:
        for image in options["images"]:
            _copy(ctx, image, store, work, options["architecture"])
        listed = _normalise(store, options["source_date_epoch"])
        conf = make_parents(ctx.tree, STORAGE_CONF)
        if conf.is_symlink() or conf.is_dir():
            raise StageError(NAME, f"{STORAGE_CONF} in the image is not a regular file")
        conf.write_text(_IMAGE_STORAGE_CONF)
        conf.chmod(0o644)
    except BaseException:
        shutil.rmtree(store, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    baked = []
    for image in options["images"]:
        found = next((i for i in listed if image["name"] in i["names"]), None)
        if found is None:
            raise StageError(NAME, f"{image['name']} is not in the store after copying it")
        baked.append({"name": image["name"], "id": found["id"], "digest": found["digest"]})
    return {"containers": baked}
