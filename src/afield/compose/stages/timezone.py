"""Stage afield.timezone: set the image's time zone and NTP servers.

Links /etc/localtime into the image's own zoneinfo (so the zone must exist in ``tzdata`` there)
and writes a systemd-timesyncd drop-in for NTP servers. Leaves installing tzdata and timesyncd to
the bootstrap stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from afield.compose.pipeline import Facts, StageContext
from afield.errors import StageError

NAME = "afield.timezone"
CHECKPOINT = False


def run(ctx: StageContext, options: Mapping[str, Any]) -> Facts:
    """Set /etc/localtime, /etc/timezone and timesyncd's NTP list; facts ``timezone``."""
    zone = options.get("timezone")
    etc = ctx.tree / "etc"
    if zone:
        zonefile = ctx.tree / "usr" / "share" / "zoneinfo" / zone
        if not zonefile.is_file() or ".." in zone.split("/"):
            raise StageError(
                NAME,
                f"customizations.timezone.timezone: unknown time zone {zone!r} "
                "(use a name from /usr/share/zoneinfo such as Europe/Berlin or UTC)",
                user_error=True,
            )
        localtime = etc / "localtime"
        if localtime.exists() or localtime.is_symlink():
            localtime.unlink()
        localtime.symlink_to(f"/usr/share/zoneinfo/{zone}")
        (etc / "timezone").write_text(f"{zone}\n")
    servers = options.get("ntpservers", [])
    if servers:
        dropin = etc / "systemd" / "timesyncd.conf.d"
        dropin.mkdir(parents=True, exist_ok=True)
        (dropin / "afield.conf").write_text(f"[Time]\nNTP={' '.join(servers)}\n")
    return {"timezone": zone or "Etc/UTC"}
