"""Ownership vouchers: interop vectors, create/extend/verify, and every tamper rejected."""

from __future__ import annotations

import base64
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from afield.fdo import ErrorCode, FdoMessageError, Voucher, VoucherError
from afield.fdo.cbor import decode, encode
from afield.fdo.cose import Sign1
from afield.fdo.credential import DeviceCredential
from afield.fdo.types import Guid, Hash, HashAlg, KeyType, PublicKey
from afield.fdo.voucher import OVEntryPayload, header_info_hash
from tests.fdo.factory import World, world

# Interop vectors from go-fdo's testdata/ (Apache-2.0): ov.pem and dc.bin were produced by
# fido-device-onboard-rs (fdo-owner-tool initialize-device, P-384 manufacturer key in
# mfg_key.pem, RSA device CA); ov_extended.pem comes from FIDO conformance testing (RSA2048
# keys, RS256 entries, six transfers).
VECTORS = Path(__file__).parent / "vectors"


def pem_bytes(name: str) -> bytes:
    lines = (VECTORS / name).read_text().splitlines()
    return base64.b64decode("".join(line for line in lines if not line.startswith("-----")))


def mfg_key() -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key((VECTORS / "mfg_key.pem").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def test_fido_device_onboard_rs_voucher_verifies_with_the_device_hmac_secret() -> None:
    voucher = Voucher.load((VECTORS / "ov.pem").read_text())
    credential = DeviceCredential.from_rs_cbor(decode((VECTORS / "dc.bin").read_bytes()))
    owner = voucher.verify(hmac_secret=credential.hmac_secret, owner=mfg_key().public_key())
    assert owner.type == KeyType.SECP384R1
    header = voucher.header
    assert str(header.guid) == "66b2146f-fec5-3ca6-ad01-7625990572ce"
    assert header.device_info == "go.fdo.example"
    assert header.rv_info.directives[0].ip == "192.168.122.1"
    assert header.rv_info.directives[0].dev_port == 8082
    assert voucher.header_hmac.alg == HashAlg.HMAC_SHA384
    assert voucher.cert_chain is not None and len(voucher.cert_chain) == 2
    # Re-encoding gives the exact bytes fido-device-onboard-rs wrote; raw CBOR loads the same.
    assert voucher.encode() == pem_bytes("ov.pem")
    assert Voucher.load(pem_bytes("ov.pem")) == voucher


def test_conformance_voucher_with_six_rsa_entries_verifies() -> None:
    voucher = Voucher.load((VECTORS / "ov_extended.pem").read_bytes())
    assert len(voucher.entries) == 6
    owner = voucher.verify()
    assert owner.type == KeyType.RSA2048RESTR
    assert voucher.encode() == pem_bytes("ov_extended.pem")


def test_fido_device_onboard_rs_voucher_extends_with_its_manufacturer_key() -> None:
    voucher = Voucher.load((VECTORS / "ov.pem").read_text())
    new_owner = ec.generate_private_key(ec.SECP384R1())
    extended = voucher.extend(mfg_key(), PublicKey.from_key(new_owner.public_key()))
    payload = OVEntryPayload.from_cbor(decode(extended.entries[0].payload))
    # The device key in the chain is P-256, so the weaker side picks SHA-256 (as go-fdo does).
    assert payload.prev_hash.alg == HashAlg.SHA256
    assert extended.verify(owner=new_owner.public_key()).same_key(new_owner.public_key())


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1()])
def test_create_extend_verify_and_pem_roundtrip(curve: ec.EllipticCurve) -> None:
    w = world(curve)
    owner1 = ec.generate_private_key(curve)
    owner2 = ec.generate_private_key(curve)
    assert w.voucher.verify(hmac_secret=w.hmac_secret).same_key(w.mfg.public_key())
    v1 = w.voucher.extend(w.mfg, PublicKey.from_key(owner1.public_key()))
    v2 = v1.extend(owner1, PublicKey.from_key(owner2.public_key()), extra={1: b"supply chain"})
    assert v2.verify(hmac_secret=w.hmac_secret, owner=owner2.public_key()).same_key(
        owner2.public_key()
    )
    pem = v2.to_pem()
    assert pem.startswith("-----BEGIN OWNERSHIP VOUCHER-----\n")
    loaded = Voucher.load(pem)
    assert loaded == v2
    assert Voucher.load(v2.encode()) == v2
    loaded.verify(hmac_secret=w.hmac_secret, owner=owner2.public_key())
    # Entry 1 hashes the exact encoding of entry 0.
    payload = OVEntryPayload.from_cbor(decode(v2.entries[1].payload))
    assert payload.prev_hash == Hash.of(payload.prev_hash.alg, v2.entries[0].encode())


def extended(w: World) -> tuple[Voucher, ec.EllipticCurvePrivateKey]:
    owner = ec.generate_private_key(ec.SECP384R1())
    return w.voucher.extend(w.mfg, PublicKey.from_key(owner.public_key())), owner


