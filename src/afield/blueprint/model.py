"""Typed, immutable models of an afield blueprint.

A blueprint uses osbuild's (Image Builder's) TOML format: the same keys mean the same things, but
afield accepts only the keys it implements and says so about the rest. The models are frozen
pydantic models with ``extra="forbid"`` and strict scalar types (a string is never coerced to a
number); arrays become tuples. Field values are checked by ``_checks``; checks that relate several
values (duplicate names, references between users, groups, keys and files) run here, in
model validators, so every problem is reported at once.

Reading TOML and turning pydantic's errors into :class:`~afield.errors.Problem` objects is left to
``_parse``; what the values mean for an OS tree is left to ``afield.compose``.
"""

from __future__ import annotations

import os
import posixpath
import re
import shlex
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from afield.blueprint import _checks

__all__ = [
    "AfieldOptions",
    "Blueprint",
    "Container",
    "Customizations",
    "DeviceTree",
    "Directory",
    "File",
    "Group",
    "Kernel",
    "Locale",
    "ManifestDirectory",
    "Package",
    "Services",
    "SshKey",
    "Timezone",
    "User",
]

DEFAULT_KERNEL = "linux-image-amd64"
DEFAULT_STREAM = "stable"

ImageName = Annotated[StrictStr, AfterValidator(_checks.image_name)]
Version = Annotated[StrictStr, AfterValidator(_checks.version)]
Distro = Annotated[StrictStr, AfterValidator(_checks.distro)]
PackageName = Annotated[StrictStr, AfterValidator(_checks.package_name)]
PackageVersion = Annotated[StrictStr, AfterValidator(_checks.package_version)]
Hostname = Annotated[StrictStr, AfterValidator(_checks.hostname)]
Server = Annotated[StrictStr, AfterValidator(_checks.server)]
Account = Annotated[StrictStr, AfterValidator(_checks.account)]
AccountId = Annotated[StrictInt, AfterValidator(_checks.account_id)]
Owner = Annotated[str | int, PlainValidator(_checks.owner)]
Password = Annotated[StrictStr, AfterValidator(_checks.password)]
SshPublicKey = Annotated[StrictStr, AfterValidator(_checks.ssh_key)]
Gecos = Annotated[StrictStr, AfterValidator(_checks.gecos)]
AbsolutePath = Annotated[StrictStr, AfterValidator(_checks.absolute_path)]
CustomPath = Annotated[StrictStr, AfterValidator(_checks.custom_path)]
Mode = Annotated[StrictStr, AfterValidator(_checks.mode)]
KernelAppend = Annotated[StrictStr, AfterValidator(_checks.kernel_append)]
Unit = Annotated[StrictStr, AfterValidator(_checks.unit)]
TimezoneName = Annotated[StrictStr, AfterValidator(_checks.timezone)]
LocaleName = Annotated[StrictStr, AfterValidator(_checks.locale)]
Keyboard = Annotated[StrictStr, AfterValidator(_checks.keyboard)]
Stream = Annotated[StrictStr, AfterValidator(_checks.stream)]
Epoch = Annotated[StrictInt, AfterValidator(_checks.epoch)]
ContainerSource = Annotated[StrictStr, AfterValidator(_checks.container_source)]
ContainerName = Annotated[StrictStr, AfterValidator(_checks.container_name)]
BuilderPath = Annotated[StrictStr, AfterValidator(_checks.builder_path)]
DnsLabel = Annotated[StrictStr, AfterValidator(_checks.dns_label)]
DtbName = Annotated[StrictStr, AfterValidator(_checks.dtb_name)]

Loc = tuple[str | int, ...]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Package(_Model):
    """A Debian package to install (``[[packages]]``).

    Attributes:
        name: the Debian package name.
        version: an exact Debian version (``1.2-3``), a glob (``2.9.*``), or None for the newest.
    """

    name: PackageName
    version: PackageVersion | None = None


