"""``afield demo``: the end-to-end tour `make demo` runs on embedded defaults.

1. Compose two versions of ``examples/gateway.toml`` (the second bumps the version and adds a
   package) into ``_demo/repo`` and print their package diff.
2. Sign them as releases (TUF keys in ``_demo/keys``; publishing 1.1.0 builds the static delta
   from 1.0.0) and serve the repository on 127.0.0.1.
3. Install 1.0.0 on a simulated device, give it its FDO credential at the "factory" (DI), then
   onboard it zero-touch (TO0, TO1, TO2 with a manufacturer, a rendezvous and an owner server on
   127.0.0.1): the owner hands it the update server's URL and the repository's TUF root. Boot it
   and let it update itself over HTTP: TUF verification, the delta fetched and applied, staged,
   booted.
4. Compose and publish a broken 1.2.0 (a required health check that fails); the device updates,
   boots it until the boot counter runs out, and rolls itself back to 1.1.0.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from afield import blueprint as bp
from afield.cli._output import console, err_console
from afield.cli._progress import StageProgress
from afield.device.bootseq import boot_once
from afield.device.lifecycle import Device
from afield.device.status import device_status
from afield.device.update import update
from afield.errors import AfieldError
from afield.image import diff_packages, image_info, open_repository
from afield.release import init_repository, publish
from afield.trust import Keyring

if TYPE_CHECKING:
    from afield.compose import ComposeResult

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


def _boot(device: Device) -> None:
    result = boot_once(device)
    health = "[green]healthy[/]" if result.healthy else "[red]unhealthy[/]"
    via = " via fallback" if result.fallback else ""
    console.print(f"  boot: {result.version}{via} -> {health}; {result.reason}")
    for check in result.report.failed:
        console.print(f"    failed {check.name}: {check.output.strip()}")


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


def _update(device: Device, url: str, *, full: int | None) -> None:
    result = update(device, url)
    how = "a static delta" if result.used_delta else f"{result.objects_fetched} objects"
    share = f", {100 * result.bytes_downloaded / full:.1f}% of the whole image" if full else ""
    console.print(f"  update: {result.reason}: {result.bytes_downloaded:,} bytes via {how}{share}")


def _onboard(workdir: Path, device: Device, url: str, root_json: Path) -> str:
    """DI at the factory, then zero-touch onboarding; returns the update URL the owner gave."""
    # Server-only code (Starlette, SQLAlchemy): imported when used.
    from afield.device.onboard import OnboardOptions, manufacture, onboard
    from afield.fdo.modules import Handoff
    from afield.fdo.server.site import local_site

    shutil.rmtree(workdir / "fdo", ignore_errors=True)
    handoff = Handoff(fleet_url=url, tuf_root=root_json.read_bytes())
    with local_site(workdir / "fdo", handoff) as site:
        made, _ = manufacture(device, site.manufacturer_url, device_info="acme gateway")
        console.print(f"factory: DI gave the device its FDO credential, GUID {made.guid}")
        site.sell(made.guid)
        console.print("its voucher went to the owner, who registered it at the rendezvous server")
        result = onboard(device, OnboardOptions(rounds=1, timeout=10))
    console.print(
        f"onboarded in {result.seconds * 1000:.0f} ms (TO1, TO2): new GUID {result.new_guid}; "
        f"the owner handed over the update server {url} and the repository's TUF root"
    )
    return str(result.handoff["fleet_url"])


def demo_command(
    workdir: Path = typer.Option(Path("_demo"), "--workdir", help="Where the demo writes."),
    example: Path = typer.Option(
        _PROJECT / "examples" / "gateway.toml", "--example", help="The 1.0.0 blueprint."
    ),
) -> None:
    """Compose images, then update a simulated device with a good and a broken release."""
    workdir.mkdir(parents=True, exist_ok=True)
    repo = workdir / "repo"
    text = example.read_text()
    files = {"1.0.0": text, "1.1.0": second_version(text), "1.2.0": broken_version(text)}
    paths = {}
    for version, content in files.items():
        paths[version] = workdir / f"gateway-{version}.toml"
        paths[version].write_text(content)
    v1, v2 = _compose(paths["1.0.0"], repo), _compose(paths["1.1.0"], repo)
    ostree_repo = open_repository(repo)
    old, new = image_info(ostree_repo, v1.commit), image_info(ostree_repo, v2.commit)
    changes = diff_packages(old.packages, new.packages)
    console.rule("what changed from 1.0.0 to 1.1.0")
    for name, version in changes.added.items():
        console.print(f"  [green]+[/] {name} {version}")
    for name, version in changes.removed.items():
        console.print(f"  [red]-[/] {name} {version}")
    for change in changes.changed:
        console.print(f"  [yellow]~[/] {change.name} {change.old} -> {change.new}")
    v3 = _compose(paths["1.2.0"], repo)

    # Server-only code (uvicorn): imported when used, so `afield` starts on a device without it.
    from afield.release.serve import running

    console.rule("signed releases, served on 127.0.0.1")
    shutil.rmtree(workdir / "keys", ignore_errors=True)
    keyring = Keyring.generate(workdir / "keys")
    shutil.rmtree(repo / "tuf", ignore_errors=True)
    init_repository(repo, keyring)
    for result in (v1, v2):
        _publish(repo, keyring, result.commit)

    console.rule("a device in the field (simulated sysroot)")
    sysroot = workdir / "device"
    shutil.rmtree(sysroot, ignore_errors=True)
    device = Device.init(sysroot, "gateway")
    device.install(repo, v1.commit)
    console.print(f"factory install of 1.0.0 into {sysroot}")
    with running(repo) as served:
        url = _onboard(workdir, device, served, repo / "tuf" / "root.json")
        _boot(device)
        _update(device, url, full=_full_size(repo, v2.commit))
        _boot(device)
        _publish(repo, keyring, v3.commit, deltas=1)
        _update(device, url, full=None)
        console.print("1.2.0's sensor check fails on every boot:")
        for _ in range(4):
            _boot(device)
    status = device_status(device)
    booted = status["booted"]
    console.rule("where the device ended")
    console.print(f"booted {booted['version']} {booted['checksum'][:12]}")
    for event in status["events"]:
        if event["event"] == "staged":
            console.print(f"  staged {event['version']}")
        elif event["event"] == "health failed":
            names = ", ".join(c["name"] for c in event.get("checks", []))
            console.print(f"  health failed on {event['checksum'][:12]}: {names}")
        elif event["event"] == "rolled back":
            console.print(f"  rolled back {event['from'][:12]} -> {event['to'][:12]}")
    console.print(
        f"\nrepository: {repo}; device: {sysroot}\n"
        f"try: afield image ls --repo {repo}; afield device status --sysroot {sysroot} --json"
    )
