"""Benchmark the bytes a device downloads to update, per delivery method, in one run (issue 5).

Two update pairs of real Debian bookworm trees (``_wire_trees.py``; built once with mmdebstrap and
cached under ``~/.cache/afield/bench-wire``): "security" (the point release, then the same
packages with bookworm-updates and bookworm-security: real upgraded libraries) and "add" (the
point release plus a few packages). For each pair, what a device holding the old image downloads
to get the new one:

a. the full image: the deterministic tar of the new tree through ``zstd -19 --long=27 -T2``;
b. ``xdelta3 -e -9 -S none`` of old.tar -> new.tar, then ``zstd -19``;
c. ``zstd -19 --long=27 --patch-from=old.tar new.tar``;
d. an OSTree object pull (``ostree pull --disable-static-deltas``) of the new commit;
e. an OSTree static delta (``ostree static-delta generate`` defaults): its files on the server,
   and what a plain ``ostree pull`` that finds it moves (e; e1 with a summary file on the
   server); then the delta with the tuned parameters found in step 3, pulled by ``ostree pull``
   (e2) and fetched directly: superblock and parts by HTTP GET, applied with
   ``ostree static-delta apply-offline`` (e3);
f. afield's choice: ``afield.release.publish(..., deltas=3)`` then
   ``afield.device.fetch.fetch_commit`` (reported as not available until that API exists).

(a)-(c) are the size of the one file a device would GET. (d)-(f) are counted on the server side,
at the ASGI layer of afield's own repository app on 127.0.0.1 (``_wire_serve.py``): response
bodies plus response heads. Step 3 explores ``static-delta generate`` parameters on the security
pair (sizes on the server and generation time); step 4 checks the issue's goals: afield's choice
<= 4% of (a) on the security pair and <= 7.5% on the add pair, and its ratio to the best binary
delta (b or c).

Run as root: ``.venv/bin/python benchmarks/wire.py [--json] [--no-tuning] [--keep]``. The scratch
directory (under /var/tmp) is removed at the end; the tree cache is kept. Interpretation:
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from _wire_ostree import (
    DeltaFiles,
    DeltaVariant,
    apply_offline,
    clone_client,
    commit_trees,
    delete_deltas,
    delta_dir,
    delta_files,
    generate_delta,
    has_commit,
    make_client_template,
    ostree_pull,
    pair_repository,
    run,
)
from _wire_serve import WireCount, serving
from _wire_trees import Tree, cache_dir, changed_packages, ensure_tree, specs

GOALS = {"security": 0.04, "add": 0.075}
VERSIONS = {"old": "1.0.0", "security": "1.1.0", "add": "1.1.0"}
PAIRS = {"security": ("old", "security"), "add": ("old", "add")}
# Step 3: ``static-delta generate`` variants (CLI options, and the libostree params they mean).
# libostree 2022.7 defaults: min-fallback-size 4 (MB), max-bsdiff-size 128, max-chunk-size 32,
# bsdiff-enabled, no inline parts; parts are always xz (its "compression" param is ignored), so
# other compressors are estimated by recompressing the parts' payloads.
_NO_FALLBACK = ("--min-fallback-size=0",)
VARIANTS = (
    DeltaVariant("defaults"),
    DeltaVariant("no bsdiff", ("--disable-bsdiff",), {"bsdiff-enabled": False}),
    DeltaVariant("max-bsdiff-size 64", ("--max-bsdiff-size=64",), {"max-bsdiff-size": 64}),
    DeltaVariant("min-fallback-size 16", ("--min-fallback-size=16",), {"min-fallback-size": 16}),
    DeltaVariant("min-fallback-size 0", _NO_FALLBACK, {"min-fallback-size": 0}),
    DeltaVariant(
        "min-fallback-size 0, no bsdiff",
        (*_NO_FALLBACK, "--disable-bsdiff"),
        {"min-fallback-size": 0, "bsdiff-enabled": False},
    ),
    DeltaVariant(
        "min-fallback-size 0, max-bsdiff-size 8",
        (*_NO_FALLBACK, "--max-bsdiff-size=8"),
        {"min-fallback-size": 0, "max-bsdiff-size": 8},
    ),
    DeltaVariant(
        "min-fallback-size 0, max-chunk-size 64",
        (*_NO_FALLBACK, "--max-chunk-size=64"),
        {"min-fallback-size": 0, "max-chunk-size": 64},
    ),
    DeltaVariant(
        "min-fallback-size 0, inline",
        (*_NO_FALLBACK, "--inline"),
        {"min-fallback-size": 0, "inline-parts": True},
    ),
    DeltaVariant(
        "min-fallback-size 0, parts recompressed zstd -19 --long (estimate)",
        _NO_FALLBACK,
        {"min-fallback-size": 0},
        zstd_parts=True,
    ),
)
# Used for the tuned rows when step 3 is skipped (--no-tuning).
FALLBACK_TUNED = VARIANTS[4]
NOTES = (
    "(a)-(c): size of the one file a device would GET (HTTP headers not counted).",
    "(d)-(f): counted on the server at the ASGI layer of afield's repository app: response "
    "bodies + response heads (status line, the app's headers, 54 bytes per response for "
    "uvicorn's date/server headers); request bytes and TCP/IP framing are not counted.",
    "Trees are OSTree-shaped (/etc in /usr/etc, /var emptied, a fake kernel in "
    "/usr/lib/modules) and have no manual pages, translations or docs (dpkg path-exclude).",
    "The tuned delta is the smallest step-3 variant (delta files + fallback objects) that "
    "libostree applies as generated and that has no fallback objects.",
)

Row = dict[str, Any]
Log = Callable[[str], None]


def _size(value: float | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - the loop always returns


def _mb(value: int) -> str:
    return f"{value / 1e6:.2f} MB"


def _row(method: str, name: str, **values: Any) -> Row:
    row: Row = {
        "method": method,
        "name": name,
        "wire": None,
        "server": None,
        "requests": None,
        "seconds": None,
        "note": "",
    }
    row.update(values)
    return row


def _wire_row(method: str, name: str, count: WireCount, **values: Any) -> Row:
    kinds = ", ".join(f"{k} {_mb(v)}" for k, v in sorted(count.by_kind.items()) if v)
    note = values.pop("note", "")
    return _row(
        method,
        name,
        wire=count.total,
        requests=count.requests,
        wire_detail=count.to_dict(),
        note=f"{note}; bodies: {kinds}" if note else f"bodies: {kinds}",
        **values,
    )


def _timed(argv: Sequence[str], log: Path) -> float:
    began = time.perf_counter()
    run(argv, log)
    return time.perf_counter() - began


def baselines(old: Tree, new: Tree, work: Path, log: Path, say: Log) -> list[Row]:
    """(a) full image, (b) xdelta3 + zstd, (c) zstd --patch-from; sizes of the files."""
    rows: list[Row] = []
    full = work / "new.tar.zst"
    seconds = _timed(
        ["zstd", "-19", "--long=27", "-T2", "-q", "-f", "-o", str(full), str(new.tar)], log
    )
    rows.append(
        _row(
            "a",
            "full image: tar | zstd -19 --long=27",
            wire=full.stat().st_size,
            seconds=seconds,
            note=f"tar {_mb(new.tar_bytes)}",
        )
    )
    say(f"  (a) full image {_mb(full.stat().st_size)} in {seconds:.0f} s")
    vcdiff = work / "old-new.vcdiff"
    # -B: a source window as large as the old tar, so every match is found.
    window = max(1 << 26, 1 << (old.tar_bytes - 1).bit_length())
    seconds = _timed(
        [
            "xdelta3",
            "-e",
            "-9",
            "-S",
            "none",
            "-B",
            str(window),
            "-f",
            "-s",
            str(old.tar),
            str(new.tar),
            str(vcdiff),
        ],
        log,
    )
    seconds += _timed(["zstd", "-19", "-T2", "-q", "-f", "-o", f"{vcdiff}.zst", str(vcdiff)], log)
    rows.append(
        _row(
            "b",
            "xdelta3 -9 of the tars, then zstd -19",
            wire=Path(f"{vcdiff}.zst").stat().st_size,
            seconds=seconds,
            note=f"xdelta3 alone {_mb(vcdiff.stat().st_size)}",
        )
    )
    say(f"  (b) xdelta3 + zstd {_mb(rows[-1]['wire'])} in {seconds:.0f} s")
    patch = work / "new.tar.patch.zst"
    seconds = _timed(
        [
            "zstd",
            "-19",
            "--long=27",
            "-T2",
            "-q",
            "-f",
            f"--patch-from={old.tar}",
            "-o",
            str(patch),
            str(new.tar),
        ],
        log,
    )
    rows.append(
        _row(
            "c",
            "zstd -19 --long=27 --patch-from=old.tar",
            wire=patch.stat().st_size,
            seconds=seconds,
        )
    )
    say(f"  (c) zstd --patch-from {_mb(patch.stat().st_size)} in {seconds:.0f} s")
    for path in (full, vcdiff, Path(f"{vcdiff}.zst"), patch):
        path.unlink()
    return rows


def fetch_direct(url: str, repo: Path, old: str, new: str, into: Path) -> None:
    """GET the delta's superblock and parts, as a device would (then apply them offline)."""
    into.mkdir(parents=True)
    with httpx.Client(base_url=url, timeout=120) as client:
        for path in delta_files(repo, old, new):
            response = client.get(f"ostree/{path.relative_to(repo).as_posix()}")
            response.raise_for_status()
            (into / path.name).write_bytes(response.content)


