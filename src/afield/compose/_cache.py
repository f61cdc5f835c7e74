"""The stage cache: checkpointed OS trees and final results, keyed by stage id.

Layout under the cache directory::

    stages/<id>/tree/         a copy of the OS tree after a checkpointed stage
    stages/<id>/facts.json    the facts of every stage up to and including it
    results/<id>.json         the facts of a whole pipeline whose last stage has that id
    debs/                     downloaded Debian packages (owned by the bootstrap stage)

Entries appear atomically (written under a temporary name, then renamed), so a compose that is
killed half-way never leaves a half-written checkpoint behind. Only the most recently used
checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, cast

from afield.errors import ComposeError

__all__ = ["StageCache", "copy_tree"]

KEEP_CHECKPOINTS = 4


def copy_tree(source: Path, target: Path) -> None:
    """Copy an OS tree keeping owners, modes, links, device nodes and xattrs (``cp -a``)."""
    result = subprocess.run(
        ["cp", "-a", "--reflink=auto", f"{source}/.", str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ComposeError(f"cannot copy {source} to {target}: {result.stderr.strip()}")


class StageCache:
    """Checkpoints and results of earlier composes under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.stages = root / "stages"
        self.results = root / "results"

    def has_checkpoint(self, stage_id: str) -> bool:
        """Whether a complete checkpoint for ``stage_id`` exists."""
        entry = self.stages / stage_id
        return (entry / "facts.json").is_file() and (entry / "tree").is_dir()

    def save_checkpoint(self, stage_id: str, tree: Path, facts: dict[str, Any]) -> None:
        """Copy ``tree`` and ``facts`` into the cache as the checkpoint of ``stage_id``."""
        if self.has_checkpoint(stage_id):
            return
        partial = self._partial(stage_id)
        (partial / "tree").mkdir(parents=True)
        copy_tree(tree, partial / "tree")
        self._finish(stage_id, partial, facts)

    def adopt_checkpoint(self, stage_id: str, tree: Path, facts: dict[str, Any]) -> Path:
        """Move ``tree`` itself into the cache (no copy; same filesystem); the cached tree."""
        partial = self._partial(stage_id)
        partial.mkdir(parents=True)
        tree.rename(partial / "tree")
        self._finish(stage_id, partial, facts)
        return self.stages / stage_id / "tree"

    def checkpoint_tree(self, stage_id: str) -> Path:
        """The cached tree of ``stage_id`` (read it, never change it)."""
        self.touch(stage_id)
        return self.stages / stage_id / "tree"

    def facts(self, stage_id: str) -> dict[str, Any]:
        """The facts saved with the checkpoint of ``stage_id``."""
        return cast(dict[str, Any], json.loads((self.stages / stage_id / "facts.json").read_text()))

    def _partial(self, stage_id: str) -> Path:
        partial = self.stages / f".{stage_id}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        self.stages.mkdir(parents=True, exist_ok=True)
        return partial

    def _finish(self, stage_id: str, partial: Path, facts: dict[str, Any]) -> None:
        (partial / "facts.json").write_text(json.dumps(facts, sort_keys=True))
        entry = self.stages / stage_id
        shutil.rmtree(entry, ignore_errors=True)
        partial.rename(entry)

    def restore(self, stage_id: str, tree: Path) -> dict[str, Any]:
        """Copy the checkpoint of ``stage_id`` to ``tree`` (which must not exist); its facts."""
        tree.mkdir(parents=True)
        copy_tree(self.checkpoint_tree(stage_id), tree)
        return self.facts(stage_id)

    def final_facts(self, stage_id: str) -> dict[str, Any] | None:
        """The facts of a finished pipeline whose last stage has ``stage_id``, if recorded."""
        path = self.results / f"{stage_id}.json"
        try:
            return cast(dict[str, Any], json.loads(path.read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def save_final(self, stage_id: str, facts: dict[str, Any]) -> None:
        """Record the facts of a finished pipeline."""
        self.results.mkdir(parents=True, exist_ok=True)
        partial = self.results / f".{stage_id}.partial"
        partial.write_text(json.dumps(facts, sort_keys=True))
        partial.rename(self.results / f"{stage_id}.json")

    def touch(self, stage_id: str) -> None:
        """Mark an entry as just used, so pruning keeps it."""
        for path in (self.stages / stage_id, self.results / f"{stage_id}.json"):
            if path.exists():
                os.utime(path)

    def prune(self, keep: int = KEEP_CHECKPOINTS) -> None:
        """Remove all but the ``keep`` most recently used checkpoints, and stale partials."""
        if not self.stages.is_dir():
            return
        for partial in self.stages.glob(".*.partial"):
            shutil.rmtree(partial, ignore_errors=True)
        entries = sorted(
            (p for p in self.stages.iterdir() if p.is_dir() and not p.name.startswith(".")),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for old in entries[keep:]:
            shutil.rmtree(old, ignore_errors=True)
