"""The devices pages against a served fleet manager: filters in SQL, keyset pages, one device.

Rows go into the database directly; times are fixed relative to :data:`tests.web.NOW`, the
site's clock (a device is Offline after 300 s without a check-in).
"""

from __future__ import annotations

import datetime
import html
import json
import re
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from afield.fleet.models import (
    Application,
    Device,
    Event,
    Fleet,
    Release,
    Rollout,
    state_to_json,
)
from afield.fleet.rollout import RolloutState, Status
from afield.web import devices
from tests.web import NOW, Site

COMMIT_A = "a" * 64
COMMIT_B = "b" * 64
SCRIPT = "<script>alert(1)</script>"
_ROW_ID = re.compile(r'<a class="mono" href="/devices/[^"]+">([^<]+)</a>')


def ago(**delta: float) -> datetime.datetime:
    """A time before the site's clock."""
    return NOW - datetime.timedelta(**delta)


def device(device_id: str, **fields: Any) -> Device:
    """A device seen a minute ago (Online) unless ``fields`` say otherwise."""
    values: dict[str, Any] = {
        "name": device_id,
        "labels": {},
        "last_seen": ago(minutes=1),
        "created": ago(days=30),
        "current_version": "1.0.0",
        "current_commit": COMMIT_A,
    }
    values.update(fields)
    return Device(id=device_id, **values)


def listed(page: httpx.Response) -> list[str]:
    """The device ids of a list page, in order (as the page shows them, unescaped)."""
    assert page.status_code == 200, page.text[:500]
    return [html.unescape(m) for m in _ROW_ID.findall(page.text)]


def test_the_list_shows_status_labels_versions_last_seen_and_rollout_phase(web: Site) -> None:
    release = Release(image="gw", arch="x86_64", version="1.1.0", commit=COMMIT_B, created=NOW)
    fleet = Fleet(name="berlin", selector="site=berlin", policy={}, created=NOW, updated=NOW)
    web.add(release, fleet)
    rollout = Rollout(
        fleet_id=fleet.id,
        release_id=release.id,
        status="running",
        state=state_to_json(RolloutState(batch=1)),
        created=NOW,
        updated=NOW,
    )
    web.add(rollout)
    web.add(
        device(
            "gw-001",
            name="Gateway one",
            labels={"site": "berlin", "tier": "edge"},
            image="gw",
            arch="x86_64",
            pending_version="1.1.0",
            last_seen=ago(minutes=3),
            rollout_id=rollout.id,
            phase="updating",
            batch=1,
        )
    )
    page = web.login().get("/devices")
    assert listed(page) == ["gw-001"]
    text = page.text
    assert "Gateway one" in text
    assert '<span class="badge Updating">Updating</span>' in text
    assert "<code>site=berlin</code> <code>tier=edge</code>" in text
    assert "3 min ago" in text
    assert f'<a href="/rollouts/{rollout.id}">#{rollout.id}</a>' in text
    assert '<span class="badge updating">updating</span>' in text
    assert '<option value="1.0.0">' in text  # the version field suggests what devices run


def test_the_label_filter_keeps_devices_having_every_label(web: Site) -> None:
    web.add(
        device("d1", labels={"site": "berlin", "tier": "edge"}),
        device("d2", labels={"site": "berlin", "tier": "core"}),
        device("d3", labels={"site": "paris", "tier": "edge"}),
        device("d4", labels={}),
    )
    client = web.login()
    assert listed(client.get("/devices", params={"label": "site=berlin"})) == ["d1", "d2"]
    both = client.get("/devices", params={"label": "site=berlin, tier=edge"})
    assert listed(both) == ["d1"]
    assert listed(client.get("/devices", params={"label": "site=rome"})) == []


