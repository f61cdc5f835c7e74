"""``afield demo``: the end-to-end tour `make demo` runs on embedded defaults.

1. Compose three versions of ``examples/gateway.toml`` into ``_demo/repo``: 1.0.0, 1.1.0 (one
   more package; the package diff is printed) and 1.2.0 (1.1.0 plus a required health check
   that always fails). Sign all three as releases (TUF keys in ``_demo/keys``, static deltas
   between them).
2. Start the fleet manager on 127.0.0.1 (SQLite in ``_demo/fleet.db``, the repository at
   ``/repo/``, FDO's rendezvous and owner mounted) and a manufacturer. Make three devices: each
   gets 1.0.0 at the "factory" and its FDO credential (DI); its voucher is sold to the owner,
   which registers it (TO0); the device onboards zero-touch (TO1, TO2), is handed the fleet
   manager's address, a one-time enrollment token and the TUF root, and boots.
3. Start each device's agent (``afield device run``, its own process): it enrolls, reports and
   long-polls. The operator rolls 1.1.0 out to the fleet canary-first (batches 1, then 100%):
   each device pulls the signed delta, stages it, reboots, passes its health checks.
4. The operator rolls 1.2.0 out: the canary boots it, its sensor check fails on every boot, the
   boot counter runs out, it falls back to 1.1.0 and reports it; the rollout pauses itself and
   the other two devices are never told to update.
5. Print what happened: devices, versions, bytes per update, the audit trail.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from afield import blueprint as bp
from afield.cli._output import console, err_console
from afield.cli._progress import StageProgress
from afield.device.status import device_status
from afield.errors import AfieldError
from afield.image import diff_packages, image_info, open_repository
from afield.release import init_repository, publish
from afield.trust import Keyring

if TYPE_CHECKING:
    from afield.compose import ComposeResult
    from afield.sim.demo import DemoDevice, DemoSite

_PROJECT = Path(__file__).resolve().parents[3]
_FAILING_CHECK = '''
[[customizations.files]]
path = "/etc/greenboot/check/required.d/50-sensors.sh"
mode = "0755"
ensure_parents = true
data = """#!/bin/sh
echo "sensor bus not responding"
exit 1
"""
'''


def _with_version(text: str, version: str) -> str:
    bumped, count = re.subn(r'(?m)^version = "[^"]*"', f'version = "{version}"', text, count=1)
    if count != 1:
        raise AfieldError("demo: the example blueprint has no top-level version line")
    return bumped


def second_version(text: str) -> str:
    """The demo's 1.1.0 of a blueprint: one more package."""
    return _with_version(text, "1.1.0") + '\n[[packages]]\nname = "jq"\n'


def broken_version(text: str) -> str:
    """The demo's 1.2.0: 1.1.0 plus a required health check that always fails."""
    return _with_version(second_version(text), "1.2.0") + _FAILING_CHECK


def _compose(path: Path, repo: Path) -> ComposeResult:
    # Builder-only code: imported when used, so `afield` starts on a device without it.
    from afield.compose import compose, default_cache_dir

    blueprint = bp.load(path)
    console.rule(f"compose {blueprint.name} {blueprint.version}")
    with StageProgress(err_console) as progress:
        result = compose(blueprint, repo, cache_dir=default_cache_dir(), reporter=progress)
    ran = ", ".join(result.ran) or "nothing (all cached)"
    console.print(f"commit {result.commit[:12]} on {result.ref}; stages run: {ran}")
    return result


def _publish(repo: Path, keyring: Keyring, commit: str, *, deltas: int = 3) -> None:
    release = publish(repo, keyring, commit, deltas=deltas)
    built = ", ".join(
        f"from {str(d['from'])[:12]} ({int(d['length']):,} bytes)" for d in release.deltas
    )
    console.print(
        f"published {release.version} ({release.commit[:12]}); static deltas: {built or 'none'}"
    )


def _full_size(repo: Path, commit: str) -> int:
    """What a whole image costs to download: the commit's objects, as stored on the server."""
    return open_repository(repo).commit_size(commit)


POLICY = {
    "batches": [1, "100%"],
    "success_threshold": 1.0,
    "failure_threshold": 0.0,
    "health_window": 5,
    "update_timeout": 900,
}
"""The demo fleet's rollout policy: a canary, then everyone; any failure pauses."""


def _print_diff(repo: Path, old_commit: str, new_commit: str) -> None:
    ostree_repo = open_repository(repo)
    old, new = image_info(ostree_repo, old_commit), image_info(ostree_repo, new_commit)
    changes = diff_packages(old.packages, new.packages)
    console.rule("what changed from 1.0.0 to 1.1.0")
    for name, version in changes.added.items():
        console.print(f"  [green]+[/] {name} {version}")
    for name, version in changes.removed.items():
        console.print(f"  [red]-[/] {name} {version}")
    for change in changes.changed:
        console.print(f"  [yellow]~[/] {change.name} {change.old} -> {change.new}")


def _say(line: str) -> None:
    console.print(f"  rollout: {line}", soft_wrap=True, markup=False)


