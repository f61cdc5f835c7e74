"""Power-loss campaign: cut the power at every write point of stage, boot and rollback.

For each scenario (a good update, a bad update, a manual rollback) the harness first records
the write points each step passes (``AFIELD_FAULT_PLAN=record:FILE``), then for every step and
every point: restores the device as it was before the step, runs the step in a fresh process
that dies at that point (``kill:N``, ``os._exit``: no cleanup, like a power cut), optionally cuts
the power again during the first boot afterwards, and then boots until the device settles.

Invariant after every fault: the device settles within MAX + 2 boots on a deployment whose
required checks pass, never on the broken image, and the local /etc change made before the
scenario is still there. The campaign's counts are printed at the end (run pytest with -s).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from afield.device.bootseq import boot_once
from afield.device.fault import FAULT_EXIT_CODE
from afield.device.lifecycle import Device
from tests.conftest import PROJECT, REPORTS
from tests.device.conftest import Images

pytestmark = [pytest.mark.slow, pytest.mark.root]

MAX_ATTEMPTS = 3
SECOND_CUT_SPREAD = 14  # a boot passes about this many write points
SITE_CONF = "operator-was-here\n"


@dataclass
class Campaign:
    """Counts of the whole campaign, printed when it ends."""

    faults: Counter[str] = field(default_factory=Counter)
    points: Counter[str] = field(default_factory=Counter)
    boots_to_settle: Counter[int] = field(default_factory=Counter)


def _copy(source: Path, target: Path) -> Path:
    subprocess.run(["cp", "-a", str(source), str(target)], check=True)
    return target


def _step(sysroot: Path, step: tuple[str, ...], images: Images, plan: str | None) -> int:
    args = [str(sysroot), step[0]]
    if step[0] == "stage":
        args += [str(images.repo), getattr(images, step[1])]
    env = {**os.environ}
    env.pop("AFIELD_FAULT_PLAN", None)
    if plan is not None:
        env["AFIELD_FAULT_PLAN"] = plan
    result = subprocess.run(
        [sys.executable, "-m", "tests.device._fault_child", *args],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode not in (0, FAULT_EXIT_CODE):
        raise AssertionError(f"step {step} failed:\n{result.stderr}")
    return result.returncode


def _settle(sysroot: Path, images: Images) -> int:
    """Boot until a healthy boot needs no reboot; assert the invariants; the boots it took."""
    device = Device.open(sysroot)
    boots = 0
    while True:
        boots += 1
        result = boot_once(device)
        if result.healthy and not result.reboot:
            break
        assert boots < MAX_ATTEMPTS + 2, f"{sysroot}: no healthy boot in {boots} boots"
    assert result.checksum != images.broken
    again = boot_once(device)
    assert again.healthy and again.checksum == result.checksum, "did not stay settled"
    booted = device.booted()
    assert booted is not None
    assert (booted.path / "etc" / "site.conf").read_text() == SITE_CONF, "lost a local /etc change"
    device.state.events()  # readable, torn last line at most
    return boots


def _record(sysroot: Path, step: tuple[str, ...], images: Images, log: Path) -> list[str]:
    log.unlink(missing_ok=True)
    assert _step(sysroot, step, images, f"record:{log}") == 0
    return log.read_text().splitlines()


@pytest.fixture(scope="module")
def campaign() -> Iterator[Campaign]:
    result = Campaign()
    yield result
    total = sum(result.faults.values())
    lines = [f"power-loss campaign: {total} injected faults"]
    lines += [f"  {scenario}: {count}" for scenario, count in sorted(result.faults.items())]
    lines.append(f"  distinct write points hit: {len(result.points)}")
    lines.append(f"  boots to settle: {dict(sorted(result.boots_to_settle.items()))}")
    # Printed in pytest's terminal summary (tests/conftest.py), so every run shows the counts.
    REPORTS.extend(lines)


def _base(tmp_path: Path, images: Images) -> Path:
    device = Device.init(tmp_path / "base", "gateway")
    device.install(images.repo, images.v1)
    boot_once(device)
    (device.booted().path / "etc" / "site.conf").write_text(SITE_CONF)
    return device.sysroot_path


_BAD = [("stage", "broken"), ("boot",), ("boot",), ("boot",), ("boot",)]
SCENARIOS: dict[str, tuple[str, list[tuple[str, ...]]]] = {
    "good update": ("v1", [("stage", "v2"), ("boot",), ("boot",)]),
    "bad update": ("v1", _BAD),
    "bad update after a good one": ("v2", _BAD),
    "downgrade": ("v2", [("stage", "v1"), ("boot",)]),
    "manual rollback": ("v2", [("rollback",), ("boot",)]),
    "good update after a rollback": ("rolled-back", [("stage", "v2"), ("boot",), ("boot",)]),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_power_cut_at_every_write_point_keeps_the_device_bootable(
    scenario: str, tmp_path: Path, images: Images, campaign: Campaign
) -> None:
    start, steps = SCENARIOS[scenario]
    base = _base(tmp_path, images)
    device = Device.open(base)
    if start == "v2":
        device.stage(images.repo, images.v2)
        boot_once(device)
    elif start == "rolled-back":
        device.stage(images.repo, images.broken)
        for _ in range(MAX_ATTEMPTS + 1):
            boot_once(device)
        assert device.booted().checksum == images.v1
    before = base
    for index, step in enumerate(steps):
        points = _record(
            _copy(before, tmp_path / f"record-{index}"), step, images, tmp_path / "points.log"
        )
        for k, name in enumerate(points, start=1):
            # A cut at point k of this step, then a second cut during the first boot after it,
            # at a point that moves along with k.
            trial = _copy(before, tmp_path / "trial")
            assert _step(trial, step, images, f"kill:{k}") == FAULT_EXIT_CODE
            campaign.faults[scenario] += 1
            campaign.points[name] += 1
            second = f"kill:{(k - 1) % SECOND_CUT_SPREAD + 1}"
            if _step(trial, ("boot",), images, second) == FAULT_EXIT_CODE:
                campaign.faults[f"{scenario} (second cut while booting)"] += 1
            campaign.boots_to_settle[_settle(trial, images)] += 1
            subprocess.run(["rm", "-rf", str(trial)], check=True)
        # The next step starts from this step done without a fault.
        done = _copy(before, tmp_path / f"done-{index}")
        assert _step(done, step, images, None) == 0
        before = done
    assert campaign.faults[scenario] > 0
