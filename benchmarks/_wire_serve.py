"""Serve an afield repository on 127.0.0.1 and count the bytes it sends, on the server side.

The app is afield's own (:func:`afield.release.serve.create_repo_app`), wrapped in an ASGI
middleware that adds up, per request, the response body (every ``http.response.body`` message)
and the response head: the status line and the headers the app sends, plus a fixed allowance for
the ``date`` and ``server`` headers uvicorn adds itself. Bytes the client sends (requests) and
TCP/IP framing are not counted. Requests are classified by path (``/ostree/deltas/``,
``/ostree/objects/``, anything else) so a pull's delta bytes and loose-object bytes can be told
apart. What is measured with it is ``wire.py``'s business.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from afield.release.serve import create_repo_app, running

__all__ = ["WireCount", "WireCounter", "serving"]

# "date: Wed, 02 Dec 2026 10:00:00 GMT\r\n" (37) + "server: uvicorn\r\n" (17).
_UVICORN_HEADERS = 54


@dataclass(frozen=True)
class WireCount:
    """Bytes a client received: bodies and heads, requests, and body bytes by kind of path."""

    body: int = 0
    head: int = 0
    requests: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Bodies plus heads: what this benchmark calls bytes on the wire."""
        return self.body + self.head

    def to_dict(self) -> dict[str, object]:
        """Plain values for JSON."""
        return {
            "total": self.total,
            "body": self.body,
            "head": self.head,
            "requests": self.requests,
            "body_by_kind": dict(self.by_kind),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
        }


def _kind(path: str) -> str:
    if "/ostree/deltas/" in path or "/ostree/delta-indexes/" in path:
        return "deltas"
    if "/ostree/objects/" in path:
        return "objects"
    if path.startswith("/tuf/"):
        return "tuf"
    return "other"


class WireCounter:
    """An ASGI middleware that counts what the wrapped app sends; thread-safe totals."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._body = self._head = self._requests = 0
        self._by_kind: dict[str, int] = {}
        self._statuses: dict[int, int] = {}

    def reset(self) -> None:
        """Start counting from zero."""
        with self._lock:
            self._body = self._head = self._requests = 0
            self._by_kind = {}
            self._statuses = {}

    def count(self) -> WireCount:
        """The totals since the last :meth:`reset`."""
        with self._lock:
            return WireCount(
                self._body, self._head, self._requests, dict(self._by_kind), dict(self._statuses)
            )

    def _add(self, kind: str, body: int, head: int, status: int | None) -> None:
        with self._lock:
            self._body += body
            self._head += head
            self._by_kind[kind] = self._by_kind.get(kind, 0) + body
            if status is not None:
                self._requests += 1
                self._statuses[status] = self._statuses.get(status, 0) + 1

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        kind = _kind(scope["path"])

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = int(message["status"])
                try:
                    phrase = HTTPStatus(status).phrase
                except ValueError:
                    phrase = ""
                head = len(f"HTTP/1.1 {status} {phrase}\r\n") + 2 + _UVICORN_HEADERS
                head += sum(len(k) + len(v) + 4 for k, v in message.get("headers", []))
                self._add(kind, 0, head, status)
            elif message["type"] == "http.response.body":
                self._add(kind, len(message.get("body", b"")), 0, None)
            await send(message)

        await self.app(scope, receive, counted)


@contextmanager
def serving(repo_dir: Path) -> Iterator[tuple[str, WireCounter]]:
    """Serve the afield repository ``repo_dir`` from a thread; its base URL and byte counter."""
    counter = WireCounter(create_repo_app(repo_dir))
    with running(repo_dir, app=counter) as url:
        yield url, counter
