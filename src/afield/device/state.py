"""Device state that outlives deployments: the event journal and the boot record.

Everything lives in the stateroot's ``/var/lib/afield`` (``ostree/deploy/<os>/var/lib/afield``
seen from outside), shared by every deployment of the OS:

- ``journal.jsonl``: append-only events (staged, booted, health failed, rolled back, ...), one
  JSON object per line, each written with a single ``write`` and fsync'd, so a power cut loses at
  most the line being written; a torn last line is ignored on reading.
- ``state.json``: the last boot (which deployment, the health report), replaced atomically.
- ``agent.toml``: the agent's factory configuration written by ``afield device init``.

What it leaves to others: deciding what to record (``afield.device.lifecycle``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from afield.device import fault
from afield.errors import DeviceError

__all__ = ["DeviceState", "atomic_write"]

MAX_JOURNAL_LINE = 256 * 1024


def atomic_write(path: Path, data: bytes, *, point: str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so a power cut leaves the old or the new content; the
    file has ``mode`` from its first byte (a secret is never readable by others, not even
    for a moment)."""
    temp = path.with_name(f".{path.name}.new")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    fault.point(f"{point}:before-rename")
    os.replace(temp, path)
    dirfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)
    fault.point(f"{point}:after-rename")


class DeviceState:
    """The ``/var/lib/afield`` directory of one stateroot."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.journal = directory / "journal.jsonl"
        self.state_file = directory / "state.json"
        self.config_file = directory / "agent.toml"

    def ensure(self) -> None:
        """Create the directory if needed."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    # -- events ---------------------------------------------------------------------------------

    def record(self, event: str, **details: Any) -> dict[str, Any]:
        """Append one event to the journal and return it."""
        entry = {"time": round(time.time(), 3), "event": event, **details}
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        if len(line) > MAX_JOURNAL_LINE:
            entry = {"time": entry["time"], "event": event, "truncated": True}
            line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        self.ensure()
        fault.point(f"journal:{event}:before")
        fd = os.open(self.journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        fault.point(f"journal:{event}:after")
        return entry

    def events(self) -> list[dict[str, Any]]:
        """Every complete event in the journal, oldest first (a torn last line is skipped)."""
        try:
            data = self.journal.read_bytes()
        except FileNotFoundError:
            return []
        events: list[dict[str, Any]] = []
        for raw in data.split(b"\n"):
            if not raw.strip():
                continue
            try:
                value = json.loads(raw)
            except ValueError:
                continue  # a line cut by a power loss
            if isinstance(value, dict):
                events.append(value)
        return events

    # -- state ----------------------------------------------------------------------------------

    def load(self) -> dict[str, Any]:
        """The saved state; empty when none was saved or the file is unreadable."""
        try:
            value = json.loads(self.state_file.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    def save(self, state: Mapping[str, Any]) -> None:
        """Replace the saved state atomically."""
        self.ensure()
        data = (json.dumps(dict(state), sort_keys=True, indent=1) + "\n").encode()
        atomic_write(self.state_file, data, point="state")

    def update(self, **changes: Any) -> dict[str, Any]:
        """Merge ``changes`` into the saved state and save it."""
        state = {**self.load(), **changes}
        self.save(state)
        return state

    def check(self) -> None:
        """Fail clearly if the directory exists but cannot be used."""
        if self.directory.exists() and not self.directory.is_dir():
            raise DeviceError(f"{self.directory}: exists and is not a directory")
