"""Ownership vouchers: create (manufacturer), extend (transfer), verify, and PEM/CBOR forms.

::

    OwnershipVoucher = [OVProtVer, OVHeaderTag: bstr .cbor OVHeader, OVHeaderHMac: HMac,
                        OVDevCertChain: X5CHAIN / null, OVEntryArray: [* OVEntry]]
    OVHeader = [OVHProtVer, OVGuid, OVRVInfo, OVDeviceInfo: tstr, OVPubKey (manufacturer),
                OVDevCertChainHash: Hash / null]
    OVEntry = COSE_Sign1 (tagged) of OVEntryPayload = [OVEHashPrevEntry: Hash,
                OVEHashHdrInfo: Hash, OVEExtra: null / bstr .cbor {* int => bstr},
                OVEPubKey: PublicKey]

The hash chain, as go-fdo and fido-device-onboard-rs compute it: entry 0's OVEHashPrevEntry is
the hash of the OVHeader bytes (the content of OVHeaderTag) followed by the CBOR of
OVHeaderHMac; entry n's is the hash of entry n-1's tagged COSE_Sign1 as encoded in the voucher.
OVEHashHdrInfo is the hash of GUID (16 bytes) || DeviceInfo (UTF-8). OVDevCertChainHash is the
hash of the concatenated DER certificates. Entry n is signed by the key of entry n-1 (entry 0
by the manufacturer key); every entry uses the hash type of entry 0.

What it leaves to others: storing vouchers, trusting manufacturer keys (the rendezvous
server's configuration), the device's credential (:mod:`afield.fdo.credential`).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from afield.fdo import _check as check
from afield.fdo._errors import FdoMessageError, VerifyError, VoucherError
from afield.fdo.cbor import Limits, RawCbor, decode, encode
from afield.fdo.cose import Sign1, SigningKey
from afield.fdo.rendezvous import RendezvousInfo
from afield.fdo.types import (
    PROTOCOL_VERSION,
    Guid,
    Hash,
    HashAlg,
    PublicKey,
    PublicKeyType,
)

__all__ = [
    "EntryChain",
    "OVEntryPayload",
    "OVHeader",
    "Voucher",
    "cert_chain_hash",
    "header_info_hash",
]

PEM_LABEL = "OWNERSHIP VOUCHER"


def header_info_hash(alg: HashAlg, guid: Guid, device_info: str) -> Hash:
    """OVEHashHdrInfo: hash of GUID || DeviceInfo."""
    return Hash.of(alg, guid.value, device_info.encode("utf-8"))


def cert_chain_hash(alg: HashAlg, chain: list[bytes]) -> Hash:
    """OVDevCertChainHash: hash of the concatenated DER certificates."""
    return Hash.of(alg, *chain)


@dataclass(frozen=True)
class OVHeader:
    """The voucher header the manufacturer writes at DI; the device MACs its encoding."""

    guid: Guid
    rv_info: RendezvousInfo
    device_info: str
    manufacturer_key: PublicKey
    cert_chain_hash: Hash | None
    protocol_version: int = PROTOCOL_VERSION

    def to_cbor(self) -> list[Any]:
        """``OVHeader``."""
        return [
            self.protocol_version,
            self.guid.to_cbor(),
            self.rv_info.to_cbor(),
            self.device_info,
            self.manufacturer_key.to_cbor(),
            None if self.cert_chain_hash is None else self.cert_chain_hash.to_cbor(),
        ]

    @classmethod
    def from_cbor(cls, value: Any, where: str = "OVHeader") -> OVHeader:
        """Parse an OVHeader."""
        fields = check.array(value, where, 6)
        return cls(
            protocol_version=check.uint(fields[0], f"{where}[0]", 16),
            guid=Guid.from_cbor(fields[1], f"{where}[1]"),
            rv_info=RendezvousInfo.from_cbor(fields[2], f"{where}[2]"),
            device_info=check.tstr(fields[3], f"{where}[3]"),
            manufacturer_key=PublicKey.from_cbor(fields[4], f"{where}[4]"),
            cert_chain_hash=None if fields[5] is None else Hash.from_cbor(fields[5], f"{where}[5]"),
        )


@dataclass(frozen=True)
class OVEntryPayload:
    """What one voucher entry signs: the chain hashes and the next owner's key."""

    prev_hash: Hash
    header_hash: Hash
    extra: bytes | None
    public_key: PublicKey

    def to_cbor(self) -> list[Any]:
        """``OVEntryPayload``."""
        return [
            self.prev_hash.to_cbor(),
            self.header_hash.to_cbor(),
            self.extra,
            self.public_key.to_cbor(),
        ]

    @classmethod
    def from_cbor(cls, value: Any, where: str = "OVEntryPayload") -> OVEntryPayload:
        """Parse an OVEntryPayload (OVEExtra is kept as its encoded bytes)."""
        fields = check.array(value, where, 4)
        extra = None
        if fields[2] is not None:
            extra = check.bstr(fields[2], f"{where}[2]")
            check.mapping(check.cbor_in_bstr(extra, f"{where}[2]"), f"{where}[2]")
        return cls(
            Hash.from_cbor(fields[0], f"{where}[0]"),
            Hash.from_cbor(fields[1], f"{where}[1]"),
            extra,
            PublicKey.from_cbor(fields[3], f"{where}[3]"),
        )


