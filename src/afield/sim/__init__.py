"""Simulated fleets: many lightweight devices that speak the real device API to a fleet manager.

:class:`SimFleet` runs ``SimConfig.devices`` devices as asyncio tasks over HTTP: they enroll
with one-time tokens, report, poll or long-poll their desired state, "update" (downloading,
staged, reboot) and succeed, fall back or fail their health checks as configured, and refuse
what they fell back from. It counts requests, latencies and errors for ``afield sim`` and the
fleet scale benchmark (``benchmarks/fleet_scale.py``).

What it leaves to others: the fleet manager itself (:mod:`afield.fleet`), devices with real
sysroots, updates and boots (:mod:`afield.device`, its boot simulator), the command line
(:mod:`afield.cli.sim`).
"""

from __future__ import annotations

from afield.sim._config import SimConfig, SimConfigError, SimError, commit_of
from afield.sim._stats import KINDS, SimStats, SimSummary
from afield.sim.fleet import TOKENS_PATH, SimFleet

__all__ = [
    "KINDS",
    "TOKENS_PATH",
    "SimConfig",
    "SimConfigError",
    "SimError",
    "SimFleet",
    "SimStats",
    "SimSummary",
    "commit_of",
]
