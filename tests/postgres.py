"""A throwaway PostgreSQL cluster for tests: ``initdb`` in a directory under /var/tmp as the
``postgres`` user, ``pg_ctl`` on 127.0.0.1 and a free port, trust authentication, stopped at
the end. Each test gets a database of its own (:func:`new_database`).

Needs root (to run the server as ``postgres``) and Debian's ``postgresql`` package, which the
bootstrap installs; a test that uses it is marked ``root``.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

__all__ = ["cluster", "new_database"]


def _bin(name: str) -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: p.parts)
    if not found:
        raise RuntimeError(f"no PostgreSQL {name}: install Debian's postgresql (make bootstrap)")
    return found[-1]


def _as_postgres(*args: str | Path) -> None:
    result = subprocess.run(
        ["runuser", "-u", "postgres", "--", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{args[0]} failed:\n{result.stdout}\n{result.stderr}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def cluster() -> Iterator[str]:
    """Run a cluster; yield the admin URL (SQLAlchemy, psycopg 3 driver).

    Its directory is under ``/var/tmp``, not pytest's ``tmp_path``: the server runs as
    ``postgres``, which cannot enter root's private temporary directories.
    """
    directory = Path(tempfile.mkdtemp(prefix="afield-postgres-", dir="/var/tmp"))
    shutil.chown(directory, "postgres", "postgres")
    data, log = directory / "data", directory / "server.log"
    _as_postgres(_bin("initdb"), "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
    port = _free_port()
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {directory} -c fsync=off"
    _as_postgres(_bin("pg_ctl"), "-D", data, "-l", log, "-o", options, "-w", "start")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        _as_postgres(_bin("pg_ctl"), "-D", data, "-m", "fast", "-w", "stop")
        shutil.rmtree(directory, ignore_errors=True)


def new_database(admin_url: str) -> str:
    """Create an empty database on the cluster of ``admin_url``; its URL."""
    name = f"test_{secrets.token_hex(6)}"
    plain = admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return admin_url.rsplit("/", 1)[0] + f"/{name}"
