"""The rendezvous server over HTTP (uvicorn on 127.0.0.1, SQLite file): TO0 from the owner client,
TO1 from the device client, and every forged or out-of-order message they must survive.

Devices are made by a real DI against a manufacturer server whose key the rendezvous server
trusts; their vouchers are extended to the PKI's owner key."""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from afield.fdo import ErrorCode, ErrorMessage
from afield.fdo.cbor import decode, encode
from afield.fdo.client import ServerError, Transport, manufacture
from afield.fdo.cose import Sign1, SigningKey
from afield.fdo.credential import DeviceCredential
from afield.fdo.eat import EUPH_NONCE, EatPayload
from afield.fdo.messages import (
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
)
from afield.fdo.pki import Pki, fingerprint, init_pki, load_private_key
from afield.fdo.rendezvous import (
    RendezvousDirective,
    RendezvousInfo,
    RvProtocol,
    RvTo2Addr,
    RvTo2AddrEntry,
    TransportProtocol,
)
from afield.fdo.server import (
    BindingSettings,
    ManufacturerSettings,
    RendezvousSettings,
    RvRegistration,
    SqlRendezvousStore,
    SqlVoucherStore,
    create_manufacturer_app,
    create_rendezvous_app,
    running,
)
from afield.fdo.to0 import owner_sign_message, register
from afield.fdo.to1 import find_owner, prove_to_rv_message
from afield.fdo.types import Guid, Hash, HashAlg, Nonce, PublicKey, SigInfo, SigType
from afield.fdo.voucher import OVHeader, Voucher
from tests.fdo.factory import world

RV = RendezvousInfo(
    (RendezvousDirective.build(dns="rv.example.com", dev_port=8041, protocol=RvProtocol.HTTP),)
)
ADDRS = RvTo2Addr((RvTo2AddrEntry(None, "owner.example.com", 8043, TransportProtocol.HTTPS),))
OTHER_ADDRS = RvTo2Addr((RvTo2AddrEntry(b"\x0a\x00\x00\x07", None, 8080, TransportProtocol.HTTP),))
MAX_WAIT = 3600


class Clock:
    """A settable UTC clock for the rendezvous server."""

    def __init__(self) -> None:
        self.now = datetime.datetime.now(datetime.UTC)

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += datetime.timedelta(seconds=seconds)


@dataclass
class Device:
    """A manufactured device: its credential and key, and its voucher extended to the owner."""

    credential: DeviceCredential
    key: SigningKey
    voucher: Voucher

    @property
    def guid(self) -> Guid:
        return self.credential.guid


@dataclass
class Served:
    """A rendezvous server and the manufacturer it trusts, with their stores and a client."""

    url: str
    store: SqlRendezvousStore
    clock: Clock
    http: httpx.Client
    pki: Pki
    mfg_url: str
    mfg_store: SqlVoucherStore
    directory: Path
    made: list[Device] = field(default_factory=list)

    def post(self, n: int, body: bytes, authorization: str | None = None) -> httpx.Response:
        """POST ``body`` as FDO message ``n``, with a session's Authorization when given."""
        headers = {"Content-Type": "application/cbor", "Message-Type": str(n)}
        if authorization is not None:
            headers["Authorization"] = authorization
        return self.http.post(f"/fdo/101/msg/{n}", content=body, headers=headers)

    def device(self, curve: str = "P-384") -> Device:
        """Run DI for a new device and extend its voucher to the PKI's owner key."""
        path = self.directory / f"device-{len(self.made)}"
        credential = manufacture(self.mfg_url, path, device_info="rv test", key_curve=curve)
        stored = self.mfg_store.get(credential.guid)
        assert stored is not None
        owner = self.pki.owner.public_key()
        voucher = stored.voucher.extend(self.pki.manufacturer.key, owner)
        made = Device(credential, load_private_key(f"{path}.key.pem"), voucher)
        self.made.append(made)
        return made

    def register(self, device: Device, wait_seconds: int = MAX_WAIT) -> int:
        """TO0 for ``device`` with the PKI's owner key."""
        return register(self.url, device.voucher, self.pki.owner.key, ADDRS, wait_seconds)

    def stored(self, guid: Guid) -> RvRegistration | None:
        return self.store.get(guid)


