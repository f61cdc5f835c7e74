"""``afield admin``: administer a fleet manager's database directly (API tokens).

``afield admin token create NAME --role admin|viewer --db URL`` makes a bearer token for the
API and prints it once (only its SHA-256 is stored, so it cannot be shown again);
``token ls`` lists tokens without their secrets; ``token revoke NAME`` revokes one for good.
Each migrates the database first, so a token can be made before the server first starts, and
records an event (actor ``system``). Server packages are imported inside the commands.

What it leaves to others: the API that checks the tokens (:mod:`afield.fleet.auth`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import typer

from afield.cli._output import console, print_json
from afield.cli.serve import DbOption

if TYPE_CHECKING:
    from afield.fleet.db import Database

__all__ = ["app"]

app = typer.Typer(help="Administer the fleet manager: API tokens.", no_args_is_help=True)
token_app = typer.Typer(help="Bearer tokens of the fleet manager's API.", no_args_is_help=True)
app.add_typer(token_app, name="token")

JsonOption = typer.Option(False, "--json", help="Print JSON.")


@contextmanager
def _database(url: str) -> Iterator[Database]:
    from afield.fleet.db import Database  # server-only: SQLAlchemy, Alembic

    db = Database(url)
    try:
        db.upgrade()
        yield db
    finally:
        db.close()


def _record(db: Database, kind: str, name: str, details: dict[str, Any]) -> None:
    from afield.fleet.models import Event, utcnow

    with db.transaction() as session:
        event = Event(time=utcnow(), actor="system", kind=kind, subject=f"token:{name}")
        event.details = {"via": "afield admin", **details}
        session.add(event)


@token_app.command("create")
def create(
    name: str = typer.Argument(..., help="A name for the token (who or what uses it)."),
    role: str = typer.Option(..., "--role", help="admin (read and write) or viewer (read)."),
    db: str = DbOption,
    as_json: bool = JsonOption,
) -> None:
    """Make a token and print it: the only time it is shown."""
    from afield.fleet.auth import create_token

    with _database(db) as database:
        token = create_token(database, name, role)
        _record(database, "token.create", name, {"role": role})
    if as_json:
        print_json({"name": name, "role": role, "token": token})
        return
    console.print(token, markup=False, soft_wrap=True)
    console.print(
        f"# {role} token {name!r}: shown once, keep it secret "
        "(send it as 'Authorization: Bearer <token>')",
        markup=False,
        soft_wrap=True,
    )


@token_app.command("ls")
def ls(db: str = DbOption, as_json: bool = JsonOption) -> None:
    """List tokens (names, roles, last use; never the tokens)."""
    from afield.fleet.auth import list_tokens

    with _database(db) as database:
        tokens = list_tokens(database)
    rows = [
        {
            "name": t.name,
            "role": t.role,
            "created": t.created.isoformat(),
            "last_used": None if t.last_used is None else t.last_used.isoformat(),
            "revoked": None if t.revoked is None else t.revoked.isoformat(),
        }
        for t in tokens
    ]
    if as_json:
        print_json({"tokens": rows})
        return
    if not rows:
        console.print("no tokens (afield admin token create NAME --role admin)")
        return
    for row in rows:
        state = f"revoked {row['revoked']}" if row["revoked"] else "active"
        used = row["last_used"] or "never"
        console.print(
            f"{row['name']:<24} {row['role']:<7} {state:<8} last used {used}",
            markup=False,
            soft_wrap=True,
        )


@token_app.command("revoke")
def revoke(
    name: str = typer.Argument(..., help="The token's name."),
    db: str = DbOption,
    as_json: bool = JsonOption,
) -> None:
    """Revoke a token for good: requests with it get 401 from then on."""
    from afield.fleet.auth import revoke_token

    with _database(db) as database:
        changed = revoke_token(database, name)
        if changed:
            _record(database, "token.revoke", name, {})
    if as_json:
        print_json({"name": name, "revoked": True, "already": not changed})
        return
    console.print(
        f"revoked token {name!r}" if changed else f"token {name!r} was revoked already",
        markup=False,
    )
