"""Parse greenboot's ``/etc/greenboot/greenboot.conf`` without running a shell.

greenboot's file is a shell fragment: the shell implementation (greenboot <= 0.15,
``usr/libexec/greenboot/greenboot``) ``source``-s it with bash, the Rust one (greenboot-rs
``src/main.rs``) reads it as INI and parses ``DISABLED_HEALTHCHECKS`` as a bash array. This module
reads the subset of shell both accept and that configuration files actually use:

* ``KEY=VALUE`` (optionally ``export KEY=VALUE``), one per line or separated by ``;``;
* values quoted as the shell does: ``'single'``, ``"double"`` (with ``\\`` escapes), bare words;
* bash arrays, also spread over several lines, with comments inside:
  ``DISABLED_HEALTHCHECKS=("01_check.sh" "02_x.sh")``;
* ``#`` comments and blank lines. A key assigned twice keeps its last value, as in the shell.

Keys afield does not know are skipped (it is greenboot's file and other tools add keys), but the
whole file must still be well-formed, and a value of a known key that is malformed, or that would
need the shell to expand it (``$VAR``, backquotes, globs), raises :class:`DeviceError` naming the
file, the line and the key. Parsing is pure: reading the file (with its size cap) is
:func:`afield.device.health.load_config`'s job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from afield.device.boot.counter import MAX_ATTEMPTS_LIMIT
from afield.errors import DeviceError

__all__ = [
    "AFIELD_HEALTHCHECK_TIMEOUT",
    "DEFAULT_MAX_BOOT_ATTEMPTS",
    "DEFAULT_TIMEOUT",
    "DISABLED_HEALTHCHECKS",
    "GREENBOOT_MAX_BOOT_ATTEMPTS",
    "MAX_BOOT_ATTEMPTS_LIMIT",
    "MAX_TIMEOUT",
    "GreenbootConfig",
    "parse_config",
]

GREENBOOT_MAX_BOOT_ATTEMPTS = "GREENBOOT_MAX_BOOT_ATTEMPTS"
DISABLED_HEALTHCHECKS = "DISABLED_HEALTHCHECKS"
AFIELD_HEALTHCHECK_TIMEOUT = "AFIELD_HEALTHCHECK_TIMEOUT"

DEFAULT_MAX_BOOT_ATTEMPTS = 3
# The GRUB counter script afield renders counts from at most this many attempts.
MAX_BOOT_ATTEMPTS_LIMIT = MAX_ATTEMPTS_LIMIT
DEFAULT_TIMEOUT = 300.0
MAX_TIMEOUT = 86400.0

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT = re.compile(r"[0-9]{1,6}")
_SECONDS = re.compile(r"[0-9]{1,6}(\.[0-9]{1,6})?")
_META = frozenset(" \t\n;&|()<>")
_EXPANDS = frozenset("$`*?[{~")


@dataclass(frozen=True)
class GreenbootConfig:
    """What afield takes from greenboot.conf.

    Attributes:
        max_boot_attempts: ``GREENBOOT_MAX_BOOT_ATTEMPTS``, boots of a new deployment before GRUB
            falls back (1 to 100, default 3).
        disabled: ``DISABLED_HEALTHCHECKS``, check file names (not paths) to skip.
        timeout: ``AFIELD_HEALTHCHECK_TIMEOUT``, seconds one script may run (default 300).
    """

    max_boot_attempts: int = DEFAULT_MAX_BOOT_ATTEMPTS
    disabled: frozenset[str] = field(default_factory=frozenset)
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        if not 1 <= self.max_boot_attempts <= MAX_BOOT_ATTEMPTS_LIMIT:
            raise ValueError(f"max_boot_attempts must be 1..{MAX_BOOT_ATTEMPTS_LIMIT}")
        if not 0 < self.timeout <= MAX_TIMEOUT:
            raise ValueError(f"timeout must be in (0, {MAX_TIMEOUT:g}] seconds")

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "max_boot_attempts": self.max_boot_attempts,
            "disabled": sorted(self.disabled),
            "timeout": self.timeout,
        }


@dataclass(frozen=True)
class _Word:
    text: str
    expands: bool  # holds something the shell would expand


@dataclass(frozen=True)
class _Assignment:
    line: int
    scalar: _Word | None
    array: tuple[_Word, ...] | None


class _Lexer:
    """Reads assignments from shell text, tracking line numbers for error messages."""

    def __init__(self, text: str, path: str) -> None:
        self.text = text
        self.path = path
        self.pos = 0
        self.line = 1

    def error(
        self, message: str, *, line: int | None = None, key: str | None = None
    ) -> DeviceError:
        where = f"{self.path}:{self.line if line is None else line}"
        return DeviceError(f"{where}: {key + ': ' if key else ''}{message}")

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_blanks(self, *, newlines: bool) -> None:
        """Skip spaces, tabs, line continuations and comments (and newlines if asked)."""
        while (c := self.peek()) != "":
            if c in " \t":
                self.pos += 1
            elif c == "\n" and newlines:
                self.pos += 1
                self.line += 1
            elif self.text.startswith("\\\n", self.pos):
                self.pos += 2
                self.line += 1
            elif c == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            else:
                return

    def word(self) -> _Word | None:
        """Read one shell word; None when the next character ends a word."""
        start, buf, expands = self.pos, [], False
        while (c := self.peek()) != "" and c not in _META:
            if c == "\\":
                nxt = self.text[self.pos + 1 : self.pos + 2]
                if nxt == "\n":
                    self.line += 1
                else:
                    buf.append(nxt or "\\")
                self.pos += 2
            elif c == "'":
                end = self.text.find("'", self.pos + 1)
                if end < 0:
                    raise self.error("unterminated single quote")
                chunk = self.text[self.pos + 1 : end]
                buf.append(chunk)
                self.line += chunk.count("\n")
                self.pos = end + 1
            elif c == '"':
                expands |= self._double_quoted(buf)
            elif c == "$" and self.peek_at(self.pos + 1) in ("(", "{"):
                buf.append(self._substitution())
                expands = True
            else:
                expands |= c in _EXPANDS
                buf.append(c)
                self.pos += 1
        return None if self.pos == start else _Word("".join(buf), expands)

    def _substitution(self) -> str:
        """Skip ``$(...)`` or ``${...}`` (nested ones too); afield never runs or expands them."""
        start, line, depth = self.pos, self.line, 0
        opener = self.text[self.pos + 1]
        closer = ")" if opener == "(" else "}"
        self.pos += 1
        while (c := self.peek()) != "":
            self.pos += 1
            if c == "\n":
                self.line += 1
            depth += (c == opener) - (c == closer)
            if depth == 0:
                return self.text[start : self.pos]
        raise self.error(f"unterminated ${opener}", line=line)

    def _double_quoted(self, buf: list[str]) -> bool:
        line, expands = self.line, False
        self.pos += 1
        while (c := self.peek()) != '"':
            if c == "":
                raise self.error("unterminated double quote", line=line)
            if c == "\\" and self.text[self.pos + 1 : self.pos + 2] in ('"', "\\", "$", "`", "\n"):
                c = self.text[self.pos + 1]
                self.pos += 1
                if c == "\n":
                    self.line += 1
                    self.pos += 1
                    continue
            elif c in "$`":
                expands = True
            if c == "\n":
                self.line += 1
            buf.append(c)
            self.pos += 1
        self.pos += 1
        return expands

    def assignments(self) -> dict[str, _Assignment]:
        """Every ``KEY=VALUE`` in the text; the last one wins for a repeated key."""
        found: dict[str, _Assignment] = {}
        while True:
            self.skip_blanks(newlines=True)
            if self.peek() == "":
                return found
            line = self.line
            match = _NAME.match(self.text, self.pos)
            if match and match.group() == "export" and self.peek_at(match.end()) in (" ", "\t"):
                self.pos = match.end()
                self.skip_blanks(newlines=False)
                match = _NAME.match(self.text, self.pos)
            if match is None or self.peek_at(match.end()) != "=":
                raise self.error("not a KEY=VALUE assignment")
            key = match.group()
            self.pos = match.end() + 1
            if self.peek() == "(":
                found[key] = _Assignment(line, None, self._array(line, key))
            else:
                found[key] = _Assignment(line, self.word() or _Word("", False), None)
            self.skip_blanks(newlines=False)
            if self.peek() == ";":
                self.pos += 1
            elif self.peek() not in ("", "\n"):
                raise self.error(f"unexpected {self.peek()!r} after the value", key=key)

    def peek_at(self, pos: int) -> str:
        return self.text[pos : pos + 1]

    def _array(self, line: int, key: str) -> tuple[_Word, ...]:
        self.pos += 1
        items: list[_Word] = []
        while True:
            self.skip_blanks(newlines=True)
            c = self.peek()
            if c == "":
                raise self.error("unterminated array, no closing ')'", line=line, key=key)
            if c == ")":
                self.pos += 1
                return tuple(items)
            item = self.word()
            if item is None:
                raise self.error(f"unexpected {c!r} in array", key=key)
            items.append(item)


def parse_config(text: str, *, path: str = "/etc/greenboot/greenboot.conf") -> GreenbootConfig:
    """Read greenboot.conf text into a :class:`GreenbootConfig`.

    Args:
        text: the file's content.
        path: the file's name, used in error messages.

    Raises:
        DeviceError: the text is not a sequence of assignments, or a known key's value is
            malformed; the message names ``path``, the line and the key.
    """
    lexer = _Lexer(text, path)
    found = lexer.assignments()

    def scalar(key: str, pattern: re.Pattern[str], expected: str) -> str | None:
        assignment = found.get(key)
        if assignment is None:
            return None
        value = assignment.scalar
        if value is None or value.expands or (value.text and not pattern.fullmatch(value.text)):
            raise lexer.error(f"expected {expected}", line=assignment.line, key=key)
        return value.text or None

    attempts = scalar(GREENBOOT_MAX_BOOT_ATTEMPTS, _INT, f"an integer 1..{MAX_BOOT_ATTEMPTS_LIMIT}")
    max_boot_attempts = DEFAULT_MAX_BOOT_ATTEMPTS if attempts is None else int(attempts)
    if not 1 <= max_boot_attempts <= MAX_BOOT_ATTEMPTS_LIMIT:
        line = found[GREENBOOT_MAX_BOOT_ATTEMPTS].line
        raise lexer.error(
            f"expected an integer 1..{MAX_BOOT_ATTEMPTS_LIMIT}, got {max_boot_attempts}",
            line=line,
            key=GREENBOOT_MAX_BOOT_ATTEMPTS,
        )
    seconds = scalar(AFIELD_HEALTHCHECK_TIMEOUT, _SECONDS, "a number of seconds such as 300 or 0.5")
    timeout = DEFAULT_TIMEOUT if seconds is None else float(seconds)
    if not 0 < timeout <= MAX_TIMEOUT:
        line = found[AFIELD_HEALTHCHECK_TIMEOUT].line
        raise lexer.error(
            f"expected more than 0 and at most {MAX_TIMEOUT:g} seconds, got {seconds}",
            line=line,
            key=AFIELD_HEALTHCHECK_TIMEOUT,
        )
    return GreenbootConfig(
        max_boot_attempts, _disabled(lexer, found.get(DISABLED_HEALTHCHECKS)), timeout
    )


def _disabled(lexer: _Lexer, assignment: _Assignment | None) -> frozenset[str]:
    if assignment is None:
        return frozenset()
    key, line = DISABLED_HEALTHCHECKS, assignment.line
    if assignment.array is None:
        if assignment.scalar is not None and assignment.scalar.text == "":
            return frozenset()  # DISABLED_HEALTHCHECKS= is an empty list to greenboot too
        raise lexer.error(
            'expected a bash array like ("01_check.sh" "02_x.sh")', line=line, key=key
        )
    names = set()
    for item in assignment.array:
        if item.expands:
            raise lexer.error(
                f"{item.text!r}: shell expansion is not supported", line=line, key=key
            )
        if item.text in ("", ".", "..") or "/" in item.text or "\0" in item.text:
            raise lexer.error(f"{item.text!r} is not a check file name", line=line, key=key)
        names.add(item.text)
    return frozenset(names)
