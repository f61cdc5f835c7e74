"""Stage afield.debian.bootstrap: install a Debian system into the tree with mmdebstrap.

Installs the base set an OSTree-booted device needs plus the blueprint's packages, pins versions
the blueprint asks for (exact or glob, checked again after install), keeps downloaded packages in
the cache's ``debs/`` so a recompose needs no network, and reports the installed package list.
It leaves configuration (users, files, services) to later stages.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from collections.abc import Mapping
from typing import Any

from afield.compose._tree import run as run_command
from afield.compose.pipeline import Facts, StageContext
from afield.errors import ComposeError, StageError

NAME = "afield.debian.bootstrap"
# The kernel stage right after it is checkpointed; one copy of the tree is enough.
CHECKPOINT = False

_MISSING = (
    re.compile(r"E: Unable to locate package (\S+)"),
    re.compile(r"E: Package '([^']+)' has no installation candidate"),
    re.compile(r"E: Version '([^']+)' for '([^']+)' was not found"),
    re.compile(r"E: Couldn't find any package by glob '([^']+)'"),
)


def _missing_packages(output: str) -> list[str]:
    """Package names apt said it cannot find, from its error lines."""
    found: list[str] = []
    for pattern in _MISSING:
        for match in pattern.finditer(output):
            groups = match.groups()
            found.append(f"{groups[1]}={groups[0]}" if len(groups) == 2 else groups[0])
    return sorted(set(found))


def installed_packages(ctx: StageContext) -> dict[str, str]:
    """``{name: version}`` of every package dpkg has installed in the tree."""
    out = run_command(
        [
            "dpkg-query",
            f"--admindir={ctx.tree}/var/lib/dpkg",
            "-W",
            "-f",
            "${db:Status-Status} ${Package} ${Version}\n",
        ],
        log=lambda _line: None,
    )
    packages: dict[str, str] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "installed":
            packages[parts[1]] = parts[2]
    return dict(sorted(packages.items()))


def run(ctx: StageContext, options: Mapping[str, Any]) -> Facts:
    """Bootstrap the tree; facts ``packages`` (name -> version) and ``architecture``."""
    debs = ctx.cache_dir / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    constraints: dict[str, str] = dict(options.get("constraints", {}))
    includes = [
        f"{name}={constraints[name]}" if name in constraints else name
        for name in options["packages"]
    ]
    argv = [
        "mmdebstrap",
        "--mode=root",
        f"--variant={options['variant']}",
        f"--architectures={options['architecture']}",
        "--format=directory",
        '--aptopt=APT::Install-Recommends "false"',
        '--aptopt=Acquire::Retries "3"',
        f"--include={','.join(includes)}",
        "--skip=download/empty",
        '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/',
        f"--setup-hook=sync-in {shlex.quote(str(debs))} /var/cache/apt/archives/",
        f"--customize-hook=sync-out /var/cache/apt/archives {shlex.quote(str(debs))}",
        # Host-specific files mmdebstrap copies in; later stages write the image's own.
        '--customize-hook=rm -f "$1"/etc/resolv.conf',
        '--customize-hook=echo localhost > "$1"/etc/hostname',
        options["suite"],
        str(ctx.tree),
        *options["mirrors"],
    ]
    # INITRD=No: the kernel's postinst would build an initramfs before ostree-boot's dracut
    # configuration is unpacked; afield.kernel builds the one the image boots with.
    env = {"SOURCE_DATE_EPOCH": str(options["source_date_epoch"]), "INITRD": "No"}
    try:
        run_command(argv, log=ctx.log, env=env)
    except ComposeError as e:
        missing = _missing_packages(e.message)
        if missing:
            raise StageError(
                NAME,
                f"package not found in Debian {options['suite']}: {', '.join(missing)} "
                "(check [[packages]] names and versions)",
                log=e.message,
                user_error=True,
            ) from e
        raise
    packages = installed_packages(ctx)
    _check_constraints(packages, constraints)
    return {"packages": packages, "architecture": options["architecture"]}


def _check_constraints(packages: Mapping[str, str], constraints: Mapping[str, str]) -> None:
    """Fail when an installed version does not match what the blueprint pinned."""
    wrong = [
        f"{name} is {packages.get(name, 'not installed')}, blueprint asks for {wanted}"
        for name, wanted in sorted(constraints.items())
        if name not in packages or not fnmatch.fnmatchcase(packages[name], wanted)
    ]
    if wrong:
        raise StageError(NAME, "; ".join(wrong), user_error=True)
