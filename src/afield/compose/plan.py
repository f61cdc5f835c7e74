"""Turn a blueprint into the list of compose stages and their options.

Everything that changes a stage's output is in its options (so in its id); nothing else is. The
order puts the expensive, rarely changing stages first (packages, kernel, baked container images)
so that editing files, users, services or manifests reuses their checkpoints.

Planning reads the inputs that live outside the blueprint and pins them: baked manifests are
loaded and checked here (a manifest podman cannot play fails the compose at once, not after
mmdebstrap), device trees shipped with the blueprint are read into the options, archives are
hashed and registry tags resolved to digests. The containers, devicetree and manifests stages
are planned only for blueprints that have them.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Any

from afield.blueprint import Blueprint
from afield.compose._sources import debian_mirrors
from afield.compose.pipeline import StageSpec
from afield.compose.stages import containers, device_agent, devicetree, manifests
from afield.errors import ComposeError

__all__ = ["BASE_PACKAGES", "Target", "host_target", "image_ref", "kernel_package", "plan"]

# What every afield image needs to boot from an OSTree deployment under systemd.
BASE_PACKAGES = ("systemd", "systemd-sysv", "udev", "dbus", "dracut", "ostree", "ostree-boot")
DRACUT_MODULES = ("ostree", "systemd")
# Per architecture: what the image carries for its boot loader. Disks for arm64 are built with
# the image's own GRUB modules (Debian ships grub-efi-arm64-bin for arm64 only, so an x86_64
# builder has none); x86_64 disks use the builder's GRUB.
_BOOT_PACKAGES = {"amd64": (), "arm64": ("grub-efi-arm64-bin",)}
_UNIT_SUFFIXES = (
    ".service",
    ".socket",
    ".timer",
    ".target",
    ".path",
    ".mount",
    ".automount",
    ".swap",
    ".slice",
)
_DEBIAN_SUITES = {"debian-12": "bookworm"}
# Debian architecture name -> OSTree/uname architecture name.
_ARCHES = {"amd64": "x86_64", "arm64": "aarch64"}


@dataclass(frozen=True)
class Target:
    """Where an image is built for: the Debian suite and architecture, and the apt sources."""

    suite: str
    debian_arch: str
    mirrors: tuple[str, ...]

    @property
    def arch(self) -> str:
        """The OSTree architecture name used in refs (x86_64, aarch64)."""
        return _ARCHES[self.debian_arch]


def host_target(distro: str, arch: str | None = None) -> Target:
    """Build for ``arch`` (default: the builder's own) from the builder's Debian apt sources.

    ``arch`` is an OSTree (``x86_64``, ``aarch64``) or Debian (``amd64``, ``arm64``) name. A
    foreign architecture runs its package scripts through qemu-user-static (binfmt_misc).
    """
    suite = _DEBIAN_SUITES.get(distro)
    if suite is None:
        raise ComposeError(f"distro {distro!r} is not supported; supported: debian-12")
    by_machine = {v: k for k, v in _ARCHES.items()}
    wanted = arch or platform.machine()
    debian_arch = by_machine.get(wanted) or (wanted if wanted in _ARCHES else None)
    if debian_arch is None:
        raise ComposeError(
            f"cannot compose for {wanted}; supported: x86_64 (amd64), aarch64 (arm64)",
            user_error=arch is not None,
        )
    return Target(suite=suite, debian_arch=debian_arch, mirrors=tuple(debian_mirrors(suite)))


def kernel_package(blueprint: Blueprint, target: Target) -> str:
    """The blueprint's kernel package, or Debian's generic kernel of the target architecture."""
    kernel = blueprint.customizations.kernel
    if kernel is None or not kernel.name:
        return f"linux-image-{target.debian_arch}"
    for other in _ARCHES:
        if other != target.debian_arch and kernel.name.endswith(f"-{other}"):
            raise ComposeError(
                f"customizations.kernel.name {kernel.name!r} is an {other} kernel; "
                f"the image is built for {target.debian_arch}",
                user_error=True,
            )
    return kernel.name


def image_ref(blueprint: Blueprint, target: Target) -> str:
    """The OSTree ref of an image: ``afield/<name>/<arch>/<stream>``."""
    return f"afield/{blueprint.name}/{target.arch}/{blueprint.stream}"


def _unit(name: str) -> str:
    return name if name.endswith(_UNIT_SUFFIXES) else f"{name}.service"


def _packages(blueprint: Blueprint, target: Target) -> tuple[list[str], dict[str, str]]:
    custom = blueprint.customizations
    names = [
        *BASE_PACKAGES,
        *_BOOT_PACKAGES[target.debian_arch],
        *device_agent.PACKAGES,
        kernel_package(blueprint, target),
    ]
    if blueprint.containers or custom.afield.manifests:
        names += containers.PACKAGES
    if custom.locale is not None and custom.locale.languages:
        names.append("locales")
    if custom.timezone is not None:
        if custom.timezone.timezone:
            names.append("tzdata")
        if custom.timezone.ntpservers:
            names.append("systemd-timesyncd")
    constraints: dict[str, str] = {}
    for package in blueprint.packages:
        names.append(package.name)
        if package.version is not None:
            constraints[package.name] = package.version
    return sorted(set(names)), dict(sorted(constraints.items()))


def _dump(model: Any, *fields: str) -> dict[str, Any]:
    return {f: getattr(model, f) for f in fields}


def plan(blueprint: Blueprint, target: Target, *, ref: str | None = None) -> list[StageSpec]:
    """The stages that compose ``blueprint`` for ``target``, with the ref the commit lands on."""
    custom = blueprint.customizations
    epoch = blueprint.source_date_epoch
    names, constraints = _packages(blueprint, target)
    # Local checks first: a bad manifest fails before a registry is asked anything.
    baked_manifests = manifests.plan_options(blueprint) if custom.afield.manifests else None
    devicetree_options = devicetree.plan_options(blueprint)  # reads the blueprint's own DTBs
    baked_images = (
        containers.plan_options(blueprint, architecture=target.debian_arch, source_date_epoch=epoch)
        if blueprint.containers
        else None
    )
    bootstrap: dict[str, Any] = {
        "suite": target.suite,
        "architecture": target.debian_arch,
        "variant": "minbase",
        "mirrors": list(target.mirrors),
        "packages": names,
        "source_date_epoch": epoch,
    }
    if constraints:
        bootstrap["constraints"] = constraints
    users = {
        "groups": [{"name": g.name, "gid": g.gid} for g in custom.group],
        "users": [
            {
                **_dump(u, "name", "description", "password", "key", "home", "shell", "uid"),
                "gid": u.gid,
                "groups": list(u.groups),
            }
            for u in custom.user
        ],
        "sshkeys": [{"user": k.user, "key": k.key} for k in custom.sshkey],
        "source_date_epoch": epoch,
    }
    files = {
        "directories": [
            _dump(d, "path", "mode", "user", "group", "ensure_parents") for d in custom.directories
        ],
        "files": [
            _dump(f, "path", "mode", "user", "group", "data", "ensure_parents")
            for f in custom.files
        ],
    }
    services = custom.services
    specs = [
        StageSpec("afield.debian.bootstrap", bootstrap),
        StageSpec(
            "afield.kernel",
            {"dracut_modules": list(DRACUT_MODULES), "source_date_epoch": epoch},
        ),
        *([StageSpec(containers.NAME, baked_images)] if baked_images else []),
        StageSpec("afield.users", users),
        StageSpec("afield.files", files),
        # After the files: an absolute device tree name is read from the finished tree.
        *([StageSpec(devicetree.NAME, devicetree_options)] if devicetree_options else []),
        StageSpec(
            "afield.services",
            {
                action: [_unit(u) for u in getattr(services, action)] if services else []
                for action in ("enabled", "disabled", "masked")
            },
        ),
        StageSpec("afield.hostname", {"hostname": custom.hostname or "localhost"}),
        StageSpec(
            "afield.timezone",
            {
                "timezone": custom.timezone.timezone if custom.timezone else None,
                "ntpservers": list(custom.timezone.ntpservers) if custom.timezone else [],
            },
        ),
        StageSpec(
            "afield.locale",
            {
                "languages": list(custom.locale.languages) if custom.locale else [],
                "keyboard": custom.locale.keyboard if custom.locale else None,
            },
        ),
        StageSpec(
            "afield.device.agent",
            device_agent.plan_options(
                suite=target.suite, architecture=target.debian_arch, source_date_epoch=epoch
            ),
        ),
        # After the agent: its stage installs into /usr/lib/afield, which must not exist yet.
        *([StageSpec(manifests.NAME, baked_manifests)] if baked_manifests else []),
        StageSpec("afield.ostree.prepare", {}),
        StageSpec(
            "afield.ostree.commit",
            {
                "ref": ref or image_ref(blueprint, target),
                "image": blueprint.name,
                "arch": target.arch,
                "version": blueprint.version,
                "blueprint_sha256": blueprint.sha256,
                "kernel_args": list(blueprint.kernel_args),
                "source_date_epoch": epoch,
            },
        ),
    ]
    return specs
