"""``afield device update`` end to end: real keys and TUF metadata, real HTTP, real OSTree pulls.

Each test publishes small real images (:mod:`tests.device.images`) as releases of an afield
repository, serves it with :func:`afield.release.serve.running` on 127.0.0.1, and updates a real
sysroot whose trusted root came from ``Device.init(trust_root=...)``. Attacks are played by
changing files on the server after publishing; every one must leave the deployments as they were.
"""

from __future__ import annotations

import json
import socket

import pytest

from afield.device.bootseq import boot_once
from afield.device.lifecycle import Device
from afield.device.status import device_status
from afield.device.transport import RetryPolicy
from afield.device.update import trust_dir, update
from afield.errors import DeviceError, TransportError, TrustError
from afield.release.serve import running
from afield.trust import UpdaterLimits, commit_target_path
from tests.conftest import afield
from tests.device.conftest import Site

pytestmark = pytest.mark.root

# Retries that do not make a failing test wait.
FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05, timeout=5)


def _deployments(device: Device) -> tuple[list[str], bytes]:
    """What must not change when an update fails: the deployments and the grubenv."""
    return [d.name for d in device.deployments()], device.grubenv_path.read_bytes()


def _events(device: Device) -> list[str]:
    return [e["event"] for e in device.state.events()]


def test_update_stages_the_newest_release_and_it_boots(site: Site) -> None:
    site.publish(site.v1, site.v2)
    device = site.device(site.v1)
    with running(site.directory) as url:
        result = update(device, url)
        assert result.updated
        assert result.version == "2.0.0" and result.commit == site.v2
        assert result.target == commit_target_path(site.v2)
        # 2.0.0 was published with a static delta from 1.0.0, which the device runs.
        assert result.used_delta and result.delta_error is None
        assert result.bytes_downloaded > 0 and result.objects_fetched == 0
        assert result.booted_version == "1.0.0"
        status = device_status(device)
        assert status["pending"]["checksum"] == site.v2
        assert status["boot_counter"] == "3"
        # Run again before rebooting: the release is already staged, nothing is pulled.
        again = update(device, url)
        assert not again.updated and "already staged" in again.reason
    booted = boot_once(device)
    assert booted.healthy and booted.checksum == site.v2
    assert (device.booted().path / "etc" / "app.conf").read_text() == "level = 2\n"
    staged = [e for e in device.state.events() if e["event"] == "update staged"]
    assert len(staged) == 1
    assert staged[0]["commit"] == site.v2 and staged[0]["version"] == "2.0.0"
    assert staged[0]["bytes_downloaded"] == result.bytes_downloaded
    assert staged[0]["target"] == result.target and staged[0]["used_delta"] is True
    # The verified metadata is kept, so the next refresh is incremental and rollback-protected.
    assert {"root.json", "timestamp.json", "snapshot.json", "targets.json"} <= {
        p.name for p in trust_dir(device).iterdir()
    }


def test_up_to_date_device_stages_nothing(site: Site) -> None:
    site.publish(site.v1)
    device = site.device(site.v1)
    before = _deployments(device)
    with running(site.directory) as url:
        result = update(device, url)
    assert not result.updated and "already up to date" in result.reason
    assert result.to_dict()["updated"] is False and result.bytes_downloaded == 0
    assert _deployments(device) == before
    assert "staged" not in _events(device)


def test_an_older_release_offered_is_refused(site: Site) -> None:
    # Threat: rollback — the server offers only an older, validly signed release.
    site.publish(site.v1)
    device = site.device(site.v2)
    before = _deployments(device)
    with running(site.directory) as url, pytest.raises(DeviceError, match="anti-rollback"):
        update(device, url)
    assert _deployments(device) == before
    assert _events(device)[-1] == "update failed"


def test_asking_for_an_older_version_is_refused(site: Site) -> None:
    # Threat: rollback by request — an operator (or script) asks for a vulnerable old version.
    site.publish(site.v1, site.v2)
    device = site.device(site.v2)
    before = _deployments(device)
    with running(site.directory) as url, pytest.raises(DeviceError, match="anti-rollback") as e:
        update(device, url, version="1.0.0")
    assert e.value.user_error
    assert _deployments(device) == before


def test_tampered_commit_object_is_rejected(site: Site) -> None:
    # Threat: arbitrary software — the server's commit object is replaced after signing.
    site.publish(site.v1, site.v2)
    device = site.device(site.v1)
    before = _deployments(device)
    commit_file = site.directory / commit_target_path(site.v2)
    data = commit_file.read_bytes()
    commit_file.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])
    with running(site.directory) as url, pytest.raises(TrustError, match="length/hash check"):
        update(device, url)
    assert _deployments(device) == before
    assert not device.sysroot.repo().has_commit(site.v2)


def test_corrupted_object_on_the_server_is_detected_by_ostree(site: Site) -> None:
    # Threat: a file object of the release is corrupted (or replaced) on the server; only
    # OSTree's object checksums, pinned by the TUF-signed commit, can catch it.
    site.publish(site.v1, site.v2, deltas=0)
    device = site.device(site.v1)
    before = _deployments(device)
    have = {p.stem for p in (device.sysroot_path / "ostree/repo/objects").rglob("*.file")}
    objects = site.directory / "ostree" / "objects"
    new = sorted(p for p in objects.rglob("*.filez") if p.stem not in have)
    assert new, "release 2.0.0 must bring file objects the device lacks"
    victim = max(new, key=lambda p: p.stat().st_size)
    original = victim.read_bytes()
    middle = len(original) // 2
    victim.write_bytes(
        original[:middle] + bytes([original[middle] ^ 0x01]) + original[middle + 1 :]
    )
    with running(site.directory) as url:
        with pytest.raises(DeviceError, match=r"cannot fetch.*[Cc]orrupted"):
            update(device, url, policy=FAST)
        assert _deployments(device) == before
        assert "staged" not in _events(device)
        # Once the server is repaired, the next attempt completes the partial pull.
        victim.write_bytes(original)
        assert update(device, url).updated
    assert boot_once(device).checksum == site.v2


def test_server_down_is_a_transport_error(site: Site) -> None:
    # Fault: nothing listens at the server's address.
    site.publish(site.v1, site.v2)
    device = site.device(site.v1)
    before = _deployments(device)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    limits = UpdaterLimits(timeout=5)
    with pytest.raises(TransportError, match=r"gave up after 3 attempts.*cannot connect"):
        update(device, f"http://127.0.0.1:{port}/", limits=limits, policy=FAST)
    assert _deployments(device) == before


def test_device_without_a_trusted_root_is_told_how_to_get_one(site: Site) -> None:
    site.publish(site.v1, site.v2)
    device = site.device(site.v1, trusted=False)
    with running(site.directory) as url, pytest.raises(DeviceError, match="--trust-root") as e:
        update(device, url)
    assert e.value.user_error


def test_cli_update_json(site: Site) -> None:
    site.publish(site.v1, site.v2)
    device = site.device(site.v1)
    with running(site.directory) as url:
        args = ("device", "update", "--sysroot", str(device.sysroot_path), "--server", url)
        result = afield(*args, "--json", check=True)
        data = json.loads(result.stdout)
        assert data["updated"] is True
        assert (data["version"], data["commit"]) == ("2.0.0", site.v2)
        assert data["target"] == commit_target_path(site.v2)
        assert data["bytes_downloaded"] > 0 and data["used_delta"] is True
        assert data["max_rate"] is None and data["delta_error"] is None
        again = json.loads(afield(*args, "--json", check=True).stdout)
        assert again["updated"] is False
    assert device_status(device)["pending"]["checksum"] == site.v2
