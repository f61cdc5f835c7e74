"""Property-based fuzzing of the whole fleet-manager API over its own OpenAPI schema (schemathesis).

Schemathesis reads the app's OpenAPI document and, for every operation it has when the test
runs (routes added later are fuzzed without touching this file), sends the schema's examples,
its "coverage" cases (boundary values, lengths one past a limit, missing required fields,
unknown fields, wrong JSON types, unexpected methods) and hypothesis-generated valid and invalid
requests to a real uvicorn on 127.0.0.1 with a real SQLite file behind it (and an FDO owner, so
voucher import is live). Each request goes out as an admin and as one of viewer / no token /
garbage token, with its path and query parameters either as generated (unknown objects) or
naming real ones (releases, fleets and a rollout seeded through the API; devices straight into
the database, which has no admin API for them). Which operations check a bearer token is
learnt by asking each one (the OpenAPI document does not say); every operation but the public
ones (the running commits, the device API) must.

The contract every answer keeps: never a 5xx; every 4xx is JSON ``{"error", "field",
"problems"}`` with a non-empty message and a non-empty field; a 400/401/403/404/422 names a part
of the request (a parameter or header, a body path that was sent or that the schema has, or
``body``; a 404 for a path no route has names ``path``, a 405 names ``method``); a 413 names
``body``; on a bearer-token route a 401/403 names ``Authorization``, an
admin never gets one, a viewer that writes gets 403 and a request without a valid token gets 401
(or, when its body is not JSON at all, the 422/400 FastAPI answers before any dependency runs).

The tests after the fuzzer add what the schema cannot say: bodies over the size limit, bodies
that are not JSON, rollout policies (a free-form object in the schema), text and numbers
PostgreSQL cannot store (on a throwaway cluster; marked root), and one regression test per bug
the fuzzing found.

What it leaves to others: what each route does with valid input (``test_api.py``), the device
API's signatures and the FDO owner's protocol (their own tests).
"""

from __future__ import annotations

import datetime
import itertools
import json
import logging
import tempfile
import traceback
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.core import NotSet
from schemathesis.core.result import Ok

from afield._serving import running
from afield.fdo.pki import init_pki
from afield.fleet.app import FleetSettings, body_limit, create_app
from afield.fleet.auth import create_token
from afield.fleet.db import Database
from afield.fleet.fdo import FdoSettings
from afield.fleet.models import Device
from afield.fleet.policy import RolloutPolicy
from tests.postgres import cluster, new_database

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)
RECENT = NOW - datetime.timedelta(seconds=30)
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
GARBAGE_TOKEN = "Bearer not-a-token"  # noqa: S105  # what a token is not
MAX_BODY = 64 * 1024  # FleetSettings.max_body_bytes, the default the fixtures use
# Generated examples per operation and mode (valid, invalid), on top of the coverage cases:
# the schemathesis test takes ~10 s on 2 cores with this (the file ~20 s); raise it locally to
# dig deeper.
FUZZ_EXAMPLES = 8
RELEASES: list[dict[str, str]] = [
    {"image": "gateway", "arch": "x86_64", "version": "1.0", "commit": "1" * 64},
    {"image": "gateway", "arch": "x86_64", "version": "1.1", "commit": "2" * 64},
    {"image": "sensor", "arch": "aarch64", "version": "2.0", "commit": "3" * 64},
]
FLEETS: list[dict[str, Any]] = [
    {
        "name": "berlin",
        "selector": "site=berlin,tier!=lab",
        "target_release": {"image": "gateway", "arch": "x86_64", "version": "1.0"},
        "policy": {"batches": [1, "50%", "100%"]},
    },
    {"name": "munich", "selector": "site=munich", "target_release": None, "policy": None},
]
DEVICES: list[dict[str, Any]] = [
    {"id": "dev-1", "labels": {"site": "berlin"}, "current_commit": "1" * 64},
    {"id": "dev-2", "labels": {"site": "munich"}},
]


