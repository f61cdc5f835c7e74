"""Stage afield.manifests: bake directories of Kubernetes manifests into the image.

Each ``[[customizations.afield.manifests]]`` directory is copied to
``/usr/lib/afield/manifests.d/<name>/`` (files 0644, directories 0755, owned by root), where the
device plays it with ``podman kube play`` at boot (:mod:`afield.workloads`).

:func:`plan_options` checks every directory when the compose is planned, before any expensive
stage runs: the manifests and their ``delete/`` subdirectory must load
(:func:`afield.workloads.manifests.load_directory`: YAML, kinds podman 4.3 plays,
kustomization), and every image they use must be baked by a ``[[containers]]`` entry, because
baked workloads must start with no registry reachable. What is copied is YAML only (``*.yaml``,
``*.yml``, ``Kustomization``) and subdirectories (``delete/``, kustomize bases); a symbolic link
may point to a file inside the directory and is copied as that file; anything else is refused.
The options pin the content, the sha256 of every file with its relative path, so editing a
manifest changes the stage id, and the stage refuses a file that changed since.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from afield.blueprint import Blueprint
from afield.compose._tree import make_parents
from afield.compose.pipeline import Facts, StageContext
from afield.compose.stages.containers import store_name
from afield.errors import ManifestError, StageError
from afield.workloads.manifests import (
    KUSTOMIZATIONS,
    MAX_BYTES,
    deletions,
    image_references,
    load_directory,
    normalize_image,
)

__all__ = ["MAX_FILES", "TARGET", "plan_options"]

NAME = "afield.manifests"
CHECKPOINT = False

# Where baked manifests go in the image: one subdirectory per blueprint entry.
TARGET = "/usr/lib/afield/manifests.d"
#: The most files and directories one manifests directory may hold.
MAX_FILES = 1024


def _where(index: int, source: str) -> str:
    return f"customizations.afield.manifests[{index}] ({source})"


def _is_manifest(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) or name in KUSTOMIZATIONS


def _walk(root: Path, where: str) -> tuple[list[str], list[tuple[str, Path]]]:
    """The subdirectories and files under ``root`` (relative POSIX paths, sorted), refusing
    what is not a manifest; each file with where its bytes are (a link's target)."""
    real_root = root.resolve()
    directories: list[str] = []
    files: list[tuple[str, Path]] = []
    pending = [""]
    while pending:
        relative = pending.pop(0)
        for entry in sorted(os.scandir(root / relative), key=lambda e: e.name):
            name = f"{relative}{entry.name}"
            path = Path(entry.path)
            if len(directories) + len(files) >= MAX_FILES:
                raise ManifestError(f"{where}: more than {MAX_FILES} files and directories")
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                target = path.resolve()
                if not target.is_relative_to(real_root):
                    raise ManifestError(
                        f"{where}: {name} is a symbolic link to {os.readlink(path)}, outside "
                        "the directory; only files inside it are baked"
                    )
                if not target.is_file():
                    raise ManifestError(
                        f"{where}: {name} is a symbolic link to something that is not a "
                        "regular file; only links to files inside the directory are followed"
                    )
                mode, path = target.stat().st_mode, target
            if stat.S_ISDIR(mode):
                directories.append(name)
                pending.append(f"{name}/")
            elif stat.S_ISREG(mode) and _is_manifest(entry.name):
                if path.stat().st_size > MAX_BYTES:
                    raise ManifestError(f"{where}: {name} is larger than {MAX_BYTES} bytes")
                files.append((name, path))
            elif stat.S_ISREG(mode):
                raise ManifestError(
                    f"{where}: {name} is not a manifest (*.yaml, *.yml, "
                    f"{', '.join(KUSTOMIZATIONS)}); move it out of the directory"
                )
            else:
                raise ManifestError(
                    f"{where}: {name} is not a regular file or directory (a device node, FIFO "
                    "or socket); it cannot be baked"
                )
    return sorted(directories), sorted(files)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_images(where: str, images: Iterable[str], baked: Mapping[str, str]) -> None:
    for image in images:
        if normalize_image(image) not in baked:
            listed = ", ".join(sorted(baked)) or "none"
            raise ManifestError(
                f"{where}: image {image} is not baked into the image by a [[containers]] entry "
                f"(baked: {listed}); baked workloads must start with no registry reachable, so "
                "add the image to [[containers]] under the name the manifest uses"
            )


def plan_options(blueprint: Blueprint) -> dict[str, Any]:
    """The options that bake ``blueprint``'s manifest directories, their content pinned.

    Raises:
        ManifestError: a directory is missing, holds something that is not a manifest, its
            manifests do not load, or they use an image no ``[[containers]]`` entry bakes;
            names the entry, the file and what is wrong.
    """
    baked = {store_name(c): c.source for c in blueprint.containers}
    entries: list[dict[str, Any]] = []
    for index, manifests in enumerate(blueprint.customizations.afield.manifests):
        where = _where(index, manifests.source)
        root = blueprint.resolve_path(manifests.source)
        if not root.is_dir():
            problem = "does not exist" if not root.exists() else "is not a directory"
            raise ManifestError(f"{where}: {root} {problem}")
        try:
            directories, files = _walk(root, where)
            resources = load_directory(root)
            deletions(root)
        except OSError as e:
            raise ManifestError(f"{where}: cannot read {e.filename}: {e.strerror}") from e
        except ManifestError as e:
            raise ManifestError(f"{where}: {e.message}") from e
        _check_images(where, image_references(resources), baked)
        entries.append(
            {
                "index": index,
                "name": manifests.local_name,
                "source": str(root),
                "directories": directories,
                "files": [{"path": name, "sha256": _sha256(path)} for name, path in files],
            }
        )
    return {"manifests": entries}


def _copy(ctx: StageContext, entry: Mapping[str, Any], base: Path) -> None:
    where = _where(entry["index"], entry["source"])
    source = Path(entry["source"])
    target = base / entry["name"]
    if target.exists() or target.is_symlink():
        raise StageError(NAME, f"{where}: {TARGET}/{entry['name']} already exists in the image")
    for name in [*entry["directories"], *(item["path"] for item in entry["files"])]:
        parts = PurePosixPath(name).parts
        if name.startswith("/") or not parts or any(p in (".", "..") for p in parts):
            raise StageError(NAME, f"{where}: {name!r} is not a path inside the directory")
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    for name in entry["directories"]:
        (target / name).mkdir(mode=0o755)
        (target / name).chmod(0o755)
    for item in entry["files"]:
        try:
            data = (source / item["path"]).read_bytes()
        except OSError as e:
            raise StageError(
                NAME, f"{where}: cannot read {item['path']}: {e.strerror}", user_error=True
            ) from e
        if hashlib.sha256(data).hexdigest() != item["sha256"]:
            raise StageError(
                NAME,
                f"{where}: {item['path']} changed since the compose was planned; compose again",
                user_error=True,
            )
        path = target / item["path"]
        path.write_bytes(data)
        path.chmod(0o644)
    ctx.log(f"manifests: {source} -> {TARGET}/{entry['name']} ({len(entry['files'])} files)")


def run(ctx: StageContext, options: Mapping[str, Any]) -> Facts:
    """Copy every manifests directory into the image; facts ``manifests`` (their names)."""
    base = make_parents(ctx.tree, TARGET)
    if not base.exists():
        base.mkdir(mode=0o755)
        base.chmod(0o755)
    for entry in options["manifests"]:
        _copy(ctx, entry, base)
    return {"manifests": [entry["name"] for entry in options["manifests"]]}
