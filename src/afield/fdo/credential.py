"""What DI exchanges: DeviceMfgInfo (the device to the manufacturer) and the device credential
(what DI leaves on the device and TO2 replaces).

DeviceMfgInfo is left to implementations by the specification (``bstr .cbor any``). afield
reads and sends the array of the Intel C and Java clients and go-fdo, ``[KeyType, KeyEncoding,
SerialNumber: tstr, DeviceInfo: tstr, CSR: bstr (DER PKCS#10), ...]``; tolerances for older
forms are noted where they are read. fido-device-onboard-rs sends a bare text string and takes
the device key from its DIUN session or a key store; afield has neither, so that form is
refused with a message saying what is needed.

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

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from afield.fdo import _check as check
from afield.fdo._errors import FdoMessageError
from afield.fdo.cbor import encode
from afield.fdo.rendezvous import RendezvousInfo
from afield.fdo.types import PROTOCOL_VERSION, Guid, Hash, KeyEncoding, KeyType, PublicKey

__all__ = ["DeviceCredential", "DeviceMfgInfo"]

_WHERE = "DeviceMfgInfo"


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


@dataclass(frozen=True)
class DeviceMfgInfo:
    """What a device tells the manufacturer in DI.AppStart."""

    key_type: int
    key_encoding: int
    serial_number: str
    device_info: str
    csr: x509.CertificateSigningRequest

    @classmethod
    def for_key(
        cls, key: ec.EllipticCurvePrivateKey, serial_number: str, device_info: str
    ) -> DeviceMfgInfo:
        """What a device with ``key`` sends: a CSR signed by the key proves it holds it."""
        strong = key.curve.key_size >= 384
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, serial_number)]))
            .sign(key, hashes.SHA384() if strong else hashes.SHA256())
        )
        key_type = KeyType.SECP384R1 if strong else KeyType.SECP256R1
        return cls(int(key_type), int(KeyEncoding.X509), serial_number, device_info, csr)

    def to_cbor(self) -> list[Any]:
        """``[KeyType, KeyEncoding, SerialNumber, DeviceInfo, CSR (DER)]``."""
        der = self.csr.public_bytes(serialization.Encoding.DER)
        return [self.key_type, self.key_encoding, self.serial_number, self.device_info, der]

    @classmethod
    def from_cbor(cls, value: Any) -> DeviceMfgInfo:
        """Parse the decoded DeviceMfgInfo (see the module docstring for the forms read)."""
        if isinstance(value, str) or value is None:
            raise FdoMessageError(
                "carries no device key: afield needs [KeyType, KeyEncoding, SerialNumber, "
                "DeviceInfo, CSR] (a text DeviceMfgInfo needs DIUN, which afield does not run)",
                where=_WHERE,
            )
        fields = check.array(value, _WHERE, minimum=4)
        # Tolerance: the Intel C client's early form has no KeyEncoding
        # ([KeyType, SerialNumber, DeviceInfo, CSR]); X509 is assumed.
        if isinstance(fields[1], str):
            fields = [fields[0], int(KeyEncoding.X509), *fields[1:]]
        # Tolerance: go-fdo before 2024 sent KeyHashAlg after KeyEncoding; it is skipped.
        elif len(fields) >= 6 and isinstance(fields[2], int) and not isinstance(fields[2], bool):
            fields = [*fields[:2], *fields[3:]]
        if len(fields) < 5:
            raise FdoMessageError("expected at least 5 elements", where=_WHERE)
        # Elements after the CSR (OnDie ECDSA chain, test signature, MAROE prefix) are
        # deprecated and ignored.
        der = check.bstr(fields[4], f"{_WHERE}[4]")
        try:
            csr = x509.load_der_x509_csr(der)
        except ValueError:
            raise FdoMessageError("the CSR is not DER PKCS#10", where=f"{_WHERE}[4]") from None
        return cls(
            key_type=check.uint(fields[0], f"{_WHERE}[0]", 8),
            key_encoding=check.uint(fields[1], f"{_WHERE}[1]", 8),
            serial_number=check.tstr(fields[2], f"{_WHERE}[2]"),
            device_info=check.tstr(fields[3], f"{_WHERE}[3]"),
            csr=csr,
        )
