"""The FDO 1.1 HTTP binding on the server side: sessions, message order, limits, Error messages.

Every protocol message is ``POST /fdo/101/msg/{n}`` with ``Content-Type: application/cbor``;
``n`` is the message type and the ``Message-Type`` header, when a client sends it, must say the
same. The first message of a protocol (DI.AppStart, TO0.Hello, ...) opens a session: its answer
carries ``Authorization: Bearer <token>`` (32 random bytes, URL-safe base64) and every later
message of that protocol must echo it. A session knows the one message type it accepts next, so
a message out of order is refused; it ends after the protocol's last step, on any error, or when
it has been idle for ``session_ttl`` seconds.

Each failure is answered with HTTP 500 and the 5-element Error message (type 255)
``[EMErrorCode, EMPrevMsgID, EMErrorStr, EMErrorTs, EMErrorCID]``: the code the failing check
carries, the type of the message that failed, a message without secrets, the time (seconds since
the epoch) and a random correlation id that is also in the server's log line. The body limit is
checked on ``Content-Length`` and again while reading, before any byte is decoded.

Codes used by the binding itself (the specification names the codes, not these cases):

- INVALID_JWT_TOKEN (1): the ``Authorization`` header is not ``Bearer <token>``, or names no live
  session (unknown or expired). This is the code's meaning in the specification ("token is
  missing or authentication failed"), kept from the 1.0 binding's JWT.
- MESSAGE_BODY_ERROR (100): a body that is too large, is not CBOR or not the message's shape, a
  wrong ``Content-Type``, a ``Message-Type`` header that contradicts the URL, a message type this
  server does not serve.
- INVALID_MESSAGE_ERROR (101): a message out of order (fido-device-onboard-rs answers its
  sequence errors with this code too).
- INTERNAL_SERVER_ERROR (500): anything unexpected; the peer sees only "internal server error"
  and the correlation id, the log has the traceback.

Handlers are plain functions ``(message, session) -> answer`` run in a worker thread (they sign,
hash and write to a database). The text of a :class:`~afield.errors.MessageError` or
:class:`~afield.errors.ProtocolError` they raise is sent to the peer, so it must name fields and
checks, never key material; any other exception is an internal error.

Two things a handler may set on its session, for TO2: ``next_step``, the message type that must
come next instead of the protocol's following step (TO2.GetOVNextEntry once per voucher entry,
none for a voucher without entries, TO2.DeviceServiceInfo until the owner is done); and
``cipher``, the session's :class:`afield.fdo.kex.Session`, after which every request body is
decrypted before it is decoded and every answer is encrypted (TO2 from TO2.SetupDevice on). A
body that does not decrypt is refused with INVALID_MESSAGE_ERROR; Error messages are never
encrypted.

What it leaves to others: what each message means (the protocol servers, e.g.
:mod:`afield.fdo.server.manufacturer`), TLS (a reverse proxy), TO2's key exchange.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from afield.errors import MessageError, ProtocolError
from afield.fdo import kex
from afield.fdo._errors import ErrorCode
from afield.fdo.cbor import Limits
from afield.fdo.messages import MESSAGES, ErrorMessage, Message, decode_message
from afield.fdo.types import PROTOCOL_VERSION

__all__ = [
    "ACCESS_LOGGER",
    "CBOR_TYPE",
    "BindingSettings",
    "FdoEndpoint",
    "FdoMetrics",
    "Handler",
    "Protocol",
    "Session",
    "Step",
]

ACCESS_LOGGER = "afield.fdo.access"
CBOR_TYPE = "application/cbor"
_METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_MAX_ERROR_TEXT = 400

log = logging.getLogger(ACCESS_LOGGER)


@dataclass(frozen=True)
class BindingSettings:
    """Limits of the HTTP binding; like TUF's ``*_max_length`` they come from configuration.

    Args:
        max_body_bytes: the largest request body accepted, checked before decoding.
        session_ttl: seconds a session may stay idle between two messages before it expires.
        max_sessions: the most sessions open at once; a new one beyond it is refused.
        max_depth: the deepest CBOR nesting accepted in a body.
    """

    max_body_bytes: int = 64 * 1024
    session_ttl: float = 60.0
    max_sessions: int = 10_000
    max_depth: int = 16

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1 or self.max_sessions < 1 or self.max_depth < 1:
            raise ValueError("binding limits must be positive")
        if self.session_ttl <= 0:
            raise ValueError("session_ttl must be positive")

    @property
    def limits(self) -> Limits:
        """The CBOR decoding limits for one body."""
        return Limits(
            max_bytes=self.max_body_bytes,
            max_depth=self.max_depth,
            max_items=self.max_body_bytes,
            max_string=self.max_body_bytes,
        )


@dataclass
class Session:
    """One run of a protocol with one client; ``state`` is the protocol's own scratch space.

    A handler may set ``next_step`` (the message type that must come next, instead of the
    protocol's following step) and ``cipher`` (encrypt answers and decrypt requests from now on).
    """

    token: str
    protocol: Protocol
    expected: int
    expires: float
    state: dict[str, Any] = field(default_factory=dict)
    busy: bool = False
    next_step: int | None = None
    cipher: kex.Session | None = field(default=None, repr=False)


Handler = Callable[[Message, Session], Message]
"""A protocol step: the decoded message and its session in, the answer out."""


@dataclass(frozen=True)
class Step:
    """One client message a protocol accepts and the handler that answers it."""

    msg_type: int
    handler: Handler


@dataclass(frozen=True)
class Protocol:
    """A protocol's client messages in order; the first opens the session, the last ends it."""

    name: str
    steps: tuple[Step, ...]

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError(f"protocol {self.name} has no steps")
        for step in self.steps:
            if step.msg_type not in MESSAGES:
                raise ValueError(f"protocol {self.name}: {step.msg_type} is no FDO message type")

    def after(self, msg_type: int) -> int | None:
        """The message type expected after ``msg_type``; None when the protocol is done."""
        types = [s.msg_type for s in self.steps]
        index = types.index(msg_type) + 1
        return types[index] if index < len(types) else None


class FdoMetrics:
    """FDO messages received by type and Error messages sent by code (Prometheus text)."""

    def __init__(self) -> None:
        self.messages: dict[str, int] = {}
        self.errors: dict[int, int] = {}
        self.sessions = 0
        self._lock = threading.Lock()

    def received(self, msg_type: int | None) -> None:
        """Count one message; types that are no FDO message share the label ``other``."""
        label = str(msg_type) if msg_type in MESSAGES else "other"
        with self._lock:
            self.messages[label] = self.messages.get(label, 0) + 1

    def error(self, code: int) -> None:
        """Count one Error message sent with ``code``."""
        with self._lock:
            self.errors[code] = self.errors.get(code, 0) + 1

    def exposition(self) -> str:
        """The counters in the Prometheus text exposition format (version 0.0.4)."""
        with self._lock:
            messages, errors, sessions = (
                sorted(self.messages.items()),
                sorted(self.errors.items()),
                self.sessions,
            )
        lines = [
            "# HELP afield_fdo_messages_total FDO messages received, by message type.",
            "# TYPE afield_fdo_messages_total counter",
            *(f'afield_fdo_messages_total{{type="{t}"}} {n}' for t, n in messages),
            "# HELP afield_fdo_errors_total FDO Error messages sent, by error code.",
            "# TYPE afield_fdo_errors_total counter",
            *(f'afield_fdo_errors_total{{code="{c}"}} {n}' for c, n in errors),
            "# HELP afield_fdo_sessions Protocol sessions open.",
            "# TYPE afield_fdo_sessions gauge",
            f"afield_fdo_sessions {sessions}",
        ]
        return "\n".join(lines) + "\n"


class _Refused(Exception):
    """A request the binding answers with an Error message (internal to this module)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def _bearer(value: str | None) -> str | None:
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _Refused(ErrorCode.INVALID_JWT_TOKEN, "Authorization is not 'Bearer <token>'")
    return token


class FdoEndpoint:
    """The ``/fdo/101/msg/{n}`` endpoint for a set of protocols, with their sessions.

    Args:
        protocols: the protocols served; no two may share a message type.
        settings: limits and session lifetime.
        metrics: counters to update (a fresh :class:`FdoMetrics` when omitted).
        clock: monotonic seconds (tests pass a fake to expire sessions).
    """

    def __init__(
        self,
        protocols: Sequence[Protocol],
        settings: BindingSettings | None = None,
        *,
        metrics: FdoMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings or BindingSettings()
        self.metrics = metrics if metrics is not None else FdoMetrics()
        self._clock = clock
        self._limits = self.settings.limits
        self._by_type: dict[int, Protocol] = {}
        self._steps: dict[int, Step] = {}
        for protocol in protocols:
            for step in protocol.steps:
                if step.msg_type in self._by_type:
                    raise ValueError(f"message type {step.msg_type} is served twice")
                self._by_type[step.msg_type] = protocol
                self._steps[step.msg_type] = step
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def routes(self) -> list[Route]:
        """The Starlette route to mount at the application's root."""
        return [Route(f"/fdo/{PROTOCOL_VERSION}/msg/{{n}}", self.handle, methods=["POST"])]

    def app(self, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
        """A whole FDO server: the protocol endpoint, ``/healthz``, ``/metrics`` and
        ``extra_routes``; ``app.state.fdo`` is this endpoint."""

        async def healthz(request: Request) -> Response:
            return PlainTextResponse("ok\n")

        async def prometheus(request: Request) -> Response:
            return PlainTextResponse(self.metrics.exposition(), media_type=_METRICS_TYPE)

        routes = [
            *self.routes(),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
            *extra_routes,
        ]
        app = Starlette(routes=routes)
        app.state.fdo = self
        return app

    # --- sessions ------------------------------------------------------------------------

    def _sweep(self, now: float) -> None:
        for token in [t for t, s in self._sessions.items() if s.expires <= now and not s.busy]:
            del self._sessions[token]

    def _open(self, protocol: Protocol, msg_type: int, old_token: str | None) -> Session:
        now = self._clock()
        with self._lock:
            if old_token is not None:
                # A first message with a token starts over: the old session is dropped.
                self._sessions.pop(old_token, None)
            self._sweep(now)
            if len(self._sessions) >= self.settings.max_sessions:
                raise _Refused(ErrorCode.INTERNAL_SERVER_ERROR, "too many open sessions")
            session = Session(
                token=secrets.token_urlsafe(32),
                protocol=protocol,
                expected=msg_type,
                expires=now + self.settings.session_ttl,
                busy=True,
            )
            self._sessions[session.token] = session
            self.metrics.sessions = len(self._sessions)
        return session

    def _claim(self, token: str, msg_type: int, name: str) -> Session:
        now = self._clock()
        with self._lock:
            session = self._sessions.get(token)
            if session is None:
                raise _Refused(ErrorCode.INVALID_JWT_TOKEN, "unknown session token")
            if session.expires <= now and not session.busy:
                del self._sessions[token]
                self.metrics.sessions = len(self._sessions)
                raise _Refused(ErrorCode.INVALID_JWT_TOKEN, "session expired")
            if session.busy or session.expected != msg_type:
                # Out of order ends the session, like any other error in it.
                if not session.busy:
                    del self._sessions[token]
                    self.metrics.sessions = len(self._sessions)
                expected = MESSAGES[session.expected].NAME
                raise _Refused(
                    ErrorCode.INVALID_MESSAGE_ERROR,
                    f"message out of order: {name} ({msg_type}) sent, "
                    f"{expected} ({session.expected}) expected",
                )
            session.busy = True
            return session

    def _release(self, session: Session, msg_type: int, *, failed: bool) -> None:
        with self._lock:
            following = session.next_step or session.protocol.after(msg_type)
            session.next_step = None
            if failed or following is None:
                self._sessions.pop(session.token, None)
            else:
                session.expected = following
                session.expires = self._clock() + self.settings.session_ttl
                session.busy = False
            self.metrics.sessions = len(self._sessions)

    # --- requests ------------------------------------------------------------------------

    async def _body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise _Refused(
                    ErrorCode.MESSAGE_BODY_ERROR, "Content-Length is not a number"
                ) from None
            if size > limit:
                raise _Refused(
                    ErrorCode.MESSAGE_BODY_ERROR, f"body of {size} bytes exceeds the limit {limit}"
                )
        chunks: list[bytes] = []
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise _Refused(
                    ErrorCode.MESSAGE_BODY_ERROR, f"body exceeds the limit of {limit} bytes"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _check_headers(self, request: Request, msg_type: int) -> None:
        content_type = request.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != CBOR_TYPE:
            raise _Refused(ErrorCode.MESSAGE_BODY_ERROR, f"Content-Type must be {CBOR_TYPE}")
        # Tolerance: the type is in the URL, so a request without Message-Type is accepted;
        # one that names another type is refused.
        header = request.headers.get("message-type")
        if header is not None and header.strip() != str(msg_type):
            raise _Refused(
                ErrorCode.MESSAGE_BODY_ERROR,
                f"Message-Type header {header.strip()[:8]!r} contradicts the URL's {msg_type}",
            )

    async def handle(self, request: Request) -> Response:
        """Answer one FDO message: the next message of its protocol, or an Error message."""
        start = time.monotonic()
        raw_type = request.path_params.get("n", "")
        msg_type = int(raw_type) if raw_type.isdigit() and len(raw_type) <= 3 else None
        self.metrics.received(msg_type)
        code: int | None = None
        cid: int | None = None
        try:
            answer, body, token = await self._process(request, msg_type)
        except _Refused as e:
            code, text = e.code, e.text
        except (MessageError, ProtocolError) as e:
            code = int(getattr(e, "code", ErrorCode.MESSAGE_BODY_ERROR))
            text = str(e)
        except Exception:
            cid = secrets.randbits(48)
            log.exception("internal error answering FDO message (correlation id %d)", cid)
            code, text = ErrorCode.INTERNAL_SERVER_ERROR, "internal server error"
        if code is None:
            answered = answer.MSG_TYPE
            response = Response(
                body,
                status_code=200,
                media_type=CBOR_TYPE,
                headers={"Message-Type": str(answered), "Authorization": f"Bearer {token}"},
            )
        else:
            cid = cid if cid is not None else secrets.randbits(48)
            self.metrics.error(code)
            prev = msg_type if msg_type is not None and msg_type < 256 else 0
            error = ErrorMessage(code, prev, text[:_MAX_ERROR_TEXT], int(time.time()), cid)
            answered = ErrorMessage.MSG_TYPE
            response = Response(
                error.encode(),
                status_code=500,
                media_type=CBOR_TYPE,
                headers={"Message-Type": str(answered)},
            )
        protocol = self._by_type.get(msg_type) if msg_type is not None else None
        entry = {
            "client": request.client.host if request.client else None,
            "msg_type": msg_type,
            "protocol": protocol.name if protocol else None,
            "answer": answered,
            "error_code": code,
            "correlation_id": cid,
            "duration_ms": round((time.monotonic() - start) * 1000, 3),
        }
        log.info(json.dumps(entry, sort_keys=True))
        return response

    async def _process(self, request: Request, msg_type: int | None) -> tuple[Message, bytes, str]:
        """The answer, its body (encrypted once the session has a cipher) and the session's
        token; raises what the peer is told."""
        step = self._steps.get(msg_type) if msg_type is not None else None
        if msg_type is None or step is None:
            shown = request.path_params.get("n", "")[:8]
            raise _Refused(
                ErrorCode.MESSAGE_BODY_ERROR, f"message type {shown!r} is not served here"
            )
        protocol = self._by_type[msg_type]
        opener = protocol.steps[0].msg_type
        self._check_headers(request, msg_type)
        token = _bearer(request.headers.get("authorization"))
        if msg_type == opener:
            # A session is opened only for a first message that decodes.
            message = decode_message(msg_type, await self._body(request), self._limits)
            session = self._open(protocol, msg_type, token)
        elif token is None:
            raise _Refused(
                ErrorCode.INVALID_MESSAGE_ERROR,
                f"message out of order: {MESSAGES[msg_type].NAME} ({msg_type}) needs a session "
                f"opened by {MESSAGES[opener].NAME} ({opener})",
            )
        else:
            session = self._claim(token, msg_type, MESSAGES[msg_type].NAME)
        failed = True
        try:
            if msg_type != opener:
                body = await self._body(request)
                if session.cipher is not None:
                    body = session.cipher.decrypt(body, self._limits)
                message = decode_message(msg_type, body, self._limits)
            answer = await run_in_threadpool(step.handler, message, session)
            if session.next_step is not None and session.next_step not in self._steps_of(protocol):
                raise ValueError(f"{protocol.name} has no step {session.next_step}")
            answer_body = answer.encode()
            if session.cipher is not None:
                answer_body = session.cipher.encrypt(answer_body)
            failed = False
        finally:
            self._release(session, msg_type, failed=failed)
        return answer, answer_body, session.token

    @staticmethod
    def _steps_of(protocol: Protocol) -> list[int]:
        return [step.msg_type for step in protocol.steps]
