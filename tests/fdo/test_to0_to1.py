"""The owner's TO0 and the device's TO1 without a network: where each side goes (RendezvousInfo),
the messages they build, and the arguments they refuse before sending anything."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from afield.errors import FdoError
from afield.fdo.cbor import decode
from afield.fdo.credential import DeviceCredential
from afield.fdo.eat import EAT_NONCE, EAT_UEID, EatPayload
from afield.fdo.messages import To1dPayload
from afield.fdo.rendezvous import (
    RendezvousDirective,
    RendezvousInfo,
    RendezvousInstr,
    RvProtocol,
    RvTo2Addr,
    RvTo2AddrEntry,
    RvVar,
    TransportProtocol,
    owner_rv_urls,
)
from afield.fdo.to0 import owner_sign_message, register
from afield.fdo.to1 import RvTarget, device_rv_targets, find_owner, prove_to_rv_message
from afield.fdo.types import Guid, Hash, HashAlg, Nonce, PublicKey, SigType
from tests.fdo.factory import World, world

ADDRS = RvTo2Addr((RvTo2AddrEntry(None, "owner.example.com", 8043, TransportProtocol.HTTPS),))
NOWHERE = "http://127.0.0.1:9"  # nothing may be sent: the arguments are refused first
build = RendezvousDirective.build


def bypass(**kwargs: object) -> RendezvousDirective:
    """A directive of ``build(**kwargs)`` with RVBypass added."""
    directive = build(**kwargs)  # type: ignore[arg-type]
    return RendezvousDirective((*directive.instructions, RendezvousInstr(RvVar.BYPASS)))


INFO = RendezvousInfo(
    (
        build(dns="rv.example.com", dev_port=8041, owner_port=8042, protocol=RvProtocol.HTTP),
        build(ip="10.0.0.1", protocol=RvProtocol.HTTPS, owner_only=True, delay=7),
        build(
            dns="dev.example.com", ip="fd00::1", protocol=RvProtocol.HTTP, dev_only=True, delay=9
        ),
        bypass(dns="owner.example.com", dev_port=8043, protocol=RvProtocol.HTTPS),
    )
)


def test_owner_goes_to_every_rendezvous_server_but_device_only_and_bypass_ones() -> None:
    assert owner_rv_urls(INFO) == ["http://rv.example.com:8042", "https://10.0.0.1:443"]


def test_device_targets_follow_the_directives_with_their_delays_and_bypass() -> None:
    assert device_rv_targets(INFO) == [
        RvTarget("http://rv.example.com:8041"),
        RvTarget("http://dev.example.com:80"),
        RvTarget("http://[fd00::1]:80", delay=9),
        RvTarget("https://owner.example.com:8043", bypass=True),
    ]


@pytest.mark.parametrize(
    ("protocol", "urls"),
    [
        (None, ["https://rv.example.com:443"]),
        (RvProtocol.TLS, ["https://rv.example.com:443"]),
        (RvProtocol.REST, ["https://rv.example.com:443", "http://rv.example.com:80"]),
        (RvProtocol.TCP, []),
        (RvProtocol.COAP_UDP, []),
    ],
)
def test_protocols_map_to_url_schemes(protocol: RvProtocol | None, urls: list[str]) -> None:
    directive = build(dns="rv.example.com", protocol=protocol)
    assert directive.urls() == urls
    assert directive.urls(owner=True) == urls


def credential(w: World) -> DeviceCredential:
    return DeviceCredential(
        active=True,
        hmac_secret=w.hmac_secret,
        device_info=w.header.device_info,
        guid=w.header.guid,
        rv_info=w.header.rv_info,
        public_key_hash=Hash.of(HashAlg.SHA256, b"unused here"),
    )


@pytest.mark.parametrize(
    ("curve", "sig_type"), [(ec.SECP256R1(), SigType.ES256), (ec.SECP384R1(), SigType.ES384)]
)
def test_prove_to_rv_is_an_eat_with_the_nonce_claim_signed_by_the_device(
    curve: ec.EllipticCurve, sig_type: SigType
) -> None:
    key = ec.generate_private_key(curve)
    guid, nonce = Guid.random(), Nonce.random()
    token = prove_to_rv_message(guid, nonce, key).token
    token.verify(key.public_key())
    assert token.alg == sig_type
    claims = decode(token.payload)
    assert claims[EAT_NONCE] == nonce.value
    assert claims[EAT_UEID] == b"\x01" + guid.value
    assert token.unprotected == {}
    assert EatPayload.from_cbor(claims) == EatPayload(nonce, guid)


@pytest.mark.parametrize(
    ("curve", "alg"), [(ec.SECP256R1(), HashAlg.SHA256), (ec.SECP384R1(), HashAlg.SHA384)]
)
def test_owner_sign_binds_the_to1d_to_the_to0d(curve: ec.EllipticCurve, alg: HashAlg) -> None:
    w = world(curve)
    owner = ec.generate_private_key(curve)
    voucher = w.voucher.extend(w.mfg, PublicKey.from_key(owner.public_key()))
    nonce = Nonce.random()
    message = owner_sign_message(voucher, owner, ADDRS, 3600, nonce)
    message.to1d.verify(owner.public_key())
    payload = To1dPayload.from_cbor(decode(message.to1d.payload))
    assert payload.rv == ADDRS
    assert payload.to0d_hash == Hash.of(alg, message.to0d_bytes)
    assert (message.to0d.wait_seconds, message.to0d.nonce) == (3600, nonce)
    assert message.to0d.voucher.encode() == voucher.encode()


def test_register_refuses_a_key_that_does_not_own_the_voucher() -> None:
    # Threat: an owner registers with a key the rendezvous server will refuse anyway, or signs
    # a to1d for a voucher that is not theirs.
    w = world()
    owner = ec.generate_private_key(ec.SECP384R1())
    voucher = w.voucher.extend(w.mfg, PublicKey.from_key(owner.public_key()))
    with pytest.raises(FdoError, match="not the last owner key"):
        register(NOWHERE, voucher, ec.generate_private_key(ec.SECP384R1()), ADDRS, 60)
    with pytest.raises(FdoError, match="no entries"):
        register(NOWHERE, w.voucher, w.mfg, ADDRS, 60)
    with pytest.raises(FdoError, match="wait_seconds"):
        register(NOWHERE, voucher, owner, ADDRS, 2**32)
    with pytest.raises(FdoError, match="to2_addrs"):
        register(NOWHERE, voucher, owner, [], 60)


def test_find_owner_refuses_a_key_without_an_fdo_signature_type() -> None:
    w = world()
    with pytest.raises(FdoError, match="device key"):
        find_owner(NOWHERE, credential(w), ec.generate_private_key(ec.SECP521R1()))
