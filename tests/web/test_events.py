"""The audit trail page: filters, pages, malformed filters and escaping, against a real server.

Events go into the database directly, at times relative to :data:`tests.web.NOW`.
"""

from __future__ import annotations

import datetime
import html
import re
from typing import Any

import httpx

from afield.fleet.models import Event
from tests.web import NOW, Site


def _event(
    kind: str,
    subject: str,
    *,
    actor: str = "admin:ops",
    minutes_ago: float = 0,
    details: dict[str, Any] | None = None,
) -> Event:
    return Event(
        time=NOW - datetime.timedelta(minutes=minutes_ago),
        actor=actor,
        kind=kind,
        subject=subject,
        details=details or {},
    )


def _shown(page: httpx.Response) -> list[str]:
    """The (kind, subject) of each event row, in order, as ``kind subject``."""
    assert page.status_code == 200, page.text[:500]
    kind = r'<td class="kind">.*?<code>([^<]+)</code>'
    subject = r'<td class="subject">(?:<a href="[^"]*">)?([^<]+)'
    rows = re.findall(f"{kind}.*?{subject}", page.text, re.S)
    return [f"{kind} {html.unescape(subject).strip()}" for kind, subject in rows]


def _trail(web: Site) -> None:
    web.add(
        _event("fleet.create", "berlin", minutes_ago=60 * 24 * 3, details={"selector": "site=b"}),
        _event("rollout.start", "rollout:1", minutes_ago=60 * 24),
        _event("device.booted", "device:gw-1", actor="device:gw-1", minutes_ago=90),
        _event("device.rolled_back", "device:gw-2", actor="device:gw-2", minutes_ago=30),
        _event("rollout.paused", "rollout:1", actor="system", minutes_ago=20),
        _event("rollout.start", "rollout:12", minutes_ago=10),
        _event("rollout.pause", "rollout:1", minutes_ago=5, details={"reason": "lunch"}),
    )


def test_the_trail_is_newest_first_with_details_and_links(web: Site) -> None:
    _trail(web)
    page = web.login("viewer").get("/events")
    assert _shown(page) == [
        "rollout.pause rollout:1",
        "rollout.start rollout:12",
        "rollout.paused rollout:1",
        "device.rolled_back device:gw-2",
        "device.booted device:gw-1",
        "rollout.start rollout:1",
        "fleet.create berlin",
    ]
    assert "reason:</span> lunch" in page.text and "selector:</span> site=b" in page.text
    assert 'href="/rollouts/12"' in page.text and 'href="/devices/gw-2"' in page.text
    assert '<option value="rollout.approve">' in page.text  # the known kinds are offered


def test_kind_actor_and_subject_filters_match_exactly_or_by_prefix(web: Site) -> None:
    _trail(web)
    client = web.login("viewer")
    assert _shown(client.get("/events", params={"kind": "rollout.start"})) == [
        "rollout.start rollout:12",
        "rollout.start rollout:1",
    ]
    assert _shown(client.get("/events", params={"kind": "rollout"})) == []
    assert _shown(client.get("/events", params={"actor": "system"})) == ["rollout.paused rollout:1"]
    assert _shown(client.get("/events", params={"subject": "rollout:1"})) == [
        "rollout.pause rollout:1",
        "rollout.paused rollout:1",
        "rollout.start rollout:1",
    ]
    assert _shown(client.get("/events", params={"subject": "device:"})) == [
        "device.rolled_back device:gw-2",
        "device.booted device:gw-1",
    ]
    assert _shown(client.get("/events", params={"subject": "rollout:1*"})) == [
        "rollout.pause rollout:1",
        "rollout.start rollout:12",
        "rollout.paused rollout:1",
        "rollout.start rollout:1",
    ]
    combined = {"kind": "rollout.start", "actor": "admin:ops", "subject": "rollout:12"}
    assert _shown(client.get("/events", params=combined)) == ["rollout.start rollout:12"]
    empty = {"kind": "", "actor": "", "subject": "", "since": "", "until": ""}
    assert len(_shown(client.get("/events", params=empty))) == 7


def test_a_prefix_filter_takes_sql_wildcards_literally(web: Site) -> None:
    # Threat: a subject filter with % or _ matches (and shows) events it does not name.
    web.add(_event("fleet.create", "berlin"), _event("fleet.create", "b_x"))
    client = web.login("viewer")
    assert _shown(client.get("/events", params={"subject": "%*"})) == []
    assert _shown(client.get("/events", params={"subject": "b_*"})) == ["fleet.create b_x"]


def test_since_and_until_bound_the_trail_in_utc(web: Site) -> None:
    _trail(web)
    client = web.login("viewer")
    recent = client.get("/events", params={"since": "2026-01-01T11:40"})
    assert _shown(recent) == [
        "rollout.pause rollout:1",
        "rollout.start rollout:12",
        "rollout.paused rollout:1",
    ]
    offset = client.get("/events", params={"since": "2026-01-01T12:40+01:00"})
    assert _shown(offset) == _shown(recent)
    window = {"since": "2026-01-01T10:00", "until": "2026-01-01T11:40:00Z"}
    assert _shown(client.get("/events", params=window)) == [
        "rollout.paused rollout:1",
        "device.rolled_back device:gw-2",
        "device.booted device:gw-1",
    ]
    day = client.get("/events", params={"since": "2025-12-31", "until": "2025-12-31"})
    assert _shown(day) == ["rollout.start rollout:1"]  # a date as until: through that day


def test_pages_follow_by_id_without_repeating_or_skipping(web: Site) -> None:
    web.add(*(_event("fleet.update", f"fleet-{i:03d}", minutes_ago=120 - i) for i in range(120)))
    client = web.login("viewer")
    seen: list[str] = []
    page = client.get("/events", params={"kind": "fleet.update"})
    while True:
        shown = _shown(page)
        assert len(shown) <= 50
        seen += shown
        older = re.search(r'href="([^"]+)" rel="next"', page.text)
        if older is None:
            break
        assert "kind=fleet.update" in older.group(1)  # the filters stay on the next page
        page = client.get(html.unescape(older.group(1)))
    assert seen == [f"fleet.update fleet-{i:03d}" for i in reversed(range(120))]


def test_malformed_filters_get_a_400_page_naming_the_filter(web: Site) -> None:
    client = web.login("viewer")
    for params, named in (
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-02-30"}, "until"),
        ({"since": "2026-01-02", "until": "2026-01-01"}, "since"),
        ({"before": "-1"}, "before"),
        ({"before": "12abc"}, "before"),
        ({"kind": "x" * 65}, "kind"),
        ({"actor": "a\x00b"}, "actor"),
    ):
        answer = client.get("/events", params=params)
        assert answer.status_code == 400, params
        assert answer.headers["content-type"].startswith("text/html")
        assert named in answer.text, (params, answer.text)


def test_details_subjects_and_actors_are_escaped(web: Site) -> None:
    # Threat: a device (or an operator's reason) puts script into the audit trail's page.
    web.add(
        _event(
            "device.health_failed",
            "device:<img src=x onerror=alert(1)>",
            actor="device:<b>x</b>",
            details={"detail": "<script>alert(1)</script>", "failed": ["<i>check</i>"]},
        )
    )
    page = web.login("viewer").get("/events")
    assert page.status_code == 200
    assert "<script>alert(1)</script>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "<img src=x" not in page.text and "<b>x</b>" not in page.text
    assert "<i>check</i>" not in page.text
    assert 'href="/devices/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E"' in page.text


def test_the_trail_needs_a_login(web: Site) -> None:
    # Threat: anyone on the network reads who did what to the fleet.
    web.add(_event("fleet.create", "berlin"))
    answer = web.client().get("/events")
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/login")