def _hash_alg_for(*keys: PublicKeyType) -> HashAlg:
    """SHA384 only when every key is at least 384-bit strength (P-384 or RSA >= 3072)."""
    strong = all(
        (isinstance(k, ec.EllipticCurvePublicKey) and k.curve.key_size >= 384)
        or (isinstance(k, rsa.RSAPublicKey) and k.key_size >= 3072)
        for k in keys
    )
    return HashAlg.SHA384 if strong else HashAlg.SHA256


class EntryChain:
    """Checks a voucher's entries in order: a whole voucher (:meth:`Voucher.verify`) or entries
    one at a time as TO2.OVNextEntry brings them to a device.

    Each entry must decode, use entry 0's hash type (SHA-256 or SHA-384, never an HMAC), be
    signed by the previous owner's key (the manufacturer's for entry 0), hash the previous entry
    (the header bytes and HMAC for entry 0) and GUID || DeviceInfo, and name a key of the
    manufacturer key's type. ``key`` is the current owner's key, ``count`` the entries taken.
    """

    def __init__(self, header: OVHeader, header_bytes: bytes, header_hmac: Hash) -> None:
        self.header = header
        self.key = header.manufacturer_key
        self.count = 0
        self._previous = header_bytes + encode(header_hmac.to_cbor())
        self._alg: HashAlg | None = None

    def add(self, entry: Sign1) -> None:
        """Check the next entry; raises VoucherError naming it."""
        index = self.count
        try:
            payload = OVEntryPayload.from_cbor(decode(entry.payload))
        except FdoMessageError as e:
            raise VoucherError(f"payload does not decode: {e}", entry=index) from None
        alg = self._alg or payload.prev_hash.alg
        if alg.is_hmac:
            raise VoucherError(f"hash type {alg.name} is not SHA256 or SHA384", entry=index)
        if payload.prev_hash.alg != alg or payload.header_hash.alg != alg:
            raise VoucherError(f"hash type differs from entry 0's {alg.name}", entry=index)
        try:
            entry.verify(self.key)
        except VerifyError as e:
            raise VoucherError(f"not signed by the previous owner: {e}", entry=index) from None
        if not payload.prev_hash.matches(self._previous):
            raise VoucherError("previous-entry hash does not match", entry=index)
        if payload.header_hash != header_info_hash(alg, self.header.guid, self.header.device_info):
            raise VoucherError("header-info hash does not match GUID || DeviceInfo", entry=index)
        if payload.public_key.type != self.header.manufacturer_key.type:
            raise VoucherError("owner key type differs from the manufacturer's", entry=index)
        self.key, self._alg, self.count = payload.public_key, alg, index + 1
        self._previous = entry.encode()

    def expect_owner(self, owner: PublicKey | PublicKeyType, whose: str) -> None:
        """Raise VoucherError unless the chain so far ends at ``owner`` (``whose`` names it)."""
        if not self.key.same_key(owner):
            raise VoucherError(
                f"the final owner is not {whose}", entry=self.count - 1 if self.count else None
            )