@dataclass
class Fleet:
    """A running fleet manager, its tokens and the real objects it holds."""

    url: str
    app: FastAPI
    http: requests.Session
    admin: str
    viewer: str
    # Path or query parameter name -> values that name real objects (refreshed by seed()).
    known: dict[str, list[str]] = field(default_factory=dict)
    # (METHOD, path template) -> whether the operation checks a bearer token (see probe()).
    bearer: dict[tuple[str, str], bool] = field(default_factory=dict)

    def request(
        self, method: str, path: str, authorization: str | None = "admin", **kwargs: Any
    ) -> requests.Response:
        """``method path`` as the admin (``authorization`` "admin"), or with that header."""
        if authorization == "admin":
            authorization = f"Bearer {self.admin}"
        headers = dict(kwargs.pop("headers", {}))
        if authorization is not None:
            headers["Authorization"] = authorization
        return self.send(method=method, url=self.url + path, headers=headers, **kwargs)

    def send(self, **kwargs: Any) -> requests.Response:
        """One request (requests' keyword arguments) on the kept-alive session."""
        try:
            return self.http.request(**kwargs, allow_redirects=False, timeout=30)
        except requests.ConnectionError:
            # uvicorn closes a kept-alive connection after some answers (a 500 among them,
            # which the check of that answer reports); the request goes again on a new one.
            self.http.close()
            return self.http.request(**kwargs, allow_redirects=False, timeout=30)

    def probe(self) -> None:
        """Learn which operations check a bearer token: those that refuse a garbage token
        with 401 and do not refuse the admin's (asked about objects that do not exist, with no
        body, so nothing changes). The OpenAPI document does not say: the tokens are checked
        by plain dependencies, not declared security schemes."""
        for method, path in OPERATIONS:
            where = "/".join("nothing" if p.startswith("{") else p for p in path.split("/"))
            garbage = self.request(method, where, GARBAGE_TOKEN)
            admin = self.request(method, where)
            self.bearer[(method, path)] = garbage.status_code == 401 and admin.status_code != 401

    def seed(self) -> None:
        """Make sure the seeded objects exist as seeded (fuzzed writes change and delete them)."""
        for release in RELEASES:
            answer = self.request("POST", "/api/v1/releases", json=release)
            assert answer.status_code in (201, 409), answer.text
        for fleet in FLEETS:
            answer = self.request("POST", "/api/v1/fleets", json=fleet)
            if answer.status_code == 409:
                changes = {k: v for k, v in fleet.items() if k != "name"}
                answer = self.request("PATCH", f"/api/v1/fleets/{fleet['name']}", json=changes)
            assert answer.status_code in (200, 201), answer.text
        # berlin always has a rollout that is not over (a second start is 409).
        answer = self.request("POST", "/api/v1/fleets/berlin/rollouts")
        assert answer.status_code in (201, 409), answer.text
        listed = self.request("GET", "/api/v1/rollouts", params={"limit": 20})
        assert listed.status_code == 200, listed.text
        self.known = {
            "name": [f["name"] for f in FLEETS],
            "fleet": [f["name"] for f in FLEETS],
            "rollout_id": [str(r["id"]) for r in listed.json()["data"]],
            "device_id": [d["id"] for d in DEVICES],
            "image": sorted({r["image"] for r in RELEASES}),
        }


class _ServerErrors(logging.Handler):
    """Keeps the server's "Exception in ASGI application" records, so a 5xx's failure shows
    the server's traceback.

    They are formatted only then, in the test's thread: CPython 3.11.7's AST module keeps one
    recursion counter for every thread (gh-106905, fixed in 3.11.8), and a traceback formatted
    in the server's thread (3.11 parses source for its ^^^ markers) while pytest formats one
    can make pytest fail with "AST constructor recursion depth mismatch" (an INTERNALERROR).
    """

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def last(self) -> str:
        """The newest server exception, formatted (empty if there is none)."""
        if not self.records or not self.records[-1].exc_info:
            return ""
        return "".join(traceback.format_exception(*self.records[-1].exc_info))


SERVER_ERRORS = _ServerErrors()


@contextmanager
def _server_errors_kept() -> Iterator[None]:
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(SERVER_ERRORS)
    logger.propagate = False
    try:
        yield
    finally:
        logger.propagate = True
        logger.removeHandler(SERVER_ERRORS)


