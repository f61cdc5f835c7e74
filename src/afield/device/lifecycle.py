"""A device's update lifecycle on its sysroot: init, factory install, stage, rollback, status.

The order of writes is what keeps a device bootable through a power cut at any point:

- staging arms the boot counter *before* the new deployment becomes default, so whatever boots
  next either is the old default (armed counter, healthy: cleared) or the new one under the
  counter (unhealthy: the firmware falls back after the attempts run out);
- the deployment list is swapped atomically by libostree; grub.cfg is regenerated after it and
  replaced atomically; the journal is appended with one fsync'd write per event.

What it leaves to others: the boot decision (``afield.device.boot``), health checks
(``afield.device.health``), the boot sequence (``afield.device.bootseq``).
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from afield.device import fault
from afield.device.boot import bls, counter, grubcfg, grubenv
from afield.device.health import load_config
from afield.device.state import DeviceState, atomic_write
from afield.errors import DeviceError, RepositoryError
from afield.image import image_info, open_repository
from afield.ostree import Deployment, Repo, Sysroot

__all__ = ["Device"]

_ARCH = {"x86_64": "x86_64", "aarch64": "aarch64", "amd64": "x86_64", "arm64": "aarch64"}


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class Device:
    """A device's sysroot directory and the stateroot (OS name) afield manages in it."""

    sysroot_path: Path
    osname: str

    def __post_init__(self) -> None:
        # Absolute, always: checks run with / as working directory (and bubblewrap binds it).
        object.__setattr__(self, "sysroot_path", self.sysroot_path.absolute())

    # -- paths ----------------------------------------------------------------------------------

    @functools.cached_property
    def sysroot(self) -> Sysroot:
        """The OSTree sysroot."""
        return Sysroot(self.sysroot_path)

    @property
    def state(self) -> DeviceState:
        """The stateroot's ``/var/lib/afield``."""
        return DeviceState(self.sysroot_path / "ostree" / "deploy" / self.osname / "var/lib/afield")

    @property
    def grubenv_path(self) -> Path:
        """The GRUB environment block."""
        return self.sysroot_path / "boot" / "grub2" / "grubenv"

    @property
    def grubcfg_path(self) -> Path:
        """The generated GRUB configuration."""
        return self.sysroot_path / "boot" / "grub2" / "grub.cfg"

    @property
    def entries_dir(self) -> Path:
        """OSTree's Boot Loader Specification entries."""
        return self.sysroot_path / "boot" / "loader" / "entries"

    # -- opening --------------------------------------------------------------------------------

    @classmethod
    def open(cls, sysroot_path: Path) -> Device:
        """The device laid out at ``sysroot_path`` by :meth:`init`."""
        deploy = sysroot_path / "ostree" / "deploy"
        osnames = sorted(p.name for p in deploy.iterdir()) if deploy.is_dir() else []
        if len(osnames) != 1:
            raise DeviceError(
                f"{sysroot_path}: not an afield device sysroot "
                f"(expected one OS under ostree/deploy, found {len(osnames)}); "
                "run `afield device init` first"
            )
        return cls(sysroot_path, osnames[0])

    @classmethod
    def init(
        cls,
        sysroot_path: Path,
        osname: str,
        *,
        server: str | None = None,
        trust_root: Path | None = None,
    ) -> Device:
        """Lay out an empty sysroot, an empty grubenv and the agent's factory config."""
        Sysroot.init(sysroot_path, osname)
        device = cls(sysroot_path, osname)
        device.grubenv_path.parent.mkdir(parents=True, exist_ok=True)
        if not device.grubenv_path.exists():
            grubenv.write_grubenv(device.grubenv_path, {})
        state = device.state
        state.ensure()
        lines = [f"os = {_toml_string(osname)}\n"]
        if server:
            lines.append(f"server = {_toml_string(server)}\n")
        if trust_root is not None:
            try:
                data = trust_root.read_bytes()
            except OSError as e:
                raise DeviceError(f"{trust_root}: cannot read trust root: {e.strerror}") from e
            (state.directory / "trust").mkdir(exist_ok=True)
            atomic_write(state.directory / "trust" / "root.json", data, point="trust-root")
            lines.append('trust_root = "/var/lib/afield/trust/root.json"\n')
        atomic_write(state.config_file, "".join(lines).encode(), point="agent-config")
        state.record("initialized", os=osname, server=server)
        return device

    # -- reading --------------------------------------------------------------------------------

    def deployments(self) -> list[Deployment]:
        """The deployments, default first."""
        return [d for d in self.sysroot.deployments() if d.osname == self.osname]

    def booted(self) -> Deployment | None:
        """The deployment that booted last (per the boot record), if it still exists."""
        name = self.state.load().get("booted")
        return next((d for d in self.deployments() if d.name == name), None)

    def read_env(self) -> dict[str, str]:
        """The grubenv; DeviceError (from grubenv) if it is corrupt."""
        return grubenv.read_grubenv(self.grubenv_path)

    # -- writing --------------------------------------------------------------------------------

    def _check_commit(
        self, repo: Repo, checksum: str, *, arch: str | None = None
    ) -> dict[str, Any]:
        try:
            resolved = repo.resolve(checksum)
            info = image_info(repo, resolved)
        except RepositoryError as e:
            raise DeviceError(f"cannot stage {checksum}: {e.message}", user_error=True) from e
        if not info.kernel:
            raise DeviceError(
                f"cannot stage {resolved}: not bootable (the commit records no kernel; "
                "compose it with afield)",
                user_error=True,
            )
        if arch is None:
            arch = _ARCH.get(platform.machine(), platform.machine())
        if info.arch and info.arch != arch:
            raise DeviceError(
                f"cannot stage {resolved}: built for {info.arch}, device is {arch}",
                user_error=True,
            )
        if info.image and info.image != self.osname:
            raise DeviceError(
                f"cannot stage {resolved}: image {info.image!r} is for another OS "
                f"than this device's {self.osname!r}",
                user_error=True,
            )
        # The device's own arguments (its root filesystem, from the disk it was installed on)
        # come first and stay the same across updates; the image's follow.
        local = [str(k) for k in self.state.load().get("local_kargs", [])]
        return {
            "checksum": resolved,
            "version": info.version,
            "kargs": [*local, *info.kernel_args],
        }

    def version_of(self, deployment: Deployment) -> str | None:
        """The image version of a deployment's commit."""
        try:
            return self.sysroot.repo().commit_info(deployment.checksum).version
        except RepositoryError:
            return None

    def _write_grub_cfg(self, *, fallback_index: int) -> None:
        """Regenerate grub.cfg from OSTree's entries; fallback 1 while the default is on trial."""
        entries = bls.load_entries(self.entries_dir)
        text = grubcfg.render_grub_cfg(entries, fallback_index=fallback_index)
        atomic_write(self.grubcfg_path, text.encode(), point="grub.cfg")
        # Only now may old deployments and their /boot links go: grub.cfg no longer names them.
        self.sysroot.cleanup()
        fault.point("cleanup")

    def install(
        self,
        repo_dir: Path,
        commit: str,
        *,
        arch: str | None = None,
        local_kargs: Sequence[str] = (),
    ) -> Deployment:
        """Factory install: deploy ``commit`` as the only deployment.

        Args:
            repo_dir: The afield repository holding ``commit``.
            commit: A ref or checksum.
            arch: The device's architecture, when it is not this machine's (a disk image
                built for another one).
            local_kargs: Kernel arguments of this device rather than of an image, such as
                ``root=UUID=...``; kept in the device state and put first on every deployment.
        """
        repo = open_repository(repo_dir)
        self.state.update(local_kargs=list(local_kargs))
        found = self._check_commit(repo, commit, arch=arch)
        sysroot = self.sysroot
        sysroot.pull(repo, found["checksum"])
        new = sysroot.deploy(self.osname, found["checksum"], merge=None, kargs=found["kargs"])
        fault.point("install:deployed")
        sysroot.write_deployments([new])
        fault.point("install:written")
        self._write_grub_cfg(fallback_index=0)
        self.write_env({counter.SUCCESS: "1"}, point="install")
        installed = self.deployments()[0]
        # The factory image is the first known-good deployment.
        self.state.update(known_good=installed.name)
        self.state.record("installed", checksum=found["checksum"], version=found["version"])
        return installed

    def stage(self, repo_dir: Path, commit: str) -> Deployment:
        """Stage ``commit`` as the new default next to the running deployment; arm the counter."""
        repo = open_repository(repo_dir)
        found = self._check_commit(repo, commit)
        return self._stage(found, pull=lambda: self.sysroot.pull(repo, found["checksum"]))

    def stage_pulled(self, checksum: str, *, version: str | None = None) -> Deployment:
        """Stage a commit already pulled into the sysroot's repository (by the update agent).

        The same checks and order of writes as :meth:`stage`; ``version`` (the signed release
        version) is recorded instead of the commit's own ``version`` metadata when given.
        """
        found = self._check_commit(self.sysroot.repo(), checksum)
        if version is not None:
            found["version"] = version
        return self._stage(found, pull=None)

    def _stage(self, found: dict[str, Any], *, pull: Callable[[], None] | None) -> Deployment:
        current = self.booted() or next(iter(self.deployments()), None)
        if current is None:
            raise DeviceError(
                f"{self.sysroot_path}: nothing installed; use `afield device install`"
            )
        if current.checksum == found["checksum"]:
            raise DeviceError(
                f"{found['checksum']} is already the running deployment", user_error=True
            )
        sysroot = self.sysroot
        if pull is not None:
            pull()
        fault.point("stage:pulled")
        new = sysroot.deploy(self.osname, found["checksum"], merge=current, kargs=found["kargs"])
        fault.point("stage:deployed")
        attempts = load_config(current.path).max_boot_attempts
        if self.state.load().get("known_good") is None:
            self.state.update(known_good=current.name)
        # Arm first: whatever boots after a power cut from here on is under the counter.
        self.write_env(counter.arm(self._env_or_empty(), attempts), point="arm")
        fault.point("stage:armed")
        sysroot.write_deployments([new, current])
        fault.point("stage:written")
        self._write_grub_cfg(fallback_index=1)
        self.state.record(
            "staged", checksum=found["checksum"], version=found["version"], attempts=attempts
        )
        return self.deployments()[0]

    def rollback(self) -> Deployment:
        """Make the previous deployment the default (manual rollback)."""
        deployments = self.deployments()
        if len(deployments) < 2:
            raise DeviceError(f"{self.sysroot_path}: no previous deployment to roll back to")
        order = [deployments[1], deployments[0], *deployments[2:]]
        self.state.update(known_good=order[0].name)
        self.sysroot.write_deployments(order)
        fault.point("rollback:written")
        self._write_grub_cfg(fallback_index=0)
        env = {k: v for k, v in self._env_or_empty().items() if k != counter.COUNTER}
        self.write_env({**env, counter.SUCCESS: "1"}, point="rollback")
        fault.point("rollback:env")
        self.state.record(
            "rolled back", reason="manual", to=order[0].checksum, **{"from": order[1].checksum}
        )
        return self.deployments()[0]

    def make_default(self, deployment: Deployment) -> None:
        """Reorder so ``deployment`` is the default (finalizing an automatic rollback)."""
        deployments = self.deployments()
        order = [d for d in deployments if d.name == deployment.name]
        order += [d for d in deployments if d.name != deployment.name]
        if deployments and deployments[0].name != deployment.name:
            self.sysroot.write_deployments(order)
            fault.point("finalize:written")
        self._write_grub_cfg(fallback_index=0)

    def write_env(self, env: dict[str, str], *, point: str) -> None:
        """Replace the grubenv atomically, with fault points around the write."""
        fault.point(f"grubenv:{point}:before")
        grubenv.write_grubenv(self.grubenv_path, env)
        fault.point(f"grubenv:{point}:after")

    def _env_or_empty(self) -> dict[str, str]:
        try:
            return self.read_env()
        except DeviceError:
            return {}
