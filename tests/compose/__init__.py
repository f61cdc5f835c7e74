"""Helpers shared by the compose tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from afield.compose.pipeline import StageContext, load_stage


def run_stage(name: str, tree: Path, options: dict[str, Any]) -> dict[str, Any]:
    """Run stage ``name`` on ``tree`` with ``options``, outside a pipeline; its facts."""
    ctx = StageContext(
        tree=tree,
        workdir=tree.parent,
        cache_dir=tree.parent / "cache",
        facts={},
        log=lambda _: None,
    )
    return load_stage(name).run(ctx, options)
