"""The fleet manager's database: an engine, sessions, and Alembic migrations run from code.

:class:`Database` opens an SQLAlchemy 2 engine for a URL: an SQLite file by default
(``sqlite:///afield-fleet.db``, WAL and ``synchronous=NORMAL`` through
:func:`afield.fdo.server.store.open_engine`) or PostgreSQL with psycopg 3
(``postgresql+psycopg://user@host/db``) when one file is no longer enough. :meth:`Database.upgrade`
brings the schema to the newest migration in :mod:`afield.fleet.migrations`; the server and
``afield admin`` call it before they touch a table, so no ``alembic.ini`` and no separate
migration step is needed. On PostgreSQL the upgrade holds an advisory lock, so several API
processes starting together migrate once.

What it leaves to others: the tables (:mod:`afield.fleet.models`), what is read and written
(the API modules and :mod:`afield.fleet.auth`), backups.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from afield._sql import open_engine
from afield.errors import FleetError

__all__ = ["DEFAULT_URL", "MIGRATIONS", "Database", "DatabaseError", "alembic_config"]

DEFAULT_URL = "sqlite:///afield-fleet.db"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_LOCK_KEY = 0x61666C64  # "afld": the advisory lock that serialises migrations on PostgreSQL


class DatabaseError(FleetError):
    """The fleet database cannot be opened, migrated, read or written; ``url`` names it."""

    def __init__(self, message: str, *, url: str = "") -> None:
        super().__init__(message)
        self.url = url


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for the fleet migrations, using ``connection`` when given.

    Migrations run on the caller's connection (``attributes["connection"]``), so the URL never
    passes through Alembic's ini interpolation (a ``%`` in a password would break it).
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _shown(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except (SQLAlchemyError, ValueError):
        return "the fleet database"


class Database:
    """The fleet database at ``url``: an engine and a session factory.

    Args:
        url: an SQLAlchemy URL; SQLite (the default) or ``postgresql+psycopg://``.

    Raises:
        DatabaseError: the URL does not parse or names a driver that is not installed (a user
            error: it came from ``--db``).
    """

    def __init__(self, url: str = DEFAULT_URL) -> None:
        self.url = url
        try:
            self.engine: Engine = open_engine(url)
        except (SQLAlchemyError, ValueError, ImportError) as e:
            error = DatabaseError(
                f"--db {url!r}: not a database URL this server can open ({e}); expected "
                "sqlite:///PATH or postgresql+psycopg://USER@HOST/NAME",
                url=url,
            )
            error.user_error = True
            raise error from e
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def upgrade(self, revision: str = "head") -> None:
        """Migrate the schema to ``revision`` (the newest by default); a no-op when it is there.

        Raises:
            DatabaseError: the database cannot be reached or a migration fails.
        """
        try:
            with self.engine.begin() as connection:
                if connection.dialect.name == "postgresql":
                    connection.execute(text(f"SELECT pg_advisory_xact_lock({_LOCK_KEY})"))
                command.upgrade(alembic_config(connection), revision)
        except SQLAlchemyError as e:
            raise DatabaseError(
                f"cannot migrate {_shown(self.url)}: {type(e).__name__}: {e}",
                url=self.url,
            ) from e

    def revision(self) -> str | None:
        """The migration the database is at (None before the first :meth:`upgrade`)."""
        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session in a transaction: committed when the block ends, rolled back on error."""
        with self.sessions() as session, session.begin():
            yield session

    def close(self) -> None:
        """Release the engine's connections."""
        self.engine.dispose()
