"""Render a complete ``grub.cfg`` from OSTree's boot entries, with the boot counter in GRUB script.

Debian's GRUB 2.06 has neither Fedora's ``blscfg`` (menu entries read from BLS files at boot) nor
its ``increment``/``decrement`` commands, which greenboot's ``08_greenboot.cfg`` needs. So afield
writes the menu itself, one ``menuentry`` per :class:`~afield.device.boot.bls.BootEntry` in menu
order, and counts with an ``if``/``elif`` ladder over the literal values ``1`` ..
:data:`~afield.device.boot.counter.MAX_ATTEMPTS_LIMIT`. The script makes exactly the decisions of
:func:`afield.device.boot.counter.firmware_choose` (the tests run it in GRUB itself, through
``grub-emu``, and compare), including afield's handling of garbage and ``fallback_index``:

* ``load_env`` reads only ``boot_counter`` and ``boot_success`` (a whitelist, so nothing else in
  grubenv, such as ``default``, can steer the boot) and the counter runs only when it succeeded;
* values are compared as ``"x${var}" = "x<literal>"``, so no value can read as a ``test`` operator;
* both variables are saved by one ``save_env``, i.e. one in-place write of the block.

Every string from an entry (title, paths, kernel arguments) is emitted single-quoted, so no title
or option can run a GRUB command or expand a variable, and the title follows ``--`` so one that
starts with ``-`` is not read as an option. Kernel arguments are split as the kernel splits its
command line and passed one per word; GRUB joins them again, adding double quotes around a word
with a space (``grub-core/lib/cmdline.c``), which gives the kernel the same parameters.
Arguments GRUB would alter on the way (a ``'``, a backslash other than ``\\xHH``, a double quote
anywhere but around a whole argument or value) are refused with :class:`GrubCfgError`, as are
control characters and relative paths.

Writing the file, and doing so without a window where GRUB sees a menu whose files are gone, is
the caller's: write deployments without post-clean, write ``grub.cfg`` atomically, then clean up.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from afield.device.boot.bls import BootEntry
from afield.device.boot.counter import (
    COUNTER,
    FALLBACK_COUNTER,
    MAX_ATTEMPTS_LIMIT,
    SUCCESS,
)
from afield.errors import DeviceError

__all__ = ["COUNTER_BEGIN", "COUNTER_END", "GrubCfgError", "kernel_arguments", "render_grub_cfg"]

COUNTER_BEGIN = "### BEGIN afield boot counter ###"
COUNTER_END = "### END afield boot counter ###"

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_BAD_BACKSLASH = re.compile(r"\\(?!x[0-9A-Fa-f]{2})")
_QUOTED_ARG = re.compile(r'(?:"([^"]*)"|([^"=]+=)"([^"]*)"|([^"]*))\Z')
_UUID = re.compile(r"[0-9A-Za-z-]{1,64}\Z")


class GrubCfgError(DeviceError):
    """An entry holds something GRUB cannot be given safely and unchanged."""


def _quote(text: str) -> str:
    """Quote ``text`` as one literal GRUB word (single quotes, ``'`` as ``'\\''``)."""
    if _CONTROL.search(text):
        raise GrubCfgError(f"control character in {text[:60]!r}")
    return "'" + text.replace("'", "'\\''") + "'"


def kernel_arguments(options: str) -> list[str]:
    """Split a kernel command line into the words GRUB's ``linux`` command should get.

    Splits at spaces and tabs outside double quotes, as the kernel does, and removes the quotes
    around a whole argument (``"a b"``) or a value (``key="a b"``); GRUB adds them back around
    any word with a space.

    Raises:
        GrubCfgError: The line holds something GRUB would pass on altered.
    """
    if "'" in options or _BAD_BACKSLASH.search(options) or _CONTROL.search(options):
        raise GrubCfgError(f"kernel options {options[:80]!r}: GRUB cannot pass them unchanged")
    words: list[str] = []
    current: list[str] = []
    in_quote = False
    for char in options + " ":
        if char in " \t" and not in_quote:
            if current:
                words.append("".join(current))
                current = []
            continue
        if char == '"':
            in_quote = not in_quote
        current.append(char)
    if in_quote:
        raise GrubCfgError(f"kernel options {options[:80]!r}: unbalanced double quote")
    result = []
    for word in words:
        match = _QUOTED_ARG.match(word)
        if match is None:
            raise GrubCfgError(f"kernel argument {word[:80]!r}: double quote inside the value")
        whole, key, value, plain = match.groups()
        result.append(plain if plain is not None else whole if whole is not None else key + value)
    return result


def _path(path: str) -> str:
    if not path.startswith("/"):
        raise GrubCfgError(f"path {path!r} is not absolute")
    return _quote(path)


def _menuentry(entry: BootEntry) -> list[str]:
    title = entry.title or entry.path.stem
    try:
        linux = [_path(entry.linux)] + [_quote(arg) for arg in kernel_arguments(entry.options)]
        lines = [
            f"menuentry --class gnu-linux --class gnu --class os -- {_quote(title)} {{",
            "  linux " + " ".join(linux),
        ]
        if entry.initrd:
            lines.append("  initrd " + " ".join(_path(p) for p in entry.initrd))
        if entry.devicetree is not None:
            lines.append("  devicetree " + _path(entry.devicetree))
    except GrubCfgError as e:
        raise GrubCfgError(f"{entry.path}: {e.message}") from None
    return [*lines, "}"]


def _counter_block(fallback: int, env_arg: str) -> list[str]:
    """The GRUB script twin of :func:`afield.device.boot.counter.firmware_choose`."""
    ladder = []
    for n in range(MAX_ATTEMPTS_LIMIT, 0, -1):
        keyword = "if" if n == MAX_ATTEMPTS_LIMIT else "elif"
        ladder += [
            f'      {keyword} [ "x${{{COUNTER}}}" = "x{n}" ]; then',
            f"        set {COUNTER}={n - 1}",
        ]
    fall_back = [f"set default={fallback}", f"set {COUNTER}={FALLBACK_COUNTER}"]
    return [
        COUNTER_BEGIN,
        "# greenboot's boot counting (afield.device.boot.counter): a set counter with",
        f"# {SUCCESS}=0 is decremented while the default boots; 0, -1 or a value that is not a",
        f"# counter boots entry {fallback} and stores -1.",
        f"if load_env{env_arg} {COUNTER} {SUCCESS}; then",
        f'  if [ "x${{{COUNTER}}}" != "x" ]; then',
        f'    if [ "x${{{SUCCESS}}}" = "x0" ]; then',
        *ladder,
        "      else",
        *("        " + line for line in fall_back),
        "      fi",
        f'    elif [ "x${{{SUCCESS}}}" != "x1" ]; then',
        *("      " + line for line in fall_back),
        "    fi",
        "  fi",
        f"  set {SUCCESS}=0",
        f"  save_env{env_arg} {COUNTER} {SUCCESS}",
        "fi",
        COUNTER_END,
    ]


def render_grub_cfg(
    entries: Sequence[BootEntry],
    *,
    timeout: int = 5,
    fallback_index: int = 1,
    env_file: str | None = None,
    boot_fs_uuid: str | None = None,
) -> str:
    """Render ``grub.cfg`` for ``entries``, which must already be in menu order (default first).

    Args:
        entries: The boot entries, as :func:`afield.device.boot.bls.load_entries` returns them.
        timeout: Seconds the menu waits (0 boots at once).
        fallback_index: Entry a spent or garbled counter boots: 1 while the default is on trial,
            0 once it is known-good (see :mod:`afield.device.boot.counter`).
        env_file: The grubenv path as GRUB sees it; default ``$prefix/grubenv``.
        boot_fs_uuid: Filesystem UUID of the partition holding the entries' files; when given,
            GRUB searches for it and makes it ``root``.

    Returns:
        The whole file.

    Raises:
        GrubCfgError: A setting is out of range, or an entry cannot be rendered safely.
    """
    if not 0 <= timeout <= 3600:
        raise GrubCfgError(f"timeout must be 0..3600 seconds, got {timeout}")
    if fallback_index < 0:
        raise GrubCfgError(f"fallback_index must not be negative, got {fallback_index}")
    fallback = fallback_index if fallback_index < len(entries) else 0
    lines = [
        "# Generated by afield from the boot loader entries in /boot/loader/entries.",
        "# Do not edit: afield rewrites it after every deployment change.",
        f"set timeout={timeout}",
        "set default=0",
    ]
    if boot_fs_uuid is not None:
        if not _UUID.match(boot_fs_uuid):
            raise GrubCfgError(f"boot_fs_uuid {boot_fs_uuid!r} is not a filesystem UUID")
        lines.append(f"search --no-floppy --fs-uuid --set=root {boot_fs_uuid}")
    env_arg = "" if env_file is None else f" -f {_quote(env_file)}"
    lines += _counter_block(fallback, env_arg)
    for entry in entries:
        lines += _menuentry(entry)
    return "\n".join(lines) + "\n"