@contextmanager
def serving(db_url: str, workdir: Path) -> Iterator[Fleet]:
    """The fleet manager on ``db_url`` behind uvicorn, seeded, with an admin and a viewer.

    It serves an FDO owner too (a PKI in ``workdir``), so voucher import is fuzzed for real.
    """
    init_pki(workdir / "pki")
    settings = FleetSettings(
        db_url=db_url,
        clock=lambda: NOW,
        runner_interval=0,
        fdo=FdoSettings(pki_dir=workdir / "pki"),
    )
    app = create_app(settings)
    db: Database = app.state.db
    admin = create_token(db, "ops", "admin")
    viewer = create_token(db, "dashboard", "viewer")
    with db.transaction() as session:
        session.add_all(Device(last_seen=RECENT, **d) for d in DEVICES)
    with _server_errors_kept(), running(app) as url, requests.Session() as http:
        served = Fleet(url, app, http, admin, viewer)
        served.probe()
        served.seed()
        yield served
    db.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("fuzz")
    with serving(f"sqlite:///{workdir / 'fleet.db'}", workdir) as served:
        yield served


@pytest.fixture(scope="module")
def postgres_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("fuzz-postgres")
    with cluster() as admin_url, serving(new_database(admin_url), workdir) as served:
        yield served


def _openapi() -> dict[str, Any]:
    """The app's OpenAPI document, read as the module loads (an app on a throwaway database)."""
    with tempfile.TemporaryDirectory() as directory:
        app = create_app(FleetSettings(db_url=f"sqlite:///{Path(directory) / 'schema.db'}"))
        try:
            document: dict[str, Any] = app.openapi()
        finally:
            app.state.db.close()
    return document


OPENAPI = _openapi()
# Bodies in media types schemathesis has no serializer for (CBOR, PEM) go out as raw bytes.
_RAW_MEDIA = {
    media
    for item in OPENAPI["paths"].values()
    for operation in item.values()
    for media in operation.get("requestBody", {}).get("content", {})
    if media != "application/json"
}
if _RAW_MEDIA:
    schemathesis.serializer.alias(sorted(_RAW_MEDIA), "application/octet-stream")
schema = schemathesis.openapi.from_dict(OPENAPI)
# One unexpected method per path is enough to see how the app answers it (a 405 naming the method).
schema.config.phases.coverage.unexpected_methods = {"PUT"}
# (method, path template) of every operation, for the tests that go through them one by one.
OPERATIONS = sorted((m.upper(), p) for p, item in OPENAPI["paths"].items() for m in item)


# --- the contract ------------------------------------------------------------------------------


def _spec(method: str, path: str) -> dict[str, Any]:
    """The operation's OpenAPI object; empty for a method the path does not have."""
    spec: dict[str, Any] = OPENAPI["paths"].get(path, {}).get(method.lower(), {})
    return spec


def _resolve(node: Any) -> Any:
    """``node`` with ``$ref`` followed and ``anyOf: [X, null]`` unwrapped."""
    while isinstance(node, dict):
        if "$ref" in node:
            node = OPENAPI["components"]["schemas"][node["$ref"].rsplit("/", 1)[-1]]
        elif "anyOf" in node:
            options = [o for o in node["anyOf"] if o.get("type") != "null"]
            if len(options) != 1:
                return node
            node = options[0]
        else:
            return node
    return node


def request_names(method: str, path: str, body: Any) -> set[str]:
    """What a refusal's field may start with: the operation's parameters and headers, the body's
    properties (in the schema or as sent), ``body`` and ``Authorization``."""
    operation = _spec(method, path)
    names = {p["name"] for p in operation.get("parameters", [])} | {"body", "Authorization"}
    for media in operation.get("requestBody", {}).get("content", {}).values():
        found = _resolve(media.get("schema", {}))
        if isinstance(found, dict):
            names |= set(found.get("properties", {}))
    if isinstance(body, dict):
        names |= {str(key) for key in body}
    return names


def _names_part_of(where: str, names: set[str]) -> bool:
    return any(where == n or where.startswith((f"{n}.", f"{n}[")) for n in names)


def _unparsable(status: int, body: dict[str, Any]) -> bool:
    """A refusal of a body that is not JSON at all (before any dependency runs)."""
    return status == 422 and all(
        p["field"] == "body" and p["error"].startswith(("not valid JSON", "not JSON"))
        for p in body["problems"]
    )


