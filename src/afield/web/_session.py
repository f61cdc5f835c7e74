"""Dashboard logins: an API token traded for a session cookie, and CSRF on every form.

An operator logs in by pasting an admin or viewer token (:mod:`afield.fleet.auth` makes them)
into the login form. :func:`login` checks it like the API does, then stores a
:class:`~afield.fleet.models.WebSession`: the SHA-256 of a fresh random cookie value, the token
it was made with, a CSRF secret and an expiry (:data:`SESSION_HOURS`). The browser keeps the
value in the ``afield_session`` cookie: ``HttpOnly`` (no script reads it), ``SameSite=Strict``
(no other site's page sends it), ``Secure`` when the request came over HTTPS, ``Path=/``.

Every page asks for a :class:`WebCaller` (:func:`page_caller`); without a live session the
browser is sent to ``/login?next=<page>``. A revoked token ends its sessions at once: the
lookup joins the token and refuses a revoked one. Every state-changing form (``POST``) goes
through :func:`read_form`, which refuses, with a page saying why:

* a body that is not a small ``application/x-www-form-urlencoded`` form;
* an ``Origin`` (or, without one, a ``Referer``) naming another host than the one asked;
* a ``csrf`` field that is not this session's secret (a stale form, or a forged one);
* a viewer: only admins change anything, whatever the browser shows them.

What it leaves to others: tokens (:mod:`afield.fleet.auth`), TLS (a reverse proxy; the cookie
gets ``Secure`` when the proxy forwards ``https``), rate limiting of login attempts.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import parse_qsl, urlsplit

from fastapi import Depends, Request, Response
from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from afield._sql import as_utc
from afield.fleet.auth import AccessError, authenticate
from afield.fleet.db import Database
from afield.fleet.models import ApiToken, WebSession

__all__ = [
    "COOKIE",
    "MAX_FORM_BYTES",
    "SESSION_HOURS",
    "AdminForm",
    "AdminFormDep",
    "LoginRequired",
    "PageError",
    "ViewerPage",
    "WebCaller",
    "check_csrf",
    "current",
    "login",
    "logout",
    "page_caller",
    "read_form",
    "safe_next",
    "set_cookie",
]

COOKIE = "afield_session"
SESSION_HOURS = 12
MAX_FORM_BYTES = 8192
_MAX_FIELDS = 32


class PageError(Exception):
    """A page request refused: ``status``, a short ``title`` and a ``message`` that says what
    would be accepted. The dashboard answers it with an error page (never a traceback)."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message


class LoginRequired(Exception):
    """No live session: the browser is sent to the login page (or, for a stream, gets 401)."""


@dataclass(frozen=True)
class WebCaller:
    """Who is logged in: the token's name and role, and this session's CSRF secret."""

    name: str
    role: str
    csrf: str

    @property
    def actor(self) -> str:
        """How events name this caller (the same as the API: ``admin:<token name>``)."""
        return f"{self.role}:{self.name}"

    @property
    def admin(self) -> bool:
        """Whether this caller may change things."""
        return self.role == "admin"


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _database(request: Request) -> Database:
    database: Database = request.app.state.db
    return database


def _now(request: Request) -> datetime.datetime:
    now: datetime.datetime = request.app.state.clock()
    return now


def login(db: Database, token: str, now: datetime.datetime) -> tuple[str, WebCaller]:
    """Start a session for ``token``: the cookie value to set, and who logged in.

    Expired sessions are swept on the way, so the table holds live ones only.

    Raises:
        PageError: 401 when the token is malformed, unknown or revoked (the message says which
            kind of token is expected).
    """
    value = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    with db.sessions() as session:  # authenticate() commits last_used on its own
        try:
            caller = authenticate(session, f"Bearer {token.strip()}", write=False)
        except AccessError as e:
            raise PageError(
                401,
                "Not logged in",
                f"token: {e}; paste an admin or viewer token made by `afield admin token create`",
            ) from None
        row = session.scalars(select(ApiToken).where(ApiToken.name == caller.name)).one()
        session.execute(delete(WebSession).where(WebSession.expires < now))
        session.add(
            WebSession(
                session_sha256=_digest(value),
                token_id=row.id,
                csrf=csrf,
                created=now,
                expires=now + datetime.timedelta(hours=SESSION_HOURS),
            )
        )
        session.commit()
    return value, WebCaller(caller.name, caller.role, csrf)


