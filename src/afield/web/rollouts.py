"""``/rollouts`` and ``/rollouts/{id}``: rollouts, their live progress per batch, and the actions.

``GET /rollouts`` lists rollouts newest first, :data:`PAGE` at a time (keyset: ``before=<id>``
shows the rollouts older than that one), with their fleet, release, status, batch, progress
and reason; ``status`` and ``fleet`` filter it (an empty field is no filter; a status that is
not one is a 400 page naming the filter).

``GET /rollouts/{id}`` shows one rollout: its fleet, release and the fleet's policy, then the
live part (``_rollout_live.html``, :func:`read_live`):

* the status, the engine's reason and cause, and the overall progress from the engine's
  counters (succeeded, in progress, failed, already up to date, of the devices selected);
* per batch of the policy: its size as written, how many devices it may have told in all by
  now, and its members by phase (one ``GROUP BY batch, phase`` over the rollout's devices),
  the current batch marked;
* why it stopped: the devices of the rollout that rolled back, failed their health checks or
  timed out (:data:`FAILED_SHOWN` of them, with how many there are), each with its rollback
  reason and the checks that failed on the rollout's commit, with their output: from the
  device's last report, else (a device that fell back reports the health of the release it
  fell back to) from its latest ``device.health_failed`` event about that commit;
* for an admin, a plain POST form per action the engine would accept now (tried on the stored
  state with :func:`afield.fleet.rollout.pause` and the others): pause (reason optional),
  resume, approve, abort (with a reason). A viewer sees no form; posting one anyway is 403.

``POST /rollouts/{id}/pause|resume|approve|abort`` checks the form (origin, CSRF field, admin:
:data:`~afield.web._session.AdminFormDep`), applies the transition as the API does
(:func:`afield.fleet.api.rollouts.act`: the state, an event by ``admin:<token>``, the runner
rung) and sends the browser back to the rollout with 303; a transition the engine refuses is a
409 page naming the current and the requested state.

``GET /rollouts/{id}/stream`` keeps the live part current without reloading the page: a
``text/event-stream`` whose ``progress`` events carry the fragment's HTML, rendered for the
caller (an admin's forms carry its CSRF field), which htmx's SSE extension swaps in place. It
sends the fragment at once, then checks every :data:`POLL_SECONDS` whether the rollout's row
(revision, update time, status) or the per-batch phase counts changed, and sends the fragment
again when the HTML it renders differs from the last one sent (a runner step that changed
nothing sends nothing). A comment every :data:`KEEPALIVE_SECONDS` keeps proxies from closing
an idle stream, and the session is checked again then: a revoked token or an ended session
ends the stream. The stream ends when the browser goes away or after :data:`STREAM_SECONDS`
(the browser reconnects and gets a fresh fragment). Without a session it is 401 (the
dashboard's login handling, for ``Accept: text/event-stream``).

What it leaves to others: the engine and its transitions (:mod:`afield.fleet.rollout`), storing
them (:mod:`afield.fleet.api.rollouts`), stepping rollouts (:mod:`afield.fleet.runner`),
sessions and forms (:mod:`afield.web._session`), rendering (:mod:`afield.web._render`).
"""

from __future__ import annotations

import asyncio
import datetime
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from afield.fleet.api.deps import MAX_ID, TEXT, ApiError, SessionDep, newest_first
from afield.fleet.api.rollouts import RolloutPublic, act, rollout_public
from afield.fleet.db import Database
from afield.fleet.models import Device, Event, Fleet, Rollout, state_from_json
from afield.fleet.policy import RolloutPolicy, RolloutPolicyError
from afield.fleet.rollout import (
    Phase,
    RolloutError,
    RolloutState,
    Status,
    abort,
    approve,
    pause,
    resume,
)
from afield.web._render import HEADERS, before_cursor, fragment, render
from afield.web._session import AdminFormDep, PageError, ViewerPage, WebCaller, current
from afield.web.devices import device_path

__all__ = ["FAILED_SHOWN", "PAGE", "POLL_SECONDS", "Live", "read_live", "router", "sse_message"]

router = APIRouter()

PAGE = 50
"""Rollouts per page of ``/rollouts``."""
FAILED_SHOWN = 50
"""Failed devices listed on a rollout's page (the page says how many there are in all)."""
POLL_SECONDS = 1.0
"""How often a stream checks its rollout for changes."""
KEEPALIVE_SECONDS = 15.0
"""Longest silence on a stream: a comment line then, and the session is checked again."""
STREAM_SECONDS = 600.0
"""How long one stream lasts at most; the browser then reconnects."""
MAX_REASON = 500
"""Characters an operator's reason may have (as the API's)."""

