"""Read Boot Loader Specification entries the way OSTree writes and orders them.

OSTree writes one entry per deployment into ``boot/loader/entries/`` (really
``boot/loader.N/entries/``): ``ostree-<K>-<stateroot>.conf`` (``ostree-<K>.conf`` since 2024.5),
with ``title``, ``version``, ``options``, ``devicetree``, ``linux`` and ``initrd`` lines (one
``initrd`` line per overlay initrd) and keys it does not know kept as they are
(``ostree-bootconfig-parser.c``). The kernel argument
``ostree=/ostree/boot.<B>/<stateroot>/<bootcsum>/<serial>`` names the deployment the entry boots.

Menu order is OSTree's (``ostree-sysroot.c``: ``_ostree_sysroot_read_boot_loader_configs`` reads
only regular files named ``ostree-*.conf`` and sorts them by ``version``, highest first), and
``ostree-sysroot-deploy.c`` sets ``version`` to ``n_deployments - index``, so the default
deployment (index 0) has the highest version. :func:`load_entries` sorts by the integer version,
highest first, and breaks ties (which OSTree never writes) by file name so the order is
deterministic. Index 0 of the result is the default entry, index 1 the rollback entry: the same
indices GRUB's ``default`` and the boot counter use.

Parsing is stricter than OSTree's, because a mis-read entry changes which kernel boots: an entry
file over :data:`MAX_ENTRY_BYTES`, invalid UTF-8, a line that is neither blank, a ``#`` comment nor
``key value``, a control character, a repeated key other than ``initrd``, no ``linux`` line, or a
``version`` that is not a non-negative integer raises :class:`BootEntryError` naming the file and
line. Turning entries into a ``grub.cfg`` is :mod:`afield.device.boot.grubcfg`'s job; writing them
is OSTree's.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from afield.errors import DeviceError

__all__ = [
    "MAX_ENTRIES",
    "MAX_ENTRY_BYTES",
    "BootEntry",
    "BootEntryError",
    "load_entries",
    "load_entry",
    "parse_entry",
]

MAX_ENTRY_BYTES = 64 * 1024
MAX_ENTRIES = 256

_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")
_LINE = re.compile(r"([^ \t]*)[ \t]*(.*)\Z")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_VERSION = re.compile(r"[0-9]{1,9}\Z")
_KNOWN = frozenset({"title", "version", "linux", "initrd", "options", "devicetree"})


class BootEntryError(DeviceError):
    """A boot loader entry file is unreadable, too large or malformed; names the file and line."""

    def __init__(self, path: Path, message: str, *, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line


@dataclass(frozen=True)
class BootEntry:
    """One Boot Loader Specification entry.

    Attributes:
        path: The entry file.
        version: The ``version`` key; OSTree gives the default deployment the highest.
        linux: Path of the kernel, relative to the boot partition's root.
        title: The ``title`` key, or None when the entry has none.
        initrd: Paths of the initrds, in file order (OSTree's overlay initrds follow the first).
        options: The kernel command line (``options``), as written.
        devicetree: Path of the device tree blob, or None.
        extra: Every other ``key value`` line, in file order.
    """

    path: Path
    version: int
    linux: str
    title: str | None = None
    initrd: tuple[str, ...] = ()
    options: str = ""
    devicetree: str | None = None
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def filename(self) -> str:
        """The entry's file name, e.g. ``ostree-2-debian.conf``."""
        return self.path.name

    @property
    def ostree_path(self) -> str | None:
        """The value of the ``ostree=`` kernel argument, or None for a non-OSTree entry.

        The first one counts, as in ``ostree-prepare-root`` (``otcore_find_proc_cmdline_key``).
        """
        for word in self.options.split(" "):
            if word.startswith("ostree="):
                return word[len("ostree=") :]
        return None


def parse_entry(text: str, path: Path) -> BootEntry:
    """Parse the text of one entry file.

    Args:
        text: The file's contents.
        path: Where it was read from; kept in the entry and named in errors.

    Raises:
        BootEntryError: A line is malformed (see the module docstring).
    """
    fields: dict[str, str] = {}
    initrd: list[str] = []
    extra: list[tuple[str, str]] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip(" \t")
        if _CONTROL.search(line):
            raise BootEntryError(path, "control character in line", line=number)
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        key, value = (match.group(1), match.group(2)) if match else ("", "")
        if not _KEY.match(key):
            raise BootEntryError(path, f"not a 'key value' line: {line[:60]!r}", line=number)
        if not value:
            raise BootEntryError(path, f"key {key!r} has no value", line=number)
        if key == "initrd":
            initrd.append(value)
            continue
        if key in seen:
            raise BootEntryError(path, f"key {key!r} appears twice", line=number)
        seen.add(key)
        if key == "version" and not _VERSION.match(value):
            raise BootEntryError(
                path, f"version {value!r} is not a non-negative integer", line=number
            )
        if key in _KNOWN:
            fields[key] = value
        else:
            extra.append((key, value))
    if "linux" not in fields:
        raise BootEntryError(path, "has no 'linux' line")
    if "version" not in fields:
        raise BootEntryError(path, "has no 'version' line")
    return BootEntry(
        path=path,
        version=int(fields["version"]),
        linux=fields["linux"],
        title=fields.get("title"),
        initrd=tuple(initrd),
        options=fields.get("options", ""),
        devicetree=fields.get("devicetree"),
        extra=tuple(extra),
    )


def load_entry(path: Path | str) -> BootEntry:
    """Read and parse one entry file of at most :data:`MAX_ENTRY_BYTES`.

    Raises:
        BootEntryError: The file is unreadable, too large, not UTF-8 or malformed.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_ENTRY_BYTES + 1)
    except OSError as e:
        raise BootEntryError(path, f"cannot read: {e.strerror or e}") from e
    if len(data) > MAX_ENTRY_BYTES:
        raise BootEntryError(path, f"is larger than {MAX_ENTRY_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise BootEntryError(path, "is not UTF-8", line=line) from None
    return parse_entry(text, path)


def load_entries(entries_dir: Path | str) -> list[BootEntry]:
    """Load OSTree's entries from ``entries_dir`` in menu order (default first).

    Only regular files (after following symlinks, as OSTree does) named ``ostree-*.conf`` are
    entries; anything else in the directory is ignored, as OSTree ignores it.

    Raises:
        BootEntryError: The directory is missing or unreadable, holds more than
            :data:`MAX_ENTRIES` entries, or an entry is malformed.
    """
    entries_dir = Path(entries_dir)
    try:
        names = sorted(os.listdir(entries_dir))
    except OSError as e:
        raise BootEntryError(entries_dir, f"cannot list entries: {e.strerror or e}") from e
    entries: list[BootEntry] = []
    for name in names:
        if not (name.startswith("ostree-") and name.endswith(".conf")):
            continue
        path = entries_dir / name
        try:
            mode = path.stat().st_mode
        except OSError as e:
            raise BootEntryError(path, f"cannot stat: {e.strerror or e}") from e
        if not stat.S_ISREG(mode):
            continue
        if len(entries) == MAX_ENTRIES:
            raise BootEntryError(entries_dir, f"holds more than {MAX_ENTRIES} entries")
        entries.append(load_entry(path))
    entries.sort(key=lambda entry: (-entry.version, entry.filename))
    return entries