def afield_choice(directory: Path, old: str, new: str, template: Path, work: Path, say: Log) -> Row:
    """(f): publish with deltas, then ``fetch_commit`` from a device holding ``old``."""
    name = "afield's choice (publish deltas=3, fetch_commit)"
    try:
        from afield.device.fetch import fetch_commit
    except ImportError:
        return _row("f", name, note="afield: not available yet (no afield.device.fetch)")
    from afield.ostree import Repo
    from afield.release import init_repository, publish
    from afield.trust import Keyring

    if "deltas" not in inspect.signature(publish).parameters:
        return _row("f", name, note="afield: not available yet (publish has no deltas=)")
    try:
        pair_repository(directory, old, new)
        keyring = Keyring.generate(work / "keys")
        init_repository(directory, keyring)
        publish(directory, keyring, old, deltas=3)
        began = time.perf_counter()
        release = publish(directory, keyring, new, deltas=3)
        publish_seconds = time.perf_counter() - began
        device = Repo.open(clone_client(template, work / "client-f"))
        with serving(directory) as (url, counter):
            counter.reset()
            began = time.perf_counter()
            result = fetch_commit(device, url, release, have=[old], downloads=work / "downloads-f")
            seconds = time.perf_counter() - began
            count = counter.count()
        complete = has_commit(device.path, new)
        on_server = delta_dir(directory / "ostree", old, new)
        server = (
            sum(p.stat().st_size for p in on_server.iterdir() if p.is_file())
            if on_server.is_dir()
            else None
        )
        say(f"  (f) afield: {_mb(count.total)} on the wire, used_delta={result.used_delta}")
        return _wire_row(
            "f",
            name,
            count,
            server=server,
            seconds=seconds,
            note=(
                f"used_delta={result.used_delta}, bytes_downloaded (afield's count) "
                f"{_mb(result.bytes_downloaded)}, deltas listed {len(release.deltas)}, "
                f"publish {publish_seconds:.0f} s"
                + ("" if complete else ", COMMIT INCOMPLETE")
                + (f", delta_error: {result.delta_error}" if result.delta_error else "")
            ),
            used_delta=bool(result.used_delta),
            complete=complete,
        )
    except Exception as e:  # the API is being written now: report, do not lose the other rows
        (work / "afield-error.txt").write_text(traceback.format_exc())
        say(f"  (f) afield failed: {e!r}")
        return _row("f", name, note=f"afield: error: {type(e).__name__}: {e}")


