"""Serving an afield repository: uvicorn on 127.0.0.1, with ostree and raw HTTP as clients."""

from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from afield.errors import RepositoryError
from afield.release import init_repository
from afield.release.serve import ACCESS_LOGGER, create_repo_app, running
from afield.trust import Keyring
from tests.conftest import afield
from tests.device.images import commit_image

REF = "afield/gateway/x86_64/stable-1.0.0"


@dataclass(frozen=True)
class Served:
    """A served afield repository: its directory, base URL and an HTTP client."""

    repo: Path
    url: str
    client: httpx.Client
    commit: str

    def raw(self, method: str, path: str, headers: dict[str, str] | None = None) -> int:
        """Send ``path`` byte for byte (no client-side dot-segment removal); the status."""
        parts = urlsplit(self.url)
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
        try:
            conn.request(method, path, headers=headers or {})
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    def largest_object(self) -> Path:
        """The largest file under ``ostree/objects``."""
        objects = [p for p in (self.repo / "ostree" / "objects").rglob("*") if p.is_file()]
        return max(objects, key=lambda p: p.stat().st_size)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """An afield repository with one real commit and TUF metadata, served on 127.0.0.1."""
    repo = tmp_path / "repo"
    commit = commit_image(repo, tmp_path / "work", version="1.0.0")
    init_repository(repo, Keyring.generate(tmp_path / "keys"))
    with running(repo) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield Served(repo=repo, url=url, client=client, commit=commit)


def test_ostree_cli_pulls_a_served_ref(served: Served, tmp_path: Path) -> None:
    client = tmp_path / "client"
    ostree = ["ostree", f"--repo={client}"]
    subprocess.run([*ostree, "init", "--mode=archive"], check=True)
    origin = f"{served.url}ostree"
    subprocess.run([*ostree, "remote", "add", "--no-gpg-verify", "origin", origin], check=True)
    subprocess.run([*ostree, "pull", "origin", REF], check=True, capture_output=True)
    rev = subprocess.run(
        [*ostree, "rev-parse", f"origin:{REF}"], check=True, capture_output=True, text=True
    )
    assert rev.stdout.strip() == served.commit
    subprocess.run([*ostree, "fsck"], check=True, capture_output=True)


def test_byte_range_returns_206_and_exactly_those_bytes(served: Served) -> None:
    obj = served.largest_object()
    data = obj.read_bytes()
    path = "/" + obj.relative_to(served.repo).as_posix()
    response = served.client.get(path, headers={"Range": "bytes=100-199"})
    assert response.status_code == 206
    assert response.content == data[100:200]
    assert response.headers["content-range"] == f"bytes 100-199/{len(data)}"
    assert response.headers["content-length"] == "100"
    tail = served.client.get(path, headers={"Range": "bytes=-10"})
    assert (tail.status_code, tail.content) == (206, data[-10:])
    whole = served.client.get(path)
    assert (whole.status_code, whole.content) == (200, data)
    assert whole.headers["accept-ranges"] == "bytes"


def test_unsatisfiable_range_is_416(served: Served) -> None:
    obj = served.largest_object()
    size = obj.stat().st_size
    path = "/" + obj.relative_to(served.repo).as_posix()
    response = served.client.get(path, headers={"Range": f"bytes={size}-{size + 10}"})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{size}"


