"""The TUF metadata of an update repository, written with python-tuf's Metadata API.

A metadata directory (``DIR/tuf`` of an afield repository) holds ``root.json`` and one
``N.root.json`` per root version, and unversioned ``targets.json``, ``snapshot.json`` and
``timestamp.json`` (no consistent snapshots). :class:`MetadataRepository` creates it, adds
release targets, re-signs timestamp and snapshot before they expire, and rotates role keys: a new
root version signed by the old and the new root keys, then the metadata the rotated key signs.
Snapshot records targets' version, length and sha256, and timestamp does the same for snapshot,
so a client can tell metadata files of different states apart. Every write is atomic
(temporary file, fsync, rename), targets before snapshot before timestamp, under a lock file.

What it leaves to others: which commits become releases and release policy such as anti-rollback
at the source (:mod:`afield.release`), verifying metadata on a device (:mod:`afield.trust.client`),
keeping private keys (:mod:`afield.trust.keys`).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from securesystemslib.signer import Signer
from tuf.api.exceptions import LengthOrHashMismatchError, UnsignedMetadataError
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, Targets, Timestamp
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from afield.errors import TrustError
from afield.trust.keys import ROLES, Keyring
from afield.trust.targets import ReleaseTarget

__all__ = ["Expiries", "MetadataRepository", "RefreshResult", "parse_duration"]

T = TypeVar("T", Root, Targets, Snapshot, Timestamp)
_SPEC_VERSION = "1.0.31"
_DURATION = re.compile(r"([1-9][0-9]*)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
# What must be re-signed after a role's keys change (root rotation itself is signed apart).
_RESIGN: dict[str, tuple[str, ...]] = {
    "root": (),
    "targets": ("targets", "snapshot", "timestamp"),
    "snapshot": ("snapshot", "timestamp"),
    "timestamp": ("timestamp",),
}


def parse_duration(text: str, option: str) -> dt.timedelta:
    """Parse a duration such as ``12h``, ``1d``, ``90d`` or ``2w`` given for ``option``."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        error = TrustError(
            f"{option} {text!r}: expected a number and a unit (s, m, h, d or w), e.g. 1d or 12h"
        )
        error.user_error = True
        raise error
    return dt.timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


@dataclass(frozen=True)
class Expiries:
    """How long each role's metadata stays valid after it is signed."""

    root: dt.timedelta = dt.timedelta(days=365)
    targets: dt.timedelta = dt.timedelta(days=90)
    snapshot: dt.timedelta = dt.timedelta(days=7)
    timestamp: dt.timedelta = dt.timedelta(days=1)

    def of(self, role: str) -> dt.timedelta:
        """The validity period of ``role``."""
        period: dt.timedelta = getattr(self, role)
        return period


@dataclass(frozen=True)
class RefreshResult:
    """What a refresh re-signed (role -> new version) and what still needs someone's attention."""

    resigned: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


def _now(now: dt.datetime | None) -> dt.datetime:
    return (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)


def _serialize(md: Metadata[Any]) -> bytes:
    return md.to_bytes(JSONSerializer(compact=False)) + b"\n"


