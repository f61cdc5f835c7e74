"""A local HTTP proxy for libostree's object pulls, so afield can meter what libostree fetches.

libostree pulls objects with libcurl and reports the bytes only when the pull ends; it has no
bandwidth cap. Pointing its remote's ``proxy`` at this relay on 127.0.0.1 gives the device what
an update on a metered link needs: a live byte count (progress), ``--max-rate`` (the shared
:class:`~afield.device.transport.Meter` sleeps between chunks), and a read timeout on every
upstream response, so a stalled server is cut instead of waited on forever.

It forwards only to the one update server it was made for (plain requests for ``http://``,
``CONNECT`` tunnels for ``https://``, where TLS stays end to end between libostree and the
server) and refuses every other destination: it is not an open proxy, and it listens on
loopback only. Hop-by-hop headers are dropped, which also keeps libcurl's HTTP/2 upgrade
attempt from reaching the server.

What it leaves to others: verifying what passes through (libostree checks every object against
its checksum), retrying (:func:`afield.device.transport.retrying`).
"""

from __future__ import annotations

import http.client
import selectors
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import cast
from urllib.parse import urlsplit

from afield.device.transport import Meter
from afield.errors import TransportError

__all__ = ["Relay"]

_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "http2-settings",
        "content-length",
    }
)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    relay: Relay