def check_answer(
    answer: requests.Response, names: set[str], context: str, operation: str = ""
) -> dict[str, Any]:
    """Check one answer to ``operation`` ("METHOD /path/{template}") against the contract;
    returns its JSON body ({} for a 1xx-3xx)."""
    status = answer.status_code
    shown = f"{context}: {status} {answer.text[:400]}"
    assert status < 500, f"{shown}\n{SERVER_ERRORS.last()}"
    if status < 400:
        return {}
    assert answer.headers.get("content-type", "").startswith("application/json"), shown
    body = answer.json()
    assert isinstance(body, dict), shown
    assert set(body) == {"error", "field", "problems"}, shown
    assert isinstance(body["error"], str), shown
    assert body["error"].strip(), f"{shown}: an empty message"
    assert isinstance(body["problems"], list), shown
    assert body["problems"], f"{shown}: no problem listed"
    for problem in body["problems"]:
        assert set(problem) == {"field", "error"}, shown
        assert isinstance(problem["field"], str), shown
        assert isinstance(problem["error"], str), shown
        assert problem["error"].strip(), shown
    where = body["field"]
    assert isinstance(where, str), f"{shown}: names no field"
    assert where, f"{shown}: names an empty field"
    assert body["problems"][0]["field"] == where, shown
    if status == 413:
        assert where == "body", shown
    elif status == 405:
        assert where == "method", shown
    elif status in (400, 401, 403, 404, 422):
        names = names | {"path"} if status == 404 else names
        for named in [where, *(p["field"] for p in body["problems"])]:
            assert _names_part_of(named, names), f"{shown}: {named!r} is none of {sorted(names)}"
    return body


def _pick(case: Any, salt: str, options: int) -> int:
    """A choice among ``options`` made from the case's values: a failing example replays."""
    seed = repr((salt, case.path_parameters, case.query, case.body)).encode(errors="replace")
    return zlib.crc32(seed) % options


def _send(fleet: Fleet, case: Any, authorization: str | None) -> requests.Response:
    headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    if authorization is not None:
        headers["Authorization"] = authorization
    return fleet.send(**case.as_transport_kwargs(base_url=fleet.url, headers=headers))


def check_case(fleet: Fleet, case: Any) -> None:
    """Send one generated request as another caller, then as the admin; check both answers."""
    method, path = case.method.upper(), case.operation.path
    routed = method == case.operation.method.upper()  # else one of the unexpected methods
    bearer = fleet.bearer[(method, path)] if routed else False
    names = request_names(case.operation.method, path, case.body)
    parameters, query = dict(case.path_parameters or {}), case.query
    known = [name for name in [*parameters, *(query or {})] if fleet.known.get(name)]
    if known and _pick(case, "known", 2):
        query = dict(query or {})
        for name in known:
            values = fleet.known[name]
            (parameters if name in parameters else query)[name] = values[
                _pick(case, name, len(values))
            ]
        case = case.operation.Case(
            method=case.method,
            path_parameters=parameters,
            query=query,
            headers=case.headers,
            body=case.body,
            media_type=case.media_type,
        )
    sent = "(none)" if isinstance(case.body, NotSet) else repr(case.body)
    label = f"{method} {case.formatted_path} query={case.query!r} body={sent}"[:800]

    who, authorization = [
        ("viewer", f"Bearer {fleet.viewer}"),
        ("no token", None),
        ("a garbage token", GARBAGE_TOKEN),
    ][_pick(case, "caller", 3)]
    answer = _send(fleet, case, authorization)
    body = check_answer(answer, names, f"as {who}: {label}", case.operation.label)
    if routed and bearer and who == "viewer" and method not in WRITES:
        assert answer.status_code not in (401, 403), f"as viewer: {label}: {body!r}"
    elif routed and bearer:
        expected = 403 if who == "viewer" else 401
        if answer.status_code != expected:
            assert answer.status_code >= 400, f"as {who}: {label}: {answer.status_code}"
            assert _unparsable(answer.status_code, body) or answer.status_code == 413, (
                f"as {who}: {label}: expected {expected}, got {answer.status_code} {body!r}"
            )
        else:
            assert body["field"] == "Authorization", f"as {who}: {label}: {body!r}"

    answer = _send(fleet, case, f"Bearer {fleet.admin}")
    body = check_answer(answer, names, f"as admin: {label}", case.operation.label)
    if routed and bearer:
        assert answer.status_code not in (401, 403), f"as admin: {label}: {body!r}"
    if answer.status_code < 300 and method in WRITES:
        fleet.seed()  # the write may have changed, ended or deleted a seeded object


