"""TUF role keys on disk: ed25519 private keys as PEM files and a ``keys.json`` index.

A key directory holds one PKCS#8 PEM file per private key (mode 0600, named ``<role>-<keyid
prefix>.pem``) and ``keys.json``, which maps each top-level role (root, targets, snapshot,
timestamp) to its threshold and keys (key id, file name, public key). A private key file may be
missing: root keys are meant to live offline, so a server's key directory may hold only the
timestamp key; :meth:`Keyring.signers` then says which role cannot be signed. Rotated keys move
to ``retired/`` and are listed there in the index, never deleted.

What it leaves to others: putting the keys into root metadata and signing with them
(:mod:`afield.trust.repository`); hardware keys and KMS signers (a later step can add other
securesystemslib signers behind the same :meth:`Keyring.signers`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, Key, Signer, SSlibKey

from afield.errors import TrustError

__all__ = ["ROLES", "Keyring"]

ROLES = ("root", "targets", "snapshot", "timestamp")
INDEX = "keys.json"
FORMAT = "afield-keys/1"


def _user_error(message: str) -> TrustError:
    error = TrustError(message)
    error.user_error = True
    return error


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise _user_error(f"unknown role {role!r}: expected one of {', '.join(ROLES)}")


@dataclass
class _KeyEntry:
    """One key of a role: its public half, file name, and the signer when the file is here."""

    public: Key
    file: str
    signer: Signer | None = None
    private_pem: bytes | None = None  # set for keys generated but not yet saved

    @property
    def keyid(self) -> str:
        return self.public.keyid

    def to_dict(self) -> dict[str, Any]:
        return {"keyid": self.keyid, "file": self.file, "public": self.public.to_dict()}


def _generate(role: str) -> _KeyEntry:
    signer = CryptoSigner.generate_ed25519()
    public = signer.public_key
    return _KeyEntry(
        public=public,
        file=f"{role}-{public.keyid[:16]}.pem",
        signer=signer,
        private_pem=signer.private_bytes,
    )


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write a file that must not exist yet, with ``mode`` from its creation on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.unlink(missing_ok=True)
    _write_new(temp, data, mode)
    temp.replace(path)


class Keyring:
    """The keys of the four top-level TUF roles, as kept in one key directory.

    Use :meth:`generate` or :meth:`load`; changes made by :meth:`rotate` stay in memory until
    :meth:`save`, so a caller can sign and verify new metadata before committing to new keys.
    """

    def __init__(
        self,
        directory: Path,
        thresholds: dict[str, int],
        roles: dict[str, list[_KeyEntry]],
        retired: list[dict[str, Any]],
    ) -> None:
        self.directory = directory
        self._thresholds = thresholds
        self._roles = roles
        self._retired = retired
        self._retiring: list[tuple[str, _KeyEntry]] = []

    # -- creating and loading -------------------------------------------------------------------

    @classmethod
    def generate(cls, directory: Path, *, root_threshold: int = 1, root_keys: int = 1) -> Keyring:
        """Generate new keys for every role into ``directory`` and save them.

        Raises:
            TrustError: ``directory`` already holds keys (never overwritten), or the threshold
                is not between 1 and the number of root keys (user errors).
        """
        if root_keys < 1 or not 1 <= root_threshold <= root_keys:
            raise _user_error(
                f"--root-threshold {root_threshold} of --root-keys {root_keys}: the threshold "
                "must be between 1 and the number of root keys"
            )
        if (directory / INDEX).exists() or any(directory.glob("*.pem")):
            raise _user_error(
                f"{directory}: already holds keys ({INDEX} or *.pem); refusing to overwrite "
                "them; use `afield keys rotate` or another directory"
            )
        roles = {
            role: [_generate(role) for _ in range(root_keys if role == "root" else 1)]
            for role in ROLES
        }
        thresholds = {role: root_threshold if role == "root" else 1 for role in ROLES}
        keyring = cls(directory, thresholds, roles, [])
        keyring.save()
        return keyring

    @classmethod
    def load(cls, directory: Path) -> Keyring:
        """Load the key directory; private keys whose files are absent are left unloaded.

        Raises:
            TrustError: there is no ``keys.json``, or it or a key file does not parse.
        """
        index = directory / INDEX
        try:
            data = json.loads(index.read_text())
        except FileNotFoundError:
            raise _user_error(
                f"{index}: no key index; create keys with `afield keys init --dir {directory}`"
            ) from None
        except (OSError, ValueError) as e:
            raise TrustError(f"{index}: cannot read key index: {e}") from e
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise TrustError(f"{index}: not an afield key index (format must be {FORMAT})")
        thresholds: dict[str, int] = {}
        roles: dict[str, list[_KeyEntry]] = {}
        try:
            for role in ROLES:
                spec = data["roles"][role]
                thresholds[role] = int(spec["threshold"])
                roles[role] = [cls._load_entry(directory, e) for e in spec["keys"]]
        except (KeyError, TypeError, ValueError) as e:
            raise TrustError(f"{index}: roles.{role}: malformed entry ({e!r})") from e
        return cls(directory, thresholds, roles, list(data.get("retired", [])))

    @staticmethod
    def _load_entry(directory: Path, entry: dict[str, Any]) -> _KeyEntry:
        public = SSlibKey.from_dict(entry["keyid"], dict(entry["public"]))
        file = str(entry["file"])
        if "/" in file or file.startswith("."):
            raise ValueError(f"key file name {file!r} must be a plain file name")
        path = directory / file
        if not path.exists():
            return _KeyEntry(public=public, file=file)
        try:
            private = load_pem_private_key(path.read_bytes(), password=None)
            signer = CryptoSigner(private, public)
        except (OSError, ValueError, TypeError) as e:
            raise TrustError(f"{path}: cannot load the private key of {public.keyid}: {e}") from e
        return _KeyEntry(public=public, file=file, signer=signer)

    def save(self) -> None:
        """Write new key files, retire rotated ones to ``retired/``, then rewrite the index."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for entries in self._roles.values():
            for entry in entries:
                if entry.private_pem is not None:
                    _write_new(self.directory / entry.file, entry.private_pem, 0o600)
                    entry.private_pem = None
        for role, entry in self._retiring:
            source = self.directory / entry.file
            if source.exists():
                retired = self.directory / "retired"
                retired.mkdir(mode=0o700, exist_ok=True)
                source.replace(retired / entry.file)
            self._retired.append({"role": role, **entry.to_dict()})
        self._retiring.clear()
        index = {
            "format": FORMAT,
            "roles": {
                role: {
                    "threshold": self._thresholds[role],
                    "keyids": [e.keyid for e in self._roles[role]],
                    "keys": [e.to_dict() for e in self._roles[role]],
                }
                for role in ROLES
            },
            "retired": self._retired,
        }
        _write_atomic(
            self.directory / INDEX, (json.dumps(index, indent=2, sort_keys=True) + "\n").encode()
        )

    # -- reading --------------------------------------------------------------------------------

    def threshold(self, role: str) -> int:
        """How many of ``role``'s keys must sign its metadata."""
        _check_role(role)
        return self._thresholds[role]

    def keys(self, role: str) -> list[Key]:
        """The public keys of ``role``."""
        _check_role(role)
        return [e.public for e in self._roles[role]]

    def keyids(self, role: str) -> list[str]:
        """The key ids of ``role``."""
        return [k.keyid for k in self.keys(role)]

    def signers(self, role: str) -> list[Signer]:
        """Signers for every private key of ``role`` present in the key directory.

        Raises:
            TrustError: none of ``role``'s private keys is here (kept offline, or never had).
        """
        _check_role(role)
        signers = [e.signer for e in self._roles[role] if e.signer is not None]
        if not signers:
            raise TrustError(
                f"{self.directory}: no private key for the {role} role "
                f"(key ids {', '.join(k[:16] for k in self.keyids(role))}); "
                f"bring the {role} key online or sign where it is kept"
            )
        return signers

    # -- rotating -------------------------------------------------------------------------------

    def rotate(self, role: str, keyid: str | None = None) -> tuple[list[Key], list[Key]]:
        """Replace ``role``'s keys (or only ``keyid``) with new ones, in memory until :meth:`save`.

        Returns:
            The removed public keys and the added ones.

        Raises:
            TrustError: ``keyid`` is not one of ``role``'s keys (a user error).
        """
        _check_role(role)
        entries = self._roles[role]
        if keyid is None:
            old = list(entries)
        else:
            old = [e for e in entries if e.keyid == keyid or e.keyid.startswith(keyid)]
            if len(old) != 1:
                raise _user_error(
                    f"--key {keyid}: not exactly one {role} key has that id; {role} keys: "
                    f"{', '.join(self.keyids(role))}"
                )
        new = [_generate(role) for _ in old]
        self._roles[role] = [e for e in entries if e not in old] + new
        self._retiring.extend((role, e) for e in old)
        return [e.public for e in old], [e.public for e in new]

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary: per role the threshold, key ids and whether each key is here."""
        return {
            role: {
                "threshold": self._thresholds[role],
                "keys": [
                    {"keyid": e.keyid, "file": e.file, "private": e.signer is not None}
                    for e in self._roles[role]
                ],
            }
            for role in ROLES
        }
