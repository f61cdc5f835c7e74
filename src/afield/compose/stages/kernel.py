"""Stage afield.kernel: put the kernel and an OSTree-capable initramfs where OSTree looks.

OSTree finds a commit's kernel at ``/usr/lib/modules/$kver/vmlinuz`` and its initramfs at
``/usr/lib/modules/$kver/initramfs.img``. This stage copies the kernel there and builds the
initramfs with dracut (generic, not host-only, reproducible, with Debian's ``ostree`` dracut module
so ``ostree-prepare-root`` runs at boot). Kernel arguments are not baked in here: they travel in the
commit metadata and are applied at deployment.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from afield.compose._tree import chroot
from afield.compose.pipeline import Facts, StageContext
from afield.errors import StageError

NAME = "afield.kernel"
CHECKPOINT = True


def kernel_version(ctx: StageContext) -> str:
    """The single kernel version installed in the tree (one directory in /usr/lib/modules)."""
    modules = ctx.tree / "usr" / "lib" / "modules"
    versions = sorted(p.name for p in modules.iterdir() if p.is_dir()) if modules.is_dir() else []
    if len(versions) != 1:
        found = ", ".join(versions) or "none"
        raise StageError(
            NAME,
            f"an image needs exactly one kernel in /usr/lib/modules, found: {found} "
            "(set customizations.kernel.name to one kernel package)",
            user_error=True,
        )
    return versions[0]


def run(ctx: StageContext, options: Mapping[str, Any]) -> Facts:
    """Place vmlinuz and build initramfs.img; facts ``kernel`` (the version)."""
    kver = kernel_version(ctx)
    target = ctx.tree / "usr" / "lib" / "modules" / kver
    vmlinuz = ctx.tree / "boot" / f"vmlinuz-{kver}"
    if not vmlinuz.is_file() and not (target / "vmlinuz").is_file():
        raise StageError(NAME, f"kernel image /boot/vmlinuz-{kver} is missing from the tree")
    if vmlinuz.is_file():
        (target / "vmlinuz").write_bytes(vmlinuz.read_bytes())
        (target / "vmlinuz").chmod(0o644)
    modules = " ".join(options["dracut_modules"])
    chroot(
        ctx.tree,
        [
            "dracut",
            "--force",
            "--no-hostonly",
            "--reproducible",
            "--kver",
            kver,
            "--add",
            modules,
            f"/usr/lib/modules/{kver}/initramfs.img",
        ],
        log=ctx.log,
        env={"SOURCE_DATE_EPOCH": str(options["source_date_epoch"])},
    )
    # What OSTree's own layout keeps in /boot is generated at deployment; drop the copies.
    for name in ("vmlinuz", "initrd.img", "System.map", "config"):
        for stale in ctx.tree.joinpath("boot").glob(f"{name}-{kver}"):
            stale.unlink()
    for link in ("vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old"):
        for base in (ctx.tree, ctx.tree / "boot"):
            path = base / link
            if path.is_symlink():
                path.unlink()
    return {"kernel": kver}
