"""The device API: enroll, long-poll the desired state, report status (and enrollment tokens).

The wire format and the request signatures are :mod:`afield.fleet.protocol`'s; this module is
the server side:

* ``POST /api/v1/device/enroll`` (no signature: the token is the credential) checks the token
  (:mod:`afield.fleet.enrollment`), the CSR, issues the certificate from the fleet's CA
  (:mod:`afield.fleet.ca`) and creates or re-keys the device record, resolving the
  applications its labels give it, all in one transaction: a refused enrollment spends
  nothing. The device id is the FDO GUID the token was made for, else a new random one.
* ``GET /api/v1/device/desired?wait=S``: the desired state with an ``ETag`` (the SHA-256 of
  the JSON answered). With a matching ``If-None-Match`` the request waits up to ``S`` seconds
  for the rollout runner or an application's write to change it
  (:class:`~afield.fleet.notify.Notifier`), then answers ``304``. A poll is a check-in,
  written behind with the others of the same second (:mod:`afield.fleet.checkins`). A poll is
  one query: the device row with its desired release and its applications, stored resolved as
  the JSON the answer carries (:mod:`afield.fleet.applications`), so the answer is spliced
  from it and no selector is evaluated.
* ``POST /api/v1/device/status``: the report updates the device's record and rollout phase
  (:func:`afield.fleet.reports.apply_report`) and rings the runner's doorbell.
* ``POST /api/v1/enrollment-tokens`` (admin): ``count`` tokens for devices that did not
  onboard through this server's FDO owner (simulators, manual installs).

Signed requests are checked in this order: the header parses, the device exists and is
enrolled, the time is within :data:`~afield.fleet.protocol.MAX_SKEW`, the signature verifies
with the device's certified key, and the nonce was not seen in that window (one process keeps
the nonces; several API processes behind a balancer should pin a device to one). A request is
about its signer only: no route takes a device id, so a device can read and change only its
own record.

What it leaves to others: what a report means (:mod:`afield.fleet.reports`), deciding who
updates (:mod:`afield.fleet.runner`), the admin view of devices (:mod:`afield.fleet.api.devices`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Select, bindparam, select
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Receive, Scope, Send

from afield.errors import AfieldError
from afield.fleet.api.deps import ApiError, NowDep, SessionDep, record
from afield.fleet.applications import refresh
from afield.fleet.auth import AccessError, AdminDep
from afield.fleet.ca import CsrError, DeviceCA
from afield.fleet.checkins import CheckIns
from afield.fleet.db import Database
from afield.fleet.enrollment import EnrollmentError, find_token, new_tokens, spend_token
from afield.fleet.models import Device, Release, Rollout
from afield.fleet.notify import Doorbell, Notifier
from afield.fleet.protocol import (
    DESIRED_PATH,
    ENROLL_PATH,
    MAX_SKEW,
    MAX_WAIT,
    STATUS_PATH,
    DesiredRelease,
    DesiredState,
    DeviceAuth,
    DeviceAuthError,
    EnrollRequest,
    EnrollResponse,
    StatusReport,
    parse_authorization,
    verify_request,
)
from afield.fleet.reports import apply_report

__all__ = [
    "FAST_ROUTE",
    "DeviceService",
    "EnrollmentTokens",
    "EnrollmentTokensCreate",
    "PollAnswer",
    "PollFastPath",
    "StatusAccepted",
    "router",
    "tokens_router",
]

router = APIRouter(tags=["device"])
tokens_router = APIRouter(prefix="/enrollment-tokens", tags=["enrollment"])
_API = "/api/v1"
_KEYS_CACHED = 100_000
_NONCES_KEPT = 1_000_000
_LABEL = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$"


class _Nonces:
    """Nonces seen in the last :data:`MAX_SKEW` seconds (twice, to cover both clock sides)."""

    def __init__(self) -> None:
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    def first_use(self, device_id: str, nonce: str, now: float) -> bool:
        with self._lock:
            while self._seen:
                key, expires = next(iter(self._seen.items()))
                if expires > now and len(self._seen) < _NONCES_KEPT:
                    break
                del self._seen[key]
            if (device_id, nonce) in self._seen:
                return False
            self._seen[(device_id, nonce)] = now + 2 * MAX_SKEW
            return True


@dataclass(frozen=True)
class _Signer:
    """An authenticated device, as the row read to authenticate it (``applications``: the
    JSON text of its applications, None for none)."""

    device_id: str
    rollout_id: int | None
    desired: DesiredRelease | None
    applications: str | None = None


@dataclass(frozen=True)
class PollAnswer:
    """What a poll answers: 200 with the desired state's JSON, or 304; both with the ETag."""

    status: int
    etag: str
    body: bytes