def _write_atomic(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    with open(temp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    temp.replace(path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(directory: Path, role: str, cls: type[T]) -> tuple[Metadata[T], bytes]:
    path = directory / f"{role}.json"
    try:
        data = path.read_bytes()
        md: Metadata[Any] = Metadata.from_bytes(data)
    except FileNotFoundError:
        error = TrustError(
            f"{path}: missing; create the repository's metadata with `afield release init`"
        )
        error.user_error = True
        raise error from None
    except (OSError, DeserializationError) as e:
        raise TrustError(f"{path}: cannot read TUF metadata: {e}") from e
    if not isinstance(md.signed, cls):
        raise TrustError(f"{path}: holds {md.signed.type} metadata, not {role}")
    return cast(Metadata[T], md), data


class MetadataRepository:
    """The four top-level metadata files of one repository, loaded and verified.

    Use :meth:`create`, :meth:`open` or :meth:`edit` (open under the repository's lock).
    """

    def __init__(
        self,
        directory: Path,
        root: Metadata[Root],
        targets: Metadata[Targets],
        snapshot: Metadata[Snapshot],
        timestamp: Metadata[Timestamp],
    ) -> None:
        self.directory = directory
        self.root = root
        self.targets = targets
        self.snapshot = snapshot
        self.timestamp = timestamp

    # -- creating and opening -------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: Path,
        keyring: Keyring,
        *,
        expiries: Expiries | None = None,
        now: dt.datetime | None = None,
    ) -> MetadataRepository:
        """Write version 1 of root (``1.root.json``), empty targets, snapshot and timestamp.

        Raises:
            TrustError: ``directory`` already has a ``root.json`` (a user error), or the keyring
                lacks a private key that must sign.
        """
        expiries = expiries or Expiries()
        if (directory / "root.json").exists():
            error = TrustError(
                f"{directory / 'root.json'}: already exists; refusing to start a new root of "
                "trust over it (rotate keys with `afield keys rotate` instead)"
            )
            error.user_error = True
            raise error
        stamp = _now(now)
        root = Root(
            version=1,
            spec_version=_SPEC_VERSION,
            expires=stamp + expiries.root,
            consistent_snapshot=False,
        )
        for role in ROLES:
            for key in keyring.keys(role):
                root.add_key(key, role)
            root.roles[role].threshold = keyring.threshold(role)
        repo = cls(
            directory,
            Metadata(root),
            Metadata(Targets(1, _SPEC_VERSION, stamp + expiries.targets)),
            Metadata(Snapshot(1, _SPEC_VERSION, stamp + expiries.snapshot)),
            Metadata(Timestamp(1, _SPEC_VERSION, stamp + expiries.timestamp, MetaFile(1))),
        )
        with _locked(directory):
            repo._sign_root(keyring.signers("root"), previous=None)
            repo._write_root()
            repo._sign_chain(keyring, ("targets", "snapshot", "timestamp"), expiries, stamp, bump=0)
        return repo

    @classmethod
    def open(cls, directory: Path) -> MetadataRepository:
        """Load the metadata and check it: signatures against root, and the hash chain.

        Raises:
            TrustError: a file is missing or malformed, a signature threshold is not met, or
                snapshot/timestamp do not describe the targets/snapshot files next to them.
        """
        root, _ = _read(directory, "root", Root)
        targets, targets_bytes = _read(directory, "targets", Targets)
        snapshot, snapshot_bytes = _read(directory, "snapshot", Snapshot)
        timestamp, _ = _read(directory, "timestamp", Timestamp)
        repo = cls(directory, root, targets, snapshot, timestamp)
        repo._verify(root, "root")
        for md in (targets, snapshot, timestamp):
            repo._verify(md, md.signed.type)
        try:
            snapshot.signed.meta["targets.json"].verify_length_and_hashes(targets_bytes)
            timestamp.signed.snapshot_meta.verify_length_and_hashes(snapshot_bytes)
        except (KeyError, LengthOrHashMismatchError) as e:
            raise TrustError(
                f"{directory}: targets.json, snapshot.json and timestamp.json do not describe "
                f"each other (an interrupted write or tampering): {e}"
            ) from e
        return repo

    @classmethod
    @contextmanager
    def edit(cls, directory: Path) -> Iterator[MetadataRepository]:
        """Open the repository while holding its lock, so two publishers never interleave."""
        if not (directory / "root.json").is_file():
            cls.open(directory)  # raises the error that says how to create the metadata
        with _locked(directory):
            yield cls.open(directory)

    # -- reading --------------------------------------------------------------------------------

    def releases(self) -> list[ReleaseTarget]:
        """Every release target in ``targets.json``, in path order."""
        return [
            ReleaseTarget.from_target_file(t)
            for _, t in sorted(self.targets.signed.targets.items())
        ]

    def status(self) -> dict[str, dict[str, Any]]:
        """Per role: version and expiry (ISO 8601, UTC)."""
        return {
            md.signed.type: {
                "version": md.signed.version,
                "expires": md.signed.expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            for md in (self.root, self.targets, self.snapshot, self.timestamp)
        }

    # -- changing -------------------------------------------------------------------------------

    def add_release(
        self,
        release: ReleaseTarget,
        keyring: Keyring,
        *,
        expiries: Expiries | None = None,
        now: dt.datetime | None = None,
    ) -> None:
        """Add ``release`` as a target; sign and write new targets, snapshot and timestamp.

        Raises:
            TrustError: the target path is already published, or a key is missing.
        """
        if release.path in self.targets.signed.targets:
            error = TrustError(f"{release.path}: already published; a commit is released once")
            error.user_error = True
            raise error
        self.targets.signed.targets[release.path] = release.to_target_file()
        try:
            self._sign_chain(
                keyring, ("targets", "snapshot", "timestamp"), expiries or Expiries(), _now(now)
            )
        except TrustError:
            del self.targets.signed.targets[release.path]
            raise

    def refresh(
        self,
        keyring: Keyring,
        *,
        expiries: Expiries | None = None,
        now: dt.datetime | None = None,
    ) -> RefreshResult:
        """Re-sign timestamp with a fresh expiry, and snapshot and targets when half spent.

        Snapshot is re-signed once less than half of its period is left; targets too when the
        targets key is here (else a note says when it expires). Root is never re-signed here:
        a note warns when it is within half of its period.
        """
        expiries = expiries or Expiries()
        stamp = _now(now)
        notes: list[str] = []

        def stale(md: Metadata[Any], role: str) -> bool:
            left: dt.timedelta = md.signed.expires - stamp
            return left < expiries.of(role) / 2

        roles: list[str] = []
        if stale(self.targets, "targets"):
            try:
                keyring.signers("targets")
                roles.append("targets")
            except TrustError:
                notes.append(
                    f"targets.json expires {self.targets.signed.expires:%Y-%m-%d %H:%M}Z; "
                    "publish or refresh with the targets key before then"
                )
        if roles or stale(self.snapshot, "snapshot"):
            roles.append("snapshot")
        roles.append("timestamp")
        if stale(self.root, "root"):
            notes.append(
                f"root.json expires {self.root.signed.expires:%Y-%m-%d %H:%M}Z; "
                "rotate a key (`afield keys rotate`) to sign a new root version before then"
            )
        self._sign_chain(keyring, tuple(roles), expiries, stamp)
        return RefreshResult(
            resigned={r: self._metadata(r).signed.version for r in roles}, notes=tuple(notes)
        )

    def rotate(
        self,
        keyring: Keyring,
        role: str,
        *,
        keyid: str | None = None,
        expiries: Expiries | None = None,
        now: dt.datetime | None = None,
    ) -> dict[str, Any]:
        """Give ``role`` new keys: a new root version signed by the old and the new root keys.

        The key directory is saved (new keys in, old keys to ``retired/``) only once the new
        root verifies against both the previous root and itself. Then the metadata the role
        signs is re-signed with the new key, and snapshot and timestamp after it. If the new
        root does not verify, nothing is written and ``keyring`` must be loaded again.

        Returns:
            A JSON-ready summary: role, removed and added key ids, the new root version.
        """
        expiries = expiries or Expiries()
        stamp = _now(now)
        old_signers = keyring.signers("root")
        previous = self.root
        removed, added = keyring.rotate(role, keyid)
        self.root = deepcopy(previous)
        root = self.root.signed
        for key in removed:
            root.revoke_key(key.keyid, role)
        for key in added:
            root.add_key(key, role)
        root.version += 1
        root.expires = stamp + expiries.root
        new_signers = keyring.signers("root") if role == "root" else []
        try:
            self._sign_root(old_signers + new_signers, previous=previous.signed)
        except TrustError:
            self.root = previous
            raise
        keyring.save()
        self._write_root()
        chain = _RESIGN[role]
        if chain:
            self._sign_chain(keyring, chain, expiries, stamp)
        return {
            "role": role,
            "removed": [k.keyid for k in removed],
            "added": [k.keyid for k in added],
            "root_version": root.version,
            "resigned": list(chain),
        }

    # -- signing and writing --------------------------------------------------------------------

    def _metadata(self, role: str) -> Metadata[Any]:
        md: Metadata[Any] = getattr(self, role)
        return md

    def _verify(self, md: Metadata[Any], role: str, root: Root | None = None) -> None:
        delegator = root or self.root.signed
        try:
            delegator.verify_delegate(role, md.signed_bytes, md.signatures)
        except UnsignedMetadataError as e:
            raise TrustError(
                f"{self.directory / (role + '.json')}: signature threshold check failed against "
                f"root v{delegator.version}: {e}"
            ) from e

    def _sign_root(self, signers: list[Signer], previous: Root | None) -> None:
        self.root.signatures.clear()
        for signer in signers:
            self.root.sign(signer, append=True)
        if previous is not None:
            self._verify(self.root, "root", previous)
        self._verify(self.root, "root")

    def _write_root(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        data = _serialize(self.root)
        _write_atomic(self.directory / f"{self.root.signed.version}.root.json", data)
        _write_atomic(self.directory / "root.json", data)

    def _sign_chain(
        self,
        keyring: Keyring,
        roles: tuple[str, ...],
        expiries: Expiries,
        stamp: dt.datetime,
        bump: int = 1,
    ) -> None:
        """Sign ``roles`` (a suffix-closed part of targets -> snapshot -> timestamp) and write.

        Nothing is written unless every role signs and verifies; on failure the roles' metadata
        in memory is as it was.
        """
        signers = {role: keyring.signers(role) for role in roles}
        for role in roles:
            trusted = set(self.root.signed.roles[role].keyids)
            for signer in signers[role]:
                if signer.public_key.keyid not in trusted:
                    raise TrustError(
                        f"{keyring.directory}: {role} key {signer.public_key.keyid[:16]} is not "
                        f"a {role} key of root v{self.root.signed.version}; the key directory "
                        "and the repository disagree"
                    )
        before = {role: deepcopy(self._metadata(role)) for role in roles}
        try:
            written = self._sign_roles(roles, signers, expiries, stamp, bump)
        except TrustError:
            for role, md in before.items():
                setattr(self, role, md)
            raise
        self.directory.mkdir(parents=True, exist_ok=True)
        for role, data in written.items():
            _write_atomic(self.directory / f"{role}.json", data)

    def _sign_roles(
        self,
        roles: tuple[str, ...],
        signers: dict[str, list[Signer]],
        expiries: Expiries,
        stamp: dt.datetime,
        bump: int,
    ) -> dict[str, bytes]:
        written: dict[str, bytes] = {}
        for role in roles:
            md = self._metadata(role)
            md.signed.version += bump
            md.signed.expires = stamp + expiries.of(role)
            if role == "snapshot" and "targets" in written:
                self.snapshot.signed.meta["targets.json"] = MetaFile.from_data(
                    self.targets.signed.version, written["targets"], ["sha256"]
                )
            if role == "timestamp" and "snapshot" in written:
                self.timestamp.signed.snapshot_meta = MetaFile.from_data(
                    self.snapshot.signed.version, written["snapshot"], ["sha256"]
                )
            md.signatures.clear()
            for signer in signers[role]:
                md.sign(signer, append=True)
            self._verify(md, role)
            written[role] = _serialize(md)
        return written


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
