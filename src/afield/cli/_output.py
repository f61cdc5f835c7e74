"""Output helpers shared by the CLI's command modules: consoles and JSON printing."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

__all__ = ["console", "err_console", "print_json"]

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def print_json(data: Any) -> None:
    """Print ``data`` as indented, key-sorted JSON on stdout (never through rich markup)."""
    print(json.dumps(data, indent=2, sort_keys=True))
