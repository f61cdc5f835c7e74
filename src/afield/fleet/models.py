"""The fleet manager's tables (SQLAlchemy 2, typed ``Mapped[...]``) and the conversions around them.

Ten tables: ``devices`` (identity, what each device runs and reported last, the release and
the applications it should run, and where it is in a rollout), ``fleets`` (a label selector, a
target release, a rollout policy), ``applications`` (Kubernetes manifests set on a fleet or on
one device), ``releases`` (image, arch, version, commit), ``rollouts`` (a fleet moving to a
release: the engine's :class:`~afield.fleet.rollout.RolloutState` as JSON beside its status),
``events`` (the audit trail), ``api_tokens`` (admin and viewer bearer tokens, stored as SHA-256
digests only), ``web_sessions`` (dashboard logins made with those tokens),
``enrollment_tokens`` (one-time tokens a device trades for its certificate, also digests only)
and ``certificate_authorities`` (the CA that certifies device keys).
Constraint and index names follow one naming convention, so Alembic migrations and PostgreSQL
agree on them.

Times are stored as timezone-aware ``DateTime`` and read back through :func:`as_utc` (SQLite
keeps no zone). The rollout engine counts seconds since the epoch instead; the conversion
happens in one place, :func:`device_view`, and :func:`state_to_json` / :func:`state_from_json`
carry a rollout's state in and out of its JSON column.

:func:`device_status` derives the summary status (Online, Updating, Degraded, RolledBack,
Offline) a device list shows, from the columns the device API fills in;
:func:`status_expression` is the same rules as SQL, so a dashboard counts and filters a large
fleet by status in the database instead of loading every row.

What it leaves to others: the schema's history (:mod:`afield.fleet.migrations`, whose first
revision creates exactly these tables), sessions and engines (:mod:`afield.fleet.db`), filling
in device reports and rollout phases (the device API and the rollout runner, later slices).
"""

from __future__ import annotations

import datetime
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    ColumnElement,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    case,
    or_,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from afield._sql import as_utc
from afield.fleet.rollout import Cause, Counters, DeviceView, Phase, RolloutState, Status

__all__ = [
    "ApiToken",
    "Application",
    "Base",
    "CertificateAuthority",
    "Device",
    "DeviceFields",
    "DeviceStatus",
    "EnrollmentToken",
    "Event",
    "Fleet",
    "Release",
    "Rollout",
    "WebSession",
    "device_status",
    "device_view",
    "metadata",
    "state_from_json",
    "state_to_json",
    "status_expression",
    "utcnow",
]

_NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime.datetime:
    """The current time, timezone-aware in UTC: what every ``created``/``updated`` gets."""
    return datetime.datetime.now(datetime.UTC)


class Base(DeclarativeBase):
    """The declarative base of every fleet-manager table."""

    metadata = MetaData(naming_convention=_NAMING)
    type_annotation_map = {  # noqa: RUF012  # SQLAlchemy reads this class attribute
        datetime.datetime: DateTime(timezone=True),
        dict[str, Any]: JSON,
    }