def explore(
    repo: Path, old: str, new: str, first: DeltaFiles, log: Path, say: Log
) -> list[DeltaFiles]:
    """Step 3: every variant's delta files, fallbacks and generation time (defaults given)."""
    results = [first]
    for variant in VARIANTS[1:]:
        files = generate_delta(repo, old, new, variant, log)
        say(
            f"  delta '{variant.name}': {_mb(files.device_bytes)} "
            f"({files.fallback_objects} fallbacks) in {files.seconds:.0f} s"
        )
        results.append(files)
    return results


def choose_tuned(results: Sequence[DeltaFiles]) -> DeltaVariant:
    """The smallest natively applicable variant without fallback objects."""
    by_name = {v.name: v for v in VARIANTS}
    usable = [r for r in results if not by_name[r.variant].zstd_parts and r.fallback_objects == 0]
    if not usable:
        return FALLBACK_TUNED
    best = min(usable, key=lambda r: (r.device_bytes, results.index(r)))
    return by_name[best.variant]


def _ostree_diff(old: str, new: str) -> dict[str, int]:
    out = run(["ostree", f"--repo={cache_dir() / 'store'}", "diff", old, new])
    counts = {"modified": 0, "added": 0, "deleted": 0}
    names = {"M": "modified", "A": "added", "D": "deleted"}
    for line in out.splitlines():
        kind = line[:1]
        if kind in names:
            counts[names[kind]] += 1
    return counts


