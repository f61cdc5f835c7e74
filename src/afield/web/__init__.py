"""The operator dashboard: the fleet manager's pages at ``/``, server-rendered, live where it helps.

:func:`install` adds the dashboard to the fleet manager's app (:func:`afield.fleet.app.create_app`
calls it): the pages, their static files at ``/static/`` (the stylesheet, a small script and the
vendored htmx 2, its SSE extension and Chart.js 4: see ``static/vendor/README.md``; nothing is
fetched from a CDN), and the error handling that answers a browser with a page.

Pages (one module each; every one needs a login, :mod:`afield.web._session`):

* ``/``: overview (:mod:`afield.web.overview`): devices by status, versions per image as a
  chart, rollouts in progress, the latest events;
* ``/devices`` and ``/devices/{id}`` (:mod:`afield.web.devices`);
* ``/releases`` (:mod:`afield.web.releases`): versions per image with their package diff, size,
  published deltas and how many devices run each;
* ``/rollouts`` and ``/rollouts/{id}`` (:mod:`afield.web.rollouts`): live progress per batch
  pushed as server-sent events, why a rollout paused, and pause / resume / abort for admins;
* ``/events`` (:mod:`afield.web.events`): the audit trail, filterable;
* ``/login`` and ``/logout`` (:mod:`afield.web.login`).

Pages are readable without JavaScript: the chart has a table beside it, the live rollout page
shows the state it was rendered with (and reloads give the news), forms are plain forms. With
JavaScript, htmx swaps the live parts in place; there are no full-page reloads.

Errors: a request the dashboard refuses (:class:`~afield.web._session.PageError`: an unknown
id, a malformed filter, a stale form, a viewer's POST) gets an HTML page saying what would be
accepted, with its status code; so do unknown paths and bad query parameters outside the API.
Paths of the API, the repository, FDO, ``/metrics``, ``/healthz`` and ``/docs`` keep their JSON
answers.

What it leaves to others: the data (:mod:`afield.fleet`: models, the rollout engine and its
actions), TLS (a reverse proxy).
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

from afield.web import devices, events, login, overview, releases, rollouts
from afield.web._render import error_page
from afield.web._session import LoginRequired, PageError, current

__all__ = ["NOT_DASHBOARD", "install", "is_dashboard"]

NOT_DASHBOARD = ("/api/", "/repo", "/fdo/", "/metrics", "/healthz", "/docs", "/openapi.json")
"""Path prefixes that are not the dashboard's: their errors stay JSON."""


def is_dashboard(path: str) -> bool:
    """Whether ``path`` is the dashboard's (errors answered with pages) rather than the API's."""
    return not path.startswith(NOT_DASHBOARD)


def _validation_message(exc: RequestValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("query", "path"))
        problems.append(f"{where or 'request'}: {error.get('msg', 'is not valid')}")
    return "; ".join(problems) or "the request is not valid"


def install(app: FastAPI) -> None:
    """Add the dashboard's pages, static files and HTML error pages to ``app``."""
    for module in (login, overview, devices, releases, rollouts, events):
        app.include_router(module.router, include_in_schema=False)
    app.mount("/static", StaticFiles(packages=[("afield.web", "static")]), name="static")

    json_http = app.exception_handlers[StarletteHTTPException]
    json_validation = app.exception_handlers[RequestValidationError]

    async def page_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, PageError)  # noqa: S101  # registered for it
        return error_page(request, exc.status, exc.title, exc.message, current(request))

    async def login_required(request: Request, exc: Exception) -> Response:
        if request.headers.get("hx-request") or request.headers.get("accept") == (
            "text/event-stream"
        ):
            return Response("log in again", status_code=401, media_type="text/plain")
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='/')}", status_code=303)

    async def http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)  # noqa: S101  # registered for it
        if not is_dashboard(request.url.path):
            answer: Response = await json_http(request, exc)  # type: ignore[misc]
            return answer
        if exc.status_code == 404:
            message = f"{request.url.path}: there is no such page; the menu above lists them"
            return error_page(request, 404, "Not found", message, current(request))
        if exc.status_code == 405:
            message = f"{request.method} is not accepted at {request.url.path}"
            return error_page(request, 405, "Not allowed", message, current(request))
        return error_page(request, exc.status_code, "Refused", str(exc.detail), current(request))

    async def validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)  # noqa: S101  # registered for it
        if not is_dashboard(request.url.path):
            answer: Response = await json_validation(request, exc)  # type: ignore[misc]
            return answer
        message = _validation_message(exc)
        return error_page(request, 400, "Bad request", message, current(request))

    app.add_exception_handler(PageError, page_error)
    app.add_exception_handler(LoginRequired, login_required)
    app.add_exception_handler(StarletteHTTPException, http)
    app.add_exception_handler(RequestValidationError, validation)
