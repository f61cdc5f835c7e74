"""The FDO base types, rendezvous info, EAT claims, service info and the device credential."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from afield.fdo import ErrorCode, FdoMessageError
from afield.fdo.cbor import decode, encode
from afield.fdo.credential import DeviceCredential
from afield.fdo.eat import EatPayload
from afield.fdo.rendezvous import (
    RendezvousDirective,
    RendezvousInfo,
    RendezvousInstr,
    RvProtocol,
    RvTo2Addr,
    RvTo2AddrEntry,
    RvVar,
    TransportProtocol,
)
from afield.fdo.serviceinfo import Devmod, ServiceInfoKV, chunk_service_info
from afield.fdo.types import (
    Guid,
    Hash,
    HashAlg,
    KeyEncoding,
    KeyType,
    Nonce,
    PublicKey,
    SigInfo,
    SigType,
)
from afield.fdo.voucher import Voucher
from tests.fdo.factory import cert

VECTORS = Path(__file__).parent / "vectors"


def roundtrip(value: object, cls: type) -> object:
    parsed = cls.from_cbor(decode(encode(value.to_cbor())))  # type: ignore[attr-defined]
    assert parsed == value
    return parsed


def test_guid_nonce_hash_siginfo_roundtrip() -> None:
    roundtrip(Guid.random(), Guid)
    roundtrip(Nonce.random(), Nonce)
    for alg in HashAlg:
        value = Hash.hmac(alg, b"k", b"data") if alg.is_hmac else Hash.of(alg, b"data")
        assert encode(value.to_cbor()).startswith(b"\x82" + encode(int(alg)))
        roundtrip(value, Hash)
    for sig in SigType:
        roundtrip(SigInfo(sig), SigInfo)
    assert Hash.of(HashAlg.SHA256, b"a", b"b") == Hash.of(HashAlg.SHA256, b"ab")
    assert int(HashAlg.SHA256) == -16 and int(HashAlg.SHA384) == -43
    assert int(HashAlg.HMAC_SHA256) == 5 and int(HashAlg.HMAC_SHA384) == 6


def test_hash_of_wrong_length_or_type_is_rejected() -> None:
    with pytest.raises(FdoMessageError, match="expected 32 bytes"):
        Hash.from_cbor([-16, b"x" * 48])
    with pytest.raises(FdoMessageError, match="unknown hash type"):
        Hash.from_cbor([7, b"x" * 32])
    with pytest.raises(FdoMessageError, match="expected 16 bytes"):
        Guid.from_cbor(b"x" * 15)


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1()])
def test_public_key_encodings_roundtrip_to_the_same_key(curve: ec.EllipticCurve) -> None:
    key = ec.generate_private_key(curve)
    expected = KeyType.SECP256R1 if isinstance(curve, ec.SECP256R1) else KeyType.SECP384R1
    x509_key = roundtrip(PublicKey.from_key(key.public_key()), PublicKey)
    cose_key = roundtrip(PublicKey.from_key(key.public_key(), KeyEncoding.COSEKEY), PublicKey)
    chain_key = roundtrip(PublicKey.from_chain([cert(key, "owner")]), PublicKey)
    for wrapped in (x509_key, cose_key, chain_key):
        assert isinstance(wrapped, PublicKey)
        assert wrapped.type == expected
        assert wrapped.same_key(key.public_key())
    assert isinstance(chain_key, PublicKey) and chain_key.chain() is not None


def test_rsa_public_key_crypto_encoding() -> None:
    key = rsa.generate_private_key(65537, 2048)
    wrapped = roundtrip(PublicKey.from_key(key.public_key(), KeyEncoding.CRYPTO), PublicKey)
    assert isinstance(wrapped, PublicKey) and wrapped.type == KeyType.RSA2048RESTR
    assert wrapped.same_key(key.public_key())


def test_public_key_with_a_mismatched_type_is_rejected() -> None:
    # Threat: a P-256 key declared as P-384 to confuse the key-type checks of a voucher.
    key = ec.generate_private_key(ec.SECP256R1())
    body = PublicKey.from_key(key.public_key()).to_cbor()
    body[0] = int(KeyType.SECP384R1)
    with pytest.raises(FdoMessageError, match="declared as SECP384R1"):
        PublicKey.from_cbor(body)
    with pytest.raises(FdoMessageError):
        PublicKey.from_cbor([10, 1, b"not a key"])


def test_rendezvous_info_roundtrip_and_accessors() -> None:
    directive = RendezvousDirective.build(
        dns="rv.example.com",
        ip="192.168.1.2",
        dev_port=8080,
        owner_port=8443,
        protocol=RvProtocol.HTTPS,
        dev_only=True,
        delay=30,
    )
    info = roundtrip(RendezvousInfo((directive,)), RendezvousInfo)
    assert isinstance(info, RendezvousInfo)
    (parsed,) = info.directives
    assert parsed.dns == "rv.example.com"
    assert parsed.ip == "192.168.1.2"
    assert (parsed.dev_port, parsed.owner_port, parsed.delay) == (8080, 8443, 30)
    assert parsed.protocol == RvProtocol.HTTPS
    assert parsed.dev_only and not parsed.owner_only
    assert info.for_owner() == [] and info.for_device() == [parsed]
    # Flags are sent as [var] and values wrapped in a bstr.
    assert RendezvousInstr(RvVar.DEV_ONLY).to_cbor() == [0]
    assert RendezvousInstr(RvVar.DEV_PORT, 8080).to_cbor() == [3, encode(8080)]


@pytest.mark.parametrize("flag", [[0], [0, None], [0, b"\xf6"], [0, b"\xf5"]])
def test_flag_variables_are_accepted_with_or_without_a_null_value(flag: list[object]) -> None:
    info = RendezvousInfo.from_cbor([[flag, [5, encode("rv.example.com")]]])
    assert info.directives[0].dev_only


def test_rendezvous_values_of_the_wrong_type_are_rejected() -> None:
    with pytest.raises(FdoMessageError, match="unsigned 16-bit"):
        RendezvousInfo.from_cbor([[[3, encode(70000)]]])
    with pytest.raises(FdoMessageError, match="4 or 16 bytes"):
        RendezvousInfo.from_cbor([[[2, encode(b"\x01\x02")]]])
    with pytest.raises(FdoMessageError, match="takes no value"):
        RendezvousInfo.from_cbor([[[1, encode(5)]]])


def test_rv_to2_addr_roundtrip() -> None:
    addr = RvTo2Addr(
        (
            RvTo2AddrEntry(bytes([127, 0, 0, 1]), None, 8042, TransportProtocol.HTTP),
            RvTo2AddrEntry(None, "owner.example.com", 443, TransportProtocol.HTTPS),
        )
    )
    roundtrip(addr, RvTo2Addr)
    with pytest.raises(FdoMessageError, match="IP address or a DNS name"):
        RvTo2AddrEntry.from_cbor([None, None, 80, 3])


def test_an_ip_address_of_the_wrong_size_gets_the_specs_invalid_ip_code() -> None:
    with pytest.raises(FdoMessageError, match=r"RVTO2AddrEntry\[0\]: an IP address is 4") as caught:
        RvTo2AddrEntry.from_cbor([b"\x0a\x00\x00", None, 80, 3])
    assert caught.value.code == ErrorCode.INVALID_IP_ADDRESS


def test_eat_payload_roundtrip_and_old_ueid_claim() -> None:
    guid, nonce = Guid.random(), Nonce.random()
    eat = EatPayload(nonce, guid, [b"xB"], {-99: "extra"})
    claims = eat.to_cbor()
    assert claims[256] == b"\x01" + guid.value and claims[10] == nonce.value
    assert claims[-257] == [b"xB"]
    roundtrip(eat, EatPayload)
    claims[11] = claims.pop(256)
    assert EatPayload.from_cbor(decode(encode(claims))).guid == guid
    with pytest.raises(FdoMessageError, match="ueid"):
        EatPayload.from_cbor({10: nonce.value})


def test_devmod_has_every_mandatory_key_and_roundtrips() -> None:
    devmod = Devmod(
        os="Linux",
        arch="x86_64",
        version="Debian 12",
        device="gateway",
        sep=";",
        bin="x86_64",
        modules=("devmod", "fdo.command", "afield"),
        sn="SN1",
    )
    kvs = devmod.to_kvs()
    keys = {kv.key for kv in kvs}
    assert {f"devmod:{k}" for k in Devmod.REQUIRED} <= keys
    assert Devmod.from_kvs(kvs) == devmod
    with pytest.raises(FdoMessageError, match="lacks mandatory keys os"):
        Devmod.from_kvs([kv for kv in kvs if kv.key != "devmod:os"])


def test_devmod_modules_may_arrive_in_several_chunks() -> None:
    base = Devmod("Linux", "arm64", "1", "d", ";", "arm64", modules=("a", "b", "c"))
    kvs = [kv for kv in base.to_kvs() if kv.key != "devmod:modules"]
    kvs.append(ServiceInfoKV.of("devmod", "modules", [0, 2, "a", "b"]))
    kvs.append(ServiceInfoKV.of("devmod", "modules", [2, 1, "c"]))
    assert Devmod.from_kvs(kvs).modules == ("a", "b", "c")


def test_service_info_chunks_fit_the_mtu() -> None:
    kvs = [ServiceInfoKV.of("afield", f"file{i}", b"x" * 300) for i in range(10)]
    chunks = chunk_service_info(kvs, 1300)
    assert [kv for chunk in chunks for kv in chunk] == kvs
    assert len(chunks) > 1
    for chunk in chunks:
        assert len(encode([False, [kv.to_cbor() for kv in chunk]])) <= 1300
    with pytest.raises(ValueError, match="does not fit"):
        chunk_service_info([ServiceInfoKV.of("m", "big", b"x" * 2000)], 1300)


def test_credential_roundtrip_and_fido_device_onboard_rs_format() -> None:
    # Interop vector: testdata/dc.bin of go-fdo, written by fido-device-onboard-rs's
    # fdo-owner-tool initialize-device together with testdata/ov.pem.
    rs = DeviceCredential.from_rs_cbor(decode((VECTORS / "dc.bin").read_bytes()))
    assert rs.device_info == "go.fdo.example"
    assert str(rs.guid) == "66b2146f-fec5-3ca6-ad01-7625990572ce"
    assert rs.rv_info.directives[1].dns == "fdo.example.com"
    voucher = Voucher.load((VECTORS / "ov.pem").read_text())
    assert rs.owner_key_matches(voucher.header.manufacturer_key)
    roundtrip(rs, DeviceCredential)
