"""Helpers of the simulated-fleet tests, shared with the dashboard's browser tests.

:func:`simulating` runs a simulated fleet (:class:`afield.sim.SimFleet`) on an event loop in a
thread of its own; :func:`until` waits for a condition, failing after a timeout.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from afield.sim import SimConfig, SimFleet


@contextmanager
def simulating(config: SimConfig) -> Iterator[SimFleet]:
    """Run ``config``'s fleet on an event loop of its own in a thread, enrolled at the start."""
    fleet = SimFleet(config)
    enrolled = threading.Event()
    failures: list[BaseException] = []

    async def main() -> None:
        async with fleet:
            await fleet.enroll()
            enrolled.set()
            await fleet.run()

    def thread_main() -> None:
        try:
            asyncio.run(main())
        except BaseException as e:
            failures.append(e)
        finally:
            enrolled.set()

    thread = threading.Thread(target=thread_main, name="sim", daemon=True)
    thread.start()
    assert enrolled.wait(60), "the fleet did not enroll in 60 s"
    try:
        if failures:
            raise failures[0]
        yield fleet
    finally:
        fleet.stop()
        thread.join(30)
    if failures:
        raise failures[0]


def until(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.2)