RolloutPath = Annotated[int, Path(ge=1, le=MAX_ID)]
PHASES = tuple(p.value for p in Phase if p is not Phase.IDLE)
"""The phases a member of a batch can be in, in the order the batch table shows them."""
_FAILED = (Phase.ROLLED_BACK.value, Phase.HEALTH_FAILED.value, Phase.TIMED_OUT.value)
_TRANSITIONS: dict[str, Callable[[RolloutState], RolloutState]] = {
    "approve": approve,
    "resume": resume,
    "pause": pause,
    "abort": abort,
}
_CURSOR = re.compile(r"[0-9]{1,10}")
_LINES = re.compile(r"\r\n|\r|\n")
_HEALTH_EVENTS = 1000  # health_failed events read to explain the failed devices shown


# --- what the pages show ---------------------------------------------------------------------


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


def _allowed(state: RolloutState) -> tuple[str, ...]:
    """The actions the engine accepts in ``state``, tried on it (the transitions are pure)."""
    allowed = []
    for name, transition in _TRANSITIONS.items():
        try:
            transition(state)
        except RolloutError:
            continue
        allowed.append(name)
    return tuple(allowed)


def _policy(rollout: Rollout) -> RolloutPolicy | None:
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
        batches=_batches(_policy(rollout), state, counts, state.counters.selected),
        failed=[_failed_device(d, health.get(d.id)) for d in failed],
        failed_count=failed_count,
        actions=_allowed(state),
    )


def _signature(db: Database, rollout_id: int) -> tuple[Any, ...] | None:
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


def _live(db: Database, rollout_id: int) -> Live | None:
    with db.sessions() as session:
        return read_live(session, rollout_id)


def _policy_facts(policy: RolloutPolicy | None) -> list[tuple[str, str]]:
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


# --- the list ----------------------------------------------------------------------------------


def _status(raw: str) -> Status | None:
    if not raw:
        return None
    try:
        return Status(raw)
    except ValueError:
        known = ", ".join(s.value for s in Status)
        raise PageError(
            400, "Bad filter", f"status: {raw!r} is not a rollout status; expected one of {known}"
        ) from None


@router.get("/rollouts")
def rollouts_page(
    request: Request,
    caller: ViewerPage,
    session: SessionDep,
    status: Annotated[str, Query(max_length=32, pattern=TEXT)] = "",
    fleet: Annotated[str, Query(max_length=63, pattern=TEXT)] = "",
    before: Annotated[str, Query(max_length=16)] = "",
) -> HTMLResponse:
    """Rollouts newest first, filtered by status and fleet, :data:`PAGE` at a time."""
    wanted, cursor = _status(status), before_cursor(before, "a rollout")
    query = select(Rollout)
    if fleet:
        query = query.join(Rollout.fleet).where(Fleet.name == fleet)
    if wanted is not None:
        query = query.where(Rollout.status == wanted.value)
    rows, next_cursor = newest_first(session, query, Rollout.id, PAGE, cursor)
    fleets = session.scalars(select(Fleet.name).order_by(Fleet.name)).all()
    return render(
        request,
        "rollouts.html",
        caller=caller,
        section="rollouts",
        rollouts=[rollout_public(r) for r in rows],
        params={"status": status, "fleet": fleet},
        statuses=[s.value for s in Status],
        fleets=fleets,
        before=cursor,
        next_before=next_cursor,
        page_size=PAGE,
    )


# --- one rollout ------------------------------------------------------------------------------


def _missing(rollout_id: int) -> PageError:
    return PageError(
        404, "No such rollout", f"there is no rollout {rollout_id}; the rollouts page lists them"
    )


@router.get("/rollouts/{rollout_id}")
def rollout_page(
    request: Request, rollout_id: RolloutPath, caller: ViewerPage, session: SessionDep
) -> HTMLResponse:
    """One rollout: its release and policy, and the live part (see the module docstring)."""
    rollout = session.get(Rollout, rollout_id)
    live = None if rollout is None else read_live(session, rollout_id)
    if rollout is None or live is None:
        raise _missing(rollout_id)
    return render(
        request,
        "rollout.html",
        caller=caller,
        section="rollouts",
        live=live,
        policy=_policy_facts(_policy(rollout)),
        streamed=False,
    )


