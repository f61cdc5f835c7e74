"""The agent's configuration and the fleet-reachability health check built on it.

:func:`read_config` reads, key by key, the deployment's ``/etc/afield/agent.toml``, then the
factory ``/var/lib/afield/agent.toml`` (``afield device init``), then the fleet manager's URL
onboarding left in ``/var/lib/afield/onboarding.json``. Keys:

``server``
    the fleet manager's URL (``""``: not managed; no further file is asked);
``poll_wait``
    seconds a long-poll of the desired state may wait (0 to 120, default 60);
``network_grace``
    seconds :func:`check_fleet` keeps trying before it fails the boot (default 300);
``reboot_command``
    what reboots the device after staging an update (default ``systemctl reboot``).

``os`` and ``trust_root`` (written by ``afield device init`` for others) are accepted and
ignored; any other key is an error, so a typo in an image's configuration fails its health
check instead of being silently ignored.

What it leaves to others: acting on the configuration (:mod:`afield.device.agent`).
"""

from __future__ import annotations

import json
import re
import shlex
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from afield.device.fleetclient import FleetClient
from afield.errors import DeviceError, FleetError, Problem, TransportError
from afield.fleet.protocol import MAX_WAIT

__all__ = ["CONFIG", "MAX_FILE_BYTES", "AgentConfig", "check_fleet", "read_config", "read_limited"]

CONFIG = "etc/afield/agent.toml"
MAX_FILE_BYTES = 64 * 1024
_AGENT_KEYS = ("server", "poll_wait", "network_grace", "reboot_command")
_FACTORY_KEYS = ("os", "trust_root")  # written by `afield device init`, read by others


@dataclass(frozen=True)
class AgentConfig:
    """The agent's settings and, per key, the file each came from (``sources``)."""

    server: str | None = None
    poll_wait: int = 60
    network_grace: float = 300.0
    reboot_command: tuple[str, ...] = ("systemctl", "reboot")
    sources: Mapping[str, str] = field(default_factory=dict)


def read_limited(path: Path, problems: list[Problem]) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        problems.append(Problem(str(path), f"cannot read: {e.strerror or e}"))
        return None
    if len(data) > MAX_FILE_BYTES:
        problems.append(Problem(str(path), f"larger than {MAX_FILE_BYTES} bytes"))
        return None
    return data


def _toml(path: Path, problems: list[Problem]) -> dict[str, Any]:
    data = read_limited(path, problems)
    if data is None:
        return {}
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        problems.append(Problem(str(path), f"not valid TOML: {e}"))
        return {}


def _server(value: Any) -> str | None:
    if not isinstance(value, str) or len(value) > 2048:
        raise ValueError("expected the fleet manager's URL, such as http://fleet.example:8080")
    if value == "":
        return None  # explicitly not managed
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value.rstrip("/")


def _whole_seconds(high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
            raise ValueError(f"expected whole seconds from 0 to {high}, got {value!r}")
        return value

    return check


def _seconds(high: float) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= high:
            raise ValueError(f"expected seconds from 0 to {high:g}, got {value!r}")
        return float(value)

    return check


def _command(value: Any) -> tuple[str, ...]:
    argv = shlex.split(value) if isinstance(value, str) else value
    if (
        not isinstance(argv, list)
        or not 1 <= len(argv) <= 32
        or not all(isinstance(a, str) and 0 < len(a) <= 1024 for a in argv)
    ):
        raise ValueError('expected a command line, such as "systemctl reboot"')
    return tuple(argv)


_CHECKS: Mapping[str, Callable[[Any], Any]] = {
    "server": _server,
    "poll_wait": _whole_seconds(MAX_WAIT),
    "network_grace": _seconds(3600),
    "reboot_command": _command,
}


def read_config(etc: Path, var_lib: Path) -> AgentConfig:
    """The agent's configuration: ``etc/afield/agent.toml`` of the running (or booted)
    deployment first, then the factory ``var_lib/agent.toml``, then the fleet manager's URL in
    ``var_lib/onboarding.json``; defaults for what none of them sets.

    ``server = ""`` in a file says "not managed" and stops the search for a server.

    Raises:
        DeviceError: a file is unreadable, too large, not TOML or JSON, or a key is unknown or
            has a bad value (every problem, each naming the file and the key; a user error).
    """
    problems: list[Problem] = []
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for path in (etc / "afield" / "agent.toml", var_lib / "agent.toml"):
        for key, raw in _toml(path, problems).items():
            if key not in _CHECKS:
                if key not in _FACTORY_KEYS:
                    accepted = ", ".join(_AGENT_KEYS)
                    problems.append(Problem(f"{path}: {key}", f"unknown key; accepted: {accepted}"))
                continue
            try:
                value = _CHECKS[key](raw)
            except ValueError as e:
                problems.append(Problem(f"{path}: {key}", str(e)))
                continue
            if key not in sources:
                values[key], sources[key] = value, str(path)
    if "server" not in sources:
        record = var_lib / "onboarding.json"
        data = read_limited(record, problems)
        if data is not None:
            try:
                url = json.loads(data).get("fleet_url")
                if url:
                    values["server"], sources["server"] = _server(url), str(record)
            except (ValueError, AttributeError) as e:
                problems.append(Problem(f"{record}: fleet_url", f"not usable: {e}"))
    if problems:
        raise DeviceError(_problems("agent configuration", problems), user_error=True)
    return AgentConfig(**values, sources=sources)


def _problems(what: str, problems: list[Problem]) -> str:
    if len(problems) == 1:
        return f"{what}: {problems[0]}"
    return f"{what}: {len(problems)} problems\n" + "\n".join(f"  {p}" for p in problems)


def check_fleet(
    root: Path = Path("/"),
    *,
    grace: float | None = None,
    interval: float = 3.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[bool, str]:
    """Whether the fleet manager configured for the system at ``root`` answers ``/healthz``.

    Tries every ``interval`` seconds for ``grace`` seconds (default: ``network_grace``), since
    the network may come up after the check starts. A device with no fleet manager configured
    passes: an unmanaged device must still boot healthy.

    Returns:
        (reachable, one line saying why).

    Raises:
        DeviceError: the configuration is unreadable or invalid (the check fails with it).
    """
    config = read_config(root / "etc", root / "var" / "lib" / "afield")
    if config.server is None:
        return True, "not managed by a fleet manager"
    wait = config.network_grace if grace is None else grace
    source = config.sources.get("server", "?")
    deadline = clock() + wait
    attempts = 0
    with FleetClient(config.server, timeout=5.0) as client:
        while True:
            attempts += 1
            try:
                client.healthz(timeout=max(1.0, min(5.0, deadline - clock())))
                return True, f"fleet manager {config.server} is reachable"
            except (TransportError, FleetError) as e:
                last = e
            left = deadline - clock()
            if left <= 0:
                return False, (
                    f"fleet manager {config.server} (server in {source}) unreachable for "
                    f"{wait:g} s, {attempts} attempts: {last}"
                )
            sleep(min(interval, left))
