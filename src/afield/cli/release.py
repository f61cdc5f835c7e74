"""``afield release``: start a repository's TUF metadata, publish commits, refresh, list."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from afield.cli._output import console, err_console, print_json
from afield.release import init_repository, list_releases, metadata_dir, publish, refresh
from afield.trust import Expiries, Keyring, parse_duration

app = typer.Typer(help="Publish composed images as signed releases.", no_args_is_help=True)

RepoOption = typer.Option(..., "--repo", help="The afield repository (DIR/ostree + DIR/tuf).")
KeysOption = typer.Option(..., "--keys", help="The key directory (afield keys init).")
JsonOption = typer.Option(False, "--json", help="Print JSON.")
RootExpiry = typer.Option("365d", "--root-expiry", help="Root validity (s, m, h, d, w).")
TargetsExpiry = typer.Option("90d", "--targets-expiry", help="Targets validity.")
SnapshotExpiry = typer.Option("7d", "--snapshot-expiry", help="Snapshot validity.")
TimestampExpiry = typer.Option("1d", "--timestamp-expiry", help="Timestamp validity.")


def expiries(root: str, targets: str, snapshot: str, timestamp: str) -> Expiries:
    """The validity periods given on the command line."""
    return Expiries(
        root=parse_duration(root, "--root-expiry"),
        targets=parse_duration(targets, "--targets-expiry"),
        snapshot=parse_duration(snapshot, "--snapshot-expiry"),
        timestamp=parse_duration(timestamp, "--timestamp-expiry"),
    )


@app.command("init")
def init(
    repo: Path = RepoOption,
    keys: Path = KeysOption,
    root_expiry: str = RootExpiry,
    targets_expiry: str = TargetsExpiry,
    snapshot_expiry: str = SnapshotExpiry,
    timestamp_expiry: str = TimestampExpiry,
) -> None:
    """Write the first root.json and empty targets, snapshot and timestamp into DIR/tuf."""
    periods = expiries(root_expiry, targets_expiry, snapshot_expiry, timestamp_expiry)
    meta = init_repository(repo, Keyring.load(keys), expiries=periods)
    console.print(f"wrote {meta.directory}/1.root.json and empty release metadata")


@app.command("publish")
def publish_command(
    repo: Path = RepoOption,
    keys: Path = KeysOption,
    commit: str = typer.Option(..., "--commit", help="Commit checksum, unique prefix or ref."),
    version: str | None = typer.Option(
        None, "--version", help="Release version (default: the commit's version metadata)."
    ),
    channel: str = typer.Option("stable", "--channel", help="The channel devices follow."),
    deltas: int = typer.Option(
        3, "--deltas", min=0, help="Build static deltas from this many previous releases."
    ),
    delta_from: list[str] = typer.Option(
        [], "--delta-from", help="Also build a static delta from this commit (repeatable)."
    ),
    from_fleet: str | None = typer.Option(
        None,
        "--from-fleet",
        help="Fleet manager URL: also build deltas from the commits its devices run.",
    ),
    root_expiry: str = RootExpiry,
    targets_expiry: str = TargetsExpiry,
    snapshot_expiry: str = SnapshotExpiry,
    timestamp_expiry: str = TimestampExpiry,
    as_json: bool = JsonOption,
) -> None:
    """Publish a commit as a signed release (a TUF target for its commit object)."""
    periods = expiries(root_expiry, targets_expiry, snapshot_expiry, timestamp_expiry)
    release = publish(
        repo,
        Keyring.load(keys),
        commit,
        version=version,
        channel=channel,
        deltas=deltas,
        delta_from=delta_from,
        fleet_url=from_fleet,
        expiries=periods,
        on_note=lambda note: err_console.print(f"note: {note}", soft_wrap=True),
    )
    if as_json:
        print_json(release.to_dict())
        return
    console.print(
        f"published {release.image}/{release.arch} {release.version} on {release.channel}: "
        f"{release.commit}",
        soft_wrap=True,
    )
    for delta in release.deltas:
        console.print(
            f"  static delta from {str(delta['from'])[:12]}: {delta['length']:,} bytes",
            soft_wrap=True,
        )


@app.command("refresh")
def refresh_command(
    repo: Path = RepoOption,
    keys: Path = KeysOption,
    root_expiry: str = RootExpiry,
    targets_expiry: str = TargetsExpiry,
    snapshot_expiry: str = SnapshotExpiry,
    timestamp_expiry: str = TimestampExpiry,
    as_json: bool = JsonOption,
) -> None:
    """Re-sign timestamp (and snapshot, targets when half spent) so devices are not frozen."""
    periods = expiries(root_expiry, targets_expiry, snapshot_expiry, timestamp_expiry)
    result = refresh(repo, Keyring.load(keys), expiries=periods)
    if as_json:
        print_json({"resigned": result.resigned, "notes": list(result.notes)})
        return
    done = ", ".join(f"{role} v{version}" for role, version in result.resigned.items())
    console.print(f"re-signed {done}")
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")


@app.command("ls")
def ls(repo: Path = RepoOption, as_json: bool = JsonOption) -> None:
    """List published releases and when the metadata expires."""
    listing = list_releases(repo)
    if as_json:
        print_json(listing.to_dict())
        return
    table = Table("image", "arch", "channel", "version", "commit", "ref")
    for r in listing.releases:
        table.add_row(r.image, r.arch, r.channel, r.version, r.commit[:12], r.ref or "-")
    console.print(table)
    for role, state in listing.metadata.items():
        console.print(f"{role:<10} v{state['version']:<4} expires {state['expires']}")
    console.print(f"metadata in {metadata_dir(repo)}")
