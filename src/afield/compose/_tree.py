"""Helpers for stages that work on an OS tree: run commands, resolve paths safely, look up owners.

Paths inside the tree are resolved the way the booted system would see them: symlinks are followed
relative to the tree's root, never the host's, so a blueprint path such as ``/var/run/x`` (where
``/var/run`` links to ``/run``) lands inside the tree and can never write to the builder.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath

from afield.errors import ComposeError

__all__ = [
    "chroot",
    "lookup_gid",
    "lookup_uid",
    "move",
    "resolve_in_tree",
    "run",
]

_MAX_SYMLINKS = 40
_TAIL_LINES = 40


def run(
    argv: Sequence[str],
    *,
    log: Callable[[str], None],
    env: Mapping[str, str] | None = None,
    what: str | None = None,
) -> str:
    """Run ``argv``, streaming its output lines to ``log``; its output, or ComposeError."""
    merged = {**os.environ, **(env or {})}
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    lines: list[str] = []
    try:
        proc = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=merged,
            text=True,
            errors="replace",
        )
    except FileNotFoundError as e:
        raise ComposeError(f"{argv[0]} is not installed (run `make bootstrap`)") from e
    with proc:
        for raw in proc.stdout or ():
            line = raw.rstrip("\n")
            tail.append(line)
            lines.append(line)
            log(line)
        code = proc.wait()
    if code != 0:
        name = what or Path(argv[0]).name
        detail = "\n".join(tail)
        raise ComposeError(f"{name} failed with exit code {code}:\n{detail}")
    return "\n".join(lines)


def chroot(
    tree: Path,
    argv: Sequence[str],
    *,
    log: Callable[[str], None],
    env: Mapping[str, str] | None = None,
) -> str:
    """Run ``argv`` inside ``tree`` with chroot(8) and a clean, fixed environment."""
    fixed = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LC_ALL": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
        "HOME": "/root",
    }
    full_env = {**fixed, **(env or {})}
    return run(
        [
            "env",
            "-i",
            *(f"{k}={v}" for k, v in sorted(full_env.items())),
            "chroot",
            str(tree),
            *argv,
        ],
        log=log,
        what=argv[0],
    )


def move(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``, copying with owners, modes and xattrs kept when the two
    are on different layers (overlayfs cannot rename a lower directory)."""
    try:
        source.rename(target)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        result = subprocess.run(
            ["mv", "--no-target-directory", str(source), str(target)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise ComposeError(f"cannot move {source} to {target}: {result.stderr.strip()}") from e


def resolve_in_tree(tree: Path, path: str) -> Path:
    """Where ``path`` (absolute, as seen inside the tree) is on the builder, inside ``tree``.

    Every symlink met on the way is followed relative to ``tree``; ``..`` cannot climb out of it.
    The last component is not followed if it is a symlink (callers replace it).
    """
    pending = list(PurePosixPath(path).parts[1:])
    resolved: list[str] = []
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = tree.joinpath(*resolved, part)
        if pending and candidate.is_symlink():
            hops += 1
            if hops > _MAX_SYMLINKS:
                raise ComposeError(f"{path}: too many levels of symbolic links in the image")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            pending = list(PurePosixPath(target).parts[1 if target.startswith("/") else 0 :]) + (
                pending
            )
            continue
        resolved.append(part)
    return tree.joinpath(*resolved)


def make_parents(tree: Path, path: str) -> Path:
    """Create the missing parents of ``path`` in the tree, each 0755 whatever the umask; where
    ``path`` is (see :func:`resolve_in_tree`)."""
    target = resolve_in_tree(tree, path)
    missing: list[Path] = []
    parent = target.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        directory.mkdir(mode=0o755)
        directory.chmod(0o755)
    return target


def _lookup(tree: Path, database: str, name: str) -> int | None:
    path = tree / "etc" / database
    if not path.is_file():
        path = tree / "usr" / "etc" / database
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] == name and fields[2].isdigit():
            return int(fields[2])
    return None


def lookup_uid(tree: Path, user: str | int) -> int:
    """The numeric uid of ``user`` in the tree's ``/etc/passwd`` (ints pass through)."""
    if isinstance(user, int):
        return user
    uid = _lookup(tree, "passwd", user)
    if uid is None:
        raise ComposeError(f"user {user!r} does not exist in the image", user_error=True)
    return uid


def lookup_gid(tree: Path, group: str | int) -> int:
    """The numeric gid of ``group`` in the tree's ``/etc/group`` (ints pass through)."""
    if isinstance(group, int):
        return group
    gid = _lookup(tree, "group", group)
    if gid is None:
        raise ComposeError(f"group {group!r} does not exist in the image", user_error=True)
    return gid
