"""Run an ASGI app with uvicorn on a socket of our own: in the foreground, or from a thread.

Shared by every afield server (the update repository, the FDO servers, later the fleet
manager): binding first gives the caller the real port (0 picks a free one) before uvicorn
starts, and tests start servers on 127.0.0.1 with :func:`running`. uvicorn logs only errors:
each app logs its own requests as JSON lines, and libcurl's h2c upgrade attempts would
otherwise draw a warning per request.

What it leaves to others: the apps, TLS (a reverse proxy in front).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import uvicorn
from starlette.types import ASGIApp

from afield.errors import AfieldError

__all__ = ["bind", "running", "serve", "url_of"]


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0 picks a free port).

    Raises:
        AfieldError: the address is taken or not ours (a user error: another --host/--port).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are
    # TCP, and without it every answer on a kept-alive connection waits ~40 ms (Nagle against
    # the client's delayed ACK, as uvicorn writes headers and body apart).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        error = AfieldError(f"cannot listen on {host}:{port}: {e.strerror}")
        error.user_error = True
        raise error from e
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    """The base URL of a bound socket, without a trailing slash."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _Server(uvicorn.Server):
    """uvicorn's server, which tells the app when it begins to stop.

    uvicorn waits for every open request before it stops. A stream that never ends on its own
    (the dashboard's server-sent events) would hold it forever, so an app whose ``state`` has
    ``stopping`` (a :class:`threading.Event`) sees it set first, and its streams end.
    """

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        state = getattr(self.config.app, "state", None)
        stopping = getattr(state, "stopping", None)
        if isinstance(stopping, threading.Event):
            stopping.set()
        await super().shutdown(sockets)


def _server(app: ASGIApp) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        lifespan="auto",
        ws="none",
        http="h11",
        log_config=None,
        access_log=False,
        log_level="error",
    )
    return _Server(config)


def serve(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve ``app`` in the foreground until interrupted; ``on_ready`` gets the base URL."""
    sock = bind(host, port)
    with sock:
        if on_ready is not None:
            on_ready(url_of(sock))
        # uvicorn shuts down on SIGINT, then raises the signal again for its caller: the
        # server stopped as asked, which is success.
        with contextlib.suppress(KeyboardInterrupt):
            _server(app).run(sockets=[sock])


@contextmanager
def running(app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` from a background thread; yields the base URL, stops on exit."""
    sock = bind(host, port)
    server = _server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started and thread.is_alive():
            time.sleep(0.01)
        if not server.started:
            raise AfieldError(f"the server at {url_of(sock)} did not start")
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join()
        sock.close()