def test_every_operation_but_the_public_ones_needs_a_token(fleet: Fleet) -> None:
    # Threat: a new route forgets its token check, and anyone on the network reads or writes.
    # Public on purpose: the running commits (afield release publish calls it without a token)
    # and the device API (a device signs its requests, or spends a one-time token to enroll).
    public = {
        (m, p)
        for m, p in OPERATIONS
        if _spec(m, p).get("operationId") == "images-running" or p.startswith("/api/v1/device/")
    }
    assert public, "the public operations were renamed: update this test"
    unguarded = [op for op in OPERATIONS if op not in public and not fleet.bearer[op]]
    assert not unguarded, f"answer without a valid bearer token: {unguarded}"


@schema.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_no_request_gets_a_500_or_a_refusal_that_names_no_field(case: Any, fleet: Fleet) -> None:
    # Threat: input nobody planned for (wrong types, lengths past a limit, unknown fields,
    # garbage, another caller's token) crashes a route (a 500, a traceback), is refused without
    # saying which field, or gets past the token check.
    check_case(fleet, case)


# --- what the schema cannot describe ----------------------------------------------------------


def _concrete(fleet: Fleet, path: str) -> str:
    """``path`` with each parameter set to a real object (else "1")."""
    for name, values in fleet.known.items():
        path = path.replace(f"{{{name}}}", values[0])
    while "{" in path:
        start = path.index("{")
        path = path[:start] + "1" + path[path.index("}", start) + 1 :]
    return path


WITH_BODY = [(m, p) for m, p in OPERATIONS if _spec(m, p).get("requestBody")]
JSON_BODY = [
    (m, p) for m, p in WITH_BODY if "application/json" in _spec(m, p)["requestBody"]["content"]
]


@pytest.mark.parametrize(("method", "path"), WITH_BODY, ids=[f"{m} {p}" for m, p in WITH_BODY])
def test_a_body_over_the_limit_is_413_naming_the_body(fleet: Fleet, method: str, path: str) -> None:
    # Threat: a client makes the server buffer a body of any size (an application's
    # manifests may take more than other bodies, up to their own limit).
    names = request_names(method, path, None)
    concrete = _concrete(fleet, path)
    answer = fleet.request(
        method,
        concrete,
        data=b" " * (body_limit(method, concrete, MAX_BODY) + 1),
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 413, answer.text
    check_answer(answer, names, f"{method} {path}", f"{method} {path}")


def _is_json(data: bytes) -> bool:
    if data.count(b"[") + data.count(b"{") > 100:
        return False  # the deep garbage below: json.loads() would hit the recursion limit
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


@settings(max_examples=150, deadline=None)
@given(
    operation=st.sampled_from(WITH_BODY),
    data=st.one_of(
        st.binary(max_size=64),
        st.text(max_size=64).map(str.encode),
        st.sampled_from([b"{", b'{"a": 1,}', b"[" * 3000, b"1" * 5000, b"\xff\xfe{}", b"\x00"]),
    ),
    media=st.sampled_from(["application/json", "text/plain", "application/octet-stream"]),
)
def test_a_body_that_is_not_json_is_refused_naming_the_body(
    fleet: Fleet, operation: tuple[str, str], data: bytes, media: str
) -> None:
    # Threat: bytes that are not JSON (or not even UTF-8) crash the parser: a 500, a traceback.
    method, path = operation
    label = f"{method} {path}"
    answer = fleet.request(
        method, _concrete(fleet, path), data=data, headers={"Content-Type": media}
    )
    body = check_answer(answer, request_names(method, path, None), f"{label} {data!r}", label)
    if answer.status_code < 300:
        fleet.seed()  # bytes that happened to be JSON may have changed a seeded object
    json_route = operation in JSON_BODY and fleet.bearer[operation]
    if json_route and media == "application/json" and data and not _is_json(data):
        assert answer.status_code == 422, f"{label} {data!r}: {answer.text}"
        assert {p["field"] for p in body["problems"]} == {"body"}, f"{label} {data!r}: {body!r}"


def _anything() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | _TEXT
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
        max_leaves=6,
    )


