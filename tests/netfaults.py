"""A bad network in front of a real afield repository server: ASGI middleware that injects faults.

Wraps :func:`afield.release.serve.create_repo_app` and, per rule, answers 503, cuts a response
after some bytes (the client sees a short body and a closed connection, as when a link drops),
or stalls (headers sent, then nothing). It also records every request (path and Range header)
and counts the body bytes that went out, which is what tests compare against "bytes on the
wire".
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from afield.release.serve import create_repo_app, running


class _Cut(Exception):
    """Raised inside the app to end a response early; uvicorn then closes the connection."""


@dataclass
class Faults:
    """The faults to inject, and what was served.

    Attributes:
        fail: answer this many requests whose path matches ``fail_pattern`` (a regular
            expression, searched) with HTTP 503, then serve.
        cut_after: cut one response once this many body bytes went out in total (under
            ``cut_prefix``); None: never. Set again to cut again.
        stall_prefix: requests under it get headers, then nothing until the server stops.
        drip_prefix: responses under it trickle out, 64 bytes every 50 ms (~1.3 kB/s): never
            silent long enough for a read timeout, far too slow to finish.
        requests: ``(path, range header)`` of every request, in order.
        completed: paths whose response body went out whole, in order.
        sent: body bytes sent.
    """

    app: ASGIApp
    fail: int = 0
    fail_pattern: str = ""
    cut_after: int | None = None
    cut_prefix: str = "/"
    stall_prefix: str | None = None
    drip_prefix: str | None = None
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    sent: int = 0
    cuts: int = 0
    released: bool = False

    def sent_under(self, prefix: str) -> list[tuple[str, str | None]]:
        """The requests whose path starts with ``prefix``."""
        return [r for r in self.requests if r[0].startswith(prefix)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        headers = dict(scope["headers"])
        byte_range = headers.get(b"range")
        self.requests.append((path, byte_range.decode() if byte_range else None))
        if self.fail > 0 and re.search(self.fail_pattern, path):
            self.fail -= 1
            await _answer(send, 503, b"injected fault\n")
            return
        if self.stall_prefix is not None and path.startswith(self.stall_prefix):
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", b"1000000")],
                }
            )
            while not self.released:
                await asyncio.sleep(0.05)
            raise _Cut
        counting = self._counting(send, path)
        if self.drip_prefix is not None and path.startswith(self.drip_prefix):
            counting = self._dripping(counting)
        try:
            await self.app(scope, receive, counting)
        except _Cut:
            return

    def _counting(self, send: Send, path: str) -> Send:
        async def counting(message: Message) -> None:
            if message["type"] == "http.response.body":
                body: bytes = message.get("body", b"")
                cut = self.cut_after
                if (
                    cut is not None
                    and path.startswith(self.cut_prefix)
                    and self.sent + len(body) > max(cut, self.sent)
                ):
                    keep = max(0, cut - self.sent)
                    self.cut_after = None
                    self.cuts += 1
                    self.sent += keep
                    partial = {"type": "http.response.body", "body": body[:keep], "more_body": True}
                    await send(partial)
                    raise _Cut
                self.sent += len(body)
                await send(message)
                if not message.get("more_body", False):
                    self.completed.append(path)
                return
            await send(message)

        return counting

    def _dripping(self, send: Send) -> Send:
        async def dripping(message: Message) -> None:
            if message["type"] != "http.response.body":
                await send(message)
                return
            body: bytes = message.get("body", b"")
            for start in range(0, len(body), 64):
                if self.released:
                    raise _Cut
                piece = body[start : start + 64]
                more = start + 64 < len(body) or message.get("more_body", False)
                await send({"type": "http.response.body", "body": piece, "more_body": more})
                await asyncio.sleep(0.05)

        return dripping


async def _answer(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


@contextmanager
def faulty(directory: Path, **rules: object) -> Iterator[tuple[str, Faults]]:
    """Serve the afield repository ``directory`` behind :class:`Faults` with ``rules``."""
    faults = Faults(create_repo_app(directory), **rules)  # type: ignore[arg-type]
    with running(directory, app=faults) as url:
        try:
            yield url, faults
        finally:
            faults.released = True
