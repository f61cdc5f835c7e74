"""The stage cache and the workspace: checkpoints are kept intact while later stages write."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from afield.compose._cache import StageCache
from afield.compose._workspace import Workspace, clean_stale

pytestmark = pytest.mark.root


def _space(tmp_path: Path, name: str = "w") -> Workspace:
    workdir = tmp_path / "cache" / "work" / name
    workdir.mkdir(parents=True)
    return Workspace(workdir)


def test_checkpoint_moves_the_tree_into_the_cache_and_later_writes_leave_it_intact(
    tmp_path: Path,
) -> None:
    cache = StageCache(tmp_path / "cache")
    space = _space(tmp_path)
    space.start_empty()
    (space.tree / "etc").mkdir()
    (space.tree / "etc" / "hostname").write_text("base\n")
    space.checkpoint(cache, "a" * 64, {"kernel": "6.1"})
    try:
        assert cache.has_checkpoint("a" * 64)
        assert cache.facts("a" * 64) == {"kernel": "6.1"}
        # Later stages change the tree in place, rename directories and delete files.
        (space.tree / "etc" / "hostname").write_text("changed\n")
        (space.tree / "etc" / "hostname").unlink()
        (space.tree / "new").write_text("x")
    finally:
        space.close()
    cached = cache.checkpoint_tree("a" * 64)
    assert (cached / "etc" / "hostname").read_text() == "base\n"
    assert not (cached / "new").exists()


def test_workspace_uses_overlayfs_on_this_machine(tmp_path: Path) -> None:
    # Without overlayfs every resume would copy the whole tree (seconds per compose).
    cache = StageCache(tmp_path / "cache")
    space = _space(tmp_path)
    space.start_empty()
    space.checkpoint(cache, "b" * 64, {})
    try:
        assert space.overlay
        assert os.path.ismount(space.tree)
    finally:
        space.close()
    assert not space.tree.exists()


def test_resume_starts_from_the_checkpoint_content(tmp_path: Path) -> None:
    cache = StageCache(tmp_path / "cache")
    first = _space(tmp_path, "one")
    first.start_empty()
    (first.tree / "f").write_text("from checkpoint")
    first.checkpoint(cache, "c" * 64, {"n": 1})
    first.close()
    second = _space(tmp_path, "two")
    second.start_from(cache.checkpoint_tree("c" * 64))
    try:
        assert (second.tree / "f").read_text() == "from checkpoint"
    finally:
        second.close()


def test_stale_workspaces_of_a_killed_compose_are_cleaned(tmp_path: Path) -> None:
    cache = StageCache(tmp_path / "cache")
    space = _space(tmp_path)
    space.start_empty()
    space.checkpoint(cache, "d" * 64, {})
    assert os.path.ismount(space.tree)
    # The process dies here: no close(). The next compose cleans up.
    clean_stale(tmp_path / "cache" / "work")
    assert not os.path.ismount(space.tree)
    assert list((tmp_path / "cache" / "work").iterdir()) == []
    assert cache.has_checkpoint("d" * 64)


def test_prune_keeps_the_most_recently_used_checkpoints(tmp_path: Path) -> None:
    cache = StageCache(tmp_path / "cache")
    for i in range(6):
        tree = tmp_path / f"t{i}"
        tree.mkdir()
        cache.save_checkpoint(f"{i}" * 64, tree, {})
        os.utime(cache.stages / (f"{i}" * 64), (1000 + i, 1000 + i))
    cache.touch("0" * 64)
    cache.prune(keep=2)
    assert sorted(p.name[0] for p in cache.stages.iterdir()) == ["0", "5"]


def test_a_partial_checkpoint_is_never_taken_for_a_complete_one(tmp_path: Path) -> None:
    # A compose killed while saving leaves only a .partial directory behind.
    cache = StageCache(tmp_path / "cache")
    partial = cache.stages / f".{'e' * 64}.partial"
    (partial / "tree").mkdir(parents=True)
    (partial / "facts.json").write_text(json.dumps({}))
    assert not cache.has_checkpoint("e" * 64)
    cache.prune()
    assert not partial.exists()
