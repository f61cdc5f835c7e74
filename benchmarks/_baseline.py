"""The raw baseline: the compose's package set by plain mmdebstrap, committed by the ostree CLI.

It installs exactly the packages and mirrors of the compose plan's bootstrap stage, reading .debs
from the same pool the compose reads them from (``--skip=download/empty`` and a ``sync-in`` setup
hook, as afield.debian.bootstrap does), empties ``/dev`` (OSTree refuses device nodes) and commits
the tree to a fresh archive repository. It does not make the tree OSTree-ready (no ``/usr/etc``,
``/var`` kept): it is what the raw tools cost. Plain mmdebstrap builds the initramfs twice; the
``one_initramfs`` variant builds it once, like the compose, for a like-for-like comparison.
Timing the compose itself is left to ``run.py``.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _workload import remove_tree, tree_size

__all__ = ["BaselineRun", "mmdebstrap_argv", "run_baseline"]

_TAIL_LINES = 30


@dataclass(frozen=True)
class BaselineRun:
    """One baseline measurement: total seconds, seconds per phase, size of the repository."""

    seconds: float
    phases: dict[str, float] = field(default_factory=dict)
    repo_bytes: int = 0


def mmdebstrap_argv(options: Mapping[str, Any], tree: Path, pool: Path) -> list[str]:
    """Plain mmdebstrap for the bootstrap stage's ``options``, packages read from ``pool``."""
    constraints: Mapping[str, str] = options.get("constraints", {})
    includes = [
        f"{name}={constraints[name]}" if name in constraints else name
        for name in options["packages"]
    ]
    return [
        "mmdebstrap",
        "--mode=root",
        f"--variant={options['variant']}",
        f"--architectures={options['architecture']}",
        '--aptopt=APT::Install-Recommends "false"',
        f"--include={','.join(includes)}",
        "--skip=download/empty",
        '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/',
        f"--setup-hook=sync-in {shlex.quote(str(pool))} /var/cache/apt/archives/",
        options["suite"],
        str(tree),
        *options["mirrors"],
    ]


def _run(argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> None:
    with log.open("a") as out:
        out.write(f"$ {shlex.join(argv)}\n")
        out.flush()
        code = subprocess.run(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            check=False,
        ).returncode
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-_TAIL_LINES:])
        raise SystemExit(f"{argv[0]} failed with exit code {code} (log {log}):\n{tail}")


def _empty(directory: Path) -> None:
    """``rm -rf DIR/*``."""
    for child in directory.iterdir():
        if child.is_dir() and not child.is_symlink():
            remove_tree(child)
        else:
            child.unlink()


def _dracut(tree: Path, log: Path) -> None:
    """Build the one initramfs of the tree's one kernel, as its postinst would."""
    kernels = sorted(p.name for p in (tree / "usr" / "lib" / "modules").iterdir())
    if len(kernels) != 1:
        raise SystemExit(f"{tree}: expected one kernel in /usr/lib/modules, found {kernels}")
    _run(["chroot", str(tree), "dracut", "--force", "--kver", kernels[0]], log)


def run_baseline(
    options: Mapping[str, Any], pool: Path, scratch: Path, *, one_initramfs: bool = False
) -> BaselineRun:
    """Time mmdebstrap, ``rm -rf dev/*`` and ``ostree commit`` into a fresh archive repo.

    Plain mmdebstrap builds the initramfs twice (the kernel's postinst, then dracut's trigger
    once ostree-boot is unpacked). With ``one_initramfs`` the postinst skips it (``INITRD=No``)
    and one ``dracut --force`` in the tree builds it afterwards, as afield.kernel does.
    """
    scratch.mkdir(parents=True)
    tree, repo, log = scratch / "tree", scratch / "repo", scratch / "log"
    phases: dict[str, float] = {}
    began = time.perf_counter()
    env = {"INITRD": "No"} if one_initramfs else None
    _run(mmdebstrap_argv(options, tree, pool), log, env=env)
    phases["mmdebstrap"] = time.perf_counter() - began
    if one_initramfs:
        mark = time.perf_counter()
        _dracut(tree, log)
        phases["dracut"] = time.perf_counter() - mark
    mark = time.perf_counter()
    _empty(tree / "dev")
    phases["rm dev/*"] = time.perf_counter() - mark
    mark = time.perf_counter()
    _run(["ostree", f"--repo={repo}", "init", "--mode=archive"], log)
    _run(
        [
            "ostree",
            f"--repo={repo}",
            "commit",
            "--branch=baseline",
            "--subject=baseline",
            f"--tree=dir={tree}",
        ],
        log,
    )
    phases["ostree commit"] = time.perf_counter() - mark
    seconds = time.perf_counter() - began
    _files, repo_bytes = tree_size(repo / "objects")
    return BaselineRun(seconds=seconds, phases=phases, repo_bytes=repo_bytes)
