"""Stage afield.ostree.prepare: turn a Debian tree into the layout OSTree deploys.

What changes (the rules OSTree and its users such as rpm-ostree follow):

- ``/etc`` moves to ``/usr/etc``: the image's defaults, which OSTree merges three-way with the
  device's own ``/etc`` on every deployment. Per-machine files are emptied or removed
  (``machine-id``, SSH host keys, shadow backups); a unit regenerates host keys at first boot.
- ``/var`` is device state, never image content: what packages put there becomes systemd-tmpfiles
  lines (``d`` for directories, ``L`` for links, ``C`` copying files from ``/usr/share/factory``),
  and ``/var`` is left empty. The dpkg database moves to ``/usr/lib/sysimage/dpkg``, read-only
  like the rest of the image, with a link from ``/var/lib/dpkg``.
- ``/home``, ``/root``, ``/srv``, ``/mnt`` become links into ``/var``; ``/media`` into ``/run``.
- Mount points (``/dev``, ``/proc``, ``/sys``, ``/run``, ``/tmp``, ``/boot``) are emptied,
  ``/sysroot`` is created and ``/ostree`` links to ``sysroot/ostree``.

The kernel is already in ``/usr/lib/modules/$kver`` (afield.kernel). Commit is afield.ostree.commit.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from afield.compose._tree import move
from afield.compose.pipeline import Facts, StageContext
from afield.errors import StageError

NAME = "afield.ostree.prepare"
CHECKPOINT = False

# Top-level directories that become links into /var or /run, and where they point.
_TOPLEVEL_LINKS = {
    "home": "var/home",
    "root": "var/roothome",
    "srv": "var/srv",
    "mnt": "var/mnt",
    "media": "run/media",
}
# /var content that is cache or log of the build, not state a device should start with.
_DROP_UNDER_VAR = (
    "cache/apt",
    "cache/debconf",
    "cache/ldconfig",
    "cache/man",
    "lib/apt/lists",
    "log",
    "tmp",
    "backups",
    "lib/dbus/machine-id",
    "lib/systemd/random-seed",
)
# Files that identify one machine or one build and must not ship in an image.
_DROP_UNDER_ETC = (
    ".pwd.lock",
    "passwd-",
    "group-",
    "shadow-",
    "gshadow-",
    "subuid-",
    "subgid-",
    "resolv.conf",
    "ld.so.cache~",
)
_MOUNTPOINTS = ("dev", "proc", "sys", "run", "tmp", "boot")
_SSH_KEYGEN_UNIT = """\
[Unit]
Description=Generate SSH host keys on first boot (afield images ship none)
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
"""


def _empty(path: Path) -> None:
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _prepare_etc(tree: Path) -> bool:
    """Clean per-machine files from /etc and move it to /usr/etc; whether SSH keys were removed."""
    etc = tree / "etc"
    if (tree / "usr" / "etc").exists():
        raise StageError(NAME, "/usr/etc already exists: the tree was prepared twice")
    for name in _DROP_UNDER_ETC:
        _remove(etc / name)
    machine_id = etc / "machine-id"
    if machine_id.exists():
        machine_id.write_text("")
    host_keys = sorted((etc / "ssh").glob("ssh_host_*")) if (etc / "ssh").is_dir() else []
    for key in host_keys:
        key.unlink()
    if host_keys:
        unit = tree / "usr" / "lib" / "systemd" / "system" / "afield-ssh-hostkeys.service"
        unit.write_text(_SSH_KEYGEN_UNIT)
        wants = tree / "usr" / "lib" / "systemd" / "system" / "multi-user.target.wants"
        wants.mkdir(exist_ok=True)
        link = wants / unit.name
        if not link.is_symlink():
            link.symlink_to(f"../{unit.name}")
    # OSTree refuses a tree with both /etc and /usr/etc; it creates /etc at deployment.
    move(etc, tree / "usr" / "etc")
    return bool(host_keys)


def _tmpfiles_for_var(tree: Path) -> list[str]:
    """Move /var content to tmpfiles.d lines and /usr/share/factory; return the lines."""
    var = tree / "var"
    factory = tree / "usr" / "share" / "factory" / "var"
    for rel in _DROP_UNDER_VAR:
        target = var / rel
        if target.is_dir() and not target.is_symlink():
            # Keep the directory itself (e.g. /var/log must exist), drop what was built in it.
            _empty(target)
        else:
            _remove(target)
    lines: list[str] = []
    for root, dirs, files in os.walk(var, topdown=True):
        dirs.sort()
        base = Path(root)
        entries = sorted([*dirs, *files])
        for name in entries:
            path = base / name
            rel = "/" + str(path.relative_to(tree))
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                lines.append(f"L {rel} - - - - {os.readlink(path)}")
            elif stat.S_ISDIR(st.st_mode):
                mode = stat.S_IMODE(st.st_mode)
                lines.append(f"d {rel} {mode:04o} {st.st_uid} {st.st_gid} - -")
            elif stat.S_ISREG(st.st_mode):
                copy = factory / path.relative_to(var)
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, copy)
                os.chown(copy, st.st_uid, st.st_gid)
                lines.append(f"C {rel} - - - - /usr/share/factory{rel}")
    # Symlinked directories are listed but not descended into by os.walk; nothing else to do.
    _empty(var)
    return lines


def run(ctx: StageContext, options: Mapping[str, Any]) -> Facts:
    """Rearrange the tree for OSTree; facts ``size`` (bytes of regular files in the image)."""
    tree = ctx.tree
    if not (tree / "usr" / "lib" / "modules").is_dir():
        raise StageError(NAME, "no /usr/lib/modules in the tree: run afield.kernel first")
    dpkg = tree / "var" / "lib" / "dpkg"
    sysimage = tree / "usr" / "lib" / "sysimage"
    if dpkg.is_dir() and not dpkg.is_symlink():
        sysimage.mkdir(parents=True, exist_ok=True)
        move(dpkg, sysimage / "dpkg")
        dpkg.symlink_to("../../usr/lib/sysimage/dpkg")
    for name, target in _TOPLEVEL_LINKS.items():
        path = tree / name
        if path.is_dir() and not path.is_symlink():
            if not target.startswith("run/"):
                destination = tree / target
                destination.parent.mkdir(parents=True, exist_ok=True)
                move(path, destination)
            else:
                shutil.rmtree(path)
        elif path.is_symlink():
            path.unlink()
        path.symlink_to(target)
    ssh_keys_removed = _prepare_etc(tree)
    lines = _tmpfiles_for_var(tree)
    header = "# Generated by afield.ostree.prepare: what the image's packages put in /var.\n"
    tmpfiles = tree / "usr" / "lib" / "tmpfiles.d" / "afield-var.conf"
    tmpfiles.parent.mkdir(parents=True, exist_ok=True)
    tmpfiles.write_text(header + "".join(f"{line}\n" for line in lines))
    for name in _MOUNTPOINTS:
        path = tree / name
        if path.is_symlink():
            path.unlink()
        path.mkdir(exist_ok=True)
        _empty(path)
    (tree / "tmp").chmod(0o1777)
    (tree / "sysroot").mkdir(exist_ok=True)
    ostree_link = tree / "ostree"
    if not ostree_link.is_symlink():
        _remove(ostree_link)
        ostree_link.symlink_to("sysroot/ostree")
    size = 0
    for root, _dirs, files in os.walk(tree):
        for name in files:
            st = os.lstat(os.path.join(root, name))
            if stat.S_ISREG(st.st_mode):
                size += st.st_size
    return {"size": size, "var_entries": len(lines), "ssh_keygen_unit": ssh_keys_removed}
