"""Benchmark the device side on a real composed image.

Figures (one run each, ``--repeat N`` for more, :func:`time.perf_counter`):

1. stage: ``Device.stage`` of an update (pull into the sysroot repo, deploy with the /etc merge,
   arm the counter, write deployments, grub.cfg and the journal) against the raw baseline of
   the same work done by the OSTree CLI alone (``ostree pull-local`` + ``ostree admin deploy``),
   both from the same starting state; goal ratio <= 1.2.
2. boot decision: the firmware simulator's work before handing over (read grubenv, grub.cfg and
   the BLS entries, decide, save the counter, resolve the deployment), excluding the health
   checks; reported in milliseconds (no goal).

The images are examples/gateway.toml and a files-only variant, composed with the default
compose cache (fast when ``make demo`` or an earlier bench already filled it). Run as root:
``.venv/bin/python benchmarks/device.py [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from afield.blueprint import load
from afield.compose import compose, default_cache_dir
from afield.device.boot.firmware import power_on
from afield.device.lifecycle import Device

ROOT = Path(__file__).resolve().parents[1]
GOAL_STAGE = 1.2


def _ostree(*args: str) -> None:
    subprocess.run(["ostree", *args], check=True, capture_output=True)


def _images(work: Path) -> tuple[Path, str, str]:
    text = (ROOT / "examples" / "gateway.toml").read_text()
    v1 = work / "v1.toml"
    v2 = work / "v2.toml"
    v1.write_text(text)
    v2.write_text(text.replace("interval_seconds = 30", "interval_seconds = 45"))
    repo = work / "repo"
    a = compose(load(v1), repo, cache_dir=default_cache_dir())
    b = compose(load(v2), repo, cache_dir=default_cache_dir(), ref="bench/v2")
    return repo, a.commit, b.commit


def _ours(work: Path, repo: Path, v1: str, v2: str) -> float:
    device = Device.init(work / "ours", "gateway")
    device.install(repo, v1)
    began = time.perf_counter()
    device.stage(repo, v2)
    return time.perf_counter() - began


def _baseline(work: Path, repo: Path, v1: str, v2: str) -> float:
    sysroot = work / "baseline"
    sysroot.mkdir()
    _ostree("admin", "init-fs", "--modern", str(sysroot))
    _ostree("admin", f"--sysroot={sysroot}", "os-init", "gateway")
    _ostree(f"--repo={sysroot}/ostree/repo", "config", "set", "sysroot.bootloader", "none")
    _ostree(f"--repo={sysroot}/ostree/repo", "pull-local", f"{repo}/ostree", v1)
    _ostree("admin", f"--sysroot={sysroot}", "deploy", "--os=gateway", v1)
    began = time.perf_counter()
    _ostree(f"--repo={sysroot}/ostree/repo", "pull-local", f"{repo}/ostree", v2)
    _ostree("admin", f"--sysroot={sysroot}", "deploy", "--os=gateway", "--retain", v2)
    return time.perf_counter() - began


def _decision(work: Path, repo: Path, v1: str, v2: str, rounds: int = 200) -> float:
    device = Device.open(work / "ours")
    env = device.grubenv_path.read_bytes()
    times = []
    for _ in range(rounds):
        device.grubenv_path.write_bytes(env)  # always decide from the freshly armed counter
        began = time.perf_counter()
        power_on(device.sysroot_path)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--repeat", type=int, default=1, help="runs per figure (median taken)")
    args = parser.parse_args()
    os.environ.setdefault("OSTREE_SYSROOT_DEBUG", "mutable-deployments")
    console = Console(stderr=args.json)
    base = Path(tempfile.mkdtemp(prefix="afield-bench-device-", dir="/var/tmp"))
    try:
        repo, v1, v2 = _images(base)
        ours, baseline, decision = [], [], []
        for i in range(args.repeat):
            work = base / f"run{i}"
            work.mkdir()
            baseline.append(_baseline(work, repo, v1, v2))
            ours.append(_ours(work, repo, v1, v2))
            decision.append(_decision(work, repo, v1, v2))
        figures: dict[str, Any] = {
            "stage_seconds": statistics.median(ours),
            "baseline_seconds": statistics.median(baseline),
            "boot_decision_ms": statistics.median(decision) * 1000,
        }
        figures["stage_ratio"] = figures["stage_seconds"] / figures["baseline_seconds"]
        figures["stage_goal"] = GOAL_STAGE
        figures["stage_pass"] = figures["stage_ratio"] <= GOAL_STAGE
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    table = Table("figure", "afield", "baseline", "ratio", "goal", "")
    table.add_row(
        "stage an update",
        f"{figures['stage_seconds']:.2f} s",
        f"{figures['baseline_seconds']:.2f} s (pull-local + admin deploy)",
        f"{figures['stage_ratio']:.2f}",
        f"<= {GOAL_STAGE}",
        "pass" if figures["stage_pass"] else "FAIL",
    )
    table.add_row("boot decision", f"{figures['boot_decision_ms']:.2f} ms", "-", "-", "-", "")
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
