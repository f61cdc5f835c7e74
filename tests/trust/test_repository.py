"""Signed metadata on disk: creation, releases, expiries, refresh and key rotation."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, Root

from afield.errors import TrustError
from afield.trust import Expiries, Keyring, MetadataRepository, parse_duration
from tests.trust import fake_release

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


def _setup(tmp_path: Path, **kwargs: int) -> tuple[Keyring, MetadataRepository]:
    keyring = Keyring.generate(tmp_path / "keys", **kwargs)
    return keyring, MetadataRepository.create(tmp_path / "repo" / "tuf", keyring, now=NOW)


def _root(path: Path) -> Metadata[Root]:
    md: Metadata[Root] = Metadata.from_file(str(path))
    return md


def test_create_writes_version_1_of_every_role_with_default_expiries(tmp_path: Path) -> None:
    _, meta = _setup(tmp_path)
    tuf = tmp_path / "repo" / "tuf"
    assert {p.name for p in tuf.glob("*.json")} == {
        "1.root.json",
        "root.json",
        "targets.json",
        "snapshot.json",
        "timestamp.json",
    }
    assert (tuf / "1.root.json").read_bytes() == (tuf / "root.json").read_bytes()
    status = MetadataRepository.open(tuf).status()
    assert {role: s["version"] for role, s in status.items()} == {
        "root": 1,
        "targets": 1,
        "snapshot": 1,
        "timestamp": 1,
    }
    assert status["root"]["expires"] == "2027-01-01T12:00:00Z"
    assert status["targets"]["expires"] == "2026-04-01T12:00:00Z"
    assert status["snapshot"]["expires"] == "2026-01-08T12:00:00Z"
    assert status["timestamp"]["expires"] == "2026-01-02T12:00:00Z"
    assert meta.releases() == []
    assert not list(tuf.glob(".*.tmp"))


def test_create_refuses_to_replace_an_existing_root(tmp_path: Path) -> None:
    keyring, _ = _setup(tmp_path)
    before = (tmp_path / "repo" / "tuf" / "root.json").read_bytes()
    with pytest.raises(TrustError, match="already exists") as caught:
        MetadataRepository.create(tmp_path / "repo" / "tuf", keyring)
    assert caught.value.user_error
    assert (tmp_path / "repo" / "tuf" / "root.json").read_bytes() == before


def test_root_threshold_is_signed_into_root(tmp_path: Path) -> None:
    keyring, _ = _setup(tmp_path, root_threshold=2, root_keys=3)
    root = _root(tmp_path / "repo" / "tuf" / "root.json")
    assert root.signed.roles["root"].threshold == 2
    assert sorted(root.signed.roles["root"].keyids) == sorted(keyring.keyids("root"))
    assert len(root.signatures) == 3


def test_add_release_bumps_targets_snapshot_and_timestamp(tmp_path: Path) -> None:
    keyring, meta = _setup(tmp_path)
    release = fake_release(tmp_path / "repo", "1.0.0")
    later = NOW + dt.timedelta(hours=1)
    meta.add_release(release, keyring, now=later)
    reopened = MetadataRepository.open(tmp_path / "repo" / "tuf")
    assert reopened.releases() == [release]
    status = reopened.status()
    assert [status[r]["version"] for r in ("root", "targets", "snapshot", "timestamp")] == [
        1,
        2,
        2,
        2,
    ]
    assert status["timestamp"]["expires"] == "2026-01-02T13:00:00Z"
    targets = json.loads((tmp_path / "repo" / "tuf" / "targets.json").read_text())
    entry = targets["signed"]["targets"][release.path]
    assert entry["hashes"] == {"sha256": release.commit}
    assert entry["custom"]["deltas"] == []
    assert entry["custom"]["image"] == "gateway"
    with pytest.raises(TrustError, match="already published"):
        reopened.add_release(release, keyring)


def test_custom_expiries_are_applied(tmp_path: Path) -> None:
    keyring, meta = _setup(tmp_path)
    expiries = Expiries(
        targets=dt.timedelta(days=30),
        snapshot=dt.timedelta(days=2),
        timestamp=dt.timedelta(hours=6),
    )
    meta.add_release(fake_release(tmp_path / "repo", "1.0.0"), keyring, expiries=expiries, now=NOW)
    status = meta.status()
    assert status["targets"]["expires"] == "2026-01-31T12:00:00Z"
    assert status["snapshot"]["expires"] == "2026-01-03T12:00:00Z"
    assert status["timestamp"]["expires"] == "2026-01-01T18:00:00Z"


def test_refresh_resigns_timestamp_and_snapshot_only_when_half_spent(tmp_path: Path) -> None:
    keyring, meta = _setup(tmp_path)
    soon = meta.refresh(keyring, now=NOW + dt.timedelta(hours=12))
    assert soon.resigned == {"timestamp": 2}
    late = meta.refresh(keyring, now=NOW + dt.timedelta(days=4))
    assert late.resigned == {"snapshot": 2, "timestamp": 3}
    status = MetadataRepository.open(tmp_path / "repo" / "tuf").status()
    assert status["timestamp"]["expires"] == "2026-01-06T12:00:00Z"
    assert status["snapshot"]["expires"] == "2026-01-12T12:00:00Z"
    assert status["targets"]["version"] == 1


def test_refresh_without_the_targets_key_notes_when_targets_expire(tmp_path: Path) -> None:
    _, meta = _setup(tmp_path)
    for pem in (tmp_path / "keys").glob("targets-*.pem"):
        pem.unlink()
    online = Keyring.load(tmp_path / "keys")
    result = meta.refresh(online, now=NOW + dt.timedelta(days=60))
    assert result.resigned == {"snapshot": 2, "timestamp": 2}
    assert any("targets.json expires 2026-04-01" in note for note in result.notes)


def test_rotating_root_signs_the_new_version_with_old_and_new_keys(tmp_path: Path) -> None:
    keyring, meta = _setup(tmp_path)
    (old,) = keyring.keyids("root")
    result = meta.rotate(keyring, "root", now=NOW)
    tuf = tmp_path / "repo" / "tuf"
    v1, v2 = _root(tuf / "1.root.json"), _root(tuf / "2.root.json")
    assert result["root_version"] == 2 and result["removed"] == [old]
    assert v2.signed.roles["root"].keyids == result["added"]
    assert set(v2.signatures) == {old, *result["added"]}
    v1.signed.verify_delegate("root", v2.signed_bytes, v2.signatures)
    v2.signed.verify_delegate("root", v2.signed_bytes, v2.signatures)
    assert (tuf / "root.json").read_bytes() == (tuf / "2.root.json").read_bytes()
    assert Keyring.load(tmp_path / "keys").keyids("root") == result["added"]


def test_rotating_timestamp_resigns_timestamp_with_the_new_key(tmp_path: Path) -> None:
    keyring, meta = _setup(tmp_path)
    result = meta.rotate(keyring, "timestamp", now=NOW)
    assert result["resigned"] == ["timestamp"]
    timestamp = json.loads((tmp_path / "repo" / "tuf" / "timestamp.json").read_text())
    assert [s["keyid"] for s in timestamp["signatures"]] == result["added"]
    assert MetadataRepository.open(tmp_path / "repo" / "tuf").status()["timestamp"]["version"] == 2


def test_rotation_needs_the_old_root_keys(tmp_path: Path) -> None:
    _, meta = _setup(tmp_path, root_threshold=2, root_keys=2)
    pems = sorted((tmp_path / "keys").glob("root-*.pem"))
    pems[0].unlink()
    partial = Keyring.load(tmp_path / "keys")
    before = partial.keyids("targets")
    with pytest.raises(TrustError, match="signature threshold check failed"):
        meta.rotate(partial, "targets")
    assert not (tmp_path / "repo" / "tuf" / "2.root.json").exists()
    assert Keyring.load(tmp_path / "keys").keyids("targets") == before
    assert meta.root.signed.version == 1


def test_a_key_directory_that_disagrees_with_root_cannot_sign(tmp_path: Path) -> None:
    _, meta = _setup(tmp_path)
    stranger = Keyring.generate(tmp_path / "other-keys")
    with pytest.raises(TrustError, match="key directory and the repository disagree"):
        meta.refresh(stranger)


def test_open_detects_a_targets_file_snapshot_does_not_describe(tmp_path: Path) -> None:
    _setup(tmp_path)
    targets = tmp_path / "repo" / "tuf" / "targets.json"
    targets.write_bytes(targets.read_bytes() + b" ")
    with pytest.raises(TrustError, match="do not describe each other"):
        MetadataRepository.open(tmp_path / "repo" / "tuf")


def test_open_detects_a_broken_signature(tmp_path: Path) -> None:
    _setup(tmp_path)
    path = tmp_path / "repo" / "tuf" / "timestamp.json"
    data = json.loads(path.read_text())
    data["signed"]["version"] = 7
    path.write_text(json.dumps(data))
    with pytest.raises(TrustError, match=r"timestamp\.json: signature threshold check failed"):
        MetadataRepository.open(tmp_path / "repo" / "tuf")


def test_durations_parse_with_units() -> None:
    assert parse_duration("12h", "--x") == dt.timedelta(hours=12)
    assert parse_duration("2w", "--x") == dt.timedelta(weeks=2)
    with pytest.raises(TrustError, match="--timestamp-expiry '0d'") as caught:
        parse_duration("0d", "--timestamp-expiry")
    assert caught.value.user_error


def test_a_failed_signing_leaves_files_and_memory_as_they_were(tmp_path: Path) -> None:
    _, meta = _setup(tmp_path)
    for pem in (tmp_path / "keys").glob("snapshot-*.pem"):
        pem.unlink()
    tuf = tmp_path / "repo" / "tuf"
    files = {p.name: p.read_bytes() for p in tuf.glob("*.json")}
    status = meta.status()
    with pytest.raises(TrustError, match="no private key for the snapshot role"):
        meta.add_release(fake_release(tmp_path / "repo", "1.0.0"), Keyring.load(tmp_path / "keys"))
    assert meta.releases() == []
    assert meta.status() == status
    assert {p.name: p.read_bytes() for p in tuf.glob("*.json")} == files