def measure_pair(
    name: str,
    old_tree: Tree,
    new_tree: Tree,
    old: str,
    new: str,
    template: Path,
    work: Path,
    tuned: DeltaVariant | None,
    say: Log,
) -> tuple[dict[str, Any], list[DeltaFiles] | None]:
    """Every method for one pair; with ``tuned`` None, run step 3 here to choose it."""
    work.mkdir(parents=True)
    log = work / "commands.log"
    say(f"pair {name}: {old[:12]} -> {new[:12]}")
    rows = baselines(old_tree, new_tree, work, log, say)
    served = work / "served"
    pair_repository(served, old, new)
    repo = served / "ostree"
    tuning: list[DeltaFiles] | None = None
    with serving(served) as (url, counter):
        client = clone_client(template, work / "client-d", url, old)
        counter.reset()
        seconds, last = ostree_pull(client, deltas=False, log=log)
        rows.append(
            _wire_row(
                "d",
                "OSTree object pull (ostree pull --disable-static-deltas)",
                counter.count(),
                seconds=seconds,
                note=last,
                complete=has_commit(client, new),
            )
        )
        say(f"  (d) object pull {_mb(rows[-1]['wire'])} in {seconds:.0f} s")
        shutil.rmtree(client)

        default = generate_delta(repo, old, new, VARIANTS[0], log)
        client = clone_client(template, work / "client-e", url, old)
        counter.reset()
        seconds, last = ostree_pull(client, deltas=True, log=log)
        rows.append(
            _wire_row(
                "e",
                "OSTree static delta (defaults), ostree pull",
                counter.count(),
                server=default.delta_bytes,
                seconds=seconds,
                note=(
                    f"{default.parts} parts, {default.fallback_objects} fallback objects "
                    f"({_mb(default.fallback_bytes)}); generate {default.seconds:.0f} s"
                ),
                complete=has_commit(client, new),
                delta=default.to_dict(),
            )
        )
        say(f"  (e) static delta, ostree pull {_mb(rows[-1]['wire'])} in {seconds:.0f} s")
        shutil.rmtree(client)

        # The same with a summary file (``ostree summary -u``), which changes how ostree pull
        # looks for deltas; the summary is removed again afterwards.
        run(["ostree", f"--repo={repo}", "summary", "-u"], log)
        client = clone_client(template, work / "client-e1", url, old)
        counter.reset()
        seconds, last = ostree_pull(client, deltas=True, log=log)
        rows.append(
            _wire_row(
                "e1",
                "OSTree static delta (defaults), summary present, ostree pull",
                counter.count(),
                server=default.delta_bytes,
                seconds=seconds,
                note=last,
                complete=has_commit(client, new),
            )
        )
        say(f"  (e1) static delta + summary, ostree pull {_mb(rows[-1]['wire'])}")
        shutil.rmtree(client)
        for leftover in ("summary", "summary.sig"):
            (repo / leftover).unlink(missing_ok=True)

        if tuned is None:
            tuning = explore(repo, old, new, default, log, say)
            tuned = choose_tuned(tuning)
        files = generate_delta(repo, old, new, tuned, log)
        options = " ".join(tuned.cli) or "defaults"
        client = clone_client(template, work / "client-e2", url, old)
        counter.reset()
        seconds, last = ostree_pull(client, deltas=True, log=log)
        rows.append(
            _wire_row(
                "e2",
                f"OSTree static delta ({options}), ostree pull",
                counter.count(),
                server=files.delta_bytes,
                seconds=seconds,
                note=f"{files.parts} parts, {files.fallback_objects} fallback objects",
                complete=has_commit(client, new),
                delta=files.to_dict(),
            )
        )
        say(f"  (e2) tuned delta, ostree pull {_mb(rows[-1]['wire'])} in {seconds:.0f} s")
        shutil.rmtree(client)

        client = clone_client(template, work / "client-e3")
        counter.reset()
        began = time.perf_counter()
        fetch_direct(url, repo, old, new, work / "delta-download")
        count = counter.count()
        applied = apply_offline(client, work / "delta-download", log)
        rows.append(
            _wire_row(
                "e3",
                f"OSTree static delta ({options}), GET superblock + parts, apply-offline",
                count,
                server=files.delta_bytes,
                seconds=time.perf_counter() - began,
                note=f"apply-offline {applied:.0f} s",
                complete=has_commit(client, new),
            )
        )
        say(f"  (e3) tuned delta fetched directly {_mb(count.total)}")
        shutil.rmtree(client)
        delete_deltas(repo)
    shutil.rmtree(served)
    rows.append(afield_choice(work / "afield", old, new, template, work, say))
    full = rows[0]["wire"]
    for row in rows:
        row["percent_of_full"] = None if row["wire"] is None else 100 * row["wire"] / full
    pair = {
        "name": name,
        "old": {"commit": old, "tree": old_tree.key, "built": old_tree.built},
        "new": {"commit": new, "tree": new_tree.key, "built": new_tree.built},
        "tar_bytes": {"old": old_tree.tar_bytes, "new": new_tree.tar_bytes},
        "packages": changed_packages(old_tree, new_tree),
        "files": _ostree_diff(old, new),
        "tuned": {"variant": tuned.name, "cli": list(tuned.cli), "params": dict(tuned.params)},
        "rows": rows,
    }
    return pair, tuning


