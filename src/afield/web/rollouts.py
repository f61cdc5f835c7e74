"""``/rollouts`` and ``/rollouts/{id}``: rollouts, their live progress per batch, and the actions.

``GET /rollouts`` lists rollouts newest first, :data:`PAGE` at a time (keyset: ``before=<id>``
shows the rollouts older than that one), with their fleet, release, status, batch, progress
and reason; ``status`` and ``fleet`` filter it (an empty field is no filter; a status that is
not one is a 400 page naming the filter).

``GET /rollouts/{id}`` shows one rollout: its fleet, release and the fleet's policy, then the
live part (``_rollout_live.html``, :func:`afield.web._live.read_live`):

* the status, the engine's reason and cause, and the overall progress from the engine's
  counters (succeeded, in progress, failed, already up to date, of the devices selected);
* per batch of the policy: its size as written, how many devices it may have told in all by
  now, and its members by phase (one ``GROUP BY batch, phase`` over the rollout's devices),
  the current batch marked;
* why it stopped: the devices of the rollout that rolled back, failed their health checks or
  timed out (:data:`~afield.web._live.FAILED_SHOWN` of them, with how many there are), each
  with its rollback reason and the checks that failed on the rollout's commit, with their
  output: from the device's last report, else (a device that fell back reports the health of
  the release it fell back to) from its latest ``device.health_failed`` event about that commit;
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
ends the stream. The stream ends when the browser goes away, when the server stops
(``app.state.stopping``, set by :mod:`afield._serving`) or after :data:`STREAM_SECONDS` (the
browser reconnects and gets a fresh fragment). Without a session it is 401 (the
dashboard's login handling, for ``Accept: text/event-stream``).

What it leaves to others: the engine and its transitions (:mod:`afield.fleet.rollout`), storing
them (:mod:`afield.fleet.api.rollouts`), stepping rollouts (:mod:`afield.fleet.runner`),
sessions and forms (:mod:`afield.web._session`), rendering (:mod:`afield.web._render`).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from afield.fleet.api.deps import MAX_ID, TEXT, ApiError, SessionDep, newest_first
from afield.fleet.api.rollouts import act, rollout_public
from afield.fleet.db import Database
from afield.fleet.models import Fleet, Rollout
from afield.fleet.rollout import (
    RolloutState,
    Status,
    abort,
    pause,
)
from afield.web._live import (
    TRANSITIONS,
    Live,
    live_of,
    policy_facts,
    policy_of,
    read_live,
    signature,
)
from afield.web._render import HEADERS, before_cursor, fragment, render
from afield.web._session import AdminFormDep, PageError, ViewerPage, WebCaller, current

__all__ = ["PAGE", "POLL_SECONDS", "router", "sse_message"]

router = APIRouter()

PAGE = 50
"""Rollouts per page of ``/rollouts``."""
POLL_SECONDS = 1.0
"""How often a stream checks its rollout for changes."""
KEEPALIVE_SECONDS = 15.0
"""Longest silence on a stream: a comment line then, and the session is checked again."""
STREAM_SECONDS = 600.0
"""How long one stream lasts at most; the browser then reconnects."""
MAX_REASON = 500
"""Characters an operator's reason may have (as the API's)."""

RolloutPath = Annotated[int, Path(ge=1, le=MAX_ID)]
_LINES = re.compile(r"\r\n|\r|\n")


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
        policy=policy_facts(policy_of(rollout)),
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
        if await request.is_disconnected() or request.app.state.stopping.is_set():
            return
        now_seen = await run_in_threadpool(signature, db, rollout_id)
        if now_seen is None:
            return  # the rollout is gone (its fleet was deleted): nothing more to show
        if now_seen != seen:
            seen = now_seen
            live = await run_in_threadpool(live_of, db, rollout_id)
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
    seen = await run_in_threadpool(signature, db, rollout_id)  # before: a change meanwhile shows
    first = await run_in_threadpool(live_of, db, rollout_id)
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
        transition, reason = TRANSITIONS[action], None
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
    if action not in TRANSITIONS:
        raise PageError(
            404, "No such action", f"{action!r}: a rollout can pause, resume, approve or abort"
        )
    reason = _reason(form.fields)
    await run_in_threadpool(_apply, request, form.caller, rollout_id, action, reason)
    return RedirectResponse(f"/rollouts/{rollout_id}", status_code=303)