def test_the_status_filter_applies_the_status_rules(web: Site) -> None:
    web.add(
        device("online"),
        device("updating", updating=True),
        device("staged", pending_version="1.1.0"),
        device("degraded", health_ok=False),
        device("rolledback", rolled_back_at=ago(hours=1)),
        device("offline", last_seen=ago(minutes=5, seconds=1)),
        device("just-in-time", last_seen=ago(minutes=5)),  # exactly 300 s: not offline
        device("never", last_seen=None),
    )
    client = web.login()
    expected = {
        "Online": ["just-in-time", "online"],
        "Updating": ["staged", "updating"],
        "Degraded": ["degraded"],
        "RolledBack": ["rolledback"],
        "Offline": ["never", "offline"],
    }
    for status, ids in expected.items():
        page = client.get("/devices", params={"status": status})
        assert listed(page) == ids, status
        assert f'<option value="{status}" selected>' in page.text


def test_the_version_filter_matches_the_booted_version(web: Site) -> None:
    web.add(
        device("old", current_version="1.0.0"),
        device("new", current_version="1.1.0"),
        device("none", current_version=None, current_commit=None),
    )
    client = web.login()
    assert listed(client.get("/devices", params={"version": "1.1.0"})) == ["new"]
    assert listed(client.get("/devices", params={"version": "1.0"})) == []


def test_the_seen_filter_takes_windows_absences_and_never(web: Site) -> None:
    web.add(
        device("now", last_seen=ago(minutes=1)),
        device("hour", last_seen=ago(minutes=30)),
        device("day", last_seen=ago(hours=5)),
        device("week", last_seen=ago(days=3)),
        device("month", last_seen=ago(days=30)),
        device("never", last_seen=None),
    )
    client = web.login()
    expected = {
        "5m": ["now"],
        "1h": ["hour", "now"],
        "1d": ["day", "hour", "now"],
        "!1h": ["day", "month", "never", "week"],
        "!1d": ["month", "never", "week"],
        "!7d": ["month", "never"],
        "never": ["never"],
    }
    for seen, ids in expected.items():
        assert listed(client.get("/devices", params={"seen": seen})) == ids, seen


def test_filters_combine_and_empty_fields_are_no_filter(web: Site) -> None:
    web.add(
        device("a", labels={"site": "berlin"}, current_version="1.1.0", last_seen=ago(days=2)),
        device("b", labels={"site": "berlin"}, current_version="1.1.0"),
        device("c", labels={"site": "berlin"}, current_version="1.0.0", last_seen=ago(days=2)),
        device("d", labels={"site": "paris"}, current_version="1.1.0", last_seen=ago(days=2)),
    )
    client = web.login()
    params = {"label": "site=berlin", "status": "Offline", "version": "1.1.0", "seen": "!1d"}
    assert listed(client.get("/devices", params=params)) == ["a"]
    empty = {"label": "", "status": "", "version": "", "seen": "", "after": ""}
    assert listed(client.get("/devices", params=empty)) == ["a", "b", "c", "d"]


