"""The FDO 1.1 base types as typed values: Guid, Nonce, Hash/HMac, PublicKey and SigInfo.

Each converts explicitly: ``to_cbor()`` returns the CBOR data model value (encode it with
:func:`afield.fdo.cbor.encode`) and ``from_cbor(value, where)`` checks the shape strictly and
raises :class:`~afield.fdo.FdoMessageError` naming the field. Constructors check invariants.

Numbers are the specification's: hash types SHA256 = -16, SHA384 = -43, HMAC-SHA256 = 5,
HMAC-SHA384 = 6 (COSE algorithm ids); pkType RSA2048RESTR = 1, RSAPKCS = 5, RSAPSS = 6,
SECP256R1 = 10, SECP384R1 = 11; pkEnc Crypto = 0, X509 = 1, X5CHAIN = 2, COSEKEY = 3 (FDO 1.1
has no separate "COSEX509" encoding: X5CHAIN is the COSE_X509 array of DER certificates).

What it leaves to others: rendezvous data (:mod:`afield.fdo.rendezvous`), COSE
(:mod:`afield.fdo.cose`), vouchers (:mod:`afield.fdo.voucher`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import uuid
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from afield.fdo import _check as check
from afield.fdo._errors import FdoMessageError

__all__ = [
    "PROTOCOL_VERSION",
    "Guid",
    "Hash",
    "HashAlg",
    "KeyEncoding",
    "KeyType",
    "Nonce",
    "PublicKey",
    "PublicKeyType",
    "SigInfo",
    "SigType",
]

PROTOCOL_VERSION = 101
"""protver of FDO 1.1 (major * 100 + minor)."""

PublicKeyType = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


@dataclass(frozen=True)
class Guid:
    """A device GUID: 16 bytes (``Guid = bstr .size 16``)."""

    value: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.value, bytes) or len(self.value) != 16:
            raise ValueError("a Guid is exactly 16 bytes")

    @classmethod
    def random(cls) -> Guid:
        """A new random GUID."""
        return cls(os.urandom(16))

    def to_cbor(self) -> bytes:
        """``bstr .size 16``."""
        return self.value

    @classmethod
    def from_cbor(cls, value: Any, where: str = "Guid") -> Guid:
        """Parse a GUID field."""
        return cls(check.bstr(value, where, 16))

    def __str__(self) -> str:
        return str(uuid.UUID(bytes=self.value))


@dataclass(frozen=True)
class Nonce:
    """A protocol nonce: 16 random bytes (``Nonce = bstr .size 16``)."""

    value: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.value, bytes) or len(self.value) != 16:
            raise ValueError("a Nonce is exactly 16 bytes")

    @classmethod
    def random(cls) -> Nonce:
        """A new random nonce."""
        return cls(os.urandom(16))

    def matches(self, other: Nonce) -> bool:
        """Whether ``other`` is the same nonce, compared in constant time."""
        return hmac.compare_digest(self.value, other.value)

    def to_cbor(self) -> bytes:
        """``bstr .size 16``."""
        return self.value

    @classmethod
    def from_cbor(cls, value: Any, where: str = "Nonce") -> Nonce:
        """Parse a nonce field."""
        return cls(check.bstr(value, where, 16))


class HashAlg(IntEnum):
    """hashtype: COSE algorithm ids of the hashes and HMACs FDO uses."""

    SHA256 = -16
    SHA384 = -43
    HMAC_SHA256 = 5
    HMAC_SHA384 = 6

    @property
    def digest(self) -> str:
        """The hashlib name of the underlying digest."""
        return "sha256" if self in (HashAlg.SHA256, HashAlg.HMAC_SHA256) else "sha384"

    @property
    def is_hmac(self) -> bool:
        """True for the HMAC types."""
        return self in (HashAlg.HMAC_SHA256, HashAlg.HMAC_SHA384)

    @property
    def size(self) -> int:
        """Digest length in bytes."""
        return 32 if self.digest == "sha256" else 48


@dataclass(frozen=True)
class Hash:
    """``Hash = [hashtype, bstr]``, also used for ``HMac`` (hashtype 5 or 6)."""

    alg: HashAlg
    value: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "alg", HashAlg(self.alg))
        if len(self.value) != self.alg.size:
            raise ValueError(f"{self.alg.name} is {self.alg.size} bytes, got {len(self.value)}")

    @classmethod
    def of(cls, alg: HashAlg, *parts: bytes) -> Hash:
        """The hash of the concatenation of ``parts``."""
        if alg.is_hmac:
            raise ValueError(f"{alg.name} needs a key; use Hash.hmac")
        digest = hashlib.new(alg.digest)
        for part in parts:
            digest.update(part)
        return cls(alg, digest.digest())

    @classmethod
    def hmac(cls, alg: HashAlg, key: bytes, *parts: bytes) -> Hash:
        """The HMAC of the concatenation of ``parts`` under ``key``."""
        if not alg.is_hmac:
            raise ValueError(f"{alg.name} is not an HMAC type")
        mac = hmac.new(key, digestmod=alg.digest)
        for part in parts:
            mac.update(part)
        return cls(alg, mac.digest())

    def matches(self, *parts: bytes, key: bytes | None = None) -> bool:
        """Whether this hash (or HMAC, given ``key``) is that of ``parts``, in constant time."""
        if self.alg.is_hmac:
            if key is None:
                return False
            expected = Hash.hmac(self.alg, key, *parts)
        else:
            expected = Hash.of(self.alg, *parts)
        return hmac.compare_digest(expected.value, self.value)

    def to_cbor(self) -> list[Any]:
        """``[hashtype, hash]``."""
        return [int(self.alg), self.value]

    @classmethod
    def from_cbor(cls, value: Any, where: str = "Hash") -> Hash:
        """Parse a Hash or HMac field; the length must match the type."""
        fields = check.array(value, where, 2)
        number = check.integer(fields[0], f"{where}[0]")
        try:
            alg = HashAlg(number)
        except ValueError:
            raise FdoMessageError(f"unknown hash type {number}", where=f"{where}[0]") from None
        digest = check.bstr(fields[1], f"{where}[1]", alg.size)
        return cls(alg, digest)


class KeyType(IntEnum):
    """pkType."""

    RSA2048RESTR = 1
    RSAPKCS = 5
    RSAPSS = 6
    SECP256R1 = 10
    SECP384R1 = 11


class KeyEncoding(IntEnum):
    """pkEnc."""

    CRYPTO = 0
    X509 = 1
    X5CHAIN = 2
    COSEKEY = 3


_COSE_CURVES = {1: KeyType.SECP256R1, 2: KeyType.SECP384R1}


def _key_type_of(key: PublicKeyType) -> KeyType:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return KeyType.SECP256R1
        if isinstance(key.curve, ec.SECP384R1):
            return KeyType.SECP384R1
        raise ValueError(f"curve {key.curve.name} is not an FDO key type")
    return KeyType.RSAPKCS if key.key_size != 2048 else KeyType.RSA2048RESTR


def _raw(value: Any) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError(f"expected bytes, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class PublicKey:
    """``PublicKey = [pkType, pkEnc, pkBody]``.

    ``body`` is the DER SubjectPublicKeyInfo (X509), the list of DER certificates leaf first
    (X5CHAIN), the COSE_Key map (COSEKEY) or ``[modulus, exponent]`` (Crypto, RSA only).
    """

    type: KeyType
    encoding: KeyEncoding
    body: Any

    def __post_init__(self) -> None:
        object.__setattr__(self, "type", KeyType(self.type))
        object.__setattr__(self, "encoding", KeyEncoding(self.encoding))
        self.key()  # the body must hold a usable key of the declared type

    @classmethod
    def from_key(
        cls,
        key: PublicKeyType,
        encoding: KeyEncoding = KeyEncoding.X509,
        *,
        key_type: KeyType | None = None,
    ) -> PublicKey:
        """Wrap a public key (X509 or COSEKEY encoding; use ``from_chain`` for X5CHAIN)."""
        kind = key_type or _key_type_of(key)
        if encoding == KeyEncoding.X509:
            body: Any = key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        elif encoding == KeyEncoding.COSEKEY and isinstance(key, ec.EllipticCurvePublicKey):
            numbers = key.public_numbers()
            size = (key.curve.key_size + 7) // 8
            crv = 1 if kind == KeyType.SECP256R1 else 2
            body = {
                1: 2,
                -1: crv,
                -2: numbers.x.to_bytes(size, "big"),
                -3: numbers.y.to_bytes(size, "big"),
            }
        elif encoding == KeyEncoding.CRYPTO and isinstance(key, rsa.RSAPublicKey):
            numbers_rsa = key.public_numbers()
            body = [
                numbers_rsa.n.to_bytes((numbers_rsa.n.bit_length() + 7) // 8, "big"),
                numbers_rsa.e.to_bytes((numbers_rsa.e.bit_length() + 7) // 8, "big"),
            ]
        else:
            raise ValueError(f"cannot encode this key as {encoding.name}")
        return cls(kind, encoding, body)

    @classmethod
    def from_chain(cls, chain: list[x509.Certificate]) -> PublicKey:
        """An X5CHAIN key: the certificates, leaf first."""
        leaf = chain[0].public_key()
        if not isinstance(leaf, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise ValueError("the leaf certificate's key is neither EC nor RSA")
        ders = [cert.public_bytes(serialization.Encoding.DER) for cert in chain]
        return cls(_key_type_of(leaf), KeyEncoding.X5CHAIN, ders)

    def key(self) -> PublicKeyType:
        """The usable public key; raises ValueError when the body does not hold one."""
        try:
            key = self._parse()
        except (
            ValueError,
            TypeError,
            IndexError,
            KeyError,
            AttributeError,
            UnsupportedAlgorithm,
        ) as e:
            raise ValueError(f"{self.encoding.name} body does not hold a public key: {e}") from e
        if isinstance(key, ec.EllipticCurvePublicKey):
            if _key_type_of(key) != self.type:
                raise ValueError(f"key on curve {key.curve.name} declared as {self.type.name}")
        elif self.type in (KeyType.SECP256R1, KeyType.SECP384R1):
            raise ValueError(f"RSA key declared as {self.type.name}")
        return key

    def _parse(self) -> PublicKeyType:
        key: Any
        if self.encoding == KeyEncoding.X509:
            key = serialization.load_der_public_key(_raw(self.body))
        elif self.encoding == KeyEncoding.X5CHAIN:
            if not isinstance(self.body, list) or not self.body:
                raise ValueError("X5CHAIN needs at least one certificate")
            key = x509.load_der_x509_certificate(_raw(self.body[0])).public_key()
        elif self.encoding == KeyEncoding.COSEKEY:
            body = self.body
            if body.get(1) != 2 or body.get(-1) not in _COSE_CURVES:
                raise ValueError("only EC2 keys on P-256 or P-384 are supported")
            curve: ec.EllipticCurve = ec.SECP256R1() if body[-1] == 1 else ec.SECP384R1()
            x, y = _raw(body[-2]), _raw(body[-3])
            key = ec.EllipticCurvePublicKey.from_encoded_point(curve, b"\x04" + x + y)
        else:
            modulus, exponent = self.body
            key = rsa.RSAPublicNumbers(
                int.from_bytes(_raw(exponent), "big"), int.from_bytes(_raw(modulus), "big")
            ).public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise ValueError(f"unsupported key {type(key).__name__}")
        return key

    def chain(self) -> list[x509.Certificate] | None:
        """The certificates of an X5CHAIN key, else None."""
        if self.encoding != KeyEncoding.X5CHAIN:
            return None
        return [x509.load_der_x509_certificate(bytes(der)) for der in self.body]

    def same_key(self, other: PublicKey | PublicKeyType) -> bool:
        """Whether both hold the same public key, whatever their encodings."""
        theirs = other.key() if isinstance(other, PublicKey) else other
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        return bool(self.key().public_bytes(der, spki) == theirs.public_bytes(der, spki))

    def to_cbor(self) -> list[Any]:
        """``[pkType, pkEnc, pkBody]``."""
        return [int(self.type), int(self.encoding), self.body]

    @classmethod
    def from_cbor(cls, value: Any, where: str = "PublicKey") -> PublicKey:
        """Parse a PublicKey field; the body must hold a key of the declared type."""
        fields = check.array(value, where, 3)
        number = check.uint(fields[0], f"{where}[0]", 8)
        encoding_number = check.uint(fields[1], f"{where}[1]", 8)
        try:
            kind, encoding = KeyType(number), KeyEncoding(encoding_number)
        except ValueError as e:
            raise FdoMessageError(f"unknown key type or encoding: {e}", where=where) from None
        body = fields[2]
        body_where = f"{where}[2]"
        if encoding == KeyEncoding.X509:
            check.bstr(body, body_where)
        elif encoding == KeyEncoding.X5CHAIN:
            for i, der in enumerate(check.array(body, body_where, minimum=1)):
                check.bstr(der, f"{body_where}[{i}]")
        elif encoding == KeyEncoding.COSEKEY:
            check.mapping(body, body_where)
        else:
            for i, part in enumerate(check.array(body, body_where, 2)):
                check.bstr(part, f"{body_where}[{i}]")
        try:
            return cls(kind, encoding, body)
        except (ValueError, AttributeError) as e:
            raise FdoMessageError(str(e), where=where) from None


class SigType(IntEnum):
    """DeviceSgType / the COSE signature algorithms FDO names."""

    ES256 = -7
    ES384 = -35
    RS256 = -257
    RS384 = -258
    PS256 = -37
    PS384 = -38
    EPID10 = 90
    EPID11 = 91


@dataclass(frozen=True)
class SigInfo:
    """``SigInfo = [sgType, Info: bstr]``; ``info`` is empty for ECDSA and RSA."""

    type: SigType
    info: bytes = b""

    def __post_init__(self) -> None:
        object.__setattr__(self, "type", SigType(self.type))

    def to_cbor(self) -> list[Any]:
        """``[sgType, Info]``."""
        return [int(self.type), self.info]

    @classmethod
    def from_cbor(cls, value: Any, where: str = "SigInfo") -> SigInfo:
        """Parse an eASigInfo / eBSigInfo field."""
        fields = check.array(value, where, 2)
        number = check.integer(fields[0], f"{where}[0]")
        info = check.bstr(fields[1], f"{where}[1]")
        try:
            return cls(SigType(number), info)
        except ValueError:
            raise FdoMessageError(f"unknown signature type {number}", where=f"{where}[0]") from None
