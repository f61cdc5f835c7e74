"""A client of the fleet manager's admin API (``/api/v1``), for the operator's command line.

:class:`FleetClient` sends one request per call with a bearer token and returns the API's JSON
as it came (dicts and lists, the shapes :mod:`afield.fleet.api` documents): fleets (create,
list, show), rollouts (start, list, show, pause, resume, approve, abort), devices (one page, or
every page by following ``next_cursor``; show one), applications of a fleet or a device (list,
show, set, remove), releases and events (one page each).
Answers are read up to a byte limit and must be JSON.

Every failure is a :class:`FleetRequestError`, a :class:`~afield.errors.FleetError`: a 4xx
answer is a user error carrying the server's ``error``, ``field`` and ``problems``; a 5xx
answer, a connection that fails or times out, or an answer too large are failures that name the
URL and what happened (``cannot reach the fleet manager at http://...: connection refused``).
No httpx exception leaves this module.

What it leaves to others: what the API accepts and answers (:mod:`afield.fleet.api`), showing
answers to people (:mod:`afield.cli.operator`), retries (none: an operator runs the command again).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from afield.errors import FleetError, Problem

__all__ = [
    "MAX_RESPONSE",
    "OWNERS",
    "PAGE",
    "FleetClient",
    "FleetRequestError",
    "release_ref",
]

MAX_RESPONSE = 16 << 20  # the largest answer read (a page of 500 devices is well under 1 MiB)
PAGE = 500  # the API's largest page
_ERRNO = re.compile(r"^\[Errno -?\d+\]\s*")
_RELEASE = re.compile(r"([^/\s]+)/([^/\s]+)/([^/\s]+)")

Json = dict[str, Any]
OWNERS = ("fleets", "devices")  # what applications are set on, as the API's path names them


class FleetRequestError(FleetError):
    """A request to the fleet manager failed: ``url``, the HTTP ``status`` (None without an
    answer), the ``field`` at fault and every problem the server listed."""

    def __init__(
        self,
        message: str,
        *,
        url: str,
        status: int | None = None,
        field: str | None = None,
        problems: Sequence[Problem] = (),
        user_error: bool = False,
    ) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.field = field
        self.problems = list(problems)
        self.user_error = user_error


def release_ref(text: str) -> dict[str, str]:
    """``{"image", "arch", "version"}`` from ``image/arch/version`` (``gateway/x86_64/1.2.0``).

    Raises:
        FleetRequestError: ``text`` is not three non-empty parts (a user error).
    """
    match = _RELEASE.fullmatch(text.strip())
    if match is None:
        raise FleetRequestError(
            f"--release {text!r}: expected image/arch/version, such as gateway/x86_64/1.2.0",
            url="",
            field="release",
            user_error=True,
        )
    image, arch, version = match.groups()
    return {"image": image, "arch": arch, "version": version}


def _base_url(server_url: str) -> str:
    """``server_url`` without a trailing ``/``, if it is an http(s) URL with a host."""
    try:
        parts = urlsplit(server_url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        httpx.URL(server_url)
    except (ValueError, httpx.InvalidURL):
        ok = False
    if not ok:
        raise FleetRequestError(
            f"--server {server_url!r}: expected the fleet manager's http(s) URL, "
            "such as http://127.0.0.1:8080",
            url=server_url,
            user_error=True,
        )
    return server_url.rstrip("/")


def _reason(error: httpx.TransportError, timeout: float) -> str:
    """What went wrong with a connection, in a few words (``connection refused``)."""
    if isinstance(error, httpx.TimeoutException):
        return f"no answer within {timeout:g} s"
    text = _ERRNO.sub("", str(error)).strip()
    if not text:
        return type(error).__name__
    return text[0].lower() + text[1:]


def _problems(body: Mapping[str, Any]) -> list[Problem]:
    listed = body.get("problems")
    if not isinstance(listed, list):
        return []
    return [
        Problem(str(p.get("field") or ""), str(p.get("error") or ""))
        for p in listed
        if isinstance(p, Mapping)
    ]


class FleetClient:
    """The fleet manager at ``server_url``, asked with bearer ``token``.

    Args:
        server_url: the fleet manager's base URL (``http://127.0.0.1:8080``).
        token: an API token (``afield admin token create``); viewer tokens read, admin tokens
            also write. None sends no ``Authorization`` header.
        timeout: seconds to connect and to wait for each answer.
        transport: an httpx transport to use instead of the network (tests, proxies).
        max_response: the largest answer read, in bytes.

    Raises:
        FleetRequestError: ``server_url`` is not an http(s) URL (a user error).
    """

    def __init__(
        self,
        server_url: str,
        token: str | None,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        max_response: int = MAX_RESPONSE,
    ) -> None:
        self.server_url = _base_url(server_url)
        self.timeout = timeout
        self.max_response = max_response
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=f"{self.server_url}/api/v1",
            headers=headers,
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- fleets ----------------------------------------------------------------------------

    def create_fleet(
        self,
        name: str,
        *,
        selector: str = "",
        policy: Mapping[str, Any] | None = None,
        target_release: Mapping[str, str] | None = None,
    ) -> Json:
        """Create a fleet; answers the fleet (``policy`` normalised by the server)."""
        body: Json = {"name": name, "selector": selector}
        if policy is not None:
            body["policy"] = dict(policy)
        if target_release is not None:
            body["target_release"] = dict(target_release)
        return self._call("POST", "/fleets", json_body=body)

    def list_fleets(self) -> list[Json]:
        """Every fleet, by name (all pages)."""
        return list(self._pages("/fleets", {}, PAGE))

    def show_fleet(self, name: str) -> Json:
        """One fleet."""
        return self._call("GET", f"/fleets/{_segment(name)}")

    # --- rollouts --------------------------------------------------------------------------

    def start_rollout(self, fleet: str, release: Mapping[str, str] | None = None) -> Json:
        """Start rolling ``fleet`` out to ``release`` (default: the fleet's target release)."""
        body: Json = {} if release is None else {"release": dict(release)}
        return self._call("POST", f"/fleets/{_segment(fleet)}/rollouts", json_body=body)

    def list_rollouts(
        self,
        *,
        fleet: str | None = None,
        status: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Json:
        """One page of rollouts, newest first: ``{"data", "count", "next_cursor"}``."""
        params = _params(fleet=fleet, status=status, limit=limit, cursor=cursor)
        return self._call("GET", "/rollouts", params=params)

    def show_rollout(self, rollout_id: int) -> Json:
        """One rollout, with its status, batch and progress counters."""
        return self._call("GET", f"/rollouts/{int(rollout_id)}")

    def pause_rollout(self, rollout_id: int, reason: str | None = None) -> Json:
        """Pause a rollout (``reason`` becomes its reason); answers the rollout."""
        return self._act(rollout_id, "pause", reason)

    def resume_rollout(self, rollout_id: int) -> Json:
        """Resume a paused rollout; answers the rollout."""
        return self._act(rollout_id, "resume", None)

    def approve_rollout(self, rollout_id: int) -> Json:
        """Start the next batch of a rollout waiting for approval; answers the rollout."""
        return self._act(rollout_id, "approve", None)

    def abort_rollout(self, rollout_id: int, reason: str | None = None) -> Json:
        """End a rollout for good; answers the rollout."""
        return self._act(rollout_id, "abort", reason)

    def _act(self, rollout_id: int, action: str, reason: str | None) -> Json:
        body = {"reason": reason} if reason else None
        return self._call("POST", f"/rollouts/{int(rollout_id)}/{action}", json_body=body)

    # --- devices ---------------------------------------------------------------------------

    def list_devices(
        self,
        *,
        labels: Sequence[str] = (),
        status: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Json:
        """One page of devices by id: ``{"data", "count", "next_cursor"}``.

        ``labels`` are ``key=value`` filters that must all hold; ``status`` one summary status
        (Online, Updating, Degraded, RolledBack, Offline).
        """
        params = _params(label=list(labels), status=status, limit=limit, cursor=cursor)
        return self._call("GET", "/devices", params=params)

    def all_devices(
        self, *, labels: Sequence[str] = (), status: str | None = None, page: int = PAGE
    ) -> list[Json]:
        """Every device that passes the filters, following ``next_cursor`` ``page`` at a time."""
        params = _params(label=list(labels), status=status)
        return list(self._pages("/devices", params, page))

    def show_device(self, device_id: str) -> Json:
        """One device."""
        return self._call("GET", f"/devices/{_segment(device_id)}")

    # --- applications ----------------------------------------------------------------------

    def _applications(self, owner: str, name: str) -> str:
        if owner not in OWNERS:
            raise ValueError(f"owner {owner!r}: expected one of {', '.join(OWNERS)}")
        return f"/{owner}/{_segment(name)}/applications"

    def list_applications(self, owner: str, name: str) -> Json:
        """The applications set on fleet or device ``name`` (``owner``: fleets or devices)."""
        return self._call("GET", self._applications(owner, name))

    def show_application(self, owner: str, name: str, application: str) -> Json:
        """One application of a fleet or a device, with its manifests."""
        return self._call("GET", f"{self._applications(owner, name)}/{_segment(application)}")

    def set_application(
        self,
        owner: str,
        name: str,
        application: str,
        manifests: str,
        images: Sequence[str] | None = None,
    ) -> Json:
        """Set an application's manifests (and images: default the ones they name)."""
        body: Json = {"manifests": manifests}
        if images is not None:
            body["images"] = list(images)
        path = f"{self._applications(owner, name)}/{_segment(application)}"
        return self._call("PUT", path, json_body=body)

    def delete_application(self, owner: str, name: str, application: str) -> None:
        """Remove an application from a fleet or a device."""
        self._call("DELETE", f"{self._applications(owner, name)}/{_segment(application)}")

    # --- releases and events ---------------------------------------------------------------

    def list_releases(
        self, *, image: str | None = None, arch: str | None = None, limit: int = 100
    ) -> Json:
        """One page of registered releases, newest first."""
        params = _params(image=image, arch=arch, limit=limit)
        return self._call("GET", "/releases", params=params)

    def list_events(
        self,
        *,
        kind: str | None = None,
        actor: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Json:
        """One page of the audit trail, newest first."""
        params = _params(kind=kind, actor=actor, limit=limit, cursor=cursor)
        return self._call("GET", "/events", params=params)

    # --- requests --------------------------------------------------------------------------

    def _pages(self, path: str, params: Json, page: int) -> Iterator[Json]:
        cursor: str | None = None
        while True:
            answer = self._call(
                "GET", path, params={**params, **_params(limit=page, cursor=cursor)}
            )
            yield from _items(answer, self._url(path))
            cursor = answer.get("next_cursor")
            if not cursor:
                return

    def _url(self, path: str) -> str:
        return f"{self.server_url}/api/v1{path}"

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
    ) -> Json:
        """Send one request; the answer's JSON object, or a :class:`FleetRequestError`."""
        url = self._url(path)
        request = self._http.build_request(method, path, params=params, json=json_body)
        try:
            response = self._http.send(request, stream=True)
            try:
                status, raw = response.status_code, self._read(response, url)
            finally:
                response.close()
        except httpx.TransportError as e:
            raise FleetRequestError(
                f"cannot reach the fleet manager at {self.server_url}: {_reason(e, self.timeout)}",
                url=url,
            ) from e
        body = _decode(raw)
        if status >= 400:
            raise _answer_error(method, url, status, body)
        if status == 204:  # deleted: no content
            return {}
        if not isinstance(body, dict):
            raise FleetRequestError(
                f"{method} {url} answered {status} but not with a JSON object: "
                "is --server the fleet manager?",
                url=url,
                status=status,
                user_error=True,
            )
        return body

    def _read(self, response: httpx.Response, url: str) -> bytes:
        chunks, size = [], 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > self.max_response:
                raise FleetRequestError(
                    f"{url}: the answer is larger than {self.max_response} bytes",
                    url=url,
                    status=response.status_code,
                )
            chunks.append(chunk)
        return b"".join(chunks)


def _segment(value: str) -> str:
    """``value`` as one URL path segment (a ``/`` or ``?`` in it cannot change the route)."""
    return quote(value, safe="")


def _params(**values: Any) -> Json:
    """Query parameters without the ones left out (None or an empty list)."""
    return {k: v for k, v in values.items() if v is not None and v != []}


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _items(answer: Json, url: str) -> list[Json]:
    data = answer.get("data")
    if not isinstance(data, list):
        raise FleetRequestError(f"{url}: the answer has no data list", url=url)
    return data


def _answer_error(method: str, url: str, status: int, body: Any) -> FleetRequestError:
    """The error for a 4xx or 5xx answer, with the server's message when it sent one."""
    sent = body if isinstance(body, dict) else {}
    message = sent.get("error")
    field = sent.get("field") if isinstance(sent.get("field"), str) else None
    problems = _problems(sent)
    if status >= 500:
        detail = f": {message}" if isinstance(message, str) and message else ""
        return FleetRequestError(
            f"the fleet manager failed to answer {method} {url}: {status}{detail}",
            url=url,
            status=status,
        )
    if not isinstance(message, str) or not message:
        text = f"{method} {url} answered {status} without an error message"
        return FleetRequestError(
            f"{text}: is --server the fleet manager?", url=url, status=status, user_error=True
        )
    if status == 404 and field in (None, "path"):  # no route answered, not a missing object
        message = f"{method} {url}: {message} (is --server the fleet manager?)"
    elif len(problems) > 1:
        message = f"{len(problems)} problems\n" + "\n".join(
            f"  {p.location}: {p.message}" for p in problems
        )
    return FleetRequestError(
        message, url=url, status=status, field=field, problems=problems, user_error=True
    )
