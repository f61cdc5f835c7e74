"""COSE for FDO with ``cryptography``: COSE_Sign1 (tag 18) and COSE_Encrypt0 (tag 16).

COSE_Sign1 = ``[protected: bstr .cbor header_map, unprotected: header_map, payload: bstr,
signature: bstr]``, signed over ``Sig_structure = ["Signature1", protected, external_aad = h'',
payload]`` (RFC 9052). ECDSA signatures are raw ``r || s`` of the curve size (ES256: 64 bytes,
ES384: 96 bytes); RSA (RS256/RS384/PS256/PS384) is verified for vouchers made by RSA owners.

COSE_Encrypt0 = ``[protected: bstr .cbor {1: alg}, unprotected: {5: iv}, ciphertext]`` with AES-GCM
(A128GCM = 1, A256GCM = 3), a 12-byte random IV and AAD ``Enc_structure = ["Encrypt0",
protected, external_aad = h'']``; the 16-byte GCM tag ends the ciphertext.

Every check failure raises :class:`~afield.fdo.VerifyError` (code 101); a wrongly shaped
structure raises :class:`~afield.fdo.FdoMessageError` (code 100).

What it leaves to others: which key signs what (messages, vouchers), session keys
(:mod:`afield.fdo.kex`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from afield.fdo import _check as check
from afield.fdo._errors import FdoMessageError, VerifyError
from afield.fdo.cbor import CborTag, Limits, decode, encode
from afield.fdo.types import PublicKey, PublicKeyType, SigType

__all__ = [
    "ALG",
    "IV",
    "TAG_ENCRYPT0",
    "TAG_SIGN1",
    "Encrypt0",
    "EncryptAlg",
    "Sign1",
    "SigningKey",
    "sig_type_for",
]

TAG_SIGN1 = 18
TAG_ENCRYPT0 = 16
ALG = 1
"""Header label of the algorithm."""
IV = 5
"""Header label of the initialization vector."""

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def sig_type_for(key: SigningKey | PublicKeyType) -> SigType:
    """ES256 for P-256 keys, ES384 for P-384 keys, RS256/RS384 for RSA by size."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return SigType.ES256
        if isinstance(key.curve, ec.SECP384R1):
            return SigType.ES384
        raise ValueError(f"curve {key.curve.name} has no FDO signature type")
    return SigType.RS256 if key.key_size <= 2048 else SigType.RS384


_HASHES: dict[SigType, type[hashes.SHA256] | type[hashes.SHA384]] = {
    SigType.ES256: hashes.SHA256,
    SigType.ES384: hashes.SHA384,
    SigType.RS256: hashes.SHA256,
    SigType.RS384: hashes.SHA384,
    SigType.PS256: hashes.SHA256,
    SigType.PS384: hashes.SHA384,
}


def _protected_bytes(header: dict[Any, Any]) -> bytes:
    # An empty protected header is the empty byte string (RFC 9052 section 3).
    return encode(header) if header else b""


def _protected_map(raw: bytes, where: str) -> dict[Any, Any]:
    if raw == b"":
        return {}
    return check.mapping(check.cbor_in_bstr(raw, where), where)


