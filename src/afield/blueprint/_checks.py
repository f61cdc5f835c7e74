"""Value checks and reference data for blueprint validation.

Each check takes one value whose type pydantic has already checked, returns it (normalized where
the blueprint format says so) or raises :class:`ValueError` whose text says what would be
accepted; pydantic attaches the location and ``_parse`` turns it into a
:class:`~afield.errors.Problem`. Checks that relate several values (duplicates, references between
users, groups and files) live beside the models in ``model.py`` and raise :class:`Problems`.

This module does no I/O: whether a time zone, package or kernel exists is decided when composing.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
import shlex

#: Groups every Debian 12 system has: the static groups of base-passwd plus the ones created by
#: the packages of a minimal system (systemd, udev). A user's ``groups`` and a file's ``group``
#: may name these without declaring them in ``[[customizations.group]]``.
# fmt: off
STANDARD_GROUPS = frozenset([
    "root", "daemon", "bin", "sys", "adm", "tty", "disk", "lp", "mail", "news", "uucp", "man",
    "proxy", "kmem", "dialout", "fax", "voice", "cdrom", "floppy", "tape", "sudo", "audio", "dip",
    "www-data", "backup", "operator", "list", "irc", "src", "shadow", "utmp", "video", "sasl",
    "plugdev", "staff", "games", "users", "nogroup", "systemd-journal", "input", "kvm", "render",
    "netdev",
])

#: The static users of Debian 12's base-passwd; a file's ``user`` may name these.
STANDARD_USERS = frozenset([
    "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp", "proxy",
    "www-data", "backup", "list", "irc", "nobody",
])

#: systemd unit types; a service name without one of these suffixes gets ``.service``.
UNIT_TYPES = frozenset([
    "service", "socket", "target", "timer", "path", "mount", "automount", "swap", "slice", "scope",
    "device",
])
# fmt: on

#: Where ``[[customizations.files]]`` and ``[[customizations.directories]]`` may write.
ALLOWED_PATH_PREFIXES = ("/etc", "/usr", "/var", "/opt")

#: The only distribution afield composes.
DISTRO = "debian-12"

MAX_ID = 65534
MAX_EPOCH = 2**63 - 1

_IMAGE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
_VERSION = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)")
_PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")
_PACKAGE_VERSION = re.compile(r"[A-Za-z0-9.+~:*-]+")
_HOST_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_ACCOUNT = re.compile(r"[a-z_][a-z0-9_-]*\$?")
_UNIT = re.compile(r"[A-Za-z0-9:_.\\@-]+")
_TIMEZONE = re.compile(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*")
_LOCALE = re.compile(r"(C|POSIX|[a-z]{2,3}(_[A-Z]{2})?)(\.[A-Za-z0-9-]+)?(@[A-Za-z0-9]+)?")
_KEYBOARD = re.compile(r"[A-Za-z0-9_-]+")
_MODE = re.compile(r"[0-7]{3,4}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# Container image references, after the grammar of distribution/reference (docker, podman).
_DOMAIN_PART = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REFERENCE = re.compile(
    rf"(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_PATH_PART}(?:/{_PATH_PART})*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?"
)
#: The longest repository name (domain and path) a registry accepts.
MAX_REPOSITORY = 255
#: Transports a ``[[containers]]`` source may name; anything else is a registry reference.
ARCHIVE_TRANSPORTS = ("oci-archive", "docker-archive")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# One component of a device tree path; the characters of the kernel's DTB names, no leading '.'.
_DTB_PART = re.compile(r"[A-Za-z0-9_+,@-][A-Za-z0-9._+,@-]*")
#: The longest device tree name ``[customizations.afield.devicetree]`` accepts.
MAX_DTB_PATH = 255
#: The most device trees ``[customizations.afield.devicetree]`` may list.
MAX_DTBS = 256


class Problems(ValueError):
    """Several problems found by one cross-field check, each at a location relative to the model.

    Attributes:
        items: ``(relative location, message)`` pairs, e.g. ``(("user", 1, "uid"), "duplicate")``.
    """

    def __init__(self, items: list[tuple[tuple[str | int, ...], str]]) -> None:
        super().__init__("; ".join(message for _, message in items))
        self.items = items


def _no_control(value: str, what: str) -> None:
    if _CONTROL.search(value):
        raise ValueError(f"{what} must not contain control characters (newlines, tabs, NUL)")


def image_name(value: str) -> str:
    """An image name, used in OSTree refs ``afield/<name>/<arch>/<stream>``."""
    if not _IMAGE_NAME.fullmatch(value):
        raise ValueError(
            "expected lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


def version(value: str) -> str:
    """A blueprint version: three dot-separated numbers without leading zeros."""
    if not _VERSION.fullmatch(value):
        raise ValueError("expected a version of three numbers X.Y.Z, e.g. 1.0.0")
    return value


def distro(value: str) -> str:
    """The distribution; afield composes only Debian 12."""
    if value != DISTRO:
        raise ValueError(f'only "{DISTRO}" is supported')
    return value


def package_name(value: str) -> str:
    """A Debian package name."""
    if not _PACKAGE_NAME.fullmatch(value):
        raise ValueError(
            "expected a Debian package name: lowercase letters, digits, '+', '-' or '.', "
            "at least two characters, starting with a letter or digit"
        )
    return value


def package_version(value: str) -> str:
    """An exact Debian version (``1.2-3``) or a glob (``2.9.*``)."""
    if not _PACKAGE_VERSION.fullmatch(value):
        raise ValueError(
            "expected a Debian version like 1.2-3 or a glob like 2.9.*: "
            "letters, digits and . + ~ : * -"
        )
    return value


def hostname(value: str) -> str:
    """An RFC 1123 host name (dot-separated labels of letters, digits and inner hyphens)."""
    labels = value.split(".")
    if len(value) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError(
            "expected an RFC 1123 host name: labels of 1-63 letters, digits or inner '-', "
            "separated by '.', at most 253 characters"
        )
    return value


def server(value: str) -> str:
    """An NTP server: a host name or an IP address."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        try:
            hostname(value)
        except ValueError:
            raise ValueError("expected a host name or an IP address") from None
    return value


