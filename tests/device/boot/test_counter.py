"""counter: greenboot's boot counting, as unit tests and as properties of a simulated device."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afield.device.boot.counter import (
    COUNTER,
    MAX_ATTEMPTS_LIMIT,
    SUCCESS,
    Action,
    BootCounterError,
    after_boot,
    arm,
    firmware_choose,
)

MAX = 3
GARBAGE = ["abc", "-2", "-5", "03", "+1", " 1", "1 ", "11", "99", "1.0", "0x1", "--1", "\n1"]


# --- a device as the boot counter sees it ---------------------------------------------------


@dataclass
class Device:
    """grub.cfg (menu order and fallback entry), grubenv, and the agent's journal of known-good.

    Every write is atomic (one rename) and the caller follows counter.py's protocol; power can
    fail before userspace runs or between any two writes.
    """

    health: dict[str, bool]
    menu: list[str] = field(default_factory=lambda: ["old"])
    fallback_index: int = 0
    env: dict[str, str] | None = field(default_factory=lambda: {SUCCESS: "1"})
    known_good: str = "old"
    boots: list[str] = field(default_factory=list)
    good_since: dict[str, int] = field(default_factory=dict)  # boots before first marked good
    actions: list[Action] = field(default_factory=list)

    def run(self, steps: list[Callable[[], None]], cut: int | None) -> None:
        """Run write steps; ``cut=k`` loses power before step ``k`` (1-based)."""
        for number, step in enumerate(steps, start=1):
            if cut == number:
                return
            step()

    def stage(self, new: str, max_attempts: int, cut: int | None = None) -> None:
        assert self.env is not None
        armed = arm(self.env, max_attempts)
        self.run(
            [
                lambda: setattr(self, "env", armed),
                lambda: self.write_cfg([new, *self.menu], fallback_index=1),
            ],
            cut,
        )

    def write_cfg(self, menu: list[str], *, fallback_index: int) -> None:
        self.menu, self.fallback_index = menu, fallback_index

    def power_on(
        self, cut: int | None = None, *, healthy: bool | None = None, torn: bool = False
    ) -> str:
        """One boot. ``cut=0``: userspace never runs; ``torn``: GRUB's save_env is torn."""
        choice = firmware_choose(self.env, len(self.menu), fallback_index=self.fallback_index)
        if torn:
            self.env = None
        elif choice.env is not None:
            self.env = choice.env
        assert choice.entry_index is not None
        booted = self.menu[choice.entry_index]
        self.boots.append(booted)
        if cut == 0:
            return booted
        ok = self.health[booted] if healthy is None or booted == "old" else healthy
        outcome = after_boot(self.env, healthy=ok, booted_index=choice.entry_index)
        self.actions.append(outcome.action)
        steps: list[Callable[[], None]] = []
        if outcome.action is Action.MARK_GOOD:
            steps.append(lambda: self.record_good(booted))
        elif outcome.action is Action.FINALIZE_ROLLBACK:
            good = self.known_good
            reordered = [good, *(d for d in self.menu if d != good)]
            steps.append(lambda: self.write_cfg(reordered, fallback_index=0))
        if outcome.write_env:
            steps.append(lambda: setattr(self, "env", outcome.env))
        self.run(steps, cut)
        return booted

    def record_good(self, deployment: str) -> None:
        self.known_good = deployment
        self.good_since.setdefault(deployment, len(self.boots))

    def settle(self) -> None:
        """Fault-free boots until the counter has run its course."""
        for _ in range(MAX + 3):
            self.power_on()

    def assert_settled(self) -> None:
        assert self.env is not None
        assert COUNTER not in self.env
        assert self.menu[0] == self.known_good
        assert self.boots[-1] == self.known_good


def staged(new_healthy: bool, stage_cut: int | None = None) -> Device:
    device = Device(health={"old": True, "new": new_healthy})
    device.stage("new", MAX, cut=stage_cut)
    return device


# Power cuts: None = none, 0 = before userspace, 1..3 = before the first, second, third write.
cuts = st.lists(st.one_of(st.none(), st.integers(0, 3)), max_size=12)
stage_cuts = st.one_of(st.none(), st.integers(1, 2))


