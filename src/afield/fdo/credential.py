"""The device credential: what DI leaves on the device and TO2 replaces.

The layout follows the specification's (informative) DeviceCredential:
``[DCActive: bool, DCProtVer, DCHmacSecret: bstr, DCDeviceInfo: tstr, DCGuid, DCRVInfo,
DCPubKeyHash: Hash]`` where DCPubKeyHash is the hash of the CBOR of the manufacturer's (later:
the owner's) PublicKey. The device's private key is stored apart from it.

:meth:`DeviceCredential.from_rs_cbor` also reads fido-device-onboard-rs's file format
(``[active, protver, device_info, guid, rvinfo, pubkey_hash, {"Plain": {"hmac_secret": [...],
"private_key": [...]}}]``), as written by ``fdo-owner-tool initialize-device``.

What it leaves to others: storing it (mode 0600 under ``/var/lib/afield``, the device agent).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from afield.fdo import _check as check
from afield.fdo._errors import FdoMessageError
from afield.fdo.cbor import encode
from afield.fdo.rendezvous import RendezvousInfo
from afield.fdo.types import PROTOCOL_VERSION, Guid, Hash, PublicKey

__all__ = ["DeviceCredential"]


@dataclass(frozen=True)
class DeviceCredential:
    """The device's FDO credential."""

    active: bool
    hmac_secret: bytes
    device_info: str
    guid: Guid
    rv_info: RendezvousInfo
    public_key_hash: Hash
    protocol_version: int = PROTOCOL_VERSION

    def owner_key_matches(self, key: PublicKey) -> bool:
        """Whether ``key`` is the one DCPubKeyHash names (the voucher's manufacturer key)."""
        return self.public_key_hash.matches(encode(key.to_cbor()))

    def to_cbor(self) -> list[Any]:
        """The specification's DeviceCredential array."""
        return [
            self.active,
            self.protocol_version,
            self.hmac_secret,
            self.device_info,
            self.guid.to_cbor(),
            self.rv_info.to_cbor(),
            self.public_key_hash.to_cbor(),
        ]

    @classmethod
    def from_cbor(cls, value: Any, where: str = "DeviceCredential") -> DeviceCredential:
        """Parse the specification's layout."""
        f = check.array(value, where, 7)
        return cls(
            active=check.boolean(f[0], f"{where}[0]"),
            protocol_version=check.uint(f[1], f"{where}[1]", 16),
            hmac_secret=check.bstr(f[2], f"{where}[2]"),
            device_info=check.tstr(f[3], f"{where}[3]"),
            guid=Guid.from_cbor(f[4], f"{where}[4]"),
            rv_info=RendezvousInfo.from_cbor(f[5], f"{where}[5]"),
            public_key_hash=Hash.from_cbor(f[6], f"{where}[6]"),
        )

    @classmethod
    def from_rs_cbor(cls, value: Any, where: str = "DeviceCredential") -> DeviceCredential:
        """Parse fido-device-onboard-rs's credential file (plain key storage only)."""
        f = check.array(value, where, 7)
        storage = check.mapping(f[6], f"{where}[6]")
        plain = check.mapping(storage.get("Plain"), f"{where}[6].Plain")
        secret = plain.get("hmac_secret")
        # serde writes Vec<u8> as an array of small integers.
        if isinstance(secret, list) and all(
            isinstance(b, int) and not isinstance(b, bool) and 0 <= b < 256 for b in secret
        ):
            secret = bytes(secret)
        if not isinstance(secret, bytes):
            raise FdoMessageError("hmac_secret is not bytes", where=f"{where}[6]")
        return cls(
            active=check.boolean(f[0], f"{where}[0]"),
            protocol_version=check.uint(f[1], f"{where}[1]", 16),
            hmac_secret=secret,
            device_info=check.tstr(f[2], f"{where}[2]"),
            guid=Guid.from_cbor(f[3], f"{where}[3]"),
            rv_info=RendezvousInfo.from_cbor(f[4], f"{where}[4]"),
            public_key_hash=Hash.from_cbor(f[5], f"{where}[5]"),
        )
