"""Boot counting on a device: grubenv, boot loader entries, the counter and the GRUB menu.

:mod:`~afield.device.boot.grubenv` reads and writes GRUB's environment block,
:mod:`~afield.device.boot.bls` reads OSTree's boot loader entries in menu order,
:mod:`~afield.device.boot.counter` is greenboot's boot counter as a pure state machine, and
:mod:`~afield.device.boot.grubcfg` renders the ``grub.cfg`` that runs the same counter in GRUB.
Deploying, rebooting and reporting are the agent's.
"""

from __future__ import annotations

from afield.device.boot.bls import BootEntry, BootEntryError, load_entries, load_entry
from afield.device.boot.counter import (
    MAX_ATTEMPTS_LIMIT,
    Action,
    BootChoice,
    BootCounterError,
    BootOutcome,
    after_boot,
    arm,
    firmware_choose,
)
from afield.device.boot.grubcfg import GrubCfgError, render_grub_cfg
from afield.device.boot.grubenv import GrubenvError, read_grubenv, write_grubenv

__all__ = [
    "MAX_ATTEMPTS_LIMIT",
    "Action",
    "BootChoice",
    "BootCounterError",
    "BootEntry",
    "BootEntryError",
    "BootOutcome",
    "GrubCfgError",
    "GrubenvError",
    "after_boot",
    "arm",
    "firmware_choose",
    "load_entries",
    "load_entry",
    "read_grubenv",
    "render_grub_cfg",
    "write_grubenv",
]
