"""OSTree sysroots through libostree: what ``ostree admin`` does, as plain Python values.

A sysroot is a device's whole disk as OSTree sees it: ``ostree/repo`` (a bare repository),
``ostree/deploy/<os>/deploy/<checksum>.<serial>`` (checked-out deployments, each with its own
merged ``/etc``), ``ostree/deploy/<os>/var`` (state shared by all deployments of that OS) and
``boot/loader/entries/*.conf`` (one Boot Loader Specification entry per deployment, the default
first). Writing the list of deployments is atomic: OSTree swaps ``boot/loader`` with a symlink.

What it leaves to others: which deployment should be default and when (``afield.device``), the
bootloader configuration (afield generates GRUB's from the BLS entries, so OSTree is told to
manage no bootloader).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from afield.errors import RepositoryError
from afield.ostree._gi import Gio, GLib, OSTree
from afield.ostree._repo import Repo

__all__ = ["Deployment", "Sysroot"]

# Deployments in a test or simulator directory must stay deletable: without this, libostree
# marks each deployment root immutable (chattr +i), as it does on a real device.
os.environ.setdefault("OSTREE_SYSROOT_DEBUG", "mutable-deployments")


@dataclass(frozen=True)
class Deployment:
    """One deployment of a commit in a sysroot.

    Attributes:
        osname: the stateroot (OS name) it belongs to.
        checksum: the commit it is a checkout of.
        serial: tells apart deployments of the same commit.
        index: its position in the sysroot's list; 0 is the default.
        bootcsum: checksum of its kernel and initramfs (names its /boot directory).
        path: its root directory on disk.
        kargs: its kernel arguments.
    """

    osname: str
    checksum: str
    serial: int
    index: int
    bootcsum: str
    path: Path
    kargs: tuple[str, ...]
    handle: Any = field(default=None, compare=False, repr=False)

    @property
    def name(self) -> str:
        """``<checksum>.<serial>``, the deployment directory's name."""
        return f"{self.checksum}.{self.serial}"


@contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send what libostree prints (e.g. "Freed objects: ...") to stderr, keeping stdout for
    the caller's own output, such as ``--json``."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _error(what: str, e: GLib.Error) -> RepositoryError:
    return RepositoryError(f"{what}: {e.message}")


class Sysroot:
    """An OSTree sysroot directory (a device's root filesystem, or a simulated one)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sysroot = OSTree.Sysroot.new(Gio.File.new_for_path(str(path)))

    @classmethod
    def init(cls, path: Path, osname: str) -> Sysroot:
        """Lay out an empty sysroot with stateroot ``osname`` (idempotent)."""
        path.mkdir(parents=True, exist_ok=True)
        sysroot = cls(path)
        try:
            sysroot._sysroot.ensure_initialized(None)
            sysroot._sysroot.load(None)
            if not (path / "ostree" / "deploy" / osname).is_dir():
                sysroot._sysroot.init_osname(osname, None)
            repo = sysroot._sysroot.get_repo(None)[1]
            config = repo.copy_config()
            # afield writes grub.cfg itself from the BLS entries (Debian's GRUB has no blscfg).
            config.set_string("sysroot", "bootloader", "none")
            repo.write_config(config)
        except GLib.Error as e:
            raise _error(f"{path}: cannot initialise sysroot", e) from e
        return sysroot

    def load(self) -> None:
        """(Re)read the sysroot's state from disk."""
        try:
            self._sysroot.load(None)
        except GLib.Error as e:
            raise _error(f"{self.path}: cannot load sysroot", e) from e

    def repo(self) -> Repo:
        """The sysroot's own repository (``ostree/repo``)."""
        return Repo.open(self.path / "ostree" / "repo")

    def deployments(self) -> list[Deployment]:
        """All deployments, the default first."""
        self.load()
        result: list[Deployment] = []
        for d in self._sysroot.get_deployments():
            path = self.path / self._sysroot.get_deployment_dirpath(d)
            bootconfig = d.get_bootconfig()
            options = bootconfig.get("options") if bootconfig is not None else ""
            result.append(
                Deployment(
                    osname=d.get_osname(),
                    checksum=d.get_csum(),
                    serial=d.get_deployserial(),
                    index=d.get_index(),
                    bootcsum=d.get_bootcsum(),
                    path=path,
                    kargs=tuple((options or "").split()),
                    handle=d,
                )
            )
        return result

    def booted(self) -> Deployment | None:
        """The deployment the running system booted, on a real OSTree-booted machine."""
        self.load()
        handle = self._sysroot.get_booted_deployment()
        if handle is None:
            return None
        return next((d for d in self.deployments() if d.handle.equal(handle)), None)

    def pull(self, source: Repo, checksum: str) -> None:
        """Copy commit ``checksum`` from ``source`` into the sysroot's repository."""
        self.repo().pull_local(source, checksum)

    def deploy(
        self,
        osname: str,
        checksum: str,
        *,
        merge: Deployment | None,
        kargs: Sequence[str],
    ) -> Deployment:
        """Check out ``checksum`` as a new deployment (not yet in the boot list).

        ``/etc`` is merged three-way from ``merge`` (the running deployment): the new commit's
        defaults, with the device's local changes applied on top.
        """
        self.load()
        try:
            _, new = self._sysroot.deploy_tree(
                osname,
                checksum,
                None,
                merge.handle if merge is not None else None,
                list(kargs),
                None,
            )
        except GLib.Error as e:
            raise _error(f"{self.path}: cannot deploy {checksum}", e) from e
        path = self.path / self._sysroot.get_deployment_dirpath(new)
        return Deployment(
            osname=osname,
            checksum=new.get_csum(),
            serial=new.get_deployserial(),
            index=-1,
            bootcsum=new.get_bootcsum(),
            path=path,
            kargs=tuple(kargs),
            handle=new,
        )

    def write_deployments(self, deployments: Sequence[Deployment]) -> None:
        """Make ``deployments`` the boot list, in this order (the first is the default).

        Atomic: a power cut leaves either the old or the new list. Deployments left out stay on
        disk (with their ``/boot`` links) until :meth:`cleanup`, so a bootloader configuration
        written for the old list keeps working until the new one has been written.
        """
        try:
            # Deployments are matched by (os, checksum, serial): handles from an earlier load of
            # this or another Sysroot object are fine, but the sysroot itself must be loaded.
            self._sysroot.load(None)
            options = OSTree.SysrootWriteDeploymentsOpts()
            options.do_postclean = False
            self._sysroot.write_deployments_with_options(
                [d.handle for d in deployments], options, None
            )
        except GLib.Error as e:
            raise _error(f"{self.path}: cannot write deployments", e) from e
        self.load()

    def cleanup(self) -> None:
        """Remove deployments, boot directories and objects nothing refers to any more."""
        try:
            with _stdout_to_stderr():
                self._sysroot.cleanup(None)
        except GLib.Error as e:
            raise _error(f"{self.path}: cannot clean up", e) from e