class DeviceService:
    """What the device routes share: the database, the CA, wake-ups and caches."""

    def __init__(
        self,
        db: Database,
        ca: DeviceCA,
        *,
        clock: Callable[[], datetime.datetime],
        repo_url: str | None,
        poll_seconds: int = 30,
    ) -> None:
        self.db = db
        self.ca = ca
        self.clock = clock
        self.repo_url = repo_url
        self.poll_seconds = poll_seconds
        self.notifier = Notifier()
        self.checkins = CheckIns(db)
        # A poll's one read needs no transaction: without one, PostgreSQL answers it in one
        # round trip instead of three (BEGIN, the query, the ROLLBACK when it is returned).
        self._reads = db.engine.execution_options(isolation_level="AUTOCOMMIT")
        self.doorbell = Doorbell()
        self._nonces = _Nonces()
        self._keys: OrderedDict[str, ec.EllipticCurvePublicKey] = OrderedDict()
        self._keys_lock = threading.Lock()

    # -- authentication ------------------------------------------------------------------------

    def _public_key(self, pem: str) -> ec.EllipticCurvePublicKey:
        with self._keys_lock:
            key = self._keys.get(pem)
            if key is not None:
                self._keys.move_to_end(pem)
                return key
        loaded = serialization.load_pem_public_key(pem.encode())
        if not isinstance(loaded, ec.EllipticCurvePublicKey):
            raise AccessError("the device's stored key is not an EC key", status=401)
        with self._keys_lock:
            self._keys[pem] = loaded
            if len(self._keys) > _KEYS_CACHED:
                self._keys.popitem(last=False)
        return loaded

    def _verify(self, auth: DeviceAuth, pem: str | None, request: _Request) -> None:
        if pem is None:
            raise AccessError(
                f"device {auth.device_id!r} is not enrolled; enroll at {ENROLL_PATH}", status=401
            )
        now = self.clock().timestamp()
        try:
            verify_request(
                self._public_key(pem), auth, request.method, request.target, request.body, now
            )
        except DeviceAuthError as e:
            raise AccessError(str(e), status=401) from None
        if not self._nonces.first_use(auth.device_id, auth.nonce, now):
            raise AccessError("Authorization: nonce already used (a replayed request)", status=401)

    def authenticate_poll(self, auth: DeviceAuth, request: _Request) -> _Signer:
        """Check a signed poll; record the check-in. Raises AccessError (401)."""
        with self._reads.connect() as connection:
            row = connection.execute(_POLL, {"device": auth.device_id}).first()
        if row is None:
            raise AccessError(f"no device {auth.device_id!r}; enroll first", status=401)
        self._verify(auth, row.public_key, request)
        self.checkins.seen(auth.device_id, self.clock())
        return _signer(auth.device_id, row)

    # -- desired state -------------------------------------------------------------------------

    def desired_state(self, signer: _Signer) -> tuple[bytes, str]:
        """The state's JSON and its ETag (the JSON's SHA-256).

        The applications are spliced in as stored (they are the wire JSON already), and left
        out when there are none, so a device without applications gets the state it got before
        they existed, ETag included.
        """
        state = DesiredState(
            device_id=signer.device_id,
            release=signer.desired,
            rollout_id=signer.rollout_id if signer.desired is not None else None,
            repo_url=self.repo_url,
            poll_seconds=self.poll_seconds,
        )
        body = state.model_dump_json(exclude=_NO_APPLICATIONS).encode()
        if signer.applications is not None:
            body = b"".join((body[:-1], b',"applications":', signer.applications.encode(), b"}"))
        digest = hashlib.sha256(body).hexdigest()[:32]
        return body, f'"{digest}"'

    def reread(self, device_id: str) -> _Signer:
        """The device's desired release now (after a wake-up; no new check-in)."""
        with self._reads.connect() as connection:
            row = connection.execute(_REREAD, {"device": device_id}).first()
        if row is None:
            raise AccessError(f"no device {device_id!r}", status=401)
        return _signer(device_id, row)

    async def poll(
        self, auth: DeviceAuth, target: str, wait: int, if_none_match: str | None
    ) -> PollAnswer:
        """A signed poll of ``target``: the desired state, or 304 once ``if_none_match`` still
        matches after waiting up to ``wait`` s for a change. Raises AccessError (401)."""
        future = self.notifier.watch(auth.device_id) if wait else None
        try:
            signed = _Request("GET", target, b"")
            signer = await run_in_threadpool(self.authenticate_poll, auth, signed)
            body, etag = self.desired_state(signer)
            if future is not None and _matches(etag, if_none_match):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(future), timeout=wait)
                signer = await run_in_threadpool(self.reread, auth.device_id)
                body, etag = self.desired_state(signer)
        finally:
            if future is not None:
                self.notifier.forget(auth.device_id, future)
        if _matches(etag, if_none_match):
            return PollAnswer(304, etag, b"")
        return PollAnswer(200, etag, body)

    # -- reports -------------------------------------------------------------------------------

    def report(self, auth: DeviceAuth, request: _Request) -> str:
        """Apply a signed status report; the device's desired ETag after it."""
        now = self.clock()
        with self.db.sessions() as session:
            device = session.get(Device, auth.device_id)
            if device is None:
                raise AccessError(f"no device {auth.device_id!r}; enroll first", status=401)
            self._verify(auth, device.public_key, request)
            try:
                report = StatusReport.model_validate_json(request.body)
            except ValidationError as e:
                raise RequestValidationError(_in_body(e.errors())) from None
            rollout_commit = None
            if device.rollout_id is not None:
                rollout = session.get(Rollout, device.rollout_id)
                rollout_commit = None if rollout is None else rollout.release.commit
            desired = _desired(device.desired_release)
            events = apply_report(
                device,
                report,
                rollout_commit=rollout_commit,
                desired_commit=None if desired is None else desired.commit,
                now=now,
            )
            actor = f"device:{device.id}"
            for event in events:
                record(
                    session,
                    actor=actor,
                    kind=event.kind,
                    subject=actor,
                    now=now,
                    details=event.details,
                )
            session.commit()
            signer = _Signer(device.id, device.rollout_id, desired, device.applications)
        if signer.rollout_id is not None:
            self.doorbell.ring()
        return self.desired_state(signer)[1]

    # -- enrollment ----------------------------------------------------------------------------

    def enroll(
        self, session: Session, body: EnrollRequest, now: datetime.datetime
    ) -> EnrollResponse:
        """Spend the token, certify the key, create or re-key the device (one transaction)."""
        try:
            token = find_token(session, body.token, now)
        except EnrollmentError as e:
            raise ApiError(401, str(e), field="token") from None
        device_id = token.guid or f"dev-{uuid.uuid4().hex}"
        try:
            issued = self.ca.issue(body.csr, device_id, now)
        except CsrError as e:
            raise ApiError(422, str(e), field="csr") from None
        try:
            spend_token(session, token, device_id, now)
        except EnrollmentError as e:
            raise ApiError(401, str(e), field="token") from None
        device = session.get(Device, device_id)
        again = device is not None
        if device is None:
            device = Device(id=device_id, labels=dict(token.labels or {}), created=now)
            session.add(device)
        device.name = body.name or device.name or ""
        device.guid = token.guid
        device.image = body.image or device.image
        device.arch = body.arch or device.arch
        device.public_key = issued.public_key
        device.cert_serial = issued.serial
        device.enrolled_at = now
        actor = f"device:{device_id}"
        record(
            session,
            actor=actor,
            kind="device.reenrolled" if again else "device.enrolled",
            subject=actor,
            now=now,
            details={"serial": issued.serial, "guid": token.guid, "token_by": token.created_by},
        )
        refreshed = refresh(session, [device_id])
        session.commit()
        self.notifier.wake(refreshed.changed)
        return EnrollResponse(
            device_id=device_id,
            certificate=issued.certificate,
            ca_certificate=self.ca.certificate_pem,
        )


