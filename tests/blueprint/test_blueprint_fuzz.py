"""Property tests: no input makes the blueprint parser fail with anything but BlueprintError."""

from __future__ import annotations

import hashlib
import math
import tomllib
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from afield.blueprint import Blueprint, parse
from afield.blueprint._parse import validate_dict
from afield.errors import BlueprintError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gateway.toml"
FUZZ = settings(max_examples=200, deadline=None)

KNOWN_KEYS = [
    "name", "version", "description", "distro", "packages", "customizations", "modules",
    "hostname", "kernel", "append", "sshkey", "user", "key", "group", "groups", "uid", "gid",
    "password", "home", "shell", "timezone", "ntpservers", "locale", "languages", "keyboard",
    "services", "enabled", "disabled", "masked", "directories", "files", "path", "mode", "data",
    "ensure_parents", "afield", "source_date_epoch", "stream", "firewall", "containers",
    "source", "tls-verify", "manifests",
]  # fmt: skip


def _string(value: str) -> str:
    """A TOML basic string (escapes quotes, backslashes and control characters)."""
    out = []
    for char in value:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _value(value: Any) -> str:
    """Render a value as inline TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_string(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def to_toml(document: dict[str, Any]) -> str:
    """Write a document as TOML, one top-level key per line with inline values."""
    return "".join(f"{_string(key)} = {_value(value)}\n" for key, value in document.items())


def outcome(call: Any, *args: Any) -> Blueprint | None:
    """Run a parse call; a BlueprintError is a fine outcome, anything else fails the test."""
    try:
        result = call(*args)
    except BlueprintError as e:
        assert e.problems
        assert all(isinstance(p.message, str) and p.message for p in e.problems)
        return None
    assert isinstance(result, Blueprint)
    return result


scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(
        [
            "1.0.0",
            "img",
            "/etc/a",
            "0644",
            "root",
            "ssh",
            "debian-12",
            "registry.example/ns/app:1",
            "oci-archive:a.tar",
            "localhost/app:1",
        ]
    ),
)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=10))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=10,
)


@FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_raise_only_blueprint_error(data: bytes) -> None:
    # Garbage input (truncated upload, binary file) must be reported, never crash.
    outcome(parse, data)


@FUZZ
@given(st.text(max_size=500))
def test_arbitrary_text_raises_only_blueprint_error(text: str) -> None:
    # Any text, TOML or not, is either a blueprint or a BlueprintError.
    outcome(parse, text)


@FUZZ
@given(st.dictionaries(keys, values, max_size=6))
def test_arbitrary_documents_raise_only_blueprint_error(document: dict[str, Any]) -> None:
    # Any shape of TOML document (wrong types, nesting, unknown keys) must be reported cleanly.
    outcome(validate_dict, document)


@FUZZ
@given(st.dictionaries(keys, values, max_size=6))
def test_arbitrary_documents_as_toml_raise_only_blueprint_error(document: dict[str, Any]) -> None:
    # The same documents through the TOML reader.
    outcome(parse, to_toml(document))


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path and list index path inside ``node``."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, child in node.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += _paths(child, (*prefix, index))
    return found


EXAMPLE_DOCUMENT = tomllib.loads(EXAMPLE.read_text())
EXAMPLE_PATHS = _paths(EXAMPLE_DOCUMENT)


def _copy(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _copy(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_copy(v) for v in node]
    return node


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(EXAMPLE_PATHS), values), min_size=1, max_size=3))
def test_mutated_example_raises_only_blueprint_error(changes: list[tuple[Any, Any]]) -> None:
    # A valid blueprint with one value swapped for anything must fail cleanly or stay valid.
    document = _copy(EXAMPLE_DOCUMENT)
    for path, value in changes:
        node = document
        for part in path[:-1]:
            if not isinstance(node, dict | list):
                break
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                break
        else:
            last = path[-1]
            in_dict = isinstance(node, dict) and isinstance(last, str)
            in_list = isinstance(node, list) and isinstance(last, int) and last < len(node)
            if in_dict or in_list:
                node[last] = value
    outcome(validate_dict, document)
    outcome(parse, to_toml(document))


LOWER = "abcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"


def word(first: str, rest: str, max_size: int = 10) -> st.SearchStrategy[str]:
    """A string of one ``first`` character then up to ``max_size`` ``rest`` characters."""
    head = st.sampled_from(first)
    tail = st.text(alphabet=rest, max_size=max_size)
    return st.builds(lambda h, t: h + t, head, tail)


names = word(LOWER, LOWER + DIGITS + "-")
packages = st.lists(
    st.fixed_dictionaries(
        {"name": word(LOWER + DIGITS, LOWER + DIGITS + "+.-").filter(lambda n: len(n) > 1)},
        optional={"version": word(DIGITS, LOWER + DIGITS + ".+~:*-")},
    ),
    max_size=5,
    unique_by=lambda p: p["name"],
)


@st.composite
def blueprints(draw: st.DrawFn) -> dict[str, Any]:
    """Valid blueprint documents covering every table."""
    user_names = draw(st.lists(names, max_size=3, unique=True))
    group_names = draw(
        st.lists(names.filter(lambda n: n not in user_names), max_size=3, unique=True)
    )
    known_groups = ["sudo", "adm", *group_names]
    users = [
        {
            "name": name,
            "uid": 1000 + i,
            "groups": draw(st.lists(st.sampled_from(known_groups), max_size=3)),
            "home": f"/home/{name}",
        }
        for i, name in enumerate(user_names)
    ]
    prefix = st.sampled_from(["/etc", "/usr", "/var", "/opt"])
    parts = st.lists(word(LOWER, LOWER + DIGITS + "_", 8), min_size=1, max_size=3)
    path = st.builds(lambda p, rest: "/".join([p, *rest]), prefix, parts)
    paths = draw(st.lists(path, max_size=6, unique=True))
    split = draw(st.integers(0, len(paths)))
    owners = st.sampled_from(["root", *user_names]) | st.integers(0, 65534)
    gowners = st.sampled_from(["root", "adm", *group_names]) | st.integers(0, 65534)
    files = [
        {
            "path": path,
            "mode": draw(st.text(alphabet="01234567", min_size=3, max_size=4)),
            "user": draw(owners),
            "group": draw(gowners),
            "data": draw(st.text(max_size=40)),
            "ensure_parents": draw(st.booleans()),
        }
        for path in paths[split:]
    ]
    directories = [
        {"path": path, "mode": "0750", "user": draw(owners), "group": draw(gowners)}
        for path in paths[:split]
    ]
    units = draw(st.lists(names, max_size=6, unique=True))
    split = draw(st.integers(0, len(units)))
    images = [f"{name}x" for name in draw(st.lists(names, max_size=3, unique=True))]
    containers = [
        {"source": f"registry.example:5000/ns/{image}:1", "tls-verify": draw(st.booleans())}
        if draw(st.booleans())
        else {
            "source": f"{draw(st.sampled_from(['oci-archive', 'docker-archive']))}:{image}.tar",
            "name": f"localhost/{image}:1",
            "tls-verify": True,
        }
        for image in images
    ]
    workloads = [
        {"source": f"k8s/{name}x", "name": f"w{i}"}
        if draw(st.booleans())
        else {"source": f"k8s/{name}x"}
        for i, name in enumerate(draw(st.lists(names, max_size=3, unique=True)))
    ]
    return {
        "name": draw(word(LOWER + DIGITS, LOWER + DIGITS + "._-")),
        "version": ".".join(str(draw(st.integers(0, 99))) for _ in range(3)),
        "description": draw(st.text(max_size=40)),
        "packages": draw(packages),
        "containers": containers,
        "customizations": {
            "hostname": draw(word(LOWER, LOWER + DIGITS + "-").map(lambda h: h.rstrip("-"))),
            "kernel": {"append": "quiet console=ttyS0,115200"},
            "user": users,
            "group": [{"name": name, "gid": 2000 + i} for i, name in enumerate(group_names)],
            "sshkey": [{"user": "root", "key": "ssh-ed25519 AAAA root@x"}],
            "timezone": {"timezone": "Europe/Berlin", "ntpservers": ["pool.ntp.org"]},
            "locale": {"languages": ["en_US.UTF-8"], "keyboard": "us"},
            "services": {
                "enabled": [f"{u}.service" for u in units[:split]],
                "masked": [f"{u}.service" for u in units[split:]],
            },
            "directories": directories,
            "files": files,
            "afield": {
                "source_date_epoch": draw(st.integers(0, 2**40)),
                "stream": draw(st.sampled_from(["stable", "beta", "edge-1.x"])),
                "manifests": workloads,
            },
        },
    }


def _plain(node: Any) -> Any:
    """Tuples to lists, so a dump compares with a TOML document."""
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_plain(v) for v in node]
    return node


@settings(max_examples=100, deadline=None)  # each example fills every table; keeps this < 5 s
@given(blueprints())
def test_valid_blueprint_round_trips(document: dict[str, Any]) -> None:
    # What is written must be what is read: no value is dropped, coerced or reordered.
    text = to_toml(document)
    blueprint = parse(text)
    dumped = _plain(blueprint.model_dump(exclude_none=True, by_alias=True))
    assert blueprint.sha256 == hashlib.sha256(text.encode()).hexdigest()
    for directory in document["customizations"]["directories"]:
        directory.setdefault("ensure_parents", False)
    document["customizations"]["services"]["disabled"] = []
    assert dumped == {**document, "distro": "debian-12"}
    # A dumped blueprint is a valid blueprint again, equal in every field.
    again = parse(to_toml(dumped))
    assert again.model_dump() == blueprint.model_dump()