def logout(db: Database, value: str) -> None:
    """End the session whose cookie is ``value`` (nothing happens if there is none)."""
    with db.transaction() as session:
        session.execute(delete(WebSession).where(WebSession.session_sha256 == _digest(value)))


def _lookup(session: Session, value: str, now: datetime.datetime) -> WebCaller | None:
    row = session.scalars(
        select(WebSession).where(WebSession.session_sha256 == _digest(value))
    ).one_or_none()
    if row is None or as_utc(row.expires) <= now or row.token.revoked is not None:
        return None
    return WebCaller(row.token.name, row.token.role, row.csrf)


def current(request: Request) -> WebCaller | None:
    """The caller of ``request``'s session cookie, or None without a live session."""
    value = request.cookies.get(COOKIE)
    if not value or len(value) > 128:
        return None
    with _database(request).sessions() as session:
        return _lookup(session, value, _now(request))


async def page_caller(request: Request) -> WebCaller:
    """Dependency of every page: the logged-in caller, else :class:`LoginRequired`."""
    caller = await run_in_threadpool(current, request)
    if caller is None:
        raise LoginRequired
    request.state.actor = caller.actor  # the access log names who asked
    return caller


ViewerPage = Annotated[WebCaller, Depends(page_caller)]


def set_cookie(response: Response, request: Request, value: str | None) -> None:
    """Set (``value``) or clear (None) the session cookie on ``response``."""
    secure = request.url.scheme == "https"
    if value is None:
        response.delete_cookie(COOKIE, path="/", secure=secure, httponly=True, samesite="strict")
        return
    response.set_cookie(
        COOKIE,
        value,
        max_age=SESSION_HOURS * 3600,
        path="/",
        secure=secure,
        httponly=True,
        samesite="strict",
    )


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path on this site, else the overview."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


def _same_origin(request: Request) -> bool:
    """Whether the form was sent by a page of this site (Origin, else Referer, else unknown)."""
    claimed = request.headers.get("origin") or request.headers.get("referer")
    if claimed is None:
        return True  # old browsers send neither; SameSite and the CSRF field still hold
    host = request.headers.get("host", "")
    return urlsplit(claimed).netloc == host


def check_csrf(caller: WebCaller, fields: dict[str, str]) -> None:
    """Refuse a form whose ``csrf`` field is not ``caller``'s session secret.

    Raises:
        PageError: 403, saying to reload the page (the form is stale or forged).
    """
    sent = fields.get("csrf", "")
    if not hmac.compare_digest(sent.encode(), caller.csrf.encode()):
        raise PageError(
            403,
            "Stale form",
            "this form was made for another session (or the session ended); reload the page "
            "and try again",
        )


async def _form_fields(request: Request) -> dict[str, str]:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise PageError(
            415,
            "Not a form",
            f"expected a form (application/x-www-form-urlencoded), got {kind or 'no type'}",
        )
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise PageError(413, "Form too large", f"a form may have {MAX_FORM_BYTES} bytes")
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=_MAX_FIELDS,
        )
    except (UnicodeDecodeError, ValueError):
        raise PageError(400, "Bad form", "the form is not UTF-8 text of a few fields") from None
    return dict(pairs)


async def read_form(
    request: Request, *, admin: bool = True
) -> tuple[WebCaller | None, dict[str, str]]:
    """The fields of a state-changing form, after the checks of the module docstring.

    ``admin`` False is for the login form (no session yet); the caller is then None.

    Raises:
        PageError: 403 for another site's form, a stale or forged CSRF field, or a viewer;
            400/413/415 for a body that is not a small form.
        LoginRequired: ``admin`` and no live session.
    """
    if not _same_origin(request):
        raise PageError(
            403, "Refused", "this form was sent from another site; use the dashboard's own page"
        )
    fields = await _form_fields(request)
    if not admin:
        return None, fields
    caller = await page_caller(request)
    check_csrf(caller, fields)
    if not caller.admin:
        raise PageError(
            403,
            "Not allowed",
            f"token {caller.name!r} is a viewer token: only admin tokens may change anything",
        )
    return caller, fields


@dataclass(frozen=True)
class AdminForm:
    """An admin's form, checked (see :func:`read_form`)."""

    caller: WebCaller
    fields: dict[str, str]


async def _admin_form(request: Request) -> AdminForm:
    caller, fields = await read_form(request)
    assert caller is not None  # noqa: S101  # read_form(admin=True) returns one or raises
    return AdminForm(caller, fields)


AdminFormDep = Annotated[AdminForm, Depends(_admin_form)]
