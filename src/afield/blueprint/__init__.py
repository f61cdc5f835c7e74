"""Blueprints: what OS image to compose, in osbuild's blueprint TOML format.

:func:`load` and :func:`parse` read a blueprint, check every key and value, and return an immutable
:class:`Blueprint`, or raise one :class:`~afield.errors.BlueprintError` listing every problem with
its location. Keys osbuild knows but afield does not implement are refused by name, not ignored.
Paths to files on the builder (container archives, manifest directories) are kept as written and
resolved against the blueprint file's directory by :meth:`Blueprint.resolve_path`; whether they
exist is checked when composing. Turning a blueprint into an OS tree is left to
:mod:`afield.compose`.
"""

from __future__ import annotations

from afield.blueprint._parse import MAX_BLUEPRINT_BYTES, load, parse
from afield.blueprint.model import (
    AfieldOptions,
    Blueprint,
    Container,
    Customizations,
    Directory,
    File,
    Group,
    Kernel,
    Locale,
    ManifestDirectory,
    Package,
    Services,
    SshKey,
    Timezone,
    User,
)

__all__ = [
    "MAX_BLUEPRINT_BYTES",
    "AfieldOptions",
    "Blueprint",
    "Container",
    "Customizations",
    "Directory",
    "File",
    "Group",
    "Kernel",
    "Locale",
    "ManifestDirectory",
    "Package",
    "Services",
    "SshKey",
    "Timezone",
    "User",
    "load",
    "parse",
]