class Relay:
    """Forward libostree's requests to ``origin`` (``http(s)://host[:port]``), metered.

    Use as a context manager; :attr:`url` is the proxy URL to give libostree. :attr:`errors`
    collects what went wrong upstream, so a failed pull can say more than libcurl does. An
    upstream response slower than ``min_rate`` bytes/s over ``min_rate_window`` seconds, or
    silent for ``timeout`` seconds, is cut (slow retrieval).
    """

    def __init__(
        self,
        origin: str,
        meter: Meter,
        *,
        timeout: float = 30.0,
        min_rate: int = 0,
        min_rate_window: float = 30.0,
    ) -> None:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TransportError(f"{origin!r}: the update server must be an http(s) URL")
        default = 443 if parts.scheme == "https" else 80
        self.scheme = parts.scheme
        self.origin = (parts.hostname, parts.port or default)
        self.meter = meter
        self.timeout = timeout
        self.min_rate = min_rate
        self.min_rate_window = min_rate_window
        self.errors: list[str] = []
        self._upstreams: set[http.client.HTTPConnection] = set()
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The proxy URL (``http://127.0.0.1:PORT``)."""
        if self._server is None:
            raise TransportError("the relay is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> Relay:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.relay = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="afield-relay")
        self._thread.daemon = True
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        # Connections still held by handler threads (a client that has not hung up yet).
        with self._lock:
            upstreams, self._upstreams = self._upstreams, set()
        for connection in upstreams:
            connection.close()

    def opened(self, connection: http.client.HTTPConnection) -> None:
        """Track an upstream connection, so stopping the relay closes it."""
        with self._lock:
            self._upstreams.add(connection)

    def closed(self, connection: http.client.HTTPConnection) -> None:
        """Forget an upstream connection its handler closed."""
        with self._lock:
            self._upstreams.discard(connection)

    def allows(self, scheme: str, host: str | None, port: int | None) -> bool:
        """Whether a request for ``scheme://host:port`` goes to the update server."""
        default = 443 if scheme == "https" else 80
        return scheme == self.scheme and (host, port or default) == self.origin

    def note(self, message: str) -> None:
        """Remember an upstream failure (the last few are kept)."""
        self.errors = [*self.errors[-9:], message]


class _RateFloor:
    """Raises when a response averages less than ``floor`` bytes/s over a whole window."""

    def __init__(self, floor: int, window: float) -> None:
        self.floor, self.window = floor, window
        self.start, self.count = time.monotonic(), 0

    def check(self, count: int, what: str) -> None:
        self.count += count
        elapsed = time.monotonic() - self.start
        if self.floor and elapsed >= self.window:
            if self.count / elapsed < self.floor:
                raise TimeoutError(
                    f"slow retrieval: {what} sent {self.count / elapsed:.0f} bytes/s over "
                    f"{elapsed:.0f} s, below the minimum of {self.floor}"
                )
            self.start, self.count = time.monotonic(), 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    _upstream: http.client.HTTPConnection | None = None

    @property
    def relay(self) -> Relay:
        return cast(_Server, self.server).relay

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the relay is an implementation detail of one pull; failures go to ``errors``."""

    def finish(self) -> None:
        self._drop()
        super().finish()

    def do_GET(self) -> None:
        self._forward()

    def do_HEAD(self) -> None:
        self._forward()

    def _refuse(self, status: int, message: str) -> None:
        self.relay.note(message)
        self.close_connection = True
        self.send_error(status, message)

    def _connection(self, host: str, port: int) -> http.client.HTTPConnection:
        if self._upstream is None:
            self._upstream = http.client.HTTPConnection(host, port, timeout=self.relay.timeout)
            self.relay.opened(self._upstream)
        return self._upstream

    def _drop(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
            self.relay.closed(self._upstream)
            self._upstream = None

    def _forward(self) -> None:
        target = urlsplit(self.path)
        if not self.relay.allows(target.scheme, target.hostname, target.port):
            self._refuse(403, f"refused to forward {self.path}: not the update server")
            return
        host, port = self.relay.origin
        path = (target.path or "/") + (f"?{target.query}" if target.query else "")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        upstream = self._connection(host, port)
        try:
            upstream.request(self.command, path, headers=headers)
            response = upstream.getresponse()
        except (OSError, http.client.HTTPException) as e:
            self._drop()
            self._refuse(502, f"{self.command} {target.path}: {e or type(e).__name__}")
            return
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in _HOP:
                self.send_header(name, value)
        length = response.getheader("Content-Length")
        if length is not None:
            self.send_header("Content-Length", length)
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command == "HEAD":
            response.read()
            return
        meter = self.relay.meter
        rate = _RateFloor(self.relay.min_rate, self.relay.min_rate_window)
        try:
            # read1: whatever has arrived, so a trickling server is caught by the rate floor.
            # At a premature end it returns b"", leaving ``length`` at what is missing.
            while response.length != 0 and (chunk := response.read1(meter.chunk_size())):
                # Counted (and paced) before it is passed on: once the client has a byte,
                # the meter has it too.
                meter.add(len(chunk))
                rate.check(len(chunk), target.path)
                self.wfile.write(chunk)
            if response.length:
                raise http.client.IncompleteRead(b"", response.length)
            response.close()  # done: the upstream connection takes the next request
        except (OSError, http.client.HTTPException) as e:
            # Cut the client off too: libostree sees a short body, not a corrupt object.
            self.relay.note(f"GET {target.path}: {e or type(e).__name__}")
            self._drop()
            self.close_connection = True

    def do_CONNECT(self) -> None:
        host, _, port_text = self.path.rpartition(":")
        port = int(port_text) if port_text.isdigit() else None
        if port is None or not self.relay.allows("https", host, port):
            self._refuse(403, f"refused to tunnel to {self.path}: not the update server")
            return
        try:
            upstream = socket.create_connection((host, port), timeout=self.relay.timeout)
        except OSError as e:
            self._refuse(502, f"CONNECT {self.path}: {e}")
            return
        self.send_response_only(200, "Connection established")
        self.end_headers()
        self.close_connection = True
        with upstream:
            self._pump(self.connection, upstream)

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        meter = self.relay.meter
        with selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ, upstream)
            selector.register(upstream, selectors.EVENT_READ, client)
            while True:
                ready = selector.select(timeout=self.relay.timeout)
                if not ready:
                    self.relay.note(f"CONNECT {self.path}: no data for {self.relay.timeout} s")
                    return
                for key, _ in ready:
                    source = cast(socket.socket, key.fileobj)
                    try:
                        data = source.recv(meter.chunk_size())
                        if not data:
                            return
                        if source is upstream:
                            meter.add(len(data))
                        cast(socket.socket, key.data).sendall(data)
                    except OSError as e:
                        self.relay.note(f"CONNECT {self.path}: {e}")
                        return
