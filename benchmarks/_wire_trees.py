"""The wire benchmark's workload: Debian bookworm image trees, built once and cached.

Three trees make the two update pairs of ``wire.py``: ``old`` (the ``bookworm`` suite alone, i.e.
the point release), ``security`` (the same packages with ``bookworm-updates`` and
``bookworm-security`` added: real upgraded libraries) and ``add`` (``old`` plus a few packages).
Each is installed by plain mmdebstrap (``minbase``, no recommends) reading and keeping .debs in a
pool, shaped the way afield shapes an image for OSTree (a fake kernel under ``/usr/lib/modules``,
then afield.ostree.prepare: ``/etc`` to ``/usr/etc``, ``/var`` emptied, caches and logs dropped)
and archived as a deterministic tar (sorted names, numeric owners, one mtime). Tree, tar and the
dpkg package list are kept under ``~/.cache/afield/bench-wire/trees/<key>``, the key being the
sha256 of the inputs, so later runs start from the cache.

What it leaves to others: committing, serving and measuring (``wire.py``, ``_wire_methods.py``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from _baseline import _run
from _workload import remove_tree
from afield.compose import default_cache_dir
from afield.compose.stages import ostree_prepare

__all__ = [
    "ADDED",
    "BASE_PACKAGES",
    "KERNEL",
    "SOURCE_DATE_EPOCH",
    "Tree",
    "TreeSpec",
    "cache_dir",
    "changed_packages",
    "ensure_tree",
    "specs",
]

# Bump when the shaping below changes, so cached trees are rebuilt.
SHAPE_VERSION = 1
SOURCE_DATE_EPOCH = 1767225600  # 2026-01-01T00:00:00Z
KERNEL = "6.1.0-afield-bench"
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
# A headless device OS: systemd, networking, TLS, ssh, and the interpreters device software uses.
BASE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "systemd-timesyncd",
    "udev",
    "dbus",
    "kmod",
    "iproute2",
    "iputils-ping",
    "netbase",
    "nftables",
    "ca-certificates",
    "openssl",
    "curl",
    "openssh-server",
    "sudo",
    "procps",
    "tzdata",
    "nano",
    "python3",
    "perl",
)
# The "add" pair's new image: the same plus a few tools (a few MB).
ADDED = ("jq", "rsync", "less", "tcpdump")
# As device images often do: no manual pages, translations or docs (copyright files stay).
DPKG_OPTIONS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
)


@dataclass(frozen=True)
class TreeSpec:
    """What goes into one image tree: its name, packages and apt sources (one-line format)."""

    name: str
    packages: tuple[str, ...]
    sources: tuple[str, ...]

    def key(self) -> str:
        """sha256 of the inputs that decide the tree's content."""
        inputs = {
            "shape": SHAPE_VERSION,
            "packages": sorted(self.packages),
            "sources": list(self.sources),
            "variant": "minbase",
            "epoch": SOURCE_DATE_EPOCH,
            "kernel": KERNEL,
            "dpkg": list(DPKG_OPTIONS),
        }
        return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Tree:
    """A built, shaped tree: its directory, deterministic tar and dpkg package list."""

    spec: TreeSpec
    key: str
    path: Path
    tar: Path
    packages: dict[str, str]
    built: str
    cached: bool

    @property
    def tar_bytes(self) -> int:
        """Size of the uncompressed tar."""
        return self.tar.stat().st_size


def specs() -> dict[str, TreeSpec]:
    """The three trees: ``old``, ``security`` (old + updates) and ``add`` (old + packages)."""
    point = (f"deb {MIRROR} bookworm main",)
    updated = (
        *point,
        f"deb {MIRROR} bookworm-updates main",
        f"deb {SECURITY_MIRROR} bookworm-security main",
    )
    return {
        "old": TreeSpec("old", BASE_PACKAGES, point),
        "security": TreeSpec("security", BASE_PACKAGES, updated),
        "add": TreeSpec("add", (*BASE_PACKAGES, *ADDED), point),
    }


def cache_dir() -> Path:
    """``~/.cache/afield/bench-wire`` (under afield's compose cache directory)."""
    return default_cache_dir() / "bench-wire"


def _seed_pool(pool: Path) -> int:
    """Hard-link the compose cache's .debs into the pool (the same files, no download)."""
    pool.mkdir(parents=True, exist_ok=True)
    added = 0
    compose_debs = default_cache_dir() / "debs"
    if not compose_debs.is_dir():
        return 0
    for deb in compose_debs.glob("*.deb"):
        target = pool / deb.name
        if target.exists():
            continue
        try:
            os.link(deb, target)
        except OSError:
            shutil.copy2(deb, target)
        added += 1
    return added


