"""The rollout engine: which devices to tell to update now, as a pure function.

:func:`step` takes a policy, the fleet's selector, the target release, a view of every device and
the rollout's state, plus the time, and returns the devices to tell to update now, the devices
whose update timed out or succeeded at this step, and the new state. It does no I/O and reads no
clock, so the fleet manager can run it on every device report or on a timer, and the tests can
drive a simulated fleet through thousands of steps. One step is a single pass over the devices
(O(n)), so 100,000 devices take a fraction of a second.

The rules, and where they come from (FlightCtl's ``rolloutPolicy``, hawkBit's rollout groups):

* **Selection.** Only devices the selector matches count, in every number below. A device that
  stops matching mid-rollout is no longer counted (nor ever assigned); one that starts matching
  (a device that joins the fleet) is an idle device like the others and is eligible in the
  current batch if it has room, else in a later one. A device already running the target when
  it would be picked counts as up to date and is never assigned.
* **Phases.** The caller records what the engine decides (an assigned device is ``pending`` at
  ``assigned_at`` in the current batch; ``timed_out`` and ``succeeded`` devices take those
  phases) and what devices report (``updating``, ``booted`` at ``booted_at``, ``rolled_back``,
  ``health_failed``). A booted device succeeds once it checks in (``last_seen``) at least
  ``health_window`` after booting the target. A device times out ``update_timeout`` after it was
  assigned if it has not booted by then, or ``update_timeout`` after its health window ended if
  it has not checked in since: offline devices do not block a batch forever.
* **Batches** are cumulative (see :mod:`afield.fleet.policy`): batch *i* may have told
  ``batches[i]`` devices of the fleet to update in all, computed from the devices selected at
  this step, so the last ``100%`` batch also covers devices that joined late. Devices are picked
  in device-id order (the same inputs always give the same answer), only while online.
* **Budget.** Devices ``pending``, ``updating`` or ``booted`` are unavailable; after a step there
  are never more than ``max_unavailable`` of them, and never more assigned than the batch allows.
* **Next batch** (hawkBit's success condition, FlightCtl's ``successThreshold``). A batch is
  judged once it is *full* (its total is reached, or no selected device is left to assign) or
  *stalled* (every device left to assign is offline and the batch started ``update_timeout``
  ago). It passes when at least ``ceil(success_threshold * members)`` of its members succeeded,
  and the next batch starts at once, even while the rest still finish (they still count against
  the budget). A stalled batch with no members waits for a device to come online, so nobody
  skips the canary; only the last batch may end empty. When the successes still possible cannot
  reach the threshold, the rollout pauses. With ``manual_approval`` it waits for
  :func:`approve` between batches (hawkBit's ``PAUSE`` success action).
* **Failures** (hawkBit's error condition). When more than ``failure_threshold`` of the devices
  assigned so far have rolled back, failed their health checks or timed out, the rollout pauses
  itself, naming the devices. No minimum count: a failed canary (1 of 1) pauses, on purpose.
  :func:`resume` accepts the failures seen so far; the next new failure while the rollout is
  still over the threshold pauses it again. Resuming a rollout its success gate paused moves on
  to the next batch.
* **Completion.** After the last batch passed and no device is unavailable, the rollout is
  ``completed``. A rollout whose selector matches no device yet waits (``running``, saying so)
  rather than completing empty: it would then update every device that joins, canary-less. A
  completed rollout still tells devices that come online or join later to
  update (within the budget and window), so the fleet converges; failures still pause it.
* **Maintenance window.** Outside it no device is told to update; devices already updating go
  on, timeouts and batches are still judged, the status stays ``running`` and the reason says
  why nothing moves.
* A ``paused``, ``waiting_approval`` or ``aborted`` rollout tells no device to update, but still
  reports timeouts and successes so the caller's records stay true.

What it leaves to others: persisting devices and states, sending the update to a device and
collecting its reports (the fleet manager's API and database), choosing the target release
(releases), and deciding a device is online (the caller's ``online`` flag).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from fractions import Fraction

from afield.errors import FleetError
from afield.fleet.policy import RolloutPolicy, Selector

__all__ = [
    "Cause",
    "Counters",
    "DeviceView",
    "Phase",
    "RolloutError",
    "RolloutState",
    "Status",
    "StepResult",
    "abort",
    "approve",
    "pause",
    "resume",
    "step",
]

_SHOWN_IDS = 5  # device ids a reason names per kind of failure before "and N more"


class RolloutError(FleetError):
    """A rollout action is impossible in the current state, or a device view is inconsistent.

    ``current`` and ``requested`` name the states of a refused transition (else None).
    """

    user_error = True

    def __init__(
        self, message: str, *, current: str | None = None, requested: str | None = None
    ) -> None:
        super().__init__(message)
        self.current = current
        self.requested = requested


class Phase(StrEnum):
    """Where a device is in this rollout."""

    IDLE = "idle"  # not told to update yet
    PENDING = "pending"  # told to update at assigned_at, no report since
    UPDATING = "updating"  # reported downloading or staging the target
    BOOTED = "booted"  # running the target since booted_at, in its health window
    SUCCEEDED = "succeeded"  # stayed healthy through the health window
    ROLLED_BACK = "rolled_back"  # fell back to the previous release
    HEALTH_FAILED = "health_failed"  # reported failing health checks on the target
    TIMED_OUT = "timed_out"  # no terminal outcome within update_timeout (the engine decides)


_UNAVAILABLE = frozenset({Phase.PENDING, Phase.UPDATING, Phase.BOOTED})
_FAILED = (Phase.ROLLED_BACK, Phase.HEALTH_FAILED, Phase.TIMED_OUT)
_FAILED_WORDS = {
    Phase.ROLLED_BACK: "rolled back",
    Phase.HEALTH_FAILED: "failed health checks",
    Phase.TIMED_OUT: "timed out",
}


class Status(StrEnum):
    """The rollout's status."""

    RUNNING = "running"
    PAUSED = "paused"
    WAITING_APPROVAL = "waiting_approval"  # a batch passed; approve() starts the next one
    COMPLETED = "completed"
    ABORTED = "aborted"


