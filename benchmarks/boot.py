"""Benchmark real boots in QEMU (issue 10): time to userspace and to healthy, disk sizes, and
compose time for arm64 against x86_64.

The images are the boot tests' (``tests.disk.boot_blueprint``: ``examples/gateway.toml`` plus a
unit that powers off once the health check decided), composed here into a scratch repository.
Each is installed on a fresh disk (``afield.disk.build_disk``) per firmware and booted
``--repeats`` times in QEMU with TCG (no KVM here: these are emulator figures, not hardware's).
Times are wall-clock seconds from QEMU's start, read from the serial console:

- *userspace*: systemd's greeting from the real root ("Welcome to ...!", after the initramfs
  and ``ostree-prepare-root``);
- *check starts*: systemd starts ``afield-healthcheck.service`` (after the network is online);
- *healthy*: the health check's ``afield-boot:`` line (greenboot checks run, the boot marked
  good);
- *off*: QEMU exited after the power-off.

Ratios: healthy/userspace (what the health check adds to a boot), arm64/x86_64 (emulating a
foreign CPU), and the disk's allocated bytes over the commit's file content (the filesystems'
and boot partition's overhead). ``--cold`` composes both architectures from empty stage caches
(packages stay cached) and reports the compose times and their ratio; without it the stage
caches under ``~/.cache/afield-bench`` are reused and compose times are not reported.

Run as root: ``.venv/bin/python benchmarks/boot.py [--json] [--repeats N] [--cold]``; about
10 minutes warm, 30 cold. Interpretation: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.disk: the boot test blueprints

from tests.conftest import debs_cache, fresh_cache  # noqa: E402
from tests.disk import boot_blueprint  # noqa: E402

from afield import blueprint as bp  # noqa: E402
from afield.compose import compose  # noqa: E402
from afield.disk import MIB, Layout, build_disk  # noqa: E402
from afield.disk.qemu import Machine, boot  # noqa: E402
from afield.image import image_info, open_repository  # noqa: E402

CACHE = Path.home() / ".cache" / "afield-bench"
CASES = [("x86_64", "bios"), ("x86_64", "uefi"), ("aarch64", "uefi")]


def _compose(arch: str, work: Path, *, cold: bool) -> tuple[str, float]:
    cache = fresh_cache((work / f"cache-{arch}") if cold else CACHE / arch)
    # Both architectures start with their packages downloaded: the boot tests keep arm64's
    # apart from the shared .deb cache (tests/disk/conftest.py).
    for deb in (debs_cache().parent / "arm64" / "debs").glob("*.deb"):
        if arch == "aarch64" and not (cache / "debs" / deb.name).exists():
            os.link(deb, cache / "debs" / deb.name)
    blueprint_file = work / f"{arch}.toml"
    blueprint_file.write_text(boot_blueprint("1.0.0", arch=arch))
    started = time.monotonic()
    result = compose(bp.load(blueprint_file), work / "repo", cache_dir=cache, arch=arch)
    return result.commit, time.monotonic() - started


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 1) if known else None


def run(repeats: int, cold: bool) -> dict[str, Any]:
    """Compose, build and boot every case; the figures."""
    work = Path(tempfile.mkdtemp(prefix="afield-bench-boot-"))
    try:
        commits: dict[str, str] = {}
        compose_seconds: dict[str, float] = {}
        for arch in ("x86_64", "aarch64"):
            commits[arch], compose_seconds[arch] = _compose(arch, work, cold=cold)
        repo = open_repository(work / "repo")
        cases: list[dict[str, Any]] = []
        for arch, firmware in CASES:
            content = image_info(repo, commits[arch]).size or 0
            layout = Layout.new(arch=arch, firmware=firmware, size=4096 * MIB)
            runs = []
            build = 0.0
            for attempt in range(repeats):
                started = time.monotonic()
                disk = build_disk(
                    work / "repo", commits[arch], work / f"{arch}-{firmware}.img", layout
                )
                build = time.monotonic() - started
                result = boot(Machine(disk=disk.path, arch=arch, firmware=firmware), timeout=900)
                if result.marker is None:
                    raise SystemExit(
                        f"{arch}/{firmware} boot {attempt + 1}: no marker\n{result.tail()}"
                    )
                runs.append(result)
            cases.append(
                {
                    "arch": arch,
                    "firmware": firmware,
                    "userspace_s": _median([r.userspace for r in runs]),
                    "check_start_s": _median([r.first("Starting afield-healthchec") for r in runs]),
                    "healthy_s": _median([r.marker.seconds if r.marker else None for r in runs]),
                    "off_s": _median([r.seconds for r in runs]),
                    "disk_allocated_bytes": disk.allocated,
                    "image_content_bytes": content,
                    "disk_build_s": round(build, 1),
                }
            )
        for case in cases:
            case["healthy_over_userspace"] = (
                round(case["healthy_s"] / case["userspace_s"], 2)
                if case["healthy_s"] and case["userspace_s"]
                else None
            )
            case["disk_over_content"] = round(
                case["disk_allocated_bytes"] / case["image_content_bytes"], 2
            )
        x86 = next(c for c in cases if c["arch"] == "x86_64" and c["firmware"] == "uefi")
        arm = next(c for c in cases if c["arch"] == "aarch64")
        return {
            "date": datetime.date.today().isoformat(),
            "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cpus",
            "repeats": repeats,
            "cases": cases,
            "arm64_over_x86_64_healthy_uefi": round(arm["healthy_s"] / x86["healthy_s"], 2),
            "compose_s": {k: round(v, 1) for k, v in compose_seconds.items()} if cold else None,
            "arm64_over_x86_64_compose": (
                round(compose_seconds["aarch64"] / compose_seconds["x86_64"], 2) if cold else None
            ),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--cold", action="store_true", help="compose from empty stage caches")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    debs_cache()
    figures = run(args.repeats, args.cold)
    if args.json:
        print(json.dumps(figures, indent=1))
        return
    console = Console()
    table = Table(
        "arch",
        "firmware",
        "userspace s",
        "check starts s",
        "healthy s",
        "off s",
        "healthy/userspace",
        "disk MB",
        "content MB",
        "disk/content",
    )
    for c in figures["cases"]:
        table.add_row(
            c["arch"], c["firmware"], str(c["userspace_s"]), str(c["check_start_s"]),
            str(c["healthy_s"]), str(c["off_s"]),
            str(c["healthy_over_userspace"]), f"{c['disk_allocated_bytes'] / 1e6:.0f}",
            f"{c['image_content_bytes'] / 1e6:.0f}", str(c["disk_over_content"]),
        )  # fmt: skip
    console.print(table)
    console.print(
        f"arm64/x86_64 time to healthy (UEFI): {figures['arm64_over_x86_64_healthy_uefi']}"
    )
    if figures["compose_s"]:
        console.print(
            f"cold compose: x86_64 {figures['compose_s']['x86_64']} s, "
            f"arm64 {figures['compose_s']['aarch64']} s, "
            f"ratio {figures['arm64_over_x86_64_compose']}"
        )


if __name__ == "__main__":
    main()
