"""``afield compose``: build an image from a blueprint into an afield repository."""

from __future__ import annotations

from pathlib import Path

import typer

from afield import blueprint as bp
from afield.cli._output import console, err_console, print_json
from afield.cli._progress import StageProgress


def compose_command(
    blueprint_file: Path = typer.Argument(..., metavar="BLUEPRINT", help="Blueprint TOML file."),
    repo: Path = typer.Option(..., "--repo", help="The afield repository (created if missing)."),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", help="Stage and package cache [default: ~/.cache/afield]."
    ),
    ref: str | None = typer.Option(
        None, "--ref", help="OSTree ref [default: afield/<name>/<arch>/<stream>]."
    ),
    arch: str | None = typer.Option(
        None, "--arch", help="Build for x86_64 or aarch64 [default: this machine's]."
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Run every stage; save nothing."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print the stages' output."),
    as_json: bool = typer.Option(False, "--json", help="Print {commit, ref, version} as JSON."),
) -> None:
    """Compose BLUEPRINT into an OSTree commit in REPO/ostree on the image's ref."""
    # Builder-only code: imported when used, so `afield` starts on a device without it.
    from afield.compose import compose, default_cache_dir

    blueprint = bp.load(blueprint_file)
    with StageProgress(err_console, verbose=verbose) as progress:
        result = compose(
            blueprint,
            repo,
            cache_dir=cache_dir or default_cache_dir(),
            ref=ref,
            reporter=progress,
            use_cache=not no_cache,
            arch=arch,
        )
    if as_json:
        print_json({"commit": result.commit, "ref": result.ref, "version": result.version})
    else:
        console.print(f"{result.ref} {result.version} -> {result.commit}")
