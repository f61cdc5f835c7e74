"""Templates and the small helpers every dashboard page shares.

One Jinja2 environment loads the package's ``templates/``, with autoescaping on for every
template and ``StrictUndefined`` (a misspelt variable is an error in tests, not an empty cell).
:func:`render` answers a page: it adds what ``base.html`` needs (the caller, the CSRF secret
for forms, the active section, the time) and the security headers every page carries:

* a Content-Security-Policy allowing scripts, styles and connections from this site only, no
  framing, forms posting to this site only (the vendored htmx, htmx SSE and Chart.js are served
  from ``/static/vendor/``; nothing comes from a CDN);
* ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: same-origin``,
  ``Cache-Control: no-store`` (pages show live state and who is logged in).

Filters: ``ago`` (``3 min ago``), ``when`` (``2026-12-03 05:12 UTC``), ``size`` (``2.1 MB``),
``short`` (a commit's first 12 digits). :func:`link` builds the URL of the page with some query
parameters changed (filters and cursors keep the others); :func:`before_cursor` reads the
``before=`` cursor of a newest-first list; :func:`version_order` sorts versions as people read
them. :func:`error_page` is the page of a
:class:`~afield.web._session.PageError`.

What it leaves to others: the pages (one module each), sessions (:mod:`afield.web._session`).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined

from afield._sql import as_utc
from afield.fleet.api.deps import MAX_ID
from afield.web._session import PageError, WebCaller

__all__ = [
    "HEADERS",
    "before_cursor",
    "environment",
    "error_page",
    "fragment",
    "link",
    "render",
    "version_order",
]

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def _aware(value: datetime.datetime | float | None) -> datetime.datetime | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return datetime.datetime.fromtimestamp(value, datetime.UTC)
    return as_utc(value)


def _ago(value: datetime.datetime | float | None, now: datetime.datetime) -> str:
    moment = _aware(value)
    if moment is None:
        return "never"
    seconds = (now - moment).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    if seconds < 45:
        text = f"{int(seconds)} s"
    elif seconds < 3600:
        text = f"{round(seconds / 60)} min"
    elif seconds < 86400 * 2:
        text = f"{round(seconds / 3600)} h"
    else:
        text = f"{round(seconds / 86400)} days"
    return f"in {text}" if future else f"{text} ago"


def _when(value: datetime.datetime | float | None) -> str:
    moment = _aware(value)
    return "—" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _size(value: int | None) -> str:
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"  # pragma: no cover  # the loop returns at GB


def _short(value: str | None) -> str:
    return "—" if not value else value[:12]


def link(path: str, params: Mapping[str, str | Sequence[str] | None], **changes: Any) -> str:
    """``path`` with ``params`` (a page's filters), some replaced by ``changes`` (None drops)."""
    merged: dict[str, Any] = {k: v for k, v in params.items() if v not in (None, "", [])}
    for key, value in changes.items():
        if value in (None, "", []):
            merged.pop(key, None)
        else:
            merged[key] = value
    query = urlencode(merged, doseq=True)
    return f"{path}?{query}" if query else path


_ID = re.compile(r"[0-9]{1,10}")
_PARTS = re.compile(r"(\d+)")


def version_order(version: str | None) -> tuple[Any, ...]:
    """A sort key that puts ``1.10`` after ``1.9`` (numbers compare as numbers, the rest as
    text) and no version (None) last."""
    if version is None:
        return ((2,),)
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in _PARTS.split(version) if part
    )


def before_cursor(raw: str, what: str) -> int | None:
    """The ``before=`` cursor of a newest-first page: the id of a ``what`` (None: first page).

    Raises:
        PageError: 400 when ``raw`` is not an id a database could hold.
    """
    if not raw:
        return None
    if not _ID.fullmatch(raw) or not 1 <= int(raw) <= MAX_ID:
        raise PageError(
            400, "Bad filter", f"before: {raw!r} is not {what} id; expected a number from 1"
        )
    return int(raw)


def environment() -> Environment:
    """The dashboard's Jinja2 environment (autoescaped, strict)."""
    env = Environment(
        loader=PackageLoader("afield.web", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["size"] = _size
    env.filters["short"] = _short
    env.globals["link"] = link
    return env


_ENV = environment()


def render(
    request: Request,
    template: str,
    *,
    caller: WebCaller | None,
    section: str = "",
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    """The page ``template`` filled with ``context``, with the dashboard's headers."""
    now: datetime.datetime = request.app.state.clock()
    html = _ENV.get_template(template).render(
        request=request,
        caller=caller,
        section=section,
        now=now,
        ago=lambda value: _ago(value, now),
        **context,
    )
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def fragment(request: Request, template: str, **context: Any) -> str:
    """A part of a page as HTML text (what a server-sent event carries)."""
    now: datetime.datetime = request.app.state.clock()
    return _ENV.get_template(template).render(
        request=request, now=now, ago=lambda value: _ago(value, now), **context
    )


def error_page(
    request: Request, status: int, title: str, message: str, caller: WebCaller | None = None
) -> HTMLResponse:
    """The page of a refused request: what went wrong and what would be accepted."""
    return render(
        request,
        "error.html",
        caller=caller,
        status=status,
        code=status,
        title=title,
        message=message,
    )