class Cause(StrEnum):
    """Why a rollout is paused or aborted."""

    OPERATOR = "operator"
    FAILURES = "failures"  # over the failure threshold
    SUCCESS_GATE = "success_gate"  # a batch can no longer reach the success threshold


@dataclass(frozen=True, slots=True)
class DeviceView:
    """What the engine needs to know of one device; the caller builds these from its records.

    ``batch`` (the batch index that assigned it) is needed in every phase but ``idle``;
    ``assigned_at`` for ``pending``, ``updating`` and ``booted``; ``booted_at`` for ``booted``.
    Times are seconds since the epoch, like ``now`` in :func:`step`.
    """

    device_id: str
    labels: Mapping[str, str]
    online: bool
    last_seen: float
    current: str | None  # the release the device runs, as reported
    phase: Phase = Phase.IDLE
    batch: int | None = None
    assigned_at: float | None = None
    booted_at: float | None = None

    def __post_init__(self) -> None:
        phase = self.phase
        if phase is Phase.IDLE:
            return
        missing = []
        if self.batch is None or self.batch < 0:
            missing.append("batch")
        if phase in _UNAVAILABLE and self.assigned_at is None:
            missing.append("assigned_at")
        if phase is Phase.BOOTED and self.booted_at is None:
            missing.append("booted_at")
        if missing:
            raise RolloutError(
                f"device {self.device_id!r} in phase {phase.value} needs {', '.join(missing)}"
            )


@dataclass(frozen=True, slots=True)
class Counters:
    """The selected devices by where they are, after a step's decisions."""

    selected: int = 0  # matched by the selector
    up_to_date: int = 0  # ran the target without being told to (never assigned)
    waiting: int = 0  # idle and not on the target yet (online or not)
    assigned: int = 0  # told to update by this rollout, in any phase since
    unavailable: int = 0  # pending, updating or booted
    succeeded: int = 0
    rolled_back: int = 0
    health_failed: int = 0
    timed_out: int = 0

    @property
    def failed(self) -> int:
        """Devices that rolled back, failed health checks or timed out."""
        return self.rolled_back + self.health_failed + self.timed_out