def _mmdebstrap(spec: TreeSpec, tree: Path, pool: Path, log: Path) -> None:
    argv = [
        "mmdebstrap",
        "--mode=root",
        "--variant=minbase",
        "--architectures=amd64",
        "--format=directory",
        '--aptopt=APT::Install-Recommends "false"',
        '--aptopt=Acquire::Retries "3"',
        *(f"--dpkgopt={option}" for option in DPKG_OPTIONS),
        f"--include={','.join(spec.packages)}",
        "--skip=download/empty",
        '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/',
        f"--setup-hook=sync-in {shlex.quote(str(pool))} /var/cache/apt/archives/",
        f"--customize-hook=sync-out /var/cache/apt/archives {shlex.quote(str(pool))}",
        '--customize-hook=rm -f "$1"/etc/resolv.conf',
        '--customize-hook=echo localhost > "$1"/etc/hostname',
        "bookworm",
        str(tree),
        *spec.sources,
    ]
    env = {"SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH), "INITRD": "No"}
    _run(argv, log, env=env)


def _fake_kernel(tree: Path) -> None:
    """A kernel and initramfs file where OSTree looks for them (nothing boots these trees)."""
    modules = tree / "usr" / "lib" / "modules" / KERNEL
    modules.mkdir(parents=True, exist_ok=True)
    block = hashlib.sha256(KERNEL.encode()).digest()
    (modules / "vmlinuz").write_bytes(
        b"".join(hashlib.sha256(block + bytes([i])).digest() for i in range(256))
    )
    (modules / "initramfs.img").write_bytes(b"initramfs " + KERNEL.encode() + b"\n")


def _shape(tree: Path) -> None:
    """Make the tree what afield commits: drop build leftovers, then afield.ostree.prepare."""
    for rel in ("var/lib/apt/lists", "var/cache/apt", "var/log"):
        path = tree / rel
        if path.is_dir():
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    _fake_kernel(tree)
    # The stage reads only ctx.tree; it moves /etc to /usr/etc, /var to tmpfiles.d lines, the
    # dpkg database to /usr/lib/sysimage/dpkg, and empties mount points.
    ostree_prepare.run(SimpleNamespace(tree=tree), {})  # type: ignore[arg-type]


def _tar(tree: Path, tar: Path, log: Path) -> None:
    _run(
        [
            "tar",
            "--create",
            f"--file={tar}",
            f"--directory={tree}",
            "--sort=name",
            "--numeric-owner",
            f"--mtime=@{SOURCE_DATE_EPOCH}",
            "--format=posix",
            "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
            "--xattrs",
            ".",
        ],
        log,
    )


def dpkg_packages(status: Path) -> dict[str, str]:
    """``{package: version}`` of the installed packages in a dpkg ``status`` file."""
    packages: dict[str, str] = {}
    for stanza in status.read_text().split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line and not line[0].isspace() and ":" in line:
                name, _, value = line.partition(":")
                fields[name] = value.strip()
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            packages[fields["Package"]] = fields["Version"]
    return dict(sorted(packages.items()))


def ensure_tree(spec: TreeSpec, log: Callable[[str], None]) -> Tree:
    """The cached tree for ``spec``, built (mmdebstrap, shaping, tar) when not cached yet.

    Builds hold an exclusive lock on the cache, so two runs never build into one directory.
    """
    key = spec.key()
    home = cache_dir() / "trees" / key
    manifest = home / "manifest.json"
    home.parent.mkdir(parents=True, exist_ok=True)
    with (cache_dir() / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if manifest.is_file():
            data: dict[str, Any] = json.loads(manifest.read_text())
            return Tree(
                spec, key, home / "tree", home / "image.tar", data["packages"], data["built"], True
            )
        return _build(spec, key, home, log)


def _build(spec: TreeSpec, key: str, home: Path, log: Callable[[str], None]) -> Tree:
    pool = cache_dir() / "debs"
    seeded = _seed_pool(pool)
    partial = home.with_name(f"{key}.partial")
    remove_tree(partial)  # what a killed build left (unmounting first)
    partial.mkdir(parents=True)
    build_log = partial / "build.log"
    log(
        f"building tree {spec.name} ({key[:12]}) with mmdebstrap; log {build_log} "
        f"(pool {pool}, {seeded} .debs linked from the compose cache)"
    )
    began = time.perf_counter()
    tree = partial / "tree"
    _mmdebstrap(spec, tree, pool, build_log)
    _shape(tree)
    _tar(tree, partial / "image.tar", build_log)
    packages = dpkg_packages(tree / "usr" / "lib" / "sysimage" / "dpkg" / "status")
    built = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    data = {"spec": spec.__dict__ | {"key": key}, "packages": packages, "built": built}
    (partial / "manifest.json").write_text(json.dumps(data, indent=2, sort_keys=True))
    remove_tree(home)
    partial.rename(home)
    log(f"tree {spec.name}: {len(packages)} packages, built in {time.perf_counter() - began:.0f} s")
    return Tree(spec, key, home / "tree", home / "image.tar", packages, built, False)


def changed_packages(old: Tree, new: Tree) -> dict[str, list[dict[str, str | None]]]:
    """Packages upgraded, added and removed from ``old`` to ``new`` (from dpkg status)."""
    a, b = old.packages, new.packages
    return {
        "upgraded": [
            {"package": p, "old": a[p], "new": b[p]}
            for p in sorted(a.keys() & b.keys())
            if a[p] != b[p]
        ],
        "added": [{"package": p, "old": None, "new": b[p]} for p in sorted(b.keys() - a.keys())],
        "removed": [{"package": p, "old": a[p], "new": None} for p in sorted(a.keys() - b.keys())],
    }