@dataclass(frozen=True)
class Voucher:
    """An ownership voucher; ``header_bytes`` are the exact OVHeader bytes that were MACed."""

    header_bytes: bytes
    header_hmac: Hash
    cert_chain: list[bytes] | None
    entries: list[Sign1] = field(default_factory=list)
    protocol_version: int = PROTOCOL_VERSION

    @cached_property
    def header(self) -> OVHeader:
        """The decoded header (decoded once per voucher)."""
        return OVHeader.from_cbor(decode(self.header_bytes), "OVHeader")

    @classmethod
    def create(cls, header: OVHeader, header_hmac: Hash, cert_chain: list[bytes] | None) -> Voucher:
        """The manufacturer's voucher, with no entries yet.

        ``header_hmac`` is what the device answered in DI.SetHMAC over ``encode(header)``.
        """
        if not header_hmac.alg.is_hmac:
            raise ValueError("the header HMAC must be an HMAC type")
        return cls(encode(header.to_cbor()), header_hmac, cert_chain, [], header.protocol_version)

    def owner_key(self) -> PublicKey:
        """The current owner's key: the last entry's, or the manufacturer's with no entries."""
        if not self.entries:
            return self.header.manufacturer_key
        return OVEntryPayload.from_cbor(decode(self.entries[-1].payload)).public_key

    def owner_keys(self) -> list[PublicKey]:
        """Every owner in order: the manufacturer, then each entry's key (unverified)."""
        entries = [OVEntryPayload.from_cbor(decode(e.payload)).public_key for e in self.entries]
        return [self.header.manufacturer_key, *entries]

    def _prev_hash(self, alg: HashAlg, index: int) -> Hash:
        if index == 0:
            return Hash.of(alg, self.header_bytes, encode(self.header_hmac.to_cbor()))
        return Hash.of(alg, self.entries[index - 1].encode())

    def extend(
        self, owner: SigningKey, next_owner: PublicKey, *, extra: dict[int, bytes] | None = None
    ) -> Voucher:
        """Transfer to ``next_owner``: a new entry signed by the current owner's key ``owner``.

        Raises:
            VoucherError: ``owner`` is not the current owner's key, or ``next_owner`` is not of
                the manufacturer key's type and encoding family.
        """
        header = self.header
        current = self.owner_key()
        if not current.same_key(owner.public_key()):
            raise VoucherError(
                "the signing key is not the current owner's key", entry=len(self.entries)
            )
        if next_owner.type != header.manufacturer_key.type:
            raise VoucherError(
                f"the next owner's key is {next_owner.type.name}, the voucher's keys are "
                f"{header.manufacturer_key.type.name}",
                entry=len(self.entries),
            )
        if self.entries:
            alg = OVEntryPayload.from_cbor(decode(self.entries[0].payload)).prev_hash.alg
        else:
            keys = [owner.public_key()]
            if self.cert_chain:
                device = x509.load_der_x509_certificate(self.cert_chain[0]).public_key()
                if isinstance(device, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
                    keys.append(device)
            alg = _hash_alg_for(*keys)
        payload = OVEntryPayload(
            self._prev_hash(alg, len(self.entries)),
            header_info_hash(alg, header.guid, header.device_info),
            None if extra is None else encode(extra),
            next_owner,
        )
        entry = Sign1.sign(owner, encode(payload.to_cbor()))
        entry = Sign1.from_cbor(decode(entry.encode()))
        return Voucher(
            self.header_bytes,
            self.header_hmac,
            self.cert_chain,
            [*self.entries, entry],
            self.protocol_version,
        )

    def verify(
        self,
        *,
        hmac_secret: bytes | None = None,
        owner: PublicKey | PublicKeyType | None = None,
    ) -> PublicKey:
        """Verify the whole voucher and return the final owner's key.

        Checks the header decodes and matches the protocol version, the header HMAC (when the
        device's ``hmac_secret`` is given), the device certificate chain hash, every entry's
        signature by the previous key, its previous-entry hash and header-info hash, and that
        the final owner is ``owner`` (when given).

        Raises:
            VoucherError: the first check that fails, naming the entry.
        """
        try:
            header = self.header
        except FdoMessageError as e:
            raise VoucherError(f"header does not decode: {e}") from None
        if header.protocol_version != self.protocol_version:
            raise VoucherError("OVProtVer and OVHProtVer differ")
        if hmac_secret is not None and not self.header_hmac.matches(
            self.header_bytes, key=hmac_secret
        ):
            raise VoucherError("header HMAC does not match (tampered header or wrong device)")
        if (self.cert_chain is None) != (header.cert_chain_hash is None):
            raise VoucherError("device certificate chain and its hash must both be present")
        if (
            self.cert_chain is not None
            and header.cert_chain_hash is not None
            and not header.cert_chain_hash.matches(*self.cert_chain)
        ):
            raise VoucherError("device certificate chain does not match its hash")
        chain = EntryChain(header, self.header_bytes, self.header_hmac)
        for entry in self.entries:
            chain.add(entry)
        if owner is not None:
            chain.expect_owner(owner, "the expected owner key")
        return chain.key

    def to_cbor(self) -> list[Any]:
        """``OwnershipVoucher``."""
        return [
            self.protocol_version,
            self.header_bytes,
            self.header_hmac.to_cbor(),
            None if self.cert_chain is None else list(self.cert_chain),
            [
                entry.to_cbor() if entry.raw is None else RawCbor(entry.raw)
                for entry in self.entries
            ],
        ]

    def encode(self) -> bytes:
        """The raw CBOR voucher."""
        return encode(self.to_cbor())

    def to_pem(self) -> str:
        """The PEM form (``-----BEGIN OWNERSHIP VOUCHER-----``)."""
        text = base64.b64encode(self.encode()).decode("ascii")
        lines = [text[i : i + 64] for i in range(0, len(text), 64)]
        return "\n".join([f"-----BEGIN {PEM_LABEL}-----", *lines, f"-----END {PEM_LABEL}-----", ""])

    @classmethod
    def from_cbor(cls, value: Any, where: str = "OwnershipVoucher") -> Voucher:
        """Parse a voucher (the header is checked to decode; signatures are not checked)."""
        fields = check.array(value, where, 5)
        version = check.uint(fields[0], f"{where}[0]", 16)
        header_bytes = check.bstr(fields[1], f"{where}[1]")
        OVHeader.from_cbor(check.cbor_in_bstr(header_bytes, f"{where}[1]"), f"{where}[1]")
        hmac_value = Hash.from_cbor(fields[2], f"{where}[2]")
        if not hmac_value.alg.is_hmac:
            raise FdoMessageError("OVHeaderHMac must be an HMAC type", where=f"{where}[2]")
        chain = None
        if fields[3] is not None:
            certs = check.array(fields[3], f"{where}[3]", minimum=1)
            chain = [check.bstr(c, f"{where}[3][{i}]") for i, c in enumerate(certs)]
        entries = [
            Sign1.from_cbor(e, f"{where}[4][{i}]")
            for i, e in enumerate(check.array(fields[4], f"{where}[4]"))
        ]
        return cls(header_bytes, hmac_value, chain, entries, version)

    @classmethod
    def load(cls, data: bytes | str, limits: Limits | None = None) -> Voucher:
        """Read a voucher in PEM form or as raw CBOR.

        Tolerance: fido-device-onboard-rs and go-fdo write PEM with the label OWNERSHIP
        VOUCHER; text around the block (comments, other PEM blocks) is ignored.
        """
        raw = data.encode("utf-8", "replace") if isinstance(data, str) else bytes(data)
        begin = f"-----BEGIN {PEM_LABEL}-----".encode()
        end = f"-----END {PEM_LABEL}-----".encode()
        if begin in raw:
            start = raw.index(begin) + len(begin)
            stop = raw.find(end, start)
            if stop < 0:
                raise FdoMessageError("PEM voucher has no END line")
            try:
                raw = base64.b64decode(b"".join(raw[start:stop].split()), validate=True)
            except binascii.Error as e:
                raise FdoMessageError(f"PEM voucher is not valid base64: {e}") from None
        return cls.from_cbor(decode(raw, limits or Limits()))


def public_key_pem(key: PublicKey) -> str:
    """The PEM SubjectPublicKeyInfo of a voucher key (for display)."""
    return (
        key.key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )
