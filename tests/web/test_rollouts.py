"""The rollouts pages: the list, one rollout per batch and why it stopped, the admin's forms and
the live stream of server-sent events, against a real server (:mod:`tests.web`).

Rollouts and devices go into the database directly, in the phases a test needs; the rollout
runner is not started, so nothing moves but what a test moves.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from afield.fleet.models import (
    Device,
    Event,
    Fleet,
    Release,
    Rollout,
    state_from_json,
    state_to_json,
)
from afield.fleet.rollout import Cause, Counters, RolloutState, Status
from afield.web.rollouts import sse_message
from tests.web import NOW, Site

COMMIT = "2" * 64
STREAM_TIMEOUT = httpx.Timeout(10.0)  # a read that waits longer fails the test, never hangs it


def _fleet(web: Site, name: str = "berlin", policy: dict[str, Any] | None = None) -> int:
    with web.db.transaction() as session:
        fleet = Fleet(
            name=name,
            selector="",
            policy=policy if policy is not None else {"batches": [1, "50%", "100%"]},
            created=NOW,
            updated=NOW,
        )
        session.add(fleet)
        session.flush()
        return fleet.id


def _release(web: Site, version: str = "2.0") -> int:
    with web.db.transaction() as session:
        release = Release(
            image="gateway", arch="x86_64", version=version, commit=COMMIT, created=NOW
        )
        session.add(release)
        session.flush()
        return release.id


def _rollout(
    web: Site,
    fleet_id: int,
    release_id: int,
    state: RolloutState | None = None,
) -> int:
    state = state or RolloutState(counters=Counters(selected=4))
    with web.db.transaction() as session:
        rollout = Rollout(
            fleet_id=fleet_id,
            release_id=release_id,
            status=state.status.value,
            state=state_to_json(state),
            created=NOW,
            updated=NOW,
        )
        session.add(rollout)
        session.flush()
        return rollout.id


def _one(web: Site, state: RolloutState | None = None, **policy: Any) -> int:
    """A fleet ``berlin``, release gateway 2.0 and a rollout of it in ``state``."""
    fleet = _fleet(web, policy=policy or None)
    return _rollout(web, fleet, _release(web), state)


def _device(rollout_id: int, device_id: str, phase: str, batch: int, **fields: Any) -> Device:
    values: dict[str, Any] = {
        "id": device_id,
        "labels": {},
        "last_seen": NOW,
        "rollout_id": rollout_id,
        "phase": phase,
        "batch": batch,
        "assigned_at": NOW,
    }
    values.update(fields)
    return Device(**values)


def _stored(web: Site, rollout_id: int) -> RolloutState:
    with web.db.sessions() as session:
        rollout = session.get(Rollout, rollout_id)
        assert rollout is not None
        return state_from_json(rollout.state)


def _events(web: Site, rollout_id: int) -> list[tuple[str, str, dict[str, Any]]]:
    with web.db.sessions() as session:
        rows = session.scalars(
            select(Event).where(Event.subject == f"rollout:{rollout_id}").order_by(Event.id)
        ).all()
        return [(e.kind, e.actor, e.details) for e in rows]


def _forms(page: str) -> list[str]:
    """The actions of the page's rollout forms (the logout form is not one)."""
    return re.findall(r'<form method="post" action="/rollouts/\d+/(\w+)"', page)


def _status(page: str) -> str:
    """The status the live part shows."""
    found = re.search(r'id="rollout-status" class="badge (\w+)">(\w+)<', page)
    assert found is not None and found.group(1) == found.group(2), page[:500]
    return found.group(2)


def _batch_cells(page: str, batch: int) -> dict[str, int]:
    """The phase counts of batch ``batch`` (1-based) in a page's batch table."""
    rows = re.findall(r"<tr[^>]*>\s*<td>(\d+)(.*?)</tr>", page, re.S)
    for number, row in rows:
        if int(number) == batch:
            cells = re.findall(r'data-phase="(\w+)">(\d+)</td>', row)
            return {phase: int(n) for phase, n in cells}
    raise AssertionError(f"no batch {batch} in the table")


