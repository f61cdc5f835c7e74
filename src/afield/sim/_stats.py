"""The simulated fleet's figures: requests, latencies and errors by kind, and their summary.

What it leaves to others: counting them as requests happen (:mod:`afield.sim.fleet`).
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["KINDS", "TIMED", "SimStats", "SimSummary"]

KINDS = ("enroll", "desired", "status", "wait")  # request kinds; ``wait`` is a held long-poll
TIMED = ("desired", "status")  # the kinds the latency figures cover
_SAMPLES = 20  # error messages kept


@dataclass
class SimStats:
    """What the fleet's requests did since the last :meth:`SimFleet.take_stats` (picklable).

    ``latencies`` are seconds by request kind (:data:`KINDS`), from the moment the request has
    a connection (a device never waits for one; the simulator's shared pools may) to its
    answer; ``errors`` counts ``"<kind>: <what>"``; ``events`` counts what devices did
    (``updated``, ``rolled_back``, ``health_failed``, ``refused``).
    """

    seconds: float = 0.0
    latencies: dict[str, array[float]] = field(
        default_factory=lambda: {kind: array("d") for kind in KINDS}
    )
    errors: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)
    events: Counter[str] = field(default_factory=Counter)

    def timed(self, kind: str, seconds: float) -> None:
        """Count one answered request of ``kind`` that took ``seconds``."""
        self.latencies[kind].append(seconds)

    def failed(self, kind: str, what: str, detail: str) -> None:
        """Count one error of a ``kind`` request."""
        self.errors[f"{kind}: {what}"] += 1
        if len(self.samples) < _SAMPLES:
            self.samples.append(f"{kind}: {what}: {detail}"[:300])

    def merge(self, other: SimStats) -> None:
        """Add ``other``'s counts (another process's part of the fleet, same window)."""
        self.seconds = max(self.seconds, other.seconds)
        for kind, values in other.latencies.items():
            self.latencies.setdefault(kind, array("d")).extend(values)
        self.errors.update(other.errors)
        self.samples.extend(other.samples[: max(0, _SAMPLES - len(self.samples))])
        self.events.update(other.events)

    def requests(self, kinds: Iterable[str] = KINDS) -> int:
        """Requests answered of these kinds (errors without an answer not included)."""
        return sum(len(self.latencies.get(kind, ())) for kind in kinds)

    def percentile(self, q: float, kinds: Iterable[str] = TIMED) -> float | None:
        """The ``q``-th percentile (0-100, nearest rank) latency in seconds; None if none."""
        values = sorted(v for kind in kinds for v in self.latencies.get(kind, ()))
        if not values:
            return None
        rank = max(1, -(-len(values) * q // 100))
        return values[int(rank) - 1]


@dataclass(frozen=True)
class SimSummary:
    """A run's figures, as ``afield sim`` prints them."""

    devices: int
    enrolled: int
    versions: dict[str, int]
    seconds: float
    requests: int
    requests_by_kind: dict[str, int]
    p50_ms: float | None
    p99_ms: float | None
    enroll_p50_ms: float | None
    errors: int
    errors_by_kind: dict[str, int]
    error_samples: list[str]
    events: dict[str, int]

    @classmethod
    def of(
        cls, stats: SimStats, *, devices: int, enrolled: int, versions: Mapping[str, int]
    ) -> SimSummary:
        """The summary of ``stats`` for a fleet of ``devices``."""

        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000, 2)

        return cls(
            devices=devices,
            enrolled=enrolled,
            versions=dict(sorted(versions.items())),
            seconds=round(stats.seconds, 3),
            requests=stats.requests(),
            requests_by_kind={kind: len(stats.latencies.get(kind, ())) for kind in KINDS},
            p50_ms=ms(stats.percentile(50)),
            p99_ms=ms(stats.percentile(99)),
            enroll_p50_ms=ms(stats.percentile(50, ("enroll",))),
            errors=sum(stats.errors.values()),
            errors_by_kind=dict(sorted(stats.errors.items())),
            error_samples=list(stats.samples),
            events=dict(sorted(stats.events.items())),
        )

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready data."""
        return {
            "devices": self.devices,
            "enrolled": self.enrolled,
            "versions": self.versions,
            "seconds": self.seconds,
            "requests": self.requests,
            "requests_by_kind": self.requests_by_kind,
            "requests_per_second": round(self.requests / self.seconds, 1) if self.seconds else 0,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "enroll_p50_ms": self.enroll_p50_ms,
            "errors": self.errors,
            "errors_by_kind": self.errors_by_kind,
            "error_samples": self.error_samples,
            "events": self.events,
        }
