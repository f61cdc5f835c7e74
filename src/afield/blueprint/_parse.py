"""Read blueprint TOML and validate it into a :class:`~afield.blueprint.model.Blueprint`.

Enforces the byte limit before parsing, translates tomllib's and pydantic's errors into
:class:`~afield.errors.Problem` objects (a dotted key path or ``line L, column C`` plus a message
saying what would be accepted) and raises one :class:`~afield.errors.BlueprintError` listing them
all. What the keys mean is left to ``model``; no other exception escapes :func:`parse`.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from afield.blueprint import _checks
from afield.blueprint.model import Blueprint, Customizations
from afield.errors import BlueprintError, Problem

__all__ = ["MAX_BLUEPRINT_BYTES", "load", "parse", "validate_dict"]

#: Blueprints larger than this are refused before parsing.
MAX_BLUEPRINT_BYTES = 1024 * 1024

#: osbuild keys that afield recognizes but does not implement (yet), per table.
OSBUILD_UNSUPPORTED: dict[type[BaseModel], frozenset[str]] = {
    Blueprint: frozenset({"modules", "groups", "enabled_modules"}),
    Customizations: frozenset(
        {
            "firewall",
            "installation_device",
            "partitioning_mode",
            "filesystem",
            "disk",
            "fdo",
            "openscap",
            "ignition",
            "fips",
            "repositories",
            "installer",
            "rhsm",
            "cacerts",
            "rpm",
        }
    ),
}

_TOML_POSITION = re.compile(r"(?s)(.*) \(at line (\d+), column (\d+)\)")
_TOML_END = re.compile(r"(?s)(.*) \(at end of document\)")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")

_TYPE_MESSAGES = {
    "missing": "required key is missing",
    "string_type": "expected a string",
    "int_type": "expected an integer",
    "bool_type": "expected a boolean (true or false)",
    "tuple_type": "expected an array",
    "model_type": "expected a table",
    "dict_type": "expected a table",
}


def load(path: Path, *, max_bytes: int = MAX_BLUEPRINT_BYTES) -> Blueprint:
    """Read and validate the blueprint file at ``path``.

    Args:
        path: the TOML file.
        max_bytes: refuse files larger than this.

    Returns:
        The validated blueprint; its ``sha256`` is of the file's bytes.

    Raises:
        BlueprintError: the file is unreadable, too large or invalid; lists every problem.
    """
    try:
        with path.open("rb") as stream:
            data = stream.read(max_bytes + 1)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise BlueprintError(path, [Problem("", f"cannot read the blueprint: {reason}")]) from e
    return parse(data, source=path, max_bytes=max_bytes)


def parse(
    data: bytes | str, *, source: Path | None = None, max_bytes: int = MAX_BLUEPRINT_BYTES
) -> Blueprint:
    """Validate blueprint TOML given as bytes or text.

    Args:
        data: the TOML document; text is encoded as UTF-8 for the size limit and the sha256.
        source: the file it came from, named in the error; relative builder paths in the
            blueprint are resolved against its directory (else the current directory).
        max_bytes: refuse documents larger than this many bytes.

    Returns:
        The validated blueprint.

    Raises:
        BlueprintError: the document is too large, not UTF-8, not TOML or invalid.
    """
    if isinstance(data, str):
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError as e:
            problem = Problem("", f"not valid Unicode text (character {e.start})")
            raise BlueprintError(source, [problem]) from e
    if len(data) > max_bytes:
        problem = Problem("", f"the blueprint is larger than the limit of {max_bytes} bytes")
        raise BlueprintError(source, [problem])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        problem = Problem(_position(data[: e.start].decode("utf-8")), "not valid UTF-8")
        raise BlueprintError(source, [problem]) from e
    try:
        document = tomllib.loads(text)
    except RecursionError as e:
        raise BlueprintError(source, [Problem("", "TOML nested too deeply")]) from e
    except ValueError as e:  # TOMLDecodeError, or an integer too long to convert
        raise BlueprintError(source, [_toml_problem(e, text)]) from e
    return validate_dict(document, source=source, sha256=hashlib.sha256(data).hexdigest())


def validate_dict(
    document: Mapping[str, Any], *, source: Path | None = None, sha256: str = ""
) -> Blueprint:
    """Validate an already-parsed TOML document.

    Args:
        document: the TOML document as tomllib returns it.
        source: the file it came from, named in the error; relative builder paths in the
            blueprint (container archives, manifest directories) are resolved against its
            directory.
        sha256: the hex sha256 of the source bytes, kept on the blueprint.

    Returns:
        The validated blueprint.

    Raises:
        BlueprintError: listing every problem found.
    """
    context: dict[str, object] = {"sha256": sha256}
    if source is not None:
        context["directory"] = source.absolute().parent
    try:
        return Blueprint.model_validate(document, context=context)
    except ValidationError as e:
        raise BlueprintError(source, _problems(e)) from e


def _position(before: str) -> str:
    """Render the position just after ``before`` as ``line L, column C`` (1-based)."""
    lines = before.split("\n")
    return f"line {len(lines)}, column {len(lines[-1]) + 1}"


def _toml_problem(error: ValueError, text: str) -> Problem:
    """Turn tomllib's message ``"... (at line 3, column 5)"`` into a located problem."""
    message = str(error)
    if match := _TOML_POSITION.fullmatch(message):
        return Problem(f"line {match[2]}, column {match[3]}", f"invalid TOML: {match[1]}")
    if match := _TOML_END.fullmatch(message):
        return Problem(_position(text), f"invalid TOML: {match[1]} (at end of document)")
    if isinstance(error, tomllib.TOMLDecodeError):
        return Problem("", f"invalid TOML: {message}")
    return Problem("", "invalid TOML: a number is too long")