@contextmanager
def rendezvous(directory: Path, **binding: Any) -> Iterator[Served]:
    """A manufacturer and a rendezvous server trusting it, each with its own SQLite file."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = init_pki(directory / "pki")
    mfg_store = SqlVoucherStore(f"sqlite:///{directory / 'mfg.db'}")
    mfg_app = create_manufacturer_app(pki, mfg_store, ManufacturerSettings(rv_info=RV))
    store = SqlRendezvousStore(f"sqlite:///{directory / 'rv.db'}")
    clock = Clock()
    rv_settings = RendezvousSettings(
        (pki.manufacturer.public_key(),),
        max_wait_seconds=MAX_WAIT,
        binding=BindingSettings(**binding),
    )
    app = create_rendezvous_app(store, rv_settings, clock=clock)
    try:
        with (
            running(mfg_app) as mfg_url,
            running(app) as url,
            httpx.Client(base_url=url, timeout=10) as http,
        ):
            yield Served(url, store, clock, http, pki, mfg_url, mfg_store, directory)
    finally:
        store.close()
        mfg_store.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One rendezvous server for the module; its clock never moves, every attack leaves it
    serving."""
    with rendezvous(tmp_path_factory.mktemp("rv"), session_ttl=30) as s:
        yield s


def error_of(response: httpx.Response) -> ErrorMessage:
    """The Error message of a refusal: HTTP 500, CBOR, Message-Type 255, 5 elements."""
    assert response.status_code == 500, response.content
    assert response.headers["content-type"] == "application/cbor"
    assert response.headers["message-type"] == "255"
    body = decode(response.content)
    assert isinstance(body, list)
    assert len(body) == 5
    error = ErrorMessage.from_cbor(body)
    assert isinstance(error.correlation_id, int)
    return error


def refused(error: pytest.ExceptionInfo[ServerError], code: int, prev: int) -> str:
    """The server's text, once the code and the refused message are the expected ones."""
    assert (error.value.code, error.value.prev_msg_type) == (code, prev), error.value
    return error.value.server_message


def to0_session(served: Served) -> tuple[Transport, Nonce]:
    """A TO0 session opened with TO0.Hello, and its NonceTO0Sign."""
    transport = Transport(served.url)
    ack = transport.send(TO0Hello(), TO0HelloAck)
    assert isinstance(ack, TO0HelloAck)
    return transport, ack.nonce


def to1_session(served: Served, device: Device) -> tuple[Transport, Nonce]:
    """A TO1 session opened with TO1.HelloRV for ``device``, and its NonceTO1Proof."""
    transport = Transport(served.url)
    hello = TO1HelloRV(device.guid, SigInfo(SigType.ES384))
    ack = transport.send(hello, TO1HelloRVAck)
    assert isinstance(ack, TO1HelloRVAck)
    return transport, ack.nonce


def assert_serves(served: Served) -> None:
    """A fresh device still completes TO0 and TO1."""
    device = served.device()
    served.register(device)
    assert find_owner(served.url, device.credential, device.key).addrs == ADDRS


# --- the protocol ---------------------------------------------------------------------------


