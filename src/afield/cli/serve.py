"""``afield serve``: run the fleet manager (API, ``/repo/``, ``/metrics``, ``/healthz``, ``/docs``).

The command migrates the database (``--db``, an SQLite file by default, or
``postgresql+psycopg://...``), then serves until interrupted and prints ``fleet manager serving
on URL`` once it listens (``--port 0`` picks a free port). The server packages (FastAPI,
SQLAlchemy, uvicorn) are imported only here, when the command runs, because a device's
``afield`` has none of them.

With ``--fdo-pki`` it also serves FDO's rendezvous and owner (devices made by a manufacturer
whose vouchers name this server onboard here, then enroll), see :mod:`afield.fleet.fdo`.

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


def _labels(values: list[str]) -> dict[str, str]:
    labels = {}
    for value in values:
        key, sep, label = value.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{value!r}: expected KEY=VALUE", param_hint="--fdo-label")
        labels[key] = label
    return labels


def serve_command(
    db: str = DbOption,
    repo: Path | None = typer.Option(
        None, "--repo", help="An afield repository to serve at /repo/ (optional)."
    ),
    repo_url: str | None = typer.Option(
        None, "--repo-url", help="Where devices fetch updates (default: /repo/ of this server)."
    ),
    offline_after: float = typer.Option(
        300.0, "--offline-after", min=1, help="Seconds without a check-in before Offline."
    ),
    poll_seconds: int = typer.Option(
        30, "--poll-seconds", min=1, max=86400, help="How often devices are told to poll."
    ),
    runner_interval: float = typer.Option(
        2.0, "--runner-interval", min=0, max=3600, help="Seconds between rollout steps."
    ),
    fdo_pki: Path | None = typer.Option(
        None,
        "--fdo-pki",
        help="Serve FDO's rendezvous and owner here with this PKI (afield fdo init).",
    ),
    trust_manufacturers: list[Path] = typer.Option(
        [],
        "--fdo-trust-manufacturer",
        help="A manufacturer certificate whose vouchers are accepted (default: the PKI's).",
    ),
    fdo_labels: list[str] = typer.Option(
        [], "--fdo-label", help="KEY=VALUE given to devices that onboard here (repeatable)."
    ),
    public_url: str | None = typer.Option(
        None,
        "--public-url",
        help="Where devices reach this server (default: the address it listens on).",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8080, "--port", help="Port to listen on (0: any free port)."),
) -> None:
    """Serve the fleet manager: the admin and device API under /api/v1, and optionally the
    update repository at /repo/ and FDO onboarding at /fdo/."""
    from afield._serving import serve
    from afield.fleet.app import FleetSettings, create_app
    from afield.fleet.fdo import FdoSettings

    fdo = None
    if fdo_pki is not None:
        fdo = FdoSettings(
            pki_dir=fdo_pki,
            trust_manufacturers=tuple(trust_manufacturers),
            labels=_labels(fdo_labels),
            public_url=public_url,
        )
    settings = FleetSettings(
        db_url=db,
        repo_dir=repo,
        repo_url=repo_url,
        offline_after=offline_after,
        poll_seconds=poll_seconds,
        runner_interval=runner_interval,
        fdo=fdo,
    )
    app = create_app(settings)

    def ready(url: str) -> None:
        if app.state.fdo is not None and public_url is None:
            app.state.fdo.ready(url)
        console.print(f"fleet manager serving on {url}", soft_wrap=True)
        console.print(
            f"dashboard: {url}/ (log in with a token from `afield admin token create`)",
            soft_wrap=True,
        )

    serve(app, host=host, port=port, on_ready=ready)
