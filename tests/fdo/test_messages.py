"""Every protocol message: type numbers, roundtrips, strict decoding, and fuzzing every decoder."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from afield.errors import MessageError
from afield.fdo import MESSAGES, ErrorCode, FdoMessageError, Limits, decode_message
from afield.fdo.cbor import CborTag, decode, encode
from afield.fdo.cose import Sign1
from afield.fdo.credential import DeviceCredential
from afield.fdo.eat import EUPH_NONCE, EatPayload
from afield.fdo.kex import CipherSuite, KexSuite
from afield.fdo.messages import (
    DIAppStart,
    DIDone,
    DISetCredentials,
    DISetHMAC,
    ErrorMessage,
    Message,
    ProveOVHdrPayload,
    SetupDevicePayload,
    TO0AcceptOwner,
    TO0d,
    TO0Hello,
    TO0HelloAck,
    TO0OwnerSign,
    To1dPayload,
    TO1HelloRV,
    TO1HelloRVAck,
    TO1ProveToRV,
    TO1RVRedirect,
    TO2DeviceServiceInfo,
    TO2DeviceServiceInfoReady,
    TO2Done,
    TO2Done2,
    TO2GetOVNextEntry,
    TO2HelloDevice,
    TO2OVNextEntry,
    TO2OwnerServiceInfo,
    TO2OwnerServiceInfoReady,
    TO2ProveDevice,
    TO2ProveOVHdr,
    TO2SetupDevice,
    effective_message_size,
)
from afield.fdo.rendezvous import RvTo2Addr, RvTo2AddrEntry, TransportProtocol
from afield.fdo.serviceinfo import Devmod, ServiceInfoKV
from afield.fdo.types import Hash, HashAlg, Nonce, PublicKey, SigInfo, SigType
from afield.fdo.voucher import OVEntryPayload, OVHeader, Voucher
from tests.fdo.factory import world

W = world()
OWNER = ec.generate_private_key(ec.SECP384R1())
VOUCHER = W.voucher.extend(W.mfg, PublicKey.from_key(OWNER.public_key()))
NONCE = Nonce.random()
HASH = Hash.of(HashAlg.SHA384, b"x")
SIG = SigInfo(SigType.ES384)
TO1D = Sign1.sign(
    OWNER,
    encode(
        To1dPayload(
            RvTo2Addr((RvTo2AddrEntry(None, "owner.example", 8043, TransportProtocol.HTTPS),)),
            HASH,
        ).to_cbor()
    ),
)
EAT = Sign1.sign(
    W.device,
    encode(EatPayload(NONCE, W.header.guid, [b"xB"]).to_cbor()),
    unprotected={EUPH_NONCE: Nonce.random().value},
)
PROVE_OVHDR = Sign1.sign(
    OWNER,
    encode(
        ProveOVHdrPayload(
            VOUCHER.header_bytes, 1, VOUCHER.header_hmac, NONCE, SIG, b"xA", HASH, 1300
        ).to_cbor()
    ),
    unprotected={256: NONCE.value, 257: PublicKey.from_key(OWNER.public_key()).to_cbor()},
)
SETUP = Sign1.sign(
    OWNER,
    encode(
        SetupDevicePayload(
            W.header.rv_info, W.header.guid, NONCE, PublicKey.from_key(OWNER.public_key())
        ).to_cbor()
    ),
)
KVS = tuple(Devmod("Linux", "x86_64", "12", "gw", ";", "x86_64").to_kvs())

EXAMPLES: list[Message] = [
    DIAppStart({"serial": "SN1"}),
    DIAppStart(None),
    DISetCredentials(W.voucher.header_bytes),
    DISetHMAC(W.voucher.header_hmac),
    DIDone(),
    TO0Hello(),
    TO0HelloAck(NONCE),
    TO0OwnerSign(encode(TO0d(VOUCHER, 3600, NONCE).to_cbor()), TO1D),
    TO0AcceptOwner(3600),
    TO1HelloRV(W.header.guid, SIG),
    TO1HelloRVAck(NONCE, SIG),
    TO1ProveToRV(EAT),
    TO1RVRedirect(TO1D),
    TO2HelloDevice(
        1300, W.header.guid, NONCE, KexSuite.ECDH384.value, int(CipherSuite.A256GCM), SIG
    ),
    TO2ProveOVHdr(PROVE_OVHDR),
    TO2GetOVNextEntry(0),
    TO2OVNextEntry(0, VOUCHER.entries[0]),
    TO2ProveDevice(EAT),
    TO2SetupDevice(SETUP),
    TO2DeviceServiceInfoReady(Hash.hmac(HashAlg.HMAC_SHA384, b"k", b"h"), 8192),
    TO2DeviceServiceInfoReady(None, None),
    TO2OwnerServiceInfoReady(None),
    TO2OwnerServiceInfoReady(1300),
    TO2DeviceServiceInfo(False, KVS),
    TO2OwnerServiceInfo(True, False, (ServiceInfoKV.of("afield", "fleet_url", "https://f"),)),
    TO2Done(NONCE),
    TO2Done2(NONCE),
    ErrorMessage(101, 64, "signature does not verify", None, None),
    ErrorMessage(100, 60, "bad body", 1700000000, 7),
]


def test_message_type_numbers_are_the_specs() -> None:
    assert sorted(MESSAGES) == [
        *range(10, 14),
        *range(20, 24),
        *range(30, 34),
        *range(60, 72),
        255,
    ]
    assert {type(m).MSG_TYPE for m in EXAMPLES} == set(MESSAGES)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_roundtrips(message: Message) -> None:
    data = message.encode()
    parsed = decode_message(type(message).MSG_TYPE, data)
    assert parsed == message
    assert parsed.encode() == data


def test_signed_payloads_decode_after_verification() -> None:
    TO2ProveOVHdr.decode(PROVE_OVHDR.encode())
    PROVE_OVHDR.verify(OWNER.public_key())
    payload = ProveOVHdrPayload.from_cbor(decode(PROVE_OVHDR.payload))
    assert payload.nonce == NONCE and payload.num_entries == 1
    EAT.verify(W.device.public_key())
    assert EatPayload.from_cbor(decode(EAT.payload)).fdo == [b"xB"]
    assert SetupDevicePayload.from_cbor(decode(SETUP.payload)).guid == W.header.guid
    owner_sign = TO0OwnerSign.decode(EXAMPLES[7].encode())
    assert isinstance(owner_sign, TO0OwnerSign)
    owner_sign.to0d.voucher.verify(hmac_secret=W.hmac_secret, owner=OWNER.public_key())


def test_error_message_has_five_elements() -> None:
    assert decode(ErrorMessage(101, 64, "x").encode()) == [101, 64, "x", None, None]
    with pytest.raises(FdoMessageError, match="5 elements"):
        ErrorMessage.decode(encode([101, 64, "x"]))


@pytest.mark.parametrize(
    ("msg_type", "body", "where"),
    [
        (60, [1300, b"g" * 16, b"n" * 16, "ECDH256", 1], "TO2.HelloDevice"),
        (60, [1300, b"g" * 15, b"n" * 16, "ECDH256", 1, [-7, b""]], "TO2.HelloDevice[1]"),
        (60, [1300, b"g" * 16, b"n" * 16, 5, 1, [-7, b""]], "TO2.HelloDevice[3]"),
        (62, [256], "TO2.GetOVNextEntry[0]"),
        (62, [True], "TO2.GetOVNextEntry[0]"),
        (68, ["true", []], "TO2.DeviceServiceInfo[0]"),
        (68, [True, [["nocolon", encode(1)]]], "TO2.DeviceServiceInfo[1][0][0]"),
        (68, [True, [["a:b", b"\xff"]]], "TO2.DeviceServiceInfo[1][0][1]"),
        (13, [0], "DI.Done"),
        (21, {}, "TO0.HelloAck"),
        (255, [70000, 1, "x", None, None], "Error[0]"),
    ],
)
def test_wrong_types_are_rejected_naming_the_field(msg_type: int, body: object, where: str) -> None:
    with pytest.raises(FdoMessageError) as error:
        decode_message(msg_type, encode(body))
    assert error.value.where == where
    assert error.value.code == ErrorCode.MESSAGE_BODY_ERROR


def test_unknown_message_type_is_rejected() -> None:
    with pytest.raises(FdoMessageError, match="unknown message type 99"):
        decode_message(99, encode([]))


def test_oversized_and_deep_bodies_are_rejected_by_every_decoder() -> None:
    # Threat: memory or stack exhaustion through any endpoint.
    deep = b"\x81" * 10_000 + b"\x00"
    big = encode([b"x" * 10_000])
    for msg_type in MESSAGES:
        with pytest.raises(FdoMessageError, match="nesting"):
            decode_message(msg_type, deep)
        with pytest.raises(FdoMessageError, match="exceeds the limit"):
            decode_message(msg_type, big, Limits(max_bytes=4096))


def test_nonsense_max_message_sizes_fall_back_to_sane_values() -> None:
    assert effective_message_size(None) == 1300
    assert effective_message_size(0) == 1300
    assert effective_message_size(1) == 1300
    assert effective_message_size(8192) == 8192
    assert effective_message_size(10**9) == 65535
    assert TO2HelloDevice.decode(encode([0, b"g" * 16, b"n" * 16, "ECDH256", 1, [-7, b""]]))


def only_fdo_errors(msg_type: int, data: bytes) -> None:
    """Decode; the only exception allowed is the FDO message error with code 100."""
    try:
        decode_message(msg_type, data)
    except FdoMessageError as e:
        assert isinstance(e, MessageError)
        assert e.code == ErrorCode.MESSAGE_BODY_ERROR


cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.binary(max_size=20)
    | st.sampled_from([b"n" * 16, b"g" * 16, encode(8080), encode([1, 2])])
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=8)
        | st.dictionaries(st.integers(-300, 300) | st.text(max_size=3), inner, max_size=4)
        | st.builds(CborTag, st.sampled_from([16, 18, 1, 0]), inner)
    ),
    max_leaves=30,
)

# Real messages with one element swapped for arbitrary CBOR reach deep into every decoder.
mutated = st.builds(
    lambda message, index, value: (type(message).MSG_TYPE, message, index, value),
    st.sampled_from(EXAMPLES),
    st.integers(0, 7),
    cbor_values,
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(MESSAGES)), st.binary(max_size=80))
def test_arbitrary_bytes_to_every_decoder(msg_type: int, data: bytes) -> None:
    # Threat: a crafted body crashes a server with an unhandled exception.
    only_fdo_errors(msg_type, data)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(MESSAGES)), cbor_values)
def test_arbitrary_cbor_to_every_decoder(msg_type: int, value: object) -> None:
    only_fdo_errors(msg_type, encode(value))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated)
def test_mutated_real_messages_to_every_decoder(case: tuple[int, Message, int, object]) -> None:
    msg_type, message, index, value = case
    body = message.to_cbor()
    if isinstance(body, CborTag):
        body = CborTag(body.tag, list(body.value))
        target = body.value
    else:
        target = body
    if target:
        target[index % len(target)] = value
    only_fdo_errors(msg_type, encode(body))


PAYLOAD_DECODERS = [
    ProveOVHdrPayload.from_cbor,
    SetupDevicePayload.from_cbor,
    To1dPayload.from_cbor,
    TO0d.from_cbor,
    EatPayload.from_cbor,
    OVHeader.from_cbor,
    OVEntryPayload.from_cbor,
    Voucher.from_cbor,
    DeviceCredential.from_cbor,
    DeviceCredential.from_rs_cbor,
    PublicKey.from_cbor,
    Sign1.from_cbor,
]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(PAYLOAD_DECODERS), cbor_values)
def test_arbitrary_cbor_to_every_payload_decoder(decoder: object, value: object) -> None:
    # Threat: a signed payload (decoded after the signature checks) or a stored voucher or
    # credential with a crafted shape crashes the code that reads it.
    try:
        decoder(value)  # type: ignore[operator]
    except FdoMessageError as e:
        assert e.code == ErrorCode.MESSAGE_BODY_ERROR