def _problems(error: ValidationError) -> list[Problem]:
    """Translate pydantic's errors into problems with blueprint locations and messages."""
    problems: list[Problem] = []
    for detail in error.errors(include_url=False):
        loc = tuple(detail["loc"])
        cause = detail.get("ctx", {}).get("error")
        if isinstance(cause, _checks.Problems):
            problems += [Problem(_location(loc + sub), text) for sub, text in cause.items]
        else:
            problems.append(Problem(_location(loc), _message(detail, loc, cause)))
    return problems


def _message(detail: ErrorDetails, loc: tuple[str | int, ...], cause: object) -> str:
    """Say what would be accepted at ``loc``, without pydantic's wording."""
    kind = detail["type"]
    if kind == "extra_forbidden":
        return _unknown_key(loc)
    if isinstance(cause, ValueError):
        return str(cause)
    if kind == "tuple_type" and _model_at(loc) is not None:
        return f"expected an array of tables ([[{_location(loc)}]])"
    return _TYPE_MESSAGES.get(kind, "invalid value")


def _unknown_key(loc: tuple[str | int, ...]) -> str:
    """Name the accepted keys of the table that holds the unknown key at ``loc``."""
    model = _model_at(loc[:-1])
    if model is None:
        return "unknown key"
    if loc[-1] in OSBUILD_UNSUPPORTED.get(model, frozenset()):
        return "osbuild key not supported by afield yet"
    return f"unknown key; accepted keys: {', '.join(sorted(_keys(model)))}"


def _keys(model: type[BaseModel]) -> dict[str, str]:
    """The TOML keys of ``model`` (a field's alias where it has one) and their field names."""
    return {field.alias or name: name for name, field in model.model_fields.items()}


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model that validates the table at ``loc``, following field annotations."""
    model: type[BaseModel] = Blueprint
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(_keys(model).get(part, ""))
        inner = _inner_model(field.annotation) if field is not None else None
        if inner is None:
            return None
        model = inner
    return model


def _inner_model(annotation: object) -> type[BaseModel] | None:
    """Find the model inside ``X``, ``X | None`` or ``tuple[X, ...]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (tuple, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if (found := _inner_model(arg)) is not None:
                return found
    return None


def _location(loc: tuple[str | int, ...]) -> str:
    """Render a pydantic location as a TOML key path, e.g. ``customizations.user[1].uid``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            key = part if _BARE_KEY.fullmatch(part) else json.dumps(part)
            text += f".{key}" if text else key
    return text
