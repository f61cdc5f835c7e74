"""Benchmark the fleet manager at fleet scale: 10,000 simulated devices polling, then a rollout.

For SQLite, then PostgreSQL (a throwaway cluster, :mod:`tests.postgres`), the real ``afield
serve`` runs in a subprocess (so its CPU is its own: ``/proc/PID/stat`` utime + stime) and
``--load-processes`` other processes run :mod:`afield.sim` devices at nice 10 (their CPU is
measured the same way: the load generator shares the machine's 2 cores with the server, and
yields to it):

1. **enroll**: every device gets a one-time token (admin API) and enrolls (CSR, certificate).
2. **steady polling**: each device polls ``GET /api/v1/device/desired`` (signed, with its ETag:
   answered 304) every ``--interval`` s with +-20% jitter. First a ramp: every device reports
   its status (spread over the first interval) and starts polling; the ramp lasts until an
   interval has reports from under 1% of the devices (at most 10 intervals; its intervals are
   recorded). Then ``--intervals`` full intervals are measured: client-side p50/p99 latency
   of every request, requests/s, errors (5xx, unexpected 4xx, connection errors, timeouts),
   server and load CPU (and the server's CPU per request, so what one core could serve), and
   the server's own latency histogram (``/metrics``: the share of device requests answered
   within 100 ms).
   Goal: p99 < 100 ms and no error.
3. **rollout**: release 1.1.0 over the fleet, batches ``[1%, 10%, 100%]``, a 10 s health window;
   devices learn of it at their next poll, report downloading / staged (2 s download), reboot
   (1 s) and report the new release healthy. Measured: time to ``completed``, each batch's
   start, latency and errors while it runs. The runner's step time is not in the server's
   logs or ``/metrics``, so this process times ``RolloutRunner.step_rollout`` on the same
   database with 10,000 devices (the completed rollout, while the fleet still polls), with a
   cProfile breakdown.
4. **one poll's server CPU, by part** (in this process, 1000 devices): the signature check,
   ``authenticate_poll`` (the device row read and the signature), the check-in's share of a
   flush, the whole FastAPI app called as ASGI without HTTP, and h11's parse and answer.
5. **agent idle RSS**: ``afield device run`` (the real agent) on a simulated sysroot, enrolled
   to the SQLite server, long-polling; its resident set after 10 s idle (goal < 60 MB).

``.venv/bin/python benchmarks/fleet_scale.py [--devices N] [--interval S] [--intervals K]
[--db sqlite|postgresql|both] [--load-processes P] [--json]``; ``AFIELD_BENCH_DEVICES`` and
``AFIELD_BENCH_INTERVAL`` override the defaults (10,000 devices, 30 s) while developing. Run as
root (the PostgreSQL cluster runs as ``postgres``). Times are noisy on a shared 2-core machine:
compare ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime
import io
import json
import multiprocessing
import os
import platform
import pstats
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, MutableMapping
from contextlib import ExitStack, contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.postgres (the throwaway cluster) and tests.device.images

from afield.fleet.auth import create_token  # noqa: E402
from afield.fleet.db import Database  # noqa: E402
from afield.fleet.models import utcnow  # noqa: E402
from afield.fleet.runner import RolloutRunner  # noqa: E402
from afield.sim import SimConfig, SimFleet, SimStats, commit_of  # noqa: E402

GOAL_P99_MS = 100.0
GOAL_AGENT_RSS_MB = 60.0
IMAGE, ARCH = "gateway", "x86_64"
OLD, NEW = "1.0.0", "1.1.0"
LABELS = {"bench": "scale"}
POLICY = {
    "batches": ["1%", "10%", "100%"],
    "health_window": "10s",
    "update_timeout": "10m",
}
DEVICE_ROUTES = ("/api/v1/device/desired", "/api/v1/device/status")
ROLLOUT_TIMEOUT = 1800.0
LOAD_NICE = 10
MAX_RAMP = 10  # poll intervals the ramp may take
RAMP_DONE = 0.01  # the ramp is over when an interval has reports from under 1% of devices


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# --- the server -----------------------------------------------------------------------------


@contextmanager
def serving(
    db_url: str, log: Path, switch_interval: float | None = None
) -> Iterator[tuple[str, int]]:
    """``afield serve --db URL --port 0`` in a subprocess; yields its URL and pid.

    ``switch_interval`` (an experiment): the server's :func:`sys.setswitchinterval`, how long
    a thread may hold the GIL while another waits (Python's default is 5 ms).
    """
    command = [sys.executable, "-m", "afield.cli"]
    if switch_interval is not None:
        prelude = f"import sys; sys.setswitchinterval({switch_interval!r}); "
        command = [sys.executable, "-c", prelude + "from afield.cli import main; sys.exit(main())"]
    command += ["serve", "--db", db_url, "--port", "0"]
    with (
        log.open("w") as errors,
        subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        ) as server,
    ):
        try:
            assert server.stdout is not None
            line = server.stdout.readline()
            if "serving on http" not in line:
                raise RuntimeError(f"afield serve did not start: {line}{log.read_text()}")
            yield line.rsplit(" ", 1)[1].strip(), server.pid
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:  # uvicorn waits for held long-polls to end
                server.kill()
                server.wait()


def _metrics(url: str) -> dict[tuple[str, str, str], float]:
    """The server's request counters and latency buckets: (name, route, le-or-code) -> value."""
    text = httpx.get(f"{url}/metrics", timeout=120).text
    values: dict[tuple[str, str, str], float] = {}
    pattern = re.compile(r"^(\w+)(?:\{(.*)\})? ([\d.e+]+)$")
    for line in text.splitlines():
        match = pattern.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        labels = labels or ""
        parts = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        key = parts.get("le") or parts.get("code") or ""
        values[(name, parts.get("route", ""), key)] = float(value)
    return values


def _server_view(
    before: dict[tuple[str, str, str], float], after: dict[tuple[str, str, str], float]
) -> dict[str, Any]:
    """What the server's histogram says about device requests between two scrapes."""
    bucket = "afield_fleet_request_duration_seconds_bucket"
    bounds: dict[float, float] = {}
    for (name, route, le), value in after.items():
        if name == bucket and route in DEVICE_ROUTES:
            bound = float("inf") if le == "+Inf" else float(le)
            delta = value - before.get((name, route, le), 0.0)
            bounds[bound] = bounds.get(bound, 0.0) + delta
    total = bounds.get(float("inf"), 0.0)
    errors = sum(
        value - before.get(key, 0.0)
        for key, value in after.items()
        if key[0] == "afield_fleet_requests_total" and key[2].startswith("5")
    )

    def quantile(q: float) -> float | None:
        for bound in sorted(bounds):
            if total and bounds[bound] >= q * total:
                return bound * 1000
        return None

    return {
        "requests": int(total),
        "within_100ms": round(bounds.get(0.1, 0.0) / total, 4) if total else None,
        "p50_bucket_ms": quantile(0.5),
        "p99_bucket_ms": quantile(0.99),
        "server_5xx": int(errors),
    }


# --- the load generators --------------------------------------------------------------------


def _load(settings: dict[str, Any], conn: Connection) -> None:
    """A load process: enroll its devices, run them, answer "stats" and "stop" on ``conn``.

    It runs at nice 10: on a shared machine the load generator yields the CPU to the server
    (which still competes with everything else on the machine).
    """
    os.nice(LOAD_NICE)
    fleet = SimFleet(SimConfig(**settings))
    lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with lock:
            conn.send(message)

    async def take() -> tuple[SimStats, Counter[str]]:
        return fleet.take_stats(), fleet.versions()

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def commands() -> None:
            while True:
                command = conn.recv()
                if command == "stop":
                    fleet.stop()
                    return
                stats, versions = asyncio.run_coroutine_threadsafe(take(), loop).result()
                send(("stats", stats, versions))

        async with fleet:
            started = time.perf_counter()
            await fleet.enroll()
            send(("enrolled", time.perf_counter() - started, fleet.take_stats()))
            threading.Thread(target=commands, daemon=True).start()
            await fleet.run()

    asyncio.run(main())
    send(("done", fleet.take_stats(), fleet.versions()))


class LoadGenerators:
    """``processes`` processes simulating ``devices`` devices between them."""

    def __init__(self, settings: dict[str, Any], devices: int, processes: int) -> None:
        context = multiprocessing.get_context("forkserver")
        self.conns: list[Connection] = []
        self.processes: list[Any] = []
        share = -(-devices // processes)
        for n in range(processes):
            first = n * share
            count = min(share, devices - first)
            parent, child = context.Pipe()
            part = {**settings, "devices": count, "first_index": first, "seed": n}
            process = context.Process(target=_load, args=(part, child), daemon=True)
            process.start()
            self.conns.append(parent)
            self.processes.append(process)

    def enrolled(self, timeout: float) -> tuple[float, SimStats]:
        """Wait for every process to enroll its devices; the slowest's seconds and the stats."""
        stats, slowest = SimStats(), 0.0
        for conn in self.conns:
            if not conn.poll(timeout):
                raise RuntimeError("a load process did not enroll its devices in time")
            kind, seconds, part = conn.recv()
            assert kind == "enrolled", kind
            slowest = max(slowest, seconds)
            stats.merge(part)
        return slowest, stats

    def stats(self) -> tuple[SimStats, Counter[str]]:
        """Every process's figures since the last call, and the versions its devices run."""
        return self._ask("stats", "stats")

    def _ask(self, command: str, answer: str) -> tuple[SimStats, Counter[str]]:
        """Send ``command`` to every process; their ``answer`` figures, merged."""
        for conn in self.conns:
            conn.send(command)
        stats, versions = SimStats(), Counter[str]()
        for conn in self.conns:
            kind, part, counted = conn.recv()
            assert kind == answer, kind
            stats.merge(part)
            versions.update(counted)
        return stats, versions

    def cpu(self) -> float:
        """CPU seconds of every load process so far."""
        return sum(_cpu_seconds(p.pid) for p in self.processes)

    def kill(self) -> None:
        """Kill the processes still running (after a failure)."""
        for process in self.processes:
            if process.is_alive():
                process.kill()

    def stop(self) -> tuple[SimStats, Counter[str]]:
        """Stop the devices; the figures since the last :meth:`stats`."""
        stats, versions = self._ask("stop", "done")
        for process in self.processes:
            process.join(30)
        return stats, versions


def _figures(stats: SimStats, seconds: float) -> dict[str, Any]:
    p50, p99 = stats.percentile(50), stats.percentile(99)
    return {
        "seconds": round(seconds, 1),
        "requests": stats.requests(),
        "requests_per_second": round(stats.requests() / seconds, 1) if seconds else None,
        "by_kind": {k: len(v) for k, v in stats.latencies.items() if len(v)},
        "p50_ms": None if p50 is None else round(p50 * 1000, 2),
        "p99_ms": None if p99 is None else round(p99 * 1000, 2),
        "max_ms": round(max((max(v) for v in stats.latencies.values() if v), default=0) * 1000, 1),
        "errors": sum(stats.errors.values()),
        "errors_by_kind": dict(stats.errors),
        "error_samples": stats.samples[:5],
    }


# --- the runner's step ----------------------------------------------------------------------


def _runner_step(db_url: str, rollout_id: int, repeat: int = 3) -> dict[str, Any]:
    """Time ``step_rollout`` of the rollout on the benchmark's database (and profile one)."""
    db = Database(db_url)
    try:
        runner = RolloutRunner(db, clock=utcnow, offline_after=300)
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            runner.step_rollout(rollout_id)
            times.append(time.perf_counter() - started)
        profile = cProfile.Profile()
        profile.enable()
        runner.step_rollout(rollout_id)
        profile.disable()
    finally:
        db.close()
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("cumulative").print_stats(25)
    top = []
    for line in out.getvalue().splitlines():
        if re.match(r"\s*\d+(/\d+)?\s+[\d.]+\s+[\d.]+\s+[\d.]+", line):
            parts = line.split(None, 5)
            top.append(f"{float(parts[3]) * 1000:7.1f} ms cum  {parts[5][:90]}")
    return {
        "step_ms": [round(t * 1000, 1) for t in times],
        "median_ms": round(statistics.median(times) * 1000, 1),
        "profile_top": top[:25],
    }


# --- one database ---------------------------------------------------------------------------


def _admin(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120)


def _prepare(admin: httpx.Client) -> None:
    for version in (OLD, NEW):
        body = {"image": IMAGE, "arch": ARCH, "version": version}
        body["commit"] = commit_of(IMAGE, ARCH, version)
        admin.post("/api/v1/releases", json=body).raise_for_status()
    fleet = {"name": "scale", "selector": "bench=scale", "policy": POLICY}
    admin.post("/api/v1/fleets", json=fleet).raise_for_status()


def _say(text: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def run_database(kind: str, db_url: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Enroll, poll, roll out against ``afield serve`` on ``db_url``; every figure."""
    db = Database(db_url)
    db.upgrade()
    token = create_token(db, "bench", "admin")
    db.close()
    result: dict[str, Any] = {"db": kind, "devices": args.devices, "interval_s": args.interval}
    result["switch_interval"] = args.switch_interval
    with ExitStack() as stack:
        log = work / f"serve-{kind}.log"
        url, pid = stack.enter_context(serving(db_url, log, args.switch_interval))
        admin = stack.enter_context(_admin(url, token))
        _prepare(admin)
        settings = {
            "server": url,
            "admin_token": token,
            "labels": LABELS,
            "image": IMAGE,
            "arch": ARCH,
            "version": OLD,
            "poll_interval": args.interval,
            "jitter": 0.2,
            "download_seconds": 2.0,
            "reboot_seconds": 1.0,
            "failure_rate": args.failure_rate,
            "keepalive": not args.no_keepalive,
        }
        _say(f"{kind}: enrolling {args.devices} devices ({args.load_processes} load processes)")
        load = LoadGenerators(settings, args.devices, args.load_processes)
        stack.callback(load.kill)
        cpu0, load0, wall0 = _cpu_seconds(pid), 0.0, time.perf_counter()
        _, enroll_stats = load.enrolled(timeout=3600)
        enroll_wall = time.perf_counter() - wall0
        result["enroll"] = {
            **_figures(enroll_stats, enroll_wall),
            "devices_per_second": round(args.devices / enroll_wall, 1),
            "server_cpu_s": round(_cpu_seconds(pid) - cpu0, 1),
        }
        _say(f"{kind}: enrolled in {enroll_wall:.1f} s; ramp: every device reports, then polls")
        result["ramp"] = _ramp(load, args.interval, args.devices)

        # Steady polling.
        before = _metrics(url)
        cpu0, load0, wall0 = _cpu_seconds(pid), load.cpu(), time.perf_counter()
        _say(f"{kind}: measuring {args.intervals} intervals of steady polling")
        time.sleep(args.interval * args.intervals)
        stats, _ = load.stats()
        wall = time.perf_counter() - wall0
        server_cpu, load_cpu = _cpu_seconds(pid) - cpu0, load.cpu() - load0
        after = _metrics(url)
        steady = _figures(stats, wall)
        steady.update(
            {
                "server_cpu_percent": round(100 * server_cpu / wall, 1),
                "server_cpu_ms_per_request": round(1000 * server_cpu / max(1, stats.requests()), 3),
                # What one core would serve at this cost per request (the server is one
                # process: its Python code holds one GIL).
                "server_capacity_per_core": round(stats.requests() / max(server_cpu, 1e-9), 1),
                "load_cpu_percent": round(100 * load_cpu / wall, 1),
                "load_cpu_ms_per_request": round(1000 * load_cpu / max(1, stats.requests()), 3),
                "server_rss_mb": round(_rss_mb(pid), 1),
                "server_side": _server_view(before, after),
                "ratio_p99_to_goal": round((steady["p99_ms"] or 0) / GOAL_P99_MS, 3),
            }
        )
        result["steady"] = steady
        _say(f"{kind}: steady p50 {steady['p50_ms']} ms p99 {steady['p99_ms']} ms, "
             f"{steady['requests_per_second']}/s, server CPU {steady['server_cpu_percent']}%, "
             f"errors {steady['errors']}")  # fmt: skip

        if not args.skip_rollout:
            result["rollout"] = _rollout(admin, url, pid, load, db_url, kind, args.rollout_timeout)
        final, versions = load.stop()
        result["versions"] = dict(versions)
        result["after_rollout_errors"] = sum(final.errors.values())
        result["server_log_tail"] = (work / f"serve-{kind}.log").read_text()[-2000:]
    return result


def _ramp(load: LoadGenerators, interval: float, devices: int) -> dict[str, Any]:
    """Wait until the devices' first reports are done: an interval with almost no report (or
    ``MAX_RAMP`` intervals); what the ramp's intervals looked like."""
    started, windows = time.perf_counter(), []
    for _ in range(MAX_RAMP):
        time.sleep(interval)
        stats, _ = load.stats()
        reports = len(stats.latencies.get("status", ()))
        windows.append({"reports": reports, **_figures(stats, interval)})
        if reports <= devices * RAMP_DONE:
            break
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "settled": windows[-1]["reports"] <= devices * RAMP_DONE,
        "intervals": [
            {k: w[k] for k in ("reports", "requests_per_second", "p50_ms", "p99_ms", "errors")}
            for w in windows
        ],
    }


def _rollout(
    admin: httpx.Client,
    url: str,
    pid: int,
    load: LoadGenerators,
    db_url: str,
    kind: str,
    timeout: float,
) -> dict[str, Any]:
    release = {"image": IMAGE, "arch": ARCH, "version": NEW}
    before = _metrics(url)
    load.stats()
    cpu0, load0, started = _cpu_seconds(pid), load.cpu(), time.perf_counter()
    response = admin.post("/api/v1/fleets/scale/rollouts", json={"release": release})
    response.raise_for_status()
    rollout_id = response.json()["id"]
    _say(f"{kind}: rollout {rollout_id} started")
    batches: dict[int, float] = {}
    shown: dict[str, Any] = {}
    while time.perf_counter() - started < timeout:
        shown = admin.get(f"/api/v1/rollouts/{rollout_id}").json()
        batches.setdefault(shown["batch"], round(time.perf_counter() - started, 1))
        if shown["status"] != "running":
            break
        time.sleep(1)
    seconds = time.perf_counter() - started
    stats, versions = load.stats()
    server_cpu, load_cpu = _cpu_seconds(pid) - cpu0, load.cpu() - load0
    after = _metrics(url)
    steps_key = ("afield_fleet_rollout_steps_total", "", "")
    steps = after[steps_key] - before[steps_key] if steps_key in after else None
    _say(f"{kind}: rollout {shown['status']} after {seconds:.0f} s: {shown['progress']}")
    _say(f"{kind}: timing the runner's step")
    step = _runner_step(db_url, rollout_id)
    return {
        **_figures(stats, seconds),
        "status": shown["status"],
        "reason": shown["reason"],
        "progress": shown["progress"],
        "batch_started_at_s": batches,
        "versions": dict(versions),
        "server_cpu_percent": round(100 * server_cpu / seconds, 1),
        "load_cpu_percent": round(100 * load_cpu / seconds, 1),
        "server_side": _server_view(before, after),
        "runner_step": step,
        "runner_steps_written": steps,  # from /metrics, when the server exposes it
    }


# --- where a poll's server time goes ---------------------------------------------------------


def _per_call(function: Any, count: int, *, rounds: int = 3, pause: float = 0.0) -> float:
    """Microseconds of CPU (every thread of this process) per call of ``function(i)`` for i in
    range(count): the best of ``rounds`` (the machine is shared), ``pause`` s before each."""
    best = float("inf")
    for _ in range(rounds):
        time.sleep(pause)
        started = time.process_time()
        for i in range(count):
            function(i)
        best = min(best, time.process_time() - started)
    return round(1e6 * best / count, 1)


def breakdown(db_url: str, devices: int = 1000) -> dict[str, float]:
    """The parts of one poll's server CPU, measured in this process on ``db_url``: the
    signature, the device row's read, the check-in's share of the written-behind flush,
    FastAPI's handling (the ASGI app called directly, without HTTP), and h11's parse of the
    request and its 304."""
    import h11

    from afield._serving import running
    from afield.fleet.api.device import DeviceService, _Request
    from afield.fleet.app import FleetSettings, create_app
    from afield.fleet.protocol import (
        DESIRED_PATH,
        DesiredState,
        authorization,
        parse_authorization,
        verify_request,
    )

    app = create_app(FleetSettings(db_url=db_url, runner_interval=0))
    token = create_token(app.state.db, "breakdown", "admin")
    service: DeviceService = app.state.devices
    with running(app) as url:
        fleet = SimFleet(SimConfig(server=url, admin_token=token, devices=devices, labels={}))

        async def enroll() -> None:
            async with fleet:
                await fleet.enroll()

        asyncio.run(enroll())
    sims = fleet.devices
    etags = {d.device_id: service.desired_state(service.reread(d.device_id))[1] for d in sims}
    etag = etags[sims[0].device_id]
    DesiredState.model_rebuild()

    def header(i: int) -> str:
        device = sims[i % devices]
        assert device.key is not None
        return authorization(device.key, device.device_id, "GET", DESIRED_PATH, b"", time.time())

    signed = [header(i) for i in range(devices)]
    parsed = [parse_authorization(h) for h in signed]
    keys = {d.device_id: d.key.public_key() for d in sims if d.key is not None}
    figures: dict[str, float] = {}
    figures["client: sign a request"] = _per_call(header, devices)
    figures["verify the signature (ECDSA P-256)"] = _per_call(
        lambda i: verify_request(
            keys[parsed[i].device_id], parsed[i], "GET", DESIRED_PATH, b"", time.time()
        ),
        devices,
    )
    target = _Request("GET", DESIRED_PATH, b"")  # what the route hands the service

    def authenticate(i: int) -> None:
        service.authenticate_poll(parse_authorization(header(i)), target)

    figures["authenticate_poll (incl. signing)"] = _per_call(authenticate, devices)
    service.checkins.flush()

    def flush(i: int) -> None:  # a flush a second, as many check-ins as the polls of a second
        if i % 300 == 0:
            for device in sims[:300]:
                service.checkins.seen(device.device_id, utcnow())
            service.checkins.flush()

    figures["check-in write (a flush of 300, per check-in)"] = _per_call(flush, 3000)

    async def asgi(i: int) -> None:
        headers = [(b"host", b"x"), (b"authorization", header(i).encode())]
        headers.append((b"if-none-match", etags[sims[i % devices].device_id].encode()))
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "GET", "scheme": "http", "path": DESIRED_PATH,
            "raw_path": DESIRED_PATH.encode(), "query_string": b"", "root_path": "",
            "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
            "state": {},
        }  # fmt: skip

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            pass

        await app(scope, receive, send)

    async def asgi_per_call() -> float:
        # One event loop for every call: anyio's worker threads live as long as the loop's
        # first task, so a loop per call would start a thread per call.
        best = float("inf")
        for _ in range(3):
            started = time.process_time()
            for i in range(devices):
                await asgi(i)
            best = min(best, time.process_time() - started)
        return round(1e6 * best / devices, 1)

    figures["ASGI app (incl. signing)"] = asyncio.run(asgi_per_call())
    request = (
        f"GET {DESIRED_PATH} HTTP/1.1\r\nhost: 127.0.0.1:8080\r\naccept: */*\r\n"
        "accept-encoding: gzip, deflate\r\nconnection: keep-alive\r\n"
        f"user-agent: python-httpx/{httpx.__version__}\r\nif-none-match: {etag}\r\n"
        f"authorization: {signed[0]}\r\n\r\n"
    ).encode()

    def h11_cycle(_: int) -> None:
        connection = h11.Connection(h11.SERVER)
        connection.receive_data(request)
        connection.next_event()
        connection.next_event()
        answer = [(b"etag", etag.encode()), (b"date", b"Wed, 02 Dec 2026 16:00:00 GMT")]
        connection.send(h11.Response(status_code=304, headers=answer))
        connection.send(h11.EndOfMessage())

    figures["h11: parse a poll, write its 304"] = _per_call(h11_cycle, 5000)
    app.state.db.close()
    return figures


# --- the agent ------------------------------------------------------------------------------


def agent_rss(work: Path, idle_seconds: float = 10.0) -> dict[str, Any]:
    """``afield device run`` (the real agent, a subprocess) on a simulated sysroot with 1.0.0
    booted, enrolled to a fresh fleet manager (SQLite), long-polling: its resident set."""
    from tests.device.images import commit_image

    from afield.device.agent import token_file
    from afield.device.bootseq import boot_once
    from afield.device.lifecycle import Device
    from afield.release import init_repository, publish
    from afield.trust import Keyring

    base = work / "agent"
    repo = base / "repo"
    v1 = commit_image(repo, base / "trees", version=OLD)
    keyring = Keyring.generate(base / "keys")
    init_repository(repo, keyring)
    publish(repo, keyring, v1, deltas=0)
    db_url = f"sqlite:///{base / 'fleet.db'}"
    db = Database(db_url)
    db.upgrade()
    token = create_token(db, "agent", "admin")
    db.close()
    with serving(db_url, base / "serve.log") as (url, _), _admin(url, token) as admin:
        root = repo / "tuf" / "root.json"
        device = Device.init(base / "sysroot", IMAGE, server=url, trust_root=root)
        device.install(repo, v1)
        if not boot_once(device).healthy:
            raise RuntimeError("the agent's test device did not boot healthy")
        enroll = admin.post("/api/v1/enrollment-tokens", json={"count": 1}).json()["tokens"][0]
        token_file(device).parent.mkdir(parents=True, exist_ok=True)
        token_file(device).write_text(enroll + "\n")
        command = [sys.executable, "-m", "afield.cli", "device", "run"]
        command += ["--sysroot", str(base / "sysroot"), "--poll-wait", "60"]
        with (
            (base / "agent.log").open("w") as log,
            subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT) as agent,
        ):
            try:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    shown = admin.get("/api/v1/devices").json()["data"]
                    if shown and shown[0]["current_version"] == OLD:
                        break
                    time.sleep(0.5)
                else:
                    raise RuntimeError(
                        f"the agent did not report: {(base / 'agent.log').read_text()}"
                    )
                time.sleep(idle_seconds)
                rss, peak = _rss_mb(agent.pid), _peak_mb(agent.pid)
                cpu = _cpu_seconds(agent.pid)
            finally:
                agent.terminate()
                agent.wait(timeout=30)
    return {
        "rss_mb": round(rss, 1),
        "peak_rss_mb": round(peak, 1),
        "cpu_s": round(cpu, 2),
        "idle_s": idle_seconds,
        "goal_mb": GOAL_AGENT_RSS_MB,
        "ratio_to_goal": round(rss / GOAL_AGENT_RSS_MB, 3),
    }


