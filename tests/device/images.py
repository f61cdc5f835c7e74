"""Small bootable-by-OSTree images for device tests: real commits, seconds to build.

A real composed Debian image takes minutes; the device logic needs only what OSTree and the
health checks look at: a kernel and initramfs under ``/usr/lib/modules``, ``os-release``, a
shell (static busybox) for greenboot scripts, and the greenboot directories. Each image is a
real OSTree commit in a real afield repository, with the metadata ``afield compose`` writes.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from afield.image import open_repository

KERNEL = "6.1.0-afield-test"
BUSYBOX = Path("/bin/busybox")


def build_tree(
    root: Path,
    *,
    version: str,
    healthy: bool = True,
    etc: dict[str, str] | None = None,
    devicetree: bytes | None = None,
    dtbs: Mapping[str, bytes] | None = None,
) -> Path:
    """Write an image tree at ``root``; its required health check passes when ``healthy``.

    ``devicetree`` becomes ``/usr/lib/modules/$kver/devicetree`` and each of ``dtbs`` (a path
    relative to it, such as ``vendor/board.dtb``) a file under ``/usr/lib/modules/$kver/dtb/``:
    where afield.devicetree puts them and OSTree looks for them.
    """
    usr = root / "usr"
    for d in (
        "bin",
        "etc",
        "lib/greenboot/check/required.d",
        "lib/greenboot/check/wanted.d",
        "lib/greenboot/green.d",
        "lib/greenboot/red.d",
        f"lib/modules/{KERNEL}",
    ):
        (usr / d).mkdir(parents=True, exist_ok=True)
    for d in ("var", "tmp", "proc", "sys", "dev", "run", "sysroot", "boot"):
        (root / d).mkdir(exist_ok=True)
    (root / "bin").symlink_to("usr/bin")
    shutil.copy2(BUSYBOX, usr / "bin" / "busybox")
    for applet in ("sh", "cat", "echo", "sleep", "touch", "test", "true", "false"):
        (usr / "bin" / applet).symlink_to("busybox")
    (usr / "bin" / "bash").write_text('#!/usr/bin/busybox sh\nexec /usr/bin/busybox sh "$@"\n')
    (usr / "bin" / "bash").chmod(0o755)
    modules = usr / "lib" / "modules" / KERNEL
    (modules / "vmlinuz").write_text(f"kernel {KERNEL}\n")
    (modules / "initramfs.img").write_text("initramfs\n")
    if devicetree is not None:
        (modules / "devicetree").write_bytes(devicetree)
    for name, blob in (dtbs or {}).items():
        (modules / "dtb" / name).parent.mkdir(parents=True, exist_ok=True)
        (modules / "dtb" / name).write_bytes(blob)
    os_release = f'PRETTY_NAME="afield test image {version}"\nID=debian\nVERSION_ID="12"\n'
    (usr / "lib" / "os-release").write_text(os_release)
    (usr / "etc" / "os-release").write_text(os_release)
    (usr / "etc" / "image-version").write_text(f"{version}\n")
    for name, content in (etc or {}).items():
        path = usr / "etc" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    check = usr / "lib" / "greenboot" / "check" / "required.d" / "10-image.sh"
    check.write_text(
        "#!/bin/sh\n"
        f"echo 'image {version} says {'healthy' if healthy else 'broken'}'\n"
        f"exit {0 if healthy else 1}\n"
    )
    check.chmod(0o755)
    return root


def commit_image(
    repo_dir: Path,
    work: Path,
    *,
    version: str,
    healthy: bool = True,
    image: str = "gateway",
    arch: str = "x86_64",
    kernel: str | None = KERNEL,
    etc: dict[str, str] | None = None,
    devicetree: bytes | None = None,
    dtbs: Mapping[str, bytes] | None = None,
) -> str:
    """Build and commit a test image into the afield repository ``repo_dir``; its checksum.

    ``devicetree`` and ``dtbs`` are as in :func:`build_tree`.
    """
    tree = build_tree(
        work / f"tree-{version}-{healthy}",
        version=version,
        healthy=healthy,
        etc=etc,
        devicetree=devicetree,
        dtbs=dtbs,
    )
    if kernel is None:
        shutil.rmtree(tree / "usr" / "lib" / "modules")
    repo = open_repository(repo_dir, create=True)
    metadata: dict[str, object] = {
        "version": version,
        "afield.image": image,
        "afield.arch": arch,
        "afield.kargs": ["console=ttyS0,115200"],
        "afield.packages": [f"test-image={version}"],
    }
    if kernel is not None:
        metadata["ostree.linux"] = kernel
        metadata["ostree.bootable"] = True
    return repo.commit_tree(
        tree,
        subject=f"{image} {version}",
        metadata=metadata,
        timestamp=1767225600,
        ref=f"afield/{image}/{arch}/{'stable' if healthy else 'broken'}-{version}",
    )