# --- the real greenboot count ---------------------------------------------------------------


@pytest.mark.parametrize("attempts", range(1, MAX_ATTEMPTS_LIMIT + 1))
def test_counter_of_n_gives_n_boots_of_the_new_deployment(attempts: int) -> None:
    env: dict[str, str] | None = arm({}, attempts)
    indices = []
    for _ in range(attempts + 2):
        choice = firmware_choose(env, 2)
        indices.append(choice.entry_index)
        env = choice.env
    assert indices == [0] * attempts + [1, 1]
    assert env == {COUNTER: "-1", SUCCESS: "0"}


def test_last_attempt_leaves_zero_for_userspace_and_it_retries() -> None:
    choice = firmware_choose({COUNTER: "1", SUCCESS: "0"}, 2)
    assert (choice.entry_index, choice.env) == (0, {COUNTER: "0", SUCCESS: "0"})
    outcome = after_boot(choice.env, healthy=False, booted_index=0)
    assert (outcome.action, outcome.write_env) == (Action.REBOOT_TO_RETRY, False)


def test_arm_sets_counter_and_success_and_keeps_the_rest() -> None:
    assert arm({"saved_entry": "x", SUCCESS: "1"}, 5) == {
        "saved_entry": "x",
        SUCCESS: "0",
        COUNTER: "5",
    }


@pytest.mark.parametrize("attempts", [0, -1, MAX_ATTEMPTS_LIMIT + 1, True])
def test_arm_refuses_attempts_out_of_range(attempts: int) -> None:
    with pytest.raises(BootCounterError, match=f"1..{MAX_ATTEMPTS_LIMIT}"):
        arm({}, attempts)


def test_without_counter_the_default_boots_and_success_is_reset() -> None:
    choice = firmware_choose({SUCCESS: "1", "other": "kept"}, 2)
    assert choice == firmware_choose({SUCCESS: "1", "other": "kept"}, 2)
    assert (choice.entry_index, choice.fallback) == (0, False)
    assert choice.env == {SUCCESS: "0", "other": "kept"}


def test_empty_counter_means_not_counting() -> None:
    # GRUB's `-n "${boot_counter}"` cannot tell unset from empty.
    choice = firmware_choose({COUNTER: "", SUCCESS: "0"}, 2)
    assert (choice.entry_index, choice.env) == (0, {COUNTER: "", SUCCESS: "0"})


def test_success_recorded_with_counter_left_boots_default_uncounted() -> None:
    # greenboot-grub2-set-success cut between its two grub2-editenv calls.
    choice = firmware_choose({COUNTER: "2", SUCCESS: "1"}, 2)
    assert (choice.entry_index, choice.env) == (0, {COUNTER: "2", SUCCESS: "0"})


def test_firmware_does_not_change_its_input() -> None:
    env = {COUNTER: "2", SUCCESS: "0"}
    firmware_choose(env, 2)
    after_boot(env, healthy=True, booted_index=0)
    assert env == {COUNTER: "2", SUCCESS: "0"}


@pytest.mark.parametrize("value", GARBAGE)
def test_garbage_counter_falls_back_to_the_known_good_entry(value: str) -> None:
    # Threat: a garbled counter (greenboot: `decrement` fails) keeps booting a broken update.
    choice = firmware_choose({COUNTER: value, SUCCESS: "0"}, 2)
    assert (choice.entry_index, choice.fallback) == (1, True)
    assert choice.env == {COUNTER: "-1", SUCCESS: "0"}
    assert repr(value) in choice.reason


@pytest.mark.parametrize("value", GARBAGE)
def test_garbage_counter_seen_by_userspace_is_finalized_and_reported(value: str) -> None:
    # Threat: userspace reads a garbled counter GRUB did not rewrite and keeps the update.
    outcome = after_boot({COUNTER: value, SUCCESS: "0"}, healthy=True, booted_index=0)
    assert outcome.action is Action.FINALIZE_ROLLBACK
    assert outcome.env == {SUCCESS: "1"}
    assert repr(value) in outcome.reason