@dataclass(frozen=True)
class Sign1:
    """A COSE_Sign1; ``protected`` keeps the exact bytes that were signed."""

    protected: bytes
    unprotected: dict[Any, Any]
    payload: bytes
    signature: bytes
    raw: bytes | None = field(default=None, compare=False, repr=False)

    @property
    def protected_header(self) -> dict[Any, Any]:
        """The decoded protected header map."""
        return _protected_map(self.protected, "COSE_Sign1.protected")

    @property
    def alg(self) -> int | None:
        """The alg of the protected header."""
        value = self.protected_header.get(ALG)
        return value if isinstance(value, int) else None

    @staticmethod
    def _to_be_signed(protected: bytes, payload: bytes) -> bytes:
        return encode(["Signature1", protected, b"", payload])

    @classmethod
    def sign(
        cls,
        key: SigningKey,
        payload: bytes,
        *,
        unprotected: dict[Any, Any] | None = None,
        protected: dict[Any, Any] | None = None,
    ) -> Sign1:
        """Sign ``payload`` with ``key``; the protected header carries the alg."""
        alg = sig_type_for(key)
        header = {**(protected or {}), ALG: int(alg)}
        protected_raw = _protected_bytes(header)
        tbs = cls._to_be_signed(protected_raw, payload)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            der = key.sign(tbs, ec.ECDSA(_HASHES[alg]()))
            r, s = decode_dss_signature(der)
            size = (key.curve.key_size + 7) // 8
            signature = r.to_bytes(size, "big") + s.to_bytes(size, "big")
        else:
            signature = key.sign(tbs, padding.PKCS1v15(), _HASHES[alg]())
        return cls(protected_raw, dict(unprotected or {}), payload, signature)

    def verify(self, key: PublicKeyType | PublicKey) -> None:
        """Check the signature with ``key``.

        Raises:
            VerifyError: the alg is missing, unknown or does not fit the key, or the
                signature does not verify.
        """
        public = key.key() if isinstance(key, PublicKey) else key
        try:
            alg = SigType(self.alg) if self.alg is not None else None
        except ValueError:
            alg = None
        if alg is None or alg not in _HASHES:
            raise VerifyError(f"COSE_Sign1 alg {self.alg} is missing or not supported")
        tbs = self._to_be_signed(self.protected, self.payload)
        digest = _HASHES[alg]()
        try:
            if isinstance(public, ec.EllipticCurvePublicKey):
                if alg != sig_type_for(public):
                    raise VerifyError(
                        f"{alg.name} signature does not fit a {public.curve.name} key"
                    )
                size = (public.curve.key_size + 7) // 8
                if len(self.signature) != 2 * size:
                    raise VerifyError(f"{alg.name} signature must be {2 * size} bytes (r || s)")
                r = int.from_bytes(self.signature[:size], "big")
                s = int.from_bytes(self.signature[size:], "big")
                public.verify(encode_dss_signature(r, s), tbs, ec.ECDSA(digest))
            else:
                if alg in (SigType.ES256, SigType.ES384):
                    raise VerifyError(f"{alg.name} signature does not fit an RSA key")
                pad: padding.AsymmetricPadding = (
                    padding.PSS(padding.MGF1(digest), padding.PSS.DIGEST_LENGTH)
                    if alg in (SigType.PS256, SigType.PS384)
                    else padding.PKCS1v15()
                )
                public.verify(self.signature, tbs, pad, digest)
        except InvalidSignature:
            raise VerifyError("COSE_Sign1 signature does not verify") from None

    def to_cbor(self, *, tagged: bool = True) -> Any:
        """The COSE_Sign1 array, tagged 18 unless ``tagged`` is False."""
        body = [self.protected, self.unprotected, self.payload, self.signature]
        return CborTag(TAG_SIGN1, body) if tagged else body

    def encode(self) -> bytes:
        """The tagged encoding; the exact received bytes when this was decoded from a tag."""
        return self.raw if self.raw is not None else encode(self.to_cbor())

    @classmethod
    def from_cbor(cls, value: Any, where: str = "COSE_Sign1") -> Sign1:
        """Parse a COSE_Sign1.

        Tolerance: FDO sends COSE_Sign1_Tagged, but some implementations omit the tag in
        nested positions; an untagged array is accepted.
        """
        raw = value.raw if isinstance(value, CborTag) else None
        body = check.array(check.tagged(value, where, TAG_SIGN1, required=False), where, 4)
        protected = check.bstr(body[0], f"{where}[0]")
        _protected_map(protected, f"{where}[0]")
        unprotected = check.mapping(body[1], f"{where}[1]")
        payload = check.bstr(body[2], f"{where}[2]")
        signature = check.bstr(body[3], f"{where}[3]")
        return cls(protected, dict(unprotected), payload, signature, raw)

    @classmethod
    def decode(cls, data: bytes, limits: Limits | None = None) -> Sign1:
        """Decode a COSE_Sign1 from bytes."""
        return cls.from_cbor(decode(data, limits or Limits()))