@dataclass(frozen=True)
class _Request:
    """What a signature covers."""

    method: str
    target: str
    body: bytes


def _target(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def _desired(release: Release | Any | None) -> DesiredRelease | None:
    """The wire form of a release: a :class:`Release` or a :func:`_with_desired` row."""
    if release is None or release.commit is None:
        return None
    return DesiredRelease(
        image=release.image, arch=release.arch, version=release.version, commit=release.commit
    )


def _with_desired(*columns: Any) -> Select[Any]:
    """``columns`` of a device with its rollout, desired release and applications, in one query."""
    return select(
        *columns,
        Device.rollout_id,
        Device.applications,
        Release.image,
        Release.arch,
        Release.version,
        Release.commit,
    ).outerjoin(Release, Release.id == Device.desired_release_id)


# Built once: a poll is the hottest path of the server.
_NO_APPLICATIONS = {"applications"}  # spliced in by desired_state, as stored
_POLL = _with_desired(Device.public_key).where(Device.id == bindparam("device"))
_REREAD = _with_desired().where(Device.id == bindparam("device"))


def _signer(device_id: str, row: Any) -> _Signer:
    """The device of a :func:`_with_desired` row."""
    return _Signer(device_id, row.rollout_id, _desired(row), row.applications)


def _in_body(errors: list[Any]) -> list[Any]:
    return [{**error, "loc": ("body", *error.get("loc", ()))} for error in errors]


def _service(request: Request) -> DeviceService:
    service: DeviceService = request.app.state.devices
    return service


def _auth(request: Request) -> DeviceAuth:
    try:
        auth = parse_authorization(request.headers.get("authorization"))
    except DeviceAuthError as e:
        raise AccessError(str(e), status=401) from None
    request.state.actor = f"device:{auth.device_id}"
    return auth


def _matches(etag: str, if_none_match: str | None) -> bool:
    if not if_none_match:
        return False
    return etag in (tag.strip().removeprefix("W/") for tag in if_none_match.split(","))


# --- the poll's fast path ---------------------------------------------------------------------

FAST_ROUTE = "afield.route"  # the scope key naming the route a fast path answered
_WAIT = re.compile(rb"wait=([0-9]{1,4})")
_MAX_IF_NONE_MATCH = 200


class PollFastPath:
    """ASGI middleware: a well-formed device poll, answered without FastAPI's routing.

    Polls are most of what the server answers (every device, every poll interval), and
    FastAPI's routing, dependency resolution and response classes cost more server CPU than the
    poll itself (see ``benchmarks/fleet_scale.py``). This answers a ``GET`` of exactly
    :data:`DESIRED_PATH` whose query is empty or ``wait=N`` (N up to :data:`MAX_WAIT`), whose
    ``If-None-Match`` is at most 200 characters and whose ``Authorization`` parses, with the
    same :meth:`DeviceService.poll` the route calls. Everything else, including every malformed
    poll, goes on to the app, whose route checks and refuses it as ``/docs`` describes; nothing
    is spent before that choice (the nonce is checked by ``poll``).
    """

    def __init__(
        self,
        app: ASGIApp,
        service: DeviceService,
        refuse: Callable[[AfieldError], ASGIApp],
    ) -> None:
        self.app = app
        self.service = service
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        poll = _plain_poll(scope)
        if poll is None:
            await self.app(scope, receive, send)
            return
        auth, wait, if_none_match = poll
        scope[FAST_ROUTE] = DESIRED_PATH
        scope.setdefault("state", {})["actor"] = f"device:{auth.device_id}"
        query = scope["query_string"].decode("ascii")
        target = DESIRED_PATH + (f"?{query}" if query else "")
        try:
            answer = await self.service.poll(auth, target, wait, if_none_match)
        except AfieldError as e:
            await self.refuse(e)(scope, receive, send)
            return
        headers = [(b"etag", answer.etag.encode())]
        if answer.status != 304:
            headers.append((b"content-type", b"application/json"))
            headers.append((b"content-length", str(len(answer.body)).encode()))
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})


