"""How the device moves bytes over bad links: retries, a bandwidth cap, and resumable downloads.

Devices sit on slow, metered, intermittent links. Three pieces, used by every download an update
makes (TUF metadata, static delta files, OSTree objects through :mod:`afield.device._relay`):

- :class:`RetryPolicy` and :func:`retrying`: a failed transfer (server down, HTTP 5xx, a
  connection cut, a stall) is tried again after an exponential backoff with full jitter, so a
  fleet that lost its server does not come back all at once; a failed *check* (a hash, a
  signature) is never retried;
- :class:`Meter`: counts the bytes received, caps their rate (``--max-rate``, a token bucket) and
  reports progress;
- :func:`download`: fetches one file whose length and sha256 are signed, into a ``.part`` file
  that survives a cut connection or a killed process and is resumed with an HTTP Range request;
  it never reads more than the signed length (endless data) and gives up on a server that sends
  too slowly (slow retrieval).

What it leaves to others: what to download and what to trust (:mod:`afield.device.fetch`,
:mod:`afield.trust`).
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar

import urllib3

from afield.errors import AfieldError, TransportError, TrustError

__all__ = ["Meter", "RetryPolicy", "download", "retrying"]

T = TypeVar("T")

Progress = Callable[[int], None]

_CHUNK = 1 << 16


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failed transfer is tried again.

    Attempt ``n`` (from 1) that fails waits a random time in ``[0, min(max_delay, base_delay *
    2**(n-1))]`` before the next ("full jitter"). ``timeout`` bounds every connect and every
    read; a transfer slower than ``min_rate`` bytes/s, averaged over ``min_rate_window``
    seconds, is cut as a slow retrieval.
    """

    attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 60.0
    timeout: float = 30.0
    min_rate: int = 256
    min_rate_window: float = 30.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def delay(self, attempt: int) -> float:
        """The wait after failed attempt ``attempt`` (1-based)."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return self.rng.uniform(0, ceiling)


def retrying(
    policy: RetryPolicy,
    action: Callable[[], T],
    *,
    what: str,
    retry_on: tuple[type[BaseException], ...] = (TransportError,),
    on_retry: Callable[[int, BaseException, float], None] | None = None,
) -> T:
    """Run ``action``; on an error in ``retry_on``, wait and run it again, up to the policy.

    Raises:
        TransportError: every attempt failed; the message names ``what``, the attempts made
            and the last error.
    """
    for attempt in range(1, policy.attempts + 1):
        try:
            return action()
        except retry_on as e:
            if attempt == policy.attempts:
                message = e.message if isinstance(e, AfieldError) else str(e)
                raise TransportError(
                    f"{what}: gave up after {attempt} attempt{'s' if attempt > 1 else ''}: "
                    f"{message}"
                ) from e
            wait = policy.delay(attempt)
            if on_retry is not None:
                on_retry(attempt, e, wait)
            policy.sleep(wait)
    raise AssertionError("unreachable: attempts must be at least 1")


class Meter:
    """Counts bytes received, caps their rate, and reports the running total.

    Thread-safe: the relay's connections and the delta downloads share one meter per update.

    Args:
        max_rate: the cap in bytes per second, or None for no cap.
        progress: called with the running total after every chunk.
        burst: how many bytes may pass at once after an idle moment (default: 1/4 s worth,
            at least one chunk), so the cap holds over any window longer than that.
    """

    def __init__(
        self,
        max_rate: int | None = None,
        *,
        progress: Progress | None = None,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_rate is not None and max_rate <= 0:
            raise TransportError(f"max rate must be a positive number of bytes/s, got {max_rate}")
        self.max_rate = max_rate
        self.total = 0
        self._progress = progress
        self._burst = burst if burst is not None else max(_CHUNK, (max_rate or 0) // 4)
        self._tokens = float(self._burst)
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self._lock = threading.Lock()

    def add(self, count: int) -> None:
        """Account for ``count`` bytes received; sleeps as long as the cap requires."""
        wait = 0.0
        with self._lock:
            self.total += count
            total = self.total
            if self.max_rate is not None:
                now = self._clock()
                self._tokens = min(
                    float(self._burst), self._tokens + (now - self._last) * self.max_rate
                )
                self._last = now
                self._tokens -= count
                if self._tokens < 0:
                    wait = -self._tokens / self.max_rate
        if wait > 0:
            self._sleep(wait)
        if self._progress is not None:
            self._progress(total)

    def chunk_size(self) -> int:
        """How many bytes to read at once: small enough that the cap stays smooth."""
        if self.max_rate is None:
            return _CHUNK
        return max(1024, min(_CHUNK, self.max_rate // 8))


def _sha256_of(path: Path) -> hashlib._Hash:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest


def download(
    pool: urllib3.PoolManager,
    url: str,
    dest: Path,
    *,
    length: int,
    sha256: str,
    meter: Meter,
    policy: RetryPolicy,
) -> bool:
    """Download ``url`` to ``dest``, resuming a ``dest.part`` left by an earlier attempt.

    The file must be exactly ``length`` bytes with sha256 ``sha256`` (both signed). Transfer
    failures are retried under ``policy``, each retry resuming where the last one stopped.

    Returns:
        True when bytes were fetched, False when ``dest`` was already complete.

    Raises:
        TrustError: the file is not the signed one (length/hash check) or the server sent more
            than the signed length (endless data); the partial file is deleted.
        TransportError: every attempt failed (server down, HTTP errors, stalls).
    """
    if dest.is_file() and dest.stat().st_size == length and _sha256_of(dest).hexdigest() == sha256:
        return False
    part = dest.with_name(dest.name + ".part")

    def attempt() -> None:
        _fetch_range(pool, url, part, length=length, meter=meter, policy=policy)

    try:
        retrying(policy, attempt, what=f"download {url}")
    except TrustError:
        part.unlink(missing_ok=True)
        raise
    digest = _sha256_of(part).hexdigest()
    if digest != sha256:
        part.unlink()
        raise TrustError(
            f"length/hash check failed: {url} has sha256 {digest}, but the signed metadata says "
            f"{sha256}; the file was tampered with or does not belong to this release"
        )
    part.replace(dest)
    return True


def _fetch_range(
    pool: urllib3.PoolManager,
    url: str,
    part: Path,
    *,
    length: int,
    meter: Meter,
    policy: RetryPolicy,
) -> None:
    have = part.stat().st_size if part.is_file() else 0
    if have > length:
        part.unlink()
        have = 0
    if have == length:
        return
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        response = pool.request(
            "GET",
            url,
            headers=headers,
            preload_content=False,
            decode_content=False,
            redirect=False,
            retries=False,
            timeout=urllib3.Timeout(connect=policy.timeout, read=policy.timeout),
        )
    except urllib3.exceptions.HTTPError as e:
        raise TransportError(f"download failed: {url}: {e}") from e
    try:
        if response.status == 200 and have:
            have = 0  # the server ignored the Range: start over
        elif response.status not in (200, 206):
            raise TransportError(f"HTTP {response.status} for {url}")
        with part.open("r+b" if have else "wb") as out:
            out.seek(have)
            out.truncate()
            _copy(response, out, url=url, remaining=length - have, meter=meter, policy=policy)
    except urllib3.exceptions.HTTPError as e:
        # A stall (read timeout) or a cut connection: what was written stays for the resume.
        response.close()
        raise TransportError(f"download interrupted: {url}: {e}") from e
    except BaseException:
        response.close()
        raise
    response.release_conn()


def _copy(
    response: urllib3.BaseHTTPResponse,
    out: BinaryIO,
    *,
    url: str,
    remaining: int,
    meter: Meter,
    policy: RetryPolicy,
) -> None:
    write = out.write
    started = time.monotonic()
    window_start, window_bytes = started, 0
    while True:
        # read1: whatever has arrived (at least a byte), so the rate check below runs even
        # when a server trickles bytes slower than a chunk fills.
        chunk = response.read1(min(meter.chunk_size(), remaining + 1))
        if not chunk:
            break
        if len(chunk) > remaining:
            write(chunk[:remaining])
            raise TrustError(
                f"length limit check failed: {url} sent more than its signed length "
                "(endless data attack)"
            )
        write(chunk)
        remaining -= len(chunk)
        meter.add(len(chunk))
        window_bytes += len(chunk)
        now = time.monotonic()
        if now - window_start >= policy.min_rate_window:
            rate = window_bytes / (now - window_start)
            if rate < policy.min_rate:
                raise TransportError(
                    f"download too slow (slow retrieval): {url} sent {rate:.0f} bytes/s over "
                    f"{now - window_start:.0f} s, below the minimum of {policy.min_rate}"
                )
            window_start, window_bytes = now, 0
    if remaining:
        raise TransportError(f"download interrupted: {url} ended {remaining} bytes early")
