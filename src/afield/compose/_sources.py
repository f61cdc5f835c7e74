"""Find the Debian apt sources the builder itself uses, for mmdebstrap.

Reads ``/etc/apt/sources.list`` (one-line format) and ``/etc/apt/sources.list.d/*.list`` and
``*.sources`` (deb822), and keeps the ``deb`` entries for the image's suite and its companions
(``-updates``, ``-security``). Third-party sources are left out: an image is built from Debian.
"""

from __future__ import annotations

import os
from pathlib import Path

from afield.errors import ComposeError

__all__ = ["debian_mirrors"]


def _one_line(text: str) -> list[tuple[str, str, list[str]]]:
    found: list[tuple[str, str, list[str]]] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        words = line.split()[1:]
        if words and words[0].startswith("["):
            while words and not words[0].endswith("]"):
                words.pop(0)
            words = words[1:]
        if len(words) >= 3:
            found.append((words[0], words[1], words[2:]))
    return found


def _deb822(text: str) -> list[tuple[str, str, list[str]]]:
    found: list[tuple[str, str, list[str]]] = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled") == "no":
            continue
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                found.append((uri, suite, fields.get("components", "main").split()))
    return found


def debian_mirrors(suite: str, apt_dir: Path = Path("/etc/apt")) -> list[str]:
    """One-line ``deb`` sources for ``suite`` from the builder's apt configuration.

    ``AFIELD_MIRROR`` (a Debian mirror URI) overrides the host's sources.
    """
    override = os.environ.get("AFIELD_MIRROR")
    if override:
        return [f"deb {override} {suite} main"]
    entries: list[tuple[str, str, list[str]]] = []
    main_list = apt_dir / "sources.list"
    if main_list.is_file():
        entries += _one_line(main_list.read_text())
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if path.suffix == ".list":
                entries += _one_line(path.read_text())
            elif path.suffix == ".sources":
                entries += _deb822(path.read_text())
    wanted = {suite, f"{suite}-updates", f"{suite}-security"}
    lines: list[str] = []
    for uri, entry_suite, components in entries:
        if entry_suite in wanted and "main" in components:
            line = f"deb {uri} {entry_suite} main"
            if line not in lines:
                lines.append(line)
    if not any(f" {suite} " in line for line in lines):
        raise ComposeError(
            f"no apt source for Debian {suite} main in {apt_dir}; "
            "add one or set AFIELD_MIRROR to a Debian mirror URI"
        )
    return lines
