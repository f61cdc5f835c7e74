"""``/login`` and ``/logout``: trade an API token for a session cookie, and end the session.

``GET /login?next=/devices`` shows the form; ``POST /login`` with ``token`` (and ``next``)
checks the token (:func:`afield.web._session.login`), sets the cookie and sends the browser on
with 303 to ``next`` if it is a path on this site, else to the overview. A bad token gets the
form again, with 401 and what was wrong. ``POST /logout`` (a form with the session's CSRF field)
removes the session and the cookie and sends the browser to the login page.

What it leaves to others: what a session is and the form checks (:mod:`afield.web._session`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from afield.web._render import render
from afield.web._session import (
    COOKIE,
    PageError,
    check_csrf,
    current,
    login,
    logout,
    read_form,
    safe_next,
    set_cookie,
)

__all__ = ["router"]

router = APIRouter()


@router.get("/login")
async def login_form(
    request: Request, next: Annotated[str, Query(max_length=2048)] = "/"
) -> Response:
    """The login form (or, for a live session, straight on to ``next``)."""
    if await run_in_threadpool(current, request) is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return render(request, "login.html", caller=None, next=safe_next(next), message="")


@router.post("/login")
async def login_submit(request: Request) -> Response:
    """Check the token, start a session, go on to ``next``."""
    _, fields = await read_form(request, admin=False)
    target = safe_next(fields.get("next"))
    token = fields.get("token", "")
    now = request.app.state.clock()
    try:
        value, caller = await run_in_threadpool(login, request.app.state.db, token, now)
    except PageError as e:
        return render(
            request, "login.html", caller=None, status=e.status, next=target, message=e.message
        )
    request.state.actor = caller.actor
    response = RedirectResponse(target, status_code=303)
    set_cookie(response, request, value)
    return response


@router.post("/logout")
async def logout_submit(request: Request) -> Response:
    """End this session (a form of any logged-in caller, viewer or admin)."""
    _, fields = await read_form(request, admin=False)
    caller = await run_in_threadpool(current, request)
    if caller is not None:
        check_csrf(caller, fields)
        await run_in_threadpool(logout, request.app.state.db, request.cookies.get(COOKIE, ""))
    response = RedirectResponse("/login", status_code=303)
    set_cookie(response, request, None)
    return response
