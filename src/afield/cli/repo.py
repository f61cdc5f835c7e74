"""``afield repo``: serve an afield repository (DIR/ostree + DIR/tuf) over HTTP."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer

from afield.cli._output import console

app = typer.Typer(help="Serve an afield repository to devices.", no_args_is_help=True)


@app.command("serve")
def serve_command(
    repo: Path = typer.Option(..., "--repo", help="The afield repository (DIR/ostree + DIR/tuf)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8080, "--port", help="Port to listen on (0 picks a free one)."),
) -> None:
    """Serve DIR/ostree and DIR/tuf over HTTP until interrupted; logs one JSON line a request."""
    # The server side is an optional extra: import it only when serving.
    from afield.release.serve import ACCESS_LOGGER, run

    access = logging.getLogger(ACCESS_LOGGER)
    if not access.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False

    def ready(url: str) -> None:
        console.print(f"serving {repo} at {url} (ostree: {url}ostree, tuf: {url}tuf)")

    run(repo, host=host, port=port, on_ready=ready)
