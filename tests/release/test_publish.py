"""Publishing real OSTree commits as signed releases: library, CLI, expiries and refresh."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from afield.errors import RepositoryError, TrustError
from afield.image import open_repository
from afield.release import init_repository, list_releases, publish, refresh
from afield.trust import Expiries, Keyring, TrustedUpdater
from tests.conftest import afield
from tests.device.images import commit_image
from tests.trust import serve


def _commit(tmp_path: Path, version: str, **kwargs: str) -> str:
    work = tmp_path / "work" / f"{version}-{'-'.join(kwargs.values())}"
    return commit_image(tmp_path / "repo", work, version=version, **kwargs)


def _started(tmp_path: Path) -> tuple[Path, Keyring]:
    keyring = Keyring.generate(tmp_path / "keys")
    init_repository(tmp_path / "repo", keyring)
    return tmp_path / "repo", keyring


def _device(tmp_path: Path) -> Path:
    device = tmp_path / "device"
    device.mkdir()
    shutil.copy(tmp_path / "repo" / "tuf" / "1.root.json", device / "root.json")
    return device


def test_publish_signs_the_commit_object_so_its_sha256_is_the_checksum(tmp_path: Path) -> None:
    checksum = _commit(tmp_path, "1.0.0")
    directory, keyring = _started(tmp_path)
    release = publish(directory, keyring, "afield/gateway/x86_64/stable-1.0.0")
    obj = directory / "ostree" / "objects" / checksum[:2] / f"{checksum[2:]}.commit"
    assert release.path == f"ostree/objects/{checksum[:2]}/{checksum[2:]}.commit"
    assert release.commit == checksum == hashlib.sha256(obj.read_bytes()).hexdigest()
    assert release.length == obj.stat().st_size
    assert (release.image, release.arch, release.version, release.channel) == (
        "gateway",
        "x86_64",
        "1.0.0",
        "stable",
    )
    assert release.ref == "afield/gateway/x86_64/stable-1.0.0"
    assert release.deltas == ()
    with serve(directory) as url, TrustedUpdater(_device(tmp_path), url) as device:
        latest = device.latest("gateway", "x86_64")
        assert latest == release
        path = device.download(latest, tmp_path / "downloads")
    assert open_repository(directory).commit_info(checksum).version == "1.0.0"
    assert path.read_bytes() == obj.read_bytes()


def test_publish_by_checksum_prefix_with_a_version_and_channel(tmp_path: Path) -> None:
    checksum = _commit(tmp_path, "1.0.0")
    directory, keyring = _started(tmp_path)
    release = publish(directory, keyring, checksum[:12], version="1.0.1", channel="beta")
    assert (release.commit, release.version, release.channel) == (checksum, "1.0.1", "beta")
    assert release.ref == "afield/gateway/x86_64/stable-1.0.0"


def test_publish_refuses_a_version_not_newer_on_the_same_channel(tmp_path: Path) -> None:
    first, second = _commit(tmp_path, "1.1.0"), _commit(tmp_path, "1.0.0")
    directory, keyring = _started(tmp_path)
    publish(directory, keyring, first)
    for version in ("1.0.0", "1.1.0", "1.1"):
        with pytest.raises(RepositoryError, match=r"not newer than 1\.1\.0") as caught:
            publish(directory, keyring, second, version=version)
        assert caught.value.user_error
    before = (directory / "tuf" / "targets.json").read_bytes()
    publish(directory, keyring, second, channel="lts")
    assert (directory / "tuf" / "targets.json").read_bytes() != before
    other_arch = _commit(tmp_path, "0.1.0", arch="aarch64")
    assert publish(directory, keyring, other_arch).arch == "aarch64"


def test_publish_refuses_the_same_commit_twice(tmp_path: Path) -> None:
    checksum = _commit(tmp_path, "1.0.0")
    directory, keyring = _started(tmp_path)
    publish(directory, keyring, checksum)
    with pytest.raises(RepositoryError, match=r"already published as gateway 1\.0\.0 on channel"):
        publish(directory, keyring, checksum, channel="beta")


def test_publish_refuses_a_commit_that_does_not_exist(tmp_path: Path) -> None:
    _commit(tmp_path, "1.0.0")
    directory, keyring = _started(tmp_path)
    for missing in ("0" * 64, "deadbeef00", "afield/gateway/x86_64/nope"):
        with pytest.raises(RepositoryError, match=r"no ref or commit|no commit") as caught:
            publish(directory, keyring, missing)
        assert caught.value.user_error
    assert list_releases(directory).releases == []


def test_publish_before_release_init_says_how_to_start(tmp_path: Path) -> None:
    checksum = _commit(tmp_path, "1.0.0")
    keyring = Keyring.generate(tmp_path / "keys")
    with pytest.raises(TrustError, match="afield release init") as caught:
        publish(tmp_path / "repo", keyring, checksum)
    assert caught.value.user_error
    with pytest.raises(TrustError, match="afield release init"):
        list_releases(tmp_path / "repo")
    assert not (tmp_path / "repo" / "tuf").exists()


def test_publish_refuses_a_commit_that_is_not_an_afield_image(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "usr").mkdir(parents=True)
    (tree / "usr" / "hello").write_text("hello\n")
    repo = open_repository(tmp_path / "repo", create=True)
    plain = repo.commit_tree(tree, subject="plain", metadata={"version": "1.0.0"}, timestamp=0)
    directory, keyring = _started(tmp_path)
    with pytest.raises(RepositoryError, match=r"no afield\.image or afield\.arch metadata"):
        publish(directory, keyring, plain)


def test_publish_without_the_targets_key_changes_nothing(tmp_path: Path) -> None:
    checksum = _commit(tmp_path, "1.0.0")
    directory, _ = _started(tmp_path)
    for pem in (tmp_path / "keys").glob("targets-*.pem"):
        pem.unlink()
    before = {p.name: p.read_bytes() for p in (directory / "tuf").glob("*.json")}
    with pytest.raises(TrustError, match="no private key for the targets role"):
        publish(directory, Keyring.load(tmp_path / "keys"), checksum)
    assert {p.name: p.read_bytes() for p in (directory / "tuf").glob("*.json")} == before


def test_refresh_unfreezes_devices_after_the_timestamp_expired(tmp_path: Path) -> None:
    checksum = _commit(tmp_path, "1.0.0")
    directory, keyring = _started(tmp_path)
    two_days_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    publish(directory, keyring, checksum, now=two_days_ago)
    device = _device(tmp_path)
    with serve(directory) as url:
        with TrustedUpdater(device, url) as updater, pytest.raises(TrustError, match="expired"):
            updater.refresh()
        result = refresh(directory, keyring)
        assert set(result.resigned) == {"timestamp"}
        with TrustedUpdater(device, url) as updater:
            assert updater.latest("gateway", "x86_64") is not None


def test_expiries_of_a_publish_follow_the_options(tmp_path: Path) -> None:
    checksum = _commit(tmp_path, "1.0.0")
    directory, keyring = _started(tmp_path)
    now = dt.datetime(2030, 5, 1, tzinfo=dt.UTC)
    expiries = Expiries(targets=dt.timedelta(days=10), timestamp=dt.timedelta(hours=2))
    publish(directory, keyring, checksum, expiries=expiries, now=now)
    metadata = list_releases(directory).metadata
    assert metadata["targets"]["expires"] == "2030-05-11T00:00:00Z"
    assert metadata["snapshot"]["expires"] == "2030-05-08T00:00:00Z"
    assert metadata["timestamp"]["expires"] == "2030-05-01T02:00:00Z"


def test_cli_init_publish_ls_refresh_and_rotate(tmp_path: Path) -> None:
    checksum = _commit(tmp_path, "1.0.0")
    newer = _commit(tmp_path, "1.2.0")
    repo, keys = str(tmp_path / "repo"), str(tmp_path / "keys")
    afield("keys", "init", "--dir", keys, "--repo", repo, check=True)
    assert (tmp_path / "repo" / "tuf" / "1.root.json").is_file()
    other_keys = tmp_path / "other-keys"
    again = afield("keys", "init", "--dir", str(other_keys), "--repo", repo)
    assert again.returncode == 2 and "root.json: already exists" in again.stderr
    assert not other_keys.exists()
    published = afield("release", "publish", "--repo", repo, "--keys", keys, "--commit", checksum)
    assert published.returncode == 0, published.stderr
    assert checksum in published.stdout
    again = afield("release", "publish", "--repo", repo, "--keys", keys, "--commit", checksum)
    assert again.returncode == 2
    assert again.stderr.startswith("error: ") and "not newer than 1.0.0" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    missing = afield("release", "publish", "--repo", repo, "--keys", keys, "--commit", "feedface")
    assert missing.returncode == 2 and "no ref or commit 'feedface'" in missing.stderr
    result = afield(
        "release", "publish", "--repo", repo, "--keys", keys, "--commit", newer,
        "--channel", "stable", "--timestamp-expiry", "6h", "--json",
    )  # fmt: skip
    assert json.loads(result.stdout)["version"] == "1.2.0"
    listing = json.loads(afield("release", "ls", "--repo", repo, "--json", check=True).stdout)
    assert [r["version"] for r in listing["releases"]] == ["1.2.0", "1.0.0"]
    assert [r["commit"] for r in listing["releases"]] == [newer, checksum]
    assert listing["metadata"]["timestamp"]["version"] == 3
    table = afield("release", "ls", "--repo", repo, check=True).stdout
    assert "1.2.0" in table and "timestamp" in table
    refreshed = afield("release", "refresh", "--repo", repo, "--keys", keys, "--json", check=True)
    assert json.loads(refreshed.stdout)["resigned"] == {"timestamp": 4}
    rotated = afield(
        "keys", "rotate", "--dir", keys, "--repo", repo, "--role", "root", "--json", check=True
    )
    assert json.loads(rotated.stdout)["root_version"] == 2
    bad = afield("keys", "rotate", "--dir", keys, "--repo", repo, "--role", "mirror")
    assert bad.returncode == 2 and "unknown role 'mirror'" in bad.stderr
    with serve(tmp_path / "repo") as url, TrustedUpdater(_device(tmp_path), url) as device:
        latest = device.latest("gateway", "x86_64")
    assert latest is not None and latest.commit == newer
