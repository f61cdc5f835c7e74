"""Stage afield.ostree.commit: commit the prepared tree to the afield repository's OSTree repo.

The commit is deterministic: no parent, the time from SOURCE_DATE_EPOCH, sorted metadata, so the
same tree gives the same checksum. It is written first to a bare repository in the compose cache
(no compression, and files already there cost only a checksum), then pulled into the archive
repository, which compresses only the objects it does not have yet. Metadata follows DESIGN.md:
``version``, ``afield.blueprint.sha256``, ``afield.packages`` (``name=version``), plus the kernel
(``ostree.linux``), ``ostree.bootable``, the ref binding, kernel arguments and image size. The ref
moves only after the pull succeeded, so a failed compose leaves the repository's refs as
they were.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from afield.compose.pipeline import Facts, StageContext
from afield.errors import RepositoryError, StageError
from afield.ostree import Repo

NAME = "afield.ostree.commit"
CHECKPOINT = False


def staging_repo_path(cache_dir: Path) -> Path:
    """The bare repository in the compose cache where commits are written first."""
    return cache_dir / "ostree-bare"


def run(ctx: StageContext, options: Mapping[str, Any]) -> Facts:
    """Write the commit and move the ref; facts ``commit``, ``ref``, ``version``."""
    repo = ctx.extra.get("repo")
    if not isinstance(repo, Repo):
        raise StageError(NAME, "no target repository given to the pipeline")
    packages: Mapping[str, str] = ctx.facts.get("packages", {})
    metadata: dict[str, Any] = {
        "version": options["version"],
        "afield.image": options["image"],
        "afield.arch": options["arch"],
        "afield.blueprint.sha256": options["blueprint_sha256"],
        "afield.packages": [f"{name}={version}" for name, version in sorted(packages.items())],
        "afield.kargs": list(options["kernel_args"]),
        "afield.size": int(ctx.facts.get("size", 0)),
        "ostree.bootable": True,
        "ostree.linux": str(ctx.facts.get("kernel", "")),
        "ostree.ref-binding": [options["ref"]],
    }
    try:
        staging = Repo.create(staging_repo_path(ctx.cache_dir), mode="bare")
        checksum = staging.commit_tree(
            ctx.tree,
            subject=f"{options['image']} {options['version']}",
            metadata=metadata,
            timestamp=options["source_date_epoch"],
        )
        repo.pull_local(staging, checksum)
        repo.set_ref(options["ref"], checksum)
    except RepositoryError as e:
        raise StageError(NAME, e.message) from e
    ctx.log(f"committed {checksum} as {options['ref']}")
    return {"commit": checksum, "ref": options["ref"], "version": options["version"]}
