"""Helpers for the disk image tests: blueprints of bootable test images and reading a disk.

The x86_64 boot test images are ``examples/gateway.toml`` with a few test files added, so their
package set (and so the bootstrap and kernel checkpoints) is the one the session's ``composed``
image already built; the arm64 one is a minimal image with the same files. What they add:

- ``afield-test-update.service``: when ``/var/lib/afield/test-update`` names a repository URL,
  ``afield device update`` pulls and stages the newest release from it (a test writes the file
  into the disk's ``/var`` before it boots);
- ``afield-test-poweroff.service``: powers off once the health check and the update are done,
  so each QEMU run is one boot;
- a systemd-networkd DHCP configuration (the example configures no network);
- ``GREENBOOT_MAX_BOOT_ATTEMPTS=1``: a staged release gets one boot, so a fallback takes two;
- in a ``broken`` image, a required health check that fails.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from afield.device.boot.grubenv import read_grubenv
from tests.conftest import EXAMPLE

UPDATE_URL_FILE = "var/lib/afield/test-update"

_UNITS = '''
[[customizations.files]]
path = "/etc/systemd/system/afield-test-update.service"
data = """
[Unit]
Description=Pull and stage the newest release from the URL in /var/lib/afield/test-update
After=afield-healthcheck.service network-online.target
Wants=network-online.target
ConditionPathExists=/var/lib/afield/test-update
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'exec /usr/lib/afield/bin/afield device update --sysroot / \\
    --server "$(cat /var/lib/afield/test-update)"'
StandardOutput=journal+console
StandardError=journal+console
[Install]
WantedBy=multi-user.target
"""

[[customizations.files]]
path = "/etc/systemd/system/afield-test-poweroff.service"
data = """
[Unit]
Description=Power off once the boot is decided (afield QEMU tests: one boot per run)
After=afield-healthcheck.service afield-test-update.service
[Service]
Type=oneshot
ExecStart=/bin/systemctl --no-block poweroff
[Install]
WantedBy=multi-user.target
"""

[[customizations.files]]
path = "/etc/systemd/network/80-afield-test.network"
data = """
[Match]
Name=en* eth*
[Network]
DHCP=ipv4
"""

[[customizations.files]]
path = "/etc/greenboot/greenboot.conf"
ensure_parents = true
data = "GREENBOOT_MAX_BOOT_ATTEMPTS=1\\n"
'''

_BROKEN = """
[[customizations.files]]
path = "/etc/greenboot/check/required.d/50-broken.sh"
mode = "0755"
ensure_parents = true
data = "#!/bin/sh\\necho 'this release is broken on purpose'\\nexit 1\\n"
"""


# The arm64 image is small: its package scripts and initramfs run emulated, so every package
# costs there; it shares no cache with the x86_64 images anyway.
_ARM64_BASE = """
name = "gateway"
version = "1.0.0"
distro = "debian-12"

[customizations.kernel]
name = "linux-image-cloud-arm64"
append = "console=ttyAMA0"

[customizations.services]
enabled = ["systemd-networkd", "afield-test-update", "afield-test-poweroff"]

[customizations.afield]
source_date_epoch = 1767225600
"""


def boot_blueprint(
    version: str, *, arch: str = "x86_64", broken: bool = False, devicetree: str | None = None
) -> str:
    """The text of a bootable test blueprint (see the module's docstring); ``devicetree``
    names a DTB beside the blueprint that the image carries as its default (arm64)."""
    if arch == "aarch64":
        text = _ARM64_BASE.replace('version = "1.0.0"', f'version = "{version}"')
        if devicetree is not None:
            text += (
                "\n[customizations.afield.devicetree]\n"
                f'files = ["./{devicetree}"]\ndefault = "./{devicetree}"\n'
            )
        return text + _UNITS + (_BROKEN if broken else "")
    text = EXAMPLE.read_text()
    replacements = {
        'version = "1.0.0"': f'version = "{version}"',
        # No "quiet": the boot tests read systemd's greeting and the health check's marker.
        'append = "console=ttyS0,115200 quiet"': 'append = "console=ttyS0,115200"',
        'enabled = ["ssh", "nftables"]': (
            'enabled = ["ssh", "nftables", "systemd-networkd", "afield-test-update", '
            '"afield-test-poweroff"]'
        ),
    }
    for old, new in replacements.items():
        assert old in text, f"examples/gateway.toml changed: {old!r} is gone"
        text = text.replace(old, new)
    return text + _UNITS + (_BROKEN if broken else "")


def partition_offset(disk: Path, name: str) -> int:
    """Byte offset of the partition called ``name`` (sfdisk reads the GPT)."""
    table = json.loads(
        subprocess.run(
            ["sfdisk", "--json", str(disk)], capture_output=True, text=True, check=True
        ).stdout
    )["partitiontable"]
    for part in table["partitions"]:
        if part.get("name") == name:
            return int(part["start"]) * int(table.get("sectorsize", 512))
    raise AssertionError(f"{disk}: no partition named {name}")


def debugfs(disk: Path, partition: str, request: str) -> str:
    """Run one debugfs request on an ext4 partition inside ``disk`` (read-only)."""
    offset = partition_offset(disk, partition)
    done = subprocess.run(
        ["debugfs", "-R", request, f"{disk}?offset={offset}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def debugfs_bytes(disk: Path, partition: str, path: str, scratch: Path) -> bytes:
    """The bytes of the file ``path`` on an ext4 partition inside ``disk``."""
    out = scratch / "dumped"
    out.unlink(missing_ok=True)
    debugfs(disk, partition, f"dump {path} {out}")
    return out.read_bytes()


def grubenv_on(disk: Path, scratch: Path) -> dict[str, str]:
    """The grubenv on the disk's ``/boot``, read as GRUB's own format."""
    env = scratch / "grubenv"
    env.write_text(debugfs(disk, "boot", "cat /grub2/grubenv"))
    return read_grubenv(env)
