"""The overview page: devices by status, versions per image (chart and table), rollouts in
progress, the latest events; all escaped."""

from __future__ import annotations

import datetime
import json
import re

import httpx

from afield.fleet.models import Device, Event
from afield.fleet.rollout import Counters, RolloutState, Status
from tests.web import NOW, Site, rollout_rows

RECENT = NOW - datetime.timedelta(seconds=20)
LONG_AGO = NOW - datetime.timedelta(days=3)


def _tile(page: httpx.Response, status: str) -> int:
    found = re.search(rf'class="tile {status}"[^>]*>\s*<span class="n">(\d+)</span>', page.text)
    assert found is not None, status
    return int(found.group(1))


def _device(device_id: str, **fields: object) -> Device:
    values: dict[str, object] = {
        "id": device_id,
        "labels": {},
        "last_seen": RECENT,
        "image": "gateway",
        "current_version": "1.0",
    }
    values.update(fields)
    return Device(**values)


def test_devices_are_counted_by_status_and_linked_to_the_filtered_list(web: Site) -> None:
    web.add(
        _device("a"),
        _device("b"),
        _device("c", updating=True),
        _device("d", health_ok=False),
        _device("e", rolled_back_at=RECENT),
        _device("f", last_seen=LONG_AGO),
        _device("g", last_seen=None),
    )
    page = web.login("viewer").get("/")
    assert page.status_code == 200
    counts = {
        s: _tile(page, s) for s in ("Online", "Updating", "Degraded", "RolledBack", "Offline")
    }
    assert counts == {"Online": 2, "Updating": 1, "Degraded": 1, "RolledBack": 1, "Offline": 2}
    assert 'href="/devices?status=Offline"' in page.text
    assert "7 devices in all" in page.text


def test_versions_per_image_are_a_chart_and_a_table_in_version_order(web: Site) -> None:
    web.add(
        *[_device(f"g{i}", current_version="1.10") for i in range(3)],
        *[_device(f"h{i}", current_version="1.9") for i in range(2)],
        _device("s1", image="sensor", current_version="2.0"),
        _device("new", image=None, current_version=None),
    )
    page = web.login("viewer").get("/")
    charts = re.findall(r'<script type="application/json" id="chart-\d+">(.*?)</script>', page.text)
    specs = [json.loads(c) for c in charts]
    by_name = {s["datasets"][0]["label"]: s for s in specs}
    gateway = by_name["gateway: devices"]
    assert gateway["labels"] == ["1.9", "1.10"]
    assert gateway["datasets"][0]["data"] == [2, 3]
    assert by_name["sensor: devices"]["labels"] == ["2.0"]
    assert "(not reported)" in page.text  # a device that never reported its image
    assert 'href="/devices?version=1.10"' in page.text
    assert "/static/vendor/chart-4.5.1.umd.min.js" in page.text


def test_rollouts_in_progress_show_their_progress_and_finished_ones_do_not(web: Site) -> None:
    counters = Counters(selected=10, assigned=4, succeeded=3, rolled_back=1)
    paused = RolloutState(
        status=Status.PAUSED, batch=1, reason="1 device rolled back: d7", counters=counters
    )
    done = RolloutState(status=Status.COMPLETED, batch=2)
    web.add(*rollout_rows(paused, done, batches=[1, "50%", "100%"]))
    page = web.login("viewer").get("/")
    assert 'href="/rollouts/1"' in page.text
    assert 'href="/rollouts/2"' not in page.text
    assert "batch 2 of 3" in page.text
    assert "1 device rolled back: d7" in page.text
    assert "3 of 10 succeeded, 0 in progress, 1 failed, 0 up to date" in page.text
    assert '<rect class="succeeded" x="0" y="0" width="300.0"' in page.text


def test_the_latest_events_are_shown_escaped(web: Site) -> None:
    hostile = "<script>alert(1)</script>"
    web.add(
        Event(
            time=NOW,
            actor="device:x",
            kind="device.health_failed",
            subject=f"device:{hostile}",
            details={"failed": [hostile], "detail": hostile},
        )
    )
    page = web.login("viewer").get("/")
    assert "device.health_failed" in page.text
    assert "<script>alert" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