# Text for policy values, superscript and other scripts' digits included (int() refuses them).
_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12) | st.sampled_from(
    ["\ud800", "a\udfff", "\x00", "10%", "1h30m", "", " ", "\u00b2", "\u0661\u0660%", "1" * 5000]
)
_AMOUNT = st.one_of(
    st.integers(-3, 10**9),
    st.from_regex(r"\s?[0-9]{1,4}(\.[0-9]{1,3})?\s?%?", fullmatch=True),
    st.floats(),
    _TEXT,
)
_DURATION = st.one_of(
    st.integers(-5, 10**8),
    st.floats(),
    st.from_regex(r"([0-9]{1,3}d)?([0-9]{1,3}h)?([0-9]{1,3}m)?([0-9]{1,3}s)?", fullmatch=True),
    _TEXT,
)
_FRACTION = st.one_of(
    st.floats(), st.integers(-2, 3), st.from_regex(r"[0-9]{1,3}(\.[0-9])?%", fullmatch=True), _TEXT
)
_WINDOW = st.fixed_dictionaries(
    {},
    optional={
        "cron": st.from_regex(r"[0-9*/,-]{1,5}( [0-9*/,-]{1,5}){4}", fullmatch=True) | _TEXT,
        "duration": _DURATION,
        "timezone": st.sampled_from(["UTC", "Europe/Berlin", "Nowhere/Else", "../x", "Europe/"])
        | _TEXT,
    },
)
_POLICY_VALUES = {
    "batches": st.lists(_AMOUNT, max_size=6),
    "success_threshold": _FRACTION,
    "failure_threshold": _FRACTION,
    "health_window": _DURATION,
    "update_timeout": _DURATION,
    "max_unavailable": st.none() | _AMOUNT,
    "manual_approval": st.booleans(),
    "maintenance_window": st.none() | _WINDOW,
}
_NAMES = itertools.count()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    policy=st.fixed_dictionaries(
        {},
        optional={
            # Every field the policy has now (new ones get any JSON), plus unknown ones.
            key: _POLICY_VALUES.get(key, _anything()) | _anything()
            for key in [*RolloutPolicy().to_json(), "unknown"]
        },
    )
)
def test_a_policy_is_stored_normalised_or_refused_naming_its_field(
    fleet: Fleet, policy: dict[str, Any]
) -> None:
    # Threat: a rollout policy (free-form JSON in the schema) crashes the parser or is stored in
    # a form that does not parse back, or a refusal does not say which part of it is wrong.
    name = f"policy-{next(_NAMES)}"
    answer = fleet.request(
        "POST",
        "/api/v1/fleets",
        data=json.dumps({"name": name, "policy": policy}),  # NaN and Infinity too
        headers={"Content-Type": "application/json"},
    )
    label = f"POST /api/v1/fleets policy={policy!r}"
    body = check_answer(answer, {"policy"}, label, "POST /api/v1/fleets")
    if answer.status_code == 201:
        shown = answer.json()["policy"]
        assert RolloutPolicy.parse(shown).to_json() == shown, label
        assert fleet.request("DELETE", f"/api/v1/fleets/{name}").status_code == 204
    else:
        assert answer.status_code == 422, f"{label}: {answer.text}"
        assert all(p["field"].startswith("policy") for p in body["problems"]), f"{label}: {body}"


