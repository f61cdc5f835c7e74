"""Whatever a browser sends, the dashboard answers a page, never a traceback.

Query strings of every page's filters, path ids and form bodies are untrusted: hypothesis sends
arbitrary text (control characters, NUL, surrogate-free Unicode, very long values) and bytes,
logged in as an admin (so forms reach their checks), and every answer must be below 500, HTML,
and never echo a ``<`` it was sent. The app runs on uvicorn on 127.0.0.1 with a real SQLite file
holding a device, a release, a fleet and a rollout, so the filters have rows to read.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from urllib.parse import quote, urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from afield._serving import running
from afield.fleet.app import FleetSettings, create_app
from afield.fleet.auth import create_token
from afield.fleet.models import Device, Fleet, Release, Rollout, state_to_json
from afield.fleet.rollout import RolloutState
from tests.web import NOW

PAGES = {
    "/devices": ("label", "status", "version", "seen", "after"),
    "/events": ("kind", "actor", "subject", "since", "until", "before"),
    "/rollouts": ("status", "fleet", "before"),
    "/releases": ("image", "arch"),
    "/login": ("next",),
}
TEXT = st.text(max_size=300)
MARK = "<fz"  # a tag start no page writes: if it comes back unescaped, escaping failed


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A logged-in admin's browser on a fleet manager shared by this module's tests."""
    directory = tmp_path_factory.mktemp("fuzz")
    app = create_app(FleetSettings(db_url=f"sqlite:///{directory / 'fleet.db'}", runner_interval=0))
    token = create_token(app.state.db, "ops", "admin")
    release = Release(image="gateway", arch="x86_64", version="1.0", commit="1" * 64, created=NOW)
    fleet = Fleet(name="berlin", selector="site=berlin", policy={}, created=NOW, updated=NOW)
    with app.state.db.transaction() as session:
        session.add_all(
            [
                release,
                fleet,
                Rollout(
                    fleet=fleet,
                    release=release,
                    status="running",
                    state=state_to_json(RolloutState()),
                    created=NOW,
                    updated=NOW,
                ),
                Device(
                    id="gw-1",
                    labels={"site": "berlin"},
                    last_seen=NOW - datetime.timedelta(seconds=5),
                    current_version="1.0",
                ),
            ]
        )
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as browser:
        answer = browser.post("/login", data={"token": token})
        assert answer.status_code == 303, answer.text
        yield browser
    app.state.db.close()


def _check(answer: httpx.Response) -> None:
    assert answer.status_code < 500, answer.text[:500]
    if answer.status_code in (303, 307):  # logged in already; a trailing slash dropped
        location = urlsplit(answer.headers["location"])
        assert location.netloc in ("", answer.request.url.netloc.decode()), location
        assert location.path.startswith("/") and not location.path.startswith("//"), location
        return
    assert answer.headers.get("content-type", "").startswith("text/html"), answer.headers
    assert MARK not in answer.text


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    page=st.sampled_from(sorted(PAGES)),
    values=st.lists(TEXT, min_size=1, max_size=6),
    marked=st.booleans(),
)
def test_any_filter_gets_a_page(
    client: httpx.Client, page: str, values: list[str], marked: bool
) -> None:
    names = PAGES[page]
    params: list[tuple[str, str | int | float | bool | None]] = [
        (names[i % len(names)], (MARK + v) if marked else v) for i, v in enumerate(values)
    ]
    answer = client.get(page, params=params)
    _check(answer)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    where=st.sampled_from(["/devices/", "/rollouts/", "/rollouts/1/", "/no/"]),
    part=st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=200),
)
def test_any_path_gets_a_page(client: httpx.Client, where: str, part: str) -> None:
    answer = client.get(where + quote(part, safe=""))
    _check(answer)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    action=st.sampled_from(["pause", "resume", "approve", "abort", "nothing"]),
    body=st.one_of(st.binary(max_size=600), TEXT.map(str.encode)),
    kind=st.sampled_from(["application/x-www-form-urlencoded", "text/plain", ""]),
)
def test_any_form_gets_a_page_and_changes_nothing_without_its_csrf(
    client: httpx.Client, action: str, body: bytes, kind: str
) -> None:
    headers = {"content-type": kind} if kind else {}
    answer = client.post(f"/rollouts/1/{action}", content=body, headers=headers)
    _check(answer)
    assert answer.status_code >= 400  # no CSRF field of this session: nothing happened
    assert "running" in client.get("/rollouts/1").text
