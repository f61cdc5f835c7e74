"""Alembic's environment for the fleet manager's migrations (run by :mod:`afield.fleet.db`).

It migrates on the connection the caller put in ``config.attributes["connection"]`` (what
:meth:`afield.fleet.db.Database.upgrade` does), or on an engine for ``sqlalchemy.url`` when the
``alembic`` command runs it. SQLite gets batch mode, since it alters tables by copying them.

What it leaves to others: the migrations (``versions/``), the tables (:mod:`afield.fleet.models`).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from afield._sql import open_engine
from afield.fleet.models import metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    given = context.config.attributes.get("connection")
    if given is not None:
        _run(given)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url or pass a connection in config.attributes")
    engine = open_engine(url)
    try:
        with engine.begin() as connection:
            _run(connection)
    finally:
        engine.dispose()


_main()