def sse_message(event: str, data: str) -> str:
    """One server-sent event: ``event: <event>`` and each line of ``data`` as a ``data:`` line.

    Lines are split at CR, LF and CRLF (the only line ends of the event-stream format), so no
    text in ``data`` can end the event early or forge another field.
    """
    lines = "".join(f"data: {line}\n" for line in _LINES.split(data))
    return f"event: {event}\n{lines}\n"


async def _progress(
    request: Request, caller: WebCaller, rollout_id: int, first: Live, seen: tuple[Any, ...]
) -> AsyncIterator[str]:
    """The events of a stream (see the module docstring); ``seen`` was read before ``first``."""
    db: Database = request.app.state.db
    started = time.monotonic()
    html = fragment(request, "_rollout_live.html", caller=caller, live=first, streamed=True)
    yield "retry: 2000\n" + sse_message("progress", html)
    last_html, last_sent = html, time.monotonic()
    while time.monotonic() - started < STREAM_SECONDS:
        await asyncio.sleep(POLL_SECONDS)
        if await request.is_disconnected():
            return
        signature = await run_in_threadpool(_signature, db, rollout_id)
        if signature is None:
            return  # the rollout is gone (its fleet was deleted): nothing more to show
        if signature != seen:
            seen = signature
            live = await run_in_threadpool(_live, db, rollout_id)
            if live is None:
                return
            html = fragment(request, "_rollout_live.html", caller=caller, live=live, streamed=True)
            if html != last_html:
                yield sse_message("progress", html)
                last_html, last_sent = html, time.monotonic()
                continue
        if time.monotonic() - last_sent >= KEEPALIVE_SECONDS:
            if await run_in_threadpool(current, request) is None:
                return  # logged out, expired or revoked meanwhile
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()


@router.get("/rollouts/{rollout_id}/stream")
async def rollout_stream(
    request: Request, rollout_id: RolloutPath, caller: ViewerPage
) -> StreamingResponse:
    """The live part of a rollout's page as server-sent ``progress`` events."""
    db: Database = request.app.state.db
    seen = await run_in_threadpool(_signature, db, rollout_id)  # before: a change meanwhile shows
    first = await run_in_threadpool(_live, db, rollout_id)
    if seen is None or first is None:
        raise _missing(rollout_id)
    headers = {**HEADERS, "X-Accel-Buffering": "no"}
    return StreamingResponse(
        _progress(request, caller, rollout_id, first, seen),
        media_type="text/event-stream",
        headers=headers,
    )


# --- the actions --------------------------------------------------------------------------------


def _reason(fields: dict[str, str]) -> str | None:
    reason = fields.get("reason", "").strip()
    if len(reason) > MAX_REASON or "\x00" in reason:
        raise PageError(400, "Bad form", f"reason: at most {MAX_REASON} characters of text, please")
    return reason or None


def _apply(
    request: Request, caller: WebCaller, rollout_id: int, action: str, reason: str | None
) -> None:
    transition: Callable[[RolloutState], RolloutState]
    if action == "pause":
        transition = partial(pause, reason=reason or f"paused by {caller.actor}")
    elif action == "abort":
        transition = partial(abort, reason=reason or f"aborted by {caller.actor}")
    else:
        transition, reason = _TRANSITIONS[action], None
    now = request.app.state.clock()
    with request.app.state.db.sessions() as session:
        try:
            act(request, session, caller, now, rollout_id, action, transition, reason)
        except ApiError as e:
            if e.status == 404:
                raise _missing(rollout_id) from None
            raise PageError(e.status, f"Cannot {action} rollout {rollout_id}", str(e)) from None


@router.post("/rollouts/{rollout_id}/{action}")
async def rollout_action(
    request: Request, rollout_id: RolloutPath, action: str, form: AdminFormDep
) -> RedirectResponse:
    """An admin's pause, resume, approve or abort; back to the rollout's page with 303."""
    if action not in _TRANSITIONS:
        raise PageError(
            404, "No such action", f"{action!r}: a rollout can pause, resume, approve or abort"
        )
    reason = _reason(form.fields)
    await run_in_threadpool(_apply, request, form.caller, rollout_id, action, reason)
    return RedirectResponse(f"/rollouts/{rollout_id}", status_code=303)
