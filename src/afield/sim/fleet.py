"""A simulated fleet: many lightweight devices that speak the real device API over HTTP.

Each simulated device is an asyncio task; the fleet's HTTP connections are shared through a few
:class:`httpx.AsyncClient` pools (``SimConfig.connections`` in all). A device does what the
agent (:mod:`afield.device.agent`) does on the wire, without a sysroot:

1. **enroll**: the fleet gets one-time tokens with an admin token (``POST
   /api/v1/enrollment-tokens``, up to 1000 a call, with the configured labels), and each device
   sends its token and a CSR for a fresh P-256 key (:func:`~afield.fleet.protocol.make_csr`);
2. **report** what it runs: the configured starting release (``version``, ``commit``), healthy;
3. **loop**: poll the desired state every ``poll_interval`` seconds (with jitter), or long-poll
   with ``wait``, sending its ETag in ``If-None-Match``. When the desired release is another
   commit it reports ``downloading``, waits ``download_seconds``, reports ``staged`` (the
   pending deployment), "reboots" for ``reboot_seconds`` and then either runs the new release
   with passing checks (booted + health ok), or fails: half of the failures fall back at boot
   (booted = the old commit + ``rolled_back``), the other half boot the new commit with failing
   checks (health ok false) and fall back one reboot later. A failure happens with probability
   ``failure_rate``, always for a version in ``fail_versions`` or a device named in
   ``fail_devices`` (those fail their health checks). A commit a device fell back from is
   refused from then on: it reports the update as ``refused`` and never tries it again.

Every request is signed (:func:`~afield.fleet.protocol.authorization`). The fleet counts
requests and their latencies by kind (``enroll``, ``desired``, ``status``, and ``wait``: a
long-poll the server may hold, kept out of the latency figures) and errors (an answer >= 500,
an unexpected 4xx, a connection that fails or times out, an answer that does not parse); after
an error a device backs off exponentially with full jitter. Decisions (failures, jitter, the
start-up ramp) come from random generators seeded with ``seed`` and the device's index, so the
same configuration fails the same devices; only the network's timing varies.

What it leaves to others: the settings and the figures (:mod:`afield.sim._config`,
:mod:`afield.sim._stats`), the server (:mod:`afield.fleet`), the command line (``afield sim``,
:mod:`afield.cli.sim`), devices that really update and boot (:mod:`afield.device`).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, TypeVar

import httpx
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from afield.fleet.protocol import (
    DESIRED_PATH,
    ENROLL_PATH,
    STATUS_PATH,
    DesiredRelease,
    DesiredState,
    EnrollRequest,
    EnrollResponse,
    HealthReport,
    Rollback,
    StatusReport,
    UpdateProgress,
    VersionRef,
    authorization,
    make_csr,
    new_device_key,
)
from afield.sim._config import SimConfig, SimError
from afield.sim._stats import SimStats, SimSummary

__all__ = ["TOKENS_PATH", "SimFleet"]

TOKENS_PATH = "/api/v1/enrollment-tokens"
_TOKENS_PER_CALL = 1000  # the server's limit
_ENROLL_ATTEMPTS = 6
_CHECK = "90-sim-check.sh"
_MAX_RESPONSE = 1 << 20
_POOL = 16  # connections per httpx pool
_KEEPALIVE = 4.0  # idle seconds a connection is kept: under uvicorn's 5, so it never races
_T = TypeVar("_T")
Outcome = Literal["ok", "rollback", "health"]


# --- one device ----------------------------------------------------------------------------


@dataclass
class _Device:
    """One simulated device's state: what it runs, what it works on, what it refuses."""

    index: int
    name: str
    rng: random.Random
    booted: VersionRef
    key: ec.EllipticCurvePrivateKey | None = None
    device_id: str = ""
    etag: str | None = None
    pending: VersionRef | None = None
    fallback: VersionRef | None = None
    healthy: bool = True
    update: UpdateProgress | None = None
    rolled_back: Rollback | None = None
    refused: set[str] = field(default_factory=set)
    stale: bool = False  # the server's desired ETag moved: poll again at once

    def report(self, image: str, arch: str) -> bytes:
        """The status report of what this device runs now."""
        failed = [] if self.healthy else [_CHECK]
        report = StatusReport(
            image=image,
            arch=arch,
            booted=self.booted,
            pending=self.pending,
            rollback=self.fallback,
            health=HealthReport(ok=self.healthy, commit=self.booted.commit, failed=failed),
            update=self.update,
            rolled_back=self.rolled_back,
        )
        return report.model_dump_json(exclude_none=True).encode()