@pytest.mark.parametrize("curve", ["P-256", "P-384"])
def test_device_gets_exactly_the_to1d_its_owner_signed(served: Served, curve: str) -> None:
    device = served.device(curve)
    transport, nonce = to0_session(served)
    message = owner_sign_message(device.voucher, served.pki.owner.key, ADDRS, 600, nonce)
    accepted = transport.send(message, TO0AcceptOwner)
    assert accepted == TO0AcceptOwner(600)

    found = find_owner(served.url, device.credential, device.key)

    assert found.to1d.encode() == message.to1d.encode()
    assert found.addrs == ADDRS
    found.to1d.verify(served.pki.owner.key.public_key())
    stored = served.stored(device.guid)
    assert stored is not None
    assert stored.expires_at - stored.registered_at == datetime.timedelta(seconds=600)
    assert stored.owner_key_fingerprint == fingerprint(served.pki.owner.public_key())
    assert stored.manufacturer_key_fingerprint == fingerprint(served.pki.manufacturer.cert)


def test_a_second_to0_by_a_new_owner_replaces_the_first(served: Served) -> None:
    device = served.device()
    served.register(device)
    new_owner = ec.generate_private_key(ec.SECP384R1())
    voucher = device.voucher.extend(
        served.pki.owner.key, PublicKey.from_key(new_owner.public_key())
    )

    granted = register(served.url, voucher, new_owner, list(OTHER_ADDRS.entries), 120)

    assert granted == 120
    found = find_owner(served.url, device.credential, device.key)
    assert found.addrs == OTHER_ADDRS
    found.to1d.verify(new_owner.public_key())
    payload = To1dPayload.from_cbor(decode(found.to1d.payload))
    assert payload.to0d_hash.alg == HashAlg.SHA384


def test_a_former_owner_cannot_take_back_a_registered_device(tmp_path: Path) -> None:
    # Threat: the seller keeps its own voucher (which still verifies) and re-registers the
    # device it sold, sending it back to itself.
    with rendezvous(tmp_path / "own") as own:
        device = own.device()
        buyer = ec.generate_private_key(ec.SECP384R1())
        sold = device.voucher.extend(own.pki.owner.key, PublicKey.from_key(buyer.public_key()))
        register(own.url, sold, buyer, list(OTHER_ADDRS.entries), 600)
        before = own.stored(device.guid)

        with pytest.raises(ServerError) as caught:
            own.register(device)

        assert "does not pass through" in refused(caught, ErrorCode.INVALID_OWNERSHIP_VOUCHER, 22)
        assert own.stored(device.guid) == before
        # The buyer renews; once its registration has lapsed, the voucher decides again.
        assert register(own.url, sold, buyer, list(OTHER_ADDRS.entries), 60) == 60
        own.clock.advance(61)
        assert own.register(device) == MAX_WAIT
        assert find_owner(own.url, device.credential, device.key).addrs == ADDRS


def test_wait_seconds_are_capped_at_the_servers_maximum(served: Served) -> None:
    device = served.device()
    assert served.register(device, wait_seconds=MAX_WAIT * 10) == MAX_WAIT
    stored = served.stored(device.guid)
    assert stored is not None
    assert stored.expires_at - stored.registered_at == datetime.timedelta(seconds=MAX_WAIT)
    # 0 asks for no particular time: the server grants its maximum.
    assert served.register(device, wait_seconds=0) == MAX_WAIT


def test_metrics_count_messages_and_errors(served: Served) -> None:
    served.post(30, b"\xff")
    text = served.http.get("/metrics").text
    assert 'afield_fdo_messages_total{type="30"}' in text
    assert 'afield_fdo_errors_total{code="100"}' in text
    assert served.http.get("/healthz").text == "ok\n"


def test_eat_nonce_in_the_unprotected_header_is_accepted(served: Served) -> None:
    # Tolerance: some devices put NonceTO1Proof in EUPHNonce instead of the EAT-NONCE claim.
    device = served.device()
    served.register(device)
    transport, nonce = to1_session(served, device)
    claims = EatPayload(nonce, device.guid).to_cbor()
    del claims[10]
    token = Sign1.sign(device.key, encode(claims), unprotected={EUPH_NONCE: nonce.value})
    redirect = transport.send(TO1ProveToRV(token), TO1RVRedirect)
    assert isinstance(redirect, TO1RVRedirect)
    assert To1dPayload.from_cbor(decode(redirect.token.payload)).rv == ADDRS


