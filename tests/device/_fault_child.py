"""Run one device step in a fresh process, so a fault plan can end it like a power cut.

Usage: python -m tests.device._fault_child SYSROOT STEP [REPO COMMIT]
with STEP one of stage, boot, rollback; AFIELD_FAULT_PLAN in the environment says where to die.
Imports only the device side, so each run starts fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

from afield.device.bootseq import boot_once
from afield.device.lifecycle import Device


def main(argv: list[str]) -> int:
    sysroot, step = Path(argv[0]), argv[1]
    device = Device.open(sysroot)
    if step == "stage":
        device.stage(Path(argv[2]), argv[3])
    elif step == "boot":
        boot_once(device)
    elif step == "rollback":
        device.rollback()
    else:
        raise SystemExit(f"unknown step {step}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