def goal_check(pair: dict[str, Any]) -> dict[str, Any]:
    """Step 4: afield's choice against the goal and against the best binary delta (b, c)."""
    rows = {r["method"]: r for r in pair["rows"]}
    full = rows["a"]["wire"]
    best_binary = min(rows["b"]["wire"], rows["c"]["wire"])
    goal = GOALS[pair["name"]]
    ours = rows["f"]["wire"]
    candidate = rows["e3"]["wire"]
    return {
        "pair": pair["name"],
        "goal_fraction": goal,
        "afield_bytes": ours,
        "afield_fraction": None if ours is None else ours / full,
        "passed": None if ours is None else ours <= goal * full,
        "afield_vs_best_binary": None if ours is None else ours / best_binary,
        "best_binary_bytes": best_binary,
        "afield_note": rows["f"]["note"],
        "candidate_bytes": candidate,
        "candidate_fraction": candidate / full,
        "candidate_passes": candidate <= goal * full,
        "candidate_vs_best_binary": candidate / best_binary,
    }


def _machine() -> dict[str, Any]:
    mem_kb = 0
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    debian = Path("/etc/debian_version")
    ostree = subprocess.run(["ostree", "--version"], capture_output=True, text=True, check=False)
    lines = [line for line in ostree.stdout.splitlines() if "Version" in line]
    version = lines[0].split("'")[1] if lines else "?"
    return {
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kb / 2**20, 1),
        "debian": debian.read_text().strip() if debian.is_file() else "unknown",
        "kernel": platform.release(),
        "ostree": version,
    }


