"""rollout: each rule of the engine as an example, and its invariants over a simulated fleet."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afield.errors import AfieldError
from afield.fleet import (
    Amount,
    Cause,
    Cron,
    DeviceView,
    MaintenanceWindow,
    Phase,
    RolloutError,
    RolloutPolicy,
    RolloutPolicyError,
    RolloutState,
    Selector,
    SelectorError,
    Status,
    StepResult,
    abort,
    approve,
    pause,
    resume,
    step,
)
from afield.fleet.policy import MAX_DURATION

TARGET = "new"
OLD = "old"
T0 = 1_700_000_000.0
UNAVAILABLE = {Phase.PENDING, Phase.UPDATING, Phase.BOOTED}
FAILED = {Phase.ROLLED_BACK, Phase.HEALTH_FAILED, Phase.TIMED_OUT}
ALL = Amount.parse("100%")


def utc(year: int, month: int, day: int, hour: int, minute: int, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


# --- a fleet as the fleet manager records it ------------------------------------------------


@dataclass
class Fleet:
    """Device records plus a rollout, updated the way the fleet manager would after each step."""

    policy: RolloutPolicy
    selector: Selector = field(default_factory=lambda: Selector.parse("fleet=a"))
    devices: dict[str, DeviceView] = field(default_factory=dict)
    state: RolloutState = field(default_factory=RolloutState)
    now: float = T0
    assigned_ever: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, count: int, policy: RolloutPolicy) -> Fleet:
        fleet = cls(policy)
        for i in range(count):
            fleet.add(f"d{i:03d}")
        return fleet

    def add(
        self, device_id: str, *, online: bool = True, current: str = OLD, **labels: str
    ) -> None:
        self.devices[device_id] = DeviceView(
            device_id, {"fleet": "a", **labels}, online, self.now, current
        )

    def set(self, device_id: str, **changes: object) -> None:
        self.devices[device_id] = dataclasses.replace(self.devices[device_id], **changes)  # type: ignore[arg-type]

    def step(self) -> StepResult:
        result = step(
            self.policy, self.selector, TARGET, list(self.devices.values()), self.state, self.now
        )
        for device_id in result.timed_out:
            self.set(device_id, phase=Phase.TIMED_OUT)
        for device_id in result.succeeded:
            self.set(device_id, phase=Phase.SUCCEEDED)
        for device_id in result.assign:
            assert device_id not in self.assigned_ever
            self.assigned_ever.add(device_id)
            self.set(device_id, phase=Phase.PENDING, batch=result.state.batch, assigned_at=self.now)
        self.state = result.state
        return result

    def boot(self, ids: Iterable[str]) -> None:
        for device_id in ids:
            self.set(
                device_id,
                phase=Phase.BOOTED,
                booted_at=self.now,
                last_seen=self.now,
                current=TARGET,
            )

    def check_in(self, ids: Iterable[str]) -> None:
        for device_id in ids:
            self.set(device_id, last_seen=self.now)

    def in_phase(self, *phases: Phase) -> list[str]:
        return sorted(d.device_id for d in self.devices.values() if d.phase in phases)

    def succeed_all(self) -> StepResult:
        """Every pending device boots, stays healthy through the window and checks in."""
        self.boot(self.in_phase(Phase.PENDING, Phase.UPDATING))
        self.now += self.policy.health_window
        self.check_in(self.in_phase(Phase.BOOTED))
        return self.step()


CANARY = RolloutPolicy.parse(
    {"batches": [1, "10%", "50%", "100%"], "health_window": "10m", "update_timeout": "1h"}
)


# --- batches ----------------------------------------------------------------------------------


def test_canary_over_200_devices_advances_batch_by_batch_as_devices_succeed() -> None:
    fleet = Fleet.of(200, CANARY)
    first = fleet.step()
    assert first.assign == ("d000",) and fleet.state.batch == 0
    totals = []
    for _ in range(4):
        fleet.succeed_all()
        totals.append((fleet.state.batch, len(fleet.assigned_ever)))
    assert totals == [(1, 20), (2, 100), (3, 200), (3, 200)]
    assert fleet.state.status is Status.COMPLETED
    assert fleet.state.counters.succeeded == 200


def test_next_batch_waits_until_the_health_window_has_passed() -> None:
    fleet = Fleet.of(200, CANARY)
    fleet.step()
    fleet.boot(["d000"])
    fleet.now += 599
    fleet.check_in(["d000"])
    assert fleet.step().assign == ()  # booted, but 1 s short of its health window
    fleet.now += 1
    fleet.check_in(["d000"])
    result = fleet.step()
    assert result.succeeded == ("d000",) and len(result.assign) == 19
    assert fleet.state.batch == 1


def test_batch_starts_the_next_one_once_the_threshold_is_met_while_others_still_finish() -> None:
    # hawkBit's cascading groups: 90% of batch 2 succeeded, the next batch need not wait.
    policy = dataclasses.replace(CANARY, health_window=0.0)
    fleet = Fleet.of(200, policy)
    fleet.step()
    fleet.succeed_all()  # canary
    batch = fleet.in_phase(Phase.PENDING)
    assert len(batch) == 19
    fleet.boot(batch[:18])  # ceil(0.9 * 19) = 18 succeed, one still updating
    result = fleet.step()
    assert fleet.state.batch == 2 and len(result.assign) == 80
    assert fleet.state.counters.unavailable == 81


def test_percentages_round_up_and_counts_cap_at_the_fleet() -> None:
    assert Amount.parse("10%").of(15) == 2
    assert Amount.parse("1%").of(3) == 1
    assert Amount.parse("12.5%").of(200) == 25
    assert Amount.parse(50).of(20) == 20
    assert Amount.parse("10%").of(0) == 0
    assert Amount.parse("10%").of(15, round_up=False) == 1
    assert Amount.parse("1%").of(15, round_up=False) == 1


def test_device_already_on_the_target_counts_without_being_assigned() -> None:
    fleet = Fleet.of(3, dataclasses.replace(CANARY, batches=(Amount.parse("100%"),)))
    fleet.set("d001", current=TARGET)
    result = fleet.step()
    assert result.assign == ("d000", "d002")
    assert fleet.state.counters.up_to_date == 1
    fleet.succeed_all()
    assert fleet.state.status is Status.COMPLETED


# --- selection --------------------------------------------------------------------------------


def test_device_outside_the_selector_is_never_assigned() -> None:
    fleet = Fleet.of(4, dataclasses.replace(CANARY, batches=(Amount.parse("100%"),)))
    fleet.selector = Selector.parse("fleet=a,tier!=lab")
    fleet.set("d002", labels={"fleet": "a", "tier": "lab"})
    fleet.add("x", fleet="b")
    assert fleet.step().assign == ("d000", "d001", "d003")
    assert fleet.state.counters.selected == 3


def test_device_leaving_the_selector_mid_rollout_is_no_longer_counted() -> None:
    fleet = Fleet.of(10, dataclasses.replace(CANARY, batches=(Amount.parse("100%"),)))
    fleet.step()
    fleet.set("d003", labels={"fleet": "b"}, phase=Phase.ROLLED_BACK)
    fleet.step()
    assert fleet.state.status is Status.RUNNING
    assert fleet.state.counters.selected == 9 and fleet.state.counters.failed == 0


def test_device_joining_mid_rollout_is_assigned_in_the_current_batch() -> None:
    fleet = Fleet.of(20, CANARY)
    fleet.step()
    fleet.succeed_all()  # canary passed; batch 2 (10% of 20 = 2 in all) takes 1 more
    assert fleet.state.batch == 1 and len(fleet.assigned_ever) == 2
    for i in range(20):
        fleet.add(f"j{i:02d}")  # 40 devices now: 10% is 4 in all
    assert fleet.step().assign == ("d002", "d003")
    fleet.succeed_all()
    fleet.succeed_all()
    fleet.succeed_all()
    assert fleet.state.status is Status.COMPLETED and len(fleet.assigned_ever) == 40


def test_a_rollout_of_an_empty_fleet_waits_and_canaries_the_first_devices_that_join() -> None:
    # Completing empty would make the rollout update every device that joins, canary-less.
    fleet = Fleet.of(0, CANARY)
    for _ in range(3):
        assert fleet.step().assign == ()
        fleet.now += CANARY.update_timeout
    assert fleet.state.status is Status.RUNNING
    assert "no device matches" in fleet.state.reason
    for i in range(10):
        fleet.add(f"d{i:03d}")
    assert fleet.step().assign == ("d000",)  # the canary, alone
    assert fleet.state.batch == 0


def test_offline_device_is_not_assigned() -> None:
    fleet = Fleet.of(3, CANARY)
    fleet.set("d000", online=False)
    assert fleet.step().assign == ("d001",)


# --- budget -----------------------------------------------------------------------------------


def test_disruption_budget_caps_devices_updating_at_once() -> None:
    policy = dataclasses.replace(
        CANARY, batches=(Amount.parse("100%"),), max_unavailable=Amount.parse("5%")
    )
    fleet = Fleet.of(100, policy)
    assert len(fleet.step().assign) == 5
    assert fleet.step().assign == ()  # still five updating
    fleet.boot(fleet.in_phase(Phase.PENDING)[:2])
    fleet.now += policy.health_window
    fleet.check_in(fleet.in_phase(Phase.BOOTED))
    assert len(fleet.step().assign) == 2


# --- failures ---------------------------------------------------------------------------------


def test_rollbacks_over_the_failure_threshold_pause_naming_devices() -> None:
    policy = dataclasses.replace(CANARY, batches=(Amount.parse(20), Amount.parse("100%")))
    fleet = Fleet.of(40, policy)
    fleet.step()
    fleet.set("d007", phase=Phase.ROLLED_BACK)
    fleet.set("d009", phase=Phase.ROLLED_BACK)
    assert fleet.step().state.status is Status.RUNNING  # 2 of 20 is not over 10%
    fleet.now += policy.update_timeout
    fleet.boot([d for d in fleet.in_phase(Phase.PENDING) if d != "d012"])
    result = fleet.step()
    assert result.timed_out == ("d012",) and result.assign == ()
    assert fleet.state.status is Status.PAUSED and fleet.state.cause is Cause.FAILURES
    assert fleet.state.reason == (
        "3 of 20 devices failed (2 rolled back: d007, d009; 1 timed out: d012), "
        "over the 10% failure threshold"
    )


def test_failed_canary_pauses_the_rollout() -> None:
    fleet = Fleet.of(50, CANARY)
    fleet.step()
    fleet.set("d000", phase=Phase.HEALTH_FAILED)
    assert fleet.step().assign == ()
    assert fleet.state.reason == (
        "1 of 1 devices failed (1 failed health checks: d000), over the 10% failure threshold"
    )


def test_paused_rollout_assigns_nothing_and_resume_accepts_the_failures_seen() -> None:
    policy = dataclasses.replace(CANARY, batches=(Amount.parse(4), ALL), success_threshold=0.5)
    fleet = Fleet.of(40, policy)
    fleet.step()
    fleet.set("d000", phase=Phase.ROLLED_BACK)
    fleet.step()
    assert fleet.state.status is Status.PAUSED
    assert fleet.step().assign == ()
    fleet.state = resume(fleet.state)
    assert fleet.step().state.status is Status.RUNNING  # 1 of 4 still over 10%, but accepted
    fleet.set("d001", phase=Phase.ROLLED_BACK)
    fleet.step()
    assert fleet.state.status is Status.PAUSED and "d001" in fleet.state.reason


def test_offline_device_times_out_and_counts_as_a_failure() -> None:
    fleet = Fleet.of(50, dataclasses.replace(CANARY, failure_threshold=1.0))
    fleet.step()
    fleet.set("d000", online=False)
    fleet.now += CANARY.update_timeout - 1
    assert fleet.step().timed_out == ()
    fleet.now += 1
    result = fleet.step()
    assert result.timed_out == ("d000",)
    assert fleet.state.counters.timed_out == 1
    # the canary batch can no longer reach its threshold: the success gate pauses
    assert fleet.state.status is Status.PAUSED and fleet.state.cause is Cause.SUCCESS_GATE


def test_booted_device_that_never_checks_in_after_its_window_times_out() -> None:
    fleet = Fleet.of(5, CANARY)
    fleet.step()
    fleet.boot(["d000"])
    fleet.set("d000", online=False)
    fleet.now += CANARY.health_window + CANARY.update_timeout - 1
    assert fleet.step().timed_out == ()
    fleet.now += 1
    assert fleet.step().timed_out == ("d000",)


def test_success_gate_pauses_when_the_batch_cannot_reach_it_and_resume_moves_on() -> None:
    policy = dataclasses.replace(
        CANARY, batches=(Amount.parse(10), Amount.parse("100%")), failure_threshold=1.0
    )
    fleet = Fleet.of(40, policy)
    fleet.step()
    fleet.set("d000", phase=Phase.ROLLED_BACK)
    fleet.set("d001", phase=Phase.ROLLED_BACK)
    fleet.step()  # 8 of 10 can still succeed, 9 are needed
    assert fleet.state.status is Status.PAUSED and fleet.state.cause is Cause.SUCCESS_GATE
    assert fleet.state.reason == (
        "batch 1 of 2 cannot reach the 90% success threshold: 0 of 10 succeeded, 9 needed "
        "(2 rolled back: d000, d001)"
    )
    fleet.state = resume(fleet.state)
    assert len(fleet.step().assign) == 30 and fleet.state.batch == 1


# --- offline devices and stalled batches --------------------------------------------------


def test_batch_short_of_online_devices_is_judged_after_the_update_timeout() -> None:
    fleet = Fleet.of(20, dataclasses.replace(CANARY, batches=(Amount.parse(10), ALL)))
    for i in range(12):
        fleet.set(f"d{i:03d}", online=False)
    assert len(fleet.step().assign) == 8
    fleet.succeed_all()
    assert fleet.state.batch == 0  # 8 of 10: waits for offline devices to come online
    fleet.now = T0 + CANARY.update_timeout
    fleet.step()
    assert fleet.state.batch == 1  # judged on its 8 members


def test_canary_waits_when_no_device_is_online() -> None:
    fleet = Fleet.of(10, CANARY)
    for device_id in list(fleet.devices):
        fleet.set(device_id, online=False)
    fleet.step()
    fleet.now += 10 * CANARY.update_timeout
    assert fleet.step().assign == ()
    assert fleet.state.batch == 0
    assert (
        fleet.state.reason
        == "batch 1 of 4: waiting for a device to come online (10 devices offline)"
    )
    fleet.set("d004", online=True)
    assert fleet.step().assign == ("d004",)


def test_completed_rollout_updates_devices_that_come_online_later() -> None:
    fleet = Fleet.of(5, dataclasses.replace(CANARY, batches=(ALL,)))
    fleet.set("d004", online=False)
    fleet.step()
    fleet.succeed_all()
    fleet.now += CANARY.update_timeout
    fleet.step()
    assert fleet.state.status is Status.COMPLETED
    assert fleet.state.reason == "1 device offline, not updated yet: told to once online"
    fleet.set("d004", online=True)
    assert fleet.step().assign == ("d004",)
    fleet.add("late")
    assert fleet.step().assign == ("late",)
    assert fleet.state.status is Status.COMPLETED


# --- approval and actions -----------------------------------------------------------------


def test_manual_approval_waits_between_batches() -> None:
    fleet = Fleet.of(100, dataclasses.replace(CANARY, manual_approval=True))
    fleet.step()
    result = fleet.succeed_all()
    assert result.assign == () and fleet.state.status is Status.WAITING_APPROVAL
    assert fleet.state.reason == "batch 1 of 4 passed (1 of 1 succeeded): approve to start batch 2"
    assert fleet.step().assign == ()
    fleet.state = approve(fleet.state)
    assert len(fleet.step().assign) == 9 and fleet.state.batch == 1


def test_resuming_a_running_rollout_is_refused_naming_both_states() -> None:
    with pytest.raises(RolloutError) as caught:
        resume(RolloutState())
    assert caught.value.current == "running" and caught.value.requested == "running"
    assert str(caught.value) == (
        "cannot resume a rollout that is running: only a paused rollout resumes"
    )
    assert caught.value.user_error


@pytest.mark.parametrize(
    ("action", "status"),
    [
        (approve, Status.RUNNING),
        (pause, Status.PAUSED),
        (pause, Status.ABORTED),
        (abort, Status.ABORTED),
        (resume, Status.COMPLETED),
    ],
)
def test_impossible_transitions_are_refused(action: object, status: Status) -> None:
    with pytest.raises(RolloutError, match=f"that is {status.value}"):
        action(RolloutState(status=status))  # type: ignore[operator]


def test_aborted_rollout_assigns_nothing_but_still_reports_timeouts() -> None:
    fleet = Fleet.of(10, CANARY)
    fleet.step()
    fleet.state = abort(fleet.state, "wrong release")
    fleet.now += CANARY.update_timeout
    result = fleet.step()
    assert result.assign == () and result.timed_out == ("d000",)
    assert fleet.state.status is Status.ABORTED and fleet.state.reason == "wrong release"


def test_device_listed_twice_is_refused() -> None:
    device = DeviceView("d1", {"fleet": "a"}, True, T0, OLD)
    with pytest.raises(RolloutError, match="'d1' is listed twice"):
        step(CANARY, Selector(), TARGET, [device, device], RolloutState(), T0)


def test_device_view_missing_a_field_its_phase_needs_is_refused() -> None:
    with pytest.raises(RolloutError, match="phase booted needs batch, assigned_at, booted_at"):
        DeviceView("d1", {}, True, T0, OLD, Phase.BOOTED)


# --- maintenance windows ----------------------------------------------------------------------

BERLIN_2AM = MaintenanceWindow.parse(
    {"cron": "0 2 * * *", "duration": "2h", "timezone": "Europe/Berlin"}
)


def test_closed_maintenance_window_assigns_nothing() -> None:
    fleet = Fleet.of(10, dataclasses.replace(CANARY, maintenance_window=BERLIN_2AM))
    fleet.now = utc(2025, 1, 15, 0, 59)  # 01:59 in Berlin (CET)
    result = fleet.step()
    assert result.assign == () and fleet.state.status is Status.RUNNING
    assert fleet.state.reason == (
        'outside the maintenance window ("0 2 * * *" for 2h in Europe/Berlin)'
    )
    fleet.now = utc(2025, 1, 15, 1, 0)
    assert fleet.step().assign == ("d000",) and fleet.state.reason == ""


def test_devices_already_updating_go_on_outside_the_maintenance_window() -> None:
    fleet = Fleet.of(40, dataclasses.replace(CANARY, maintenance_window=BERLIN_2AM))
    fleet.now = utc(2025, 1, 15, 2, 50)  # 03:50 in Berlin: the canary is told to update
    fleet.step()
    fleet.boot(["d000"])
    fleet.now = utc(2025, 1, 15, 3, 0) + CANARY.health_window  # 04:10, closed
    fleet.check_in(["d000"])
    result = fleet.step()
    assert result.succeeded == ("d000",) and result.assign == ()
    assert fleet.state.batch == 1 and fleet.state.reason.startswith("outside the maintenance")


@pytest.mark.parametrize(
    ("moment", "is_open"),
    [
        # winter: 02:00-04:00 CET is 01:00-03:00 UTC
        (utc(2025, 1, 15, 0, 59), False),
        (utc(2025, 1, 15, 1, 0), True),
        (utc(2025, 1, 15, 2, 59, 59), True),
        (utc(2025, 1, 15, 3, 0), False),
        # summer: 02:00-04:00 CEST is 00:00-02:00 UTC
        (utc(2025, 7, 15, 0, 0), True),
        (utc(2025, 7, 15, 1, 59), True),
        (utc(2025, 7, 15, 2, 0), False),
        # spring forward (30 March): 02:00 is skipped, the window opens at 03:00 CEST (01:00 UTC)
        (utc(2025, 3, 30, 0, 59), False),
        (utc(2025, 3, 30, 1, 0), True),
        (utc(2025, 3, 30, 2, 59), True),
        (utc(2025, 3, 30, 3, 0), False),
        # fall back (26 October): 02:00 CEST (00:00 UTC) opens it; 02:00 CET does not again
        (utc(2025, 10, 25, 23, 59), False),
        (utc(2025, 10, 26, 0, 0), True),
        (utc(2025, 10, 26, 1, 30), True),
        (utc(2025, 10, 26, 2, 0), False),
        (utc(2025, 10, 26, 2, 30), False),
    ],
)
def test_maintenance_window_follows_berlin_wall_time_across_dst(
    moment: float, is_open: bool
) -> None:
    assert BERLIN_2AM.is_open(moment) is is_open


def test_cron_fields_take_ranges_lists_and_steps() -> None:
    cron = Cron.parse("*/15 8-17/3 * * 1-5")
    assert cron.minutes == {0, 15, 30, 45} and cron.hours == {8, 11, 14, 17}
    assert cron.weekdays == {1, 2, 3, 4, 5}
    assert Cron.parse("0 0 * * 7").weekdays == {0}
    # both day fields restricted: either matches (Vixie cron)
    either = Cron.parse("0 0 1 * 1")
    assert either.matches(datetime(2025, 1, 6))  # a Monday, not the 1st
    assert either.matches(datetime(2025, 1, 1))  # the 1st, a Wednesday
    assert not either.matches(datetime(2025, 1, 7))
    assert Cron.parse("0 0 1 * *").matches(datetime(2025, 1, 1))


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("0 25 * * *", 'hour "25" is out of range 0-23'),
        ("0 2 * *", "has 4 fields: expected 5"),
        ("0 2 * * MON", 'day of week "MON" is not *, a number'),
        ("5/10 * * * *", 'minute "5/10": a step needs * or a range'),
        ("*/0 * * * *", 'minute "*/0": the step after / must be 1 or more'),
        ("0 9-5 * * *", 'hour "9-5" is a range that runs backwards'),
    ],
)
def test_bad_cron_is_refused_naming_the_cron_field(cron: str, message: str) -> None:
    with pytest.raises(RolloutPolicyError) as caught:
        RolloutPolicy.parse(
            {"maintenance_window": {"cron": cron, "duration": "1h", "timezone": "UTC"}}
        )
    assert caught.value.field == "maintenance_window.cron"
    assert message in str(caught.value)


# --- policy parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"batches": [1, "10%", "150%"]}, 'batches[2]: "150%" is over 100%'),
        ({"batches": [1, 0]}, "batches[1]: 0 is not a device count"),
        ({"batches": [1.5]}, "batches[0]: 1.5 is not a device count"),
        ({"batches": ["0%"]}, 'batches[0]: "0%" is not a share of the fleet'),
        ({"batches": []}, "batches: [] is not a list of batch sizes"),
        ({"batches": None}, "batches: None is not a list of batch sizes"),
        ({"batches": ["50%", "10%"]}, 'batches[1]: "10%" is smaller than batches[0] "50%"'),
        ({"success_threshold": 1.5}, "success_threshold: 1.5 is outside 0..1"),
        ({"success_threshold": 0}, "success_threshold: 0.0 must be above 0, at most 1"),
        ({"failure_threshold": "ten"}, 'failure_threshold: "ten" is not a fraction'),
        ({"health_window": "5 minutes"}, 'health_window: "5 minutes" is not a duration'),
        # Found by fuzzing: a duration too long to be written back in a form parsing accepts.
        ({"health_window": 8.64e13}, "health_window: 86400000000000.0 is longer than 3650 days"),
        ({"update_timeout": "3651d"}, 'update_timeout: "3651d" is longer than 3650 days'),
        ({"update_timeout": 0}, "update_timeout: 0.0 must be above 0 seconds"),
        ({"max_unavailable": "-1"}, 'max_unavailable: "-1" is not a device count'),
        ({"manual_approval": "yes"}, 'manual_approval: "yes" is not true or false'),
        ({"batch": [1]}, "batch: unknown field: accepted are batches, success_threshold"),
        (
            {"maintenance_window": {"cron": "0 2 * * *", "duration": "2h"}},
            "maintenance_window.timezone: is required",
        ),
        (
            {"maintenance_window": {"cron": "0 2 * * *", "duration": "8d", "timezone": "UTC"}},
            "maintenance_window.duration: 8d must be above 0 and at most 7d",
        ),
        (
            {"maintenance_window": {"cron": "0 2 * * *", "duration": "1h", "timezone": "Mars/X"}},
            'maintenance_window.timezone: "Mars/X" is not an IANA time zone name',
        ),
    ],
)
def test_bad_policy_is_refused_naming_the_field(raw: dict[str, object], expected: str) -> None:
    with pytest.raises(RolloutPolicyError) as caught:
        RolloutPolicy.parse(raw)
    assert expected in str(caught.value)
    assert caught.value.user_error and isinstance(caught.value, AfieldError)


def test_every_policy_problem_is_reported_at_once() -> None:
    with pytest.raises(RolloutPolicyError) as caught:
        RolloutPolicy.parse({"batches": ["150%", "x"], "failure_threshold": 2, "colour": "red"})
    assert [p.location for p in caught.value.problems] == [
        "batches[0]",
        "batches[1]",
        "failure_threshold",
        "colour",
    ]
    assert str(caught.value).startswith("rollout policy: 4 problems\n  batches[0]: ")


def test_policy_built_in_code_is_checked_too() -> None:
    with pytest.raises(RolloutPolicyError) as caught:
        RolloutPolicy(success_threshold=2.0, update_timeout=-1.0)
    assert [p.location for p in caught.value.problems] == ["success_threshold", "update_timeout"]


def test_the_longest_durations_are_stored_in_a_form_that_parses_back() -> None:
    longest = {"health_window": MAX_DURATION, "update_timeout": float(MAX_DURATION) - 0.5}
    shown = RolloutPolicy.parse(longest).to_json()
    assert shown["health_window"] == "3650d"
    assert RolloutPolicy.parse(shown).to_json() == shown


def test_policy_defaults_and_implicit_last_batch() -> None:
    policy = RolloutPolicy.parse({"batches": [1, "10%"], "health_window": "1h30m"})
    assert [str(b) for b in policy.batches] == ["1", "10%", "100%"]
    assert policy.health_window == 5400.0 and policy.update_timeout == 3600.0
    assert (policy.success_threshold, policy.failure_threshold) == (0.9, 0.1)
    assert policy.max_unavailable is None and not policy.manual_approval
    assert RolloutPolicy.parse({"success_threshold": "95%"}).success_threshold == 0.95


amounts = st.one_of(
    st.integers(1, 10_000).map(lambda n: Amount(Fraction(n))),
    st.decimals(min_value="0.1", max_value=100, places=1).map(
        lambda d: Amount(Fraction(str(d)), percent=True)
    ),
)
windows = st.builds(
    lambda minute, hour, seconds, zone: MaintenanceWindow(
        Cron.parse(f"{minute} {hour} * * *"), seconds, zone
    ),
    st.integers(0, 59),
    st.sampled_from(["*", "2", "1-5", "*/6", "0,12"]),
    st.integers(1, 7 * 24 * 3600).map(float) | st.floats(0.5, 7 * 24 * 3600),
    st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"]),
)
policies = st.builds(
    RolloutPolicy,
    batches=st.lists(amounts, min_size=1, max_size=5).map(
        lambda b: tuple(sorted(b, key=lambda a: (a.percent, a.value)))
    ),
    success_threshold=st.sampled_from([0.5, 0.9, 0.95, 1.0]),
    failure_threshold=st.sampled_from([0.0, 0.1, 0.25, 1.0]),
    health_window=st.integers(0, 10**6).map(float) | st.floats(0, 1e6),
    update_timeout=st.integers(1, 10**6).map(float) | st.floats(0.5, 1e6),
    max_unavailable=st.none() | amounts,
    manual_approval=st.booleans(),
    maintenance_window=st.none() | windows,
)


@settings(max_examples=200, deadline=None)
@given(policies)
def test_policy_round_trips_through_its_table_form(policy: RolloutPolicy) -> None:
    assert RolloutPolicy.parse(policy.to_json()) == policy


# --- selectors --------------------------------------------------------------------------------


def test_selector_parses_equality_inequality_and_existence() -> None:
    selector = Selector.parse(" site=berlin , tier!=lab,gpu,!legacy ")
    assert str(selector) == "site=berlin,tier!=lab,gpu,!legacy"
    assert selector.matches({"site": "berlin", "gpu": "1"})
    assert selector.matches({"site": "berlin", "gpu": "", "tier": "prod"})
    assert not selector.matches({"site": "berlin", "gpu": "1", "tier": "lab"})
    assert not selector.matches({"site": "berlin"})
    assert not selector.matches({"site": "berlin", "gpu": "1", "legacy": "yes"})
    assert not selector.matches({"site": "paris", "gpu": "1"})
    assert Selector.parse({"site": "berlin", "tier": "canary"}) == Selector.parse(
        "site=berlin,tier==canary"
    )
    assert Selector.parse("").matches({}) and Selector().matches({"any": "thing"})


@pytest.mark.parametrize(
    ("text", "part", "message"),
    [
        ("site=berlin,,tier=a", "", 'part 2 "" is empty'),
        ("site=berlin,=x", "=x", 'part 2 "=x" has no label key'),
        ("site=ber lin", "site=ber lin", 'label value "ber lin" must be letters'),
        ("-site=x", "-site=x", 'label key "-site" must be letters'),
        ("!site=x", "!site=x", 'label key "!site" must be letters'),
    ],
)
def test_bad_selector_is_refused_naming_the_part(text: str, part: str, message: str) -> None:
    with pytest.raises(SelectorError) as caught:
        Selector.parse(text)
    assert caught.value.part == part and message in str(caught.value)
    assert caught.value.user_error


# --- scale ------------------------------------------------------------------------------------


def test_one_step_reads_each_of_100000_devices_once() -> None:
    # Linear by construction: the selector is asked about each device exactly once.
    asked: list[int] = [0]

    @dataclass(frozen=True)
    class Counting(Selector):
        def matches(self, labels: Mapping[str, str]) -> bool:
            asked[0] += 1
            return super().matches(labels)

    labels = [{"fleet": "a"}, {"fleet": "b"}]
    devices = [
        DeviceView(f"dev-{i:06d}", labels[i % 10 == 0], i % 7 != 0, T0, OLD) for i in range(100_000)
    ]
    policy = dataclasses.replace(CANARY, max_unavailable=Amount.parse("5%"))
    result = step(policy, Counting.parse("fleet=a"), TARGET, devices, RolloutState(), T0)
    assert asked[0] == 100_000
    assert result.assign == ("dev-000001",)
    assert result.state.counters.selected == 90_000


# --- the simulated fleet: properties ----------------------------------------------------------

OUTCOMES = ["succeed", "rollback", "health_fail", "silent", "vanish_after_boot"]


@dataclass
class Sim:
    """A fleet whose devices behave randomly; the operator approves, pauses and resumes."""

    fleet: Fleet
    rng: random.Random
    weights: list[float]
    churn: float  # chance per step of a join, a leave, an online flip
    fate: dict[str, tuple[str, float]] = field(default_factory=dict)  # outcome, reply delay
    stuck: bool = False  # the operator never resumes

    def devices_act(self) -> None:
        fleet, rng = self.fleet, self.rng
        for device_id, device in list(fleet.devices.items()):
            if not device.online:
                continue
            outcome, delay = self.fate.get(device_id, ("succeed", 0.0))
            if device.phase in (Phase.PENDING, Phase.UPDATING):
                assert device.assigned_at is not None
                if fleet.now < device.assigned_at + delay or outcome == "silent":
                    continue
                if outcome == "rollback":
                    fleet.set(device_id, phase=Phase.ROLLED_BACK, last_seen=fleet.now)
                elif outcome == "health_fail":
                    fleet.set(device_id, phase=Phase.HEALTH_FAILED, last_seen=fleet.now)
                else:
                    fleet.boot([device_id])
            elif device.phase is Phase.BOOTED:
                if outcome == "vanish_after_boot":
                    fleet.set(device_id, online=False)
                else:
                    fleet.check_in([device_id])
            elif rng.random() < 0.5:
                fleet.check_in([device_id])

    def churn_fleet(self) -> None:
        fleet, rng = self.fleet, self.rng
        if rng.random() < self.churn:
            fleet.add(f"j{len(fleet.devices):04d}", online=rng.random() < 0.8)
        if rng.random() < self.churn and fleet.devices:
            device_id = rng.choice(sorted(fleet.devices))
            labels = fleet.devices[device_id].labels
            fleet.set(device_id, labels={"fleet": "b" if labels["fleet"] == "a" else "a"})
        if rng.random() < self.churn and fleet.devices:
            device_id = rng.choice(sorted(fleet.devices))
            fleet.set(device_id, online=not fleet.devices[device_id].online)

    def operator(self) -> None:
        fleet = self.fleet
        if fleet.state.status is Status.WAITING_APPROVAL and self.rng.random() < 0.7:
            fleet.state = approve(fleet.state)
        elif fleet.state.status is Status.PAUSED and not self.stuck and self.rng.random() < 0.2:
            fleet.state = resume(fleet.state)
        elif fleet.state.status is Status.RUNNING and not self.stuck and self.rng.random() < 0.02:
            fleet.state = pause(fleet.state)

    def tick(self) -> StepResult:
        self.fleet.now += self.rng.uniform(5, 60)
        self.devices_act()
        before = self.fleet.state
        devices = dict(self.fleet.devices)
        result = self.fleet.step()
        for device_id in result.assign:
            delay = self.rng.uniform(0, 120)
            self.fate[device_id] = (self.rng.choices(OUTCOMES, self.weights)[0], delay)
        check_invariants(self.fleet, before, devices, result)
        self.operator()
        return result


def check_invariants(
    fleet: Fleet, before: RolloutState, devices: dict[str, DeviceView], result: StepResult
) -> None:
    """Every rule of the engine, checked from the outside on one step."""
    policy, now, after = fleet.policy, fleet.now, result.state
    selected = {i: d for i, d in devices.items() if fleet.selector.matches(d.labels)}
    # phases after the engine's own decisions, before its new assignments
    phase = {i: d.phase for i, d in selected.items()}
    for device_id in result.timed_out:
        assert phase[device_id] in UNAVAILABLE
        phase[device_id] = Phase.TIMED_OUT
    for device_id in result.succeeded:
        assert phase[device_id] is Phase.BOOTED
        phase[device_id] = Phase.SUCCEEDED
    for device_id, device in selected.items():  # every timeout due is reported
        if device.phase in (Phase.PENDING, Phase.UPDATING):
            assert device.assigned_at is not None
            due = now >= device.assigned_at + policy.update_timeout
            assert due == (device_id in result.timed_out)

    # assignments: selected, idle, online, behind; never twice; only while running
    for device_id in result.assign:
        device = selected[device_id]
        assert device.phase is Phase.IDLE and device.online and device.current != TARGET
    assert len(set(result.assign)) == len(result.assign)
    if result.assign:
        assert before.status in (Status.RUNNING, Status.COMPLETED)
        assert after.status in (Status.RUNNING, Status.COMPLETED)
        window = policy.maintenance_window
        assert window is None or window.is_open(now)
        unavailable = sum(p in UNAVAILABLE for p in phase.values()) + len(result.assign)
        if policy.max_unavailable is not None:
            assert unavailable <= policy.max_unavailable.of(len(selected), round_up=False)
        assigned = sum(p is not Phase.IDLE for p in phase.values()) + len(result.assign)
        if after.status is Status.RUNNING:
            assert assigned <= policy.batches[after.batch].of(len(selected))
        assert after.counters.unavailable == unavailable

    # batches only move forward, and only past batches that reached the success threshold
    assert after.batch >= before.batch
    passed_until = after.batch + (after.status is Status.WAITING_APPROVAL)
    gate = Fraction(policy.success_threshold).limit_denominator(1_000_000)
    for index in range(before.batch, passed_until):
        members = [i for i, d in selected.items() if d.batch == index and d.phase is not Phase.IDLE]
        succeeded = sum(phase[i] is Phase.SUCCEEDED for i in members)
        if members and not (before.gate_waived and index == before.batch):
            assert succeeded >= math.ceil(gate * len(members))

    # paused exactly when failures exceed the threshold (beyond those accepted on resume)
    failed = sum(p in FAILED for p in phase.values())
    assigned_so_far = sum(p is not Phase.IDLE for p in phase.values())
    over = failed > before.failures_accepted and failed > policy.failure_threshold * (
        assigned_so_far
    )
    if before.status in (Status.RUNNING, Status.COMPLETED):
        if after.status is Status.PAUSED:
            assert after.cause in (Cause.FAILURES, Cause.SUCCESS_GATE)
            assert over or after.cause is Cause.SUCCESS_GATE
        else:
            assert not over
    else:
        assert after.status is before.status and not result.assign
    if after.status is Status.COMPLETED and before.status is not Status.COMPLETED:
        assert after.counters.unavailable == 0


sim_settings = st.fixed_dictionaries(
    {
        "size": st.integers(1, 40),
        "canary": st.integers(0, 3),
        "percents": st.lists(st.integers(1, 100), max_size=3).map(sorted),
        "success": st.sampled_from([0.5, 0.8, 0.9, 1.0]),
        "failure": st.sampled_from([0.0, 0.1, 0.3, 0.5, 1.0]),
        "health_window": st.sampled_from([0.0, 30.0, 120.0]),
        "timeout": st.sampled_from([60.0, 180.0, 300.0]),
        "budget": st.none() | st.sampled_from([1, 3, "10%", "50%"]),
        "approval": st.booleans(),
        "window": st.booleans(),
        "weights": st.lists(st.integers(0, 10), min_size=5, max_size=5).filter(any),
        "churn": st.sampled_from([0.0, 0.05, 0.2]),
    }
)


def make_sim(params: dict[str, object], rng: random.Random) -> Sim:
    batches: list[object] = [params["canary"]] if params["canary"] else []
    batches += [f"{p}%" for p in params["percents"]]  # type: ignore[attr-defined]
    raw: dict[str, object] = {
        "batches": batches or ["100%"],
        "success_threshold": params["success"],
        "failure_threshold": params["failure"],
        "health_window": params["health_window"],
        "update_timeout": params["timeout"],
        "max_unavailable": params["budget"],
        "manual_approval": params["approval"],
    }
    if params["window"]:
        raw["maintenance_window"] = {"cron": "*/20 * * * *", "duration": "10m", "timezone": "UTC"}
    fleet = Fleet.of(params["size"], RolloutPolicy.parse(raw))  # type: ignore[arg-type]
    fleet.selector = Selector.parse("fleet=a,tier!=lab")
    for device_id in list(fleet.devices):
        roll = rng.random()
        if roll < 0.1:
            fleet.set(device_id, labels={"fleet": "a", "tier": "lab"})
        elif roll < 0.2:
            fleet.set(device_id, current=TARGET)
        elif roll < 0.3:
            fleet.set(device_id, online=False)
    weights = [float(w) for w in params["weights"]]  # type: ignore[attr-defined]
    return Sim(fleet, rng, weights, params["churn"])  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(sim_settings, st.integers(0, 2**32))
def test_simulated_fleet_keeps_every_invariant_at_every_step(
    params: dict[str, object], seed: int
) -> None:
    sim = make_sim(params, random.Random(seed))  # noqa: S311 - a simulation, not secrets
    for _ in range(200):
        sim.tick()


@settings(max_examples=200, deadline=None)
@given(sim_settings, st.integers(0, 2**32))
def test_simulated_fleet_ends_completed_or_paused_once_it_settles(
    params: dict[str, object], seed: int
) -> None:
    sim = make_sim(params, random.Random(seed))  # noqa: S311 - a simulation, not secrets
    for _ in range(60):
        sim.tick()
    # settle: no more joins or leaves, every device online, the operator stops resuming
    sim.churn, sim.stuck = 0.0, True
    for device_id in list(sim.fleet.devices):
        sim.fleet.set(device_id, online=True)
    sim.fate = {
        i: ("silent", 0.0) if o == "vanish_after_boot" else (o, d) for i, (o, d) in sim.fate.items()
    }

    def settled() -> bool:
        state = sim.fleet.state
        if state.status is Status.RUNNING and state.counters.selected == 0:
            return True  # every device left: it waits for one to join
        if state.status is Status.COMPLETED:  # and it has caught up with the late devices
            return not (state.counters.waiting or state.counters.unavailable)
        return state.status is Status.PAUSED

    for _ in range(2000):
        if settled():
            break
        sim.tick()
    assert settled(), sim.fleet.state


def reference_fires(cron: Cron, zone: ZoneInfo, first: date, last: date) -> list[float]:
    """When the cron fires, read the other way round: each matching wall time to an instant.

    A wall time the clocks repeat is taken the first time (fold 0); one they skip fires at the
    first minute whose wall time is past it.
    """
    fires = []
    day = first
    while day <= last:
        for hour, minute in itertools.product(range(24), range(60)):
            wall = datetime(day.year, day.month, day.day, hour, minute)
            if not cron.matches(wall):
                continue
            moment = wall.replace(tzinfo=zone, fold=0).timestamp()
            if datetime.fromtimestamp(moment, zone).replace(tzinfo=None) != wall:  # skipped
                moment = math.floor(moment / 60) * 60 - 7200
                while datetime.fromtimestamp(moment, zone).replace(tzinfo=None) < wall:
                    moment += 60
            fires.append(moment)
        day += timedelta(days=1)
    return fires


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["0 2 * * *", "30 2 * * *", "*/20 1-3 * * *", "15 2 * * 0", "45 1 * * *"]),
    st.sampled_from(["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "UTC"]),
    st.sampled_from([600.0, 3600.0, 5400.0, 7200.0]),
    st.sampled_from(
        [
            date(2025, 3, 30),
            date(2025, 10, 26),
            date(2025, 3, 9),
            date(2025, 11, 2),
            date(2025, 4, 6),
            date(2025, 10, 5),
            date(2025, 7, 1),
        ]
    ),
    st.lists(st.integers(0, 3 * 86400 - 1), min_size=1, max_size=20),
)
def test_maintenance_window_agrees_with_a_wall_time_reading_around_dst_changes(
    expression: str, zone_name: str, duration: float, day: date, offsets: list[int]
) -> None:
    cron, zone = Cron.parse(expression), ZoneInfo(zone_name)
    window = MaintenanceWindow(cron, duration, zone_name)
    fires = reference_fires(cron, zone, day - timedelta(days=2), day + timedelta(days=3))
    start = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() - 86400
    for offset in offsets:
        now = start + offset
        assert window.is_open(now) == any(now - duration < t <= now for t in fires), now
