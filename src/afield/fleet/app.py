"""The fleet manager as one ASGI app: ``create_app(settings)``.

:func:`create_app` opens the database, migrates it to the newest schema (before the first
request), loads or creates the device CA, registers the served repository's releases, and
assembles:

* ``/api/v1/...``: the admin API and the device API (:mod:`afield.fleet.api`), OpenAPI at
  ``/docs`` and ``/openapi.json``;
* ``/repo/``: the update repository (:func:`afield.release.serve.create_repo_app`) when
  ``settings.repo_dir`` is given;
* ``/healthz``: ``{"status": "ok"}`` once the database answers, else 503;
* ``/metrics``: Prometheus text: ``afield_fleet_requests_total{method,route,code}``,
  the ``afield_fleet_request_duration_seconds`` histogram by route, and the
  ``afield_fleet_devices{status}`` gauge (devices by summary status, counted at scrape time).
  Routes are the templates (``/api/v1/devices/{device_id}``), so labels stay few.

Every request is logged as one JSON line on the ``afield.fleet.access`` logger (method, path,
route, status, duration, client, and the token's actor when one was checked). Bodies over
``settings.max_body_bytes`` are refused with 413 before they are read (a ``PUT`` of an
application's manifests may be up to :data:`afield.fleet.api.applications.MAX_BODY_BYTES`).
Errors are answered in one place: every refused request gets ``{"error", "field",
"problems"}`` and a 4xx, whatever refused it (validation, authentication, the engine), never a
500 for bad input.

The rollout runner (:class:`~afield.fleet.runner.RolloutRunner`) steps rollouts in a thread
the app's lifespan starts and stops (``settings.runner_interval`` seconds between ticks; 0
starts none, and tests step it by hand through ``app.state.runner``).

With ``settings.fdo`` it also serves FDO's rendezvous (TO0, TO1) and owner (TO2) at
``/fdo/101/msg/{n}`` and voucher import at ``/api/v1/vouchers`` (:mod:`afield.fleet.fdo`).

* ``/``: the operator dashboard (:mod:`afield.web`), unless ``settings.dashboard`` is off.

What it leaves to others: TLS (a reverse proxy), the dashboard's pages (:mod:`afield.web`),
running it (``afield serve``).
"""

from __future__ import annotations

import bisect
import contextlib
import datetime
import json
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from afield.errors import AfieldError, FleetError
from afield.fleet.api import api_router
from afield.fleet.api.applications import MAX_BODY_BYTES as MAX_APPLICATION_BODY
from afield.fleet.api.deps import ApiError, Problem, error_body
from afield.fleet.api.device import FAST_ROUTE, DeviceService, PollFastPath
from afield.fleet.auth import AccessError
from afield.fleet.ca import load_or_create_ca
from afield.fleet.db import DEFAULT_URL, Database, DatabaseError
from afield.fleet.fdo import FdoSettings, FleetFdo
from afield.fleet.fdo import router as fdo_router
from afield.fleet.models import DeviceStatus, status_expression, utcnow
from afield.fleet.policy import RolloutPolicyError, SelectorError
from afield.fleet.rollout import RolloutError
from afield.fleet.runner import RolloutRunner

__all__ = ["ACCESS_LOGGER", "FleetMetrics", "FleetSettings", "create_app"]

ACCESS_LOGGER = "afield.fleet.access"
_METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_APPLICATION_PUT = re.compile(r"/api/v1/(fleets|devices)/[^/]+/applications/[^/]+")

log = logging.getLogger(ACCESS_LOGGER)


def _settings_error(name: str, message: str) -> FleetError:
    error = FleetError(f"{name}: {message}")
    error.user_error = True
    return error


