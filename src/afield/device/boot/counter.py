"""The boot counter: greenboot's GRUB semantics as a pure state machine.

Values in, values out: the functions take the grubenv variables (a mapping, or None when the block
could not be read) and return new ones; reading and writing the file, reordering deployments and
rebooting are the caller's. :mod:`afield.device.boot.grubcfg` renders the same decisions as GRUB
script, and the tests run both side by side so they cannot drift.

What greenboot does (fedora-iot/greenboot, ``grub2/08_greenboot.cfg``, the same text as Fedora
grub2's ``/etc/grub.d/08_fallback_counting`` plus ``10_reset_boot_success``;
``usr/libexec/greenboot/greenboot-grub2-set-counter``, ``greenboot-grub2-set-success``,
``greenboot-rpm-ostree-grub2-check-fallback`` and ``redboot-auto-reboot``):

* Staging an update sets ``boot_counter=N`` (``GREENBOOT_MAX_BOOT_ATTEMPTS``, default 3) and
  ``boot_success=0``.
* At every power-on GRUB runs: if ``boot_counter`` is set and ``boot_success`` is ``0``, then a
  counter of ``0`` or ``-1`` boots menu entry 1 (the previous deployment) and stores ``-1``, any
  other value is decremented and entry 0 (the new default) boots. Then ``boot_success=0`` is saved.
* A healthy boot sets ``boot_success=1`` and unsets ``boot_counter``. An unhealthy one reboots,
  unless the counter is unset or ``-1`` (then it waits for a human).
* Userspace that finds ``boot_counter=-1`` makes the rollback permanent (``rpm-ostree rollback``)
  and unsets the counter.

So a counter of N gives the new deployment **N boots, not N+1**: N -> N-1 ... 1 -> 0 boot it, and
boot N+1 sees 0 and falls back. greenboot's default of 3 means three attempts. The issue text's
"N gives N+1 tries" is wrong; :func:`firmware_choose` and the tests pin the real count.

Where afield deliberately differs (all on the safe side):

* Garbage. greenboot's ``decrement`` fails on a non-number and GRUB then boots the new deployment
  forever, uncounted. Here a ``boot_counter`` that is not exactly ``-1``, ``0`` or ``1`` ..
  :data:`MAX_ATTEMPTS_LIMIT` (``abc``, ``-5``, ``03``, ``11``), or a ``boot_success`` other than
  ``0``/``1`` while a counter is set, falls back like ``0`` does. An unset or empty
  ``boot_counter`` means "not counting", as GRUB's ``-n`` test reads it. ``boot_success=1`` with a
  counter still set (greenboot's set-success was cut between its two writes) boots the default
  uncounted, as in greenboot.
* An unreadable grubenv (None here). GRUB's ``load_env`` fails, nothing is counted and nothing is
  saved, so the default boots; :func:`after_boot` treats that boot as a fallback to the last
  known-good deployment, like garbage.
* The fallback entry is a parameter (``fallback_index``). greenboot hardcodes 1, but then making
  the rollback permanent is unsafe: once deployments are reordered (known-good first, failed
  second) and before the counter is cleared, a power cut leaves ``-1`` in grubenv and GRUB boots
  entry 1, the failed deployment, again. afield renders ``grub.cfg`` with ``fallback_index=1``
  while the default is untested (staging) and with ``0`` once the default is known-good
  (finalizing), so every intermediate state boots a good deployment. With fewer entries than
  ``fallback_index + 1`` the fallback is entry 0 (nothing else to boot).

The caller's protocol (each step one atomic write; power may fail between any two):

* Stage: record the known-good deployment, write ``arm(env, N)``, then write deployments and
  ``grub.cfg`` (new first, ``fallback_index=1``).
* :attr:`Action.MARK_GOOD`: record the booted deployment as known-good, then write the env.
* :attr:`Action.REBOOT_TO_RETRY`: reboot; nothing to write.
* :attr:`Action.FINALIZE_ROLLBACK`: make the recorded known-good deployment the default (by
  identity, not by menu index) and write ``grub.cfg`` with ``fallback_index=0``, then write the env.
  Repeating it is harmless, so a cut anywhere is recovered on the next boot.
* :attr:`Action.NOTHING`: stay up and report; a human or the fleet decides.

Bounds this gives (checked by the property tests, which cut power before userspace and between
any two writes): a new deployment boots at most N times before the fallback, so from boot N+1 after
staging on a known-good deployment runs; after the first fallback boot a failed deployment never
boots again; a deployment that once passed and was recorded as known-good stays the default. A
grubenv GRUB cannot load (its in-place ``save_env`` torn by a power cut) stops the counting; each
such fault costs at most one uncounted boot of the default before userspace, which detects the
damage, finalizes.

Left to the deployment: GRUB's ``save_env`` refuses files it cannot write in place (btrfs, LVM,
RAID, compressed or sparse files), and then the counter never moves and a broken update reboots
forever; grubenv must live on a plain ext2/3/4 or FAT ``/boot``. :mod:`~afield.device.boot.grubenv`
is stricter than GRUB, so a block GRUB still reads (say, one cut short) is "unreadable" here; the
agent then falls back, which is the safe side.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from afield.errors import DeviceError

__all__ = [
    "COUNTER",
    "DEFAULT_MAX_ATTEMPTS",
    "FALLBACK_COUNTER",
    "MAX_ATTEMPTS_LIMIT",
    "SUCCESS",
    "Action",
    "BootChoice",
    "BootCounterError",
    "BootOutcome",
    "after_boot",
    "arm",
    "firmware_choose",
]

COUNTER = "boot_counter"
SUCCESS = "boot_success"
FALLBACK_COUNTER = "-1"
DEFAULT_MAX_ATTEMPTS = 3
MAX_ATTEMPTS_LIMIT = 10

_COUNTS = {str(n): n for n in range(1, MAX_ATTEMPTS_LIMIT + 1)}
_EXHAUSTED = frozenset({"0", FALLBACK_COUNTER})


class BootCounterError(DeviceError):
    """A boot counter setting is out of range (e.g. ``GREENBOOT_MAX_BOOT_ATTEMPTS``)."""

    user_error = True


class Action(enum.Enum):
    """What the caller does after a boot's health checks."""

    MARK_GOOD = "mark-good"
    REBOOT_TO_RETRY = "reboot-to-retry"
    FINALIZE_ROLLBACK = "finalize-rollback"
    NOTHING = "nothing"