def _plain_poll(scope: Scope) -> tuple[DeviceAuth, int, str | None] | None:
    """(signer, wait, If-None-Match) of a well-formed poll; None for anything else."""
    if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] != DESIRED_PATH:
        return None
    if scope.get("root_path"):
        return None
    wait = 0
    if query := scope["query_string"]:
        match = _WAIT.fullmatch(query)
        if match is None or (wait := int(match.group(1))) > MAX_WAIT:
            return None
    authorization = if_none_match = None
    for name, value in scope["headers"]:
        if name == b"authorization" and authorization is None:
            authorization = value.decode("latin-1")
        elif name == b"if-none-match" and if_none_match is None:
            if_none_match = value.decode("latin-1")
    if if_none_match is not None and len(if_none_match) > _MAX_IF_NONE_MATCH:
        return None
    try:
        auth = parse_authorization(authorization)
    except DeviceAuthError:
        return None
    return auth, wait, if_none_match


# --- routes ----------------------------------------------------------------------------------


@router.post(ENROLL_PATH.removeprefix(_API), status_code=201, operation_id="device-enroll")
def enroll(
    request: Request, body: EnrollRequest, session: SessionDep, now: NowDep
) -> EnrollResponse:
    """Trade a one-time enrollment token and a CSR for the device's certificate."""
    return _service(request).enroll(session, body, now)


