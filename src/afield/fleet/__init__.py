"""The fleet manager: rollout policies and the rollout engine.

:mod:`~afield.fleet.policy` parses and checks rollout policies (cumulative batches, success and
failure thresholds, health window, update timeout, disruption budget, manual approval,
maintenance windows) and label selectors; :mod:`~afield.fleet.rollout` is the rollout engine, a
pure function from (policy, device views, state, time) to (devices to update now, new state).

What it leaves to others: the database, the HTTP API and the dashboard of the fleet manager
(later modules of this package and :mod:`afield.web`), and the device side of an update
(:mod:`afield.device`).
"""

from __future__ import annotations

from afield.fleet.policy import (
    Amount,
    Cron,
    MaintenanceWindow,
    RolloutPolicy,
    RolloutPolicyError,
    Selector,
    SelectorError,
)
from afield.fleet.rollout import (
    Cause,
    Counters,
    DeviceView,
    Phase,
    RolloutError,
    RolloutState,
    Status,
    StepResult,
    abort,
    approve,
    pause,
    resume,
    step,
)

__all__ = [
    "Amount",
    "Cause",
    "Counters",
    "Cron",
    "DeviceView",
    "MaintenanceWindow",
    "Phase",
    "RolloutError",
    "RolloutPolicy",
    "RolloutPolicyError",
    "RolloutState",
    "Selector",
    "SelectorError",
    "Status",
    "StepResult",
    "abort",
    "approve",
    "pause",
    "resume",
    "step",
]
