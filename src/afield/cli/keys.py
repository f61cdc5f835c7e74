"""``afield keys``: generate, show and rotate the TUF role keys of an update repository."""

from __future__ import annotations

from pathlib import Path

import typer

from afield.cli._output import console, print_json
from afield.cli.release import (
    RootExpiry,
    SnapshotExpiry,
    TargetsExpiry,
    TimestampExpiry,
    expiries,
)
from afield.errors import TrustError
from afield.release import init_repository, metadata_dir
from afield.trust import ROLES, Keyring, MetadataRepository

app = typer.Typer(help="Manage TUF signing keys.", no_args_is_help=True)

DirOption = typer.Option(..., "--dir", help="The key directory.")
JsonOption = typer.Option(False, "--json", help="Print JSON.")


def _print_keys(keyring: Keyring) -> None:
    for role, spec in keyring.describe().items():
        ids = ", ".join(
            f"{k['keyid'][:16]}{'' if k['private'] else ' (offline)'}" for k in spec["keys"]
        )
        console.print(f"{role:<10} {spec['threshold']} of {len(spec['keys'])}: {ids}")


@app.command("init")
def init(
    directory: Path = DirOption,
    root_threshold: int = typer.Option(1, "--root-threshold", help="Root keys that must sign."),
    root_keys: int = typer.Option(1, "--root-keys", help="How many root keys to generate."),
    repo: Path | None = typer.Option(
        None, "--repo", help="Also write the first root.json (and empty metadata) into DIR/tuf."
    ),
    root_expiry: str = RootExpiry,
    targets_expiry: str = TargetsExpiry,
    snapshot_expiry: str = SnapshotExpiry,
    timestamp_expiry: str = TimestampExpiry,
    as_json: bool = JsonOption,
) -> None:
    """Generate ed25519 keys for root, targets, snapshot and timestamp (never overwrites)."""
    periods = expiries(root_expiry, targets_expiry, snapshot_expiry, timestamp_expiry)
    if repo is not None and (metadata_dir(repo) / "root.json").exists():
        error = TrustError(
            f"{metadata_dir(repo) / 'root.json'}: already exists; refusing to generate keys for "
            "a new root of trust over it (rotate keys with `afield keys rotate` instead)"
        )
        error.user_error = True
        raise error
    keyring = Keyring.generate(directory, root_threshold=root_threshold, root_keys=root_keys)
    if repo is not None:
        init_repository(repo, keyring, expiries=periods)
    if as_json:
        print_json({"dir": str(directory), "roles": keyring.describe()})
        return
    console.print(f"generated keys in {directory}")
    _print_keys(keyring)
    if repo is not None:
        console.print(f"wrote {metadata_dir(repo)}/1.root.json")
    console.print("keep the root keys offline: move their .pem files away after use")


@app.command("show")
def show(directory: Path = DirOption, as_json: bool = JsonOption) -> None:
    """Show each role's threshold and key ids, and which private keys are here."""
    keyring = Keyring.load(directory)
    if as_json:
        print_json({"dir": str(directory), "roles": keyring.describe()})
        return
    _print_keys(keyring)


@app.command("rotate")
def rotate(
    directory: Path = DirOption,
    repo: Path = typer.Option(..., "--repo", help="The afield repository whose root changes."),
    role: str = typer.Option(..., "--role", help=f"The role: {', '.join(ROLES)}."),
    key: str | None = typer.Option(
        None, "--key", help="Replace only this key id (or prefix); default all of the role's."
    ),
    root_expiry: str = RootExpiry,
    targets_expiry: str = TargetsExpiry,
    snapshot_expiry: str = SnapshotExpiry,
    timestamp_expiry: str = TimestampExpiry,
    as_json: bool = JsonOption,
) -> None:
    """New key(s) for a role: a new root version signed by the old and the new root keys."""
    periods = expiries(root_expiry, targets_expiry, snapshot_expiry, timestamp_expiry)
    keyring = Keyring.load(directory)
    with MetadataRepository.edit(metadata_dir(repo)) as meta:
        result = meta.rotate(keyring, role, keyid=key, expiries=periods)
    if as_json:
        print_json(result)
        return
    console.print(
        f"rotated {role}: root is now v{result['root_version']}; "
        f"retired {', '.join(k[:16] for k in result['removed'])}, "
        f"added {', '.join(k[:16] for k in result['added'])}",
        soft_wrap=True,
    )
    if result["resigned"]:
        console.print(f"re-signed {', '.join(result['resigned'])}")
