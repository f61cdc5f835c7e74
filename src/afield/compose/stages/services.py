"""Stage afield.services: enable, disable and mask systemd units offline.

Uses ``systemctl --root`` against the tree, so unit files and their ``[Install]`` sections decide
what links are made, exactly as on a running system. A unit the image does not have is a user
error naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from afield.compose._tree import run as run_command
from afield.compose.pipeline import Facts, StageContext
from afield.errors import ComposeError, StageError

NAME = "afield.services"
CHECKPOINT = False


def _unit_exists(ctx: StageContext, unit: str) -> bool:
    for base in ("etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system"):
        if (ctx.tree / base / unit).exists() or (ctx.tree / base / unit).is_symlink():
            return True
    if "@" in unit:
        template = unit.split("@", 1)[0] + "@." + unit.rsplit(".", 1)[-1]
        return any((ctx.tree / b / template).exists() for b in ("usr/lib/systemd/system",))
    return False


def run(ctx: StageContext, options: Mapping[str, Any]) -> Facts:
    """Apply enable/disable/mask; facts ``services`` (what was asked, per action)."""
    for action in ("enabled", "disabled"):
        missing = [u for u in options[action] if not _unit_exists(ctx, u)]
        if missing:
            raise StageError(
                NAME,
                f"customizations.services.{action}: no such unit in the image: "
                f"{', '.join(missing)} (install the package that ships it)",
                user_error=True,
            )
    verbs = (("enabled", "enable"), ("disabled", "disable"), ("masked", "mask"))
    for action, verb in verbs:
        if not options[action]:
            continue
        try:
            run_command(
                ["systemctl", f"--root={ctx.tree}", "--no-reload", verb, *options[action]],
                log=ctx.log,
            )
        except ComposeError as e:
            raise StageError(NAME, f"systemctl {verb} failed: {e.message}") from e
    return {"services": {a: list(options[a]) for a, _ in verbs}}
