"""COSE_Sign1 and COSE_Encrypt0: signatures, encryption, and each tamper rejected."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from afield.errors import ProtocolError
from afield.fdo import ErrorCode, FdoMessageError, VerifyError
from afield.fdo.cbor import CborTag, decode, encode
from afield.fdo.cose import Encrypt0, EncryptAlg, Sign1
from afield.fdo.types import PublicKey, SigType

CURVES = [(ec.SECP256R1(), SigType.ES256, 64), (ec.SECP384R1(), SigType.ES384, 96)]


@pytest.mark.parametrize(("curve", "alg", "size"), CURVES)
def test_sign1_signs_and_verifies(curve: ec.EllipticCurve, alg: SigType, size: int) -> None:
    key = ec.generate_private_key(curve)
    signed = Sign1.sign(key, b"payload", unprotected={256: b"n" * 16})
    data = signed.encode()
    assert data[0] == 0xD2  # tag 18
    parsed = Sign1.decode(data)
    assert parsed.alg == int(alg)
    assert len(parsed.signature) == size  # raw r || s
    assert parsed.unprotected == {256: b"n" * 16}
    parsed.verify(key.public_key())
    parsed.verify(PublicKey.from_key(key.public_key()))


def test_sign1_untagged_is_accepted() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    signed = Sign1.sign(key, b"payload")
    Sign1.from_cbor(signed.to_cbor(tagged=False)).verify(key.public_key())


@pytest.mark.parametrize("field", ["payload", "protected", "signature"])
def test_sign1_tamper_is_rejected(field: str) -> None:
    # Threat: a modified signed message (payload, algorithm header or signature).
    key = ec.generate_private_key(ec.SECP384R1())
    signed = Sign1.sign(key, b"payload")
    if field == "payload":
        tampered = replace(signed, payload=b"payloaD")
    elif field == "protected":
        tampered = replace(signed, protected=encode({1: int(SigType.ES384), 4: b"kid"}))
    else:
        flipped = bytes([signed.signature[0] ^ 1]) + signed.signature[1:]
        tampered = replace(signed, signature=flipped)
    with pytest.raises(VerifyError) as error:
        tampered.verify(key.public_key())
    assert error.value.code == ErrorCode.INVALID_MESSAGE_ERROR
    assert isinstance(error.value, ProtocolError)


def test_sign1_wrong_key_and_wrong_curve_are_rejected() -> None:
    # Threat: a signature by another key, or an ES256 signature presented for a P-384 key.
    key = ec.generate_private_key(ec.SECP256R1())
    signed = Sign1.sign(key, b"payload")
    with pytest.raises(VerifyError, match="does not verify"):
        signed.verify(ec.generate_private_key(ec.SECP256R1()).public_key())
    with pytest.raises(VerifyError, match="does not fit"):
        signed.verify(ec.generate_private_key(ec.SECP384R1()).public_key())


def test_sign1_without_alg_is_rejected() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    signed = replace(Sign1.sign(key, b"payload"), protected=b"")
    with pytest.raises(VerifyError, match="alg None"):
        signed.verify(key.public_key())


def test_sign1_malformed_is_a_message_error() -> None:
    with pytest.raises(FdoMessageError):
        Sign1.from_cbor(CborTag(18, [b"", {}, b"x"]))
    with pytest.raises(FdoMessageError, match="expected tag 18"):
        Sign1.from_cbor(CborTag(16, [b"", {}, b"x", b""]))
    with pytest.raises(FdoMessageError):
        Sign1.from_cbor([b"\xa1", {}, b"x", b""])


@pytest.mark.parametrize(("alg", "size"), [(EncryptAlg.A128GCM, 16), (EncryptAlg.A256GCM, 32)])
def test_encrypt0_roundtrip(alg: int, size: int) -> None:
    key = os.urandom(size)
    message = Encrypt0.encrypt(alg, key, b"secret body")
    data = encode(message.to_cbor())
    assert data[0] == 0xD0  # tag 16
    parsed = Encrypt0.from_cbor(decode(data))
    assert decode(parsed.protected) == {1: alg}
    assert len(parsed.unprotected[5]) == 12
    assert parsed.decrypt(alg, key) == b"secret body"


@pytest.mark.parametrize("field", ["ciphertext", "protected", "iv", "key"])
def test_encrypt0_tamper_is_rejected(field: str) -> None:
    # Threat: an attacker on the path flips bits of an encrypted TO2 message.
    key = os.urandom(16)
    message = Encrypt0.encrypt(EncryptAlg.A128GCM, key, b"secret body")
    if field == "ciphertext":
        message = replace(
            message, ciphertext=bytes([message.ciphertext[0] ^ 1]) + message.ciphertext[1:]
        )
    elif field == "protected":
        message = replace(message, protected=encode({1: 1, 99: 0}))
    elif field == "iv":
        message = replace(message, unprotected={5: os.urandom(12)})
    else:
        key = os.urandom(16)
    with pytest.raises(VerifyError):
        message.decrypt(EncryptAlg.A128GCM, key)


def test_encrypt0_with_another_alg_is_rejected() -> None:
    # Threat: downgrade to a cipher the session did not agree on.
    key = os.urandom(16)
    message = Encrypt0.encrypt(EncryptAlg.A128GCM, key, b"body")
    with pytest.raises(VerifyError, match="not the session's alg 3"):
        message.decrypt(EncryptAlg.A256GCM, os.urandom(32))
