"""OSTree side of the wire benchmark: commits, served repositories, clients, static deltas.

The image trees are committed once into an archive "store" repository under the benchmark's
cache (commits are deterministic, so a ref per tree key finds them again). Each update pair gets
its own afield repository (``DIR/ostree``, objects imported from the store) to serve, and every
client is a bare repository that already holds the old commit: a hard-linked copy of one template,
since a pull only adds objects. Static deltas are generated with the ``ostree`` CLI. Measuring and
reporting are ``wire.py``'s.
"""

from __future__ import annotations

import base64
import lzma
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _wire_trees import KERNEL, SOURCE_DATE_EPOCH, Tree, cache_dir
from afield.ostree import Repo

__all__ = [
    "REF",
    "DeltaFiles",
    "DeltaVariant",
    "apply_offline",
    "clone_client",
    "commit_trees",
    "delete_deltas",
    "delta_dir",
    "delta_files",
    "generate_delta",
    "has_commit",
    "make_client_template",
    "ostree_pull",
    "pair_repository",
    "run",
]

REF = "afield/bench/x86_64/stable"
_TAIL = 30


def run(argv: Sequence[str], log: Path | None = None) -> str:
    """Run ``argv``; its output (stdout and stderr), appended to ``log``; SystemExit on failure."""
    result = subprocess.run(
        list(argv), capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
    )
    out = result.stdout + result.stderr
    if log is not None:
        with log.open("a") as handle:
            handle.write(f"$ {shlex.join(argv)}\n{out}")
    if result.returncode != 0:
        tail = "\n".join(out.splitlines()[-_TAIL:])
        raise SystemExit(f"{shlex.join(argv)} failed with exit code {result.returncode}:\n{tail}")
    return out


def commit_trees(trees: Mapping[str, Tree], versions: Mapping[str, str]) -> dict[str, str]:
    """Commit each tree (once, cached) into the store repository; checksum per tree name."""
    store = Repo.create(cache_dir() / "store", "archive")
    refs = store.refs()
    commits: dict[str, str] = {}
    for name, tree in trees.items():
        ref = f"bench/{name}/{tree.key[:16]}"
        if ref in refs:
            commits[name] = refs[ref]
            continue
        metadata: dict[str, Any] = {
            "afield.image": "bench",
            "afield.arch": "x86_64",
            "version": versions[name],
            "ostree.linux": KERNEL,
        }
        commits[name] = store.commit_tree(
            tree.path,
            subject=f"bench {versions[name]} ({name})",
            metadata=metadata,
            timestamp=SOURCE_DATE_EPOCH,
            ref=ref,
        )
    return commits


def store() -> Repo:
    """The store repository holding every tree's commit."""
    return Repo.open(cache_dir() / "store")


def pair_repository(directory: Path, old: str, new: str) -> Repo:
    """An afield repository ``directory`` whose ``ostree/`` holds ``old`` and ``new``, REF=new.

    Objects come from the store by a local pull (hard links where the file system allows).
    """
    repo = Repo.create(directory / "ostree", "archive")
    source = store()
    repo.pull_local(source, old)
    repo.pull_local(source, new)
    repo.set_ref(REF, new)
    return repo


def make_client_template(path: Path, old: str) -> Path:
    """A bare repository holding ``old``: what every device starts from."""
    Repo.create(path, "bare").pull_local(store(), old)
    return path


def clone_client(
    template: Path, path: Path, url: str | None = None, old: str | None = None
) -> Path:
    """Copy ``template`` to ``path``, objects hard-linked (pulls only add objects).

    With ``url`` the remote ``origin`` points there and ``origin:REF`` is ``old``, as on a
    device that pulled REF before.
    """
    path.mkdir(parents=True)
    for child in template.iterdir():
        flags = "-al" if child.name == "objects" else "-a"
        subprocess.run(["cp", flags, str(child), str(path / child.name)], check=True)
    if url is not None:
        ostree = ["ostree", f"--repo={path}"]
        run([*ostree, "remote", "add", "--no-gpg-verify", "origin", f"{url}ostree"])
        if old is not None:
            run([*ostree, "refs", f"--create=origin:{REF}", old])
    return path


def ostree_pull(client: Path, *, deltas: bool, log: Path | None = None) -> tuple[float, str]:
    """``ostree pull origin REF`` (with ``--disable-static-deltas`` unless ``deltas``)."""
    argv = ["ostree", f"--repo={client}", "pull"]
    if not deltas:
        argv.append("--disable-static-deltas")
    began = time.perf_counter()
    out = run([*argv, "origin", REF], log)
    return time.perf_counter() - began, out.strip().splitlines()[-1] if out.strip() else ""


def _b64(checksum: str) -> str:
    return base64.b64encode(bytes.fromhex(checksum)).decode().rstrip("=").replace("/", "_")


def delta_dir(repo: Path, old: str, new: str) -> Path:
    """Where libostree keeps the delta ``old``-``new`` in the repository ``repo``."""
    name = _b64(old)
    return repo / "deltas" / name[:2] / f"{name[2:]}-{_b64(new)}"


@dataclass(frozen=True)
class DeltaVariant:
    """One way to generate a static delta: CLI options and the libostree params they mean."""

    name: str
    cli: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    # Also estimate the parts recompressed (zstd -19 --long, xz -9e) instead of libostree's xz.
    zstd_parts: bool = False


