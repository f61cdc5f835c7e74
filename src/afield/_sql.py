"""SQLAlchemy engines the way every afield server opens them, and times read back from them.

Shared by the FDO stores (:mod:`afield.fdo.server`) and the fleet manager (:mod:`afield.fleet`).

What it leaves to others: tables, sessions and migrations (each server's own).
"""

from __future__ import annotations

import datetime
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url

__all__ = ["as_utc", "open_engine"]


_POOL_SIZE = 20  # connections kept open
_POOL_OVERFLOW = 20  # opened beyond those when needed, closed when returned
_BUSY_MS = 30_000  # how long an SQLite write waits for the writer before it fails


def open_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get WAL and ``synchronous=NORMAL``.

    In WAL mode readers do not wait for the writer and a commit costs one fsync of the log
    instead of two of the database and its journal; with ``NORMAL`` a power cut may lose the
    last commits but never corrupts the file. Foreign keys are enforced (SQLite leaves them off
    unless asked), as PostgreSQL does. Every store opens its engine here, the fleet manager's too.

    The pool keeps as many connections as the servers' worker threads (anyio's 40) may use at
    once: with SQLAlchemy's default of 5 (and 10 more opened and closed on demand), a busy
    server connected to PostgreSQL anew for most requests, a new backend process each time.
    SQLite has one writer: the others wait up to 30 s for it (Python's default is 5 s, which
    10,000 devices enrolling at once through 40 threads overran: "database is locked").
    """
    memory = make_url(url).database in (None, "", ":memory:")  # one connection, no pool to size
    sizes = {} if memory else {"pool_size": _POOL_SIZE, "max_overflow": _POOL_OVERFLOW}
    engine = create_engine(url, **sizes)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _pragmas(connection: Any, record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
            cursor.close()

    return engine


def as_utc(value: datetime.datetime) -> datetime.datetime:
    """A time read back from a store, in UTC: SQLite keeps no zone (what was written in UTC
    comes back naive), PostgreSQL answers in the session's zone."""
    if value.tzinfo is None:
        return value.replace(tzinfo=datetime.UTC)
    return value.astimezone(datetime.UTC)
