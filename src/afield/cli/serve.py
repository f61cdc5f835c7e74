"""``afield serve``: run the fleet manager (API, ``/repo/``, ``/metrics``, ``/healthz``, ``/docs``).

The command migrates the database (``--db``, an SQLite file by default, or
``postgresql+psycopg://...``), then serves until interrupted and prints ``fleet manager serving
on URL`` once it listens (``--port 0`` picks a free port). The server packages (FastAPI,
SQLAlchemy, uvicorn) are imported only here, when the command runs, because a device's
``afield`` has none of them.

What it leaves to others: the app (:mod:`afield.fleet.app`), tokens (``afield admin token``),
TLS (a reverse proxy in front).
"""

from __future__ import annotations

from pathlib import Path

import typer

from afield.cli._output import console

__all__ = ["DbOption", "serve_command"]

DbOption = typer.Option(
    "sqlite:///afield-fleet.db",
    "--db",
    envvar="AFIELD_DB",
    help="The fleet database (SQLAlchemy URL: sqlite:///FILE or postgresql+psycopg://...).",
)


def serve_command(
    db: str = DbOption,
    repo: Path | None = typer.Option(
        None, "--repo", help="An afield repository to serve at /repo/ (optional)."
    ),
    offline_after: float = typer.Option(
        300.0, "--offline-after", min=1, help="Seconds without a check-in before Offline."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8080, "--port", help="Port to listen on (0: any free port)."),
) -> None:
    """Serve the fleet manager: devices, fleets, releases, rollouts and events under /api/v1."""
    from afield._serving import serve
    from afield.fleet.app import FleetSettings, create_app

    settings = FleetSettings(db_url=db, repo_dir=repo, offline_after=offline_after)
    app = create_app(settings)
    serve(
        app,
        host=host,
        port=port,
        on_ready=lambda url: console.print(f"fleet manager serving on {url}", soft_wrap=True),
    )
