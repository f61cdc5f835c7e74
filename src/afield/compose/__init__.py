"""Compose: a blueprint becomes a Debian OS tree, then a reproducible, bootable OSTree commit.

:func:`compose` plans the stages for a blueprint (:mod:`afield.compose.plan`), runs them through
the cached pipeline (:mod:`afield.compose.pipeline`) and lands the commit on the image's ref in
the afield repository. Publishing it as a signed release is left to ``afield.release``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from afield.blueprint import Blueprint
from afield.compose._foreign import ensure_emulation
from afield.compose.pipeline import Facts, Reporter, run_pipeline
from afield.compose.plan import host_target, plan
from afield.compose.stages.ostree_commit import staging_repo_path
from afield.errors import ComposeError
from afield.image import open_repository
from afield.ostree import Repo

__all__ = ["ComposeResult", "compose", "default_cache_dir"]


def default_cache_dir() -> Path:
    """``$AFIELD_CACHE_DIR``, else ``$XDG_CACHE_HOME/afield``, else ``~/.cache/afield``."""
    if os.environ.get("AFIELD_CACHE_DIR"):
        return Path(os.environ["AFIELD_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "afield"


@dataclass(frozen=True)
class ComposeResult:
    """What a compose produced and how: the commit, and which stages ran or came from cache."""

    commit: str
    ref: str
    version: str
    ran: tuple[str, ...]
    cached: tuple[str, ...]
    stage_seconds: dict[str, float]


def compose(
    blueprint: Blueprint,
    repo_dir: Path,
    *,
    cache_dir: Path | None = None,
    ref: str | None = None,
    reporter: Reporter | None = None,
    use_cache: bool = True,
    arch: str | None = None,
) -> ComposeResult:
    """Compose ``blueprint`` into the afield repository ``repo_dir`` and return the commit.

    ``arch`` (``x86_64``/``aarch64``, default this machine's) is the architecture to build for;
    a foreign one runs package scripts through qemu-user-static.

    On any failure the repository's refs are unchanged (the commit and ref move happen in one
    OSTree transaction at the very end).
    """
    if os.geteuid() != 0:
        raise ComposeError(
            "compose needs root (mmdebstrap --mode=root, chroot); run it as root", user_error=True
        )
    cache = cache_dir or default_cache_dir()
    target = host_target(blueprint.distro, arch)
    ensure_emulation(target.debian_arch)
    specs = plan(blueprint, target, ref=ref)
    repo = open_repository(repo_dir, create=True)
    wanted_ref = str(specs[-1].options["ref"])

    staging = staging_repo_path(cache)

    def still_available(facts: Facts) -> bool:
        commit = facts.get("commit")
        if not isinstance(commit, str):
            return False
        if repo.has_commit(commit):
            return True
        return (staging / "config").is_file() and Repo.open(staging).has_commit(commit)

    result = run_pipeline(
        specs,
        cache_dir=cache,
        reporter=reporter,
        extra={"repo": repo},
        is_reusable=still_available,
        use_cache=use_cache,
    )
    commit = str(result.facts["commit"])
    if not result.ran:
        # Everything came from the cache: the commit is in the repository or the staging repo.
        if not repo.has_commit(commit):
            repo.pull_local(Repo.open(staging), commit)
        repo.set_ref(wanted_ref, commit)
    return ComposeResult(
        commit=commit,
        ref=wanted_ref,
        version=blueprint.version,
        ran=result.ran,
        cached=result.cached,
        stage_seconds=dict(result.stage_seconds),
    )