@router.get(
    DESIRED_PATH.removeprefix(_API),
    operation_id="device-desired",
    responses={304: {"description": "Unchanged (If-None-Match matched, the wait ended)."}},
)
async def desired(
    request: Request,
    wait: Annotated[
        int, Query(ge=0, le=MAX_WAIT, description="Seconds to wait for a change (long-poll).")
    ] = 0,
    if_none_match: Annotated[str | None, Header(max_length=_MAX_IF_NONE_MATCH)] = None,
) -> Response:
    """The release this device should run; waits up to ``wait`` s while it matches the ETag."""
    answer = await _service(request).poll(_auth(request), _target(request), wait, if_none_match)
    if answer.status == 304:
        return Response(status_code=304, headers={"ETag": answer.etag})
    return Response(answer.body, media_type="application/json", headers={"ETag": answer.etag})


class StatusAccepted(BaseModel):
    """The answer to a report: the device's desired-state ETag (poll when it changed)."""

    desired_etag: str


@router.post(
    STATUS_PATH.removeprefix(_API),
    operation_id="device-status",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": StatusReport.model_json_schema()}},
        }
    },
)
async def report_status(request: Request) -> StatusAccepted:
    """Report what runs, what is staged, health, update progress and rollbacks."""
    service, auth = _service(request), _auth(request)
    body = await request.body()
    signed = _Request(request.method, _target(request), body)
    etag = await run_in_threadpool(service.report, auth, signed)
    return StatusAccepted(desired_etag=etag)


class EnrollmentTokensCreate(BaseModel):
    """How many tokens, how long they last, and the labels their devices get."""

    model_config = ConfigDict(extra="forbid")

    count: Annotated[int, Field(ge=1, le=1000)] = 1
    ttl_seconds: Annotated[int, Field(ge=60, le=365 * 86400)] = 7 * 86400
    labels: Annotated[
        dict[
            Annotated[str, Field(pattern=_LABEL)],
            Annotated[str, Field(max_length=63)],
        ],
        Field(max_length=20),
    ] = {}


class EnrollmentTokens(BaseModel):
    """New tokens: shown once, stored only as digests."""

    tokens: list[str]
    expires: datetime.datetime


@tokens_router.post("", status_code=201, operation_id="enrollment-tokens-create")
def create_enrollment_tokens(
    session: SessionDep,
    caller: AdminDep,
    now: NowDep,
    body: Annotated[EnrollmentTokensCreate | None, Body()] = None,
) -> EnrollmentTokens:
    """Make one-time enrollment tokens (for devices that do not onboard through FDO here)."""
    wanted = body or EnrollmentTokensCreate()
    ttl = datetime.timedelta(seconds=wanted.ttl_seconds)
    tokens = new_tokens(
        session, count=wanted.count, ttl=ttl, labels=wanted.labels, actor=caller.actor, now=now
    )
    record(
        session,
        actor=caller.actor,
        kind="enrollment_token.create",
        subject="enrollment-tokens",
        now=now,
        details={"count": wanted.count, "ttl_seconds": wanted.ttl_seconds, "labels": wanted.labels},
    )
    session.commit()
    return EnrollmentTokens(tokens=tokens, expires=now + ttl)