class Kernel(_Model):
    """The kernel (``[customizations.kernel]``).

    Attributes:
        name: the Debian package of the kernel; None means ``linux-image-amd64``.
        append: extra kernel command-line arguments, split like a shell line.
    """

    name: PackageName | None = None
    append: KernelAppend | None = None


class SshKey(_Model):
    """An SSH public key authorized for a user (``[[customizations.sshkey]]``).

    Attributes:
        user: ``root`` or a user from ``[[customizations.user]]``.
        key: one OpenSSH public key line.
    """

    user: Account
    key: SshPublicKey


class User(_Model):
    """A user account to create or customize (``[[customizations.user]]``).

    Attributes:
        name: the login name.
        description: the GECOS field.
        password: a crypt(3) hash; plain text is refused.
        key: an OpenSSH public key authorized for this user.
        home: the home directory (absolute).
        shell: the login shell (absolute).
        groups: supplementary groups: standard Debian groups or ``[[customizations.group]]`` ones.
        uid: the user id, or None to let the system pick.
        gid: the primary group id, or None for the user's own group.
    """

    name: Account
    description: Gecos | None = None
    password: Password | None = None
    key: SshPublicKey | None = None
    home: AbsolutePath | None = None
    shell: AbsolutePath | None = None
    groups: tuple[Account, ...] = ()
    uid: AccountId | None = None
    gid: AccountId | None = None


class Group(_Model):
    """A group to create (``[[customizations.group]]``).

    Attributes:
        name: the group name.
        gid: the group id, or None to let the system pick.
    """

    name: Account
    gid: AccountId | None = None


class Timezone(_Model):
    """Time settings (``[customizations.timezone]``).

    Attributes:
        timezone: a tz database name such as ``Europe/Berlin``; its existence is checked later.
        ntpservers: NTP servers (host names or IP addresses).
    """

    timezone: TimezoneName | None = None
    ntpservers: tuple[Server, ...] = ()


class Locale(_Model):
    """Locale settings (``[customizations.locale]``).

    Attributes:
        languages: locales to generate; the first is the default, e.g. ``en_US.UTF-8``.
        keyboard: the console keyboard layout, e.g. ``us``.
    """

    languages: tuple[LocaleName, ...] = ()
    keyboard: Keyboard | None = None


class Services(_Model):
    """systemd units to enable, disable or mask (``[customizations.services]``).

    Names without a unit-type suffix are stored with ``.service`` appended; a unit may appear in
    only one list.

    Attributes:
        enabled: units to enable.
        disabled: units to disable.
        masked: units to mask.
    """

    enabled: tuple[Unit, ...] = ()
    disabled: tuple[Unit, ...] = ()
    masked: tuple[Unit, ...] = ()

    @model_validator(mode="after")
    def _one_list_per_unit(self) -> Self:
        first: dict[str, str] = {}
        problems: list[tuple[Loc, str]] = []
        for kind in ("enabled", "disabled", "masked"):
            for index, unit in enumerate(getattr(self, kind)):
                other = first.setdefault(unit, kind)
                if other != kind:
                    problems.append(
                        (
                            (kind, index),
                            f"{unit} is also in customizations.services.{other}; "
                            "a unit may be in only one of enabled, disabled, masked",
                        )
                    )
        if problems:
            raise _checks.Problems(problems)
        return self


class Directory(_Model):
    """A directory to create (``[[customizations.directories]]``).

    Attributes:
        path: absolute, normalized, under /etc, /usr, /var or /opt.
        mode: octal permission string.
        user: owner name or uid; None means root.
        group: group name or gid; None means root.
        ensure_parents: create missing parent directories.
    """

    path: CustomPath
    mode: Mode = "0755"
    user: Owner | None = None
    group: Owner | None = None
    ensure_parents: StrictBool = False


