"""Stage afield.users: create the blueprint's groups and users and install SSH keys.

Runs the image's own ``groupadd``/``useradd`` in a chroot (with SOURCE_DATE_EPOCH, which shadow
honours for password-change dates), then writes ``~/.ssh/authorized_keys`` for every key given
through ``customizations.user.key`` or ``customizations.sshkey``. Homes created here end up under
``/var/home`` when the tree is prepared for OSTree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from afield.compose._tree import chroot, lookup_gid, resolve_in_tree
from afield.compose.pipeline import Facts, StageContext
from afield.errors import ComposeError, StageError

NAME = "afield.users"
CHECKPOINT = False


def _passwd_entry(tree: Path, user: str) -> tuple[int, int, str]:
    """``(uid, gid, home)`` of ``user`` from the tree's /etc/passwd."""
    for line in (tree / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if len(fields) >= 6 and fields[0] == user:
            return int(fields[2]), int(fields[3]), fields[5]
    raise StageError(NAME, f"user {user!r} does not exist in the image", user_error=True)


def _group_exists(tree: Path, name: str) -> bool:
    try:
        lookup_gid(tree, name)
    except ComposeError:
        return False
    return True


def _add_key(ctx: StageContext, user: str, key: str) -> None:
    uid, gid, home_path = _passwd_entry(ctx.tree, user)
    home = resolve_in_tree(ctx.tree, home_path)
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys = ssh / "authorized_keys"
    existing = keys.read_text().splitlines() if keys.is_file() else []
    if key not in existing:
        keys.write_text("\n".join([*existing, key]) + "\n")
    for path, mode in ((ssh, 0o700), (keys, 0o600)):
        path.chmod(mode)
        os.chown(path, uid, gid)


def run(ctx: StageContext, options: Mapping[str, Any]) -> Facts:
    """Create groups and users, set passwords, install keys; facts ``users`` (their names)."""
    env = {"SOURCE_DATE_EPOCH": str(options["source_date_epoch"])}
    for group in options["groups"]:
        argv = ["groupadd"]
        if group.get("gid") is not None:
            argv += ["--gid", str(group["gid"])]
        chroot(ctx.tree, [*argv, group["name"]], log=ctx.log, env=env)
    for user in options["users"]:
        argv = ["useradd", "--create-home"]
        if user.get("uid") is not None:
            argv += ["--uid", str(user["uid"])]
        if user.get("gid") is not None:
            argv += ["--gid", str(lookup_gid(ctx.tree, user["gid"]))]
        elif _group_exists(ctx.tree, user["name"]):
            # Debian's base groups include names people use for logins ("operator"): make
            # that group the user's primary group rather than failing to create a private one.
            argv += ["--gid", user["name"]]
        if user.get("description"):
            argv += ["--comment", user["description"]]
        if user.get("home"):
            argv += ["--home-dir", user["home"]]
        argv += ["--shell", user.get("shell") or "/bin/bash"]
        if user.get("groups"):
            argv += ["--groups", ",".join(user["groups"])]
        if user.get("password"):
            argv += ["--password", user["password"]]
        chroot(ctx.tree, [*argv, user["name"]], log=ctx.log, env=env)
        if user.get("key"):
            _add_key(ctx, user["name"], user["key"])
    for entry in options["sshkeys"]:
        _add_key(ctx, entry["user"], entry["key"])
    return {"users": [u["name"] for u in options["users"]]}
