"""Benchmark the rollout engine: one :func:`afield.fleet.step` over 100,000 devices.

The fleet: 100,000 devices with three labels each, 95% selected by ``site=berlin``, in the
middle of a canary rollout ``[1, "10%", "50%", "100%"]`` (batch 2 running: a tenth succeeded,
some booted in their health window, some updating, a few rolled back, the rest idle, 2% offline).
Figures, best of ``--repeat`` runs (:func:`time.perf_counter`):

1. ours: one ``step`` (goal < 1 s, the fleet-manager issue's).
2. baseline, same run: the least any step must do, one pass over the same device views
   matching the selector and bucketing by phase, in plain Python. ``ours / baseline`` is what
   the engine's rules cost on top of reading the fleet once.

``.venv/bin/python benchmarks/fleet.py [--devices N] [--repeat N] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from afield.fleet import DeviceView, Phase, RolloutPolicy, RolloutState, Selector, step

GOAL_SECONDS = 1.0
NOW = 1_800_000_000.0
TARGET = "2.0.0"
POLICY = RolloutPolicy.parse(
    {"batches": [1, "10%", "50%", "100%"], "max_unavailable": "20%", "health_window": "5m"}
)
SELECTOR = Selector.parse("site=berlin")


def fleet(count: int) -> list[DeviceView]:
    """The devices of the module docstring, deterministic."""
    devices = []
    for n in range(count):
        labels = {"site": "berlin" if n % 20 else "paris", "rack": f"r{n % 50}", "hw": "gw-100"}
        online = n % 50 != 7
        common: dict[str, Any] = {"device_id": f"d{n:06d}", "labels": labels, "online": online}
        bucket = n % 100
        if bucket < 10:
            view = DeviceView(**common, last_seen=NOW, current=TARGET, phase=Phase.SUCCEEDED,
                              batch=1, assigned_at=NOW - 3600, booted_at=NOW - 3000)  # fmt: skip
        elif bucket < 20:
            view = DeviceView(**common, last_seen=NOW - 10, current=TARGET, phase=Phase.BOOTED,
                              batch=2, assigned_at=NOW - 400, booted_at=NOW - 100)  # fmt: skip
        elif bucket < 28:
            view = DeviceView(**common, last_seen=NOW - 5, current="1.0.0", phase=Phase.UPDATING,
                              batch=2, assigned_at=NOW - 200)  # fmt: skip
        elif bucket < 29:
            view = DeviceView(**common, last_seen=NOW - 60, current="1.0.0",
                              phase=Phase.ROLLED_BACK, batch=2, assigned_at=NOW - 900)  # fmt: skip
        else:
            view = DeviceView(**common, last_seen=NOW - 30, current="1.0.0")
        devices.append(view)
    return devices


def ours(devices: Sequence[DeviceView]) -> None:
    state = RolloutState(batch=2, batch_started_at=NOW - 600)
    step(POLICY, SELECTOR, TARGET, devices, state, NOW)


def baseline(devices: Sequence[DeviceView]) -> None:
    phases: Counter[Phase] = Counter()
    for device in devices:
        if SELECTOR.matches(device.labels):
            phases[device.phase] += 1


def best(function: Callable[[Sequence[DeviceView]], None], devices: Sequence[DeviceView],
         repeat: int) -> float:  # fmt: skip
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function(devices)
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    devices = fleet(args.devices)
    mine, floor = best(ours, devices, args.repeat), best(baseline, devices, args.repeat)
    result = {
        "devices": args.devices,
        "step_ms": round(mine * 1000, 1),
        "baseline_ms": round(floor * 1000, 1),
        "ratio_to_baseline": round(mine / floor, 2),
        "ratio_to_goal": round(mine / GOAL_SECONDS, 3),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"rollout engine, one step over {args.devices:,} devices")
    for column in ("figure", "ours", "baseline / goal", "ratio", "result"):
        table.add_column(column)
    verdict = "pass" if mine < GOAL_SECONDS else "FAIL"
    step_ms, floor_ms = f"{result['step_ms']} ms", f"{result['baseline_ms']} ms"
    table.add_row(
        "step vs one selector pass", step_ms, floor_ms, str(result["ratio_to_baseline"]), "-"
    )
    table.add_row(
        "step vs goal",
        step_ms,
        f"{GOAL_SECONDS * 1000:.0f} ms",
        str(result["ratio_to_goal"]),
        verdict,
    )
    Console().print(table)


if __name__ == "__main__":
    main()