class File(_Model):
    """A file to create (``[[customizations.files]]``).

    Attributes:
        path: absolute, normalized, under /etc, /usr, /var or /opt.
        mode: octal permission string.
        user: owner name or uid; None means root.
        group: group name or gid; None means root.
        data: the file's text content.
        ensure_parents: create missing parent directories.
    """

    path: CustomPath
    mode: Mode = "0644"
    user: Owner | None = None
    group: Owner | None = None
    data: StrictStr = ""
    ensure_parents: StrictBool = False


class Container(_Model):
    """A container image baked into the image's read-only container storage (``[[containers]]``).

    Attributes:
        source: a fully qualified registry reference (``registry.example/ns/app:1`` or
            ``...@sha256:...``), or ``oci-archive:PATH`` / ``docker-archive:PATH`` with ``PATH``
            relative to the blueprint's directory (see :meth:`Blueprint.resolve_path`).
        name: the name the image gets in the storage; None means the source's reference, which
            only registry sources have.
        tls_verify: verify the registry's TLS certificate (the TOML key is ``tls-verify``).
    """

    source: ContainerSource
    name: ContainerName | None = None
    tls_verify: StrictBool = Field(default=True, alias="tls-verify")

    @model_validator(mode="after")
    def _archives_are_named(self) -> Self:
        if self.transport != "docker" and self.name is None:
            raise _checks.Problems(
                [
                    (
                        ("name",),
                        f"required for an archive source ({self.transport}:PATH): the image's "
                        'local name, e.g. name = "localhost/app:1"',
                    )
                ]
            )
        return self

    @property
    def transport(self) -> Literal["docker", "oci-archive", "docker-archive"]:
        """``docker`` for a registry reference, else the archive's transport."""
        prefix = self.source.partition(":")[0]
        if prefix == "oci-archive":
            return "oci-archive"
        if prefix == "docker-archive":
            return "docker-archive"
        return "docker"

    @property
    def archive(self) -> str | None:
        """The archive's path as written in the blueprint, or None for a registry source."""
        return None if self.transport == "docker" else self.source.partition(":")[2]

    @property
    def local_name(self) -> str:
        """The name the image gets in the storage: ``name``, else the registry reference."""
        return self.name if self.name is not None else self.source


class ManifestDirectory(_Model):
    """A directory of Kubernetes manifests baked into the image
    (``[[customizations.afield.manifests]]``), played by podman on the device.

    Attributes:
        source: the directory on the builder, relative to the blueprint's directory.
        name: the directory's name under ``/usr/lib/afield/manifests.d/``; None means the
            source directory's own name, which must then be a DNS label.
    """

    source: BuilderPath
    name: DnsLabel | None = None

    @model_validator(mode="after")
    def _name_from_source(self) -> Self:
        if self.name is None:
            try:
                _checks.dns_label(self.default_name)
            except ValueError as e:
                raise _checks.Problems(
                    [
                        (
                            ("name",),
                            f"the directory name {self.default_name!r} cannot name the "
                            f"manifests ({e}); set name",
                        )
                    ]
                ) from None
        return self

    @property
    def default_name(self) -> str:
        """The last component of ``source``."""
        return posixpath.basename(posixpath.normpath(self.source))

    @property
    def local_name(self) -> str:
        """The name under ``/usr/lib/afield/manifests.d/``."""
        return self.name if self.name is not None else self.default_name