# --- TO0 attacks: refused with the right code, nothing stored or replaced ------------------


def test_voucher_of_an_untrusted_manufacturer_is_refused(served: Served) -> None:
    # Threat: anyone mints a voucher with their own "manufacturer" key and claims a device.
    w = world()
    owner = ec.generate_private_key(ec.SECP384R1())
    voucher = w.voucher.extend(w.mfg, PublicKey.from_key(owner.public_key()))
    with pytest.raises(ServerError) as caught:
        register(served.url, voucher, owner, ADDRS, 60)
    text = refused(caught, ErrorCode.INVALID_OWNERSHIP_VOUCHER, 22)
    assert "not trusted" in text
    assert served.stored(w.header.guid) is None
    assert_serves(served)


def test_voucher_with_a_tampered_header_does_not_replace_the_registration(
    served: Served,
) -> None:
    # Threat: a voucher whose header was edited (another DeviceInfo, another GUID's header)
    # hijacks a registered device.
    device = served.device()
    served.register(device)
    before = served.stored(device.guid)
    header = device.voucher.header
    forged = OVHeader(
        header.guid, header.rv_info, "tampered", header.manufacturer_key, header.cert_chain_hash
    )
    voucher = Voucher(
        encode(forged.to_cbor()),
        device.voucher.header_hmac,
        device.voucher.cert_chain,
        device.voucher.entries,
    )
    with pytest.raises(ServerError) as caught:
        register(served.url, voucher, served.pki.owner.key, OTHER_ADDRS, 60)
    assert "entry 0" in refused(caught, ErrorCode.INVALID_OWNERSHIP_VOUCHER, 22)
    assert served.stored(device.guid) == before


def test_voucher_entry_with_a_bad_signature_is_refused(served: Served) -> None:
    # Threat: an entry that the previous owner never signed transfers the device.
    device = served.device()
    entry = device.voucher.entries[0]
    signature = bytes([entry.signature[0] ^ 0x01]) + entry.signature[1:]
    bad = Sign1(entry.protected, entry.unprotected, entry.payload, signature)
    voucher = Voucher(
        device.voucher.header_bytes, device.voucher.header_hmac, device.voucher.cert_chain, [bad]
    )
    with pytest.raises(ServerError) as caught:
        register(served.url, voucher, served.pki.owner.key, ADDRS, 60)
    assert "not signed" in refused(caught, ErrorCode.INVALID_OWNERSHIP_VOUCHER, 22)
    assert served.stored(device.guid) is None


def test_voucher_without_entries_is_refused(served: Served) -> None:
    # Threat: the manufacturer's own key registers a device it has sold on.
    device = served.device()
    stored = served.mfg_store.get(device.guid)
    assert stored is not None
    transport, nonce = to0_session(served)
    message = owner_sign_message(stored.voucher, served.pki.manufacturer.key, ADDRS, 60, nonce)
    with pytest.raises(ServerError) as caught:
        transport.send(message, TO0AcceptOwner)
    assert "no entries" in refused(caught, ErrorCode.INVALID_OWNERSHIP_VOUCHER, 22)
    assert served.stored(device.guid) is None


def test_to1d_not_signed_by_the_vouchers_owner_is_refused(served: Served) -> None:
    # Threat: someone holding a copy of the voucher, but not the owner key, redirects the device.
    device = served.device()
    intruder = ec.generate_private_key(ec.SECP384R1())
    transport, nonce = to0_session(served)
    message = owner_sign_message(device.voucher, intruder, ADDRS, 60, nonce)
    with pytest.raises(ServerError) as caught:
        transport.send(message, TO0AcceptOwner)
    assert "owner key" in refused(caught, ErrorCode.INVALID_OWNER_SIGN_BODY, 22)
    assert served.stored(device.guid) is None


