"""Serve an afield repository over HTTP: ``DIR/ostree/**`` and ``DIR/tuf/**`` as static files.

An afield repository is a static tree that any web server can serve (``docs/nginx-repo.conf``
does it with nginx); this module is the built-in one, for the demo, tests and small sites. The
fleet manager mounts the same ASGI app at ``/repo/``.

Starlette's :class:`~starlette.staticfiles.StaticFiles` does the HTTP: single and multiple byte
ranges (206 with ``Content-Range``, 416 when unsatisfiable, ``If-Range``), a strong ETag from the
file's size and mtime, ``If-None-Match`` / ``If-Modified-Since`` -> 304, ``Last-Modified``, HEAD,
405 for other methods, no directory listings, and refusal of any path whose real location
(symlinks resolved) is outside the served directory. This module adds what a repository needs on
top: only ``ostree/`` and ``tuf/`` are served, each from its own directory (so a symlink in one
cannot reach the other, the keys or the rest of the host), content types that do not depend on the
host's MIME database, ``/healthz``, Prometheus ``/metrics`` and one JSON access-log line per
request on the ``afield.repo.access`` logger.

What it leaves to others: TLS and authentication (a reverse proxy), caching headers beyond
ETag/Last-Modified, and writing the repository (:mod:`afield.release.publish`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import NotModifiedResponse, StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from afield import _serving
from afield.errors import RepositoryError

__all__ = ["ACCESS_LOGGER", "RepoMetrics", "create_repo_app", "run", "running"]

ACCESS_LOGGER = "afield.repo.access"
_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
_METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"

log = logging.getLogger(ACCESS_LOGGER)


class _RepoFiles(StaticFiles):
    """StaticFiles with content types fixed by file name, not by the host's MIME database."""

    async def check_config(self) -> None:
        """Nothing to check: a missing ``tuf/`` (not yet initialised) serves 404s, not 500s."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        json_file = str(full_path).endswith(".json")
        media_type = "application/json" if json_file else "application/octet-stream"
        response = FileResponse(
            full_path, status_code=status_code, stat_result=stat_result, media_type=media_type
        )
        if self.is_not_modified(response.headers, Headers(scope=scope)):
            return NotModifiedResponse(response.headers)
        return response


class RepoMetrics:
    """Requests and body bytes served, by status class; rendered in Prometheus text format."""

    def __init__(self) -> None:
        self.requests = dict.fromkeys(_STATUS_CLASSES, 0)
        self.bytes = dict.fromkeys(_STATUS_CLASSES, 0)
        self._lock = threading.Lock()

    def record(self, status: int, sent: int) -> None:
        """Count one finished request that answered ``status`` with ``sent`` body bytes."""
        cls = f"{status // 100}xx"
        with self._lock:
            self.requests[cls] = self.requests.get(cls, 0) + 1
            self.bytes[cls] = self.bytes.get(cls, 0) + sent

    def exposition(self) -> str:
        """The counters in the Prometheus text exposition format (version 0.0.4)."""
        with self._lock:
            requests, sent = sorted(self.requests.items()), sorted(self.bytes.items())
        lines = [
            "# HELP afield_repo_requests_total HTTP requests answered, by status class.",
            "# TYPE afield_repo_requests_total counter",
            *(f'afield_repo_requests_total{{code="{c}"}} {n}' for c, n in requests),
            "# HELP afield_repo_response_bytes_total Response body bytes sent, by status class.",
            "# TYPE afield_repo_response_bytes_total counter",
            *(f'afield_repo_response_bytes_total{{code="{c}"}} {n}' for c, n in sent),
        ]
        return "\n".join(lines) + "\n"


class _Observe:
    """ASGI middleware: count every HTTP request in the metrics and log it as one JSON line."""

    def __init__(self, app: ASGIApp, metrics: RepoMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        # Routing rewrites the scope; log the request as it came (path includes any mount point).
        method, path, headers = scope["method"], scope["path"], Headers(scope=scope)
        client = scope.get("client")
        status, sent, length, done = 500, 0, 0, False

        def finish() -> None:
            nonlocal done
            if done:
                return
            done = True
            self.metrics.record(status, sent)
            entry = {
                "client": client[0] if client else None,
                "method": method,
                "path": path,
                "range": headers.get("range"),
                "status": status,
                "bytes": sent,
                "duration_ms": round((time.monotonic() - start) * 1000, 3),
                "user_agent": headers.get("user-agent"),
            }
            log.info(json.dumps(entry, sort_keys=True))

        async def observed(message: Message) -> None:
            nonlocal status, sent, length
            if message["type"] == "http.response.start":
                status = int(message["status"])
                length = int(Headers(raw=message["headers"]).get("content-length", "0") or 0)
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
                if not message.get("more_body", False):
                    # Count before the last byte leaves, so a client's next request sees it.
                    finish()
            elif message["type"] == "http.response.pathsend":
                sent += length
                finish()
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            finish()


def create_repo_app(repo_dir: Path, *, metrics: RepoMetrics | None = None) -> Starlette:
    """The ASGI app serving the afield repository ``repo_dir`` (its ``ostree/`` and ``tuf/``).

    Args:
        repo_dir: The afield repository; ``ostree/`` must exist, ``tuf/`` may come later.
        metrics: Counters to update (a fresh :class:`RepoMetrics` when omitted).

    Raises:
        RepositoryError: ``repo_dir`` has no ``ostree/`` directory.
    """
    repo_dir = Path(repo_dir)
    if not (repo_dir / "ostree").is_dir():
        raise RepositoryError(
            f"{repo_dir}: not an afield repository (no ostree/ directory)",
            path=repo_dir,
            user_error=True,
        )
    counters = metrics if metrics is not None else RepoMetrics()

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def prometheus(request: Request) -> Response:
        return PlainTextResponse(counters.exposition(), media_type=_METRICS_TYPE)

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        Mount("/ostree", _RepoFiles(directory=repo_dir / "ostree")),
        Mount("/tuf", _RepoFiles(directory=repo_dir / "tuf", check_dir=False)),
    ]
    app = Starlette(routes=routes)
    app.router.redirect_slashes = False
    app.add_middleware(_Observe, metrics=counters)
    app.state.metrics = counters
    return app


def run(
    repo_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve ``repo_dir`` in the foreground until interrupted; ``on_ready`` gets the base URL."""
    _serving.serve(
        create_repo_app(repo_dir),
        host=host,
        port=port,
        on_ready=None if on_ready is None else (lambda url: on_ready(f"{url}/")),
    )


@contextmanager
def running(
    repo_dir: Path, *, host: str = "127.0.0.1", port: int = 0, app: ASGIApp | None = None
) -> Iterator[str]:
    """Serve ``repo_dir`` from a background thread; yields the base URL (ending in ``/``).

    ``app`` serves instead of :func:`create_repo_app` (e.g. the repository app wrapped in
    middleware that injects network faults, in tests).
    """
    with _serving.running(app or create_repo_app(repo_dir), host=host, port=port) as url:
        yield f"{url}/"