class DeviceTree(_Model):
    """Device tree blobs for boards that boot with one (``[customizations.afield.devicetree]``).

    Each name is a path relative to the kernel package's DTB directory
    (``/usr/lib/linux-image-$kver/`` in Debian), e.g. ``broadcom/bcm2711-rpi-4-b.dtb``; the
    absolute path of a file a package installs in the image (``[[customizations.files]]`` holds
    text, so it cannot place a blob); or, starting with ``./``, a file shipped with the blueprint,
    relative to its directory (:meth:`is_bundled`; only the syntax is checked here, the file is
    read when the compose is planned).
    They are installed under ``/usr/lib/modules/$kver/dtb/``, an absolute one under its base name
    and a ``./`` one without the ``./``, so two names that install to the same file are refused.

    Attributes:
        files: the device trees to install, at least one and at most
            :data:`~afield.blueprint._checks.MAX_DTBS`.
        default: one of ``files``: the device tree the boot loader hands to the kernel; None
            leaves the choice to the firmware.
    """

    files: tuple[DtbName, ...]
    default: DtbName | None = None

    @field_validator("files", mode="before")
    @classmethod
    def _count(cls, files: object) -> object:
        if isinstance(files, list | tuple) and not 1 <= len(files) <= _checks.MAX_DTBS:
            raise ValueError(f"expected 1 to {_checks.MAX_DTBS} device tree names")
        return files

    @field_validator("files")
    @classmethod
    def _each_target_once(cls, files: tuple[str, ...]) -> tuple[str, ...]:
        first: dict[str, int] = {}
        problems: list[tuple[Loc, str]] = []
        for index, name in enumerate(files):
            target = cls.installed_name(name)
            earlier = first.setdefault(target, index)
            if earlier == index:
                continue
            where = f"customizations.afield.devicetree.files[{earlier}]"
            if files[earlier] == name:
                problems.append(((index,), f"duplicate device tree {name!r}; see {where}"))
            else:
                problems.append(
                    (
                        (index,),
                        f"{name!r} would be installed as dtb/{target}, like {files[earlier]!r} "
                        f"({where}); an absolute path is installed under its base name, "
                        "a './' one without the './'",
                    )
                )
        if problems:
            raise _checks.Problems(problems)
        return files

    @model_validator(mode="after")
    def _default_is_listed(self) -> Self:
        if self.default is not None and self.default not in self.files:
            raise _checks.Problems(
                [
                    (
                        ("default",),
                        f"{self.default!r} is not in customizations.afield.devicetree.files; "
                        "the default must be one of the listed device trees",
                    )
                ]
            )
        return self

    @staticmethod
    def is_bundled(name: str) -> bool:
        """Whether ``name`` is a file shipped with the blueprint (``./board.dtb``)."""
        return name.startswith("./")

    @staticmethod
    def installed_name(name: str) -> str:
        """Where ``name`` goes under ``/usr/lib/modules/$kver/dtb/``: a relative name as it is,
        an absolute one under its base name, a ``./`` one without the ``./``."""
        if name.startswith("/"):
            return posixpath.basename(name)
        return name.removeprefix("./")


class AfieldOptions(_Model):
    """afield's own settings (``[customizations.afield]``); osbuild has no such table.

    Attributes:
        source_date_epoch: timestamp for reproducible commits; None defers to the environment.
        stream: the update stream, the last part of the OSTree ref.
        manifests: directories of Kubernetes manifests to bake into the image; names differ.
        devicetree: device tree blobs to install with the kernel; None for none.
    """

    source_date_epoch: Epoch | None = None
    stream: Stream = DEFAULT_STREAM
    manifests: tuple[ManifestDirectory, ...] = ()
    devicetree: DeviceTree | None = None

    @field_validator("manifests")
    @classmethod
    def _each_name_once(
        cls, manifests: tuple[ManifestDirectory, ...]
    ) -> tuple[ManifestDirectory, ...]:
        problems = _duplicates(
            [((i, "name"), m.local_name) for i, m in enumerate(manifests)],
            "manifests name",
            "customizations.afield.manifests",
        )
        if problems:
            raise _checks.Problems(problems)
        return manifests


