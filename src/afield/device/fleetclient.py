"""The device's HTTP client for the fleet manager: enroll, long-poll the desired state, report.

Three calls of :mod:`afield.fleet.protocol` over urllib3 (the device side has neither httpx nor
a web framework): :meth:`FleetClient.enroll` (no signature: the one-time token is the proof),
:meth:`FleetClient.get_desired` and :meth:`FleetClient.report`, each signed with the device key
(:func:`afield.fleet.protocol.authorization`), plus :meth:`FleetClient.healthz` for the
reachability check. Each answer is read up to :attr:`FleetClient.max_response` bytes and parsed
into the protocol's models, so a misbehaving server cannot feed the device endless or
malformed data.

Failures come in two kinds, so the caller knows whether to try again:

- :class:`~afield.errors.TransportError`: the server could not be reached, timed out, answered
  5xx or something that is not the protocol (a proxy's error page): try again later;
- :class:`FleetRefusedError`: the server understood and said no (4xx); it carries the status and
  the field the server named (``token`` for a spent enrollment token). Trying the same request
  again will not help.

What it leaves to others: when to call and what to do with the answers (:mod:`afield.device.agent`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

import urllib3
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, ValidationError

from afield.errors import FleetError, TransportError
from afield.fleet.protocol import (
    DESIRED_PATH,
    ENROLL_PATH,
    MAX_DESIRED_BYTES,
    MAX_WAIT,
    STATUS_PATH,
    DesiredState,
    EnrollRequest,
    EnrollResponse,
    StatusReport,
    authorization,
)

__all__ = ["MAX_RESPONSE", "FleetClient", "FleetRefusedError"]

MAX_RESPONSE = MAX_DESIRED_BYTES
"""The largest answer the device reads from the fleet manager, bytes: the largest desired state
the fleet manager sends (it refuses applications that would make it larger)."""

M = TypeVar("M", bound=BaseModel)


class FleetRefusedError(FleetError):
    """The fleet manager refused a request (4xx); ``status`` and ``field`` say why."""

    def __init__(self, message: str, *, status: int, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        # A refused token or CSR is the operator's to fix, not a failure to retry.
        self.user_error = status in (400, 401, 403, 404, 409, 422)


class FleetClient:
    """One fleet manager, as seen by one device.

    Args:
        base_url: the fleet manager's URL (``http://host:port``, maybe with a path prefix).
        device_id: the device's id (None before enrollment: only :meth:`enroll` and
            :meth:`healthz` work then).
        key: the device's P-256 key, which signs every request after enrollment.
        timeout: seconds to connect and to wait for an answer (a long-poll waits its ``wait``
            on top of this).
        max_response: the largest answer read, bytes.
        clock: the current time in unix seconds (what the signatures carry).

    Raises:
        FleetError: ``base_url`` is not an http:// or https:// URL (a user error).
    """

    def __init__(
        self,
        base_url: str,
        *,
        device_id: str | None = None,
        key: ec.EllipticCurvePrivateKey | None = None,
        timeout: float = 30.0,
        max_response: int = MAX_RESPONSE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            error = FleetError(f"fleet manager URL {base_url!r}: expected http://host[:port]")
            error.user_error = True
            raise error
        self.base_url = base_url.rstrip("/")
        self.device_id = device_id
        self.key = key
        self.timeout = timeout
        self.max_response = max_response
        self._clock = clock
        self._pool = urllib3.PoolManager(retries=False)

    def close(self) -> None:
        """Close the pooled connections."""
        self._pool.clear()

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the calls ----------------------------------------------------------------------------

    def healthz(self, *, timeout: float | None = None) -> None:
        """Check that the fleet manager answers ``GET /healthz`` with 200.

        Raises:
            TransportError: it cannot be reached or answers something else (the message says).
        """
        status, body, _ = self._request("GET", "/healthz", signed=False, timeout=timeout)
        if status != 200:
            raise TransportError(f"{self.base_url}/healthz answered HTTP {status}{_detail(body)}")

    def enroll(self, request: EnrollRequest) -> EnrollResponse:
        """Spend the enrollment token for a certificate (``POST`` :data:`ENROLL_PATH`).

        Raises:
            FleetRefusedError: the token is unknown, spent or expired (401, field ``token``),
                or the CSR is refused (422).
            TransportError: the fleet manager cannot be reached.
        """
        body = request.model_dump_json().encode()
        status, data, _ = self._request("POST", ENROLL_PATH, body=body, signed=False)
        self._check(status, data, ENROLL_PATH, expected=(200, 201))
        return self._parse(EnrollResponse, data, ENROLL_PATH)

    def get_desired(
        self, etag: str | None = None, wait: float = 0
    ) -> tuple[DesiredState | None, str | None]:
        """The desired state (``GET`` :data:`DESIRED_PATH`), long-polled.

        With ``etag`` the server holds the request up to ``wait`` seconds while nothing
        changes; then the answer is ``(None, etag)``. Otherwise ``(state, its etag)``.

        Raises:
            FleetRefusedError: the server does not accept the device's signature (401).
            TransportError: the fleet manager cannot be reached, or answers nonsense.
        """
        seconds = max(0, min(MAX_WAIT, int(wait)))
        target = f"{DESIRED_PATH}?{urlencode({'wait': seconds})}"
        headers = {"If-None-Match": etag} if etag else {}
        status, data, answer = self._request(
            "GET", target, headers=headers, timeout=self.timeout + seconds
        )
        if status == 304:
            return None, etag
        self._check(status, data, DESIRED_PATH, expected=(200,))
        state = self._parse(DesiredState, data, DESIRED_PATH)
        if self.device_id is not None and state.device_id != self.device_id:
            raise TransportError(
                f"{self.base_url}{DESIRED_PATH}: the desired state is for device "
                f"{state.device_id!r}, not this device {self.device_id!r}"
            )
        return state, answer.get("etag") or None

    def report(self, report: StatusReport) -> str | None:
        """Send a status report (``POST`` :data:`STATUS_PATH`); the desired state's ETag.

        Raises:
            FleetRefusedError: the server refuses the report or the signature.
            TransportError: the fleet manager cannot be reached.
        """
        body = report.model_dump_json(exclude_none=True).encode()
        status, data, _ = self._request("POST", STATUS_PATH, body=body)
        self._check(status, data, STATUS_PATH, expected=(200, 201, 204))
        try:
            value = json.loads(data) if data else {}
        except ValueError:
            return None
        etag = value.get("desired_etag") if isinstance(value, dict) else None
        return etag if isinstance(etag, str) else None

    # -- plumbing -----------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        target: str,
        *,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        signed: bool = True,
        timeout: float | None = None,
    ) -> tuple[int, bytes, dict[str, str]]:
        url = self.base_url + target
        sent = {"Accept": "application/json", "User-Agent": "afield-device", **(headers or {})}
        if body:
            sent["Content-Type"] = "application/json"
        if signed:
            if self.key is None or self.device_id is None:
                raise FleetError(f"{method} {target}: the device is not enrolled (no key)")
            # The server checks the path it receives, prefix included.
            parts = urlsplit(url)
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            sent["Authorization"] = authorization(
                self.key, self.device_id, method, path, body, self._clock()
            )
        seconds = self.timeout if timeout is None else timeout
        try:
            response = self._pool.request(
                method,
                url,
                body=body or None,
                headers=sent,
                preload_content=False,
                redirect=False,
                retries=False,
                timeout=urllib3.Timeout(connect=min(seconds, self.timeout), read=seconds),
            )
            try:
                data = response.read(self.max_response + 1)
            finally:
                response.release_conn()
        except urllib3.exceptions.HTTPError as e:
            raise TransportError(f"{method} {url}: cannot reach the fleet manager: {e}") from e
        if len(data) > self.max_response:
            raise TransportError(
                f"{method} {url}: the answer is larger than {self.max_response} bytes"
            )
        answer = {k.lower(): v for k, v in response.headers.items()}
        return response.status, data, answer

    def _check(self, status: int, data: bytes, path: str, *, expected: tuple[int, ...]) -> None:
        where = f"{self.base_url}{path}"
        if status in expected:
            return
        if 400 <= status < 500:
            error, field = _error_of(data)
            message = f"{where}: HTTP {status}: {error or 'refused'}"
            raise FleetRefusedError(message, status=status, field=field)
        raise TransportError(f"{where}: HTTP {status}{_detail(data)}")

    def _parse(self, model: type[M], data: bytes, path: str) -> M:
        try:
            return model.model_validate_json(data)
        except ValidationError as e:
            errors = e.errors()
            where = ".".join(str(p) for p in errors[0]["loc"]) if errors else ""
            message = errors[0]["msg"] if errors else "invalid"
            raise TransportError(
                f"{self.base_url}{path}: not a {model.__name__}: {where or 'body'}: {message}"
            ) from None


def _error_of(data: bytes) -> tuple[str | None, str | None]:
    """The ``error`` and ``field`` of the fleet manager's JSON error body, if it is one."""
    try:
        value: Any = json.loads(data)
    except ValueError:
        return None, None
    if not isinstance(value, dict):
        return None, None
    error, field = value.get("error"), value.get("field")
    return (
        str(error)[:500] if error is not None else None,
        str(field)[:100] if field is not None else None,
    )


def _detail(data: bytes) -> str:
    error, _ = _error_of(data)
    return f": {error}" if error else ""
