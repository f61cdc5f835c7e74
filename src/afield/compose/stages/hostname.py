"""Stage afield.hostname: write the image's static hostname and its /etc/hosts line.

Leaves network configuration to others.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from afield.compose.pipeline import Facts, StageContext

NAME = "afield.hostname"
CHECKPOINT = False


def run(ctx: StageContext, options: Mapping[str, Any]) -> Facts:
    """Write /etc/hostname and /etc/hosts; facts ``hostname``."""
    name = options["hostname"]
    etc = ctx.tree / "etc"
    (etc / "hostname").write_text(f"{name}\n")
    (etc / "hosts").write_text(
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        "ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
    )
    return {"hostname": name}