class Customizations(_Model):
    """Everything under ``[customizations]``.

    Attributes:
        hostname: the static host name.
        kernel: kernel package and arguments.
        sshkey: SSH keys for existing users.
        user: users to create.
        group: groups to create.
        timezone: time zone and NTP servers.
        locale: languages and keyboard.
        services: units to enable, disable or mask.
        directories: directories to create.
        files: files to create.
        afield: afield's own settings.
    """

    hostname: Hostname | None = None
    kernel: Kernel | None = None
    sshkey: tuple[SshKey, ...] = ()
    user: tuple[User, ...] = ()
    group: tuple[Group, ...] = ()
    timezone: Timezone | None = None
    locale: Locale | None = None
    services: Services | None = None
    directories: tuple[Directory, ...] = ()
    files: tuple[File, ...] = ()
    afield: AfieldOptions = Field(default_factory=AfieldOptions)

    @model_validator(mode="after")
    def _cross_references(self) -> Self:
        problems = _accounts(self) + _paths(self)
        if problems:
            raise _checks.Problems(problems)
        return self


def _duplicates(
    items: list[tuple[Loc, object]], what: str, within: str = "customizations"
) -> list[tuple[Loc, str]]:
    """Report every value already seen at an earlier location (relative to ``within``)."""
    seen: dict[object, Loc] = {}
    problems: list[tuple[Loc, str]] = []
    for loc, value in items:
        if value is None:
            continue
        if value in seen:
            where = _where(seen[value], within)
            problems.append((loc, f"duplicate {what} {value!r}; already used by {where}"))
        else:
            seen[value] = loc
    return problems


def _where(loc: Loc, within: str = "customizations") -> str:
    """Render a location relative to the table ``within``."""
    text = within
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _accounts(c: Customizations) -> list[tuple[Loc, str]]:
    """Check users, groups and SSH keys: no duplicates, every name they refer to exists."""
    problems = _duplicates([(("user", i, "name"), u.name) for i, u in enumerate(c.user)], "name")
    problems += _duplicates([(("user", i, "uid"), u.uid) for i, u in enumerate(c.user)], "uid")
    problems += _duplicates([(("group", i, "name"), g.name) for i, g in enumerate(c.group)], "name")
    problems += _duplicates([(("group", i, "gid"), g.gid) for i, g in enumerate(c.group)], "gid")
    users = {u.name for u in c.user}
    groups = _checks.STANDARD_GROUPS | users | {g.name for g in c.group}
    standard = ", ".join(sorted(_checks.STANDARD_GROUPS))
    for i, user in enumerate(c.user):
        for k, group in enumerate(user.groups):
            if group not in groups:
                problems.append(
                    (
                        ("user", i, "groups", k),
                        f"unknown group {group!r}; expected a group from "
                        f"[[customizations.group]] or a standard Debian group ({standard})",
                    )
                )
    for i, sshkey in enumerate(c.sshkey):
        if sshkey.user != "root" and sshkey.user not in users:
            problems.append(
                (
                    ("sshkey", i, "user"),
                    f"unknown user {sshkey.user!r}; expected 'root' or a user from "
                    "[[customizations.user]]",
                )
            )
    return problems


def _paths(c: Customizations) -> list[tuple[Loc, str]]:
    """Check files and directories: each path once, owners that exist."""
    entries: list[tuple[Loc, Directory | File]] = [
        *((("directories", i), d) for i, d in enumerate(c.directories)),
        *((("files", i), f) for i, f in enumerate(c.files)),
    ]
    problems = _duplicates([((*loc, "path"), entry.path) for loc, entry in entries], "path")
    users = _checks.STANDARD_USERS | {u.name for u in c.user}
    groups = _checks.STANDARD_GROUPS | {u.name for u in c.user} | {g.name for g in c.group}
    for loc, entry in entries:
        if isinstance(entry.user, str) and entry.user not in users:
            problems.append(
                (
                    (*loc, "user"),
                    f"unknown user {entry.user!r}; expected 'root', a standard Debian user, "
                    "a user from [[customizations.user]] or a numeric uid",
                )
            )
        if isinstance(entry.group, str) and entry.group not in groups:
            problems.append(
                (
                    (*loc, "group"),
                    f"unknown group {entry.group!r}; expected a standard Debian group, "
                    "a group from [[customizations.group]] or a numeric gid",
                )
            )
    return problems


