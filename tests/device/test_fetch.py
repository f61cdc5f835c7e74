"""Delivery over a bad network: static deltas, fallbacks, resumption, retries, stalls, metering.

Every test serves a real afield repository (real TUF metadata, real OSTree objects and static
deltas) with the real server, behind :mod:`tests.netfaults`, which cuts, fails or stalls
responses and counts the bytes that leave the server. Devices are real sysroots. After a
failure the deployments must be as they were; after a recovered fault the bytes on the wire
must show that nothing completed was fetched twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from afield.device.bootseq import boot_once
from afield.device.lifecycle import Device
from afield.device.transport import RetryPolicy
from afield.device.update import downloads_dir, update
from afield.errors import DeviceError, TransportError
from afield.release import list_releases
from afield.trust import UpdaterLimits
from tests.device.conftest import BLOB_BYTES, Site
from tests.netfaults import faulty

pytestmark = pytest.mark.root

FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05, timeout=5)


def _deployments(device: Device) -> tuple[list[str], bytes]:
    return [d.name for d in device.deployments()], device.grubenv_path.read_bytes()


def _delta(site: Site) -> Mapping[str, Any]:
    """The one static delta published for 2.0.0 (from 1.0.0)."""
    (release,) = [r for r in list_releases(site.directory).releases if r.commit == site.v2]
    (delta,) = release.deltas
    return delta


def _delta_length(site: Site, name: str | None = None) -> int:
    """The signed length of the delta, or of its file ``name``."""
    delta = _delta(site)
    if name is None:
        return int(delta["length"])
    return next(int(f["length"]) for f in delta["files"] if f["name"] == name)


def _booted_blob(device: Device) -> str:
    result = boot_once(device)
    assert result.healthy, result.report
    return (device.booted().path / "etc" / "blob.txt").read_text()


def test_only_the_signed_delta_crosses_the_wire(big_site: Site) -> None:
    big_site.publish(big_site.v1, big_site.v2)
    device = big_site.device(big_site.v1)
    with faulty(big_site.directory) as (url, served):
        result = update(device, url)
    assert result.used_delta and result.objects_fetched == 0
    ostree = [path for path, _ in served.sent_under("/ostree/")]
    # The commit object (through TUF), then the delta's files: no loose object.
    assert [p for p in ostree if "/objects/" in p] == [f"/ostree/{result.target[7:]}"]
    assert all("/deltas/" in p for p in ostree[1:]) and ostree[-1].endswith("/0")
    # What the device counted is what left the server (TUF's 404 probe for 2.root.json
    # is the only body it does not read).
    assert 0 <= served.sent - result.bytes_downloaded < 100
    assert result.bytes_downloaded < _delta_length(big_site) + 10_000
    assert len(_booted_blob(device)) == BLOB_BYTES


def test_delta_and_object_pull_give_the_same_tree(big_site: Site) -> None:
    big_site.publish(big_site.v1, big_site.v2)
    by_delta = big_site.device(big_site.v1, name="a")
    by_objects = big_site.device(big_site.v1, name="b")
    with faulty(big_site.directory) as (url, served):
        delta = update(by_delta, url)
        before = len(served.requests)
        objects = update(by_objects, url, use_deltas=False)
        pulled = [p for p, _ in served.requests[before:] if p.endswith(".filez")]
    assert delta.used_delta and not objects.used_delta
    assert objects.objects_fetched > 0 and pulled
    assert _booted_blob(by_delta) == _booted_blob(by_objects)
    assert by_delta.booted().checksum == by_objects.booted().checksum == big_site.v2


def test_without_a_delta_from_the_booted_commit_objects_are_pulled(site: Site) -> None:
    site.publish(site.v1)
    site.publish(site.v2, deltas=0)
    device = site.device(site.v1)
    with faulty(site.directory) as (url, served):
        result = update(device, url)
    assert not result.used_delta and result.delta_error is None
    assert result.objects_fetched > 0
    assert not served.sent_under("/ostree/deltas/")
    assert boot_once(device).checksum == site.v2


def test_a_tampered_delta_part_is_refused_and_objects_are_pulled(big_site: Site) -> None:
    # Threat: arbitrary software through the delta — a part is replaced on the server. The
    # signed sha256 catches it before libostree sees it; the object pull (checked by OSTree)
    # still brings the release.
    big_site.publish(big_site.v1, big_site.v2)
    device = big_site.device(big_site.v1)
    (part,) = (big_site.directory / "ostree" / "deltas").rglob("0")
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0x01
    part.write_bytes(bytes(data))
    with faulty(big_site.directory) as (url, _served):
        result = update(device, url)
    assert not result.used_delta and result.objects_fetched > 0
    assert result.delta_error is not None and "length/hash check failed" in result.delta_error
    staged = [e for e in device.state.events() if e["event"] == "update staged"]
    assert "length/hash check failed" in staged[-1]["delta_error"]
    assert not list(downloads_dir(device).rglob("*"))  # nothing of the bad delta is kept
    assert len(_booted_blob(device)) == BLOB_BYTES


def test_a_cut_connection_mid_delta_resumes_with_a_range_request(big_site: Site) -> None:
    big_site.publish(big_site.v1, big_site.v2)
    device = big_site.device(big_site.v1)
    delta = _delta_length(big_site)
    rules = {"cut_after": 200_000, "cut_prefix": "/ostree/deltas/"}
    with faulty(big_site.directory, **rules) as (url, served):
        result = update(device, url, policy=FAST)
    assert served.cuts == 1 and result.used_delta
    ranges = [r for p, r in served.sent_under("/ostree/deltas/") if r is not None]
    assert len(ranges) == 1 and ranges[0].startswith("bytes=")
    resumed_at = int(ranges[0][len("bytes=") : -1])
    assert 0 < resumed_at <= 200_000
    # Nothing fetched twice: the delta's bytes crossed the wire once, plus the metadata.
    assert delta <= result.bytes_downloaded < delta + 10_000
    assert len(_booted_blob(device)) == BLOB_BYTES


def test_a_cut_connection_mid_object_pull_refetches_only_the_cut_object(big_site: Site) -> None:
    big_site.publish(big_site.v1, big_site.v2, deltas=0)
    device = big_site.device(big_site.v1)
    rules = {"cut_after": 100_000, "cut_prefix": "/ostree/objects/"}
    with faulty(big_site.directory, **rules) as (url, served):
        result = update(device, url, policy=FAST)
    assert served.cuts == 1 and not result.used_delta
    # No object that arrived whole was fetched again: only the cut one (and any libostree
    # cancelled in flight when the pull failed) are requested a second time.
    objects = [p for p in served.completed if p.endswith(".filez")]
    assert objects and len(objects) == len(set(objects))
    fetched = [p for p, _ in served.sent_under("/ostree/objects/") if p.endswith(".filez")]
    assert len(fetched) > len(set(fetched))  # the cut object was fetched again
    assert len(_booted_blob(device)) == BLOB_BYTES


def test_a_killed_update_resumes_without_fetching_the_delta_again(big_site: Site) -> None:
    big_site.publish(big_site.v1, big_site.v2)
    device = big_site.device(big_site.v1)
    delta = _delta_length(big_site)
    with faulty(big_site.directory) as (url, served):
        command = [sys.executable, "-m", "afield.cli", "device", "update"]
        args = ["--sysroot", str(device.sysroot_path), "--server", url, "--max-rate", "100k"]
        child = subprocess.Popen(
            [*command, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        partial: list[Path] = []
        while time.monotonic() < deadline and child.poll() is None:
            partial = [p for p in downloads_dir(device).rglob("*.part") if p.stat().st_size]
            if partial and partial[0].stat().st_size > 150_000:
                break
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        assert partial, "the update should have been killed mid-download"
        seen = partial[0].stat().st_size
        result = update(device, url)
    assert result.used_delta
    (resumed,) = [r for _, r in served.sent_under("/ostree/deltas/") if r is not None]
    kept = int(resumed[len("bytes=") : -1])
    assert kept >= seen
    # Only the rest of the part was fetched after the kill (the superblock was complete).
    part = delta - _delta_length(big_site, "superblock")
    assert part - kept <= result.bytes_downloaded < part - kept + 10_000
    assert len(_booted_blob(device)) == BLOB_BYTES


def test_server_errors_are_retried_with_jittered_backoff(site: Site) -> None:
    site.publish(site.v1, site.v2)
    device = site.device(site.v1)
    waits: list[float] = []
    policy = RetryPolicy(attempts=4, base_delay=0.02, max_delay=1.0, sleep=waits.append)
    retries: list[int] = []
    with faulty(site.directory, fail=3) as (url, served):
        result = update(device, url, policy=policy, on_retry=lambda n, e, w: retries.append(n))
    assert result.updated and retries == [1, 2, 3]
    assert [p for p, _ in served.requests[:3]] == ["/tuf/2.root.json"] * 3
    # Full jitter: attempt n waits somewhere in [0, base * 2**(n-1)].
    assert all(0 <= w <= 0.02 * 2**i for i, w in enumerate(waits)) and len(waits) == 3


def test_5xx_during_the_object_pull_is_retried(site: Site) -> None:
    site.publish(site.v1)
    site.publish(site.v2, deltas=0)
    device = site.device(site.v1)
    with faulty(site.directory, fail=3, fail_pattern=r"\.filez$") as (url, served):
        # Only libostree's object requests fail; the pull is tried again.
        result = update(device, url, policy=RetryPolicy(attempts=4, base_delay=0.01))
    assert result.updated and served.fail == 0
    assert boot_once(device).checksum == site.v2


def test_server_errors_give_up_with_a_clear_error_and_change_nothing(site: Site) -> None:
    site.publish(site.v1, site.v2)
    device = site.device(site.v1)
    before = _deployments(device)
    with (
        faulty(site.directory, fail=1_000) as (url, _served),
        pytest.raises(TransportError, match=r"gave up after 3 attempts: HTTP 503"),
    ):
        update(device, url, policy=FAST)
    assert _deployments(device) == before
    failed = device.state.events()[-1]
    assert failed["event"] == "update failed" and "bytes_downloaded" in failed


def test_truncated_metadata_is_retried(site: Site) -> None:
    site.publish(site.v1, site.v2)
    device = site.device(site.v1)
    with faulty(site.directory, cut_after=50, cut_prefix="/tuf/timestamp") as (url, served):
        result = update(device, url, policy=FAST)
    assert served.cuts == 1 and result.updated


def test_slow_retrieval_of_metadata_is_cut_off(site: Site) -> None:
    # Threat: slow retrieval — the server (or a man in the middle) stalls the timestamp to
    # keep the device from ever learning about an update.
    site.publish(site.v1, site.v2)
    device = site.device(site.v1)
    before = _deployments(device)
    started = time.monotonic()
    with (
        faulty(site.directory, stall_prefix="/tuf/timestamp") as (url, _served),
        pytest.raises(TransportError, match="slow retrieval"),
    ):
        update(device, url, limits=UpdaterLimits(timeout=1), policy=FAST)
    assert time.monotonic() - started < 30
    assert _deployments(device) == before


def test_slow_retrieval_of_the_delta_falls_back_to_objects(big_site: Site) -> None:
    big_site.publish(big_site.v1, big_site.v2)
    device = big_site.device(big_site.v1)
    policy = RetryPolicy(attempts=2, base_delay=0.01, timeout=1)
    with faulty(big_site.directory, stall_prefix="/ostree/deltas/") as (url, _served):
        result = update(device, url, policy=policy)
    assert not result.used_delta and result.delta_error is not None
    assert "interrupted" in result.delta_error or "timed out" in result.delta_error
    assert len(_booted_blob(device)) == BLOB_BYTES


def test_slow_retrieval_by_a_trickling_server_is_cut_off(big_site: Site) -> None:
    # Threat: slow retrieval that never goes silent — a few bytes now and then keep every read
    # timeout from firing; the minimum average rate catches it and the object pull takes over.
    big_site.publish(big_site.v1, big_site.v2)
    device = big_site.device(big_site.v1)
    policy = RetryPolicy(attempts=2, base_delay=0.01, min_rate=5_000, min_rate_window=1.0)
    with faulty(big_site.directory, drip_prefix="/ostree/deltas/") as (url, _served):
        result = update(device, url, policy=policy)
    assert not result.used_delta
    assert result.delta_error is not None and "slow retrieval" in result.delta_error
    assert len(_booted_blob(device)) == BLOB_BYTES


def test_a_trickling_object_pull_is_cut_off_and_changes_nothing(big_site: Site) -> None:
    big_site.publish(big_site.v1, big_site.v2, deltas=0)
    device = big_site.device(big_site.v1)
    before = _deployments(device)
    policy = RetryPolicy(attempts=2, base_delay=0.01, min_rate=5_000, min_rate_window=1.0)
    started = time.monotonic()
    with (
        faulty(big_site.directory, drip_prefix="/ostree/objects/") as (url, _served),
        pytest.raises(DeviceError, match="slow retrieval"),
    ):
        update(device, url, policy=policy)
    assert time.monotonic() - started < 60
    assert _deployments(device) == before


def test_slow_retrieval_of_objects_fails_and_changes_nothing(site: Site) -> None:
    site.publish(site.v1)
    site.publish(site.v2, deltas=0)
    device = site.device(site.v1)
    before = _deployments(device)
    policy = RetryPolicy(attempts=2, base_delay=0.01, timeout=1)
    with (
        faulty(site.directory, stall_prefix="/ostree/objects/") as (url, _served),
        pytest.raises((TransportError, DeviceError), match=r"slow retrieval|stalled|timed out"),
    ):
        update(device, url, policy=policy, limits=UpdaterLimits(timeout=1))
    assert _deployments(device) == before


def test_max_rate_caps_the_download_and_is_journaled(big_site: Site) -> None:
    big_site.publish(big_site.v1, big_site.v2)
    device = big_site.device(big_site.v1)
    rate = 200_000
    with faulty(big_site.directory) as (url, _served):
        started = time.monotonic()
        result = update(device, url, max_rate=rate)
        elapsed = time.monotonic() - started
    # A lower bound only: the cap can make a download slower, never faster. The bucket
    # lets a quarter second's worth through at once.
    assert elapsed >= (result.bytes_downloaded - 20_000) / rate - rate / 4 / rate
    staged = [e for e in device.state.events() if e["event"] == "update staged"][-1]
    assert staged["max_rate"] == rate and staged["bytes_downloaded"] == result.bytes_downloaded


def test_cli_update_with_max_rate_and_no_deltas(big_site: Site) -> None:
    big_site.publish(big_site.v1, big_site.v2)
    device = big_site.device(big_site.v1)
    with faulty(big_site.directory) as (url, _served):
        args = ["--sysroot", str(device.sysroot_path), "--server", url]
        command = [sys.executable, "-m", "afield.cli", "device", "update", *args]
        done = subprocess.run(
            [*command, "--max-rate", "2M", "--no-deltas", "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
    data = json.loads(done.stdout)
    assert data["used_delta"] is False and data["max_rate"] == 2_000_000
    assert data["bytes_downloaded"] > BLOB_BYTES // 2
    bad = subprocess.run([*command, "--max-rate", "fast"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--max-rate" in bad.stderr