def _leaves(value: Any, where: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """(path, value) of every string and integer inside a JSON-like value."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*where, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, (*where, index))
    elif isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        yield where, value


def _replaced(value: Any, where: tuple[Any, ...], new: Any) -> Any:
    """A copy of ``value`` with ``new`` at ``where`` (a key it may not have yet)."""
    if not where:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    inner = value[where[0]] if len(where) > 1 else None
    copy[where[0]] = _replaced(inner, where[1:], new)
    return copy


API_OPERATIONS = [r.ok() for r in schema.get_all_operations() if isinstance(r, Ok)]


def _declared(method: str, path: str) -> Iterator[tuple[str, tuple[Any, ...], str]]:
    """(part, where, JSON type) of every path and query parameter the operation declares."""
    for parameter in _spec(method, path).get("parameters", []):
        if parameter["in"] in ("path", "query"):
            part = "path_parameters" if parameter["in"] == "path" else "query"
            kind = _resolve(parameter.get("schema", {})).get("type", "string")
            yield part, (parameter["name"],), kind


@pytest.mark.root
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_postgresql_is_never_sent_text_or_numbers_it_cannot_store(
    postgres_fleet: Fleet, data: st.DataObject
) -> None:
    # Threat: PostgreSQL refuses what SQLite takes (a NUL in text, an integer past 32 or 64
    # bits) with an error the API turns into a 500. A valid request gets one value poisoned:
    # a parameter the operation declares (sent or not) or a string or integer in its body.
    fleet = postgres_fleet
    operation = data.draw(st.sampled_from(API_OPERATIONS), label="operation")
    case = data.draw(operation.as_strategy(), label="case")
    spots = list(_declared(operation.method, operation.path))
    if isinstance(case.body, dict | list):
        spots += [
            ("body", where, "integer" if isinstance(v, int) else "string")
            for where, v in _leaves(case.body)
        ]
    if not spots:
        return
    part, where, kind = data.draw(st.sampled_from(spots), label="poisoned")
    text = st.sampled_from(["\x00", "a\x00", "\x00b", "berlin\x00"])
    if kind == "integer":
        poison: Any = data.draw(st.sampled_from([2**31, 2**63, -(2**63) - 1, 10**30]))
    elif kind == "array":
        poison = data.draw(st.lists(text, min_size=1, max_size=2))
    else:
        poison = data.draw(text)
    current = getattr(case, part) or {}
    setattr(case, part, _replaced(current, where, poison))
    label = f"{operation.label} with {part} {where!r} = {poison!r}"
    answer = _send(fleet, case, f"Bearer {fleet.admin}")
    check_answer(answer, request_names(operation.method, operation.path, case.body), label)
    if answer.status_code < 300 and operation.method.upper() in WRITES:
        fleet.seed()


# --- regressions: bugs the fuzzing found ------------------------------------------------------


@pytest.mark.parametrize("cursor", ["²", "١٢", "9" * 19, "1" * 40, "-1", ""])
@pytest.mark.parametrize("path", ["/api/v1/releases", "/api/v1/rollouts", "/api/v1/events"])
def test_a_cursor_that_is_no_id_is_422_naming_the_cursor(
    fleet: Fleet, path: str, cursor: str
) -> None:
    # Threat: a cursor str.isdigit() accepts but int() does not ("²"), or past the id column
    # (SQLite's 64 bits, PostgreSQL's 32), was sent on to int() and SQL: a 500.
    answer = fleet.request("GET", path, params={"cursor": cursor})
    assert answer.status_code == 422, answer.text
    assert check_answer(answer, {"cursor"}, path)["field"] == "cursor"


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/api/v1/images/gateway/running", {"arch": "x86\x00_64"}, "arch"),
        ("/api/v1/images/gate%00way/running", {"arch": "x86_64"}, "image"),
        ("/api/v1/releases", {"image": "\x00"}, "image"),
        ("/api/v1/releases", {"arch": "\x00"}, "arch"),
        ("/api/v1/events", {"kind": "fleet.create\x00"}, "kind"),
        ("/api/v1/events", {"actor": "\x00"}, "actor"),
        ("/api/v1/rollouts", {"fleet": "berlin\x00"}, "fleet"),
        ("/api/v1/fleets", {"cursor": "\x00"}, "cursor"),
        ("/api/v1/fleets/ber%00lin", {}, "name"),
        ("/api/v1/devices", {"cursor": "\x00"}, "cursor"),
        ("/api/v1/devices/dev%00-1", {}, "device_id"),
    ],
)
def test_a_nul_in_a_parameter_is_422_naming_it(
    fleet: Fleet, path: str, params: dict[str, str], field: str
) -> None:
    # Threat: PostgreSQL text holds no NUL; a parameter with one reached SQL there: a 500.
    answer = fleet.request("GET", path, params=params)
    assert answer.status_code == 422, answer.text
    assert check_answer(answer, {field}, path)["field"] == field


@pytest.mark.parametrize(
    "path",
    ["/api/v1/rollouts/2147483648", "/api/v1/rollouts/4611686018427387903/pause"],
)
def test_a_rollout_id_past_32_bits_is_422_naming_it(fleet: Fleet, path: str) -> None:
    # Threat: ids are 32-bit on PostgreSQL; a bigger one reached SQL there: a 500.
    answer = fleet.request("POST" if path.endswith("pause") else "GET", path)
    assert answer.status_code == 422, answer.text
    assert check_answer(answer, {"rollout_id"}, path)["field"] == "rollout_id"


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        (b'{"batches": ["\\ud800"]}', "policy.batches[0]"),
        (b'{"\\udfff": 1}', "policy.\\udfff"),
        (
            b'{"maintenance_window": {"cron": "0 2 * * *", "duration": 60, "timezone": "\\ud83d"}}',
            "policy.maintenance_window.timezone",
        ),
    ],
)
def test_a_policy_with_a_lone_surrogate_is_422_naming_where(
    fleet: Fleet, policy: bytes, field: str
) -> None:
    # Threat: JSON carries a lone surrogate into the policy; the refusal quoting it could not be
    # encoded as UTF-8: a 500 instead of an answer.
    data = b'{"name": "surrogate", "policy": ' + policy + b"}"
    answer = fleet.request(
        "POST", "/api/v1/fleets", data=data, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 422, answer.text
    body = check_answer(answer, {"policy"}, "POST /api/v1/fleets")
    assert body["field"] == field, body
    assert "surrogate" in body["error"], body


# --- known bugs whose fix is in a file this test's author could not change --------------------


def _names(answer: requests.Response, field: str, status: int | None = None) -> None:
    """Fail (without a traceback) unless ``answer`` is a refusal naming ``field``.

    These tests fail by design until their bug is fixed, so pytest formats their failure every
    run; without a traceback it does not parse this file for it, which on CPython 3.11.7 now
    and then ends in an INTERNALERROR (see :class:`_ServerErrors`).
    """
    body = answer.json() if answer.headers.get("content-type") == "application/json" else {}
    if not (
        400 <= answer.status_code < 500
        and answer.status_code == (status or answer.status_code)
        and body.get("field") == field
        and body["problems"][0]["field"] == field
    ):
        pytest.fail(f"expected a refusal naming {field!r}: {answer.status_code} {body}", False)


@pytest.mark.parametrize("data", [b"\xff", b'{"name": ' + b"1" * 5000 + b"}", b"[" * 5000])
def test_a_body_that_cannot_be_decoded_names_the_body(fleet: Fleet, data: bytes) -> None:
    # Threat: a refusal that does not say what is wrong with the request.
    answer = fleet.request(
        "POST", "/api/v1/fleets", data=data, headers={"Content-Type": "application/json"}
    )
    _names(answer, "body")


def test_a_streamed_body_over_the_limit_is_413_naming_the_body(fleet: Fleet) -> None:
    # Threat: a client makes the server buffer a body of any size, sent without a length.
    def chunks() -> Iterator[bytes]:
        for _ in range(MAX_BODY // 4096 + 1):
            yield b" " * 4096

    answer = requests.post(  # a new connection: this body cannot be sent twice
        f"{fleet.url}/api/v1/releases",
        data=chunks(),
        headers={"Authorization": f"Bearer {fleet.admin}", "Content-Type": "application/json"},
        timeout=30,
    )
    _names(answer, "body", 413)


def test_a_path_no_route_has_names_the_path(fleet: Fleet) -> None:
    # Threat: a refusal that does not say what is wrong with the request.
    _names(fleet.request("GET", "/api/v1/fleets/ber%2Flin"), "path")


def test_a_method_the_path_does_not_take_names_the_method(fleet: Fleet) -> None:
    # Threat: a refusal that does not say what is wrong with the request.
    _names(fleet.request("DELETE", "/api/v1/fleets"), "method")


def test_a_voucher_that_does_not_parse_names_the_body(fleet: Fleet) -> None:
    # Threat: a refusal that does not say what is wrong with the request.
    answer = fleet.request(
        "POST", "/api/v1/vouchers", data=b"\xa0", headers={"Content-Type": "application/cbor"}
    )
    _names(answer, "body")


def test_a_duration_of_superscript_digits_is_422(fleet: Fleet) -> None:
    # Threat: a rollout policy crashes the parser: a 500.
    answer = fleet.request(
        "POST", "/api/v1/fleets", json={"name": "sup", "policy": {"health_window": "²"}}
    )
    _names(answer, "policy.health_window")


def test_a_batch_size_of_5000_digits_is_422(fleet: Fleet) -> None:
    # Threat: a rollout policy crashes the parser: a 500.
    answer = fleet.request(
        "POST", "/api/v1/fleets", json={"name": "big", "policy": {"batches": ["1" * 5000]}}
    )
    _names(answer, "policy.batches[0]")
