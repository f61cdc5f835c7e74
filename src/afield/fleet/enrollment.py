"""One-time enrollment tokens: made for a device (by the FDO owner or an operator), spent once.

A token is ``afield_enroll_`` and 32 random bytes in URL-safe base64; only its SHA-256 is stored
(``enrollment_tokens``), like the admin tokens. :func:`new_tokens` makes them (an operator,
``POST /api/v1/enrollment-tokens``); :class:`TokenIssuer` is the FDO owner's ``issue_token``
hook (:class:`afield.fdo.server.handoff.HandoffProvider`): it stores a token for the device's
new GUID, so the device that onboarded gets an identity named after it.

:func:`find_token` and :func:`spend_token` are the two halves of enrolling: find says whether a
token may be used (unknown, used and expired tokens are refused with the reason), spend marks it
used with a conditional update, so of two requests racing with one token exactly one wins.

What it leaves to others: issuing the certificate and creating the device
(:mod:`afield.fleet.api.device`).
"""

from __future__ import annotations

import datetime
import hashlib
import secrets
from collections.abc import Callable, Mapping

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from afield._sql import as_utc
from afield.errors import FleetError
from afield.fleet.db import Database
from afield.fleet.models import EnrollmentToken, utcnow

__all__ = [
    "DEFAULT_TTL",
    "EnrollmentError",
    "TokenIssuer",
    "find_token",
    "new_tokens",
    "spend_token",
    "token_digest",
]

PREFIX = "afield_enroll_"
DEFAULT_TTL = datetime.timedelta(days=7)


class EnrollmentError(FleetError):
    """A token that cannot enroll a device: unknown, used or expired (the message says which)."""

    user_error = True


def token_digest(token: str) -> str:
    """The SHA-256 (hex) that stands for ``token`` in the database."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_tokens(
    session: Session,
    *,
    count: int,
    ttl: datetime.timedelta,
    labels: Mapping[str, str],
    actor: str,
    now: datetime.datetime,
    guid: str | None = None,
) -> list[str]:
    """Make ``count`` tokens valid for ``ttl``; the caller commits. Only digests are stored."""
    tokens = [PREFIX + secrets.token_urlsafe(32) for _ in range(count)]
    session.add_all(
        EnrollmentToken(
            token_sha256=token_digest(token),
            guid=guid,
            labels=dict(labels),
            created_by=actor,
            created=now,
            expires=now + ttl,
        )
        for token in tokens
    )
    return tokens


def find_token(session: Session, token: str, now: datetime.datetime) -> EnrollmentToken:
    """The stored token ``token`` stands for, if it can still be used.

    Raises:
        EnrollmentError: no such token, it was used, or it expired.
    """
    row = session.scalars(
        select(EnrollmentToken).where(EnrollmentToken.token_sha256 == token_digest(token))
    ).first()
    if row is None:
        raise EnrollmentError("token: unknown enrollment token; ask the operator for a new one")
    if row.used_at is not None:
        raise EnrollmentError("token: already used; an enrollment token enrolls one device once")
    if as_utc(row.expires) <= now:
        raise EnrollmentError(
            f"token: expired at {as_utc(row.expires).isoformat()}; ask the operator for a new one"
        )
    return row


def spend_token(
    session: Session, row: EnrollmentToken, device_id: str, now: datetime.datetime
) -> None:
    """Mark ``row`` used by ``device_id``, unless another request spent it first.

    Raises:
        EnrollmentError: the token was used meanwhile.
    """
    spent = session.execute(
        update(EnrollmentToken)
        .where(EnrollmentToken.id == row.id, EnrollmentToken.used_at.is_(None))
        .values(used_at=now, device_id=device_id)
        .execution_options(synchronize_session=False)
    )
    if getattr(spent, "rowcount", 0) != 1:
        raise EnrollmentError("token: already used; an enrollment token enrolls one device once")


class TokenIssuer:
    """The FDO owner's ``issue_token`` hook: a stored token per onboarded device GUID."""

    def __init__(
        self,
        db: Database,
        *,
        ttl: datetime.timedelta = DEFAULT_TTL,
        labels: Mapping[str, str] | None = None,
        clock: Callable[[], datetime.datetime] = utcnow,
    ) -> None:
        self.db = db
        self.ttl = ttl
        self.labels = dict(labels or {})
        self.clock = clock

    def __call__(self, guid: object) -> str:
        """A new token for the device that will have ``guid`` after TO2."""
        with self.db.transaction() as session:
            (token,) = new_tokens(
                session,
                count=1,
                ttl=self.ttl,
                labels=self.labels,
                actor="fdo:owner",
                now=self.clock(),
                guid=str(guid),
            )
        return token
