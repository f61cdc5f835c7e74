"""The service info modules of an afield onboarding: what the owner hands a device in TO2.

An owner gives a device what it needs to join the fleet as a :class:`Handoff`; it travels as
service info key/values of two modules, each value small enough for the smallest message a
device may ask for:

``afield`` (afield's own module; owner to device)
    ``active`` (true), ``fleet_url`` (tstr: the fleet manager), ``enroll_token`` (tstr: the
    one-time token the device presents when it enrolls), ``tuf_root_sha384`` (bstr, 48 bytes)
    followed by ``tuf_root`` (bstr, repeated: the update repository's ``root.json`` in blocks),
    ``ssh_key`` (tstr, repeated: one authorized key each), and ``end`` (null) last. The device
    answers ``afield:active`` true at the start and ``afield:done`` true once ``end`` has come
    and everything checked.

``fdo.download`` (the FIDO Alliance's module, length-prefix mode with SHA-384)
    ``active``, then per file ``name``, ``length``, ``sha-384`` and ``data`` blocks of at most
    1014 bytes; the device answers ``done`` with the length it received.

The device side (:class:`DeviceModules`) is given each owner key/value as it arrives and returns
its answers. It only collects and checks: nothing is written until TO2 has finished, by whoever
applies the hand-off (``afield.device.onboard``), so an onboarding that fails half way leaves
nothing behind. A check that fails raises :class:`ModuleError`, which ends TO2 on the device:
fdo.download's answer of -1 would let the owner finish an onboarding whose file the device
refuses, so afield does not send it.

Modules a device does not run (``fdo.command`` among them: afield runs no owner commands during
onboarding; workloads come from the fleet manager later) are answered ``module:active`` false
when the owner activates them, and their other messages are ignored, as the specification's
service info rules ask.

What it leaves to others: sending and chunking key/values into messages (TO2, in
:mod:`afield.fdo.to2` and :mod:`afield.fdo.server.owner`), where a hand-off lands on the device,
verifying the TUF root (the device's TUF client does that on its first update).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from afield.errors import FdoError
from afield.fdo import _check as check
from afield.fdo._errors import FdoMessageError
from afield.fdo.serviceinfo import ServiceInfoKV

__all__ = [
    "AFIELD",
    "BLOCK_SIZE",
    "DOWNLOAD",
    "DeviceModules",
    "DownloadFile",
    "Handoff",
    "HandoffLimits",
    "ModuleError",
]

AFIELD = "afield"
DOWNLOAD = "fdo.download"
BLOCK_SIZE = 1014
"""The largest data block of a value (fdo.download's): with its key it fits a 1300-byte MTU."""
SUPPORTED = frozenset({"devmod", AFIELD, DOWNLOAD})
FILES_DIRECTORY = "/var/lib/afield/files"
"""Where a download with a relative name lands on the device."""


class ModuleError(FdoError):
    """A service info value the device refuses (it names the key and what is accepted)."""


@dataclass(frozen=True)
class HandoffLimits:
    """How much a device accepts from an owner; beyond it the onboarding fails."""

    max_text: int = 4096
    max_tuf_root: int = 1024 * 1024
    max_ssh_keys: int = 64
    max_files: int = 64
    max_file_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class DownloadFile:
    """A file for the device: ``name`` is absolute under ``/var/`` or relative to
    ``/var/lib/afield/files`` (fdo.download carries no mode: files are written 0644)."""

    name: str
    data: bytes

    @property
    def path(self) -> str:
        """The absolute path on the device."""
        return self.name if self.name.startswith("/") else f"{FILES_DIRECTORY}/{self.name}"


@dataclass(frozen=True)
class Handoff:
    """What the owner gives a device in TO2, and what the device keeps of it."""

    fleet_url: str | None = None
    enrollment_token: str | None = None
    tuf_root: bytes | None = None
    ssh_keys: tuple[str, ...] = ()
    files: tuple[DownloadFile, ...] = ()

    def check(self, limits: HandoffLimits | None = None) -> Handoff:
        """Return self if every field is acceptable; raise :class:`ModuleError` naming the first
        that is not (both sides run this: the owner before sending, the device on receipt)."""
        limits = limits or HandoffLimits()
        if self.fleet_url is not None:
            _check_url(self.fleet_url, limits)
        if self.enrollment_token is not None:
            _check_line(self.enrollment_token, "afield:enroll_token", limits)
        if self.tuf_root is not None:
            _check_tuf_root(self.tuf_root, limits)
        if len(self.ssh_keys) > limits.max_ssh_keys:
            raise ModuleError(f"afield:ssh_key: more than {limits.max_ssh_keys} keys")
        for key in self.ssh_keys:
            _check_ssh_key(key, limits)
        if len(self.files) > limits.max_files:
            raise ModuleError(f"fdo.download: more than {limits.max_files} files")
        for file in self.files:
            _check_name(file.name, limits)
        if sum(len(f.data) for f in self.files) > limits.max_file_bytes:
            raise ModuleError(f"fdo.download: files exceed {limits.max_file_bytes} bytes in all")
        return self

    def owner_kvs(self) -> list[ServiceInfoKV]:
        """The owner's key/values, in the order the device reads them."""
        self.check()
        kvs = [ServiceInfoKV.of(AFIELD, "active", True)]
        if self.fleet_url is not None:
            kvs.append(ServiceInfoKV.of(AFIELD, "fleet_url", self.fleet_url))
        if self.enrollment_token is not None:
            kvs.append(ServiceInfoKV.of(AFIELD, "enroll_token", self.enrollment_token))
        if self.tuf_root is not None:
            kvs.append(
                ServiceInfoKV.of(AFIELD, "tuf_root_sha384", hashlib.sha384(self.tuf_root).digest())
            )
            kvs.extend(ServiceInfoKV.of(AFIELD, "tuf_root", b) for b in _blocks(self.tuf_root))
        kvs.extend(ServiceInfoKV.of(AFIELD, "ssh_key", key) for key in self.ssh_keys)
        kvs.append(ServiceInfoKV.of(AFIELD, "end", None))
        if self.files:
            kvs.append(ServiceInfoKV.of(DOWNLOAD, "active", True))
        for file in self.files:
            kvs.append(ServiceInfoKV.of(DOWNLOAD, "name", file.name))
            kvs.append(ServiceInfoKV.of(DOWNLOAD, "length", len(file.data)))
            kvs.append(ServiceInfoKV.of(DOWNLOAD, "sha-384", hashlib.sha384(file.data).digest()))
            kvs.extend(ServiceInfoKV.of(DOWNLOAD, "data", b) for b in _blocks(file.data))
        return kvs

    def to_dict(self) -> dict[str, Any]:
        """A summary for ``--json`` and logs: no token, no file contents."""
        return {
            "fleet_url": self.fleet_url,
            "enrollment_token": self.enrollment_token is not None,
            "tuf_root_sha256": (
                hashlib.sha256(self.tuf_root).hexdigest() if self.tuf_root is not None else None
            ),
            "ssh_keys": len(self.ssh_keys),
            "files": [{"path": f.path, "length": len(f.data)} for f in self.files],
        }


def _blocks(data: bytes) -> list[bytes]:
    # An empty value still needs one (empty) block, as fdo.download says of empty files.
    return [data[i : i + BLOCK_SIZE] for i in range(0, len(data), BLOCK_SIZE)] or [b""]


def _check_line(text: str, key: str, limits: HandoffLimits) -> None:
    if not text or len(text) > limits.max_text or not text.isprintable():
        raise ModuleError(f"{key}: expected 1 to {limits.max_text} printable characters")


def _check_url(url: str, limits: HandoffLimits) -> None:
    _check_line(url, "afield:fleet_url", limits)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ModuleError(f"afield:fleet_url: {url[:80]!r} is not an http(s) URL with a host")


def _check_tuf_root(data: bytes, limits: HandoffLimits) -> None:
    if len(data) > limits.max_tuf_root:
        raise ModuleError(f"afield:tuf_root: larger than {limits.max_tuf_root} bytes")
    try:
        document = json.loads(data)
        kind = document["signed"]["_type"]
    except (ValueError, KeyError, TypeError):
        raise ModuleError("afield:tuf_root: not a TUF root.json (JSON with signed._type)") from None
    if kind != "root":
        raise ModuleError(f"afield:tuf_root: signed._type is {str(kind)[:20]!r}, not 'root'")


def _check_ssh_key(key: str, limits: HandoffLimits) -> None:
    _check_line(key, "afield:ssh_key", limits)
    kind = key.split(" ", 1)[0]
    if not (kind.startswith(("ssh-", "ecdsa-", "sk-")) and " " in key.strip()):
        raise ModuleError(
            "afield:ssh_key: expected one authorized_keys line, e.g. 'ssh-ed25519 AAAA…'"
        )


def _check_name(name: str, limits: HandoffLimits) -> None:
    if not name or len(name) > limits.max_text or "\0" in name or name.endswith("/"):
        raise ModuleError(f"fdo.download:name: {name[:80]!r} is no file name")
    parts = name.split("/")
    if ".." in parts or posixpath.normpath(name) != name:
        raise ModuleError(f"fdo.download:name: {name[:80]!r} must be a normal path without '..'")
    if name.startswith("/") and not name.startswith("/var/"):
        raise ModuleError(
            f"fdo.download:name: {name[:80]!r}: absolute names must be under /var/ "
            "(the part of the device that outlives updates); or give a relative name"
        )


@dataclass
class _Download:
    name: str
    length: int | None = None
    sha384: bytes | None = None
    data: bytearray = field(default_factory=bytearray)


class DeviceModules:
    """The device's side of the owner's service info: call it with each key/value.

    Args:
        limits: what the device accepts (sizes, counts).
    """

    def __init__(self, limits: HandoffLimits | None = None) -> None:
        self.limits = limits or HandoffLimits()
        self._refused: set[str] = set()
        self._afield: dict[str, Any] = {"ssh_key": []}
        self._tuf_root = bytearray()
        self._afield_done = False
        self._download: _Download | None = None
        self._files: list[DownloadFile] = []
        self._received = 0

    def __call__(self, kv: ServiceInfoKV) -> list[ServiceInfoKV]:
        """Take one owner key/value; return the device's answers (maybe none)."""
        try:
            value = kv.value()
        except FdoMessageError as e:
            raise ModuleError(f"{kv.key}: {e}") from None
        if kv.message == "active":
            return self._activate(kv.module, check.boolean(value, kv.key))
        if kv.module in self._refused or kv.module not in SUPPORTED:
            return []
        if kv.module == AFIELD:
            return self._take_afield(kv.message, value)
        if kv.module == DOWNLOAD:
            return self._take_download(kv.message, value)
        return []

    def _activate(self, module: str, active: bool) -> list[ServiceInfoKV]:
        supported = module in SUPPORTED
        if not supported or not active:
            self._refused.add(module)
        return [ServiceInfoKV.of(module, "active", supported and active)]

    def _take_afield(self, message: str, value: Any) -> list[ServiceInfoKV]:
        where = f"{AFIELD}:{message}"
        if self._afield_done:
            raise ModuleError(f"{where}: sent after afield:end")
        if message in ("fleet_url", "enroll_token"):
            self._afield[message] = check.tstr(value, where)
        elif message == "tuf_root_sha384":
            self._afield[message] = check.bstr(value, where, 48)
        elif message == "tuf_root":
            self._tuf_root += check.bstr(value, where)
            if len(self._tuf_root) > self.limits.max_tuf_root:
                raise ModuleError(f"{where}: larger than {self.limits.max_tuf_root} bytes")
        elif message == "ssh_key":
            self._afield["ssh_key"].append(check.tstr(value, where))
        elif message == "end":
            self._finish_afield()
            return [ServiceInfoKV.of(AFIELD, "done", True)]
        # Tolerance: messages of a later afield version are ignored, not refused.
        return []

    def _finish_afield(self) -> None:
        expected = self._afield.get("tuf_root_sha384")
        if self._tuf_root and expected is None:
            raise ModuleError("afield:tuf_root: sent without afield:tuf_root_sha384 first")
        if expected is not None and hashlib.sha384(self._tuf_root).digest() != expected:
            raise ModuleError("afield:tuf_root: SHA-384 does not match afield:tuf_root_sha384")
        self._afield_done = True
        self._partial().check(self.limits)

    def _take_download(self, message: str, value: Any) -> list[ServiceInfoKV]:
        where = f"{DOWNLOAD}:{message}"
        if message == "name":
            if self._download is not None:
                raise ModuleError(f"{where}: a new file before {self._download.name!r} was whole")
            self._download = _Download(check.tstr(value, where))
            _check_name(self._download.name, self.limits)
            return []
        download = self._download
        if download is None:
            raise ModuleError(f"{where}: sent before fdo.download:name")
        if message == "length":
            download.length = check.uint(value, where)
            if self._received + download.length > self.limits.max_file_bytes:
                raise ModuleError(f"{where}: files exceed {self.limits.max_file_bytes} bytes")
        elif message == "sha-384":
            download.sha384 = check.bstr(value, where, 48)
        elif message == "data":
            return self._take_data(download, check.bstr(value, where))
        return []

    def _take_data(self, download: _Download, block: bytes) -> list[ServiceInfoKV]:
        download.data += block
        self._received += len(block)
        if self._received > self.limits.max_file_bytes:
            raise ModuleError(f"fdo.download:data: files exceed {self.limits.max_file_bytes} bytes")
        # Length-prefix mode ends at the announced length; streaming mode at an empty block.
        whole = len(download.data) == download.length if download.length is not None else not block
        if download.length is not None and len(download.data) > download.length:
            raise ModuleError(f"fdo.download:data: more than the {download.length} bytes announced")
        if not whole:
            return []
        if (
            download.sha384 is not None
            and hashlib.sha384(download.data).digest() != download.sha384
        ):
            raise ModuleError(f"fdo.download: {download.name!r}: SHA-384 does not match")
        if len(self._files) >= self.limits.max_files:
            raise ModuleError(f"fdo.download: more than {self.limits.max_files} files")
        self._files.append(DownloadFile(download.name, bytes(download.data)))
        self._download = None
        return [ServiceInfoKV.of(DOWNLOAD, "done", len(download.data))]

    def _partial(self) -> Handoff:
        return Handoff(
            fleet_url=self._afield.get("fleet_url"),
            enrollment_token=self._afield.get("enroll_token"),
            tuf_root=bytes(self._tuf_root) if self._tuf_root else None,
            ssh_keys=tuple(self._afield["ssh_key"]),
            files=tuple(self._files),
        )

    def handoff(self) -> Handoff:
        """What the owner gave, checked; raises :class:`ModuleError` if a transfer is unfinished."""
        if self._download is not None:
            raise ModuleError(f"fdo.download: {self._download.name!r} arrived incomplete")
        if AFIELD not in self._refused and self._afield_started() and not self._afield_done:
            raise ModuleError("afield: the owner never sent afield:end")
        return self._partial().check(self.limits)

    def _afield_started(self) -> bool:
        return (
            bool(self._tuf_root)
            or any(k in self._afield for k in ("fleet_url", "enroll_token", "tuf_root_sha384"))
            or bool(self._afield["ssh_key"])
        )