@dataclass(frozen=True)
class RolloutState:
    """Where a rollout is; a new rollout starts as ``RolloutState()``.

    ``batch`` is the index into ``policy.batches`` (while ``waiting_approval``, of the batch that
    passed). ``reason`` says in words why the rollout is paused, aborted, waiting or idle.
    ``batch_started_at`` is None until the step that starts the batch; ``failures_accepted``
    and ``gate_waived`` are what :func:`resume` accepted.
    """

    status: Status = Status.RUNNING
    batch: int = 0
    reason: str = ""
    cause: Cause | None = None
    batch_started_at: float | None = None
    failures_accepted: int = 0
    gate_waived: bool = False
    counters: Counters = Counters()


@dataclass(frozen=True)
class StepResult:
    """One step's decisions: devices to tell to update, devices whose outcome the engine decided."""

    assign: tuple[str, ...]  # tell these to update now; record them pending in state.batch
    timed_out: tuple[str, ...]  # record these as timed out
    succeeded: tuple[str, ...]  # booted devices whose health window passed: record as succeeded
    state: RolloutState


# --- one step --------------------------------------------------------------------------------


class _Tally:
    """One pass over the devices, bucketed: what every later decision of a step reads."""

    def __init__(
        self,
        policy: RolloutPolicy,
        selector: Selector,
        target: str,
        devices: Sequence[DeviceView],
        now: float,
    ) -> None:
        last = len(policy.batches) - 1
        self.members = [0] * (last + 1)  # per batch: devices it assigned, still selected
        self.succeeded = [0] * (last + 1)
        self.unavailable = [0] * (last + 1)
        self.eligible: list[str] = []  # idle, online, selected, not on the target
        self.failures: list[tuple[str, Phase, int]] = []  # (device id, phase, batch)
        self.timed_out: list[str] = []  # decided at this step
        self.newly_succeeded: list[str] = []
        self.selected = self.up_to_date = self.waiting = 0
        seen: set[str] = set()
        window, timeout, matches = policy.health_window, policy.update_timeout, selector.matches
        for device in devices:
            device_id = device.device_id
            if device_id in seen:
                raise RolloutError(f"device {device_id!r} is listed twice")
            seen.add(device_id)
            if not matches(device.labels):
                continue
            self.selected += 1
            phase = device.phase
            if phase is Phase.IDLE:
                if device.current == target:
                    self.up_to_date += 1
                else:
                    self.waiting += 1
                    if device.online:
                        self.eligible.append(device_id)
                continue
            index = min(device.batch or 0, last)
            self.members[index] += 1
            if phase is Phase.BOOTED:
                window_ends = (device.booted_at or 0.0) + window
                if device.last_seen >= window_ends:
                    phase = Phase.SUCCEEDED
                    self.newly_succeeded.append(device_id)
                elif now >= window_ends + timeout:
                    phase = Phase.TIMED_OUT
                    self.timed_out.append(device_id)
            elif phase in _UNAVAILABLE and now >= (device.assigned_at or 0.0) + timeout:
                phase = Phase.TIMED_OUT
                self.timed_out.append(device_id)
            if phase is Phase.SUCCEEDED:
                self.succeeded[index] += 1
            elif phase in _UNAVAILABLE:
                self.unavailable[index] += 1
            else:
                self.failures.append((device_id, phase, index))

    def counters(self) -> Counters:
        kinds = dict.fromkeys(_FAILED, 0)
        for _, kind, _ in self.failures:
            kinds[kind] += 1
        return Counters(
            selected=self.selected,
            up_to_date=self.up_to_date,
            waiting=self.waiting,
            assigned=sum(self.members),
            unavailable=sum(self.unavailable),
            succeeded=sum(self.succeeded),
            rolled_back=kinds[Phase.ROLLED_BACK],
            health_failed=kinds[Phase.HEALTH_FAILED],
            timed_out=kinds[Phase.TIMED_OUT],
        )