def _sse(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """Server-sent events (event name, data) from a stream's lines; comments skipped."""
    event = "message"
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data.append(line.removeprefix("data: "))


# --- the list -------------------------------------------------------------------------------------


def test_the_list_shows_rollouts_newest_first_with_status_batch_and_reason(web: Site) -> None:
    berlin, munich = _fleet(web, "berlin"), _fleet(web, "munich")
    release = _release(web)
    old = _rollout(web, berlin, release, RolloutState(status=Status.ABORTED, reason="bad idea"))
    paused = RolloutState(
        status=Status.PAUSED,
        batch=1,
        reason="2 of 3 devices failed",
        cause=Cause.FAILURES,
        counters=Counters(selected=10, succeeded=1, rolled_back=2),
    )
    new = _rollout(web, munich, release, paused)
    page = web.login("viewer").get("/rollouts")
    assert page.status_code == 200
    assert page.text.index(f'href="/rollouts/{new}"') < page.text.index(f'href="/rollouts/{old}"')
    assert '<span class="badge paused">paused</span>' in page.text
    assert "2 / 3" in page.text  # batch 2 of the default policy's three
    assert "2 of 3 devices failed" in page.text and "bad idea" in page.text
    assert "1 of 10 succeeded" in page.text and "2 failed" in page.text


def test_the_list_filters_by_status_and_fleet(web: Site) -> None:
    berlin, munich = _fleet(web, "berlin"), _fleet(web, "munich")
    release = _release(web)
    aborted = _rollout(web, berlin, release, RolloutState(status=Status.ABORTED))
    running = _rollout(web, munich, release)
    client = web.login("viewer")
    only_running = client.get("/rollouts", params={"status": "running", "fleet": ""}).text
    assert f"/rollouts/{running}" in only_running and f"/rollouts/{aborted}" not in only_running
    only_berlin = client.get("/rollouts", params={"fleet": "berlin"}).text
    assert f"/rollouts/{aborted}" in only_berlin and f"/rollouts/{running}" not in only_berlin
    nothing = client.get("/rollouts", params={"fleet": "berlin", "status": "running"})
    assert "No rollout matches these filters" in nothing.text


def test_the_list_pages_by_id_without_repeating_or_skipping(web: Site) -> None:
    fleet, release = _fleet(web), _release(web)
    ids = [_rollout(web, fleet, release) for _ in range(53)]
    client = web.login("viewer")
    first = client.get("/rollouts").text
    shown = [int(i) for i in re.findall(r'<a href="/rollouts/(\d+)">#', first)]
    assert shown == sorted(ids, reverse=True)[:50]
    older = re.search(r'href="(/rollouts\?before=\d+)" rel="next"', first)
    assert older is not None
    second = client.get(html.unescape(older.group(1))).text
    rest = [int(i) for i in re.findall(r'<a href="/rollouts/(\d+)">#', second)]
    assert rest == sorted(ids, reverse=True)[50:]
    assert 'rel="next"' not in second


def test_malformed_list_filters_get_a_400_page_naming_the_filter(web: Site) -> None:
    client = web.login("viewer")
    for params, named in (
        ({"status": "sleeping"}, "status"),
        ({"before": "x1"}, "before"),
        ({"before": "99999999999"}, "before"),
        ({"fleet": "a\x00b"}, "fleet"),
    ):
        answer = client.get("/rollouts", params=params)
        assert answer.status_code == 400, params
        assert answer.headers["content-type"].startswith("text/html")
        assert named in answer.text, params


# --- one rollout ---------------------------------------------------------------------------------


def test_the_page_shows_release_policy_and_members_per_batch_by_phase(web: Site) -> None:
    state = RolloutState(batch=1, counters=Counters(selected=6, succeeded=2, unavailable=2))
    rollout = _one(web, state, batches=[1, "50%"], failure_threshold="20%")
    web.add(
        _device(rollout, "d1", "succeeded", 0),
        _device(rollout, "d2", "succeeded", 1),
        _device(rollout, "d3", "pending", 1),
        _device(rollout, "d4", "updating", 1),
        _device(rollout, "d5", "rolled_back", 1),
        Device(id="d6", labels={}, last_seen=NOW),  # in no rollout: counted nowhere
    )
    page = web.login("viewer").get(f"/rollouts/{rollout}")
    assert page.status_code == 200
    text = page.text
    assert "gateway" in text and "2.0" in text and "berlin" in text
    assert "1 → 50% → 100%" in text  # the implicit last batch shown
    assert "20% of the devices told so far" in text
    assert _batch_cells(text, 1) == {
        "pending": 0,
        "updating": 0,
        "booted": 0,
        "succeeded": 1,
        "rolled_back": 0,
        "health_failed": 0,
        "timed_out": 0,
    }
    second = _batch_cells(text, 2)
    assert (second["succeeded"], second["pending"], second["updating"]) == (1, 1, 1)
    assert second["rolled_back"] == 1 and sum(second.values()) == 4
    assert sum(_batch_cells(text, 3).values()) == 0
    current = re.findall(r'<tr class="current" aria-current="step">\s*<td>(\d+)', text)
    assert current == ["2"]
    assert 'sse-connect="/rollouts/' in text and 'sse-swap="progress"' in text


def test_a_rollout_paused_by_failures_shows_who_failed_which_checks_and_why(web: Site) -> None:
    state = RolloutState(
        status=Status.PAUSED,
        reason="2 of 2 devices failed: d-health failed health checks, d-back rolled back",
        cause=Cause.FAILURES,
        counters=Counters(selected=3, rolled_back=1, health_failed=1),
    )
    rollout = _one(web, state)
    health = {
        "ok": False,
        "commit": COMMIT,
        "failed": ["http-200", "<script>alert(1)</script>"],
        "detail": "GET /healthz: 503 Service Unavailable\n<b>retrying</b>",
    }
    rolled_back = {"from_commit": COMMIT, "to_commit": "1" * 64, "at": 1.0, "reason": "boot failed"}
    web.add(
        _device(rollout, "d-health", "health_failed", 0, report={"health": health}),
        _device(rollout, "d-back", "rolled_back", 0, report={"rolled_back": rolled_back}),
        _device(rollout, "d-late", "timed_out", 0),
        _device(rollout, "d-fine", "succeeded", 0),
    )
    page = web.login("viewer").get(f"/rollouts/{rollout}").text
    assert "Failed devices (3)" in page
    assert 'href="/devices/d-health"' in page and 'href="/devices/d-back"' in page
    assert 'href="/devices/d-late"' in page and 'href="/devices/d-fine"' not in page
    assert "<code>http-200</code>" in page
    assert "GET /healthz: 503 Service Unavailable\n&lt;b&gt;retrying&lt;/b&gt;" in page
    assert "boot failed" in page
    assert "<script>alert(1)</script>" not in page  # a device's words are text, never markup
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "2 of 2 devices failed" in page and ">failures<" in page
    assert _status(page) == "paused"


def test_a_device_that_fell_back_shows_the_checks_that_failed_on_the_rollout(web: Site) -> None:
    # After falling back, a device reports the health of the old release (passing): the checks
    # that failed on the new one are only in its audit trail.
    rollout = _one(web, RolloutState(status=Status.PAUSED, cause=Cause.FAILURES))
    old_commit = "1" * 64
    report = {
        "health": {"ok": True, "commit": old_commit, "failed": [], "detail": ""},
        "rolled_back": {"from_commit": COMMIT, "to_commit": old_commit, "at": 1.0, "reason": "r"},
    }
    web.add(
        _device(rollout, "gw-1", "health_failed", 0, report=report),
        Event(
            time=NOW,
            actor="device:gw-1",
            kind="device.health_failed",
            subject="device:gw-1",
            details={"commit": COMMIT, "failed": ["90-sim-check.sh"], "detail": "exit 1"},
        ),
        Event(  # about another commit: not this rollout's failure
            time=NOW,
            actor="device:gw-1",
            kind="device.health_failed",
            subject="device:gw-1",
            details={"commit": old_commit, "failed": ["old-check"], "detail": "old output"},
        ),
    )
    page = web.login("viewer").get(f"/rollouts/{rollout}").text
    assert "<code>90-sim-check.sh</code>" in page and "exit 1" in page
    assert "old-check" not in page and "old output" not in page


def test_unknown_and_malformed_rollout_ids_get_error_pages(web: Site) -> None:
    client = web.login("viewer")
    missing = client.get("/rollouts/42")
    assert missing.status_code == 404 and "no rollout 42" in missing.text
    malformed = client.get("/rollouts/forty-two")
    assert malformed.status_code == 400 and "rollout_id" in malformed.text
    assert client.get("/rollouts/42/stream").status_code == 404


# --- the actions --------------------------------------------------------------------------------


def test_an_admin_pauses_resumes_and_aborts_through_the_forms(web: Site) -> None:
    rollout = _one(web)
    client = web.login("admin")
    page = client.get(f"/rollouts/{rollout}")
    assert _forms(page.text) == ["pause", "abort"]
    csrf = web.csrf(page)
    paused = client.post(f"/rollouts/{rollout}/pause", data={"csrf": csrf, "reason": "lunch"})
    assert paused.status_code == 303 and paused.headers["location"] == f"/rollouts/{rollout}"
    state = _stored(web, rollout)
    assert (state.status, state.reason, state.cause) == (Status.PAUSED, "lunch", Cause.OPERATOR)
    assert _forms(client.get(f"/rollouts/{rollout}").text) == ["resume", "abort"]
    assert client.post(f"/rollouts/{rollout}/resume", data={"csrf": csrf}).status_code == 303
    assert _stored(web, rollout).status is Status.RUNNING
    aborted = client.post(f"/rollouts/{rollout}/abort", data={"csrf": csrf, "reason": ""})
    assert aborted.status_code == 303
    state = _stored(web, rollout)
    assert (state.status, state.reason) == (Status.ABORTED, "aborted by admin:ops")
    assert _forms(client.get(f"/rollouts/{rollout}").text) == []
    assert _events(web, rollout) == [
        ("rollout.pause", "admin:ops", {"from": "running", "to": "paused", "reason": "lunch"}),
        ("rollout.resume", "admin:ops", {"from": "paused", "to": "running"}),
        ("rollout.abort", "admin:ops", {"from": "running", "to": "aborted"}),
    ]


def test_an_admin_approves_the_next_batch_of_a_waiting_rollout(web: Site) -> None:
    rollout = _one(web, RolloutState(status=Status.WAITING_APPROVAL, reason="batch 1 passed"))
    client = web.login("admin")
    page = client.get(f"/rollouts/{rollout}")
    assert _forms(page.text) == ["approve", "pause", "abort"]
    done = client.post(f"/rollouts/{rollout}/approve", data={"csrf": web.csrf(page)})
    assert done.status_code == 303
    state = _stored(web, rollout)
    assert (state.status, state.batch) == (Status.RUNNING, 1)
    assert _events(web, rollout) == [
        ("rollout.approve", "admin:ops", {"from": "waiting_approval", "to": "running"})
    ]


def test_a_viewer_sees_no_buttons_and_its_post_is_refused(web: Site) -> None:
    # Threat: a read-only login pauses or aborts a rollout by posting the form itself.
    rollout = _one(web, RolloutState(status=Status.WAITING_APPROVAL))
    client = web.login("viewer")
    page = client.get(f"/rollouts/{rollout}")
    assert _forms(page.text) == []
    assert "Approve" not in page.text and "Abort" not in page.text
    for action in ("pause", "approve", "abort"):
        answer = client.post(f"/rollouts/{rollout}/{action}", data={"csrf": web.csrf(page)})
        assert answer.status_code == 403, action
        assert "viewer token" in answer.text
    assert _stored(web, rollout).status is Status.WAITING_APPROVAL
    assert _events(web, rollout) == []


def test_a_form_with_a_stale_csrf_field_is_refused(web: Site) -> None:
    # Threat: another site's page (or an old tab) makes the admin's browser abort a rollout.
    rollout = _one(web)
    client = web.login("admin")
    answer = client.post(f"/rollouts/{rollout}/abort", data={"csrf": "stale", "reason": "x"})
    assert answer.status_code == 403 and "reload the page" in answer.text
    other = web.login("admin")  # another session's field is stale here too
    stolen = web.csrf(other.get(f"/rollouts/{rollout}"))
    assert client.post(f"/rollouts/{rollout}/abort", data={"csrf": stolen}).status_code == 403
    assert _stored(web, rollout).status is Status.RUNNING


def test_a_transition_the_engine_refuses_is_a_409_page_naming_both_states(web: Site) -> None:
    rollout = _one(web)
    client = web.login("admin")
    csrf = web.csrf(client.get(f"/rollouts/{rollout}"))
    answer = client.post(f"/rollouts/{rollout}/resume", data={"csrf": csrf})
    assert answer.status_code == 409
    assert answer.headers["content-type"].startswith("text/html")
    assert "Cannot resume rollout" in answer.text
    assert "current state running" in answer.text and "requested running" in answer.text
    approve = client.post(f"/rollouts/{rollout}/approve", data={"csrf": csrf})
    assert approve.status_code == 409 and "waiting for approval" in approve.text
    assert _stored(web, rollout).status is Status.RUNNING
    assert _events(web, rollout) == []


def test_actions_on_unknown_rollouts_and_unknown_actions_are_404_pages(web: Site) -> None:
    rollout = _one(web)
    client = web.login("admin")
    csrf = web.csrf(client.get(f"/rollouts/{rollout}"))
    assert client.post("/rollouts/999/pause", data={"csrf": csrf}).status_code == 404
    unknown = client.post(f"/rollouts/{rollout}/restart", data={"csrf": csrf})
    assert unknown.status_code == 404 and "pause, resume, approve or abort" in unknown.text
    long = client.post(f"/rollouts/{rollout}/pause", data={"csrf": csrf, "reason": "x" * 501})
    assert long.status_code == 400 and "reason" in long.text
    assert _stored(web, rollout).status is Status.RUNNING


# --- the stream ---------------------------------------------------------------------------------


def test_sse_messages_keep_every_line_of_the_html_inside_data_fields() -> None:
    # Threat: text in the fragment (a device's output) ends the event early or forges a field.
    message = sse_message("progress", "<p>a</p>\r\nevent: close\rdata: x\n\nretry: 1")
    assert message == (
        "event: progress\n"
        "data: <p>a</p>\n"
        "data: event: close\n"
        "data: data: x\n"
        "data: \n"
        "data: retry: 1\n"
        "\n"
    )


def test_the_stream_sends_the_live_part_then_each_change(web: Site) -> None:
    rollout = _one(web, RolloutState(counters=Counters(selected=2, unavailable=1)))
    web.add(_device(rollout, "d1", "pending", 0))
    client = web.login("admin")
    csrf = web.csrf(client.get(f"/rollouts/{rollout}"))
    path = f"/rollouts/{rollout}/stream"
    headers = {"Accept": "text/event-stream"}
    with client.stream("GET", path, headers=headers, timeout=STREAM_TIMEOUT) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = _sse(stream.iter_lines())
        kind, first = next(events)
        assert kind == "progress"
        assert _status(first) == "running"
        assert _forms(first) == ["pause", "abort"] and f'value="{csrf}"' in first
        assert _batch_cells(first, 1)["pending"] == 1

        paused = client.post(f"/rollouts/{rollout}/pause", data={"csrf": csrf, "reason": "wait"})
        assert paused.status_code == 303
        kind, second = next(events)
        assert kind == "progress"
        assert _status(second) == "paused"
        assert _forms(second) == ["resume", "abort"]

        with web.db.transaction() as session:  # a device report moves d1 on
            session.execute(update(Device).where(Device.id == "d1").values(phase="booted"))
        _, third = next(events)
        cells = _batch_cells(third, 1)
        assert (cells["pending"], cells["booted"]) == (0, 1)


def test_a_viewer_stream_carries_no_forms(web: Site) -> None:
    rollout = _one(web)
    client = web.login("viewer")
    headers = {"Accept": "text/event-stream"}
    path = f"/rollouts/{rollout}/stream"
    with client.stream("GET", path, headers=headers, timeout=STREAM_TIMEOUT) as stream:
        kind, first = next(_sse(stream.iter_lines()))
    assert kind == "progress" and "running" in first
    assert _forms(first) == [] and "csrf" not in first


def test_a_stream_without_a_session_is_401(web: Site) -> None:
    # Threat: anyone on the network watches a rollout's devices and failures live.
    rollout = _one(web)
    answer = web.client().get(
        f"/rollouts/{rollout}/stream", headers={"Accept": "text/event-stream"}
    )
    assert answer.status_code == 401
    assert "badge" not in answer.text


@pytest.mark.parametrize("status", [s.value for s in Status])
def test_only_the_actions_the_engine_accepts_are_offered(web: Site, status: str) -> None:
    rollout = _one(web, RolloutState(status=Status(status)))
    offered = _forms(web.login("admin").get(f"/rollouts/{rollout}").text)
    expected = {
        "running": ["pause", "abort"],
        "paused": ["resume", "abort"],
        "waiting_approval": ["approve", "pause", "abort"],
        "completed": ["pause", "abort"],
        "aborted": [],
    }
    assert offered == expected[status]