def render(data: dict[str, Any], console: Console) -> None:
    """Print every table."""
    m = data["machine"]
    console.print(
        f"afield wire benchmark, {data['date']}, {m['cores']} cores, {m['ram_gib']} GiB, "
        f"Debian {m['debian']}, ostree {m['ostree']}"
    )
    for pair in data["pairs"]:
        tars = pair["tar_bytes"]
        files = pair["files"]
        table = Table(
            title=(
                f"pair '{pair['name']}': bytes a device downloads (tar old {_mb(tars['old'])}, "
                f"new {_mb(tars['new'])}; files {files['modified']} modified, "
                f"{files['added']} added, {files['deleted']} deleted)"
            )
        )
        for column in ("", "method", "on the wire", "% of (a)", "on server", "requests", "time"):
            table.add_column(column, justify="left" if column in ("", "method") else "right")
        table.add_column("notes", overflow="fold")
        for row in pair["rows"]:
            wire = _mb(row["wire"]) if row["wire"] is not None else "-"
            percent = f"{row['percent_of_full']:.2f}%" if row["wire"] is not None else "-"
            server = _mb(row["server"]) if row["server"] is not None else "-"
            requests = str(row["requests"]) if row["requests"] is not None else "-"
            seconds = f"{row['seconds']:.0f} s" if row["seconds"] is not None else "-"
            table.add_row(
                row["method"], row["name"], wire, percent, server, requests, seconds, row["note"]
            )
        console.print(table)
        changes = pair["packages"]
        for kind in ("upgraded", "added", "removed"):
            if changes[kind]:
                items = ", ".join(
                    f"{c['package']} {c['old'] or ''}{' -> ' if c['old'] and c['new'] else ''}"
                    f"{c['new'] or ''}"
                    for c in changes[kind]
                )
                console.print(f"{kind} ({len(changes[kind])}): {items}")
    if data["tuning"]:
        full = next(p for p in data["pairs"] if p["name"] == "security")["rows"][0]["wire"]
        table = Table(title="step 3: static delta variants, security pair (sizes on the server)")
        for column in (
            "variant",
            "params",
            "parts",
            "delta files",
            "fallbacks",
            "delta + fallbacks",
            "% of (a)",
            "generate",
        ):
            table.add_column(column, justify="left" if column in ("variant", "params") else "right")
        best = min(data["tuning"], key=lambda t: t["device_bytes"])
        for t in data["tuning"]:
            params = ", ".join(f"{k}={v}" for k, v in t["params"].items()) or "-"
            delta = _mb(t["delta_bytes"])
            if t["zstd_bytes"] is not None:
                delta += f" (zstd {_mb(t['zstd_bytes'])}, xz -9e {_mb(t['xz_bytes'])})"
            mark = " [bold](smallest)[/]" if t is best else ""
            table.add_row(
                t["variant"] + mark,
                params,
                str(t["parts"]),
                delta,
                f"{t['fallback_objects']} ({_mb(t['fallback_bytes'])})",
                _mb(t["device_bytes"]),
                f"{100 * t['device_bytes'] / full:.2f}%",
                f"{t['seconds']:.0f} s",
            )
        console.print(table)
    table = Table(title="step 4: goal check (on the wire)")
    for column in (
        "pair",
        "afield",
        "% of (a)",
        "goal",
        "result",
        "vs best of b/c",
        "candidate e3",
    ):
        table.add_column(column, justify="left" if column == "pair" else "right")
    for g in data["goals"]:
        if g["afield_bytes"] is None:
            ours = percent = verdict = ratio = "-"
            ours = g["afield_note"]
        else:
            ours = _mb(g["afield_bytes"])
            percent = f"{100 * g['afield_fraction']:.2f}%"
            verdict = "[green]pass[/]" if g["passed"] else "[red]FAIL[/]"
            ratio = f"{g['afield_vs_best_binary']:.2f}"
        candidate = (
            f"{_mb(g['candidate_bytes'])}, {100 * g['candidate_fraction']:.2f}%, "
            f"{g['candidate_vs_best_binary']:.2f}x best b/c, "
            + ("meets goal" if g["candidate_passes"] else "misses goal")
        )
        table.add_row(
            g["pair"],
            ours,
            percent,
            f"<= {100 * g['goal_fraction']:.1f}%",
            verdict,
            ratio,
            candidate,
        )
    console.print(table)
    for note in data["notes"]:
        console.print(f"note: {note}")


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--no-tuning",
        action="store_true",
        help=f"skip step 3 (the tuned rows then use '{FALLBACK_TUNED.name}')",
    )
    parser.add_argument(
        "--workdir", type=Path, default=Path("/var/tmp"), help="where scratch space goes"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--save", type=Path, metavar="FILE", help="also write the JSON to FILE")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Build or reuse the trees, measure both pairs, print tables (or JSON)."""
    args = _arguments(argv)
    console = Console(stderr=True, log_path=False)
    if os.geteuid() != 0:
        console.print("error: the benchmark builds Debian trees and bare repositories; run as root")
        return 2
    began = time.perf_counter()
    say: Log = console.log
    trees = {name: ensure_tree(spec, say) for name, spec in specs().items()}
    for name, tree in trees.items():
        origin = "cached" if tree.cached else "built"
        say(
            f"tree {name}: {_mb(tree.tar_bytes)} tar, {len(tree.packages)} packages "
            f"({origin} {tree.built})"
        )
    commits = commit_trees(trees, VERSIONS)
    scratch = Path(tempfile.mkdtemp(prefix="afield-bench-wire-", dir=args.workdir))
    pairs: list[dict[str, Any]] = []
    tuning: list[DeltaFiles] | None = None
    try:
        template = make_client_template(scratch / "client-template", commits["old"])
        tuned: DeltaVariant | None = FALLBACK_TUNED if args.no_tuning else None
        for name, (old, new) in PAIRS.items():
            pair, explored = measure_pair(
                name,
                trees[old],
                trees[new],
                commits[old],
                commits[new],
                template,
                scratch / name,
                tuned,
                say,
            )
            if explored is not None:
                tuning = explored
            tuned = next(v for v in VARIANTS if v.name == pair["tuned"]["variant"])
            pairs.append(pair)
    finally:
        if args.keep:
            say(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    data: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "machine": _machine(),
        "seconds": time.perf_counter() - began,
        "pairs": pairs,
        "tuning": None
        if tuning is None
        else [
            t.to_dict() | {"params": dict(next(v for v in VARIANTS if v.name == t.variant).params)}
            for t in tuning
        ],
        "goals": [goal_check(p) for p in pairs],
        "notes": list(NOTES),
    }
    say(f"done in {data['seconds']:.0f} s")
    if args.save is not None:
        args.save.write_text(json.dumps(data, indent=2))
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        render(data, Console(width=200))
    return 0


if __name__ == "__main__":
    sys.exit(main())
