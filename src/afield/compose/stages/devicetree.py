"""Stage afield.devicetree: put the blueprint's device tree blobs where OSTree looks for them.

OSTree finds a commit's device trees next to its kernel (``ostree-sysroot-deploy.c``,
``get_kernel_from_tree_usrlib_modules``): a single blob at ``/usr/lib/modules/$kver/devicetree``,
else a directory ``/usr/lib/modules/$kver/dtb/``. At deployment (2022.7, Debian 12) it copies the
blob to ``/boot/ostree/<os>-<bootcsum>/devicetree-$kver`` and writes a ``devicetree`` line into
the boot entry, which afield's ``grub.cfg`` passes to GRUB's ``devicetree`` command; with no
blob it copies the whole directory and writes an ``fdtdir`` line instead, which U-Boot's
extlinux reads and GRUB has no use for.

So every ``[customizations.afield.devicetree]`` file is copied to
``/usr/lib/modules/$kver/dtb/<name>`` (an absolute path under its base name), where it stays in
the deployment for tools that look there, and ``default``, when set, also to
``/usr/lib/modules/$kver/devicetree``. A relative name is looked up in the kernel package's DTB
directory, ``/usr/lib/linux-image-$kver/``; an absolute one is a file already in the tree, so
this stage runs after afield.files. Paths are resolved inside the tree
(:func:`~afield.compose._tree.resolve_in_tree`), symbolic links included, so no name can read or
write outside the image. A name starting with ``./`` is a file shipped with the blueprint, next
to it on the builder: :func:`plan_options` reads it when the compose is planned (inside the
blueprint's directory, a regular file of at most :data:`MAX_BLOB_BYTES` that starts with the FDT
magic) and puts its bytes in the options, so editing it changes the stage id; it is installed
under its path without the ``./``. Which names are valid is the blueprint's business
(:func:`afield.blueprint._checks.dtb_name`).
"""

from __future__ import annotations

import base64
import binascii
import os
import posixpath
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from afield.blueprint import Blueprint
from afield.blueprint.model import DeviceTree
from afield.compose._tree import make_parents, resolve_in_tree
from afield.compose.pipeline import Facts, StageContext
from afield.compose.stages.kernel import kernel_version
from afield.errors import ComposeError, StageError

__all__ = ["FDT_MAGIC", "MAX_BLOBS_BYTES", "MAX_BLOB_BYTES", "dtb_directory", "plan_options"]

NAME = "afield.devicetree"
CHECKPOINT = False

#: The largest device tree a blueprint may ship (a ``./`` name), in bytes.
MAX_BLOB_BYTES = 1 << 20
#: The most bytes all the device trees one blueprint ships may hold together.
MAX_BLOBS_BYTES = 8 << 20
#: The first four bytes of every flattened device tree (the big-endian word 0xd00dfeed).
FDT_MAGIC = b"\xd0\x0d\xfe\xed"

_MAX_SYMLINKS = 40


def dtb_directory(kver: str) -> str:
    """Where Debian's kernel package ``linux-image-$kver`` ships its device trees."""
    return f"/usr/lib/linux-image-{kver}"


def _where(index: int) -> str:
    return f"customizations.afield.devicetree.files[{index}]"


def _read_bundled(directory: Path, where: str, name: str) -> bytes:
    """The bytes of ``./name`` in the blueprint's ``directory``, checked; or ComposeError."""
    path = directory / name.removeprefix("./")
    try:
        root = directory.resolve()
        real = path.resolve()
    except (OSError, RuntimeError) as e:  # RuntimeError: a symbolic link loop (Python < 3.13)
        raise ComposeError(f"{where}: cannot resolve {path}: {e}", user_error=True) from e
    if not real.is_relative_to(root):
        raise ComposeError(
            f"{where}: {name} resolves to {real}, outside the blueprint's directory {root}; a "
            "'./' device tree must be a file inside it",
            user_error=True,
        )
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below.
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ComposeError(
            f"{where}: {name} not found: {real} does not exist (a './' name is relative to the "
            "blueprint's directory)",
            user_error=True,
        ) from None
    except OSError as e:
        raise ComposeError(f"{where}: cannot read {real}: {e.strerror}", user_error=True) from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ComposeError(f"{where}: {real} is not a regular file", user_error=True)
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_BLOB_BYTES + 1)
    if len(data) > MAX_BLOB_BYTES:
        raise ComposeError(
            f"{where}: {real} is larger than the limit of {MAX_BLOB_BYTES} bytes for a device tree",
            user_error=True,
        )
    if not data.startswith(FDT_MAGIC):
        raise ComposeError(
            f"{where}: {real} is not a flattened device tree (a .dtb starts with the bytes "
            "d0 0d fe ed; compile a .dts with dtc)",
            user_error=True,
        )
    return data


