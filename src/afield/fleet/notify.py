"""Wake-ups between threads of the fleet manager: long-polls and the rollout runner.

:class:`Notifier` lets a device's long-poll (``GET /api/v1/device/desired?wait=S``, an
``async`` handler) sleep until the device's desired state may have changed. The rollout runner,
a thread, calls :meth:`Notifier.wake` with the devices it just told to update; each waiting
request then reads its state again and answers. Nothing is lost if a wake-up comes between a
request's read and its wait: a request registers (:meth:`Notifier.watch`) before it reads.

:class:`Doorbell` is the runner's side: device reports ring it so the runner steps at once
instead of at its next tick.

Both live in one process. With several API processes (PostgreSQL), a device whose long-poll
sits in another process than the runner that assigned it learns at the end of its wait, at
most ``wait`` seconds late.

What it leaves to others: deciding what changed (the runner), answering requests (the device
API).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable

__all__ = ["Doorbell", "Notifier"]


class Notifier:
    """Futures of long-polls by device id, resolved from any thread."""

    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Future[None]]] = {}
        self._lock = threading.Lock()

    def watch(self, device_id: str) -> asyncio.Future[None]:
        """A future resolved at the next :meth:`wake` of ``device_id`` (call in the event loop)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._waiting.setdefault(device_id, set()).add(future)
        return future

    def forget(self, device_id: str, future: asyncio.Future[None]) -> None:
        """Stop watching (the request answered or went away)."""
        with self._lock:
            futures = self._waiting.get(device_id)
            if futures is not None:
                futures.discard(future)
                if not futures:
                    del self._waiting[device_id]

    def wake(self, device_ids: Iterable[str]) -> int:
        """Resolve the futures of ``device_ids``; returns how many requests were waiting."""
        woken: list[asyncio.Future[None]] = []
        with self._lock:
            for device_id in device_ids:
                woken.extend(self._waiting.pop(device_id, ()))
        for future in woken:
            future.get_loop().call_soon_threadsafe(_resolve, future)
        return len(woken)

    def waiting(self) -> int:
        """How many long-polls are waiting now (for /metrics)."""
        with self._lock:
            return sum(len(f) for f in self._waiting.values())


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Doorbell:
    """A flag the runner's thread sleeps on: :meth:`ring` wakes it before its timeout."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def ring(self) -> None:
        """Ask the runner to step now."""
        self._event.set()

    def wait(self, timeout: float) -> bool:
        """Sleep until rung or ``timeout`` seconds passed; True when rung (and clear it)."""
        rung = self._event.wait(timeout)
        self._event.clear()
        return rung
