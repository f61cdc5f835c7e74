"""What a rollout's page shows live, read from the database: batches, failed devices, actions.

:func:`read_live` builds a :class:`Live` (the context of ``_rollout_live.html``): the rollout
as the API shows it, its members per batch and phase (one ``GROUP BY batch, phase``), the
devices that rolled back, failed their checks or timed out (:data:`FAILED_SHOWN` of them) with
the checks that failed and their output, and the actions the engine would accept now.
:func:`signature` is the cheap check a stream runs every second to know whether to read it
again. :func:`policy_facts` describes a fleet's policy in words.

What it leaves to others: the pages and the stream (:mod:`afield.web.rollouts`), the engine
(:mod:`afield.fleet.rollout`).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from afield.fleet.api.rollouts import RolloutPublic, rollout_public
from afield.fleet.db import Database
from afield.fleet.models import Device, Event, Rollout, state_from_json
from afield.fleet.policy import RolloutPolicy, RolloutPolicyError
from afield.fleet.rollout import (
    Phase,
    RolloutError,
    RolloutState,
    abort,
    approve,
    pause,
    resume,
)
from afield.web.devices import device_path

__all__ = [
    "FAILED_SHOWN",
    "PHASES",
    "TRANSITIONS",
    "BatchRow",
    "FailedDevice",
    "Live",
    "allowed_actions",
    "live_of",
    "policy_facts",
    "policy_of",
    "read_live",
    "signature",
]

FAILED_SHOWN = 50
"""Failed devices listed on a rollout's page (the page says how many there are in all)."""
PHASES = tuple(p.value for p in Phase if p is not Phase.IDLE)
"""The phases a member of a batch can be in, in the order the batch table shows them."""
TRANSITIONS: dict[str, Callable[[RolloutState], RolloutState]] = {
    "approve": approve,
    "resume": resume,
    "pause": pause,
    "abort": abort,
}
"""The engine's transitions an admin's form may apply, by the action's name."""
_FAILED = (Phase.ROLLED_BACK.value, Phase.HEALTH_FAILED.value, Phase.TIMED_OUT.value)
_HEALTH_EVENTS = 1000  # health_failed events read to explain the failed devices shown


@dataclass(frozen=True)
class BatchRow:
    """One batch of the policy: its size as written and its members by phase.

    ``index`` counts from 0 (the page shows ``index + 1``); ``reach`` is how many devices the
    batch may have told to update in all (batches are cumulative), of those selected now;
    ``size`` is None for a batch index the devices carry but the policy no longer has.
    """

    index: int
    size: str | None
    reach: int | None
    phases: dict[str, int]
    members: int
    current: bool


@dataclass(frozen=True)
class FailedDevice:
    """A device of the rollout that rolled back, failed its health checks or timed out."""

    id: str
    url: str
    name: str
    phase: str
    batch: int | None
    checks: list[str]
    output: str
    rollback: str
    last_seen: datetime.datetime | None


