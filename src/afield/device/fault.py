"""Fault injection: named write points where a test harness can cut the power.

Device code calls :func:`point` just before and after every write that matters (deployment
written, counter armed, grubenv rewritten, journal appended, ...). In production nothing happens.
With ``AFIELD_FAULT_PLAN`` set in the environment, the process either records the points it
passes (``record:FILE``, one name per line, appended) or dies abruptly at the N-th point it
passes (``kill:N``) with ``os._exit``, leaving files exactly as a power cut would (no cleanup,
no flush of Python buffers). The harness in ``tests/device`` uses both to cut power at every
point of every scenario.
"""

from __future__ import annotations

import os

__all__ = ["FAULT_EXIT_CODE", "point"]

FAULT_EXIT_CODE = 113
_ENV = "AFIELD_FAULT_PLAN"
_passed = 0


def point(name: str) -> None:
    """Mark a write point called ``name``; may end the process when a fault plan says so."""
    global _passed
    plan = os.environ.get(_ENV)
    if not plan:
        return
    mode, _, arg = plan.partition(":")
    _passed += 1
    if mode == "record":
        with open(arg, "a") as log:
            log.write(f"{name}\n")
    elif mode == "kill" and arg.isdigit() and _passed == int(arg):
        os._exit(FAULT_EXIT_CODE)