def test_etag_and_if_none_match_give_304(served: Served) -> None:
    first = served.client.get("/tuf/1.root.json")
    etag = first.headers["etag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    assert first.headers["last-modified"].endswith("GMT")
    again = served.client.get("/tuf/1.root.json", headers={"If-None-Match": etag})
    assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", etag)
    other = served.client.get("/tuf/1.root.json", headers={"If-None-Match": '"other"'})
    assert other.status_code == 200


def test_etag_changes_when_the_file_changes(served: Served) -> None:
    ref = served.repo / "ostree" / "refs" / "heads" / REF
    before = served.client.get(f"/ostree/refs/heads/{REF}").headers["etag"]
    ref.write_text("0" * 64 + "\n")
    os.utime(ref, (1, 1))
    after = served.client.get(f"/ostree/refs/heads/{REF}", headers={"If-None-Match": before})
    assert after.status_code == 200
    assert after.headers["etag"] != before


def test_head_sends_the_headers_without_a_body(served: Served) -> None:
    obj = served.largest_object()
    response = served.client.head("/" + obj.relative_to(served.repo).as_posix())
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == str(obj.stat().st_size)
    assert "etag" in response.headers


def test_content_types_follow_the_repository_layout(served: Served) -> None:
    delta = served.repo / "ostree" / "deltas" / "ab" / "cdef" / "superblock"
    delta.parent.mkdir(parents=True)
    delta.write_bytes(b"\0delta")
    commit = f"/ostree/objects/{served.commit[:2]}/{served.commit[2:]}.commit"
    for path, expected in [
        ("/tuf/root.json", "application/json"),
        ("/tuf/timestamp.json", "application/json"),
        (commit, "application/octet-stream"),
        ("/ostree/deltas/ab/cdef/superblock", "application/octet-stream"),
        (f"/ostree/refs/heads/{REF}", "application/octet-stream"),
    ]:
        response = served.client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"] == expected, path


def test_tuf_root_is_served(served: Served) -> None:
    response = served.client.get("/tuf/root.json")
    assert response.status_code == 200
    assert response.json()["signed"]["_type"] == "root"
    assert response.content == (served.repo / "tuf" / "root.json").read_bytes()


@pytest.mark.parametrize(
    "path",
    [
        "/ostree/../../etc/passwd",
        "/ostree/%2e%2e/%2e%2e/etc/passwd",
        "/ostree/%2E%2E%2F%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        "/ostree/..%2f..%2f..%2f..%2fetc/passwd",
        "/tuf/../../../../../etc/passwd",
        "/tuf/%2e%2e/ostree/config",
        "/ostree/%2e%2e/keys/root.json",
        "/ostree/objects/%00",
    ],
)
def test_dot_dot_traversal_is_refused(served: Served, path: str) -> None:
    # Threat: a client walks out of the served tree with `..` (plain or percent-encoded) to read
    # host files or the repository's signing keys.
    (served.repo / "keys").mkdir(exist_ok=True)
    (served.repo / "keys" / "root.json").write_text("secret")
    assert served.raw("GET", path) == 404


def test_symlink_pointing_outside_the_repository_is_refused(served: Served) -> None:
    # Threat: a symlink inside the repository (planted or careless) exposes /etc to the network.
    (served.repo / "ostree" / "etc").symlink_to("/etc")
    (served.repo / "tuf" / "passwd.json").symlink_to("/etc/passwd")
    assert served.client.get("/ostree/etc/passwd").status_code == 404
    assert served.client.get("/tuf/passwd.json").status_code == 404
    assert served.raw("HEAD", "/ostree/etc/passwd") == 404


def test_symlink_from_tuf_into_the_keys_is_refused(served: Served) -> None:
    # Threat: a symlink that stays inside DIR but leaves tuf/ reaches the private keys.
    (served.repo / "keys").mkdir(exist_ok=True)
    (served.repo / "keys" / "timestamp.key").write_text("secret")
    (served.repo / "tuf" / "key.json").symlink_to(served.repo / "keys" / "timestamp.key")
    assert served.client.get("/tuf/key.json").status_code == 404


def test_paths_outside_ostree_and_tuf_are_404(served: Served) -> None:
    # Threat: anything else in DIR (keys, work files) is reachable over HTTP.
    (served.repo / "keys").mkdir(exist_ok=True)
    (served.repo / "keys" / "root.key").write_text("secret")
    for path in ["/", "/keys/root.key", "/repo", "/ostree", "/tuf", "/ostreeX/config"]:
        assert served.client.get(path).status_code == 404, path


def test_directories_are_not_listed(served: Served) -> None:
    # Threat: directory listings let anyone enumerate the repository.
    for path in ["/ostree/", "/ostree/objects/", "/tuf/", f"/ostree/objects/{served.commit[:2]}/"]:
        response = served.client.get(path)
        assert response.status_code == 404, path
        assert served.commit[2:] not in response.text


def test_other_methods_are_refused(served: Served) -> None:
    response = served.client.put("/tuf/root.json", content=b"{}")
    assert response.status_code == 405
    assert (served.repo / "tuf" / "root.json").read_bytes() != b"{}"


def test_healthz(served: Served) -> None:
    response = served.client.get("/healthz")
    assert (response.status_code, response.text) == (200, "ok\n")


def _metric(text: str, name: str, code: str) -> int:
    prefix = f'{name}{{code="{code}"}} '
    return int(next(line for line in text.splitlines() if line.startswith(prefix))[len(prefix) :])


def test_metrics_count_requests_and_bytes_by_status_class(served: Served) -> None:
    root = served.client.get("/tuf/root.json").content
    served.client.get("/tuf/nothing.json")
    served.client.get("/tuf/nothing.json")
    response = served.client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert "# TYPE afield_repo_requests_total counter" in text
    assert _metric(text, "afield_repo_requests_total", "2xx") == 1
    assert _metric(text, "afield_repo_requests_total", "4xx") == 2
    assert _metric(text, "afield_repo_response_bytes_total", "2xx") == len(root)
    later = served.client.get("/metrics").text
    assert _metric(later, "afield_repo_requests_total", "2xx") == 2


def test_access_log_is_one_json_line_per_request(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        served.client.get("/tuf/root.json", headers={"Range": "bytes=0-9"})
        served.client.get("/nothing")
    records = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    assert len(records) == 2
    first, second = (json.loads(r.getMessage()) for r in records)
    assert first["method"] == "GET"
    assert first["path"] == "/tuf/root.json"
    assert (first["status"], first["bytes"], first["range"]) == (206, 10, "bytes=0-9")
    assert first["client"] == "127.0.0.1"
    assert (second["path"], second["status"]) == ("/nothing", 404)


def test_a_directory_without_ostree_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="no ostree/ directory") as raised:
        create_repo_app(tmp_path)
    assert raised.value.user_error
    result = afield("repo", "serve", "--repo", str(tmp_path), "--port", "0")
    assert result.returncode == 2
    assert "error:" in result.stderr and "no ostree/ directory" in result.stderr


def test_cli_serves_until_interrupted_and_prints_the_url(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    commit_image(repo, tmp_path / "work", version="1.0.0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "afield.cli", "repo", "serve", "--repo", str(repo), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "500"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = next(word for word in line.split() if word.startswith("http://127.0.0.1:"))
        with httpx.Client(base_url=url, timeout=10) as client:
            assert client.get("/healthz").status_code == 200
            assert client.get(f"/ostree/refs/heads/{REF}").status_code == 200
            assert client.get("/tuf/root.json").status_code == 404  # no TUF metadata yet
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert [json.loads(line)["status"] for line in stderr.splitlines()] == [200, 200, 404]
