"""``afield demo``: the end-to-end tour `make demo` runs on embedded defaults.

At this stage: compose two versions of ``examples/gateway.toml`` (the second bumps the version
and adds a package and a config line) into ``_demo/repo`` and print what changed between them.
"""

from __future__ import annotations

import re
from pathlib import Path

import typer

from afield import blueprint as bp
from afield.cli._output import console, err_console
from afield.cli._progress import StageProgress
from afield.compose import compose, default_cache_dir
from afield.errors import AfieldError
from afield.image import diff_packages, image_info, open_repository

_PROJECT = Path(__file__).resolve().parents[3]


def second_version(text: str) -> str:
    """The demo's v2 of a blueprint: version 1.1.0, one more package, one more config line."""
    bumped, count = re.subn(r'(?m)^version = "[^"]*"', 'version = "1.1.0"', text, count=1)
    if count != 1:
        raise AfieldError("demo: the example blueprint has no top-level version line")
    return bumped + '\n[[packages]]\nname = "jq"\n'


def demo_command(
    workdir: Path = typer.Option(Path("_demo"), "--workdir", help="Where the demo writes."),
    example: Path = typer.Option(
        _PROJECT / "examples" / "gateway.toml", "--example", help="The v1 blueprint."
    ),
) -> None:
    """Compose two versions of the gateway example and show their package diff."""
    workdir.mkdir(parents=True, exist_ok=True)
    repo = workdir / "repo"
    v1_file = workdir / "gateway-1.0.0.toml"
    v2_file = workdir / "gateway-1.1.0.toml"
    v1_file.write_text(example.read_text())
    v2_file.write_text(second_version(example.read_text()))
    commits = []
    for path in (v1_file, v2_file):
        blueprint = bp.load(path)
        console.rule(f"compose {blueprint.name} {blueprint.version}")
        with StageProgress(err_console) as progress:
            result = compose(blueprint, repo, cache_dir=default_cache_dir(), reporter=progress)
        ran = ", ".join(result.ran) or "nothing (all cached)"
        console.print(f"commit {result.commit} on {result.ref}; ran: {ran}")
        commits.append(result.commit)
    ostree_repo = open_repository(repo)
    old, new = image_info(ostree_repo, commits[0]), image_info(ostree_repo, commits[1])
    result_diff = diff_packages(old.packages, new.packages)
    console.rule("what changed")
    console.print(f"{old.version} {old.checksum[:12]} -> {new.version} {new.checksum[:12]}")
    for name, version in result_diff.added.items():
        console.print(f"  [green]+[/] {name} {version}")
    for name, version in result_diff.removed.items():
        console.print(f"  [red]-[/] {name} {version}")
    for change in result_diff.changed:
        console.print(f"  [yellow]~[/] {change.name} {change.old} -> {change.new}")
    console.print(
        f"\nrepository: {repo}  (try: afield image ls --repo {repo}; "
        f"afield image diff --repo {repo} {commits[0][:12]} {commits[1][:12]})"
    )
