"""The simulated fleet's settings (:class:`SimConfig`) and its errors.

What it leaves to others: running the fleet (:mod:`afield.sim.fleet`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from afield.errors import FleetError, Problem
from afield.fleet.protocol import COMMIT, MAX_WAIT, VERSION

__all__ = ["SimConfig", "SimConfigError", "SimError", "commit_of"]


class SimError(FleetError):
    """The simulated fleet cannot run: the server refused the admin token or enrollment."""


class SimConfigError(FleetError):
    """A simulation setting is out of range; ``problems`` names each setting."""

    user_error = True

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("simulation: " + "; ".join(str(p) for p in self.problems))


def commit_of(image: str, arch: str, version: str) -> str:
    """A stand-in commit checksum for a release the simulation names only by version."""
    return hashlib.sha256(f"afield-sim/{image}/{arch}/{version}".encode()).hexdigest()


@dataclass(frozen=True)
class SimConfig:
    """How the simulated fleet behaves; times in seconds.

    Args:
        server: the fleet manager's base URL.
        admin_token: an admin API token (it makes the enrollment tokens).
        devices: how many devices.
        labels: the labels every device gets (through its enrollment token).
        image, arch: what the devices report they are.
        version, commit: the release they run at the start (commit: :func:`commit_of`).
        poll_interval: seconds between polls of the desired state (plain polling).
        jitter: each wait is drawn within ``+-jitter`` of its nominal length (a fraction).
        wait: long-poll instead: ask the server to hold each poll up to ``wait`` s.
        ramp: devices start (report, first poll) spread over this many seconds (default:
            ``poll_interval`` when polling, 1 s when long-polling).
        download_seconds, reboot_seconds: how long an update downloads and a reboot takes.
        failure_rate: the chance that an update fails (half at boot, half health checks).
        fail_versions: versions whose update always fails its health checks.
        fail_devices: device names (``sim-00003``) whose updates always fail their checks.
        seed: seeds every random decision.
        name_prefix, first_index: devices are named ``{name_prefix}-{index:05d}`` from
            ``first_index`` (several processes simulate parts of one fleet).
        enroll_concurrency: enrollments in flight at once.
        connections: the HTTP connections the fleet may open (default 100 when polling; one
            per device and some when long-polling, since every device holds one).
        keepalive: reuse connections; False opens one per request, as a device whose poll
            interval outlasts the server's keep-alive does.
        request_timeout: seconds a request may take (on top of a long-poll's ``wait``).
        backoff_base, backoff_max: after the n-th error in a row a device waits a random
            time up to ``min(backoff_max, backoff_base * 2**n)``.
        token_ttl: lifetime of the enrollment tokens, seconds.
    """

    server: str
    admin_token: str
    devices: int = 10
    labels: Mapping[str, str] = field(default_factory=dict)
    image: str = "gateway"
    arch: str = "x86_64"
    version: str = "1.0.0"
    commit: str | None = None
    poll_interval: float = 30.0
    jitter: float = 0.2
    wait: int | None = None
    ramp: float | None = None
    download_seconds: float = 2.0
    reboot_seconds: float = 1.0
    failure_rate: float = 0.0
    fail_versions: frozenset[str] = frozenset()
    fail_devices: frozenset[str] = frozenset()
    seed: int = 0
    name_prefix: str = "sim"
    first_index: int = 0
    enroll_concurrency: int = 16
    connections: int | None = None
    keepalive: bool = True
    request_timeout: float = 30.0
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    token_ttl: int = 86400

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", dict(self.labels))
        object.__setattr__(self, "fail_versions", frozenset(self.fail_versions))
        object.__setattr__(self, "fail_devices", frozenset(self.fail_devices))
        if self.commit is None:
            object.__setattr__(self, "commit", commit_of(self.image, self.arch, self.version))
        problems = _config_problems(self)
        if problems:
            raise SimConfigError(problems)

    @property
    def start_commit(self) -> str:
        """The commit the devices run at the start."""
        assert self.commit is not None  # noqa: S101  # set in __post_init__
        return self.commit

    @property
    def ramp_seconds(self) -> float:
        """Over how long the devices start."""
        if self.ramp is not None:
            return self.ramp
        return 1.0 if self.wait is not None else self.poll_interval

    @property
    def max_connections(self) -> int:
        """The HTTP connections the fleet may hold."""
        if self.connections is not None:
            return self.connections
        return self.devices + 16 if self.wait is not None else 100


def _config_problems(config: SimConfig) -> list[Problem]:
    problems = []

    def check(ok: bool, where: str, message: str) -> None:
        if not ok:
            problems.append(Problem(where, message))

    check(config.server.startswith(("http://", "https://")), "server", "expected an http(s) URL")
    check(bool(config.admin_token), "admin_token", "expected an admin API token")
    check(1 <= config.devices <= 1_000_000, "devices", "expected 1 to 1,000,000")
    check(re.fullmatch(VERSION, config.version) is not None, "version", "not a release version")
    check(re.fullmatch(COMMIT, config.start_commit) is not None, "commit", "expected 64 hex")
    check(config.poll_interval > 0, "poll_interval", "expected seconds above 0")
    check(0 <= config.jitter < 1, "jitter", "expected a fraction from 0 to below 1")
    check(
        config.wait is None or 1 <= config.wait <= MAX_WAIT, "wait", f"expected 1 to {MAX_WAIT} s"
    )
    check(config.ramp is None or config.ramp >= 0, "ramp", "expected 0 or more seconds")
    check(config.download_seconds >= 0, "download_seconds", "expected 0 or more seconds")
    check(config.reboot_seconds >= 0, "reboot_seconds", "expected 0 or more seconds")
    check(0 <= config.failure_rate <= 1, "failure_rate", "expected a fraction from 0 to 1")
    check(config.first_index >= 0, "first_index", "expected 0 or more")
    check(config.enroll_concurrency >= 1, "enroll_concurrency", "expected 1 or more")
    check(config.max_connections >= 1, "connections", "expected 1 or more")
    check(config.request_timeout > 0, "request_timeout", "expected seconds above 0")
    check(0 < config.backoff_base <= config.backoff_max, "backoff_base", "0 < base <= max")
    check(60 <= config.token_ttl <= 365 * 86400, "token_ttl", "expected 60 s to a year")
    return problems