@pytest.mark.parametrize("success", ["", "2", "yes", "00"])
def test_garbage_success_with_a_counter_falls_back(success: str) -> None:
    # Threat: a garbled boot_success would make greenboot skip counting on every boot.
    choice = firmware_choose({COUNTER: "3", SUCCESS: success}, 2)
    assert (choice.entry_index, choice.env) == (1, {COUNTER: "-1", SUCCESS: "0"})


def test_unreadable_grubenv_boots_default_and_is_finalized() -> None:
    # Threat: a corrupt grubenv read as "no counter" keeps an update nobody confirmed.
    choice = firmware_choose(None, 2)
    assert (choice.entry_index, choice.env, choice.fallback) == (0, None, False)
    outcome = after_boot(None, healthy=True, booted_index=0)
    assert (outcome.action, outcome.env, outcome.write_env) == (
        Action.FINALIZE_ROLLBACK,
        {SUCCESS: "1"},
        True,
    )


def test_fallback_with_a_single_entry_boots_that_entry() -> None:
    choice = firmware_choose({COUNTER: "0", SUCCESS: "0"}, 1)
    assert (choice.entry_index, choice.fallback, choice.env) == (
        0,
        True,
        {COUNTER: "-1", SUCCESS: "0"},
    )


def test_empty_menu_boots_nothing() -> None:
    assert firmware_choose({COUNTER: "2", SUCCESS: "0"}, 0).entry_index is None


def test_healthy_trial_boot_is_marked_good() -> None:
    outcome = after_boot({COUNTER: "2", SUCCESS: "0", "x": "y"}, healthy=True, booted_index=0)
    assert (outcome.action, outcome.env, outcome.write_env) == (
        Action.MARK_GOOD,
        {SUCCESS: "1", "x": "y"},
        True,
    )


def test_fallback_boot_is_finalized_even_when_unhealthy() -> None:
    outcome = after_boot({COUNTER: "-1", SUCCESS: "0"}, healthy=False, booted_index=1)
    assert (outcome.action, outcome.env) == (Action.FINALIZE_ROLLBACK, {SUCCESS: "0"})
    assert "needs a human" in outcome.reason


def test_unhealthy_boot_without_counter_waits_for_a_human() -> None:
    outcome = after_boot({SUCCESS: "0"}, healthy=False, booted_index=0)
    assert (outcome.action, outcome.write_env) == (Action.NOTHING, False)


def test_other_entry_booted_during_a_trial_leaves_the_counter_armed() -> None:
    # Threat: someone picks the old entry at the menu; marking it good would disarm the trial.
    outcome = after_boot({COUNTER: "2", SUCCESS: "0"}, healthy=True, booted_index=1)
    assert (outcome.action, outcome.write_env) == (Action.NOTHING, False)


def test_reordered_menu_with_greenboots_fallback_index_would_boot_the_failed_update() -> None:
    # Threat: power lost after the rollback reordered the menu but before the counter was
    # cleared. greenboot's hardcoded entry 1 is now the failed deployment; afield's 0 is not.
    device = staged(new_healthy=False)
    for _ in range(MAX + 1):
        device.power_on(cut=0)
    assert device.boots == ["new"] * MAX + ["old"]
    device.power_on(cut=2)  # finalize: grub.cfg written, env not
    assert (device.menu, device.env) == (["old", "new"], {COUNTER: "-1", SUCCESS: "0"})
    assert firmware_choose(device.env, 2, fallback_index=1).entry_index == 1  # "new"
    assert device.power_on() == "old"
    device.assert_settled()


# --- properties of the whole loop -----------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(stage_cut=stage_cuts, faults=cuts)
def test_broken_update_is_rolled_back_within_max_boots(
    stage_cut: int | None, faults: list[int | None]
) -> None:
    # Threat: a broken update, with power cuts anywhere, keeps the device off a good system.
    device = staged(new_healthy=False, stage_cut=stage_cut)
    for cut in faults:
        device.power_on(cut)
    device.settle()
    new_boots = device.boots.count("new")
    assert new_boots <= MAX
    assert device.boots == ["new"] * new_boots + ["old"] * (len(device.boots) - new_boots)
    assert device.known_good == "old"
    device.assert_settled()


