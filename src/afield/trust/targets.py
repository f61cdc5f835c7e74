"""What a release target says: the custom fields afield puts on a TUF target, and version order.

A release is a TUF target whose file is an OSTree commit object (``ostree/objects/xx/yyyy….commit``
relative to the afield repository), so its sha256 is the commit checksum. Its ``custom`` field holds
what a device chooses by: ``image``, ``arch``, ``version``, ``ref``, ``channel`` and the static
``deltas`` available to it. :class:`ReleaseTarget` converts explicitly to and from python-tuf's
``TargetFile`` and checks its invariants in the constructor; unknown custom fields are kept.

Versions are dot-separated numbers (``1.0.0``, as blueprints write them) and compare numerically;
both the publisher (no older release on the same channel) and the device (no update to an older
version) use :func:`version_key` for anti-rollback.

What it leaves to others: signing and storing targets (:mod:`afield.trust.repository`), verifying
them (:mod:`afield.trust.client`), reading commits (:mod:`afield.release`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tuf.api.metadata import TargetFile

from afield.errors import TrustError

__all__ = ["ReleaseTarget", "commit_target_path", "version_key"]

_VERSION = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_CHECKSUM = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_KNOWN = frozenset({"image", "arch", "version", "ref", "channel", "deltas"})


def version_key(version: str) -> tuple[int, ...]:
    """The sort key of a release version: its numbers, trailing zeros dropped (1.0 == 1.0.0).

    Raises:
        TrustError: ``version`` is not dot-separated numbers without leading zeros (a user error).
    """
    if not _VERSION.fullmatch(version):
        error = TrustError(
            f"version {version!r}: expected dot-separated numbers without leading zeros, e.g. 1.0.0"
        )
        error.user_error = True
        raise error
    numbers = [int(part) for part in version.split(".")]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)


def commit_target_path(checksum: str) -> str:
    """The target path of a commit: its object file relative to the afield repository."""
    if not _CHECKSUM.fullmatch(checksum):
        raise TrustError(f"{checksum!r} is not an OSTree commit checksum (64 hex digits)")
    return f"ostree/objects/{checksum[:2]}/{checksum[2:]}.commit"


def _name(value: Any, what: str, path: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise TrustError(
            f"target {path}: custom field {what} must be a name of letters, digits, '.', '_' "
            f"or '-', got {value!r}"
        )
    return value


@dataclass(frozen=True)
class ReleaseTarget:
    """One published release: a commit object signed as a TUF target, with afield's fields.

    Args:
        path: the target path, ``ostree/objects/xx/yyyy….commit``.
        length: the commit object's size in bytes.
        sha256: the commit object's sha256, which is the OSTree commit checksum.
        image: the image name (``afield.image`` in the commit).
        arch: the architecture (``afield.arch`` in the commit).
        version: the release version, dot-separated numbers.
        channel: the channel devices follow, e.g. ``stable``.
        ref: the OSTree ref the commit was published from, if any.
        deltas: static deltas a device may use to reach this commit (filled by a later step).
        extra: custom fields afield does not know, kept as they are.

    Raises:
        TrustError: a field breaks an invariant (path not the commit's object, bad version...).
    """

    path: str
    length: int
    sha256: str
    image: str
    arch: str
    version: str
    channel: str
    ref: str | None = None
    deltas: tuple[Mapping[str, Any], ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if commit_target_path(self.sha256) != self.path:
            raise TrustError(
                f"target {self.path}: path is not the object of commit {self.sha256}; "
                f"expected {commit_target_path(self.sha256)}"
            )
        if self.length <= 0:
            raise TrustError(f"target {self.path}: length must be positive, got {self.length}")
        for what in ("image", "arch", "channel"):
            _name(getattr(self, what), what, self.path)
        try:
            version_key(self.version)
        except TrustError as e:
            raise TrustError(f"target {self.path}: {e}") from None

    @property
    def commit(self) -> str:
        """The OSTree commit checksum (the sha256 of the commit object)."""
        return self.sha256

    @property
    def version_key(self) -> tuple[int, ...]:
        """This release's position in version order."""
        return version_key(self.version)

    def to_target_file(self) -> TargetFile:
        """The python-tuf ``TargetFile`` that carries this release in ``targets.json``."""
        custom: dict[str, Any] = dict(self.extra)
        custom.update(
            image=self.image,
            arch=self.arch,
            version=self.version,
            channel=self.channel,
            ref=self.ref,
            deltas=[dict(d) for d in self.deltas],
        )
        return TargetFile(
            length=self.length,
            hashes={"sha256": self.sha256},
            path=self.path,
            unrecognized_fields={"custom": custom},
        )

    @classmethod
    def from_target_file(cls, target: TargetFile) -> ReleaseTarget:
        """Read a release back from a verified ``TargetFile``.

        Raises:
            TrustError: the target lacks a sha256 or afield's custom fields.
        """
        custom = target.custom
        if not isinstance(custom, Mapping):
            raise TrustError(f"target {target.path}: no custom fields; not an afield release")
        sha256 = target.hashes.get("sha256")
        if sha256 is None:
            raise TrustError(f"target {target.path}: no sha256 hash")
        missing = sorted(k for k in ("image", "arch", "version", "channel") if k not in custom)
        if missing:
            raise TrustError(f"target {target.path}: custom fields missing: {', '.join(missing)}")
        deltas = custom.get("deltas", [])
        if not isinstance(deltas, list) or not all(isinstance(d, Mapping) for d in deltas):
            raise TrustError(f"target {target.path}: custom field deltas must be a list of objects")
        ref = custom.get("ref")
        if ref is not None and not isinstance(ref, str):
            raise TrustError(f"target {target.path}: custom field ref must be a string")
        version = custom["version"]
        if not isinstance(version, str):
            raise TrustError(f"target {target.path}: custom field version must be a string")
        return cls(
            path=target.path,
            length=target.length,
            sha256=sha256,
            image=custom["image"],
            arch=custom["arch"],
            version=version,
            channel=custom["channel"],
            ref=ref,
            deltas=tuple(deltas),
            extra={k: v for k, v in custom.items() if k not in _KNOWN},
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``afield release ls --json`` prints per release)."""
        return {
            "path": self.path,
            "length": self.length,
            "commit": self.sha256,
            "image": self.image,
            "arch": self.arch,
            "version": self.version,
            "channel": self.channel,
            "ref": self.ref,
            "deltas": [dict(d) for d in self.deltas],
        }
