"""The device's transport pieces on their own: backoff, the rate cap, the relay, delta listings."""

from __future__ import annotations

import http.client
import random
import socket
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afield.device._relay import Relay
from afield.device.fetch import parse_deltas
from afield.device.transport import Meter, RetryPolicy, retrying
from afield.errors import TransportError, TrustError
from afield.ostree import static_delta_dir
from afield.trust import ReleaseTarget, commit_target_path
from tests.trust import serve

TO = "1" * 64
FROM = "2" * 64


def test_backoff_grows_exponentially_with_full_jitter_and_a_ceiling() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=10.0, rng=random.Random(7))  # noqa: S311 (jitter)
    for attempt in range(1, 9):
        ceiling = min(10.0, 2 ** (attempt - 1))
        delays = [policy.delay(attempt) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        # Jitter: spread over the whole window, not bunched at its top.
        assert min(delays) < ceiling * 0.2 and max(delays) > ceiling * 0.8


def test_retrying_gives_up_with_the_attempts_and_the_last_error() -> None:
    waits: list[float] = []
    policy = RetryPolicy(attempts=3, base_delay=0.5, sleep=waits.append)
    calls: list[int] = []

    def failing() -> None:
        calls.append(1)
        raise TransportError(f"HTTP 503 number {len(calls)}")

    expected = r"fetch x: gave up after 3 attempts: HTTP 503 number 3"
    with pytest.raises(TransportError, match=expected):
        retrying(policy, failing, what="fetch x")
    assert len(calls) == 3 and len(waits) == 2


def test_retrying_never_retries_a_failed_check() -> None:
    calls: list[int] = []

    def tampered() -> None:
        calls.append(1)
        raise TrustError("length/hash check failed")

    with pytest.raises(TrustError):
        retrying(RetryPolicy(sleep=lambda _: None), tampered, what="x")
    assert calls == [1]


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_the_meter_holds_the_rate_over_any_window_longer_than_its_burst() -> None:
    clock = _Clock()
    seen: list[int] = []
    meter = Meter(100_000, progress=seen.append, clock=clock.time, sleep=clock.sleep)
    for _ in range(400):
        meter.add(5_000)  # 2 MB, as fast as the network delivers
    assert meter.total == 2_000_000 and seen[-1] == 2_000_000
    # 2 MB at 100 kB/s takes 20 s, less the burst allowed at the start (a quarter second's
    # worth, at least one 64 KiB chunk).
    burst = max(65536, 100_000 / 4)
    assert 20 - burst / 100_000 - 0.01 <= clock.now <= 20
    assert Meter(None).chunk_size() == 65536 and Meter(8_000).chunk_size() == 1024
    with pytest.raises(TransportError, match="positive"):
        Meter(0)


def test_the_relay_forwards_to_the_server_only_and_counts_bytes(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x" * 100_000)
    with serve(tmp_path) as url, Relay(url, Meter(), timeout=5) as relay:
        host, port = relay.url.removeprefix("http://").split(":")
        proxy = http.client.HTTPConnection(host, int(port), timeout=5)
        proxy.request("GET", f"{url}file", headers={"Upgrade": "h2c", "Connection": "Upgrade"})
        response = proxy.getresponse()
        assert response.status == 200 and len(response.read()) == 100_000
        assert relay.meter.total == 100_000
        # The same connection serves the next request (keep-alive through the relay).
        proxy.request("HEAD", f"{url}file")
        assert proxy.getresponse().status == 200
        for other in ("http://example.com/file", "http://127.0.0.1:1/file"):
            refused = http.client.HTTPConnection(host, int(port), timeout=5)
            refused.request("GET", other)
            answer = refused.getresponse()
            assert answer.status == 403, other
            refused.close()
        proxy.close()
    assert any("not the update server" in e for e in relay.errors)


def test_the_relay_tunnels_connect_to_an_https_server_only(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"y" * 5_000)
    with serve(tmp_path) as url:
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        # Pretend the server speaks TLS: the tunnel only moves bytes, so plain HTTP shows it.
        with Relay(f"https://127.0.0.1:{port}", Meter(), timeout=5) as relay:
            proxy_port = int(relay.url.rsplit(":", 1)[1])
            with socket.create_connection(("127.0.0.1", proxy_port), timeout=5) as sock:
                sock.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
                assert sock.recv(1024).startswith(b"HTTP/1.1 200")
                sock.sendall(b"GET /file HTTP/1.0\r\n\r\n")
                received = b""
                while chunk := sock.recv(65536):
                    received += chunk
            assert received.endswith(b"y" * 5_000)
            assert relay.meter.total == len(received)
            with socket.create_connection(("127.0.0.1", proxy_port), timeout=5) as sock:
                sock.sendall(b"CONNECT 10.0.0.1:443 HTTP/1.1\r\n\r\n")
                assert sock.recv(1024).startswith(b"HTTP/1.1 403")


def _release(deltas: list[Any]) -> ReleaseTarget:
    return ReleaseTarget(
        path=commit_target_path(TO),
        length=100,
        sha256=TO,
        image="gateway",
        arch="x86_64",
        version="2.0.0",
        channel="stable",
        deltas=tuple(deltas),
    )


GOOD = {
    "from": FROM,
    "path": f"ostree/{static_delta_dir(FROM, TO)}",
    "length": 30,
    "files": [
        {"name": "superblock", "length": 10, "sha256": "a" * 64},
        {"name": "0", "length": 20, "sha256": "b" * 64},
    ],
}


def test_a_signed_delta_listing_is_read_field_by_field() -> None:
    (delta,) = parse_deltas(_release([GOOD]))
    assert (delta.from_commit, delta.to_commit, delta.length) == (FROM, TO, 30)
    assert [name for name, _, _ in delta.files] == ["superblock", "0"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"from": "nope"}, "'from' must be a commit checksum"),
        ({"path": "ostree/../../etc/passwd"}, "'path' must be ostree/deltas/"),
        ({"files": []}, "non-empty list"),
        ({"files": [{"name": "0", "length": 1, "sha256": "a" * 64}]}, "superblock"),
        ({"files": [{"name": "../x", "length": 1, "sha256": "a" * 64}]}, r"files\[0\]"),
        ({"files": [{"name": "superblock", "length": True, "sha256": "a" * 64}]}, "length"),
        ({"files": [{"name": "superblock", "length": 1, "sha256": "A" * 64}]}, "sha256"),
    ],
)
def test_a_malformed_delta_listing_is_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(TrustError, match=message):
        parse_deltas(_release([{**GOOD, **change}]))


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=70),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {}, optional={"from": _json, "path": _json, "files": _json, "length": _json}
    )
)
def test_any_delta_listing_parses_or_is_refused_as_untrusted(entry: dict[str, Any]) -> None:
    try:
        (delta,) = parse_deltas(_release([entry]))
    except TrustError as e:
        assert "deltas[0]" in str(e)  # the error names the entry
        return
    # Whatever was accepted holds the invariants the downloader relies on.
    assert delta.path == f"ostree/{static_delta_dir(delta.from_commit, TO)}"
    assert all(length > 0 and "/" not in name for name, length, _ in delta.files)
