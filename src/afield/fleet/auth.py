"""Bearer tokens for the fleet manager's admin API, and the FastAPI dependencies that check them.

A token is ``afield_`` followed by 32 random bytes in URL-safe base64 (:func:`create_token`); it
is shown once, when it is made, and only its SHA-256 is stored. A request presents it as
``Authorization: Bearer <token>``; the server hashes what it was given and looks the digest up,
so no stored secret is ever compared byte by byte (the lookup is by a hash the caller cannot
steer, which is what makes it constant-time in effect) and a stolen database holds no usable
token.

Two roles: ``viewer`` may read (GET); ``admin`` may also write (POST, PATCH, DELETE). A missing,
malformed, unknown or revoked token is 401 (with ``WWW-Authenticate: Bearer``); a viewer that
writes is 403. :func:`viewer` and :func:`admin` are the dependencies; the routes get a
:class:`Caller`, whose :attr:`Caller.actor` (``admin:<token name>``) is what events record.

What it leaves to others: device authentication (enrollment and device certificates, a later
slice), TLS (a reverse proxy), rate limiting.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from afield._sql import as_utc
from afield.errors import FleetError
from afield.fleet.db import Database
from afield.fleet.models import ApiToken, utcnow

__all__ = [
    "ROLES",
    "AccessError",
    "Caller",
    "TokenError",
    "TokenInfo",
    "admin",
    "authenticate",
    "create_token",
    "list_tokens",
    "revoke_token",
    "viewer",
]

ROLES = ("admin", "viewer")
PREFIX = "afield_"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_TOKEN = re.compile(r"afield_[A-Za-z0-9_-]{43}")
_LAST_USED_EVERY = datetime.timedelta(minutes=1)  # write last_used at most this often


class TokenError(FleetError):
    """A token cannot be created or revoked as asked; ``field`` names the argument at fault."""

    user_error = True

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class AccessError(FleetError):
    """A request is not allowed: ``status`` is 401 (who are you?) or 403 (not with that role)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status
        self.field = "Authorization"


@dataclass(frozen=True)
class Caller:
    """Who made an authenticated request."""

    name: str
    role: str

    @property
    def actor(self) -> str:
        """How events name this caller: ``admin:<token name>`` (or ``viewer:<name>``)."""
        return f"{self.role}:{self.name}"


@dataclass(frozen=True)
class TokenInfo:
    """A stored token, without its secret."""

    name: str
    role: str
    created: datetime.datetime
    last_used: datetime.datetime | None
    revoked: datetime.datetime | None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(db: Database, name: str, role: str) -> str:
    """Make a token called ``name`` with ``role``; returns it (the only time it is seen).

    Raises:
        TokenError: ``name`` is not 1-64 letters, digits, ``.``, ``_``, ``-`` or is taken;
            ``role`` is not admin or viewer.
    """
    if not _NAME.fullmatch(name):
        raise TokenError(
            f"name {name!r}: expected 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit",
            field="name",
        )
    if role not in ROLES:
        raise TokenError(f"role {role!r}: expected one of {', '.join(ROLES)}", field="role")
    token = PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(name=name, role=role, token_sha256=_digest(token), created=utcnow())
    try:
        with db.transaction() as session:
            session.add(row)
    except IntegrityError:
        raise TokenError(f"a token named {name!r} exists already", field="name") from None
    return token


def list_tokens(db: Database) -> list[TokenInfo]:
    """Every token, revoked ones too, by name."""
    with db.sessions() as session:
        rows = session.scalars(select(ApiToken).order_by(ApiToken.name)).all()
        return [
            TokenInfo(
                row.name,
                row.role,
                as_utc(row.created),
                None if row.last_used is None else as_utc(row.last_used),
                None if row.revoked is None else as_utc(row.revoked),
            )
            for row in rows
        ]


def revoke_token(db: Database, name: str) -> bool:
    """Revoke the token ``name`` for good; False if it was revoked already.

    Raises:
        TokenError: no token is called ``name``.
    """
    with db.transaction() as session:
        row = session.scalars(select(ApiToken).where(ApiToken.name == name)).one_or_none()
        if row is None:
            raise TokenError(f"no token is named {name!r}", field="name")
        if row.revoked is not None:
            return False
        row.revoked = utcnow()
        return True


def authenticate(session: Session, authorization: str | None, *, write: bool) -> Caller:
    """The caller behind an ``Authorization`` header, allowed to read or (``write``) to write.

    Raises:
        AccessError: 401 for a missing, malformed, unknown or revoked token; 403 for a viewer
            token that writes.
    """
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AccessError("expected 'Authorization: Bearer <token>'", status=401)
    if not _TOKEN.fullmatch(token):
        raise AccessError("the bearer token is not an afield token (afield_...)", status=401)
    row = session.scalars(
        select(ApiToken).where(ApiToken.token_sha256 == _digest(token))
    ).one_or_none()
    if row is None or row.revoked is not None:
        raise AccessError("the bearer token is unknown or revoked", status=401)
    if write and row.role != "admin":
        raise AccessError(
            f"token {row.name!r} is a {row.role} token: writing needs admin", status=403
        )
    now = utcnow()
    if row.last_used is None or now - as_utc(row.last_used) >= _LAST_USED_EVERY:
        row.last_used = now
        session.commit()
    caller = Caller(row.name, row.role)
    return caller


def _database(request: Request) -> Database:
    database: Database = request.app.state.db
    return database


def _check(request: Request, *, write: bool) -> Caller:
    with _database(request).sessions() as session:
        caller = authenticate(session, request.headers.get("authorization"), write=write)
    request.state.actor = caller.actor  # the access log names who asked
    return caller


def viewer(request: Request) -> Caller:
    """Dependency: any valid token (viewer or admin); for routes that only read."""
    return _check(request, write=False)


def admin(request: Request) -> Caller:
    """Dependency: an admin token; for routes that write."""
    return _check(request, write=True)


ViewerDep = Annotated[Caller, Depends(viewer)]
AdminDep = Annotated[Caller, Depends(admin)]