@dataclass(frozen=True)
class DeltaFiles:
    """A generated delta as it sits on the server."""

    variant: str
    seconds: float
    files: dict[str, int]
    parts: int
    fallback_objects: int
    fallback_bytes: int
    zstd_bytes: int | None = None
    xz_bytes: int | None = None

    @property
    def delta_bytes(self) -> int:
        """Superblock plus parts (what ``static-delta generate`` writes)."""
        return sum(self.files.values())

    @property
    def device_bytes(self) -> int:
        """What a device needs from the server: the delta (zstd estimate if any) + fallbacks."""
        base = self.zstd_bytes if self.zstd_bytes is not None else self.delta_bytes
        return base + self.fallback_bytes

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON."""
        return {
            "variant": self.variant,
            "seconds": self.seconds,
            "files": self.files,
            "parts": self.parts,
            "delta_bytes": self.delta_bytes,
            "fallback_objects": self.fallback_objects,
            "fallback_bytes": self.fallback_bytes,
            "zstd_bytes": self.zstd_bytes,
            "xz_bytes": self.xz_bytes,
            "device_bytes": self.device_bytes,
        }


def delete_deltas(repo: Path) -> None:
    """Remove every static delta of ``repo``."""
    shutil.rmtree(repo / "deltas", ignore_errors=True)
    shutil.rmtree(repo / "delta-indexes", ignore_errors=True)


_SHOW = {
    "parts": re.compile(r"Number of parts:\s*(\d+)"),
    "fallback_objects": re.compile(r"Number of fallback entries:\s*(\d+)"),
    "fallback_bytes": re.compile(r"Total Fallback Size:\s*(\d+)"),
}


def _show(repo: Path, old: str, new: str) -> dict[str, int]:
    # ostree 2022.7's show fails on inline deltas after printing the header; parse what it printed.
    argv = ["ostree", f"--repo={repo}", "static-delta", "show", f"{old}-{new}"]
    out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    found: dict[str, int] = {}
    for key, pattern in _SHOW.items():
        match = pattern.search(out)
        found[key] = int(match.group(1)) if match else 0
    return found


def _recompressed(directory: Path, files: Mapping[str, int]) -> tuple[int, int]:
    """Superblock + parts with each part's payload recompressed: (zstd -19 --long, xz -9e).

    A part file is one compression byte (``x``: xz, ``0``: none) and the payload; libostree
    2022.7 always writes ``x`` (its ``compression`` parameter is ignored), so these are
    estimates for a transport that recompresses, not deltas libostree would apply as they are.
    """
    zstd_total = xz_total = files.get("superblock", 0)
    for name in files:
        if name == "superblock":
            continue
        data = (directory / name).read_bytes()
        raw = lzma.decompress(data[1:]) if data[:1] == b"x" else data[1:]
        out = subprocess.run(
            ["zstd", "-19", "--long=27", "-T2", "-q", "-c"],
            input=raw,
            capture_output=True,
            check=True,
        ).stdout
        zstd_total += 1 + len(out)
        xz_total += 1 + len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME))
    return zstd_total, xz_total


def generate_delta(
    repo: Path, old: str, new: str, variant: DeltaVariant, log: Path | None = None
) -> DeltaFiles:
    """Generate the delta ``old``-``new`` in ``repo`` as ``variant`` says; its files and time.

    Any delta already there for the pair is replaced.
    """
    shutil.rmtree(delta_dir(repo, old, new), ignore_errors=True)
    began = time.perf_counter()
    argv = ["ostree", f"--repo={repo}", "static-delta", "generate", *variant.cli]
    run([*argv, f"--from={old}", f"--to={new}"], log)
    seconds = time.perf_counter() - began
    directory = delta_dir(repo, old, new)
    files = {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()}
    zstd_bytes = xz_bytes = None
    if variant.zstd_parts:
        zstd_bytes, xz_bytes = _recompressed(directory, files)
    shown = _show(repo, old, new)
    return DeltaFiles(
        variant=variant.name,
        seconds=seconds,
        files=files,
        parts=shown["parts"] or len(files) - 1,
        fallback_objects=shown["fallback_objects"],
        fallback_bytes=shown["fallback_bytes"],
        zstd_bytes=zstd_bytes,
        xz_bytes=xz_bytes,
    )


def delta_files(repo: Path, old: str, new: str) -> list[Path]:
    """The files of the delta ``old``-``new``: superblock first, then the parts in order."""
    directory = delta_dir(repo, old, new)
    parts = sorted((p for p in directory.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    return [directory / "superblock", *parts]


def apply_offline(client: Path, directory: Path, log: Path | None = None) -> float:
    """``ostree static-delta apply-offline`` of a downloaded delta directory; seconds."""
    began = time.perf_counter()
    run(["ostree", f"--repo={client}", "static-delta", "apply-offline", str(directory)], log)
    return time.perf_counter() - began


def has_commit(client: Path, commit: str) -> bool:
    """Whether the bare repository ``client`` holds ``commit``, complete (not marked partial)."""
    obj = client / "objects" / commit[:2] / f"{commit[2:]}.commit"
    return obj.is_file() and not (client / "state" / f"{commit}.commitpartial").exists()
