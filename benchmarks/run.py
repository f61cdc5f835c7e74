"""Benchmark compose on ``examples/gateway.toml``: cold versus raw tools, warm, files-only change.

Figures, each measured ``--repeat`` times (default once) with :func:`time.perf_counter`:

1. cold compose (fresh stage cache, downloads pre-filled: .debs, wheels) against the raw baseline of
   ``_baseline.py`` (plain mmdebstrap of the same packages + ``ostree commit``); goal ratio <= 1.3.
   Plain mmdebstrap builds the initramfs twice, so the same ratio is also taken against a baseline
   that builds it once (``INITRD=No`` + one ``dracut``), as the compose does.
2. warm recompose of the unchanged blueprint into the same repository; goal <= 5% of cold.
3. the files-only variant (one line of file data changed); goal <= 30% of cold, and the bootstrap
   and kernel stages must come from the cache (asserted).
4. a version-bump variant (only the commit's metadata changes), and the bytes each change adds to
   the repository's ``objects/``; no goals, for orientation.

Run as root: ``make bench`` or ``.venv/bin/python benchmarks/run.py [--json] [--repeat N]``. The
scratch directories (about 1 GB per compose cache) are removed at the end. Where the packages come
from is ``_workload.py``; interpreting the numbers is benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

import afield
from _baseline import BaselineRun, run_baseline
from _workload import (
    Variants,
    keep_downloads,
    link_downloads,
    remove_tree,
    snapshot_source,
    tree_size,
    write_variants,
)
from afield.blueprint import Blueprint, load
from afield.compose import ComposeResult, compose, default_cache_dir
from afield.compose.pipeline import stage_ids
from afield.compose.plan import host_target, plan

ROOT = Path(__file__).resolve().parents[1]
# Set in the process that runs the figures on a snapshot of afield's source: the snapshot's path.
SNAPSHOT_ENV = "AFIELD_BENCH_SNAPSHOT"
BOOTSTRAP, KERNEL = "afield.debian.bootstrap", "afield.kernel"
GOALS = {"cold": 1.3, "warm": 0.05, "files_only": 0.30}
NOTES = (
    "The baseline does not OSTree-ify the tree (no /usr/etc move, /var kept, no afield stages): "
    "it is the raw cost of mmdebstrap + ostree commit.",
    "Both sides read .debs from the same pre-filled pool (the compose also its wheels); both "
    "still fetch the apt indices from the mirror, so that network time is in both.",
    "Plain mmdebstrap runs dracut twice (kernel postinst, then dracut's trigger after "
    "ostree-boot is unpacked); the compose skips both (INITRD=No) and runs it once in "
    "afield.kernel. The '1 initramfs' baseline does the same: INITRD=No, then one dracut.",
)


@dataclass(frozen=True)
class Measured:
    """One timed compose: wall seconds around ``compose()``, what it reported, the plan's ids."""

    seconds: float
    result: ComposeResult
    ids: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON."""
        r = self.result
        return {
            "seconds": self.seconds,
            "outside_stages": self.seconds - sum(r.stage_seconds.values()),
            "stage_seconds": r.stage_seconds,
            "ran": list(r.ran),
            "cached": list(r.cached),
            "commit": r.commit,
        }


@dataclass(frozen=True)
class Sample:
    """Every figure of one repetition."""

    baseline: BaselineRun
    baseline_one: BaselineRun
    cold: Measured
    warm: Measured
    files_only: Measured
    version_bump: Measured
    repo_cold: tuple[int, int]
    files_only_added: tuple[int, int]
    version_bump_added: tuple[int, int]


class _Progress:
    """A compose reporter printing one line per stage to stderr."""

    def __init__(self, console: Console, label: str) -> None:
        self.console = console
        self.label = label

    def stage_started(self, index: int, total: int, name: str) -> None:
        pass

    def stage_finished(self, index: int, name: str, seconds: float, cached: bool) -> None:
        what = "cached" if cached else f"{seconds:.1f} s"
        self.console.log(f"  {self.label}: {index + 1:2d} {name:<24} {what}")

    def log(self, line: str) -> None:
        pass


def _timed_compose(
    blueprint: Blueprint, repo: Path, cache: Path, console: Console, label: str
) -> Measured:
    ids = tuple(stage_ids(plan(blueprint, host_target(blueprint.distro))))
    os.sync()  # writeback of the previous step must not land in this one
    began = time.perf_counter()
    result = compose(blueprint, repo, cache_dir=cache, reporter=_Progress(console, label))
    seconds = time.perf_counter() - began
    total = len(result.ran) + len(result.cached)
    console.log(f"{label}: {seconds:.1f} s, ran {len(result.ran)} of {total} stages")
    return Measured(seconds, result, ids)


def _added(before: tuple[int, int], after: tuple[int, int]) -> tuple[int, int]:
    return after[0] - before[0], after[1] - before[1]


def _explain_warm(cold: Measured, warm: Measured, cache: Path) -> str:
    """Why the warm recompose did not reuse the final result (it should run no stage)."""
    names = cold.result.cached + cold.result.ran  # plan order
    if len(cold.ids) != len(warm.ids):
        return f"the plan changed between the composes ({len(cold.ids)} -> {len(warm.ids)} stages)"
    changed = [name for name, a, b in zip(names, cold.ids, warm.ids, strict=True) if a != b]
    if changed:
        # afield.device.agent's options hash afield's source: someone edited src/ meanwhile.
        return f"the plan changed between the composes, first at {changed[0]}"
    recorded = (cache / "results" / f"{warm.ids[-1]}.json").is_file()
    return f"same plan; final result recorded in the cache: {recorded}"


def measure(
    index: int, variants: Variants, downloads: Path, scratch: Path, console: Console
) -> Sample:
    """One repetition of every figure, in its own scratch directory (removed afterwards)."""
    blueprint = load(variants.original)
    options = plan(blueprint, host_target(blueprint.distro))[0].options
    here = scratch / f"run-{index}"
    cache, repo = here / "cache", here / "repo"
    linked = link_downloads(downloads, cache)
    console.log(f"run {index + 1}: downloads linked into a fresh cache: {linked}")

    def baseline(one_initramfs: bool) -> BaselineRun:
        label = "baseline, 1 initramfs" if one_initramfs else "baseline"
        os.sync()
        run = run_baseline(
            options, downloads / "debs", here / "baseline", one_initramfs=one_initramfs
        )
        console.log(f"{label}: {run.seconds:.1f} s ({_phases(run.phases)})")
        remove_tree(here / "baseline")
        return run

    def cold() -> Measured:
        return _timed_compose(blueprint, repo, cache, console, "cold")

    # Alternate which goes first, so page cache and writeback favour neither side over repeats.
    if index % 2 == 0:
        base_run, base_one, cold_run = baseline(False), baseline(True), cold()
    else:
        cold_run, base_one = cold(), baseline(True)
        base_run = baseline(False)
    objects = repo / "ostree" / "objects"
    repo_cold = tree_size(objects)
    warm_run = _timed_compose(blueprint, repo, cache, console, "warm")
    if warm_run.result.ran:
        why = _explain_warm(cold_run, warm_run, cache)
        console.log(f"[red]warm recompose ran {len(warm_run.result.ran)} stages:[/] {why}")
    files_run = _timed_compose(load(variants.files_only), repo, cache, console, "files-only")
    assert BOOTSTRAP in files_run.result.cached, files_run.result.cached
    assert KERNEL in files_run.result.cached, files_run.result.cached
    after_files = tree_size(objects)
    version_run = _timed_compose(load(variants.version_bump), repo, cache, console, "version")
    after_version = tree_size(objects)
    remove_tree(here)
    return Sample(
        baseline=base_run,
        baseline_one=base_one,
        cold=cold_run,
        warm=warm_run,
        files_only=files_run,
        version_bump=version_run,
        repo_cold=repo_cold,
        files_only_added=_added(repo_cold, after_files),
        version_bump_added=_added(after_files, after_version),
    )


def _phases(phases: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in phases.items())


def _median(samples: Sequence[Sample], value: Callable[[Sample], float]) -> float:
    return statistics.median(value(s) for s in samples)


def _figure(
    name: str,
    samples: Sequence[Sample],
    ours: Callable[[Sample], float],
    reference: Callable[[Sample], float],
    reference_name: str,
    unit: str,
    goal: float | None,
) -> dict[str, Any]:
    # Ratios are taken per repetition, then the median: each pair ran back to back.
    ratio = _median(samples, lambda s: ours(s) / reference(s))
    return {
        "figure": name,
        "unit": unit,
        "ours": _median(samples, ours),
        "reference": _median(samples, reference),
        "reference_name": reference_name,
        "ratio": ratio,
        "goal": goal,
        "passed": None if goal is None else ratio <= goal,
        "samples": [{"ours": ours(s), "reference": reference(s)} for s in samples],
    }


def _stage_table(samples: Sequence[Sample], names: list[str]) -> dict[str, dict[str, Any]]:
    """Median seconds per stage for each compose step; "cached" where it came from the cache."""
    steps: dict[str, Callable[[Sample], Measured]] = {
        "cold": lambda s: s.cold,
        "warm": lambda s: s.warm,
        "files_only": lambda s: s.files_only,
        "version_bump": lambda s: s.version_bump,
    }
    table: dict[str, dict[str, Any]] = {}
    for step, get in steps.items():
        runs = [get(s) for s in samples]
        column: dict[str, Any] = {}
        for name in names:
            if all(name in m.result.stage_seconds for m in runs):
                column[name] = statistics.median(m.result.stage_seconds[name] for m in runs)
            elif all(name in m.result.cached for m in runs):
                column[name] = "cached"
            else:
                column[name] = "mixed"
        column["outside stages"] = statistics.median(
            m.seconds - sum(m.result.stage_seconds.values()) for m in runs
        )
        column["total"] = statistics.median(m.seconds for m in runs)
        table[step] = column
    return table


def _machine() -> dict[str, Any]:
    mem_kb = 0
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    debian = Path("/etc/debian_version")
    return {
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kb / 2**20, 1),
        "debian": debian.read_text().strip() if debian.is_file() else "unknown",
        "kernel": platform.release(),
    }


def _baseline_dict(run: BaselineRun) -> dict[str, Any]:
    return {"seconds": run.seconds, "phases": run.phases, "repo_bytes": run.repo_bytes}


def report(samples: Sequence[Sample], blueprint: Path, stage_names: list[str]) -> dict[str, Any]:
    """Everything measured, as plain values (what ``--json`` prints)."""
    seconds_cold = "cold compose"
    figures = [
        _figure(
            "cold compose vs raw baseline",
            samples,
            lambda s: s.cold.seconds,
            lambda s: s.baseline.seconds,
            "mmdebstrap, ostree commit",
            "s",
            GOALS["cold"],
        ),
        _figure(
            "cold compose vs raw baseline, 1 initramfs",
            samples,
            lambda s: s.cold.seconds,
            lambda s: s.baseline_one.seconds,
            "INITRD=No mmdebstrap, dracut, commit",
            "s",
            GOALS["cold"],
        ),
        _figure(
            "warm recompose, no change",
            samples,
            lambda s: s.warm.seconds,
            lambda s: s.cold.seconds,
            seconds_cold,
            "s",
            GOALS["warm"],
        ),
        _figure(
            "files-only change",
            samples,
            lambda s: s.files_only.seconds,
            lambda s: s.cold.seconds,
            seconds_cold,
            "s",
            GOALS["files_only"],
        ),
        _figure(
            "version bump only",
            samples,
            lambda s: s.version_bump.seconds,
            lambda s: s.cold.seconds,
            seconds_cold,
            "s",
            None,
        ),
        _figure(
            "repo growth, files-only change",
            samples,
            lambda s: s.files_only_added[1],
            lambda s: s.repo_cold[1],
            "repo after cold compose",
            "bytes",
            None,
        ),
        _figure(
            "repo growth, version bump",
            samples,
            lambda s: s.version_bump_added[1],
            lambda s: s.repo_cold[1],
            "repo after cold compose",
            "bytes",
            None,
        ),
    ]
    baselines: dict[str, Callable[[Sample], BaselineRun]] = {
        "plain": lambda s: s.baseline,
        "one_initramfs": lambda s: s.baseline_one,
    }
    phases: dict[str, dict[str, float]] = {}
    for kind, get in baselines.items():
        runs = [get(s) for s in samples]
        phases[kind] = {
            name: statistics.median(r.phases[name] for r in runs) for name in runs[0].phases
        }
        phases[kind]["total"] = statistics.median(r.seconds for r in runs)
    return {
        "date": datetime.date.today().isoformat(),
        "machine": _machine(),
        "blueprint": str(blueprint),
        "repeat": len(samples),
        "figures": figures,
        "stages": _stage_table(samples, stage_names),
        "baseline_phases": phases,
        "repo": {
            "baseline_bytes": _median(samples, lambda s: s.baseline.repo_bytes),
            "cold_bytes": _median(samples, lambda s: s.repo_cold[1]),
            "cold_objects": _median(samples, lambda s: s.repo_cold[0]),
            "files_only_added_objects": _median(samples, lambda s: s.files_only_added[0]),
            "version_bump_added_objects": _median(samples, lambda s: s.version_bump_added[0]),
        },
        "checks": {
            "warm_commit_equals_cold": all(
                s.warm.result.commit == s.cold.result.commit for s in samples
            ),
            "warm_ran": sorted({n for s in samples for n in s.warm.result.ran}),
            "files_only_reused": [BOOTSTRAP, KERNEL],
            "cold_commits": sorted({s.cold.result.commit for s in samples}),
        },
        "notes": list(NOTES),
        "samples": [
            {
                "baseline": _baseline_dict(s.baseline),
                "baseline_one_initramfs": _baseline_dict(s.baseline_one),
                "cold": s.cold.to_dict(),
                "warm": s.warm.to_dict(),
                "files_only": s.files_only.to_dict(),
                "version_bump": s.version_bump.to_dict(),
            }
            for s in samples
        ],
    }


def _size(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - the loop always returns


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def _value(value: float, unit: str) -> str:
    return _size(value) if unit == "bytes" else _seconds(value)


def render(data: dict[str, Any], console: Console) -> None:
    """Print the figures and per-stage tables."""
    m = data["machine"]
    figures = Table(
        title=(
            f"afield compose benchmark, {Path(data['blueprint']).name}, {data['date']}, "
            f"{m['cores']} cores, {m['ram_gib']} GiB, Debian {m['debian']}, {m['kernel']}"
            + (f", median of {data['repeat']}" if data["repeat"] > 1 else "")
        )
    )
    for column in ("figure", "ours", "baseline", "ratio", "goal", "result"):
        figures.add_column(column, justify="left" if column == "figure" else "right")
    for f in data["figures"]:
        goal = "-" if f["goal"] is None else f"<= {f['goal']:.2f}"
        verdict = {None: "-", True: "[green]pass[/]", False: "[red]FAIL[/]"}[f["passed"]]
        reference = f"{_value(f['reference'], f['unit'])} ({f['reference_name']})"
        ratio = f"{f['ratio']:.3f}" if f["unit"] == "s" else f"{f['ratio']:.2%}"
        figures.add_row(f["figure"], _value(f["ours"], f["unit"]), reference, ratio, goal, verdict)
    console.print(figures)

    stages = Table(title="seconds per stage (ComposeResult.stage_seconds)")
    stages.add_column("stage")
    steps = data["stages"]
    for step in steps:
        stages.add_column(step.replace("_", "-"), justify="right")
    for name in next(iter(steps.values())):
        cells = [v if isinstance(v, str) else _seconds(v) for v in (steps[s][name] for s in steps)]
        stages.add_row(name, *cells, end_section=name == "outside stages")
    console.print(stages)

    for kind, phases in data["baseline_phases"].items():
        console.print(
            f"baseline ({kind.replace('_', ' ')}): "
            + ", ".join(f"{name} {_seconds(seconds)}" for name, seconds in phases.items())
        )
    repo = data["repo"]
    console.print(
        f"repository objects: baseline {_size(repo['baseline_bytes'])}, "
        f"compose {_size(repo['cold_bytes'])} ({repo['cold_objects']:.0f} objects); "
        f"files-only change adds {repo['files_only_added_objects']:.0f} objects, "
        f"version bump {repo['version_bump_added_objects']:.0f}"
    )
    checks = data["checks"]
    warm_ran = ", ".join(checks["warm_ran"]) or "none"
    console.print(
        f"warm recompose ran stages: {warm_ran}; "
        f"warm commit equals cold: {checks['warm_commit_equals_cold']}; "
        f"files-only reused: {', '.join(checks['files_only_reused'])}; "
        f"distinct cold commits: {len(checks['cold_commits'])}"
    )
    for note in data["notes"]:
        console.print(f"note: {note}")


def fill(blueprint: Blueprint, downloads: Path, scratch: Path, console: Console) -> None:
    """Compose once, untimed, into a throwaway cache, and keep what it downloaded."""
    console.log(f"filling the download pool in {downloads} with an untimed compose ...")
    cache = scratch / "cache"
    link_downloads(downloads, cache)
    began = time.perf_counter()
    compose(blueprint, scratch / "repo", cache_dir=cache, reporter=_Progress(console, "fill"))
    added = keep_downloads(cache, downloads)
    console.log(f"pool ready after {time.perf_counter() - began:.1f} s, files added: {added}")
    remove_tree(scratch)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--repeat", type=int, default=1, metavar="N", help="repetitions (1)")
    parser.add_argument(
        "--blueprint", type=Path, default=ROOT / "examples" / "gateway.toml", help="blueprint"
    )
    parser.add_argument(
        "--downloads",
        type=Path,
        default=default_cache_dir(),
        help="compose cache whose debs/ and wheels/ are the download pool (default: afield's)",
    )
    parser.add_argument(
        "--workdir", type=Path, default=Path("/var/tmp"), help="where scratch space goes"
    )
    parser.add_argument(
        "--no-fill", action="store_true", help="trust the pool to be complete (no fill compose)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument(
        "--live",
        action="store_true",
        help="compose with the working tree's afield, not a snapshot taken at the start "
        "(a compose fails if src/ changes meanwhile)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def _in_snapshot(argv: list[str], workdir: Path) -> int:
    """Run this benchmark again, importing afield from a snapshot of its source; its exit code."""
    snapshot = Path(tempfile.mkdtemp(prefix="afield-bench-source-", dir=workdir))
    try:
        src = snapshot_source(ROOT, snapshot)
        path = os.pathsep.join(p for p in (str(src), os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "PYTHONPATH": path, SNAPSHOT_ENV: str(snapshot)}
        script = str(Path(__file__).resolve())
        return subprocess.run([sys.executable, script, *argv], env=env, check=False).returncode
    finally:
        remove_tree(snapshot)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every figure, print the table (or JSON); 0, or 1 with ``--strict`` and a missed goal."""
    args = _arguments(argv)
    console = Console(stderr=True, log_path=False)
    if os.geteuid() != 0:
        console.print("error: the benchmark composes images and needs root")
        return 2
    if not args.live and SNAPSHOT_ENV not in os.environ:
        return _in_snapshot(list(sys.argv[1:] if argv is None else argv), args.workdir)
    console.log(f"composing with afield from {Path(afield.__file__).parent}")
    scratch = Path(tempfile.mkdtemp(prefix="afield-bench-", dir=args.workdir))
    try:
        variants = write_variants(args.blueprint, scratch / "blueprints")
        blueprint = load(variants.original)
        specs = plan(blueprint, host_target(blueprint.distro))
        if not args.no_fill:
            fill(blueprint, args.downloads, scratch / "fill", console)
        samples = [
            measure(i, variants, args.downloads, scratch, console) for i in range(args.repeat)
        ]
    finally:
        if args.keep:
            console.log(f"kept {scratch}")
        else:
            remove_tree(scratch)
    data = report(samples, args.blueprint, [s.name for s in specs])
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        render(data, Console())
    missed = any(f["passed"] is False for f in data["figures"])
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