def test_pages_follow_by_id_without_repeating_or_skipping_a_device(web: Site) -> None:
    ids = [f"dev-{n:03d}" for n in range(120)]
    web.add(
        *(device(i, labels={"site": "berlin" if n % 3 else "paris"}) for n, i in enumerate(ids))
    )
    client = web.login()
    for params, wanted in (
        ({}, ids),
        ({"label": "site=berlin"}, [i for n, i in enumerate(ids) if n % 3]),
    ):
        seen: list[str] = []
        page = client.get("/devices", params=params)
        pages = 0
        while True:
            pages += 1
            shown = listed(page)
            assert len(shown) <= 50
            seen += shown
            found = re.search(r'<a href="([^"]+)" rel="next">', page.text)
            if found is None:
                break
            assert "First page" in page.text or pages == 1
            page = client.get(html.unescape(found.group(1)))
        assert seen == wanted
        assert pages == -(-len(wanted) // 50)
    last = client.get("/devices", params={"after": ids[-1]})
    assert listed(last) == []
    assert "No more devices match" in last.text


def test_malformed_filters_get_a_400_page_naming_the_filter(web: Site) -> None:
    client = web.login()
    for params, named, hint in (
        ({"label": "site"}, "label:", "site=berlin,tier=edge"),
        ({"label": "site!=paris"}, "label:", "site=berlin,tier=edge"),
        ({"label": "site=berlin,,tier=edge"}, "label:", "site=berlin,tier=edge"),
        ({"label": "si te=x"}, "label:", "site=berlin,tier=edge"),
        ({"status": "Sleeping"}, "status:", "Online, Updating, Degraded, RolledBack, Offline"),
        ({"seen": "2h"}, "seen:", "5m, 1h, 1d, !1h, !1d, !7d, never"),
        ({"version": "1\x00"}, "version:", ""),
        ({"after": "x" * 200}, "after:", ""),
    ):
        page = client.get("/devices", params=params)
        assert page.status_code == 400, params
        assert page.headers["content-type"].startswith("text/html"), params
        assert named in page.text, params
        assert hint in page.text, params
        assert "Traceback" not in page.text


def test_an_unknown_device_gets_a_404_page_naming_it(web: Site) -> None:
    page = web.login().get("/devices/" + quote("no-such <device>", safe=""))
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert "no device &#39;no-such &lt;device&gt;&#39;" in page.text


def test_an_id_with_slashes_and_spaces_links_to_its_page(web: Site) -> None:
    odd = "site/berlin #1?x=y"
    web.add(device(odd))
    client = web.login()
    listing = client.get("/devices")
    path = "/devices/" + quote(odd, safe="")
    assert f'href="{path}"' in listing.text
    page = client.get(path)
    assert page.status_code == 200
    assert '<dd class="mono">site/berlin #1?x=y</dd>' in page.text


def _history_device(web: Site) -> Device:
    release = Release(image="gw", arch="x86_64", version="1.1.0", commit=COMMIT_B, created=NOW)
    fleet = Fleet(name="edge", selector="tier=edge", policy={}, created=NOW, updated=NOW)
    web.add(release, fleet)
    rollout = Rollout(
        fleet_id=fleet.id,
        release_id=release.id,
        status="paused",
        state=state_to_json(RolloutState(status=Status.PAUSED, batch=2)),
        created=NOW,
        updated=NOW,
    )
    web.add(rollout)
    digest_new, digest_old = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    shown = device(
        "gw-7",
        labels={"tier": "edge"},
        image="gw",
        arch="aarch64",
        guid="6a2c4b7e-0000-4000-8000-000000000001",
        cert_serial="5f3a9c",
        enrolled_at=ago(days=20),
        current_version="1.0.0",
        current_commit=COMMIT_A,
        rollback_version="0.9.0",
        health_ok=False,
        rolled_back_at=ago(hours=1),
        desired_release_id=release.id,
        rollout_id=rollout.id,
        phase="rolled_back",
        batch=2,
        applications=json.dumps([{"name": "metrics", "digest": digest_new}]),
        report={
            "health": {
                "ok": False,
                "commit": COMMIT_A,
                "failed": ["disk-space"],
                "detail": "disk-space: /var is 97% full",
            },
            "update": {
                "state": "failed",
                "version": "1.1.0",
                "commit": COMMIT_B,
                "bytes_downloaded": 1_234_567,
                "error": "no space left",
            },
            "rolled_back": {
                "from_commit": COMMIT_B,
                "to_commit": COMMIT_A,
                "at": ago(hours=1).timestamp(),
                "reason": "health checks failed",
            },
            "applications": [
                {"name": "metrics", "digest": digest_old, "state": "failed", "reason": "pull: 404"}
            ],
        },
    )
    subject = "device:gw-7"
    events: list[tuple[datetime.datetime, str, dict[str, Any]]] = [
        (
            ago(days=20),
            "device.enrolled",
            {"serial": "5f3a9c", "guid": shown.guid, "token_by": "admin:ops"},
        ),
        (ago(days=19), "device.booted", {"commit": COMMIT_A, "version": "1.0.0"}),
        (ago(days=19), "device.health_passed", {"commit": COMMIT_A, "detail": "all 4 checks ok"}),
        (
            ago(hours=3),
            "device.update_staged",
            {"version": "1.1.0", "commit": COMMIT_B, "bytes_downloaded": 48_500_000},
        ),
        (
            ago(hours=2),
            "device.booted",
            {"commit": COMMIT_B, "version": "1.1.0", "bytes_downloaded": 48_500_000},
        ),
        (
            ago(hours=2),
            "device.health_failed",
            {"commit": COMMIT_B, "failed": ["app-ready"], "detail": "app-ready: timed out"},
        ),
        (
            ago(hours=1),
            "device.rolled_back",
            {"from": COMMIT_B, "to": COMMIT_A, "reason": "health checks failed"},
        ),
    ]
    web.add(shown)  # first: the application's row refers to it
    web.add(
        Application(
            device_id="gw-7",
            name="metrics",
            manifests="x",
            images=[],
            digest=digest_new,
            created=NOW,
            updated=NOW,
            updated_by="admin:ops",
        ),
        Event(
            time=ago(days=22),
            actor="admin:ops",
            kind="voucher.import",
            subject=f"guid:{shown.guid}",
            details={"until": None, "errors": []},
        ),
        *(Event(time=t, actor=subject, kind=k, subject=subject, details=d) for t, k, d in events),
        Event(time=NOW, actor="device:other", kind="device.booted", subject="device:other"),
    )
    return shown


def _section(page: str, heading: str) -> str:
    """The HTML from ``heading`` to the next ``<h2``."""
    start = page.index(heading)
    end = page.find("<h2", start + len(heading))
    return page[start : end if end != -1 else len(page)]


def test_the_device_page_shows_versions_health_output_and_the_rollout(web: Site) -> None:
    shown = _history_device(web)
    page = web.login().get("/devices/gw-7")
    assert page.status_code == 200, page.text[:500]
    text = page.text
    assert '<span class="badge Degraded">Degraded</span>' in text
    versions = _section(text, ">Versions<")
    assert f'1.0.0 <span class="mono muted">{COMMIT_A[:12]}</span>' in versions
    assert "0.9.0" in versions
    assert f'1.1.0 <span class="mono muted">{COMMIT_B[:12]}</span>' in versions  # desired
    assert "1.2 MB downloaded" in versions
    assert '<pre class="output">no space left</pre>' in versions
    health = _section(text, ">Last health check<")
    assert "<code>disk-space</code>" in health
    assert '<pre class="output">disk-space: /var is 97% full</pre>' in health
    rollout = _section(text, ">Rollout<")
    assert f'href="/rollouts/{shown.rollout_id}"' in rollout
    assert '<span class="badge rolled_back">rolled_back</span>' in rollout
    assert "<dt>Batch</dt><dd>3</dd>" in rollout  # index 2, counted from 1 as on rollouts


def test_the_device_page_shows_boots_and_updates_with_bytes_from_the_events(web: Site) -> None:
    _history_device(web)
    text = web.login().get("/devices/gw-7").text
    boots = _section(text, "Health checks of the last boots")
    assert boots.index("health checks failed") < boots.index("health checks passed")
    assert '<pre class="output">app-ready: timed out</pre>' in boots
    assert "<code>app-ready</code>" in boots
    assert '<pre class="output">all 4 checks ok</pre>' in boots
    updates = _section(text, "Update history")
    assert updates.count("48.5 MB") == 2  # staged, then booted
    assert updates.index("rolled back") < updates.index("update staged")
    assert f"to {COMMIT_A[:12]}: health checks failed" in updates
    assert "health checks passed" not in updates


def test_the_device_page_shows_applications_onboarding_and_its_own_events(web: Site) -> None:
    shown = _history_device(web)
    text = web.login().get("/devices/gw-7").text
    applications = _section(text, "<h2>Applications")
    assert "<td>metrics</td>" in applications
    assert "<td>device</td>" in applications  # where it comes from
    assert '<span class="badge failed">failed</span>' in applications
    assert '<pre class="output">pull: 404</pre>' in applications
    onboarding = _section(text, ">Onboarding<")
    assert "5f3a9c" in onboarding
    assert str(shown.guid) in onboarding
    assert "<code>device.enrolled</code>" in onboarding
    assert "<code>voucher.import</code>" in onboarding  # the FDO voucher, by GUID
    assert "token_by=admin:ops" in onboarding  # who made its token
    events = _section(text, "Latest events")
    assert events.count("<tr>") == 1 + 7  # the header, then its seven events
    assert "device:other" not in events
    assert events.index("device.rolled_back") < events.index("device.enrolled")


def test_a_device_page_lists_only_its_latest_events(web: Site) -> None:
    subject = "device:busy"
    web.add(
        device("busy"),
        *(
            Event(time=ago(minutes=n), actor=subject, kind=f"test.e{n}", subject=subject)
            for n in reversed(range(60))  # recorded oldest first, as they happen
        ),
    )
    events = _section(web.login().get("/devices/busy").text, "Latest events")
    assert events.count("<tr>") == 1 + 50
    assert "test.e0<" in events
    assert "test.e49<" in events
    assert "test.e50<" not in events


def test_a_script_in_a_name_or_label_is_shown_escaped_on_both_pages(web: Site) -> None:
    # Threat: a device (or whoever labels it) stores markup that runs in an operator's browser.
    web.add(
        device(
            "evil",
            name=SCRIPT,
            labels={"note": SCRIPT},
            report={"health": {"ok": False, "commit": COMMIT_A, "failed": [SCRIPT],
                               "detail": SCRIPT}},
        ),
        Event(time=NOW, actor="device:evil", kind="device.health_failed", subject="device:evil",
              details={"commit": COMMIT_A, "failed": [SCRIPT], "detail": SCRIPT}),
    )  # fmt: skip
    client = web.login()
    for path in ("/devices", "/devices/evil"):
        page = client.get(path)
        assert page.status_code == 200, path
        assert "<script>alert" not in page.text, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text, path


def test_a_viewer_reads_both_pages(web: Site) -> None:
    web.add(device("seen-by-viewer"))
    client = web.login("viewer")
    assert listed(client.get("/devices")) == ["seen-by-viewer"]
    page = client.get("/devices/seen-by-viewer")
    assert page.status_code == 200
    assert "watcher · viewer" in page.text


def test_without_a_login_both_pages_send_the_browser_to_log_in(web: Site) -> None:
    web.add(device("private"))
    client = web.client()
    for path in ("/devices", "/devices/private"):
        answer = client.get(path)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/login?next=/devices"), path
        assert "private" not in answer.text


def test_pages_are_the_same_when_a_rare_filter_reads_past_the_index_walk(
    web: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A page walks only the next few ids along the index, then reads beyond them another way.
    monkeypatch.setattr(devices, "_PROBE", 7)
    ids = [f"dev-{n:03d}" for n in range(130)]
    rare = {n for n in range(130) if n % 11 == 4}
    web.add(*(device(i, labels={"hw": "x" if n in rare else "y"}) for n, i in enumerate(ids)))
    client = web.login()
    for params, wanted in (
        ({"label": "hw=x"}, [ids[n] for n in sorted(rare)]),
        ({"label": "hw=y"}, [i for n, i in enumerate(ids) if n not in rare]),
    ):
        shown: list[str] = []
        page = client.get("/devices", params=params)
        while True:
            shown += listed(page)
            found = re.search(r'<a href="([^"]+)" rel="next">', page.text)
            if found is None:
                break
            page = client.get(html.unescape(found.group(1)))
        assert shown == wanted, params
