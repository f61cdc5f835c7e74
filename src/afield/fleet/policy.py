"""Rollout policies: batches, thresholds, timeouts, maintenance windows and device selectors.

A fleet's rollout policy says how fast a release may spread over the fleet and when it must stop.
It is data the operator writes (a TOML table, a JSON body), so :meth:`RolloutPolicy.parse` checks
it field by field and raises one :class:`RolloutPolicyError` listing every problem, each naming
the field (``batches[2]``, ``maintenance_window.cron``) and what would be accepted. The model
follows FlightCtl's fleet ``rolloutPolicy`` (a batch sequence with count-or-percentage limits, a
``successThreshold``, a ``disruptionBudget`` with ``maxUnavailable``, ``defaultUpdateTimeout``) and
hawkBit's rollout groups (a success condition that starts the next group, an error condition
that stops the rollout, an optional pause for approval between groups).

* ``batches`` are **cumulative**: ``[1, "10%", "50%", "100%"]`` means "one device, then up to 10%
  of the fleet in all, then up to 50%, then everyone" (FlightCtl's reading: a batch "might be
  none" when earlier ones already reached its limit). Counts and percentages mix; a percentage
  is of the devices the fleet's selector matches, rounded up, at least one. A last batch other
  than ``100%`` gets an implicit ``100%`` batch after it, as FlightCtl's implicit final batch.
* ``success_threshold`` (default 0.9) is the fraction of a batch that must succeed before the next
  one starts; ``failure_threshold`` (default 0.1) the fraction of the devices told to update so
  far that may fail before the rollout pauses itself. Both accept ``0.9`` or ``"90%"``.
* ``health_window`` (default 5 min) is how long a device must stay healthy on the new release
  before it counts as succeeded; ``update_timeout`` (default 1 h) how long a device may take
  to report its next step before it counts as timed out. Both accept seconds or ``"15m"``.
* ``max_unavailable`` (default: no limit beyond the batch) caps the devices updating at once,
  as a count or a percentage of the fleet, rounded down (at least one), as Kubernetes does.
* ``maintenance_window``: a 5-field cron expression for when the window opens, a duration and an
  IANA time zone; no device is told to update outside it.

:class:`Selector` is the label selector that picks a fleet's devices (``site=berlin,tier!=lab``).

What it leaves to others: deciding what to do with a policy at each moment (the engine,
:mod:`afield.fleet.rollout`), storing policies (the fleet manager's database), per-batch label
selectors and FlightCtl's ``groupBy`` budgets (not modelled yet).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fractions import Fraction
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from afield.errors import FleetError, Problem

__all__ = [
    "MAX_DURATION",
    "Amount",
    "Cron",
    "MaintenanceWindow",
    "RolloutPolicy",
    "RolloutPolicyError",
    "Selector",
    "SelectorError",
]

MAX_WINDOW = 7 * 86400  # a maintenance window lasts at most a week
MAX_DURATION = 3650 * 86400  # ten years: no window, timeout or wait in a rollout needs more
_AMOUNT_HINT = 'expected a whole number of devices (at least 1) or a percentage such as "10%"'
_DURATION_HINT = 'expected seconds (a number) or a duration such as "90s", "15m", "2h", "1h30m"'
_FRACTION_HINT = 'expected a fraction from 0 to 1 (such as 0.9) or a percentage (such as "90%")'
# ASCII digits only, and few of them: int() and float() refuse other scripts' digits (which
# \d accepts) and numbers past 4300 digits, and no count, percentage or duration needs more.
_PERCENT = re.compile(r"\s*([0-9]{1,12}(?:\.[0-9]{1,12})?)\s*%\s*")
_COUNT = re.compile(r"\s*([0-9]{1,12})\s*")
_SECONDS = re.compile(r"[0-9]{1,12}")
_SMALL = re.compile(r"[0-9]{1,6}")  # a cron field's number or step
_DURATION = re.compile(r"(?:([0-9]{1,9})d)?(?:([0-9]{1,9})h)?(?:([0-9]{1,9})m)?(?:([0-9]{1,9})s)?")
_LABEL_KEY = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._/-]*[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)?")


class RolloutPolicyError(FleetError):
    """A rollout policy does not validate; ``problems`` names each field and what it accepts."""

    user_error = True

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        self.field = self.problems[0].location if self.problems else ""
        if len(self.problems) == 1:
            text = f"rollout policy: {self.problems[0]}"
        else:
            lines = "\n".join(f"  {p}" for p in self.problems)
            text = f"rollout policy: {len(self.problems)} problems\n{lines}"
        super().__init__(text)


class SelectorError(FleetError):
    """A label selector does not parse; ``part`` is the comma-separated part at fault."""

    user_error = True

    def __init__(self, selector: str, part: str, message: str) -> None:
        super().__init__(f"selector {selector!r}: {message}")
        self.selector = selector
        self.part = part


def _fail(where: str, message: str) -> RolloutPolicyError:
    return RolloutPolicyError([Problem(where, message)])


def _shown(raw: object) -> str:
    """A raw value as the user wrote it: strings in double quotes, the rest as Python shows it."""
    return f'"{raw}"' if isinstance(raw, str) else repr(raw)


def _number(text: Fraction | float) -> str:
    value = Fraction(text)
    return str(value.numerator) if value.denominator == 1 else str(float(value))


# --- amounts, fractions, durations ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Amount:
    """A number of devices: a count (``5``) or a percentage of the fleet (``"10%"``).

    Percentages are exact fractions so ``"12.5%"`` of 200 devices is 25, not 24.999….
    """

    value: Fraction
    percent: bool = False

    def __post_init__(self) -> None:
        problem = _amount_problem(self.value, self.percent)
        if problem:
            raise _fail("amount", problem)

    @classmethod
    def parse(cls, raw: object, where: str = "amount") -> Amount:
        """``5``, ``"5"`` or ``"10%"``; raises :class:`RolloutPolicyError` naming ``where``."""
        if isinstance(raw, int) and not isinstance(raw, bool):
            value, percent = Fraction(raw), False
        elif isinstance(raw, str) and (match := _PERCENT.fullmatch(raw)):
            value, percent = Fraction(match.group(1)), True
        elif isinstance(raw, str) and (match := _COUNT.fullmatch(raw)):
            value, percent = Fraction(int(match.group(1))), False
        else:
            raise _fail(where, f"{_shown(raw)} is not a device count: {_AMOUNT_HINT}")
        problem = _amount_problem(value, percent)
        if problem:
            raise _fail(where, f"{_shown(raw)} {problem}")
        return cls(value, percent)

    def of(self, total: int, *, round_up: bool = True) -> int:
        """How many of ``total`` devices this is: at least one of a non-empty fleet, at most all.

        Percentages round up (batches: 10% of 15 devices is 2) or, with ``round_up=False``, down
        (disruption budgets: 10% of 15 devices is 1, so the budget is never overshot).
        """
        if total <= 0:
            return 0
        if not self.percent:
            return min(int(self.value), total)
        exact = self.value * total / 100
        count = math.ceil(exact) if round_up else math.floor(exact)
        return max(1, min(count, total))

    def to_json(self) -> int | str:
        """``5`` or ``"10%"``, what :meth:`parse` reads back."""
        return f"{_number(self.value)}%" if self.percent else int(self.value)

    def __str__(self) -> str:
        return str(self.to_json())


def _amount_problem(value: Fraction, percent: bool) -> str:
    if percent:
        if value <= 0:
            return "is not a share of the fleet: a percentage must be above 0%"
        if value > 100:
            return "is over 100%"
    elif value.denominator != 1 or value < 1:
        return f"is not a device count: {_AMOUNT_HINT}"
    return ""


ALL = Amount(Fraction(100), percent=True)


def _parse_fraction(raw: object, where: str) -> float:
    if isinstance(raw, bool):
        raise _fail(where, f"{_shown(raw)} is not a fraction: {_FRACTION_HINT}")
    if isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str) and (match := _PERCENT.fullmatch(raw)):
        value = float(Fraction(match.group(1)) / 100)
    else:
        raise _fail(where, f"{_shown(raw)} is not a fraction: {_FRACTION_HINT}")
    if not 0.0 <= value <= 1.0:
        raise _fail(where, f"{_shown(raw)} is outside 0..1 (0% to 100%)")
    return value


def _parse_duration(raw: object, where: str = "duration") -> float:
    """Seconds from ``90``, ``1.5``, ``"90s"``, ``"15m"``, ``"2h"``, ``"1d"`` or ``"1h30m"``."""
    value = _duration_seconds(raw)
    if value is None or not math.isfinite(value) or value < 0:
        raise _fail(where, f"{_shown(raw)} is not a duration: {_DURATION_HINT}")
    if value > MAX_DURATION:
        # Bounded so that every stored duration is written back in a form parsing accepts.
        raise _fail(where, f"{_shown(raw)} is longer than {MAX_DURATION // 86400} days")
    return value


def _duration_seconds(raw: object) -> float | None:
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    if isinstance(raw, str):
        text = raw.strip()
        if _SECONDS.fullmatch(text):
            return float(text)
        match = _DURATION.fullmatch(text)
        if text and match:
            days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
            return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)
    return None


def _duration_json(seconds: float) -> str | float:
    """``"1h30m"`` for whole seconds, else the number of seconds: what parsing reads back."""
    return _duration_text(seconds) if seconds == int(seconds) else seconds


def _duration_text(seconds: float) -> str:
    whole = int(seconds)
    if whole != seconds or whole == 0:
        return f"{seconds:g}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return "".join(parts)


# --- maintenance windows ---------------------------------------------------------------------

# (name, lowest, highest) of the five cron fields; day of week 7 is Sunday, as 0.
_CRON_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)


@dataclass(frozen=True)
class Cron:
    """A 5-field cron expression (minute hour day-of-month month day-of-week), matched on wall time.

    Each field is ``*``, a number, a range ``a-b``, a step ``*/n`` or ``a-b/n``, or a comma list
    of those; names (``MON``, ``JAN``) and ``a/n`` are not accepted. As in Vixie cron, when both
    day fields are restricted (neither starts with ``*``) a day matches if either does.
    """

    expression: str
    minutes: frozenset[int] = field(repr=False)
    hours: frozenset[int] = field(repr=False)
    days: frozenset[int] = field(repr=False)
    months: frozenset[int] = field(repr=False)
    weekdays: frozenset[int] = field(repr=False)  # 0 = Sunday
    either_day: bool = field(repr=False)

    @classmethod
    def parse(cls, expression: str, where: str = "cron") -> Cron:
        """Raises :class:`RolloutPolicyError` naming ``where``, the cron field and the value."""
        parts = expression.split()
        if len(parts) != 5:
            raise _fail(
                where,
                f"{_shown(expression)} has {len(parts)} fields: expected 5 "
                '(minute hour day-of-month month day-of-week, such as "0 2 * * *")',
            )
        sets = [_cron_field(p, spec, where) for p, spec in zip(parts, _CRON_FIELDS, strict=True)]
        weekdays = frozenset(d % 7 for d in sets[4])
        either = not parts[2].startswith("*") and not parts[4].startswith("*")
        return cls(" ".join(parts), sets[0], sets[1], sets[2], sets[3], weekdays, either)

    def matches(self, wall: datetime) -> bool:
        """Whether the wall-clock minute ``wall`` (naive, local time) is one the cron names."""
        if wall.minute not in self.minutes or wall.hour not in self.hours:
            return False
        if wall.month not in self.months:
            return False
        in_days = wall.day in self.days
        in_weekdays = wall.isoweekday() % 7 in self.weekdays
        return (in_days or in_weekdays) if self.either_day else (in_days and in_weekdays)

    def __str__(self) -> str:
        return self.expression


def _cron_field(text: str, spec: tuple[str, int, int], where: str) -> frozenset[int]:
    name, low, high = spec
    values: set[int] = set()
    for item in text.split(","):
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not _SMALL.fullmatch(step_text) or int(step_text) < 1:
                raise _fail(where, f"{name} {_shown(item)}: the step after / must be 1 or more")
            step = int(step_text)
        if base == "*":
            first, last = low, high
        else:
            start, dash, end = base.partition("-")
            if not _SMALL.fullmatch(start) or (dash and not _SMALL.fullmatch(end)):
                raise _fail(
                    where,
                    f"{name} {_shown(item)} is not *, a number, a range a-b or a step */n, a-b/n",
                )
            first = int(start)
            last = int(end) if dash else first
            if slash and not dash:
                raise _fail(where, f"{name} {_shown(item)}: a step needs * or a range (a-b/n)")
            if not low <= first <= high or not low <= last <= high:
                raise _fail(where, f"{name} {_shown(item)} is out of range {low}-{high}")
            if first > last:
                raise _fail(where, f"{name} {_shown(item)} is a range that runs backwards")
        values.update(range(first, last + 1, step))
    return frozenset(values)


# Looking this far back before a window could have opened learns the wall clock's high-water
# mark, so the hour a fall-back repeats does not open a window a second time.
_LOOKBACK_MINUTES = 180
_MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class MaintenanceWindow:
    """When devices may be told to update: opens when ``cron`` fires, stays open ``duration`` s.

    The cron matches wall time in ``timezone``. Across daylight-saving changes it behaves as
    Vixie cron does for fixed times: a time the clocks skip (02:30 on a spring-forward night in
    Europe/Berlin) fires at the first instant after the jump, and a time the clocks repeat fires
    once, the first time. ``duration`` is elapsed time, so a 2 h window is 2 h long either way.
    """

    cron: Cron
    duration: float
    timezone: str

    def __post_init__(self) -> None:
        problems = []
        if not 0 < self.duration <= MAX_WINDOW:
            text = _duration_text(self.duration)
            problems.append(Problem("duration", f"{text} must be above 0 and at most 7d"))
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            text = f"{_shown(self.timezone)} is not an IANA time zone name such as Europe/Berlin"
            problems.append(Problem("timezone", text))
        if problems:
            raise RolloutPolicyError(problems)

    @classmethod
    def parse(cls, raw: object, where: str = "maintenance_window") -> MaintenanceWindow:
        """From ``{"cron": "0 2 * * *", "duration": "2h", "timezone": "Europe/Berlin"}``."""
        fields = _table(raw, where, _WINDOW_PARSERS, required=_WINDOW_PARSERS)
        try:
            return cls(**fields)  # type: ignore[arg-type]  # each value was parsed above
        except RolloutPolicyError as e:
            raise RolloutPolicyError(
                Problem(f"{where}.{p.location}", p.message) for p in e.problems
            ) from None

    def is_open(self, now: float) -> bool:
        """Whether the window is open at ``now`` (seconds since the epoch)."""
        zone = ZoneInfo(self.timezone)
        # Open iff the cron fired at some minute t with now - duration < t <= now.
        first = math.floor((now - self.duration) / 60) + 1
        last = math.floor(now / 60)
        high: datetime | None = None  # the latest wall-clock minute already seen
        for minute in range(first - _LOOKBACK_MINUTES, last + 1):
            wall = datetime.fromtimestamp(minute * 60, zone).replace(tzinfo=None)
            if high is None or wall <= high:  # a fall-back repeats minutes that fired already
                high = high or wall
                continue
            fired = False
            covered = high + _MINUTE  # normally wall itself; after a spring-forward, the gap too
            while covered <= wall and not fired:
                fired = self.cron.matches(covered)
                covered += _MINUTE
            high = wall
            if fired and minute >= first:
                return True
        return False

    def to_json(self) -> dict[str, object]:
        """The table :meth:`parse` reads back."""
        duration = _duration_json(self.duration)
        return {"cron": self.cron.expression, "duration": duration, "timezone": self.timezone}

    def __str__(self) -> str:
        return f'"{self.cron}" for {_duration_text(self.duration)} in {self.timezone}'


def _parse_cron(raw: object, where: str) -> Cron:
    if not isinstance(raw, str):
        raise _fail(where, f'{_shown(raw)} is not a cron expression such as "0 2 * * *"')
    return Cron.parse(raw, where)


def _parse_zone(raw: object, where: str) -> str:
    if not isinstance(raw, str):
        raise _fail(where, f"{_shown(raw)} is not a time zone name such as Europe/Berlin")
    return raw


_WINDOW_PARSERS: dict[str, Callable[[object, str], object]] = {
    "cron": _parse_cron,
    "duration": _parse_duration,
    "timezone": _parse_zone,
}


def _table(
    raw: object,
    where: str,
    parsers: Mapping[str, Callable[[object, str], object]],
    *,
    required: Iterable[str] = (),
    nullable: Iterable[str] = (),
) -> dict[str, object]:
    """Parse a table field by field, collecting every problem; raise them all at once."""
    if not isinstance(raw, Mapping):
        raise _fail(where, f"expected a table with {', '.join(parsers)}")
    prefix = f"{where}." if where else ""
    problems = [Problem(f"{prefix}{key}", "is required") for key in required if key not in raw]
    values: dict[str, object] = {}
    for key, value in raw.items():
        parser = parsers.get(key)
        if parser is None:
            accepted = ", ".join(parsers)
            problems.append(Problem(f"{prefix}{key}", f"unknown field: accepted are {accepted}"))
        elif value is None and key in nullable:
            values[key] = None  # an optional part of the policy, turned off
        else:
            try:
                values[key] = parser(value, f"{prefix}{key}")
            except RolloutPolicyError as e:
                problems.extend(e.problems)
    if problems:
        raise RolloutPolicyError(problems)
    return values


# --- the policy ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutPolicy:
    """How a release spreads over a fleet; see the module docstring for each field's meaning.

    Constructing one checks every field; a ``batches`` sequence whose last batch is not
    ``100%`` gets an implicit ``100%`` appended, so ``batches[-1]`` always covers the fleet.
    """

    batches: tuple[Amount, ...] = (ALL,)
    success_threshold: float = 0.9
    failure_threshold: float = 0.1
    health_window: float = 300.0
    update_timeout: float = 3600.0
    max_unavailable: Amount | None = None
    manual_approval: bool = False
    maintenance_window: MaintenanceWindow | None = None

    def __post_init__(self) -> None:
        batches = tuple(self.batches)
        if batches and batches[-1] != ALL:
            batches += (ALL,)
        object.__setattr__(self, "batches", batches)
        problems = _policy_problems(self)
        if problems:
            raise RolloutPolicyError(problems)

    @classmethod
    def parse(cls, raw: object) -> RolloutPolicy:
        """A policy from its table form (as :meth:`to_json` writes it); missing fields default.

        Raises:
            RolloutPolicyError: listing every problem, each naming its field and what it
                accepts, e.g. ``batches[2]: "150%" is over 100%``.
        """
        fields = _table(
            raw, "", _POLICY_PARSERS, nullable=("max_unavailable", "maintenance_window")
        )
        return cls(**fields)  # type: ignore[arg-type]  # each value was parsed to its type

    def to_json(self) -> dict[str, object]:
        """The table form: what :meth:`parse` reads back to an equal policy."""
        budget, window = self.max_unavailable, self.maintenance_window
        return {
            "batches": [b.to_json() for b in self.batches],
            "success_threshold": self.success_threshold,
            "failure_threshold": self.failure_threshold,
            "health_window": _duration_json(self.health_window),
            "update_timeout": _duration_json(self.update_timeout),
            "max_unavailable": None if budget is None else budget.to_json(),
            "manual_approval": self.manual_approval,
            "maintenance_window": None if window is None else window.to_json(),
        }


def _parse_batches(raw: object, where: str) -> tuple[Amount, ...]:
    if not isinstance(raw, list | tuple) or not raw:
        raise _fail(where, f'{_shown(raw)} is not a list of batch sizes such as [1, "10%"]')
    problems: list[Problem] = []
    batches = []
    for index, item in enumerate(raw):
        try:
            batches.append(Amount.parse(item, f"{where}[{index}]"))
        except RolloutPolicyError as e:
            problems.extend(e.problems)
    if problems:
        raise RolloutPolicyError(problems)
    return tuple(batches)


def _parse_bool(raw: object, where: str) -> bool:
    if not isinstance(raw, bool):
        raise _fail(where, f"{_shown(raw)} is not true or false")
    return raw


_POLICY_PARSERS: dict[str, Callable[[object, str], object]] = {
    "batches": _parse_batches,
    "success_threshold": _parse_fraction,
    "failure_threshold": _parse_fraction,
    "health_window": _parse_duration,
    "update_timeout": _parse_duration,
    "max_unavailable": Amount.parse,
    "manual_approval": _parse_bool,
    "maintenance_window": MaintenanceWindow.parse,
}


def _policy_problems(policy: RolloutPolicy) -> list[Problem]:
    """Range checks (types are mypy's); parse() already turned raw values into these types."""
    problems: list[Problem] = []
    if not policy.batches:
        problems.append(Problem("batches", 'expected at least one batch, such as [1, "10%"]'))
    previous: dict[bool, tuple[int, Amount]] = {}
    for index, batch in enumerate(policy.batches):
        earlier = previous.get(batch.percent)
        if earlier is not None and batch.value < earlier[1].value:
            problems.append(
                Problem(
                    f"batches[{index}]",
                    f'"{batch}" is smaller than batches[{earlier[0]}] "{earlier[1]}": batches are '
                    "cumulative (each is the total reached once it is done), so they never shrink",
                )
            )
        previous[batch.percent] = (index, batch)
    if not 0 < policy.success_threshold <= 1:
        problems.append(
            Problem("success_threshold", f"{policy.success_threshold!r} must be above 0, at most 1")
        )
    if not 0 <= policy.failure_threshold <= 1:
        problems.append(
            Problem("failure_threshold", f"{policy.failure_threshold!r} must be from 0 to 1")
        )
    if not 0 <= policy.health_window < math.inf:
        text = f"{policy.health_window!r} must be 0 or more seconds"
        problems.append(Problem("health_window", text))
    if not 0 < policy.update_timeout < math.inf:
        text = f"{policy.update_timeout!r} must be above 0 seconds"
        problems.append(Problem("update_timeout", text))
    return problems


# --- selectors -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selector:
    """Which devices a fleet (and so a rollout) covers, by label: ``site=berlin,tier!=lab``.

    Each comma-separated part is one requirement and all must hold: ``key=value`` (also
    ``key==value``), ``key!=value`` (true when the label is absent, as in Kubernetes), ``key``
    (the label exists) or ``!key`` (it does not). The empty selector matches every device.
    """

    requirements: tuple[tuple[str, str, str], ...] = ()  # (key, op, value)

    @classmethod
    def parse(cls, raw: str | Mapping[str, str]) -> Selector:
        """From ``"site=berlin,tier!=lab,gpu,!legacy"`` or ``{"site": "berlin"}`` (equality only).

        Raises:
            SelectorError: naming the part at fault and what a part may look like.
        """
        text = raw if isinstance(raw, str) else ",".join(f"{k}={v}" for k, v in raw.items())
        requirements = []
        if text.strip():
            for number, part in enumerate(text.split(","), start=1):
                requirements.append(_requirement(text, number, part.strip()))
        return cls(tuple(requirements))

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a device with these labels is selected."""
        for key, op, value in self.requirements:
            have = labels.get(key)
            if op == "=":
                if have != value:
                    return False
            elif op == "!=":
                if have == value:
                    return False
            elif (have is None) == (op == "exists"):
                return False
        return True

    def __str__(self) -> str:
        shown = {"=": "{k}={v}", "!=": "{k}!={v}", "exists": "{k}", "absent": "!{k}"}
        return ",".join(shown[op].format(k=k, v=v) for k, op, v in self.requirements)


def _requirement(text: str, number: int, part: str) -> tuple[str, str, str]:
    where = f"part {number} {_shown(part)}"
    hint = "expected key=value, key!=value, key or !key"
    if not part:
        raise SelectorError(text, part, f"{where} is empty: {hint}, separated by commas")
    if part.startswith("!") and "=" not in part:
        key, op, value = part[1:].strip(), "absent", ""
    elif "!=" in part:
        key, _, value = part.partition("!=")
        op = "!="
    elif "=" in part:
        key, _, value = part.partition("==" if "==" in part else "=")
        op = "="
    else:
        key, op, value = part, "exists", ""
    key, value = key.strip(), value.strip()
    if not key:
        raise SelectorError(text, part, f"{where} has no label key: {hint}")
    if not _LABEL_KEY.fullmatch(key):
        raise SelectorError(
            text,
            part,
            f"{where}: label key {_shown(key)} must be letters, digits and . _ / - "
            "(starting and ending with a letter or digit)",
        )
    if not _LABEL_VALUE.fullmatch(value):
        raise SelectorError(
            text,
            part,
            f"{where}: label value {_shown(value)} must be letters, digits and . _ - "
            "(starting and ending with a letter or digit)",
        )
    return key, op, value