@settings(max_examples=300, deadline=None)
@given(stage_cut=stage_cuts, faults=cuts)
def test_healthy_update_is_kept_once_it_booted_healthy(
    stage_cut: int | None, faults: list[int | None]
) -> None:
    device = staged(new_healthy=True, stage_cut=stage_cut)
    for cut in faults:
        device.power_on(cut)
    device.settle()
    device.assert_settled()
    if stage_cut is not None:
        assert "new" not in device.boots
    elif "new" in device.good_since:
        assert device.menu[0] == "new"
        # Old boots again only to repair a mark-good cut between its two writes (journal, env):
        # the counter ran out, GRUB fell back, and finalizing restored the recorded good one.
        old_after = device.boots[device.good_since["new"] :].count("old")
        assert old_after <= sum(cut is not None for cut in faults)
    else:  # every try lost power before userspace finished: rolled back, safely
        assert device.menu[0] == "old"
        assert device.boots.count("new") == MAX


@settings(max_examples=300, deadline=None)
@given(
    stage_cut=stage_cuts,
    boots=st.lists(st.tuples(st.one_of(st.none(), st.integers(0, 3)), st.booleans()), max_size=12),
)
def test_flaky_update_is_kept_iff_it_once_passed(
    stage_cut: int | None, boots: list[tuple[int | None, bool]]
) -> None:
    device = staged(new_healthy=False, stage_cut=stage_cut)
    for cut, healthy in boots:
        device.power_on(cut, healthy=healthy)
    device.settle()
    device.assert_settled()
    assert (device.menu[0] == "new") == ("new" in device.good_since)
    on_trial = device.boots[: device.good_since.get("new", len(device.boots))]
    assert on_trial.count("new") <= MAX


@settings(max_examples=300, deadline=None)
@given(
    stage_cut=stage_cuts,
    faults=st.lists(st.tuples(st.one_of(st.none(), st.integers(0, 3)), st.booleans()), max_size=12),
)
def test_torn_grubenv_costs_at_most_one_boot_per_fault(
    stage_cut: int | None, faults: list[tuple[int | None, bool]]
) -> None:
    # Threat: GRUB's in-place save_env is torn; GRUB can then neither count nor fall back.
    device = staged(new_healthy=False, stage_cut=stage_cut)
    for cut, torn in faults:
        device.power_on(cut, torn=torn)
    device.settle()
    device.assert_settled()
    assert device.menu[0] == "old"
    n_faults = sum(1 for cut, torn in faults if torn or cut is not None)
    assert device.boots.count("new") <= MAX + n_faults


env_values = st.one_of(
    st.sampled_from(["", "0", "1", "-1", "3", "10", "11", *GARBAGE]), st.text(max_size=5)
)


@settings(max_examples=500)
@given(
    env=st.one_of(st.none(), st.dictionaries(st.sampled_from([COUNTER, SUCCESS, "x"]), env_values)),
    n_entries=st.integers(0, 4),
    fallback_index=st.integers(0, 3),
    healthy=st.booleans(),
)
def test_any_env_gives_a_valid_choice_and_outcome(
    env: dict[str, str] | None, n_entries: int, fallback_index: int, healthy: bool
) -> None:
    # Threat: an unexpected grubenv makes the firmware model or the agent crash.
    choice = firmware_choose(env, n_entries, fallback_index=fallback_index)
    if n_entries == 0:
        assert choice.entry_index is None
        return
    assert choice.entry_index is not None and 0 <= choice.entry_index < n_entries
    assert choice.env is None or choice.env[SUCCESS] == "0"
    outcome = after_boot(choice.env, healthy=healthy, booted_index=choice.entry_index)
    if outcome.action is Action.FINALIZE_ROLLBACK or (outcome.action is Action.MARK_GOOD):
        assert COUNTER not in outcome.env
        assert outcome.write_env