class _Failed(Exception):
    """A request failed (already counted); the caller backs off and retries."""


def _outcome(config: SimConfig, device: _Device, release: DesiredRelease) -> Outcome:
    """How ``device``'s update to ``release`` ends (the same for the same seed, always)."""
    if release.version in config.fail_versions or device.name in config.fail_devices:
        return "health"
    draw = random.Random(f"{config.seed}:{device.index}:{release.commit}")  # noqa: S311
    if draw.random() < config.failure_rate:
        return "rollback" if draw.random() < 0.5 else "health"
    return "ok"


# --- the fleet -----------------------------------------------------------------------------


class SimFleet:
    """``config.devices`` simulated devices; use as ``async with SimFleet(config) as fleet``.

    :meth:`enroll` enrolls every device; :meth:`run` (which enrolls first if needed) runs them
    until :meth:`stop` or its ``duration``. :meth:`take_stats` and :meth:`summary` read the
    figures, also after the run was interrupted.
    """

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        start = VersionRef(version=config.version, commit=config.start_commit)
        self.devices = [
            _Device(
                index=index,
                name=f"{config.name_prefix}-{index:05d}",
                rng=random.Random(f"{config.seed}:{index}"),  # noqa: S311  # not for secrets
                booted=start,
            )
            for index in range(config.first_index, config.first_index + config.devices)
        ]
        self._stats = SimStats()
        self._total = SimStats()
        self._taken = time.monotonic()
        self._started = self._taken
        self._clients: list[httpx.AsyncClient] = []
        self._gates: list[asyncio.Semaphore] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    async def __aenter__(self) -> SimFleet:
        config = self.config
        # httpcore scans every connection and every queued request of a pool whenever it
        # places one, so the fleet spreads its connections over pools of at most _POOL (device
        # i uses pool i % n), and a semaphore per pool keeps requests waiting for a connection
        # out of httpcore's queue: a backlog then costs the simulator nothing per request.
        pools = -(-config.max_connections // _POOL)
        size = -(-config.max_connections // pools)
        limits = httpx.Limits(
            max_connections=size,
            max_keepalive_connections=size if config.keepalive else 0,
            keepalive_expiry=_KEEPALIVE,
        )
        timeout = httpx.Timeout(config.request_timeout + (config.wait or 0))
        self._clients = [
            httpx.AsyncClient(
                base_url=config.server.rstrip("/"), limits=limits, timeout=timeout, trust_env=False
            )
            for _ in range(pools)
        ]
        self._gates = [asyncio.Semaphore(size) for _ in range(pools)]
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        clients, self._clients = self._clients, []
        for client in clients:
            await client.aclose()

    # -- figures -------------------------------------------------------------------------------

    def take_stats(self, *, reset: bool = True) -> SimStats:
        """The figures since the last take (and start a new window, unless ``reset`` is False)."""
        now = time.monotonic()
        stats, self._stats.seconds = self._stats, now - self._taken
        if reset:
            self._total.merge(stats)
            self._total.seconds = now - self._started
            self._stats, self._taken = SimStats(), now
        return stats

    def versions(self) -> Counter[str]:
        """How many devices run each version now."""
        return Counter(d.booted.version or d.booted.commit[:12] for d in self.devices)

    def enrolled(self) -> int:
        """How many devices are enrolled."""
        return sum(1 for d in self.devices if d.device_id)

    def summary(self) -> SimSummary:
        """The figures of the whole run so far."""
        total = SimStats()
        total.merge(self._total)
        total.merge(self._stats)
        total.seconds = time.monotonic() - self._started
        return SimSummary.of(
            total, devices=len(self.devices), enrolled=self.enrolled(), versions=self.versions()
        )

    # -- running -------------------------------------------------------------------------------

    def stop(self) -> None:
        """End :meth:`run` (from any thread)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    async def enroll(self) -> None:
        """Enroll every device that is not yet (tokens first, then ``enroll_concurrency`` at
        a time).

        Raises:
            SimError: the server refused the admin token or an enrollment, or stayed
                unreachable through every retry.
        """
        waiting = [d for d in self.devices if not d.device_id]
        tokens = await self._tokens(len(waiting))
        gate = asyncio.Semaphore(self.config.enroll_concurrency)

        async def one(device: _Device, token: str) -> None:
            async with gate:
                await self._enroll(device, token)

        await asyncio.gather(*(one(d, t) for d, t in zip(waiting, tokens, strict=True)))

    async def run(self, duration: float | None = None) -> None:
        """Enroll (if needed), then run every device until :meth:`stop` or ``duration`` s."""
        if self._stop is None:
            raise SimError("SimFleet.run: use the fleet as `async with SimFleet(config)`")
        if self.enrolled() < len(self.devices):
            await self.enroll()
        tasks = [asyncio.create_task(self._live(d), name=d.name) for d in self.devices]
        try:
            await asyncio.wait_for(self._stop.wait(), duration)
        except TimeoutError:
            pass
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- HTTP ----------------------------------------------------------------------------------

    def _client(self, device: _Device | None) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        if not self._clients:
            raise SimError("SimFleet: use the fleet as `async with SimFleet(config)`")
        index = (0 if device is None else device.index) % len(self._clients)
        return self._clients[index], self._gates[index]

    async def _request(
        self,
        kind: str,
        method: str,
        target: str,
        device: _Device,
        *,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        expected: tuple[int, ...] = (200,),
    ) -> httpx.Response:
        """One request of ``device``, signed once it is enrolled, timed and counted; raises
        :class:`_Failed` on an error."""
        client, gate = self._client(device)
        sent = dict(headers or {})
        if body:
            sent["Content-Type"] = "application/json"
        async with gate:  # a connection is free: the time from here is the request's
            if device.device_id and device.key is not None:
                sent["Authorization"] = authorization(
                    device.key, device.device_id, method, target, body, time.time()
                )
            started = time.perf_counter()
            try:
                response = await client.request(method, target, content=body, headers=sent)
            except httpx.TimeoutException as e:
                self._stats.failed(kind, "timeout", f"{type(e).__name__}: {e}")
                raise _Failed from None
            except httpx.TransportError as e:
                self._stats.failed(kind, "connection", f"{type(e).__name__}: {e}")
                raise _Failed from None
            self._stats.timed(kind, time.perf_counter() - started)
        if response.status_code not in expected:
            detail = response.text[:200]
            self._stats.failed(kind, f"HTTP {response.status_code}", detail)
            raise _Failed
        return response

    async def _retrying(self, device: _Device, call: Callable[[], Awaitable[_T]]) -> _T:
        """``call()`` until it succeeds, backing off with full jitter after each error."""
        errors = 0
        while True:
            try:
                return await call()
            except _Failed:
                errors += 1
                ceiling = self.config.backoff_base * 2 ** min(errors, 16)
                await asyncio.sleep(device.rng.uniform(0, min(self.config.backoff_max, ceiling)))

    async def _tokens(self, count: int) -> list[str]:
        tokens: list[str] = []
        headers = {"Authorization": f"Bearer {self.config.admin_token}"}
        while len(tokens) < count:
            body = {
                "count": min(_TOKENS_PER_CALL, count - len(tokens)),
                "ttl_seconds": self.config.token_ttl,
                "labels": dict(self.config.labels),
            }
            try:
                response = await self._client(None)[0].post(TOKENS_PATH, json=body, headers=headers)
            except httpx.HTTPError as e:
                raise SimError(
                    f"cannot reach the fleet manager at {self.config.server}: {e}"
                ) from None
            if response.status_code != 201:
                error = SimError(
                    f"{TOKENS_PATH}: HTTP {response.status_code}: {_message(response)}"
                )
                error.user_error = response.status_code < 500
                raise error
            tokens.extend(response.json()["tokens"])
        return tokens

    async def _enroll(self, device: _Device, token: str) -> None:
        config = self.config
        device.key = key = new_device_key()
        request = EnrollRequest(
            token=token,
            csr=make_csr(key, device.name),
            name=device.name,
            image=config.image,
            arch=config.arch,
        )
        body = request.model_dump_json().encode()
        for attempt in range(_ENROLL_ATTEMPTS):
            try:
                response = await self._request(
                    "enroll", "POST", ENROLL_PATH, device, body=body, expected=(201,)
                )
            except _Failed:
                if attempt + 1 == _ENROLL_ATTEMPTS:
                    break
                await asyncio.sleep(device.rng.uniform(0, config.backoff_base * 2**attempt))
                continue
            try:
                device.device_id = EnrollResponse.model_validate_json(response.content).device_id
            except ValidationError:
                self._stats.failed("enroll", "bad answer", response.text[:200])
                break
            return
        samples = "; ".join(s for s in self._stats.samples if s.startswith("enroll")) or "-"
        raise SimError(f"{device.name}: enrollment failed {_ENROLL_ATTEMPTS} times: {samples}")

    # -- the device's life ---------------------------------------------------------------------

    def _jittered(self, device: _Device, seconds: float) -> float:
        spread = self.config.jitter
        return seconds * device.rng.uniform(1 - spread, 1 + spread)

    async def _live(self, device: _Device) -> None:
        config = self.config
        await asyncio.sleep(device.rng.uniform(0, config.ramp_seconds))
        await self._retrying(device, lambda: self._report(device))
        while True:
            state = await self._retrying(device, lambda: self._poll(device))
            if state is not None:
                await self._act(device, state)
            if device.stale:
                device.stale = False
                continue
            if config.wait is None:
                await asyncio.sleep(self._jittered(device, config.poll_interval))

    async def _report(self, device: _Device) -> None:
        body = device.report(self.config.image, self.config.arch)
        response = await self._request("status", "POST", STATUS_PATH, device, body=body)
        try:
            etag = response.json().get("desired_etag")
        except ValueError:
            etag = None
        if etag is not None and etag != device.etag:
            device.stale = True

    async def _poll(self, device: _Device) -> DesiredState | None:
        """The desired state if it changed (None: 304, unchanged)."""
        wait = self.config.wait
        target = DESIRED_PATH if wait is None else f"{DESIRED_PATH}?wait={wait}"
        headers = {"If-None-Match": device.etag} if device.etag else {}
        kind = "wait" if wait is not None and device.etag else "desired"
        response = await self._request(
            kind, "GET", target, device, headers=headers, expected=(200, 304)
        )
        if response.status_code == 304:
            return None
        try:
            state = DesiredState.model_validate_json(response.content[:_MAX_RESPONSE])
        except ValidationError:
            self._stats.failed(kind, "bad answer", response.text[:200])
            raise _Failed from None
        device.etag = response.headers.get("ETag")
        return state

    async def _act(self, device: _Device, state: DesiredState) -> None:
        release = state.release
        if release is None or release.commit == device.booted.commit:
            return
        if release.commit in device.refused:
            update = device.update
            if update is None or (update.state, update.commit) != ("refused", release.commit):
                device.update = _progress("refused", release, "the device rolled back from it")
                self._stats.events["refused"] += 1
                await self._retrying(device, lambda: self._report(device))
            return
        await self._install(device, release)

    async def _install(self, device: _Device, release: DesiredRelease) -> None:
        config, stats = self.config, self._stats
        old = device.booted
        new = VersionRef(version=release.version, commit=release.commit)
        device.update = _progress("downloading", release)
        await self._retrying(device, lambda: self._report(device))
        await asyncio.sleep(self._jittered(device, config.download_seconds))
        device.update, device.pending = _progress("staged", release), new
        await self._retrying(device, lambda: self._report(device))
        await asyncio.sleep(self._jittered(device, config.reboot_seconds))
        device.pending = None
        outcome = _outcome(config, device, release)
        if outcome == "ok":
            device.booted, device.fallback, device.healthy = new, old, True
            device.update = UpdateProgress(state="idle")
            stats.events["updated"] += 1
        else:
            if outcome == "health":
                # Up on the new release, its checks fail; the next reboot falls back.
                device.booted, device.fallback, device.healthy = new, old, False
                device.update = UpdateProgress(state="idle")
                stats.events["health_failed"] += 1
                await self._retrying(device, lambda: self._report(device))
                await asyncio.sleep(self._jittered(device, config.reboot_seconds))
                reason = f"required check {_CHECK} failed"
            else:
                reason = "the boot counter ran out: the new deployment never booted"
            device.booted, device.fallback, device.healthy = old, None, True
            device.rolled_back = Rollback(
                from_commit=new.commit, to_commit=old.commit, at=time.time(), reason=reason
            )
            device.refused.add(release.commit)
            device.update = _progress("refused", release, "the device rolled back from it")
            stats.events["rolled_back"] += 1
        await self._retrying(device, lambda: self._report(device))


def _progress(
    state: Literal["downloading", "staged", "refused"], release: DesiredRelease, error: str = ""
) -> UpdateProgress:
    return UpdateProgress(state=state, version=release.version, commit=release.commit, error=error)


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return response.text[:200]