class EncryptAlg:
    """The AEAD algorithms FDO cipher suites use: COSE ids and key sizes."""

    A128GCM = 1
    A256GCM = 3
    KEY_SIZES: ClassVar[dict[int, int]] = {A128GCM: 16, A256GCM: 32}


@dataclass(frozen=True)
class Encrypt0:
    """A COSE_Encrypt0 with AES-GCM."""

    protected: bytes
    unprotected: dict[Any, Any]
    ciphertext: bytes

    @staticmethod
    def _aad(protected: bytes) -> bytes:
        return encode(["Encrypt0", protected, b""])

    @classmethod
    def encrypt(cls, alg: int, key: bytes, plaintext: bytes) -> Encrypt0:
        """Encrypt ``plaintext`` with a fresh random 12-byte IV."""
        if EncryptAlg.KEY_SIZES.get(alg) != len(key):
            raise ValueError(f"alg {alg} needs a key of {EncryptAlg.KEY_SIZES.get(alg)} bytes")
        protected = encode({ALG: alg})
        iv = os.urandom(12)
        ciphertext = AESGCM(key).encrypt(iv, plaintext, cls._aad(protected))
        return cls(protected, {IV: iv}, ciphertext)

    def decrypt(self, alg: int, key: bytes) -> bytes:
        """Decrypt with ``key``; the message must be encrypted with ``alg``.

        Raises:
            VerifyError: wrong alg, bad IV, or the GCM tag does not verify.
        """
        header = _protected_map(self.protected, "COSE_Encrypt0.protected")
        # Tolerance: alg belongs in the protected header, but an alg only in the unprotected
        # header is accepted as long as it is the session's alg (the session fixes it anyway).
        found = header.get(ALG, self.unprotected.get(ALG))
        if found != alg:
            raise VerifyError(f"COSE_Encrypt0 alg {found!r} is not the session's alg {alg}")
        iv = self.unprotected.get(IV, header.get(IV))
        if not isinstance(iv, bytes) or len(iv) != 12:
            raise VerifyError("COSE_Encrypt0 needs a 12-byte IV (header label 5)")
        if EncryptAlg.KEY_SIZES.get(alg) != len(key):
            raise VerifyError(f"alg {alg} needs a key of {EncryptAlg.KEY_SIZES.get(alg)} bytes")
        try:
            return AESGCM(key).decrypt(iv, self.ciphertext, self._aad(self.protected))
        except InvalidTag:
            raise VerifyError("COSE_Encrypt0 does not decrypt (wrong key or tampered)") from None

    def to_cbor(self) -> CborTag:
        """The tagged COSE_Encrypt0."""
        return CborTag(TAG_ENCRYPT0, [self.protected, self.unprotected, self.ciphertext])

    @classmethod
    def from_cbor(cls, value: Any, where: str = "COSE_Encrypt0") -> Encrypt0:
        """Parse a COSE_Encrypt0 (tag 16 required, as every implementation sends it)."""
        body = check.array(check.tagged(value, where, TAG_ENCRYPT0), where, 3)
        protected = check.bstr(body[0], f"{where}[0]")
        _protected_map(protected, f"{where}[0]")
        unprotected = check.mapping(body[1], f"{where}[1]")
        ciphertext = check.bstr(body[2], f"{where}[2]")
        if len(ciphertext) < 16:
            raise FdoMessageError("ciphertext is shorter than the GCM tag", where=f"{where}[2]")
        return cls(protected, dict(unprotected), ciphertext)