@dataclass(frozen=True)
class Live:
    """The live part of a rollout's page (``_rollout_live.html``)."""

    rollout: RolloutPublic
    batches: list[BatchRow]
    failed: list[FailedDevice]
    failed_count: int
    actions: tuple[str, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        """The phases the batch table has a column for, in order."""
        return PHASES


def allowed_actions(state: RolloutState) -> tuple[str, ...]:
    """The actions the engine accepts in ``state``, tried on it (the transitions are pure)."""
    allowed = []
    for name, transition in TRANSITIONS.items():
        try:
            transition(state)
        except RolloutError:
            continue
        allowed.append(name)
    return tuple(allowed)


def policy_of(rollout: Rollout) -> RolloutPolicy | None:
    try:
        return RolloutPolicy.parse(rollout.fleet.policy)
    except RolloutPolicyError:  # stored policies were checked when written; show what we can
        return None


def _phase_counts(session: Session, rollout_id: int) -> tuple[tuple[int, str, int], ...]:
    """The rollout's devices counted by (batch, phase); a missing batch counts as -1."""
    rows = session.execute(
        select(Device.batch, Device.phase, func.count())
        .where(Device.rollout_id == rollout_id)
        .group_by(Device.batch, Device.phase)
    ).all()
    return tuple(sorted((-1 if b is None else int(b), str(p), int(n)) for b, p, n in rows))


def _batches(
    policy: RolloutPolicy | None,
    state: RolloutState,
    counts: tuple[tuple[int, str, int], ...],
    selected: int,
) -> list[BatchRow]:
    planned = list(policy.batches) if policy is not None else []
    by_batch: dict[int, dict[str, int]] = {}
    for batch, phase, n in counts:
        phases = by_batch.setdefault(max(batch, 0), dict.fromkeys(PHASES, 0))
        phases[phase] = phases.get(phase, 0) + n
    last = max([len(planned) - 1, *by_batch])
    rows = []
    for index in range(last + 1):
        phases = by_batch.get(index, dict.fromkeys(PHASES, 0))
        amount = planned[index] if index < len(planned) else None
        rows.append(
            BatchRow(
                index=index,
                size=None if amount is None else str(amount),
                reach=None if amount is None else amount.of(selected),
                phases=phases,
                members=sum(phases.values()),
                current=index == state.batch,
            )
        )
    return rows


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _health(value: Any, commit: str) -> tuple[list[str], str] | None:
    """The failed checks and output of a health report about ``commit`` that failed, else None."""
    health = _mapping(value)
    failed = health.get("failed")
    if health.get("commit") != commit or not isinstance(failed, list) or not failed:
        return None
    detail = health.get("detail")
    return [c for c in failed if isinstance(c, str)], detail if isinstance(detail, str) else ""


def _failed_health(
    session: Session, devices: Sequence[Device], commit: str
) -> dict[str, tuple[list[str], str]]:
    """Per device, the failed checks and output on ``commit``: from its last report, else (it
    rolled back since, and reports the health of the release it fell back to) from its latest
    ``device.health_failed`` event about ``commit``."""
    found: dict[str, tuple[list[str], str]] = {}
    for device in devices:
        health = _health(_mapping(device.report).get("health"), commit)
        if health is not None:
            found[device.id] = health
    missing = {f"device:{d.id}": d.id for d in devices if d.id not in found}
    if not missing:
        return found
    events = session.execute(
        select(Event.subject, Event.details)
        .where(Event.kind == "device.health_failed", Event.subject.in_(missing))
        .order_by(Event.id.desc())
        .limit(_HEALTH_EVENTS)
    )
    for subject, details in events:
        device_id = missing[subject]
        health = _health(details, commit)
        if health is not None and device_id not in found:
            found[device_id] = health
    return found


def _failed_device(device: Device, health: tuple[list[str], str] | None) -> FailedDevice:
    """Why a failed device failed (its words: the page shows them escaped)."""
    checks, output = health if health is not None else ([], "")
    reason = _mapping(_mapping(device.report).get("rolled_back")).get("reason")
    return FailedDevice(
        id=device.id,
        url=device_path(device.id),
        name=device.name,
        phase=device.phase,
        batch=device.batch,
        checks=checks,
        output=output,
        rollback=reason if isinstance(reason, str) else "",
        last_seen=device.last_seen,
    )


def read_live(session: Session, rollout_id: int) -> Live | None:
    """The live part of rollout ``rollout_id``'s page (None: there is no such rollout)."""
    rollout = session.get(Rollout, rollout_id)
    if rollout is None:
        return None
    public = rollout_public(rollout)
    state = state_from_json(rollout.state)
    counts = _phase_counts(session, rollout_id)
    failing = (Device.rollout_id == rollout_id) & Device.phase.in_(_FAILED)
    failed = session.scalars(
        select(Device).where(failing).order_by(Device.id).limit(FAILED_SHOWN)
    ).all()
    failed_count = session.scalar(select(func.count()).select_from(Device).where(failing)) or 0
    health = _failed_health(session, failed, rollout.release.commit)
    return Live(
        rollout=public,
        batches=_batches(policy_of(rollout), state, counts, state.counters.selected),
        failed=[_failed_device(d, health.get(d.id)) for d in failed],
        failed_count=failed_count,
        actions=allowed_actions(state),
    )


def signature(db: Database, rollout_id: int) -> tuple[Any, ...] | None:
    """What changes when the live part may: the rollout's row and its phase counts."""
    with db.sessions() as session:
        row = session.execute(
            select(Rollout.revision, Rollout.updated, Rollout.status).where(
                Rollout.id == rollout_id
            )
        ).one_or_none()
        if row is None:
            return None
        return (*row, _phase_counts(session, rollout_id))


def live_of(db: Database, rollout_id: int) -> Live | None:
    with db.sessions() as session:
        return read_live(session, rollout_id)


def policy_facts(policy: RolloutPolicy | None) -> list[tuple[str, str]]:
    if policy is None:
        return [("policy", "the fleet's stored policy does not parse")]
    table = policy.to_json()
    window = policy.maintenance_window
    return [
        ("batches", " → ".join(str(b) for b in policy.batches)),
        ("success threshold", f"{policy.success_threshold:.0%} of a batch"),
        ("failure threshold", f"{policy.failure_threshold:.0%} of the devices told so far"),
        ("health window", str(table["health_window"])),
        ("update timeout", str(table["update_timeout"])),
        (
            "max unavailable",
            "the batch" if policy.max_unavailable is None else str(table["max_unavailable"]),
        ),
        ("manual approval", "between batches" if policy.manual_approval else "no"),
        ("maintenance window", "always open" if window is None else str(window)),
    ]
