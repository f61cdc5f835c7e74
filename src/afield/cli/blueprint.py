"""``afield blueprint``: check blueprint files before composing them."""

from __future__ import annotations

from pathlib import Path

import typer

from afield import blueprint as bp
from afield.cli._output import console, print_json

app = typer.Typer(help="Work with blueprint files.", no_args_is_help=True)


@app.command("validate")
def validate(
    file: Path = typer.Argument(..., help="The blueprint TOML file."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Validate a blueprint and report every problem at once (exit 2 if any)."""
    blueprint = bp.load(file)
    summary = {
        "file": str(file),
        "name": blueprint.name,
        "version": blueprint.version,
        "distro": blueprint.distro,
        "packages": len(blueprint.packages),
        "sha256": blueprint.sha256,
        "valid": True,
    }
    if as_json:
        print_json(summary)
    else:
        console.print(
            f"{file}: valid blueprint {blueprint.name} {blueprint.version} "
            f"({blueprint.distro}, {len(blueprint.packages)} packages)"
        )