def plan_options(blueprint: Blueprint) -> dict[str, Any] | None:
    """The stage's options for ``blueprint``, or None if it has no device trees.

    The files it ships (``./`` names) are read now and their bytes put in ``blobs``, base64.

    Raises:
        ComposeError: (a user error) a ``./`` file is missing, outside the blueprint's
            directory, not a regular file, too large or not a device tree, or the blueprint
            was not read from a file; names the entry and the path.
    """
    table = blueprint.customizations.afield.devicetree
    if table is None:
        return None
    blobs: dict[str, str] = {}
    total = 0
    for index, name in enumerate(table.files):
        if not DeviceTree.is_bundled(name):
            continue
        if blueprint.directory is None:
            raise ComposeError(
                f"{_where(index)}: {name} is a file relative to the blueprint's directory, but "
                "this blueprint was not read from a file; compose it from a file to ship "
                "device trees with it",
                user_error=True,
            )
        data = _read_bundled(blueprint.directory, _where(index), name)
        total += len(data)
        if total > MAX_BLOBS_BYTES:
            raise ComposeError(
                f"{_where(index)}: the device trees shipped with the blueprint hold more than "
                f"{MAX_BLOBS_BYTES} bytes together",
                user_error=True,
            )
        blobs[name] = base64.b64encode(data).decode("ascii")
    return {"files": list(table.files), "default": table.default, "blobs": blobs}


def _follow(tree: Path, path: str) -> Path:
    """Where ``path`` is in the tree, following symbolic links (the last one too) inside it."""
    for _ in range(_MAX_SYMLINKS):
        found = resolve_in_tree(tree, path)
        if not found.is_symlink():
            return found
        target = os.readlink(found)
        inside = "/" + found.relative_to(tree).as_posix()
        path = (
            target if target.startswith("/") else posixpath.join(posixpath.dirname(inside), target)
        )
    raise StageError(
        NAME, f"{path}: too many levels of symbolic links in the image", user_error=True
    )


def _blob(options: Mapping[str, Any], name: str) -> bytes:
    """The bytes :func:`plan_options` pinned for the shipped device tree ``name``."""
    try:
        return base64.b64decode(options["blobs"][name], validate=True)
    except (KeyError, binascii.Error) as e:
        raise StageError(NAME, f"{name}: no valid blob in the options (plan again)") from e


def _source(ctx: StageContext, kver: str, index: int, name: str) -> bytes:
    """The bytes of device tree ``name``, or a StageError saying where it was looked for."""
    where = _where(index)
    path = name if name.startswith("/") else f"{dtb_directory(kver)}/{name}"
    found = _follow(ctx.tree, path)
    try:
        mode = found.stat().st_mode
    except FileNotFoundError:
        if name.startswith("/"):
            hint = "; an absolute name is a file that a package installs in the image"
        elif not _follow(ctx.tree, dtb_directory(kver)).is_dir():
            hint = (
                f"; the image has no {dtb_directory(kver)}: the kernel package ships no device "
                "trees (choose one that does with customizations.kernel.name)"
            )
        else:
            hint = f" (names are relative to {dtb_directory(kver)})"
        raise StageError(
            NAME,
            f"{where}: {name} not found: looked for {path} in the image{hint}",
            user_error=True,
        ) from None
    if not stat.S_ISREG(mode):
        raise StageError(
            NAME, f"{where}: {path} in the image is not a regular file", user_error=True
        )
    return found.read_bytes()


def _install(ctx: StageContext, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` in the tree (0644, root), replacing what is there."""
    target = make_parents(ctx.tree, path)
    if target.is_dir() and not target.is_symlink():
        raise StageError(NAME, f"{path}: a directory is already there in the image")
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".afield-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chown(temp, 0, 0)
        os.chmod(temp, 0o644)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def run(ctx: StageContext, options: Mapping[str, Any]) -> Facts:
    """Install the device trees next to the kernel; facts ``devicetree`` (``files``: their paths
    under ``/usr/lib/modules/$kver/dtb/``, ``default``: the default's name or None)."""
    kver = kernel_version(ctx)
    modules = f"/usr/lib/modules/{kver}"
    default: str | None = options["default"]
    if default is not None and default not in options["files"]:
        raise StageError(NAME, f"the default device tree {default} is not one of the files")
    unused = set(options["blobs"]) - set(options["files"])
    if unused:
        raise StageError(NAME, f"blobs for device trees not in files: {', '.join(sorted(unused))}")
    installed: list[str] = []
    for index, name in enumerate(options["files"]):
        if DeviceTree.is_bundled(name):
            data = _blob(options, name)
        else:
            data = _source(ctx, kver, index, name)
        target = DeviceTree.installed_name(name)
        _install(ctx, f"{modules}/dtb/{target}", data)
        installed.append(target)
        ctx.log(f"devicetree: {name} -> {modules}/dtb/{target}")
        if name == default:
            _install(ctx, f"{modules}/devicetree", data)
            ctx.log(f"devicetree: {name} -> {modules}/devicetree (default)")
    return {"devicetree": {"files": installed, "default": default}}