@dataclass(frozen=True)
class BootChoice:
    """What GRUB's counter script decides at power-on.

    Attributes:
        entry_index: Menu entry that boots (0 is the default); None when the menu is empty.
        env: The variables GRUB saves, or None when it could not load (and so cannot save) them.
        fallback: True when the counter sent the boot to the fallback entry.
        reason: One line for logs and the simulator.
    """

    entry_index: int | None
    env: dict[str, str] | None
    fallback: bool
    reason: str


@dataclass(frozen=True)
class BootOutcome:
    """What userspace does after a boot.

    Attributes:
        env: The variables to write (unchanged when ``write_env`` is False).
        action: What the caller does besides writing ``env``.
        write_env: Whether ``env`` must be written, after the action's other steps.
        reason: One line for the journal and the report to the fleet.
    """

    env: dict[str, str]
    action: Action
    write_env: bool
    reason: str


def arm(env: Mapping[str, str], max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> dict[str, str]:
    """Variables for staging an update: ``boot_counter=max_attempts``, ``boot_success=0``.

    Args:
        env: The current variables; the others are kept.
        max_attempts: Boots the new deployment gets before the fallback (1 to
            :data:`MAX_ATTEMPTS_LIMIT`).

    Raises:
        BootCounterError: ``max_attempts`` is out of range.
    """
    if isinstance(max_attempts, bool) or not 1 <= max_attempts <= MAX_ATTEMPTS_LIMIT:
        raise BootCounterError(
            f"max boot attempts must be an integer 1..{MAX_ATTEMPTS_LIMIT}, got {max_attempts!r}"
        )
    return {**env, COUNTER: str(max_attempts), SUCCESS: "0"}


def firmware_choose(
    env: Mapping[str, str] | None, n_entries: int, *, fallback_index: int = 1
) -> BootChoice:
    """Play GRUB's counter script: which entry boots and what it saves.

    Args:
        env: The grubenv variables, or None when GRUB cannot load the block.
        n_entries: Menu entries in ``grub.cfg``.
        fallback_index: The entry a spent or garbled counter boots (see the module docstring).

    Returns:
        The choice; ``env`` in it is a new dict.
    """
    default = 0 if n_entries > 0 else None
    if env is None:
        return BootChoice(default, None, False, "grubenv unreadable: nothing counted or saved")
    counter = env.get(COUNTER, "")
    success = env.get(SUCCESS, "")
    saved = dict(env)
    saved[SUCCESS] = "0"
    fallback = False
    if counter == "":
        reason = "not counting"
    elif success == "0" and counter in _COUNTS:
        saved[COUNTER] = str(_COUNTS[counter] - 1)
        reason = f"trying the default, {counter} boots left before this one"
    elif success == "1":
        reason = "boot already marked good; counter left as it is"
    else:
        fallback = True
        saved[COUNTER] = FALLBACK_COUNTER
        if success != "0":
            reason = f"{SUCCESS}={success!r} is not 0 or 1: falling back"
        elif counter in _EXHAUSTED:
            reason = "boot attempts used up: falling back"
        else:
            reason = f"{COUNTER}={counter!r} is not a counter value: falling back"
    if fallback and default is not None and fallback_index < n_entries:
        return BootChoice(fallback_index, saved, True, reason)
    return BootChoice(default, saved, fallback, reason)


def after_boot(env: Mapping[str, str] | None, *, healthy: bool, booted_index: int) -> BootOutcome:
    """Decide what userspace does once the health checks of a boot have run.

    Args:
        env: The grubenv variables as GRUB left them, or None when the block is unreadable.
        healthy: Whether the required health checks passed.
        booted_index: Menu index of the booted entry (0 is the default).

    Returns:
        The outcome; its ``env`` is a new dict.
    """
    good = "1" if healthy else "0"
    if env is None:
        return BootOutcome(
            {SUCCESS: good},
            Action.FINALIZE_ROLLBACK,
            True,
            "grubenv unreadable: falling back to the known-good deployment",
        )
    counter = env.get(COUNTER, "")
    cleared = {k: v for k, v in env.items() if k != COUNTER}
    cleared[SUCCESS] = good
    if counter == "":
        if healthy:
            return BootOutcome(cleared, Action.MARK_GOOD, cleared != env, "healthy boot")
        return BootOutcome(
            dict(env), Action.NOTHING, False, "unhealthy and no update being tried: needs a human"
        )
    if counter == "0" or counter in _COUNTS:
        if booted_index != 0:
            return BootOutcome(
                dict(env),
                Action.NOTHING,
                False,
                f"entry {booted_index} booted while the default is on trial: counter left armed",
            )
        if healthy:
            return BootOutcome(cleared, Action.MARK_GOOD, True, "new deployment passed its checks")
        return BootOutcome(
            dict(env),
            Action.REBOOT_TO_RETRY,
            False,
            f"new deployment unhealthy, {COUNTER}={counter}: rebooting to retry",
        )
    if counter == FALLBACK_COUNTER:
        reason = "fallback boot: making the rollback permanent"
    else:
        reason = f"{COUNTER}={counter!r} is not a counter value: treating as a fallback"
    if not healthy:
        reason += "; the known-good deployment is unhealthy too: needs a human"
    return BootOutcome(cleared, Action.FINALIZE_ROLLBACK, True, reason)
