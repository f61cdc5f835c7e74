"""The device's verifying client: ngclient over real HTTP on 127.0.0.1, real keys and metadata."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest

from afield.errors import TransportError, TrustError
from afield.trust import Keyring, MetadataRepository, TrustedUpdater
from tests.trust import fake_release, serve


def _repository(tmp_path: Path) -> tuple[Path, Keyring, MetadataRepository]:
    directory = tmp_path / "repo"
    keyring = Keyring.generate(tmp_path / "keys")
    return directory, keyring, MetadataRepository.create(directory / "tuf", keyring)


def _device(tmp_path: Path, directory: Path) -> Path:
    """A device's metadata directory holding the repository's first root as its trust anchor."""
    device = tmp_path / "device"
    device.mkdir()
    (device / "root.json").write_bytes((directory / "tuf" / "1.root.json").read_bytes())
    return device


def test_latest_is_the_newest_release_of_image_arch_and_channel(tmp_path: Path) -> None:
    directory, keyring, meta = _repository(tmp_path)
    for release in (
        fake_release(directory, "1.0.0"),
        fake_release(directory, "1.10.0"),
        fake_release(directory, "1.9.0"),
        fake_release(directory, "2.0.0", channel="beta"),
        fake_release(directory, "3.0.0", arch="aarch64"),
        fake_release(directory, "4.0.0", image="kiosk"),
    ):
        meta.add_release(release, keyring)
    device = _device(tmp_path, directory)
    with serve(directory) as url, TrustedUpdater(device, url) as updater:
        assert len(updater.releases()) == 6
        latest = updater.latest("gateway", "x86_64", "stable")
        assert latest is not None and latest.version == "1.10.0"
        assert updater.latest("gateway", "x86_64", "stable", newer_than="1.9.0") == latest
        beta = updater.latest("gateway", "x86_64", "beta")
        assert beta is not None and beta.version == "2.0.0"
        assert updater.latest("gateway", "riscv64") is None


def test_a_device_is_never_offered_an_older_or_equal_version(tmp_path: Path) -> None:
    # Threat: rollback to an older, vulnerable release that is still validly signed.
    directory, keyring, meta = _repository(tmp_path)
    meta.add_release(fake_release(directory, "1.0.0"), keyring)
    meta.add_release(fake_release(directory, "1.1.0"), keyring)
    with serve(directory) as url, TrustedUpdater(_device(tmp_path, directory), url) as updater:
        assert updater.latest("gateway", "x86_64", newer_than="1.1.0") is None
        assert updater.latest("gateway", "x86_64", newer_than="2.0.0") is None
        offered = updater.latest("gateway", "x86_64", newer_than="1.0.0")
        assert offered is not None and offered.version == "1.1.0"


def test_download_writes_the_verified_commit_object(tmp_path: Path) -> None:
    directory, keyring, meta = _repository(tmp_path)
    release = fake_release(directory, "1.0.0")
    meta.add_release(release, keyring)
    with serve(directory) as url, TrustedUpdater(_device(tmp_path, directory), url) as updater:
        latest = updater.latest("gateway", "x86_64")
        assert latest == release
        path = updater.download(latest, tmp_path / "downloads")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == release.commit


def test_device_follows_rotations_from_its_old_trusted_root(tmp_path: Path) -> None:
    directory, keyring, meta = _repository(tmp_path)
    meta.add_release(fake_release(directory, "1.0.0"), keyring)
    device = _device(tmp_path, directory)
    with serve(directory) as url:
        with TrustedUpdater(device, url) as updater:
            updater.refresh()
        for role in ("timestamp", "root", "targets", "snapshot"):
            meta.rotate(keyring, role)
        meta.add_release(fake_release(directory, "1.1.0"), keyring)
        with TrustedUpdater(device, url) as updater:
            latest = updater.latest("gateway", "x86_64")
    assert latest is not None and latest.version == "1.1.0"
    assert (device / "root_history" / "5.root.json").is_file()
    assert (device / "root.json").read_bytes() == (directory / "tuf" / "5.root.json").read_bytes()


def test_trusted_root_bytes_can_be_given_instead_of_a_file(tmp_path: Path) -> None:
    directory, keyring, meta = _repository(tmp_path)
    meta.add_release(fake_release(directory, "1.0.0"), keyring)
    root = (directory / "tuf" / "root.json").read_bytes()
    with serve(directory) as url, TrustedUpdater(tmp_path / "new", url, trusted_root=root) as u:
        assert [r.version for r in u.releases()] == ["1.0.0"]


def test_no_trusted_root_is_a_clear_user_error(tmp_path: Path) -> None:
    with pytest.raises(TrustError, match="no trusted root metadata") as caught:
        TrustedUpdater(tmp_path / "device", "http://127.0.0.1:9/")
    assert caught.value.user_error


def test_unreachable_repository_is_a_transport_error(tmp_path: Path) -> None:
    directory, _, _ = _repository(tmp_path)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    updater = TrustedUpdater(_device(tmp_path, directory), f"http://127.0.0.1:{port}")
    with pytest.raises(TransportError, match="download failed"):
        updater.refresh()


def test_missing_metadata_on_the_server_is_reported_by_url(tmp_path: Path) -> None:
    directory, _, _ = _repository(tmp_path)
    (directory / "tuf" / "timestamp.json").unlink()
    with (
        serve(directory) as url,
        TrustedUpdater(_device(tmp_path, directory), url) as updater,
        pytest.raises(TransportError, match=r"HTTP 404 \(last fetched .*timestamp\.json\)"),
    ):
        updater.refresh()
