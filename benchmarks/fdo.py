"""Benchmark zero-touch onboarding: TO1 + TO2 with afield's service info, on 127.0.0.1.

Set-up (untimed): a second process runs a whole FDO site (:mod:`afield.fdo.server.site`: the
manufacturer, the rendezvous server and the owner on uvicorn with SQLite files); N devices are
made by real DI (P-384 keys), then the site sells every voucher to the owner, which imports and
registers it (TO0) before the clock starts. The owner hands each device the fleet URL, a fresh
enrollment token, a 2 KiB TUF root, an SSH key and a 4 KiB file.

Figures (:func:`time.perf_counter`):

1. latency: one device at a time, the whole onboarding (TO1 at the rendezvous server, then TO2
   at the owner, service info both ways, the device checking the voucher chain, the owner's
   signature, the to1d and every download); goal < 200 ms per device.
2. throughput: the remaining devices onboarded by 2, 4 and 8 concurrent device processes
   (several devices per process, one after the other); goal >= 20 devices/s.
3. baseline, same run: the same number of HTTP round trips (counted from the servers'
   ``afield_fdo_messages_total``) as empty ``GET /healthz`` requests to the same servers: the
   floor that HTTP on this machine sets, so ``latency / floor`` is what the protocol's work
   (CBOR, signatures, ECDH, AES-GCM, the database) costs on top of the transport.

The device side is the library path `afield device onboard` takes (``find_owner``, ``run_to2``,
``DeviceModules``) without the writes into a sysroot. Servers and devices share the machine's
2 cores: compare ratios, not absolute times.
``.venv/bin/python benchmarks/fdo.py [--devices N] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import urllib3
from rich.console import Console
from rich.table import Table

from afield.fdo.cbor import decode
from afield.fdo.client import manufacture
from afield.fdo.credential import DeviceCredential
from afield.fdo.modules import AFIELD, DOWNLOAD, DeviceModules, DownloadFile, Handoff
from afield.fdo.pki import load_private_key
from afield.fdo.serviceinfo import Devmod
from afield.fdo.to1 import device_rv_targets, find_owner
from afield.fdo.to2 import owner_urls, run_to2

GOAL_LATENCY_MS = 200.0
GOAL_RATE = 20.0
CONCURRENCY = (2, 4, 8)
TUF_ROOT = json.dumps({"signed": {"_type": "root", "pad": "k" * 2000}, "signatures": []}).encode()
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchmarkKeyOnlyForTests bench@afield"
DEVMOD = Devmod(
    os="Linux",
    arch="x86_64",
    version="bench",
    device="bench",
    sep=":",
    bin="x86_64",
    modules=("devmod", AFIELD, DOWNLOAD),
)


# --- the servers' process -------------------------------------------------------------------


def _servers(work: Path, urls: Any, go: Any, done: Any) -> None:
    """Run the three servers; on ``go`` sell every voucher the manufacturer holds (TO0)."""
    from afield.fdo.server.site import local_site

    handoff = Handoff(
        fleet_url="https://fleet.example.com",
        tuf_root=TUF_ROOT,
        ssh_keys=(SSH_KEY,),
        files=(DownloadFile("bench.bin", bytes(range(256)) * 16),),
    )
    with local_site(work, handoff) as site:
        urls.put((site.manufacturer_url, site.rendezvous_url, site.owner_url))
        go.wait()
        registered = [site.sell(guid) for guid in site.vouchers.guids()]
        urls.put(sum(1 for r in registered if r.until is not None))
        done.wait()


# --- devices --------------------------------------------------------------------------------


def _onboard(device: Path) -> float:
    """Onboard one device from its credential files; seconds taken."""
    credential = DeviceCredential.from_cbor(decode((device / "credential.cbor").read_bytes()))
    key = load_private_key(device / "credential.cbor.key.pem")
    started = time.perf_counter()
    for target in device_rv_targets(credential.rv_info):
        found = find_owner(target.url, credential, key)
        for owner in owner_urls(found.addrs):
            modules = DeviceModules()
            run_to2(owner, credential, key, to1d=found.to1d, devmod=DEVMOD, handler=modules)
            modules.handoff()
            return time.perf_counter() - started
    raise RuntimeError(f"{device}: no rendezvous directive")


def _onboard_all(devices: list[Path]) -> list[float]:
    return [_onboard(d) for d in devices]


def _counts(pool: urllib3.PoolManager, urls: tuple[str, str]) -> int:
    total = 0
    for url in urls:
        text = pool.request("GET", f"{url}/metrics").data.decode()
        for line in text.splitlines():
            if line.startswith("afield_fdo_messages_total"):
                total += int(float(line.rsplit(" ", 1)[1]))
    return total


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _floor(pool: urllib3.PoolManager, url: str, requests: int) -> float:
    """Seconds for ``requests`` sequential GET /healthz on one kept-alive connection."""
    started = time.perf_counter()
    for _ in range(requests):
        pool.request("GET", f"{url}/healthz")
    return time.perf_counter() - started


# --- the run --------------------------------------------------------------------------------


def _manufacture(work: Path, mfg_url: str, count: int) -> list[Path]:
    devices = []
    for n in range(count):
        device = work / "devices" / f"{n:05d}"
        device.mkdir(parents=True)
        manufacture(mfg_url, device / "credential.cbor", device_info="bench")
        devices.append(device)
    return devices


def _warm(_: int) -> None:
    """Make a pool worker import what onboarding needs before the clock starts."""
    time.sleep(0.2)


def _throughput(devices: list[Path], processes: int) -> tuple[float, list[float]]:
    chunks = [devices[i::processes] for i in range(processes)]
    context = multiprocessing.get_context("forkserver")
    with context.Pool(processes) as pool:
        pool.map(_warm, range(processes), chunksize=1)
        started = time.perf_counter()
        results = pool.map(_onboard_all, chunks)
        seconds = time.perf_counter() - started
    return seconds, [s for chunk in results for s in chunk]


def run(count: int, sequential: int) -> dict[str, Any]:
    """Set up, measure, and return every figure."""
    with tempfile.TemporaryDirectory(prefix="afield-bench-fdo-") as scratch, ExitStack() as stack:
        work = Path(scratch)
        context = multiprocessing.get_context("forkserver")
        urls, go, done = context.Queue(), context.Event(), context.Event()
        server = context.Process(target=_servers, args=(work, urls, go, done), daemon=True)
        server.start()
        pid = server.pid
        assert pid is not None  # set by start()
        stack.callback(server.join, 10)
        stack.callback(done.set)
        mfg_url, rv_url, owner_url = urls.get(timeout=60)
        devices = _manufacture(work, mfg_url, count)
        go.set()
        registered = urls.get(timeout=600)
        if registered != count:
            raise RuntimeError(f"only {registered} of {count} vouchers registered (TO0)")

        http = urllib3.PoolManager()
        before, cpu_before = _counts(http, (rv_url, owner_url)), _cpu_seconds(pid)
        latencies = _onboard_all(devices[:sequential])
        server_cpu = (_cpu_seconds(pid) - cpu_before) / sequential
        messages = (_counts(http, (rv_url, owner_url)) - before) / sequential
        floor_seconds = _floor(http, owner_url, int(messages * sequential)) / sequential

        rest = devices[sequential:]
        rates = {}
        share = len(rest) // len(CONCURRENCY)
        for i, processes in enumerate(CONCURRENCY):
            batch = rest[i * share : (i + 1) * share]
            seconds, each = _throughput(batch, processes)
            rates[processes] = {
                "devices": len(batch),
                "seconds": round(seconds, 3),
                "devices_per_second": round(len(batch) / seconds, 1),
                "p50_ms": round(statistics.median(each) * 1000, 1),
                "p95_ms": round(statistics.quantiles(each, n=20)[-1] * 1000, 1),
            }
    p50 = statistics.median(latencies) * 1000
    best = max(r["devices_per_second"] for r in rates.values())
    return {
        "devices": count,
        "latency": {
            "devices": sequential,
            "p50_ms": round(p50, 1),
            "p95_ms": round(statistics.quantiles(latencies, n=20)[-1] * 1000, 1),
            "mean_ms": round(statistics.fmean(latencies) * 1000, 1),
            "messages_per_onboarding": messages,
            "server_cpu_ms": round(server_cpu * 1000, 1),
            "http_floor_ms": round(floor_seconds * 1000, 2),
            "ratio_to_floor": round(p50 / (floor_seconds * 1000), 1),
            "ratio_to_goal": round(p50 / GOAL_LATENCY_MS, 3),
        },
        "throughput": rates,
        "best_devices_per_second": best,
        "rate_ratio_to_goal": round(best / GOAL_RATE, 2),
    }


def _print(result: dict[str, Any]) -> None:
    console = Console()
    latency = result["latency"]
    table = Table(title=f"FDO onboarding, {result['devices']} devices on 127.0.0.1")
    for column in ("figure", "ours", "baseline / goal", "ratio", "result"):
        table.add_column(column)
    table.add_row(
        "latency p50 (1 device at a time)",
        f"{latency['p50_ms']} ms",
        f"goal {GOAL_LATENCY_MS:.0f} ms",
        f"{latency['ratio_to_goal']}",
        "pass" if latency["p50_ms"] < GOAL_LATENCY_MS else "FAIL",
    )
    table.add_row(
        "latency vs HTTP floor",
        f"{latency['p50_ms']} ms",
        f"{latency['http_floor_ms']} ms ({latency['messages_per_onboarding']:.0f} GETs)",
        f"{latency['ratio_to_floor']}",
        "-",
    )
    table.add_row(
        "server CPU per onboarding (rendezvous + owner)",
        f"{latency['server_cpu_ms']} ms",
        "-",
        "-",
        "-",
    )
    for processes, rate in result["throughput"].items():
        table.add_row(
            f"throughput, {processes} device processes",
            f"{rate['devices_per_second']} /s",
            f"goal {GOAL_RATE:.0f} /s",
            f"{rate['devices_per_second'] / GOAL_RATE:.2f}",
            "pass" if rate["devices_per_second"] >= GOAL_RATE else "FAIL",
        )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=230, help="devices made and onboarded")
    parser.add_argument("--sequential", type=int, default=50, help="devices timed one at a time")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    result = run(args.devices, args.sequential)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result)


if __name__ == "__main__":
    main()