def _peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


# --- output ---------------------------------------------------------------------------------


def _machine() -> dict[str, Any]:
    import sqlalchemy
    import starlette
    import uvicorn

    meminfo = Path("/proc/meminfo").read_text().split("\n")[0].split()
    return {
        "date": datetime.date.today().isoformat(),
        "cores": os.cpu_count(),
        "ram_gib": round(int(meminfo[1]) / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvicorn": uvicorn.__version__,
        "starlette": starlette.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "load_average": os.getloadavg(),
    }


def _rows(run: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(figure, ours, goal, ratio, result) for one database's run."""
    steady, enroll = run["steady"], run["enroll"]
    p99 = steady["p99_ms"] or 0.0
    ok = p99 < GOAL_P99_MS and steady["errors"] == 0
    rate = f"{enroll['devices_per_second']}/s"
    rows = [
        ("enroll", f"{enroll['seconds']} s ({rate})", "-", "-", f"{enroll['errors']} errors"),
        (
            "steady p50 / p99 (client)",
            f"{steady['p50_ms']} / {p99} ms",
            "p99 < 100 ms",
            str(steady["ratio_p99_to_goal"]),
            "pass" if ok else "FAIL",
        ),
        ("steady requests, errors", f"{steady['requests_per_second']}/s", "0 errors", "-",
         str(steady["errors"])),
        ("server-side share <= 100 ms", str(steady["server_side"]["within_100ms"]), "-", "-", "-"),
        ("server CPU", f"{steady['server_cpu_percent']}% "
         f"({steady['server_cpu_ms_per_request']} ms/request)", "-", "-", "-"),
        ("load generator CPU", f"{steady['load_cpu_percent']}% "
         f"({steady['load_cpu_ms_per_request']} ms/request)", "-", "-", "-"),
    ]  # fmt: skip
    rollout = run.get("rollout")
    if rollout:
        done = rollout["status"] == "completed"
        rows += [
            ("rollout", f"{rollout['status']} in {rollout['seconds']} s", "completed", "-",
             "pass" if done else "FAIL"),
            ("rollout p50 / p99", f"{rollout['p50_ms']} / {rollout['p99_ms']} ms", "-", "-",
             f"{rollout['errors']} errors"),
            ("runner step", f"{rollout['runner_step']['median_ms']} ms", "-", "-", "-"),
        ]  # fmt: skip
    return rows


def _print(results: dict[str, Any]) -> None:
    console = Console()
    for run in results["runs"]:
        title = f"fleet manager on {run['db']}: {run['devices']:,} devices"
        table = Table(title=f"{title}, a poll every {run['interval_s']:g} s")
        for column in ("figure", "ours", "goal", "ratio", "result"):
            table.add_column(column)
        for row in _rows(run):
            table.add_row(*row)
        console.print(table)
    for key, figures in results.items():
        if key.startswith("breakdown_"):
            table = Table(
                title=f"one poll's server CPU, by part ({key.removeprefix('breakdown_')})"
            )
            table.add_column("part")
            table.add_column("CPU per call")
            for part, micros in figures.items():
                table.add_row(part, f"{micros} us")
            console.print(table)
    agent = results.get("agent")
    if agent:
        verdict = "pass" if agent["rss_mb"] < GOAL_AGENT_RSS_MB else "FAIL"
        console.print(
            f"agent idle RSS: {agent['rss_mb']} MB (goal < {GOAL_AGENT_RSS_MB:g} MB, ratio "
            f"{agent['ratio_to_goal']}): {verdict}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--devices", type=int, default=int(os.environ.get("AFIELD_BENCH_DEVICES", 10_000))
    )
    parser.add_argument(
        "--interval", type=float, default=float(os.environ.get("AFIELD_BENCH_INTERVAL", 30))
    )
    parser.add_argument("--intervals", type=int, default=3, help="measured poll intervals")
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--load-processes", type=int, default=2)
    parser.add_argument("--failure-rate", type=float, default=0.0)
    parser.add_argument("--no-keepalive", action="store_true", help="a connection per request")
    parser.add_argument("--skip-rollout", action="store_true")
    parser.add_argument(
        "--rollout-timeout", type=float, default=ROLLOUT_TIMEOUT, help="seconds (then it fails)"
    )
    parser.add_argument("--skip-agent", action="store_true")
    parser.add_argument("--skip-breakdown", action="store_true")
    parser.add_argument(
        "--switch-interval",
        type=float,
        default=None,
        help="experiment: the server's sys.setswitchinterval (seconds; Python's default 0.005)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": _machine(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="afield-bench-scale-", dir="/var/tmp") as scratch:
        work = Path(scratch)
        if args.db in ("sqlite", "both"):
            url = f"sqlite:///{work / 'fleet.db'}"
            results["runs"].append(run_database("sqlite", url, work, args))
            if not args.skip_breakdown:
                results["breakdown_sqlite"] = breakdown(f"sqlite:///{work / 'breakdown.db'}")
        if args.db in ("postgresql", "both"):
            from tests.postgres import cluster, new_database

            with cluster() as admin_url:
                url = new_database(admin_url)
                results["runs"].append(run_database("postgresql", url, work, args))
                if not args.skip_breakdown:
                    results["breakdown_postgresql"] = breakdown(new_database(admin_url))
        if not args.skip_agent:
            results["agent"] = agent_rss(work)
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    else:
        _print(results)


if __name__ == "__main__":
    main()