_EPOCH_ENV = re.compile(r"[0-9]{1,19}")


class Blueprint(_Model):
    """A validated blueprint: what image to compose and how to customize it.

    Attributes:
        name: the image name, used in OSTree refs.
        description: free text.
        version: ``X.Y.Z``; becomes the OSTree ``version`` metadata.
        distro: always ``debian-12``.
        packages: packages to install besides the base system and the kernel.
        containers: container images baked into the image (osbuild's ``[[containers]]``); their
            local names differ.
        customizations: everything under ``[customizations]``.
    """

    name: ImageName
    description: StrictStr = ""
    version: Version
    distro: Distro = _checks.DISTRO
    packages: tuple[Package, ...] = ()
    containers: tuple[Container, ...] = ()
    customizations: Customizations = Field(default_factory=Customizations)
    _sha256: str = PrivateAttr(default="")
    _directory: Path | None = PrivateAttr(default=None)

    @field_validator("packages")
    @classmethod
    def _each_package_once(cls, packages: tuple[Package, ...]) -> tuple[Package, ...]:
        seen: dict[str, int] = {}
        problems: list[tuple[Loc, str]] = []
        for index, package in enumerate(packages):
            first = seen.setdefault(package.name, index)
            if first != index:
                problems.append(
                    ((index, "name"), f"duplicate package {package.name!r}; see packages[{first}]")
                )
        if problems:
            raise _checks.Problems(problems)
        return packages

    @field_validator("containers")
    @classmethod
    def _each_container_name_once(cls, containers: tuple[Container, ...]) -> tuple[Container, ...]:
        problems = _duplicates(
            [((i, "name" if c.name else "source"), c.local_name) for i, c in enumerate(containers)],
            "container name",
            "containers",
        )
        if problems:
            raise _checks.Problems(problems)
        return containers

    @model_validator(mode="after")
    def _remember_source(self, info: ValidationInfo) -> Self:
        context = info.context
        if isinstance(context, dict) and isinstance(context.get("sha256"), str):
            self._sha256 = context["sha256"]
        if isinstance(context, dict) and isinstance(context.get("directory"), Path):
            self._directory = context["directory"]
        return self

    @property
    def directory(self) -> Path | None:
        """The directory of the blueprint file; None if it was not read from a file."""
        return self._directory

    def resolve_path(self, path: str) -> Path:
        """Where a builder path from the blueprint (a ``[[containers]]`` archive, a manifests
        directory) is: absolute paths as they are, relative ones against :attr:`directory`
        (the current directory for a blueprint not read from a file)."""
        given = Path(path)
        if given.is_absolute():
            return given
        return (self._directory or Path.cwd()) / given

    @property
    def sha256(self) -> str:
        """Hex sha256 of the exact source bytes; empty if not parsed from bytes."""
        return self._sha256

    @property
    def source_date_epoch(self) -> int:
        """The commit timestamp: the blueprint's, else ``$SOURCE_DATE_EPOCH`` if valid, else 0."""
        own = self.customizations.afield.source_date_epoch
        if own is not None:
            return own
        env = os.environ.get("SOURCE_DATE_EPOCH", "")
        return int(env) if _EPOCH_ENV.fullmatch(env) else 0

    @property
    def stream(self) -> str:
        """The update stream (``stable`` unless the blueprint says otherwise)."""
        return self.customizations.afield.stream

    @property
    def kernel_package(self) -> str:
        """The Debian package of the kernel."""
        kernel = self.customizations.kernel
        return kernel.name if kernel is not None and kernel.name else DEFAULT_KERNEL

    @property
    def kernel_args(self) -> tuple[str, ...]:
        """Extra kernel command-line arguments, split like a shell line."""
        kernel = self.customizations.kernel
        if kernel is None or kernel.append is None:
            return ()
        return tuple(shlex.split(kernel.append))