class Release(Base):
    """A published release: one OSTree commit of ``image`` for ``arch``, named ``version``."""

    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("image", "arch", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image: Mapped[str] = mapped_column(String(64))
    arch: Mapped[str] = mapped_column(String(32))
    version: Mapped[str] = mapped_column(String(64))
    commit: Mapped[str] = mapped_column(String(64), index=True)
    created: Mapped[datetime.datetime]


class Device(Base):
    """A device the fleet manager knows, what it reported last and where it is in a rollout.

    ``current_*`` is what the device runs, ``pending_version`` a deployment staged for the next
    boot, ``rollback_version`` the deployment it would fall back to. ``health_ok`` is the
    result of its last health checks (None: none reported), ``updating`` whether it reported an
    update in progress, ``rolled_back_at`` when it last fell back (cleared once an update
    succeeds). ``rollout_id``, ``phase``, ``batch``, ``assigned_at`` and ``booted_at`` mirror
    :class:`~afield.fleet.rollout.DeviceView` for the rollout named by ``rollout_id``;
    ``desired_release_id`` is the release the device is told to run (what the rollout runner
    assigned last). ``public_key`` (PEM) is the key its certificate certifies: every device
    request is signed with it. ``report`` is the device's last status report as it sent it
    (its ``applications`` kept from an earlier report when the last one did not say).
    ``applications`` is the JSON text of the applications the device should run, exactly as the
    desired state carries them (:mod:`afield.fleet.applications` keeps it resolved from the
    fleets' and the device's own applications; None: none), so a poll reads it as it is.
    """

    __tablename__ = "devices"
    # Versions per image (the dashboard's overview) read this index alone, never the rows.
    __table_args__ = (Index(None, "image", "current_version"),)

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    current_version: Mapped[str | None] = mapped_column(String(64), index=True)
    current_commit: Mapped[str | None] = mapped_column(String(64), index=True)
    pending_version: Mapped[str | None] = mapped_column(String(64))
    rollback_version: Mapped[str | None] = mapped_column(String(64))
    last_seen: Mapped[datetime.datetime | None] = mapped_column(index=True)
    health_ok: Mapped[bool | None] = mapped_column(Boolean)
    updating: Mapped[bool] = mapped_column(Boolean, default=False)
    rolled_back_at: Mapped[datetime.datetime | None]
    rollout_id: Mapped[int | None] = mapped_column(
        ForeignKey("rollouts.id", ondelete="SET NULL"), index=True
    )
    phase: Mapped[str] = mapped_column(String(16), default=Phase.IDLE.value)
    batch: Mapped[int | None] = mapped_column(Integer)
    assigned_at: Mapped[datetime.datetime | None]
    booted_at: Mapped[datetime.datetime | None]
    created: Mapped[datetime.datetime] = mapped_column(default=utcnow)
    guid: Mapped[str | None] = mapped_column(String(36))
    image: Mapped[str | None] = mapped_column(String(64))
    arch: Mapped[str | None] = mapped_column(String(32))
    public_key: Mapped[str | None] = mapped_column(Text)
    cert_serial: Mapped[str | None] = mapped_column(String(40))
    enrolled_at: Mapped[datetime.datetime | None]
    desired_release_id: Mapped[int | None] = mapped_column(
        ForeignKey("releases.id", ondelete="SET NULL"), index=True
    )
    report: Mapped[dict[str, Any]] = mapped_column(default=dict)
    applications: Mapped[str | None] = mapped_column(Text)

    desired_release: Mapped[Release | None] = relationship(lazy="joined")


class Fleet(Base):
    """Devices chosen by a label selector, the release they should run, and how to roll it out."""

    __tablename__ = "fleets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    selector: Mapped[str] = mapped_column(Text, default="")
    target_release_id: Mapped[int | None] = mapped_column(
        ForeignKey("releases.id", ondelete="RESTRICT"), index=True
    )
    policy: Mapped[dict[str, Any]]
    created: Mapped[datetime.datetime]
    updated: Mapped[datetime.datetime]

    target_release: Mapped[Release | None] = relationship(lazy="joined")


class Application(Base):
    """Kubernetes manifests set on a fleet (every device its selector matches) or on one device.

    Exactly one of ``fleet_id`` and ``device_id`` is set; names are unique per owner. ``digest``
    is the SHA-256 of ``manifests`` (the wire :class:`~afield.fleet.protocol.Application`'s),
    ``images`` the images they use, ``updated_by`` the actor of the last write.
    """

    __tablename__ = "applications"
    __table_args__ = (
        UniqueConstraint("fleet_id", "name"),
        UniqueConstraint("device_id", "name"),
        CheckConstraint("(fleet_id IS NULL) <> (device_id IS NULL)", name="one_owner"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fleet_id: Mapped[int | None] = mapped_column(ForeignKey("fleets.id", ondelete="CASCADE"))
    device_id: Mapped[str | None] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    manifests: Mapped[str] = mapped_column(Text)
    images: Mapped[list[str]] = mapped_column(JSON)
    digest: Mapped[str] = mapped_column(String(64))
    created: Mapped[datetime.datetime]
    updated: Mapped[datetime.datetime]
    updated_by: Mapped[str] = mapped_column(String(200))


class Rollout(Base):
    """One fleet moving to one release; ``state`` is the engine's RolloutState as JSON.

    ``revision`` counts writes of ``state``: the rollout runner writes only if it is still the
    one it read, so an operator's pause never gets overwritten by a step computed before it.
    """

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fleet_id: Mapped[int] = mapped_column(ForeignKey("fleets.id", ondelete="CASCADE"), index=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id", ondelete="RESTRICT"))
    status: Mapped[str] = mapped_column(String(20), index=True)
    state: Mapped[dict[str, Any]]
    created: Mapped[datetime.datetime]
    updated: Mapped[datetime.datetime]
    revision: Mapped[int] = mapped_column(Integer, default=0)

    fleet: Mapped[Fleet] = relationship(lazy="joined")
    release: Mapped[Release] = relationship(lazy="joined")


class Event(Base):
    """One line of the audit trail: who (``actor``) did what (``kind``) to what (``subject``).

    ``actor`` is ``admin:<token name>``, ``device:<id>`` or ``system``.
    """

    __tablename__ = "events"
    __table_args__ = (
        Index(None, "kind", "id"),
        Index(None, "actor", "id"),
        Index(None, "subject", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[datetime.datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(255))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class ApiToken(Base):
    """A bearer token of the admin API: only its SHA-256 is kept, never the token."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created: Mapped[datetime.datetime]
    last_used: Mapped[datetime.datetime | None]
    revoked: Mapped[datetime.datetime | None]


class WebSession(Base):
    """A dashboard login: a browser that presented ``token`` and got a session cookie.

    Only the SHA-256 of the cookie's value is kept, like tokens. ``csrf`` is the secret every
    form of this session carries back (compared in constant time); ``expires`` ends it, and so
    does revoking its token (the cascade removes the row when the token is deleted).
    """

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    token_id: Mapped[int] = mapped_column(
        ForeignKey("api_tokens.id", ondelete="CASCADE"), index=True
    )
    csrf: Mapped[str] = mapped_column(String(64))
    created: Mapped[datetime.datetime]
    expires: Mapped[datetime.datetime] = mapped_column(index=True)

    token: Mapped[ApiToken] = relationship(lazy="joined")


class EnrollmentToken(Base):
    """A one-time token a device trades for its certificate: only its SHA-256 is kept.

    ``guid`` is the FDO GUID of the device the owner handed it to (None for tokens an operator
    made); ``labels`` are given to the device that uses it. ``used_at`` and ``device_id`` are
    set by the one enrollment that spends it.
    """

    __tablename__ = "enrollment_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    guid: Mapped[str | None] = mapped_column(String(36))
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_by: Mapped[str] = mapped_column(String(200))
    created: Mapped[datetime.datetime]
    expires: Mapped[datetime.datetime] = mapped_column(index=True)
    used_at: Mapped[datetime.datetime | None]
    device_id: Mapped[str | None] = mapped_column(String(128))


class CertificateAuthority(Base):
    """The CA that certifies device keys: its certificate and private key (PEM).

    One row; the first server start creates it. The key is as safe as the database.
    """

    __tablename__ = "certificate_authorities"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    certificate: Mapped[str] = mapped_column(Text)
    private_key: Mapped[str] = mapped_column(Text)
    created: Mapped[datetime.datetime]


metadata = Base.metadata
"""Every fleet-manager table: what the Alembic migrations must produce."""


# --- a device's summary status ---------------------------------------------------------------


class DeviceStatus(StrEnum):
    """A device's summary status; :func:`device_status` defines each."""

    ONLINE = "Online"
    UPDATING = "Updating"
    DEGRADED = "Degraded"
    ROLLED_BACK = "RolledBack"
    OFFLINE = "Offline"


def device_status(device: Device, now: datetime.datetime, offline_after: float) -> DeviceStatus:
    """The one place a device's summary status is decided; the first rule that holds wins.

    1. **Offline**: the device never checked in, or its last check-in (``last_seen``) is more
       than ``offline_after`` seconds before ``now`` (to the microsecond: a device seen exactly
       ``offline_after`` seconds ago is not offline). Whatever it reported before is stale, so
       this comes first.
    2. **Updating**: it checked in recently and reported an update in progress (``updating``:
       downloading, staging or rebooting into it), or has a deployment staged for its next boot
       (``pending_version``).
    3. **Degraded**: it checked in recently and its last health checks failed (``health_ok``
       is false) on the release it runs now: it is up but not well.
    4. **RolledBack**: it checked in recently, its health checks pass (or none were reported),
       and it fell back to its previous deployment (``rolled_back_at`` is set) since its last
       successful update: it is well, but not on the release it was told to run.
    5. **Online**: it checked in recently and none of the above holds.

    :func:`status_expression` states these rules in SQL and must agree with this function on
    every row (``tests/fleet/test_models_status.py`` checks it on SQLite and PostgreSQL): a
    change here is a change there.
    """
    last_seen = None if device.last_seen is None else as_utc(device.last_seen)
    if last_seen is None or last_seen < _offline_cutoff(now, offline_after):
        return DeviceStatus.OFFLINE
    if device.updating or device.pending_version is not None:
        return DeviceStatus.UPDATING
    if device.health_ok is False:
        return DeviceStatus.DEGRADED
    if device.rolled_back_at is not None:
        return DeviceStatus.ROLLED_BACK
    return DeviceStatus.ONLINE


def status_expression(now: datetime.datetime, offline_after: float) -> ColumnElement[str]:
    """:func:`device_status` as SQL over the ``devices`` columns: the status's value string.

    Counting devices by status (``GROUP BY``) or filtering them by one (``WHERE``) with it
    reads no rows into Python, which matters at 100,000 devices. The ``CASE`` tries the same
    rules in the same order, and treats NULLs as :func:`device_status` does: a ``health_ok``
    of NULL (no checks reported) is not Degraded, only false is.

    The offline cutoff is bound as a UTC time: SQLite stores times as text without a zone
    (the UTC wall time the app wrote), so a cutoff in another zone would compare its local
    wall time with UTC ones; PostgreSQL compares ``timestamptz`` values whatever the zone.

    Args:
        now: the time the status is for (timezone-aware, or naive UTC).
        offline_after: seconds without a check-in after which a device is offline.
    """
    cutoff = _offline_cutoff(now, offline_after)
    return case(
        (or_(Device.last_seen.is_(None), Device.last_seen < cutoff), DeviceStatus.OFFLINE.value),
        (
            or_(Device.updating.is_(True), Device.pending_version.is_not(None)),
            DeviceStatus.UPDATING.value,
        ),
        (Device.health_ok.is_(False), DeviceStatus.DEGRADED.value),
        (Device.rolled_back_at.is_not(None), DeviceStatus.ROLLED_BACK.value),
        else_=DeviceStatus.ONLINE.value,
    )


def _offline_cutoff(now: datetime.datetime, offline_after: float) -> datetime.datetime:
    """The last check-in time, in UTC, that is still not offline at ``now``: a device last
    seen before it is offline. Both forms of the status use it, so they round alike."""
    return as_utc(now) - datetime.timedelta(seconds=offline_after)


# --- to and from the rollout engine's values -------------------------------------------------


def _seconds(value: datetime.datetime | None) -> float | None:
    return None if value is None else as_utc(value).timestamp()


class DeviceFields(Protocol):
    """The columns :func:`device_view` reads: a :class:`Device`, or a row selecting them."""

    id: str
    labels: dict[str, Any]
    last_seen: datetime.datetime | None
    current_version: str | None
    rollout_id: int | None
    phase: str
    batch: int | None
    assigned_at: datetime.datetime | None
    booted_at: datetime.datetime | None


def device_view(device: DeviceFields, *, rollout_id: int, online: bool) -> DeviceView:
    """What the engine sees of ``device`` in rollout ``rollout_id`` (times as epoch seconds).

    ``device`` may be a plain row of those columns (the runner reads thousands: no ORM object
    is built for them). A device whose phase belongs to another rollout (or none) is idle in
    this one.
    """
    mine = device.rollout_id == rollout_id
    return DeviceView(
        device_id=device.id,
        labels={str(k): str(v) for k, v in (device.labels or {}).items()},
        online=online,
        last_seen=_seconds(device.last_seen) or 0.0,
        current=device.current_version,
        phase=Phase(device.phase) if mine else Phase.IDLE,
        batch=device.batch if mine else None,
        assigned_at=_seconds(device.assigned_at) if mine else None,
        booted_at=_seconds(device.booted_at) if mine else None,
    )


def state_to_json(state: RolloutState) -> dict[str, Any]:
    """A rollout state as the JSON stored in ``rollouts.state`` (and shown by the API)."""
    counters = state.counters
    return {
        "status": state.status.value,
        "batch": state.batch,
        "reason": state.reason,
        "cause": None if state.cause is None else state.cause.value,
        "batch_started_at": state.batch_started_at,
        "failures_accepted": state.failures_accepted,
        "gate_waived": state.gate_waived,
        "counters": {name: getattr(counters, name) for name in Counters.__dataclass_fields__},
    }


def state_from_json(data: dict[str, Any]) -> RolloutState:
    """The state :func:`state_to_json` wrote."""
    cause = data.get("cause")
    started = data.get("batch_started_at")
    return RolloutState(
        status=Status(data["status"]),
        batch=int(data["batch"]),
        reason=str(data.get("reason", "")),
        cause=None if cause is None else Cause(cause),
        batch_started_at=None if started is None else float(started),
        failures_accepted=int(data.get("failures_accepted", 0)),
        gate_waived=bool(data.get("gate_waived", False)),
        counters=Counters(**{k: int(v) for k, v in data.get("counters", {}).items()}),
    )