def step(
    policy: RolloutPolicy,
    selector: Selector,
    target: str,
    devices: Sequence[DeviceView],
    state: RolloutState,
    now: float,
) -> StepResult:
    """Decide which devices to tell to update at ``now``, and the rollout's next state.

    ``devices`` is every device the fleet manager knows that might belong to the fleet (the
    selector decides); each device id once. See the module docstring for the rules.

    Raises:
        RolloutError: a device id is listed twice, or a device view lacks a field its phase needs.
    """
    tally = _Tally(policy, selector, target, devices, now)
    counters = tally.counters()
    timed_out, succeeded = tuple(tally.timed_out), tuple(tally.newly_succeeded)
    state = replace(state, counters=counters)

    def result(new: RolloutState, assign: tuple[str, ...] = ()) -> StepResult:
        return StepResult(assign, timed_out, succeeded, new)

    if state.status not in (Status.RUNNING, Status.COMPLETED):
        return result(state)

    failed, assigned = counters.failed, counters.assigned
    limit = _fraction(policy.failure_threshold)
    if failed > state.failures_accepted and failed * limit.denominator > limit.numerator * assigned:
        reason = _failure_reason(tally.failures, assigned, policy.failure_threshold)
        return result(replace(state, status=Status.PAUSED, cause=Cause.FAILURES, reason=reason))

    if state.status is Status.COMPLETED:
        state, room = replace(state, reason=_completed_reason(counters)), len(tally.eligible)
    else:
        state, room = _progress(policy, tally, counters, state, now)
        if state.status is not Status.RUNNING:
            return result(state)

    if policy.max_unavailable is not None:
        budget = policy.max_unavailable.of(counters.selected, round_up=False)
        room = min(room, budget - counters.unavailable)
    room = min(room, len(tally.eligible))
    if room <= 0:
        return result(state)
    window = policy.maintenance_window
    if window is not None and not window.is_open(now):
        return result(replace(state, reason=f"outside the maintenance window ({window})"))
    if room >= len(tally.eligible):
        assign = tuple(sorted(tally.eligible))
    else:
        assign = tuple(heapq.nsmallest(room, tally.eligible))
    counters = replace(
        counters,
        assigned=counters.assigned + len(assign),
        unavailable=counters.unavailable + len(assign),
        waiting=counters.waiting - len(assign),
    )
    return result(replace(state, counters=counters), assign)