def account(value: str) -> str:
    """A user or group name as Debian's adduser accepts it."""
    if len(value) > 32 or not _ACCOUNT.fullmatch(value):
        raise ValueError(
            "expected a user or group name: lowercase letters, digits, '_' or '-', "
            "starting with a letter or '_', at most 32 characters"
        )
    return value


def account_id(value: int) -> int:
    """A numeric user or group id."""
    if not 0 <= value <= MAX_ID:
        raise ValueError(f"expected an id from 0 to {MAX_ID}")
    return value


def owner(value: object) -> str | int:
    """A file owner: a user or group name, or a numeric id."""
    if isinstance(value, str):
        return account(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return account_id(value)
    raise ValueError(f"expected a name or a numeric id from 0 to {MAX_ID}")


def password(value: str) -> str:
    """A crypt(3) password hash; plain text is refused so it never lands in an image."""
    if not value.startswith("$") or ":" in value or _CONTROL.search(value):
        raise ValueError(
            "expected a crypt(3) hash starting with '$' (e.g. from 'mkpasswd -m yescrypt'); "
            "plain-text passwords are not accepted"
        )
    return value


def ssh_key(value: str) -> str:
    """One OpenSSH public key line (``type base64 [comment]``)."""
    _no_control(value, "an SSH key")
    if len(value.split()) < 2:
        raise ValueError("expected one OpenSSH public key like 'ssh-ed25519 AAAA... comment'")
    return value


def gecos(value: str) -> str:
    """A user description, written into the GECOS field of /etc/passwd."""
    _no_control(value, "a description")
    if ":" in value:
        raise ValueError("a description must not contain ':'")
    return value


def absolute_path(value: str) -> str:
    """An absolute, normalized path (no ``.``, ``..``, ``//`` or trailing ``/``)."""
    _no_control(value, "a path")
    if not value.startswith("/"):
        raise ValueError("expected an absolute path starting with '/'")
    if value != "/" and (posixpath.normpath(value) != value or "//" in value):
        raise ValueError("expected a normalized path: no '.', '..', '//' or trailing '/'")
    return value


def custom_path(value: str) -> str:
    """A path afield may create: absolute, normalized and under an allowed prefix."""
    absolute_path(value)
    if not value.startswith(tuple(f"{prefix}/" for prefix in ALLOWED_PATH_PREFIXES)):
        accepted = ", ".join(f"{prefix}/" for prefix in ALLOWED_PATH_PREFIXES)
        raise ValueError(f"expected a path under one of {accepted}")
    return value


def mode(value: str) -> str:
    """A permission mode as an octal string of 3 or 4 digits, e.g. ``"0644"``."""
    if not _MODE.fullmatch(value):
        raise ValueError('expected an octal mode of 3 or 4 digits, e.g. "0644"')
    return value


def kernel_append(value: str) -> str:
    """Kernel command-line arguments; they must split like a shell command line."""
    _no_control(value, "kernel arguments")
    try:
        shlex.split(value)
    except ValueError:
        raise ValueError(
            "expected arguments that split like a shell line (unclosed quote?)"
        ) from None
    return value


def unit(value: str) -> str:
    """A systemd unit name; a name without a unit-type suffix means ``<name>.service``."""
    stem, _, suffix = value.rpartition(".")
    if len(value) > 248 or not _UNIT.fullmatch(value) or (suffix in UNIT_TYPES and not stem):
        raise ValueError(
            "expected a systemd unit name like 'ssh' or 'ssh.service': letters, digits and "
            ": _ . \\ @ -"
        )
    return value if stem and suffix in UNIT_TYPES else f"{value}.service"


def timezone(value: str) -> str:
    """A tz database name such as ``Europe/Berlin`` or ``UTC`` (existence is checked later)."""
    if len(value) > 64 or not _TIMEZONE.fullmatch(value):
        raise ValueError("expected a time zone name like 'Europe/Berlin' or 'UTC'")
    return value


def locale(value: str) -> str:
    """A glibc locale name such as ``en_US.UTF-8`` or ``C.UTF-8``."""
    if not _LOCALE.fullmatch(value):
        raise ValueError("expected a locale name like 'en_US.UTF-8' or 'C.UTF-8'")
    return value


def keyboard(value: str) -> str:
    """A console keyboard layout such as ``us`` or ``de-latin1``."""
    if not _KEYBOARD.fullmatch(value):
        raise ValueError("expected a keyboard layout like 'us' or 'de-latin1'")
    return value


def stream(value: str) -> str:
    """An update stream name, used in OSTree refs."""
    if not _IMAGE_NAME.fullmatch(value):
        raise ValueError(
            "expected a stream name: lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def epoch(value: int) -> int:
    """A SOURCE_DATE_EPOCH: seconds since 1970, not negative."""
    if not 0 <= value <= MAX_EPOCH:
        raise ValueError(f"expected a number of seconds from 0 to {MAX_EPOCH}")
    return value


def _reference_parts(value: str, also: str = "") -> re.Match[str]:
    """Split an image reference into domain, path, tag and digest, or raise ValueError."""
    _no_control(value, "an image reference")
    match = _REFERENCE.fullmatch(value)
    if match is None:
        raise ValueError(
            "expected an image reference like registry.example/ns/app:1 or "
            f"registry.example/ns/app@sha256:<64 hex digits>{also}: lowercase path components, "
            "an optional tag of letters, digits, '_', '.' and '-', an optional sha256 digest"
        )
    domain = match["domain"]
    repository = f"{domain}/{match['path']}" if domain else match["path"]
    if len(repository) > MAX_REPOSITORY:
        raise ValueError(f"the repository name is longer than {MAX_REPOSITORY} characters")
    return match


def registry_domain(domain: str | None) -> bool:
    """Whether the first part of a reference names a registry (docker's rule): it holds a '.' or
    a ':' or is ``localhost``; otherwise it is the first path component of a short name."""
    return domain is not None and (
        "." in domain or ":" in domain or domain == "localhost" or domain.startswith("[")
    )


def container_source(value: str) -> str:
    """Where a ``[[containers]]`` image comes from: a fully qualified registry reference, or
    ``oci-archive:PATH`` / ``docker-archive:PATH`` (a file, relative to the blueprint)."""
    transport, sep, rest = value.partition(":")
    if sep and transport in ARCHIVE_TRANSPORTS:
        _no_control(rest, "an archive path")
        if not rest:
            raise ValueError(f"expected a file after '{transport}:', e.g. {transport}:app.tar")
        if ":" in rest:
            raise ValueError(
                f"expected {transport}:PATH with no ':' in PATH (choosing an image inside an "
                "archive is not supported: the archive must hold exactly one image)"
            )
        return value
    if "://" in value or (sep and transport in ("docker", "oci", "dir", "containers-storage")):
        raise ValueError(
            f"unsupported transport '{transport}:'; expected a registry reference like "
            "registry.example/ns/app:1, oci-archive:PATH or docker-archive:PATH"
        )
    match = _reference_parts(value, ", oci-archive:PATH or docker-archive:PATH")
    if not registry_domain(match["domain"]):
        raise ValueError(
            "expected a fully qualified reference that names its registry, e.g. "
            "docker.io/library/alpine:3.19 for alpine:3.19 (short names resolve differently "
            "on every machine)"
        )
    return value


def container_name(value: str) -> str:
    """The local name an image gets in the image's container storage, e.g. ``localhost/app:1``.

    It must name a registry (``localhost`` for local images, as podman names them): a short name
    would be stored under ``docker.io/library/``, which is not what the manifests say.
    """
    if value.partition(":")[0] in (*ARCHIVE_TRANSPORTS, "docker", "oci", "dir"):
        raise ValueError("expected an image name like localhost/app:1, not a transport")
    match = _reference_parts(value)
    if not registry_domain(match["domain"]):
        raise ValueError(
            "expected a fully qualified name like localhost/app:1 or registry.example/ns/app:1 "
            "(podman stores a short name under docker.io/library/)"
        )
    return value


def builder_path(value: str) -> str:
    """A file or directory on the builder: absolute, or relative to the blueprint's directory."""
    _no_control(value, "a path")
    if not value:
        raise ValueError("expected a path (relative to the blueprint's directory, or absolute)")
    return value


def dns_label(value: str) -> str:
    """An RFC 1123 DNS label: lowercase letters, digits and inner '-', at most 63 characters."""
    if not _DNS_LABEL.fullmatch(value):
        raise ValueError(
            "expected a DNS label: 1-63 lowercase letters, digits or '-', starting and ending "
            "with a letter or digit"
        )
    return value


def dtb_name(value: str) -> str:
    """A device tree blob: a path relative to the kernel package's DTB directory
    (``broadcom/bcm2711-rpi-4-b.dtb``), the absolute path of a file in the image, or a file
    shipped with the blueprint, relative to its directory after ``./`` (``./board.dtb``)."""
    _no_control(value, "a device tree name")
    if len(value) > MAX_DTB_PATH:
        raise ValueError(f"expected at most {MAX_DTB_PATH} characters")
    if not value.endswith(".dtb"):
        raise ValueError("expected a device tree blob whose name ends in '.dtb'")
    relative = value.removeprefix("./") if value.startswith("./") else value.removeprefix("/")
    if not all(_DTB_PART.fullmatch(part) for part in relative.split("/")):
        raise ValueError(
            "expected a path like broadcom/bcm2711-rpi-4-b.dtb (relative to the kernel "
            "package's DTB directory), an absolute path in the image, or ./board.dtb (a file "
            "next to the blueprint): components of letters, digits and . _ + , @ - that do not "
            "start with '.', no empty components"
        )
    if value.startswith("/"):
        custom_path(value)
    return value
