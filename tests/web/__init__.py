"""Shared by the dashboard's tests: a fleet manager on 127.0.0.1 and browsers logged in to it.

:func:`site` serves the fleet manager's app (dashboard included) with real uvicorn on a real
SQLite file (or a given database URL), with an admin and a viewer token. :meth:`Site.login`
is an ``httpx`` client that logged in through the login form like a browser (its cookie jar
holds the session); :meth:`Site.csrf` reads the CSRF field of a page, as a form would send it.
:func:`image_commit` commits a small image with package metadata for release pages;
:func:`rollout_rows` makes a fleet with rollouts in given states.
Tests put rows in the database directly (:meth:`Site.add`) and read the pages.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from afield._serving import running
from afield.fleet.app import FleetSettings, create_app
from afield.fleet.auth import create_token
from afield.fleet.db import Database
from afield.fleet.models import Fleet, Release, Rollout, state_to_json
from afield.fleet.rollout import RolloutState
from afield.image import open_repository
from tests.device.images import KERNEL, build_tree

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Site:
    """A served fleet manager with its dashboard, and its tokens."""

    url: str
    db: Database
    admin_token: str
    viewer_token: str
    clients: list[httpx.Client] = field(default_factory=list)

    def add(self, *rows: Any) -> None:
        """Store rows (devices, releases...) in one transaction."""
        with self.db.transaction() as session:
            session.add_all(rows)

    def client(self) -> httpx.Client:
        """A browser without a session (closed with the site)."""
        client = httpx.Client(base_url=self.url, follow_redirects=False, timeout=30)
        self.clients.append(client)
        return client

    def login(self, role: str = "admin") -> httpx.Client:
        """A browser logged in through the form with the ``role``'s token."""
        client = self.client()
        token = self.admin_token if role == "admin" else self.viewer_token
        answer = client.post("/login", data={"token": token, "next": "/"})
        assert answer.status_code == 303, answer.text
        return client

    @staticmethod
    def csrf(page: httpx.Response) -> str:
        """The CSRF field a form of ``page`` would send."""
        found = _CSRF.search(page.text)
        assert found is not None, page.text[:500]
        return found.group(1)


@contextmanager
def site(
    directory: Path,
    *,
    db_url: str | None = None,
    repo_dir: Path | None = None,
    clock: Callable[[], datetime.datetime] = lambda: NOW,
    runner_interval: float = 0,
) -> Iterator[Site]:
    """Serve a fleet manager with its dashboard on 127.0.0.1; see the module docstring."""
    settings = FleetSettings(
        db_url=db_url or f"sqlite:///{directory / 'fleet.db'}",
        repo_dir=repo_dir,
        runner_interval=runner_interval,
        clock=clock,
    )
    app = create_app(settings)
    db: Database = app.state.db
    admin_token = create_token(db, "ops", "admin")
    viewer_token = create_token(db, "watcher", "viewer")
    served = None
    try:
        with running(app) as url:
            served = Site(url, db, admin_token, viewer_token)
            yield served
    finally:
        for client in served.clients if served is not None else []:
            client.close()
        db.close()


def image_commit(
    directory: Path, work: Path, version: str, packages: dict[str, str], size: int, image: str
) -> str:
    """Commit a small tree as ``image`` ``version`` into the afield repository ``directory``,
    with the metadata ``afield compose`` writes (``packages``, ``size``, the kernel)."""
    tree = build_tree(work / f"{image}-{version}", version=version)
    return open_repository(directory, create=True).commit_tree(
        tree,
        subject=f"{image} {version}",
        metadata={
            "version": version,
            "afield.image": image,
            "afield.arch": "x86_64",
            "afield.packages": [f"{name}={v}" for name, v in packages.items()],
            "afield.size": size,
            "ostree.linux": KERNEL,
        },
        timestamp=1767225600,
        ref=f"afield/{image}/x86_64/stable-{version}",
    )


def rollout_rows(*states: RolloutState, batches: list[Any] | None = None) -> list[Any]:
    """Rows for :meth:`Site.add`: release gateway 2.0, fleet ``berlin`` (``site=berlin``, its
    policy's ``batches``) and one rollout of it to that release per state, ids from 1."""
    release = Release(image="gateway", arch="x86_64", version="2.0", commit="2" * 64, created=NOW)
    fleet = Fleet(
        name="berlin",
        selector="site=berlin",
        target_release=release,
        policy={"batches": batches or [1, "100%"]},
        created=NOW,
        updated=NOW,
    )
    made = [
        Rollout(
            fleet=fleet,
            release=release,
            status=state.status.value,
            state=state_to_json(state),
            created=NOW,
            updated=NOW,
        )
        for state in states
    ]
    return [release, fleet, *made]
