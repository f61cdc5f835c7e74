"""Attacks on the update metadata, each rejected by ngclient with an error naming the check.

Every test publishes real OSTree commits with real keys, serves the afield repository with a real
HTTP server on 127.0.0.1, plays the attacker by changing files on that server (with or without
stolen keys), and runs the device's :class:`~afield.trust.TrustedUpdater` against it.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from afield.errors import TrustError
from afield.release import init_repository, publish, refresh
from afield.trust import Expiries, Keyring, ReleaseTarget, TrustedUpdater, UpdaterLimits
from tests.device.images import commit_image
from tests.trust import serve

FILES = ("timestamp.json", "snapshot.json", "targets.json")


@dataclass
class Site:
    """An afield repository with release 1.0.0 published, and a device that trusts root v1."""

    tmp: Path
    directory: Path
    keyring: Keyring
    device: Path
    refs: dict[str, str] = field(default_factory=dict)

    def commit(self, version: str) -> str:
        work = self.tmp / "work" / version
        if work.exists():
            return self.refs[version]
        self.refs[version] = commit_image(self.directory, work, version=version)
        return self.refs[version]

    def tuf(self, name: str) -> Path:
        return self.directory / "tuf" / name

    def save(self) -> dict[str, bytes]:
        return {name: self.tuf(name).read_bytes() for name in FILES}

    def restore(self, state: dict[str, bytes], *names: str) -> None:
        for name in names:
            self.tuf(name).write_bytes(state[name])

    def updater(self, url: str, limits: UpdaterLimits | None = None) -> TrustedUpdater:
        return TrustedUpdater(self.device, url, limits=limits)

    def trusted_version(self, role: str) -> int:
        """The version of ``role`` the device keeps as trusted."""
        return int(json.loads((self.device / f"{role}.json").read_text())["signed"]["version"])


@pytest.fixture
def site(tmp_path: Path) -> Site:
    directory = tmp_path / "repo"
    keyring = Keyring.generate(tmp_path / "keys")
    init_repository(directory, keyring)
    result = Site(tmp_path, directory, keyring, tmp_path / "device")
    publish(directory, keyring, result.commit("1.0.0"))
    result.device.mkdir()
    shutil.copy(directory / "tuf" / "1.root.json", result.device / "root.json")
    return result


def _load(path: Path) -> Metadata[Timestamp | Snapshot | Targets | Root]:
    md: Metadata[Timestamp | Snapshot | Targets | Root] = Metadata.from_file(str(path))
    return md


def _write(md: Metadata[Timestamp | Snapshot | Targets | Root], path: Path) -> bytes:
    data = md.to_bytes(JSONSerializer(compact=False))
    path.write_bytes(data)
    return data


def _evil_target(site: Site) -> ReleaseTarget:
    checksum = site.commit("6.6.6")
    obj = site.directory / "ostree" / "objects" / checksum[:2] / f"{checksum[2:]}.commit"
    return ReleaseTarget(
        path=f"ostree/objects/{checksum[:2]}/{checksum[2:]}.commit",
        length=obj.stat().st_size,
        sha256=checksum,
        image="gateway",
        arch="x86_64",
        version="6.6.6",
        channel="stable",
    )


def test_arbitrary_software_tampered_target_hash_is_rejected(site: Site) -> None:
    # Threat: arbitrary software — a mirror edits targets.json so the release names its commit.
    evil = _evil_target(site)
    targets = json.loads(site.tuf("targets.json").read_text())
    (path,) = targets["signed"]["targets"]
    entry = targets["signed"]["targets"].pop(path)
    entry["hashes"]["sha256"] = evil.commit
    targets["signed"]["targets"][evil.path] = entry
    site.tuf("targets.json").write_text(json.dumps(targets, indent=1))
    with (
        serve(site.directory) as url,
        site.updater(url) as device,
        pytest.raises(TrustError, match=r"length/hash check failed.*targets\.json"),
    ):
        device.latest("gateway", "x86_64")
    assert not (site.device / "targets.json").exists()


def test_arbitrary_software_signed_with_untrusted_keys_is_rejected(site: Site) -> None:
    # Threat: arbitrary software — an attacker re-signs the whole chain with keys of its own.
    attacker = CryptoSigner.generate_ed25519()
    targets = _load(site.tuf("targets.json"))
    assert isinstance(targets.signed, Targets)
    evil = _evil_target(site)
    targets.signed.targets[evil.path] = evil.to_target_file()
    targets.signed.version += 1
    targets.sign(attacker)
    snapshot = _load(site.tuf("snapshot.json"))
    assert isinstance(snapshot.signed, Snapshot)
    data = _write(targets, site.tuf("targets.json"))
    snapshot.signed.meta["targets.json"] = MetaFile.from_data(
        targets.signed.version, data, ["sha256"]
    )
    snapshot.signed.version += 1
    snapshot.sign(attacker)
    timestamp = _load(site.tuf("timestamp.json"))
    assert isinstance(timestamp.signed, Timestamp)
    data = _write(snapshot, site.tuf("snapshot.json"))
    timestamp.signed.snapshot_meta = MetaFile.from_data(snapshot.signed.version, data, ["sha256"])
    timestamp.signed.version += 1
    timestamp.sign(attacker)
    _write(timestamp, site.tuf("timestamp.json"))
    with (
        serve(site.directory) as url,
        site.updater(url) as device,
        pytest.raises(TrustError, match="signature check failed: timestamp was signed by 0/1"),
    ):
        device.refresh()


def test_arbitrary_software_replaced_commit_object_is_rejected(site: Site) -> None:
    # Threat: arbitrary software — the commit object file is swapped on the server after signing.
    with serve(site.directory) as url, site.updater(url) as device:
        release = device.latest("gateway", "x86_64")
        assert release is not None
        obj = site.directory / release.path
        data = bytearray(obj.read_bytes())
        data[-1] ^= 0xFF  # same length, different bytes: only the hash can tell
        obj.write_bytes(bytes(data))
        with pytest.raises(TrustError, match=r"length/hash check failed.*\.commit"):
            device.download(release, site.tmp / "downloads")
    assert not list((site.tmp / "downloads").glob("*"))


def test_metadata_rollback_is_rejected(site: Site) -> None:
    # Threat: rollback — a mirror replays older timestamp, snapshot and targets to hide 1.1.0.
    old = site.save()
    publish(site.directory, site.keyring, site.commit("1.1.0"))
    with serve(site.directory) as url:
        with site.updater(url) as device:
            latest = device.latest("gateway", "x86_64")
            assert latest is not None and latest.version == "1.1.0"
        site.restore(old, *FILES)
        with site.updater(url) as device, pytest.raises(TrustError) as caught:
            device.refresh()
    assert str(caught.value).startswith(
        "version check failed: New timestamp version 2 must be >= 3"
    )
    assert "rollback" in str(caught.value)
    assert site.trusted_version("timestamp") == 3
    assert site.trusted_version("targets") == 3


def test_snapshot_rollback_with_a_stolen_timestamp_key_is_rejected(site: Site) -> None:
    # Threat: rollback — a stolen timestamp key signs a fresh timestamp naming an older snapshot.
    old = site.save()
    publish(site.directory, site.keyring, site.commit("1.1.0"))
    with serve(site.directory) as url:
        with site.updater(url) as device:
            device.refresh()
        site.restore(old, "snapshot.json", "targets.json")
        timestamp = _load(site.tuf("timestamp.json"))
        assert isinstance(timestamp.signed, Timestamp)
        timestamp.signed.version += 1
        timestamp.signed.snapshot_meta = MetaFile.from_data(2, old["snapshot.json"], ["sha256"])
        timestamp.sign(site.keyring.signers("timestamp")[0])
        _write(timestamp, site.tuf("timestamp.json"))
        with site.updater(url) as device, pytest.raises(TrustError) as caught:
            device.refresh()
    assert "version check failed: New snapshot version must be >= 3, got version 2" in str(
        caught.value
    )
    assert site.trusted_version("snapshot") == 3


def test_freeze_with_an_expired_timestamp_is_rejected(site: Site) -> None:
    # Threat: freeze — a mirror keeps serving a timestamp that has expired, hiding new releases.
    refresh(site.directory, site.keyring, expiries=Expiries(timestamp=dt.timedelta(seconds=2)))
    stale = site.save()
    with serve(site.directory) as url:
        with site.updater(url) as device:
            device.refresh()
        publish(site.directory, site.keyring, site.commit("1.1.0"))
        site.restore(stale, *FILES)
        time.sleep(3)
        with site.updater(url) as device, pytest.raises(TrustError) as caught:
            device.latest("gateway", "x86_64")
    assert str(caught.value).startswith("expiry check failed: timestamp.json is expired")
    assert "freeze" in str(caught.value)


def test_mix_and_match_targets_from_another_snapshot_is_rejected(site: Site) -> None:
    # Threat: mix-and-match — a mirror serves the current snapshot with an older, validly signed
    # targets.json, so the device would see a set of releases that never existed together.
    old = site.save()
    publish(site.directory, site.keyring, site.commit("1.1.0"))
    site.restore(old, "targets.json")
    with (
        serve(site.directory) as url,
        site.updater(url) as device,
        pytest.raises(TrustError, match=r"length/hash check failed.*targets\.json"),
    ):
        device.releases()


@pytest.mark.parametrize(
    ("name", "limits"),
    [
        ("timestamp.json", UpdaterLimits(timestamp_max_length=4096)),
        ("2.root.json", UpdaterLimits(root_max_length=8192)),
    ],
)
def test_endless_data_metadata_is_rejected(site: Site, name: str, limits: UpdaterLimits) -> None:
    # Threat: endless data — a mirror serves metadata without end to exhaust memory or the link.
    path = site.tuf(name)
    base = path.read_bytes() if path.exists() else site.tuf("root.json").read_bytes()
    path.write_bytes(base + b" " * 1_000_000)
    with (
        serve(site.directory) as url,
        site.updater(url, limits) as device,
        pytest.raises(TrustError, match=f"length limit check failed.*{name}"),
    ):
        device.refresh()


def test_endless_data_commit_object_is_rejected(site: Site) -> None:
    # Threat: endless data — the commit object is served far longer than its signed length.
    with serve(site.directory) as url, site.updater(url) as device:
        release = device.latest("gateway", "x86_64")
        assert release is not None
        with open(site.directory / release.path, "ab") as obj:
            obj.write(b"\0" * 1_000_000)
        with pytest.raises(TrustError, match=r"length limit check failed.*\.commit"):
            device.download(release, site.tmp / "downloads")


def test_a_compromised_timestamp_key_alone_cannot_publish_targets(site: Site) -> None:
    # Threat: key compromise — the online timestamp key is stolen and used to ship a release.
    stolen = site.tmp / "stolen"
    stolen.mkdir()
    shutil.copy(site.tmp / "keys" / "keys.json", stolen)
    for pem in (site.tmp / "keys").glob("timestamp-*.pem"):
        shutil.copy(pem, stolen)
    with pytest.raises(TrustError, match="no private key for the targets role"):
        publish(site.directory, Keyring.load(stolen), site.commit("6.6.6"))
    key = Keyring.load(stolen).signers("timestamp")[0]
    targets = _load(site.tuf("targets.json"))
    assert isinstance(targets.signed, Targets)
    evil = _evil_target(site)
    targets.signed.targets[evil.path] = evil.to_target_file()
    targets.signed.version += 1
    targets.sign(key)
    snapshot = _load(site.tuf("snapshot.json"))
    assert isinstance(snapshot.signed, Snapshot)
    data = _write(targets, site.tuf("targets.json"))
    snapshot.signed.meta["targets.json"] = MetaFile.from_data(
        targets.signed.version, data, ["sha256"]
    )
    snapshot.signed.version += 1
    snapshot.sign(key)
    timestamp = _load(site.tuf("timestamp.json"))
    assert isinstance(timestamp.signed, Timestamp)
    data = _write(snapshot, site.tuf("snapshot.json"))
    timestamp.signed.snapshot_meta = MetaFile.from_data(snapshot.signed.version, data, ["sha256"])
    timestamp.signed.version += 1
    timestamp.sign(key)
    _write(timestamp, site.tuf("timestamp.json"))
    with (
        serve(site.directory) as url,
        site.updater(url) as device,
        pytest.raises(TrustError, match="signature check failed: snapshot was signed by 0/1"),
    ):
        device.latest("gateway", "x86_64")


def test_root_rotation_without_the_old_root_keys_is_rejected(site: Site) -> None:
    # Threat: key compromise — someone without the root keys installs a root of its own.
    attacker = CryptoSigner.generate_ed25519()
    root = _load(site.tuf("root.json"))
    assert isinstance(root.signed, Root)
    for role in ("root", "targets", "snapshot", "timestamp"):
        for keyid in list(root.signed.roles[role].keyids):
            root.signed.revoke_key(keyid, role)
        root.signed.add_key(attacker.public_key, role)
    root.signed.version = 2
    root.sign(attacker)
    _write(root, site.tuf("2.root.json"))
    with (
        serve(site.directory) as url,
        site.updater(url) as device,
        pytest.raises(TrustError, match=r"signature check failed: root was signed by 0/1"),
    ):
        device.refresh()
    assert json.loads((site.device / "root.json").read_text())["signed"]["version"] == 1
