"""TO2 key exchange and session encryption exactly as FDO 1.1 specifies.

Key exchange suites (``kexSuiteName`` of TO2.HelloDevice):

- ``ECDH256`` / ``ECDH384``: each side sends ``blen(Ax) || Ax || blen(Ay) || Ay || blen(R) || R``
  (``blen`` a 2-byte big-endian length, ``Ax``/``Ay`` the point coordinates of the curve size,
  ``R`` 16 random bytes for ECDH256 and 48 for ECDH384). The owner's is xA, the device's xB.
  ``ShSe = Shx || DeviceRandom || OwnerRandom`` (device first, whoever computes it).
- ``DHKEXid14`` / ``DHKEXid15``: RFC 3526 MODP groups 14 (2048-bit) and 15 (3072-bit), generator
  2, secret exponents of 256 and 768 bits; ``xA = g^a mod p``, ``xB = g^b mod p`` big-endian;
  ``ShSe`` is the shared value big-endian, padded to the size of ``p``.

Session keys come from :func:`kdf`, NIST SP 800-108 in counter mode with HMAC:
``K(i) = HMAC(ShSe, [i]_1 || "FIDO-KDF" || 0x00 || "AutomaticOnboardTunnel" || ContextRand ||
[L]_2)`` with an 8-bit counter and ``L`` the output length in bits; ContextRand is empty for the
ECDH and DH suites. The AEAD suites A128GCM and A256GCM need only SEK (16 / 32 bytes), and the
specification's cipher-suite table names HMAC-SHA256 as their PRF (go-fdo agrees).

What it leaves to others: choosing a suite from the keys (servers), message sequencing.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from cryptography.hazmat.primitives.asymmetric import ec

from afield.fdo._errors import FdoMessageError, VerifyError
from afield.fdo.cbor import Limits, decode, encode
from afield.fdo.cose import Encrypt0, EncryptAlg

__all__ = [
    "CipherSuite",
    "KexSuite",
    "KeyExchange",
    "Role",
    "Session",
    "kdf",
]

_P14 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A0879"
    "8E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B"
    "0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA4836"
    "1C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804"
    "F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6"
    "955817183995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF",
    16,
)
_P15 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A0879"
    "8E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B"
    "0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA4836"
    "1C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804"
    "F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6"
    "955817183995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33A85521ABDF1CBA64"
    "ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7ABF5AE8CDB0933D71E8C94E04A25619DCEE3D226"
    "1AD2EE6BF12FFA06D98A0864D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
    "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF",
    16,
)


class KexSuite(StrEnum):
    """kexSuiteName values afield implements."""

    ECDH256 = "ECDH256"
    ECDH384 = "ECDH384"
    DHKEXID14 = "DHKEXid14"
    DHKEXID15 = "DHKEXid15"


class CipherSuite(IntEnum):
    """cipherSuiteName values afield implements (the AEAD ones)."""

    A128GCM = EncryptAlg.A128GCM
    A256GCM = EncryptAlg.A256GCM

    @property
    def key_size(self) -> int:
        """SEK length in bytes."""
        return EncryptAlg.KEY_SIZES[int(self)]

    @property
    def prf(self) -> str:
        """The KDF's HMAC digest: SHA-256 for both AEAD suites, per the spec's table."""
        return "sha256"


class Role(StrEnum):
    """Which side of the key exchange this is."""

    OWNER = "owner"
    DEVICE = "device"


def kdf(shse: bytes, length: int, *, prf: str = "sha256", context_rand: bytes = b"") -> bytes:
    """FDO's SP 800-108 counter-mode KDF: ``length`` bytes of key material from ``shse``."""
    size = hashlib.new(prf).digest_size
    rounds = -(-length // size)
    if rounds > 255 or length < 1:
        raise ValueError(f"cannot derive {length} bytes with an 8-bit counter")
    bits = (length * 8).to_bytes(2, "big")
    fixed = b"FIDO-KDF" + b"\x00" + b"AutomaticOnboardTunnel" + context_rand + bits
    out = b"".join(hmac.new(shse, bytes([i]) + fixed, prf).digest() for i in range(1, rounds + 1))
    return out[:length]


_CURVES: dict[KexSuite, tuple[ec.EllipticCurve, int, int]] = {
    KexSuite.ECDH256: (ec.SECP256R1(), 32, 16),
    KexSuite.ECDH384: (ec.SECP384R1(), 48, 48),
}
_GROUPS = {KexSuite.DHKEXID14: (_P14, 32), KexSuite.DHKEXID15: (_P15, 96)}


def _fields(param: bytes) -> list[bytes]:
    fields: list[bytes] = []
    pos = 0
    while pos < len(param):
        if len(param) - pos < 2:
            raise FdoMessageError("key exchange parameter ends inside a length field")
        size = int.from_bytes(param[pos : pos + 2], "big")
        pos += 2
        if size > len(param) - pos:
            raise FdoMessageError("key exchange parameter field runs past its end")
        fields.append(param[pos : pos + size])
        pos += size
    if len(fields) != 3:
        raise FdoMessageError(f"ECDH parameter has {len(fields)} fields, expected 3")
    return fields


@dataclass
class Session:
    """The TO2 session cipher: encrypts and decrypts message bodies with SEK."""

    cipher: CipherSuite
    sek: bytes

    def encrypt(self, body: bytes) -> bytes:
        """The tagged COSE_Encrypt0 (encoded) carrying the message ``body``."""
        return encode(Encrypt0.encrypt(int(self.cipher), self.sek, body).to_cbor())

    def decrypt(self, data: bytes, limits: Limits | None = None) -> bytes:
        """The message body inside an encrypted message.

        Raises:
            FdoMessageError: not a COSE_Encrypt0.
            VerifyError: wrong key, alg or tampered ciphertext.
        """
        return Encrypt0.from_cbor(decode(data, limits or Limits())).decrypt(
            int(self.cipher), self.sek
        )


class KeyExchange:
    """One side of a TO2 key exchange; ``parameter`` is what it sends (xA or xB)."""

    def __init__(self, suite: KexSuite | str, role: Role) -> None:
        try:
            self.suite = KexSuite(suite)
        except ValueError:
            raise FdoMessageError(f"key exchange suite {suite!r} is not supported") from None
        self.role = role
        self._ec: ec.EllipticCurvePrivateKey | None = None
        if self.suite in _CURVES:
            curve, size, rand_size = _CURVES[self.suite]
            self._ec = ec.generate_private_key(curve)
            numbers = self._ec.public_key().public_numbers()
            self._rand = os.urandom(rand_size)
            parts = [numbers.x.to_bytes(size, "big"), numbers.y.to_bytes(size, "big"), self._rand]
            self.parameter = b"".join(len(p).to_bytes(2, "big") + p for p in parts)
        else:
            prime, secret_size = _GROUPS[self.suite]
            self._secret = secrets.randbits(secret_size * 8) | 1 << (secret_size * 8 - 1)
            self._prime = prime
            self.parameter = pow(2, self._secret, prime).to_bytes(
                (prime.bit_length() + 7) // 8, "big"
            )

    def shared_secret(self, peer: bytes) -> bytes:
        """ShSe from the peer's parameter.

        Raises:
            FdoMessageError: the parameter is malformed.
            VerifyError: the peer's point or value is invalid.
        """
        if self._ec is not None:
            curve, size, _ = _CURVES[self.suite]
            x, y, peer_rand = _fields(peer)
            # Tolerance: implementations that serialise coordinates as minimal big integers
            # (OpenSSL BN_bn2bin) drop leading zero bytes; shorter coordinates are left-padded.
            if len(x) > size or len(y) > size or not peer_rand:
                raise FdoMessageError("ECDH parameter coordinates or random have a bad size")
            point = b"\x04" + x.rjust(size, b"\x00") + y.rjust(size, b"\x00")
            try:
                public = ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
                shx = self._ec.exchange(ec.ECDH(), public)
            except ValueError:
                raise VerifyError("ECDH parameter is not a point on the curve") from None
            if self.role == Role.DEVICE:
                return shx + self._rand + peer_rand
            return shx + peer_rand + self._rand
        value = int.from_bytes(peer, "big")
        if not 2 <= value <= self._prime - 2:
            raise VerifyError("DH parameter is outside [2, p-2]")
        shared = pow(value, self._secret, self._prime)
        if shared in (1, self._prime - 1):
            raise VerifyError("DH shared secret is degenerate")
        return shared.to_bytes((self._prime.bit_length() + 7) // 8, "big")

    def session(self, peer: bytes, cipher: CipherSuite | int) -> Session:
        """The session cipher keyed from ShSe with the peer's parameter."""
        try:
            suite = CipherSuite(cipher)
        except ValueError:
            raise FdoMessageError(f"cipher suite {cipher} is not supported") from None
        shse = self.shared_secret(peer)
        return Session(suite, kdf(shse, suite.key_size, prf=suite.prf))