def test_to0d_hash_mismatch_is_refused(served: Served) -> None:
    # Threat: a to1d signed for one TO0d is replayed with another (longer WaitSeconds, another
    # voucher).
    device = served.device()
    transport, nonce = to0_session(served)
    signed = owner_sign_message(device.voucher, served.pki.owner.key, ADDRS, 60, nonce)
    other = encode(TO0d(device.voucher, MAX_WAIT, nonce).to_cbor())
    with pytest.raises(ServerError) as caught:
        transport.send(TO0OwnerSign(other, signed.to1d), TO0AcceptOwner)
    assert "to1dTo0dHash" in refused(caught, ErrorCode.INVALID_OWNER_SIGN_BODY, 22)
    assert served.stored(device.guid) is None


def test_to0d_hash_of_an_hmac_type_is_refused(served: Served) -> None:
    # Threat: a keyed "hash" nobody else can check stands in for the to0d hash.
    device = served.device()
    transport, nonce = to0_session(served)
    to0d = encode(TO0d(device.voucher, 60, nonce).to_cbor())
    payload = To1dPayload(ADDRS, Hash.hmac(HashAlg.HMAC_SHA384, b"k" * 48, to0d))
    to1d = Sign1.sign(served.pki.owner.key, encode(payload.to_cbor()))
    with pytest.raises(ServerError) as caught:
        transport.send(TO0OwnerSign(to0d, to1d), TO0AcceptOwner)
    assert "SHA384" in refused(caught, ErrorCode.MESSAGE_BODY_ERROR, 22)
    assert served.stored(device.guid) is None


def test_to0_nonce_mismatch_is_refused(served: Served) -> None:
    # Threat: a TO0.OwnerSign captured from an earlier session is replayed.
    device = served.device()
    transport, _ = to0_session(served)
    message = owner_sign_message(device.voucher, served.pki.owner.key, ADDRS, 60, Nonce.random())
    with pytest.raises(ServerError) as caught:
        transport.send(message, TO0AcceptOwner)
    assert "nonce" in refused(caught, ErrorCode.INVALID_MESSAGE_ERROR, 22).lower()
    assert served.stored(device.guid) is None


def test_owner_sign_before_hello_is_refused_as_out_of_order(served: Served) -> None:
    # Threat: a TO0.OwnerSign without a server nonce, i.e. with a nonce of the sender's choice.
    device = served.device()
    message = owner_sign_message(device.voucher, served.pki.owner.key, ADDRS, 60, Nonce.random())
    error = error_of(served.post(22, message.encode()))
    assert (error.code, error.prev_msg_type) == (ErrorCode.INVALID_MESSAGE_ERROR, 22)
    assert "out of order" in error.message
    assert served.stored(device.guid) is None


# --- TO1 attacks -----------------------------------------------------------------------------


def test_unknown_guid_is_not_found(served: Served) -> None:
    # Threat: a device learns an owner address nobody registered for it.
    transport = Transport(served.url)
    with pytest.raises(ServerError) as caught:
        transport.send(TO1HelloRV(Guid.random(), SigInfo(SigType.ES384)), TO1HelloRVAck)
    assert "not registered" in refused(caught, ErrorCode.RESOURCE_NOT_FOUND, 30)


def test_expired_registration_is_not_found(tmp_path: Path) -> None:
    # Threat: a device is sent to an owner whose registration (and maybe address) has lapsed.
    with rendezvous(tmp_path / "own") as own:
        device = own.device()
        assert own.register(device, wait_seconds=60) == 60
        own.clock.advance(59)
        transport, nonce = to1_session(own, device)  # still registered
        own.clock.advance(1)
        with pytest.raises(ServerError) as caught:
            transport.send(prove_to_rv_message(device.guid, nonce, device.key), TO1RVRedirect)
        expired = refused(caught, ErrorCode.RESOURCE_NOT_FOUND, 32)
        with pytest.raises(ServerError) as caught:
            find_owner(own.url, device.credential, device.key)
        assert refused(caught, ErrorCode.RESOURCE_NOT_FOUND, 30) == expired
        # Expired looks like never registered.
        unknown = Transport(own.url)
        with pytest.raises(ServerError) as caught:
            unknown.send(TO1HelloRV(Guid.random(), SigInfo(SigType.ES384)), TO1HelloRVAck)
        assert (
            refused(caught, ErrorCode.RESOURCE_NOT_FOUND, 30).split(" ", 2)[2]
            == (expired.split(" ", 2)[2])
        )
        assert own.store.purge(own.clock()) == 1
        assert own.store.get(device.guid) is None


