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


# -- static deltas ----------------------------------------------------------------------------


def _delta_files_match(directory: Path, entry: dict[str, object]) -> bool:
    files = entry["files"]
    assert isinstance(files, list)
    for item in files:
        path = directory / str(entry["path"]) / item["name"]
        data = path.read_bytes()
        if len(data) != item["length"] or hashlib.sha256(data).hexdigest() != item["sha256"]:
            return False
    return entry["length"] == sum(item["length"] for item in files)


def test_publish_generates_signed_deltas_from_the_previous_releases(tmp_path: Path) -> None:
    v1, v2 = _commit(tmp_path, "1.0.0"), _commit(tmp_path, "2.0.0")
    v3, v4 = _commit(tmp_path, "3.0.0"), _commit(tmp_path, "4.0.0")
    directory, keyring = _started(tmp_path)
    assert publish(directory, keyring, v1).deltas == ()
    assert [d["from"] for d in publish(directory, keyring, v2).deltas] == [v1]
    assert [d["from"] for d in publish(directory, keyring, v3, channel="beta").deltas] == [v2, v1]
    release = publish(directory, keyring, v4, deltas=2)
    # Newest first, whatever the channel: devices on beta move to stable too.
    assert [d["from"] for d in release.deltas] == [v3, v2]
    for entry in release.deltas:
        assert entry["path"].startswith("ostree/deltas/")
        assert entry["files"][0]["name"] == "superblock"
        assert _delta_files_match(directory, dict(entry))
    # What a device verifies is what was signed.
    with serve(directory) as url, TrustedUpdater(_device(tmp_path), url) as device:
        assert device.latest("gateway", "x86_64") == release
    assert publish(directory, keyring, _commit(tmp_path, "5.0.0"), deltas=0).deltas == ()


def test_publish_builds_deltas_from_named_commits_and_notes_missing_ones(tmp_path: Path) -> None:
    v1, v2 = _commit(tmp_path, "1.0.0"), _commit(tmp_path, "2.0.0")
    directory, keyring = _started(tmp_path)
    notes: list[str] = []
    release = publish(
        directory, keyring, v2, deltas=0, delta_from=[v1[:10], v2], on_note=notes.append
    )
    assert [d["from"] for d in release.deltas] == [v1]
    assert notes == []
    with pytest.raises(RepositoryError, match="no ref or commit"):
        publish(directory, keyring, _commit(tmp_path, "3.0.0"), delta_from=["nope"])


class _Fleet:
    """A stand-in fleet manager on 127.0.0.1 answering the running-commits endpoint."""

    def __init__(self, body: bytes, status: int = 200) -> None:
        self.body, self.status = body, status
        self.paths: list[str] = []

    def __enter__(self) -> str:
        import http.server
        import threading

        fleet = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fleet.paths.append(self.path)
                self.send_response(fleet.status)
                self.send_header("Content-Length", str(len(fleet.body)))
                self.end_headers()
                self.wfile.write(fleet.body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_publish_builds_deltas_from_what_the_fleet_runs(tmp_path: Path) -> None:
    v1, v2, v3 = _commit(tmp_path, "1.0.0"), _commit(tmp_path, "2.0.0"), _commit(tmp_path, "3.0.0")
    directory, keyring = _started(tmp_path)
    publish(directory, keyring, v1)
    publish(directory, keyring, v2)
    unknown = "ab" * 32
    running = {
        "running": [
            {"commit": v1, "version": "1.0.0", "devices": 900},
            {"commit": unknown, "devices": 5},
            {"commit": v2, "devices": 100},
        ]
    }
    notes: list[str] = []
    with _Fleet(json.dumps(running).encode()) as url:
        release = publish(directory, keyring, v3, deltas=0, fleet_url=url, on_note=notes.append)
    # The most-run commit first; a commit the repository lacks is skipped and said so.
    assert [d["from"] for d in release.deltas] == [v1, v2]
    assert notes == [f"no delta from {unknown[:12]}: that commit is not in {directory / 'ostree'}"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"not json", 200, "not JSON"),
        (b'{"running": [{"commit": "xyz", "devices": 1}]}', 200, r"running\[0\]\.commit"),
        (b'{"running": [{"commit": "' + b"a" * 64 + b'", "devices": -1}]}', 200, "devices"),
        (b'{"items": []}', 200, "'running' list"),
        (b"{}", 503, "HTTP 503"),
        (b" " * (1 << 20) + b"{}", 200, "larger than"),
    ],
)
def test_a_bad_fleet_answer_is_a_clear_error_and_publishes_nothing(
    tmp_path: Path, body: bytes, status: int, message: str
) -> None:
    v1 = _commit(tmp_path, "1.0.0")
    directory, keyring = _started(tmp_path)
    with _Fleet(body, status) as url, pytest.raises(RepositoryError, match=message) as caught:
        publish(directory, keyring, v1, fleet_url=url)
    assert caught.value.user_error and "fleet manager" in str(caught.value)
    assert list_releases(directory).releases == []


def test_cli_publish_with_deltas(tmp_path: Path) -> None:
    v1, v2 = _commit(tmp_path, "1.0.0"), _commit(tmp_path, "2.0.0")
    directory, _ = _started(tmp_path)
    keys = str(tmp_path / "keys")
    base = ("release", "publish", "--repo", str(directory), "--keys", keys, "--json")
    afield(*base, "--commit", v1, check=True)
    out = json.loads(afield(*base, "--commit", v2, "--deltas", "1", check=True).stdout)
    assert [d["from"] for d in out["deltas"]] == [v1]
    assert out["deltas"][0]["length"] > 0