def test_entry_with_a_bad_signature_is_rejected() -> None:
    # Threat: an attacker forges a transfer entry to redirect the device to their server.
    w = world()
    voucher, _ = extended(w)
    entry = voucher.entries[0]
    forged = replace(
        entry, signature=bytes([entry.signature[0] ^ 1]) + entry.signature[1:], raw=None
    )
    with pytest.raises(VoucherError, match="entry 0: not signed") as error:
        replace(voucher, entries=[forged]).verify()
    assert error.value.entry == 0
    assert error.value.code == ErrorCode.INVALID_OWNERSHIP_VOUCHER


def test_entry_signed_by_someone_other_than_the_previous_owner_is_rejected() -> None:
    # Threat: a stolen voucher extended with the thief's key instead of the owner's.
    w = world()
    thief = ec.generate_private_key(ec.SECP384R1())
    voucher, _ = extended(w)
    payload = decode(voucher.entries[0].payload)
    payload[3] = PublicKey.from_key(thief.public_key()).to_cbor()
    forged = Sign1.sign(thief, encode(payload))
    with pytest.raises(VoucherError, match="entry 0: not signed"):
        replace(voucher, entries=[forged]).verify()


def test_tampered_header_is_rejected() -> None:
    # Threat: the rendezvous info or device info in the header is changed after manufacture.
    w = world()
    voucher, _ = extended(w)
    header = replace(w.header, device_info="someone else's device")
    tampered = replace(voucher, header_bytes=encode(header.to_cbor()))
    with pytest.raises(VoucherError, match="header: header HMAC does not match"):
        tampered.verify(hmac_secret=w.hmac_secret)
    with pytest.raises(VoucherError, match="entry 0: previous-entry hash"):
        tampered.verify()


def test_wrong_hmac_is_rejected() -> None:
    # Threat: a voucher for a device whose HMAC secret the manufacturer never saw.
    w = world()
    with pytest.raises(VoucherError, match="HMAC does not match"):
        w.voucher.verify(hmac_secret=b"another device's secret")
    bad = replace(w.voucher, header_hmac=Hash(HashAlg.HMAC_SHA384, b"\0" * 48))
    with pytest.raises(VoucherError, match="HMAC does not match"):
        bad.verify(hmac_secret=w.hmac_secret)


def test_wrong_guid_in_header_info_hash_is_rejected() -> None:
    # Threat: an entry made for another device (another GUID) spliced into this voucher.
    w = world()
    voucher, _ = extended(w)
    payload = OVEntryPayload.from_cbor(decode(voucher.entries[0].payload))
    other = header_info_hash(payload.prev_hash.alg, Guid.random(), w.header.device_info)
    forged = Sign1.sign(w.mfg, encode(replace(payload, header_hash=other).to_cbor()))
    with pytest.raises(VoucherError, match="entry 0: header-info hash"):
        replace(voucher, entries=[forged]).verify()


def test_wrong_final_owner_is_rejected() -> None:
    # Threat: an owner server presents a valid voucher that was transferred to someone else.
    w = world()
    voucher, _ = extended(w)
    with pytest.raises(VoucherError, match="final owner"):
        voucher.verify(owner=ec.generate_private_key(ec.SECP384R1()).public_key())


def test_extend_with_a_key_that_is_not_the_owners_is_refused() -> None:
    # Threat: a party without the owner's key tries to transfer the device.
    w = world()
    with pytest.raises(VoucherError, match="not the current owner's key"):
        w.voucher.extend(
            ec.generate_private_key(ec.SECP384R1()),
            PublicKey.from_key(ec.generate_private_key(ec.SECP384R1()).public_key()),
        )
    with pytest.raises(VoucherError, match="voucher's keys are SECP384R1"):
        w.voucher.extend(
            w.mfg, PublicKey.from_key(ec.generate_private_key(ec.SECP256R1()).public_key())
        )


def test_swapped_device_cert_chain_is_rejected() -> None:
    # Threat: another device's certificate chain attached to this device's voucher.
    w, other = world(), world()
    with pytest.raises(VoucherError, match="chain does not match its hash"):
        replace(w.voucher, cert_chain=other.chain).verify()
    with pytest.raises(VoucherError, match="both be present"):
        replace(w.voucher, cert_chain=None).verify()


def test_malformed_vouchers_are_message_errors() -> None:
    w = world()
    data = w.voucher.to_cbor()
    for bad in ([], [101, b"\xa0", data[2], None, []], [101, data[1], [-16, b"0" * 32], None, []]):
        with pytest.raises(FdoMessageError):
            Voucher.from_cbor(bad)
    with pytest.raises(FdoMessageError, match="no END"):
        Voucher.load("-----BEGIN OWNERSHIP VOUCHER-----\nAAAA\n")
    with pytest.raises(FdoMessageError, match="base64"):
        Voucher.load("-----BEGIN OWNERSHIP VOUCHER-----\n!!!\n-----END OWNERSHIP VOUCHER-----")