@dataclass(frozen=True)
class FleetSettings:
    """How the fleet manager runs.

    Args:
        db_url: the database (SQLAlchemy URL; SQLite file by default).
        repo_dir: an afield repository to serve at ``/repo/`` (None: not served).
        offline_after: seconds without a check-in after which a device is Offline.
        max_body_bytes: the largest request body accepted (413 above); an application's
            manifests may take more (:func:`body_limit`).
        repo_url: where devices fetch updates, absolute or relative to this server
            (default ``/repo/`` when ``repo_dir`` is served, else none).
        poll_seconds: how often devices are told to poll.
        runner_interval: seconds between rollout runner ticks (0: no runner thread).
        fdo: the FDO rendezvous server and owner to serve at ``/fdo/101/msg/{n}`` (None: none).
        dashboard: serve the operator dashboard at ``/`` (:mod:`afield.web`).
        clock: the current time (timezone-aware); tests fix it.
    """

    db_url: str = DEFAULT_URL
    repo_dir: Path | None = None
    offline_after: float = 300.0
    max_body_bytes: int = 64 * 1024
    repo_url: str | None = None
    poll_seconds: int = 30
    runner_interval: float = 2.0
    fdo: FdoSettings | None = None
    dashboard: bool = True
    clock: Callable[[], datetime.datetime] = field(default=utcnow, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.offline_after < 10 * 365 * 86400:
            raise _settings_error(
                "offline_after", f"{self.offline_after!r}: expected seconds above 0"
            )
        if not 1 <= self.poll_seconds <= 86400:
            raise _settings_error(
                "poll_seconds", f"{self.poll_seconds!r}: expected 1 to 86400 seconds"
            )
        if not 0 <= self.runner_interval <= 3600:
            raise _settings_error(
                "runner_interval", f"{self.runner_interval!r}: expected 0 to 3600 seconds"
            )
        if self.max_body_bytes < 1024:
            raise _settings_error(
                "max_body_bytes", f"{self.max_body_bytes!r}: expected at least 1024 bytes"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> FleetSettings:
        """Settings from ``AFIELD_DB``, ``AFIELD_REPO`` and ``AFIELD_OFFLINE_AFTER``.

        Raises:
            FleetError: a variable's value is not acceptable (a user error naming it).
        """
        values: dict[str, Any] = {}
        if "AFIELD_DB" in environ:
            values["db_url"] = environ["AFIELD_DB"]
        if environ.get("AFIELD_REPO"):
            values["repo_dir"] = Path(environ["AFIELD_REPO"])
        if "AFIELD_OFFLINE_AFTER" in environ:
            raw = environ["AFIELD_OFFLINE_AFTER"]
            try:
                values["offline_after"] = float(raw)
            except ValueError:
                raise _settings_error(
                    "AFIELD_OFFLINE_AFTER", f"{raw!r}: expected seconds, such as 300"
                ) from None
        return cls(**values)


class FleetMetrics:
    """Request counters and latency histograms by route, in Prometheus text format."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.buckets: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}
        self._lock = threading.Lock()

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one request answered ``status`` after ``seconds``."""
        with self._lock:
            key = (method, route, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            counts = self.buckets.setdefault(route, [0] * (len(_BUCKETS) + 1))
            counts[bisect.bisect_left(_BUCKETS, seconds)] += 1
            self.sums[route] = self.sums.get(route, 0.0) + seconds

    def exposition(self, devices: Mapping[DeviceStatus, int]) -> str:
        """Everything in the Prometheus text exposition format (version 0.0.4)."""
        lines = [
            "# HELP afield_fleet_requests_total HTTP requests answered, by method, route, code.",
            "# TYPE afield_fleet_requests_total counter",
        ]
        with self._lock:
            requests = sorted(self.requests.items())
            buckets = {route: list(c) for route, c in sorted(self.buckets.items())}
            sums = dict(self.sums)
        for (method, route, code), n in requests:
            lines.append(
                f'afield_fleet_requests_total{{method="{method}",route="{_escape(route)}",'
                f'code="{code}"}} {n}'
            )
        lines += [
            "# HELP afield_fleet_request_duration_seconds Time to answer a request, by route.",
            "# TYPE afield_fleet_request_duration_seconds histogram",
        ]
        for route, counts in buckets.items():
            label, total = _escape(route), 0
            for bound, n in zip((*_BUCKETS, "+Inf"), counts, strict=True):
                total += n
                le = bound if isinstance(bound, str) else f"{bound:g}"
                lines.append(
                    f'afield_fleet_request_duration_seconds_bucket{{route="{label}",le="{le}"}} '
                    f"{total}"
                )
            lines.append(
                f'afield_fleet_request_duration_seconds_sum{{route="{label}"}} {sums[route]:.6f}'
            )
            lines.append(f'afield_fleet_request_duration_seconds_count{{route="{label}"}} {total}')
        lines += [
            "# HELP afield_fleet_devices Devices by summary status.",
            "# TYPE afield_fleet_devices gauge",
            *(
                f'afield_fleet_devices{{status="{s.value}"}} {devices.get(s, 0)}'
                for s in DeviceStatus
            ),
        ]
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def body_limit(method: str, path: str, max_body: int) -> int:
    """The largest body accepted for ``method path``: ``max_body``, or more for the ``PUT`` of
    an application (manifests of up to 256 Ki characters)."""
    if method == "PUT" and _APPLICATION_PUT.fullmatch(path):
        return max(max_body, MAX_APPLICATION_BODY)
    return max_body


class _TooLarge(Exception):
    """A body went past the limit while it was read (a chunked body has no length to check)."""


class _Edge:
    """ASGI middleware: body size limit, metrics and one JSON access-log line per request."""

    def __init__(self, app: ASGIApp, metrics: FleetMetrics, max_body: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        method, path = scope["method"], scope["path"]
        client = scope.get("client")
        status, started = 500, False
        length = _content_length(scope)
        max_body = body_limit(method, path, self.max_body)
        too_large = error_body(f"the request body is larger than {max_body} bytes", "body")
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_body:
                    raise _TooLarge
            return message

        logged = False

        def finish() -> None:
            # Logged before the last body chunk goes out, so a client that has its answer
            # can already read the log line (tests do; so do operators tailing logs).
            nonlocal logged
            if logged:
                return
            logged = True
            seconds = time.monotonic() - start
            route = _route_template(scope)
            self.metrics.record(method, route, status, seconds)
            state = scope.get("state") or {}
            entry = {
                "client": client[0] if client else None,
                "method": method,
                "path": path,
                "route": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                "actor": state.get("actor"),
            }
            log.info(json.dumps(entry, sort_keys=True))

        async def observed(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = int(message["status"]), True
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                finish()
            await send(message)

        try:
            if length is not None and length > max_body:
                await JSONResponse(too_large, status_code=413)(scope, receive, observed)
            else:
                await self.app(scope, limited, observed)
        except _TooLarge:
            if not started:
                await JSONResponse(too_large, status_code=413)(scope, receive, observed)
        finally:
            finish()


def _route_template(scope: Scope) -> str:
    """The route that answered, as a template (``/api/v1/devices/{device_id}``; mounts by prefix).

    Built from the path and its parameters, so it does not depend on how routers nest.
    """
    if FAST_ROUTE in scope:
        return str(scope[FAST_ROUTE])
    route = scope.get("route")
    if route is None:
        return "unmatched"
    if isinstance(route, Mount):
        return str(route.path)
    names = {str(v): k for k, v in (scope.get("path_params") or {}).items()}
    parts = [f"{{{names[p]}}}" if p in names else p for p in str(scope["path"]).split("/")]
    return "/".join(parts)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


# --- errors: one place decides the answer ----------------------------------------------------


def _where(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "body"


def _validation_problems(errors: list[dict[str, Any]]) -> list[Problem]:
    problems = []
    for error in errors:
        kind, loc = error.get("type", ""), error.get("loc", ())
        if kind == "json_invalid":
            detail = (error.get("ctx") or {}).get("error", "")
            problems.append(Problem("body", f"not valid JSON ({detail})" if detail else "not JSON"))
            continue
        where = _where(loc)
        if kind == "extra_forbidden":
            message = "unknown field: not accepted here (see /docs)"
        elif kind == "missing":
            message = "is required"
        else:
            message = str(error.get("msg", "is not valid"))
        problems.append(Problem(where, message))
    return problems or [Problem("body", "the request is not valid")]


class _AsciiJSON(JSONResponse):
    """JSON with every non-ASCII character escaped: an error that echoes input holding a lone
    surrogate (valid JSON, not encodable as UTF-8) still has a body."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode()


def _answer(status: int, message: str, field: str | None, problems: list[Problem]) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return _AsciiJSON(error_body(message, field, problems), status_code=status, headers=headers)


def _status_of(error: AfieldError) -> tuple[int, str | None, list[Problem]]:
    if isinstance(error, ApiError):
        return error.status, error.field, error.problems
    if isinstance(error, AccessError):
        return error.status, error.field, []
    if isinstance(error, RolloutPolicyError):
        problems = [Problem(f"policy.{p.location}", p.message) for p in error.problems]
        return 422, problems[0].field if problems else "policy", problems
    if isinstance(error, SelectorError):
        return 422, "selector", []
    if isinstance(error, RolloutError):
        return 409, "status", []
    if isinstance(error, DatabaseError):
        return 503, None, []
    return (422 if error.user_error else 500), None, []


def _refusal(error: AfieldError) -> Response:
    """The answer to a request that raised ``error``."""
    status, where, problems = _status_of(error)
    message = str(error) if status < 500 else f"internal error: {type(error).__name__}"
    return _answer(status, message, where, problems)


def _install_error_handlers(app: FastAPI) -> None:
    async def validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)  # noqa: S101  # registered for it
        problems = _validation_problems(list(exc.errors()))
        first = problems[0]
        return _answer(422, f"{first.field}: {first.error}", first.field, problems)

    async def http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)  # noqa: S101  # registered for it
        status, message = exc.status_code, str(exc.detail)
        if isinstance(exc.__cause__, _TooLarge):  # a streamed body past the limit
            limit = body_limit(
                request.method, request.url.path, request.app.state.settings.max_body_bytes
            )
            return _answer(413, f"the request body is larger than {limit} bytes", "body", [])
        if status == 400 and message == "There was an error parsing the body":
            # Not UTF-8, a number past Python's 4300 digits, nesting past the parser's depth.
            text = "not JSON this server can read (its bytes, length or nesting)"
            return _answer(422, f"body: {text}", "body", [Problem("body", text)])
        where = {404: "path", 405: "method"}.get(status)
        if where == "path":
            message = f"{request.url.path}: no such resource (see /docs)"
        elif where == "method":
            message = f"{request.method} is not accepted at {request.url.path} (see /docs)"
        return _answer(status, message, where, [])

    async def afield(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, AfieldError)  # noqa: S101  # registered for it
        return _refusal(exc)

    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http)
    app.add_exception_handler(AfieldError, afield)


# --- the app -------------------------------------------------------------------------------


def _count_devices(
    db: Database, now: datetime.datetime, offline_after: float
) -> dict[DeviceStatus, int]:
    status = status_expression(now, offline_after)
    with db.sessions() as session:
        counted = dict(session.execute(select(status, func.count()).group_by(status)).all())
    return {s: int(counted.get(s.value, 0)) for s in DeviceStatus}


def _runtime_metrics(app: FastAPI) -> str:
    """Long-polls waiting, rollout steps written, and the FDO endpoint's counters."""
    lines = [
        "# HELP afield_fleet_longpolls_waiting Device long-polls waiting for a change.",
        "# TYPE afield_fleet_longpolls_waiting gauge",
        f"afield_fleet_longpolls_waiting {app.state.devices.notifier.waiting()}",
        "# HELP afield_fleet_rollout_steps_total Rollout engine steps written by this process.",
        "# TYPE afield_fleet_rollout_steps_total counter",
        f"afield_fleet_rollout_steps_total {app.state.runner.steps}",
    ]
    text = "\n".join(lines) + "\n"
    if app.state.fdo is not None:
        text += app.state.fdo.endpoint.metrics.exposition()
    return text


def create_app(settings: FleetSettings | None = None, *, db: Database | None = None) -> FastAPI:
    """The fleet manager's ASGI app; migrates the database first.

    Args:
        settings: how it runs (:class:`FleetSettings` defaults when omitted).
        db: an open database to use instead of opening ``settings.db_url``.

    Raises:
        DatabaseError: the database cannot be opened or migrated.
        RepositoryError: ``settings.repo_dir`` is not an afield repository.
    """
    settings = settings or FleetSettings()
    database = db if db is not None else Database(settings.db_url)
    database.upgrade()
    metrics = FleetMetrics()
    ca = load_or_create_ca(database, settings.clock())
    repo_url = settings.repo_url or ("/repo/" if settings.repo_dir is not None else None)
    devices = DeviceService(
        database, ca, clock=settings.clock, repo_url=repo_url, poll_seconds=settings.poll_seconds
    )
    runner = RolloutRunner(
        database,
        clock=settings.clock,
        offline_after=settings.offline_after,
        notifier=devices.notifier,
        doorbell=devices.doorbell,
        checkins=devices.checkins,
        interval=settings.runner_interval or 2.0,
        repo_dir=settings.repo_dir,
    )
    runner.sync()
    fdo = None
    if settings.fdo is not None:
        fdo = FleetFdo(settings.fdo, database, repo_dir=settings.repo_dir, clock=settings.clock)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        devices.checkins.start()
        if settings.runner_interval:
            runner.start()
        if fdo is not None:
            fdo.started()
        try:
            yield
        finally:
            runner.stop()
            devices.checkins.stop()
            if fdo is not None:
                fdo.close()

    app = FastAPI(
        lifespan=lifespan,
        title="afield fleet manager",
        version="1",
        summary="Devices, fleets, releases, rollouts and the audit trail of an afield fleet.",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.db = database
    app.state.settings = settings
    app.state.clock = settings.clock
    app.state.offline_after = settings.offline_after
    app.state.metrics = metrics
    app.state.devices = devices
    app.state.runner = runner
    app.state.fdo = fdo
    app.state.stopping = threading.Event()  # set by afield._serving: streams end
    app.include_router(api_router())
    app.include_router(fdo_router, prefix="/api/v1")
    if fdo is not None:
        app.router.routes.extend(fdo.endpoint.routes())
    _install_error_handlers(app)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> Response:
        try:
            with database.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError as e:
            body = {"status": "unavailable", "error": f"database: {type(e).__name__}"}
            return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        devices.checkins.flush()
        counts = _count_devices(database, settings.clock(), settings.offline_after)
        text = metrics.exposition(counts) + _runtime_metrics(app)
        return PlainTextResponse(text, media_type=_METRICS_TYPE)

    if settings.repo_dir is not None:
        from afield.release.serve import create_repo_app

        app.mount("/repo", create_repo_app(settings.repo_dir))
    if settings.dashboard:
        from afield.web import install  # the dashboard sits on top of the fleet manager

        install(app)
    app.add_middleware(PollFastPath, service=devices, refuse=_refusal)
    app.add_middleware(_Edge, metrics=metrics, max_body=settings.max_body_bytes)
    return app