def test_eat_nonce_mismatch_is_refused(served: Served) -> None:
    # Threat: a TO1.ProveToRV recorded earlier is replayed by someone without the device key.
    device = served.device()
    served.register(device)
    transport, _ = to1_session(served, device)
    with pytest.raises(ServerError) as caught:
        message = prove_to_rv_message(device.guid, Nonce.random(), device.key)
        transport.send(message, TO1RVRedirect)
    assert "nonce" in refused(caught, ErrorCode.INVALID_MESSAGE_ERROR, 32)


def test_eat_signed_by_another_key_is_refused(served: Served) -> None:
    # Threat: someone who knows a device's GUID, but lacks its key, learns where its owner is.
    device = served.device()
    served.register(device)
    transport, nonce = to1_session(served, device)
    impostor = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ServerError) as caught:
        transport.send(prove_to_rv_message(device.guid, nonce, impostor), TO1RVRedirect)
    assert "not signed" in refused(caught, ErrorCode.INVALID_MESSAGE_ERROR, 32)


def test_eat_for_another_guid_is_refused(served: Served) -> None:
    # Threat: a device's valid EAT for itself is used in a session opened for another device.
    device, other = served.device(), served.device()
    served.register(device)
    transport, nonce = to1_session(served, device)
    with pytest.raises(ServerError) as caught:
        transport.send(prove_to_rv_message(other.guid, nonce, device.key), TO1RVRedirect)
    assert "UEID" in refused(caught, ErrorCode.INVALID_MESSAGE_ERROR, 32)


def test_epid_signature_info_is_refused(served: Served) -> None:
    # Threat: a signature type the server cannot check is taken as proof.
    device = served.device()
    served.register(device)
    transport = Transport(served.url)
    with pytest.raises(ServerError) as caught:
        transport.send(TO1HelloRV(device.guid, SigInfo(SigType.EPID10)), TO1HelloRVAck)
    assert "EPID10" in refused(caught, ErrorCode.INVALID_MESSAGE_ERROR, 30)


def test_prove_to_rv_before_hello_rv_is_refused_as_out_of_order(served: Served) -> None:
    # Threat: an EAT with a nonce of the sender's choice.
    device = served.device()
    served.register(device)
    message = prove_to_rv_message(device.guid, Nonce.random(), device.key)
    error = error_of(served.post(32, message.encode()))
    assert (error.code, error.prev_msg_type) == (ErrorCode.INVALID_MESSAGE_ERROR, 32)
    assert "out of order" in error.message


# --- arbitrary input --------------------------------------------------------------------------

_CBOR_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64) + 1, 2**64 - 1) | st.binary() | st.text(),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.integers(-300, 300) | st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=20,
)
_BODIES = (
    st.binary(max_size=300)
    | _CBOR_VALUES.map(encode)
    | _CBOR_VALUES.map(lambda v: encode([encode(v)]))
    | st.tuples(_CBOR_VALUES, _CBOR_VALUES).map(lambda t: encode([encode(t[0]), t[1]]))
    | _CBOR_VALUES.map(lambda v: encode([os.urandom(16), v]))
)
_CODES = {
    20: {ErrorCode.MESSAGE_BODY_ERROR},
    22: {
        ErrorCode.MESSAGE_BODY_ERROR,
        ErrorCode.INVALID_MESSAGE_ERROR,
        ErrorCode.INVALID_OWNERSHIP_VOUCHER,
        ErrorCode.INVALID_OWNER_SIGN_BODY,
    },
    30: {
        ErrorCode.MESSAGE_BODY_ERROR,
        ErrorCode.INVALID_MESSAGE_ERROR,
        ErrorCode.RESOURCE_NOT_FOUND,
    },
    32: {ErrorCode.MESSAGE_BODY_ERROR, ErrorCode.INVALID_MESSAGE_ERROR},
}