def _updates(demo: DemoDevice) -> list[dict[str, object]]:
    return [e for e in device_status(demo.device)["events"] if e["event"] == "update staged"]


def _summary(site: DemoSite, devices: list[DemoDevice], sizes: dict[str, int]) -> None:
    console.rule("where the fleet ended")
    table = Table("device", "GUID", "runs", "status", "updates (bytes downloaded)")
    for demo in devices:
        shown = site.api("GET", f"/api/v1/devices/{demo.device_id}")
        updates = []
        for event in _updates(demo):
            version = str(event.get("version"))
            spent = int(str(event.get("bytes_downloaded") or 0))
            full = sizes.get(version)
            share = f", {100 * spent / full:.1f}% of the image" if full else ""
            updates.append(f"{version}: {spent:,}{share}")
        table.add_row(
            demo.name,
            demo.device_id[:8],
            str(shown["current_version"]),
            str(shown["status"]),
            "; ".join(updates) or "none",
        )
    console.print(table)
    events = site.api("GET", "/api/v1/events", params={"limit": 200})["data"]
    console.rule("the audit trail (oldest first)")
    for event in reversed(events):
        if event["kind"] in _QUIET_EVENTS:
            continue
        details = event["details"]
        note = details.get("reason") or details.get("version") or details.get("release") or ""
        if event["kind"] == "rollout.assign":
            note = f"{details['count']} device(s) told to update in batch {details['batch'] + 1}"
        console.print(
            f"  {event['actor'][:24]:<24} {event['kind']:<22} {event['subject'][:30]:<30} "
            f"{str(note)[:90]}",
            soft_wrap=True,
            markup=False,
        )


_QUIET_EVENTS = frozenset({"release.create", "enrollment_token.create"})


def demo_command(
    workdir: Path = typer.Option(Path("_demo"), "--workdir", help="Where the demo writes."),
    example: Path = typer.Option(
        _PROJECT / "examples" / "gateway.toml", "--example", help="The 1.0.0 blueprint."
    ),
) -> None:
    """Compose three releases, onboard three devices, roll out a good and a broken release."""
    workdir.mkdir(parents=True, exist_ok=True)
    repo = workdir / "repo"
    text = example.read_text()
    files = {"1.0.0": text, "1.1.0": second_version(text), "1.2.0": broken_version(text)}
    composed = {}
    for version, content in files.items():
        path = workdir / f"gateway-{version}.toml"
        path.write_text(content)
        composed[version] = _compose(path, repo)
    _print_diff(repo, composed["1.0.0"].commit, composed["1.1.0"].commit)

    console.rule("signed releases")
    shutil.rmtree(workdir / "keys", ignore_errors=True)
    keyring = Keyring.generate(workdir / "keys")
    shutil.rmtree(repo / "tuf", ignore_errors=True)
    init_repository(repo, keyring)
    for result in composed.values():
        _publish(repo, keyring, result.commit)
    sizes = {v: _full_size(repo, r.commit) for v, r in composed.items()}

    # Server-only code (FastAPI, SQLAlchemy, uvicorn): imported when used, so `afield` starts
    # on a device without it.
    from afield.sim.demo import fleet_site

    for stale in ("fleet.db", "manufacturer.db", "devices", "logs", "pki"):
        target = workdir / stale
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    with fleet_site(workdir, repo, policy=POLICY) as site:
        console.rule(f"the fleet manager on {site.url}, with FDO onboarding")
        devices = []
        for name in ("gw-1", "gw-2", "gw-3"):
            demo = site.make_device(name, repo, composed["1.0.0"].commit)
            devices.append(demo)
            console.print(
                f"{name}: 1.0.0 installed at the factory, DI, voucher sold and registered, "
                f"onboarded in {demo.onboarded.seconds * 1000:.0f} ms as {demo.device_id[:8]}",
                soft_wrap=True,
            )
        with site.agents(devices):
            site.wait_until_reported(devices, "1.0.0")
            console.print("their agents enrolled (one-time token, CSR, certificate) and report")
            console.rule("roll out 1.1.0: a canary first, then everyone")
            good = site.roll_out("1.1.0", _say)
            console.print(f"  {good.rollout['status']} in {good.seconds:.0f} s")
            console.rule("roll out 1.2.0, whose sensor check fails")
            bad = site.roll_out("1.2.0", _say)
            console.print(f"  {bad.rollout['status']} in {bad.seconds:.0f} s")
            time.sleep(8)  # the other devices keep polling: none is told to update
        _summary(site, devices, sizes)
        url = site.url
    console.print(
        f"\nthe fleet manager ran at {url} (API docs at {url}/docs). Serve it again with\n"
        f"  afield serve --db sqlite:///{workdir}/fleet.db --repo {repo}\n"
        f"and look: afield device status --sysroot {workdir}/devices/gw-1 --json, or open its\n"
        f"dashboard at / and log in with a token from\n"
        f"  afield admin token create me --role viewer --db sqlite:///{workdir}/fleet.db",
        soft_wrap=True,
    )
    if bad.rollout["status"] != "paused":
        raise AfieldError(f"demo: the 1.2.0 rollout should have paused: {bad.rollout}")