def _progress(
    policy: RolloutPolicy,
    tally: _Tally,
    counters: Counters,
    state: RolloutState,
    now: float,
) -> tuple[RolloutState, int]:
    """Judge batches and start the next ones: the new state, and how many more the batch takes."""
    batches = policy.batches
    last = len(batches) - 1
    index = min(state.batch, last)
    started = now if state.batch_started_at is None else state.batch_started_at
    waived = state.gate_waived
    gate = _fraction(policy.success_threshold)
    eligible = len(tally.eligible)
    if counters.selected == 0:
        # Nothing to judge: an empty batch would pass trivially and the rollout complete, and
        # a completed rollout updates the devices that join later without any canary.
        here = replace(state, batch=index, batch_started_at=started, gate_waived=waived)
        return replace(here, reason="no device matches the fleet's selector yet"), 0
    while True:
        goal = batches[index].of(counters.selected)
        room = goal - counters.assigned
        full = room <= 0 or counters.waiting == 0
        stalled = eligible == 0 and now - started >= policy.update_timeout
        here = replace(state, batch=index, batch_started_at=started, gate_waived=waived, reason="")
        if not (full or stalled):
            return here, room
        members, ok, busy = tally.members[index], tally.succeeded[index], tally.unavailable[index]
        if members == 0 and not full and index < last:
            reason = f"batch {index + 1} of {last + 1}: waiting for a device to come online "
            reason += f"({_devices(counters.waiting)} offline)"
            return replace(here, reason=reason), 0
        needed = -(-gate.numerator * members // gate.denominator)  # ceil without floats
        if not (waived or ok >= needed):
            if ok + busy >= needed:
                return here, room  # outcomes still to come
            reason = _gate_reason(tally, index, last, needed, policy.success_threshold)
            return replace(here, status=Status.PAUSED, cause=Cause.SUCCESS_GATE, reason=reason), 0
        if index == last:
            if counters.unavailable:
                return here, room
            reason = _completed_reason(counters)
            return replace(here, status=Status.COMPLETED, cause=None, reason=reason), 0
        if policy.manual_approval:
            reason = f"batch {index + 1} of {last + 1} passed ({ok} of {members} succeeded): "
            reason += f"approve to start batch {index + 2}"
            return replace(here, status=Status.WAITING_APPROVAL, reason=reason), 0
        index, started, waived = index + 1, now, False


def _fraction(value: float) -> Fraction:
    return Fraction(value).limit_denominator(1_000_000)


def _devices(count: int) -> str:
    return f"{count} device" if count == 1 else f"{count} devices"


def _percent(value: float) -> str:
    return f"{value * 100:g}%"


def _ids(ids: list[str]) -> str:
    shown = heapq.nsmallest(_SHOWN_IDS, ids)
    more = len(ids) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")


def _failure_list(failures: list[tuple[str, Phase, int]]) -> str:
    parts = []
    for kind in _FAILED:
        ids = [device_id for device_id, phase, _ in failures if phase is kind]
        if ids:
            parts.append(f"{len(ids)} {_FAILED_WORDS[kind]}: {_ids(ids)}")
    return "; ".join(parts)


def _failure_reason(failures: list[tuple[str, Phase, int]], assigned: int, limit: float) -> str:
    return (
        f"{len(failures)} of {assigned} devices failed ({_failure_list(failures)}), "
        f"over the {_percent(limit)} failure threshold"
    )


def _gate_reason(tally: _Tally, index: int, last: int, needed: int, threshold: float) -> str:
    members, ok = tally.members[index], tally.succeeded[index]
    failures = [f for f in tally.failures if f[2] == index]
    return (
        f"batch {index + 1} of {last + 1} cannot reach the {_percent(threshold)} success "
        f"threshold: {ok} of {members} succeeded, {needed} needed "
        f"({_failure_list(failures) or 'no failures'})"
    )


def _completed_reason(counters: Counters) -> str:
    if counters.waiting:
        return f"{_devices(counters.waiting)} offline, not updated yet: told to once online"
    return ""


# --- actions ---------------------------------------------------------------------------------


def _refuse(state: RolloutState, requested: Status, verb: str, accepted: str) -> RolloutError:
    return RolloutError(
        f"cannot {verb} a rollout that is {state.status.value}: {accepted}",
        current=state.status.value,
        requested=requested.value,
    )


def pause(state: RolloutState, reason: str = "paused by the operator") -> RolloutState:
    """Stop telling devices to update (a running, waiting or completed rollout)."""
    if state.status in (Status.PAUSED, Status.ABORTED):
        accepted = "only a running, waiting or completed rollout pauses"
        raise _refuse(state, Status.PAUSED, "pause", accepted)
    return replace(state, status=Status.PAUSED, cause=Cause.OPERATOR, reason=reason)


def resume(state: RolloutState) -> RolloutState:
    """Run a paused rollout again, accepting the failures seen so far.

    A rollout its success gate paused moves on to the next batch at the next step; one the
    failure threshold paused pauses again at the next new failure while still over it.
    """
    if state.status is not Status.PAUSED:
        raise _refuse(state, Status.RUNNING, "resume", "only a paused rollout resumes")
    return replace(
        state,
        status=Status.RUNNING,
        cause=None,
        reason="",
        failures_accepted=state.counters.failed,
        gate_waived=state.cause is Cause.SUCCESS_GATE,
    )


def approve(state: RolloutState) -> RolloutState:
    """Start the next batch of a rollout waiting for approval."""
    if state.status is not Status.WAITING_APPROVAL:
        accepted = "only a rollout waiting for approval can be approved"
        raise _refuse(state, Status.RUNNING, "approve", accepted)
    return replace(
        state,
        status=Status.RUNNING,
        batch=state.batch + 1,
        batch_started_at=None,
        gate_waived=False,
        reason="",
    )


def abort(state: RolloutState, reason: str = "aborted by the operator") -> RolloutState:
    """End a rollout for good: it never tells another device to update."""
    if state.status is Status.ABORTED:
        raise _refuse(state, Status.ABORTED, "abort", "it ended already")
    return replace(state, status=Status.ABORTED, cause=Cause.OPERATOR, reason=reason)