@pytest.fixture(scope="module")
def registered(served: Served) -> Device:
    """A registered device whose TO1 sessions the arbitrary ProveToRV bodies go to."""
    device = served.device()
    served.register(device)
    return device


def session_for(served: Served, msg_type: int, device: Device) -> str | None:
    """The Authorization of a session expecting ``msg_type`` (None for the first messages)."""
    if msg_type == 22:
        response = served.post(20, TO0Hello().encode())
    elif msg_type == 32:
        response = served.post(30, TO1HelloRV(device.guid, SigInfo(SigType.ES384)).encode())
    else:
        return None
    assert response.status_code == 200, response.content
    return str(response.headers["authorization"])


@pytest.mark.parametrize("msg_type", [20, 22, 30, 32])
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(body=_BODIES)
def test_arbitrary_bodies_only_ever_get_an_error_message(
    served: Served, registered: Device, msg_type: int, body: bytes
) -> None:
    # Threat: some byte string crashes a step or gets an answer that is no FDO Error message.
    authorization = session_for(served, msg_type, registered)
    response = served.post(msg_type, body, authorization)
    if msg_type == 20 and response.status_code == 200:
        assert decode(body) == []  # a well-formed TO0.Hello
        return
    error = error_of(response)
    assert error.prev_msg_type == msg_type
    assert error.code in _CODES[msg_type], error.message


def test_still_serves_after_arbitrary_bodies(served: Served) -> None:
    assert_serves(served)


# --- settings and storage ---------------------------------------------------------------------


def test_settings_refuse_an_empty_trust_list() -> None:
    # Threat: a misconfigured server that silently refuses (or, worse, accepts) every voucher.
    with pytest.raises(ValueError, match="accept_any_manufacturer"):
        RendezvousSettings(())
    key = PublicKey.from_key(ec.generate_private_key(ec.SECP384R1()).public_key())
    with pytest.raises(ValueError, match="not both"):
        RendezvousSettings((key,), accept_any_manufacturer=True)
    with pytest.raises(ValueError, match="max_wait_seconds"):
        RendezvousSettings((key,), max_wait_seconds=2**32)
    anyone = RendezvousSettings((), accept_any_manufacturer=True)
    assert anyone.trusts(key)
    assert not RendezvousSettings((key,)).trusts(
        PublicKey.from_key(ec.generate_private_key(ec.SECP384R1()).public_key())
    )


def test_store_replaces_a_registration_and_reads_times_back_in_utc(tmp_path: Path) -> None:
    store = SqlRendezvousStore(f"sqlite:///{tmp_path / 'rv.db'}")
    try:
        now = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
        device = ec.generate_private_key(ec.SECP256R1()).public_key()
        first = RvRegistration(
            Guid.random(), b"first", device, "o" * 64, "m" * 64, now, now + datetime.timedelta(1)
        )
        store.put(first)
        assert store.get(first.guid) == first
        second = RvRegistration(
            first.guid, b"second", device, "p" * 64, "m" * 64, now, now + datetime.timedelta(2)
        )
        store.put(second)
        read = store.get(first.guid)
        assert read == second
        assert read is not None and read.expires_at.tzinfo is not None
        assert store.get(Guid.random()) is None
        assert store.purge(now + datetime.timedelta(1)) == 0
        assert store.purge(now + datetime.timedelta(2)) == 1
    finally:
        store.close()
