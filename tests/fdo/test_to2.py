"""TO2 end to end: a real manufacturer (DI) and a real owner on uvicorn (127.0.0.1, SQLite
files), the device client in this process, and every refusal the protocol asks for."""

from __future__ import annotations

import contextlib
import datetime
import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from afield.errors import FdoError, ProtocolError
from afield.fdo import ErrorCode, ErrorMessage, VerifyError, Voucher, VoucherError
from afield.fdo.cbor import encode
from afield.fdo.client import ServerError, Transport, manufacture
from afield.fdo.cose import Sign1, SigningKey
from afield.fdo.credential import DeviceCredential
from afield.fdo.eat import EUPH_NONCE, EatPayload
from afield.fdo.kex import CipherSuite, KexSuite
from afield.fdo.messages import (
    ProveOVHdrPayload,
    TO2DeviceServiceInfo,
    TO2DeviceServiceInfoReady,
    TO2Done,
    TO2Done2,
    TO2GetOVNextEntry,
    TO2HelloDevice,
    TO2OwnerServiceInfo,
    TO2ProveDevice,
)
from afield.fdo.pki import Pki, init_pki, load_private_key
from afield.fdo.rendezvous import (
    RendezvousDirective,
    RendezvousInfo,
    RvProtocol,
    RvTo2Addr,
    RvTo2AddrEntry,
    TransportProtocol,
)
from afield.fdo.server import (
    ManufacturerSettings,
    OnboardingRequest,
    OwnerSettings,
    SqlOwnerStore,
    SqlVoucherStore,
    create_manufacturer_app,
    create_owner_app,
    running,
)
from afield.fdo.server.store import StoreError, VoucherExistsError
from afield.fdo.serviceinfo import Devmod, ServiceInfoKV
from afield.fdo.to2 import _check_header, _Device, owner_urls, run_to2
from afield.fdo.types import Guid, Hash, HashAlg, Nonce, PublicKey, SigInfo, SigType

RV = RendezvousInfo(
    (RendezvousDirective.build(dns="rv.example.com", dev_port=8041, protocol=RvProtocol.HTTP),)
)
NEW_RV = RendezvousInfo(
    (RendezvousDirective.build(dns="rv2.example.com", dev_port=8443, protocol=RvProtocol.HTTPS),)
)
DEVMOD = Devmod(
    os="Linux", arch="aarch64", version="6.1", device="acme gw-100", sep=":", bin="aarch64"
)


def no_replies(kv: ServiceInfoKV) -> list[ServiceInfoKV]:
    return []


@dataclass
class Factory:
    """A manufacturer on 127.0.0.1 (its PKI and store) and the owner's PKI."""

    url: str
    mfg: Pki
    store: SqlVoucherStore
    owner: Pki
    other: Pki
    directory: Path


@dataclass
class Device:
    """A manufactured device: its credential and key, and its voucher extended to the owner."""

    credential: DeviceCredential
    key: SigningKey
    voucher: Voucher


@dataclass
class Owner:
    """An owner server on 127.0.0.1 with its SQLite store and an HTTP client."""

    url: str
    store: SqlOwnerStore
    db: Path
    http: httpx.Client
    replies: list[tuple[Guid, list[ServiceInfoKV]]] = field(default_factory=list)
    requests: list[OnboardingRequest] = field(default_factory=list)

    def post(self, n: int, body: bytes, authorization: str | None = None) -> httpx.Response:
        headers = {"Content-Type": "application/cbor", "Message-Type": str(n)}
        if authorization is not None:
            headers["Authorization"] = authorization
        return self.http.post(f"/fdo/101/msg/{n}", content=body, headers=headers)

    def tamper(self, guid: Guid, voucher: Voucher) -> None:
        """Overwrite the stored voucher of ``guid`` behind the store's back."""
        with contextlib.closing(sqlite3.connect(self.db)) as db, db:
            db.execute(
                "UPDATE fdo_owner_vouchers SET voucher = ? WHERE guid = ?",
                (voucher.encode(), str(guid)),
            )


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Factory]:
    directory = tmp_path_factory.mktemp("to2")
    mfg = init_pki(directory / "mfg")
    store = SqlVoucherStore(f"sqlite:///{directory / 'mfg.db'}")
    app = create_manufacturer_app(mfg, store, ManufacturerSettings(rv_info=RV))
    try:
        with running(app) as url:
            owner, other = init_pki(directory / "owner"), init_pki(directory / "other")
            yield Factory(url, mfg, store, owner, other, directory)
    finally:
        store.close()


_COUNTER = iter(range(1_000_000))


def make_device(
    factory: Factory, curve: str = "P-384", *, via: ec.EllipticCurvePrivateKey | None = None
) -> Device:
    """DI for a new device, then its voucher extended to the owner (through ``via`` if given)."""
    path = factory.directory / f"device-{next(_COUNTER)}"
    credential = manufacture(factory.url, path, device_info="acme gw-100", key_curve=curve)
    stored = factory.store.get(credential.guid)
    assert stored is not None
    voucher, signer = stored.voucher, factory.mfg.manufacturer.key
    if via is not None:
        voucher, signer = voucher.extend(signer, PublicKey.from_key(via.public_key())), via
    voucher = voucher.extend(signer, factory.owner.owner.public_key())
    return Device(credential, load_private_key(f"{path}.key.pem"), voucher)


@pytest.fixture
def serve_owner(factory: Factory, tmp_path: Path) -> Callable[..., AbstractContextManager[Owner]]:
    """Start an owner with a fresh store: ``devices`` are added, ``settings`` are OwnerSettings'."""

    @contextmanager
    def serve(*devices: Device, pki: Pki | None = None, **options: Any) -> Iterator[Owner]:
        db = tmp_path / f"owner-{next(_COUNTER)}.db"
        store = SqlOwnerStore(f"sqlite:///{db}", owner_key=factory.owner.owner.public_key())
        for device in devices:
            store.add(device.voucher)
        options.setdefault("trusted_device_cas", [factory.mfg.device_ca.cert])
        holder: list[Owner] = []
        if "service_info" in options:
            produce = options["service_info"]

            def service_info(request: OnboardingRequest) -> Any:
                holder[0].requests.append(request)
                return produce(request)

            options["service_info"] = service_info
        options.setdefault("on_device_replies", lambda g, kvs: holder[0].replies.append((g, kvs)))
        app = create_owner_app(pki or factory.owner, store, OwnerSettings(**options))
        try:
            with running(app) as url, httpx.Client(base_url=url, timeout=10) as http:
                holder.append(Owner(url, store, db, http))
                yield holder[0]
        finally:
            store.close()

    return serve


def onboard(owner: Owner, device: Device, **options: Any) -> Any:
    options.setdefault("devmod", DEVMOD)
    options.setdefault("handler", no_replies)
    return run_to2(owner.url, device.credential, device.key, **options)


def error_of(response: httpx.Response) -> ErrorMessage:
    """The Error message of a refusal: HTTP 500, CBOR, Message-Type 255, never encrypted."""
    assert response.status_code == 500, response.content
    assert response.headers["message-type"] == "255"
    error = ErrorMessage.decode(response.content)
    assert isinstance(error, ErrorMessage)
    return error


def assert_no_secret(text: str, device: Device) -> None:
    """Error texts name checks and GUIDs, never bytes, keys or the device's secret."""
    assert device.credential.hmac_secret.hex() not in text
    assert "b'" not in text and "-----BEGIN" not in text
    assert not re.search(r"[0-9a-fA-F]{40}", text), text


def driver(owner: Owner, device: Device, suite: KexSuite = KexSuite.ECDH384) -> _Device:
    """The device's TO2 steps, to be run one by one."""
    return _Device(Transport(owner.url), device.credential, device.key, suite, CipherSuite.A256GCM)


def prove_device_body(run: _Device, device: Device, nonce_prove_dv: Nonce) -> bytes:
    """A well-formed TO2.ProveDevice body for ``nonce_prove_dv``."""
    eat = EatPayload(nonce_prove_dv, device.credential.guid, [run.exchange.parameter])
    token = Sign1.sign(
        device.key, encode(eat.to_cbor()), unprotected={EUPH_NONCE: Nonce.random().to_cbor()}
    )
    return TO2ProveDevice(token).encode()


# --- the protocol ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("curve", "suite"),
    [("P-256", KexSuite.ECDH256), ("P-384", KexSuite.ECDH384), ("P-384", KexSuite.DHKEXID14)],
)
@pytest.mark.parametrize("cipher", list(CipherSuite))
def test_to2_replaces_the_credential_and_the_device_onboards_again_with_it(
    factory: Factory, serve_owner: Any, curve: str, suite: KexSuite, cipher: CipherSuite
) -> None:
    device = make_device(factory, curve)
    old = device.credential
    with serve_owner(device, replacement_rv_info=NEW_RV) as owner:
        result = onboard(owner, device, kex_suite=suite, cipher=cipher)

        new = result.credential
        assert not result.reused
        assert new.guid != old.guid
        assert new.rv_info == NEW_RV
        assert (new.hmac_secret, new.device_info, new.active) == (
            old.hmac_secret,
            old.device_info,
            True,
        )
        assert new.public_key_hash.alg == old.public_key_hash.alg
        assert result.owner_key.same_key(factory.owner.owner.key.public_key())

        # The owner recorded the onboarding and keeps the replacement under the new GUID.
        row = owner.store.get(old.guid)
        assert row is not None and row.onboarded_at is not None
        assert row.replacement_guid == new.guid
        replacement = owner.store.get(new.guid)
        assert replacement is not None and replacement.previous_guid == old.guid
        assert replacement.voucher == row.replacement_voucher
        # Its header carries the device's ReplacementHMac, the new GUID and RendezvousInfo, the
        # owner's key as manufacturer key, and the device chain: it verifies on its own.
        voucher = replacement.voucher
        assert voucher.entries == []
        assert voucher.header.guid == new.guid and voucher.header.rv_info == NEW_RV
        final = voucher.verify(hmac_secret=new.hmac_secret, owner=result.owner_key)
        assert new.owner_key_matches(final)
        assert voucher.cert_chain == device.voucher.cert_chain

        # A second TO2 with the new credential works against the replacement voucher.
        again = run_to2(
            owner.url, new, device.key, devmod=DEVMOD, handler=no_replies, kex_suite=suite
        )
        assert again.credential.guid not in (old.guid, new.guid)
        second = owner.store.get(new.guid)
        assert second is not None and second.replacement_guid == again.credential.guid


def test_credential_reuse_keeps_guid_rendezvous_and_voucher(
    factory: Factory, serve_owner: Any
) -> None:
    device = make_device(factory)
    with serve_owner(device, reuse_credential=True) as owner:
        result = onboard(owner, device, allow_credential_reuse=True)
        assert result.reused
        assert result.credential == device.credential
        row = owner.store.get(device.credential.guid)
        assert row is not None and row.onboarded_at is not None
        assert row.replacement_guid is None and row.replacement_voucher is None
        assert row.voucher == device.voucher
        assert len(owner.store.list()) == 1
        # Reuse means the same credential onboards again.
        assert onboard(owner, device, allow_credential_reuse=True).reused


def test_device_refuses_credential_reuse_unless_allowed(factory: Factory, serve_owner: Any) -> None:
    # Threat: a previous owner keeps the device's credential valid for itself by reusing it.
    device = make_device(factory)
    with serve_owner(device, reuse_credential=True) as owner:
        before = owner.store.list()
        with pytest.raises(ProtocolError, match="credential reuse") as caught:
            onboard(owner, device)
        assert caught.value.code == ErrorCode.CRED_REUSE_ERROR
        assert owner.store.list() == before


def test_owner_service_info_larger_than_an_mtu_arrives_whole_in_order(
    factory: Factory, serve_owner: Any
) -> None:
    device = make_device(factory)
    sent = [ServiceInfoKV.of("afield", "block", bytes([i]) * 200) for i in range(12)]
    sent.append(ServiceInfoKV.of("afield", "end", None))

    def answer(kv: ServiceInfoKV) -> list[ServiceInfoKV]:
        return [ServiceInfoKV.of("afield", "done", True)] if kv.message == "end" else []

    with serve_owner(device, service_info=lambda request: sent) as owner:
        result = onboard(owner, device, handler=answer, max_owner_service_info_size=300)
        assert result.owner_service_info == sent
        assert result.replies == [ServiceInfoKV.of("afield", "done", True)]
        # 13 values of about 210 bytes in at most 300 per message: one each, one per message.
        metrics = owner.http.get("/metrics").text
        count = re.search(r'afield_fdo_messages_total\{type="68"\} (\d+)', metrics)
        assert count is not None and int(count.group(1)) >= len(sent)

        # The owner was asked once, with the whole devmod; the replies reached the callback.
        assert len(owner.requests) == 1
        request = owner.requests[0]
        assert request.devmod == DEVMOD
        assert request.guid == device.credential.guid
        assert request.new_guid == result.credential.guid
        assert owner.replies == [(device.credential.guid, result.replies)]
        row = owner.store.get(device.credential.guid)
        assert row is not None and row.device_summary is not None
        assert row.device_summary["replies"] == {"afield:done": 1}
        assert row.device_summary["devmod"]["os"] == "Linux"


def test_device_service_info_over_several_messages_arrives_with_every_devmod_key(
    factory: Factory, serve_owner: Any
) -> None:
    device = make_device(factory)
    modules = ("devmod", *(f"vendor.module{i:03d}" for i in range(40)))
    devmod = Devmod(
        os="Linux",
        arch="x86_64",
        version="6.1",
        device="gw",
        sep=":",
        bin="x86_64",
        sn="SN-1",
        tmp="/tmp",
        modules=modules,
    )
    assert len(encode([kv.to_cbor() for kv in devmod.to_kvs()])) > 600
    with serve_owner(
        device, max_device_service_info_size=256, service_info=lambda request: []
    ) as owner:
        onboard(owner, device, devmod=devmod)
        assert owner.requests[0].devmod == devmod
        assert set(Devmod.REQUIRED) <= {kv.message for kv in owner.requests[0].device_kvs}
        row = owner.store.get(device.credential.guid)
        assert row is not None and row.device_summary is not None
        assert row.device_summary["devmod"]["modules"] == list(modules)


def test_owner_value_larger_than_the_devices_mtu_is_refused_naming_key_and_size(
    factory: Factory, serve_owner: Any
) -> None:
    # Threat: an owner module's value is cut or sent past what the device said it can take.
    device = make_device(factory)
    huge = ServiceInfoKV.of("afield", "tuf_root", b"r" * 2000)
    with serve_owner(device, service_info=lambda request: [huge]) as owner:
        before = owner.store.list()
        with pytest.raises(ServerError) as caught:
            onboard(owner, device, max_owner_service_info_size=300)
        assert caught.value.code == ErrorCode.INTERNAL_SERVER_ERROR
        size = len(encode(huge.to_cbor()))
        assert f"afield:tuf_root ({size} bytes) does not fit in 300" in caught.value.server_message
        assert owner.store.list() == before


def test_health_and_metrics(factory: Factory, serve_owner: Any) -> None:
    with serve_owner() as owner:
        assert owner.http.get("/healthz").text == "ok\n"
        error_of(owner.post(60, b"\xff"))
        assert 'afield_fdo_errors_total{code="100"}' in owner.http.get("/metrics").text


def test_owner_urls_from_rvto2addr() -> None:
    addrs = RvTo2Addr(
        (
            RvTo2AddrEntry(None, "owner.example.com", 8443, TransportProtocol.HTTPS),
            RvTo2AddrEntry(bytes([10, 0, 0, 5]), "owner.example.com", 8080, TransportProtocol.HTTP),
            RvTo2AddrEntry(bytes(15) + b"\x01", None, 80, TransportProtocol.HTTP),
            RvTo2AddrEntry(None, "owner.example.com", 8041, TransportProtocol.TCP),
            RvTo2AddrEntry(None, "evil.example/@x", 80, TransportProtocol.HTTP),
            RvTo2AddrEntry(None, "owner.example.com", 8443, TransportProtocol.HTTPS),
        )
    )
    assert owner_urls(addrs) == [
        "https://owner.example.com:8443",
        "http://owner.example.com:8080",
        "http://10.0.0.5:8080",
        "http://[::1]:80",
    ]


# --- the owner store ------------------------------------------------------------------------


def test_store_refuses_a_voucher_for_another_owner(factory: Factory, tmp_path: Path) -> None:
    # Threat: an owner imports (and would register) a voucher it cannot prove it owns.
    device = make_device(factory)
    store = SqlOwnerStore(
        f"sqlite:///{tmp_path / 'o.db'}", owner_key=factory.other.owner.public_key()
    )
    with pytest.raises(VoucherError, match="final owner is not the expected owner key"):
        store.add(device.voucher)
    assert store.list() == []
    store.close()


def test_store_refuses_a_voucher_with_a_bad_entry(factory: Factory, tmp_path: Path) -> None:
    # Threat: a voucher whose transfer chain is forged is imported.
    device = make_device(factory)
    entry = device.voucher.entries[0]
    forged = Sign1(entry.protected, entry.unprotected, entry.payload, bytes(96))
    bad = Voucher(
        device.voucher.header_bytes, device.voucher.header_hmac, device.voucher.cert_chain, [forged]
    )
    store = SqlOwnerStore(
        f"sqlite:///{tmp_path / 'o.db'}", owner_key=factory.owner.owner.public_key()
    )
    with pytest.raises(VoucherError, match="entry 0"):
        store.add(bad)
    assert store.list() == []
    store.close()


def test_store_add_get_registration_and_duplicates(factory: Factory, tmp_path: Path) -> None:
    first, second = make_device(factory), make_device(factory)
    store = SqlOwnerStore(
        f"sqlite:///{tmp_path / 'o.db'}", owner_key=factory.owner.owner.public_key()
    )
    store.add(first.voucher)
    store.add(second.voucher)
    with pytest.raises(VoucherExistsError):
        store.add(first.voucher)
    now = datetime.datetime.now(datetime.UTC)
    store.set_registration(first.credential.guid, now + datetime.timedelta(hours=1))
    due = store.due_for_registration(now + datetime.timedelta(minutes=30))
    assert [v.guid for v in due] == [second.credential.guid]
    later = store.due_for_registration(now + datetime.timedelta(hours=2))
    assert {v.guid for v in later} == {first.credential.guid, second.credential.guid}
    got = store.get(first.credential.guid)
    assert got is not None and got.registered_until is not None
    assert abs(got.registered_until - (now + datetime.timedelta(hours=1))).total_seconds() < 1
    # A fresh import replaces the row and forgets its registration.
    store.add(first.voucher, replace=True)
    got = store.get(first.credential.guid)
    assert got is not None and got.registered_until is None
    with pytest.raises(StoreError, match="no voucher"):
        store.set_registration(Guid.random(), None)
    store.close()


def test_store_records_nothing_when_the_replacement_guid_is_taken(
    factory: Factory, tmp_path: Path
) -> None:
    # Threat: a half-recorded onboarding (old row marked, new voucher missing).
    first, second = make_device(factory), make_device(factory)
    store = SqlOwnerStore(
        f"sqlite:///{tmp_path / 'o.db'}", owner_key=factory.owner.owner.public_key()
    )
    store.add(first.voucher)
    store.add(second.voucher)
    before = store.list()
    # A "replacement" for the first device under the second device's GUID.
    with pytest.raises(StoreError, match="already stored"):
        store.record_onboarding(first.credential.guid, second.voucher, {"devmod": {}})
    assert store.list() == before
    store.close()


# --- attacks: each refused, the store unchanged, no secret in the text ----------------------


def test_owner_whose_key_is_not_the_vouchers_last_owner_is_refused(
    factory: Factory, serve_owner: Any
) -> None:
    # Threat: an owner server proves ownership of a voucher transferred to someone else.
    device = make_device(factory)
    with serve_owner(device, pki=factory.other) as owner:
        before = owner.store.list()
        with pytest.raises(ServerError) as caught:
            onboard(owner, device)
        assert caught.value.code == ErrorCode.INVALID_OWNERSHIP_VOUCHER
        assert caught.value.prev_msg_type == TO2HelloDevice.MSG_TYPE
        assert "not the voucher's last owner key" in caught.value.server_message
        assert_no_secret(str(caught.value), device)
        assert owner.store.list() == before


def test_voucher_entry_with_a_bad_signature_is_refused_by_the_device(
    factory: Factory, serve_owner: Any
) -> None:
    # Threat: a forged transfer in the middle of the voucher's chain.
    middle = ec.generate_private_key(ec.SECP384R1())
    device = make_device(factory, via=middle)
    assert len(device.voucher.entries) == 2
    entry = device.voucher.entries[1]
    signature = bytes([entry.signature[0] ^ 1]) + entry.signature[1:]
    forged = Sign1(entry.protected, entry.unprotected, entry.payload, signature)
    bad = Voucher(
        device.voucher.header_bytes,
        device.voucher.header_hmac,
        device.voucher.cert_chain,
        [device.voucher.entries[0], forged],
    )
    with serve_owner(device) as owner:
        owner.tamper(device.credential.guid, bad)
        before = owner.store.list()
        with pytest.raises(VoucherError, match="voucher entry 1: not signed by the previous owner"):
            onboard(owner, device)
        assert owner.store.list() == before


def test_tampered_voucher_header_is_refused_by_the_device(
    factory: Factory, serve_owner: Any
) -> None:
    # Threat: an owner rewrites the header (another RendezvousInfo or DeviceInfo) it serves.
    device = make_device(factory)
    header = device.voucher.header
    altered = type(header)(
        header.guid, NEW_RV, header.device_info, header.manufacturer_key, header.cert_chain_hash
    )
    bad = Voucher(
        encode(altered.to_cbor()),
        device.voucher.header_hmac,
        device.voucher.cert_chain,
        device.voucher.entries,
    )
    with serve_owner(device) as owner:
        owner.tamper(device.credential.guid, bad)
        before = owner.store.list()
        with pytest.raises(VoucherError, match="header: HMAC does not match") as caught:
            onboard(owner, device)
        assert caught.value.code == ErrorCode.INVALID_OWNERSHIP_VOUCHER
        assert_no_secret(str(caught.value), device)
        assert owner.store.list() == before


def test_device_unknown_to_the_owner_gets_resource_not_found(
    factory: Factory, serve_owner: Any
) -> None:
    # Threat: an owner without the device's voucher goes on as if it had one.
    stored, stranger = make_device(factory), make_device(factory)
    with serve_owner(stored) as owner:
        before = owner.store.list()
        with pytest.raises(ServerError) as caught:
            onboard(owner, stranger)
        assert caught.value.code == ErrorCode.RESOURCE_NOT_FOUND
        assert str(stranger.credential.guid) in caught.value.server_message
        assert owner.store.list() == before


def test_voucher_of_another_device_stored_under_this_guid_is_refused(
    factory: Factory, serve_owner: Any
) -> None:
    # Threat: a mixed-up or tampered store serves device B's voucher to device A.
    a, b = make_device(factory), make_device(factory)
    with serve_owner(a, b) as owner:
        owner.tamper(a.credential.guid, b.voucher)
        before = owner.store.list()
        with pytest.raises(ServerError) as caught:
            onboard(owner, a)
        assert caught.value.code == ErrorCode.INVALID_OWNERSHIP_VOUCHER
        assert f"is for {b.credential.guid}" in caught.value.server_message
        assert owner.store.list() == before


def test_device_refuses_a_header_for_another_guid(factory: Factory) -> None:
    # Threat: the owner presents another device's voucher (the device checks it itself).
    a, b = make_device(factory), make_device(factory)
    payload = ProveOVHdrPayload(
        b.voucher.header_bytes,
        1,
        b.voucher.header_hmac,
        Nonce.random(),
        SigInfo(SigType.ES384),
        b"",
        Hash.of(HashAlg.SHA384, b""),
        65535,
    )
    with pytest.raises(VoucherError, match=f"GUID {b.credential.guid} is not this device's"):
        _check_header(payload, a.credential)


def test_to1d_not_signed_by_the_owner_is_refused_by_the_device(
    factory: Factory, serve_owner: Any
) -> None:
    # Threat: a rendezvous answer forged by someone else sends the device to this owner.
    device = make_device(factory)
    to1d = Sign1.sign(factory.other.owner.key, encode(["anything"]))
    with serve_owner(device) as owner:
        before = owner.store.list()
        with pytest.raises(VerifyError, match=r"to1d .* not signed by the owner's key"):
            onboard(owner, device, to1d=to1d)
        assert owner.store.list() == before
        # The owner's own to1d passes.
        own = Sign1.sign(factory.owner.owner.key, encode(["anything"]))
        assert onboard(owner, device, to1d=own).credential.guid != device.credential.guid


def test_device_certificate_not_from_a_trusted_device_ca_is_refused(
    factory: Factory, serve_owner: Any
) -> None:
    # Threat: a device made by an unknown factory onboards into this owner's fleet.
    device = make_device(factory)
    with serve_owner(device, trusted_device_cas=[factory.other.device_ca.cert]) as owner:
        before = owner.store.list()
        with pytest.raises(ServerError) as caught:
            onboard(owner, device)
        assert caught.value.code == ErrorCode.INVALID_MESSAGE_ERROR
        assert caught.value.prev_msg_type == TO2ProveDevice.MSG_TYPE
        assert "trusted device CA" in caught.value.server_message
        assert_no_secret(str(caught.value), device)
        assert owner.store.list() == before


def test_prove_device_replayed_from_an_earlier_session_is_refused(
    factory: Factory, serve_owner: Any
) -> None:
    # Threat: a captured TO2.ProveDevice is replayed to impersonate the device.
    device = make_device(factory)
    with serve_owner(device) as owner:
        before = owner.store.list()
        first = driver(owner, device)
        proof = first.hello(65535)
        first.entries(proof, None)
        captured = prove_device_body(first, device, proof.nonce_prove_dv)
        assert owner.post(64, captured, first.transport.authorization).status_code == 200

        second = driver(owner, device)
        second.entries(second.hello(65535), None)
        error = error_of(owner.post(64, captured, second.transport.authorization))
        assert error.code == ErrorCode.INVALID_MESSAGE_ERROR
        assert "NonceTO2ProveDv" in error.message
        assert_no_secret(error.message, device)
        assert owner.store.list() == before


def test_encrypted_message_replayed_from_an_earlier_session_is_refused(
    factory: Factory, serve_owner: Any
) -> None:
    # Threat: an encrypted message captured from one run is replayed into another.
    device = make_device(factory)
    with serve_owner(device) as owner:
        before = owner.store.list()
        first = driver(owner, device)
        proof = first.hello(65535)
        first.entries(proof, None)
        setup = first.prove(proof, allow_reuse=False)
        ready = TO2DeviceServiceInfoReady(Hash.hmac(HashAlg.HMAC_SHA384, b"k", b"h"), 1300)
        captured = setup.tunnel.encrypt(ready.encode())
        assert owner.post(66, captured, first.transport.authorization).status_code == 200
        # Within its own session, the same message again is out of order.
        again = error_of(owner.post(66, captured, first.transport.authorization))
        assert again.code == ErrorCode.INVALID_MESSAGE_ERROR

        second = driver(owner, device)
        proof2 = second.hello(65535)
        second.entries(proof2, None)
        second.prove(proof2, allow_reuse=False)
        error = error_of(owner.post(66, captured, second.transport.authorization))
        assert error.code == ErrorCode.INVALID_MESSAGE_ERROR
        assert "does not decrypt" in error.message
        # The refusal ended that session too.
        ended = error_of(owner.post(66, captured, second.transport.authorization))
        assert ended.code == ErrorCode.INVALID_JWT_TOKEN
        assert owner.store.list() == before


def test_plaintext_message_after_the_key_exchange_is_refused(
    factory: Factory, serve_owner: Any
) -> None:
    # Threat: a man in the middle injects an unencrypted message into an encrypted session.
    device = make_device(factory)
    with serve_owner(device) as owner:
        run = driver(owner, device)
        proof = run.hello(65535)
        run.entries(proof, None)
        run.prove(proof, allow_reuse=False)
        plain = TO2DeviceServiceInfoReady(None, 1300).encode()
        error = error_of(owner.post(66, plain, run.transport.authorization))
        assert error.code == ErrorCode.MESSAGE_BODY_ERROR


def test_wrong_nonce_in_done_is_refused(factory: Factory, serve_owner: Any) -> None:
    # Threat: a TO2.Done that does not belong to this run finishes the onboarding.
    device = make_device(factory)
    with serve_owner(device) as owner:
        before = owner.store.list()
        run = driver(owner, device)
        proof = run.hello(65535)
        run.entries(proof, None)
        setup = run.prove(proof, allow_reuse=False)
        mtu = run.ready(proof, setup, 1300)
        run.service_info(setup, mtu, DEVMOD, no_replies, 1000)
        with pytest.raises(ServerError) as caught:
            run.send(TO2Done(Nonce.random()), TO2Done2, cipher=setup.tunnel)
        assert caught.value.code == ErrorCode.INVALID_MESSAGE_ERROR
        assert caught.value.prev_msg_type == TO2Done.MSG_TYPE
        assert "NonceTO2ProveDv" in caught.value.server_message
        assert owner.store.list() == before


def test_messages_out_of_order_are_refused(factory: Factory, serve_owner: Any) -> None:
    # Threat: a client skips the voucher or the device proof by sending later messages first.
    device = make_device(factory)
    with serve_owner(device) as owner:
        before = owner.store.list()
        # Without a session.
        error = error_of(owner.post(66, TO2DeviceServiceInfoReady(None, None).encode()))
        assert (error.code, error.prev_msg_type) == (ErrorCode.INVALID_MESSAGE_ERROR, 66)
        # TO2.ProveDevice before the voucher entries.
        run = driver(owner, device)
        proof = run.hello(65535)
        body = prove_device_body(run, device, proof.nonce_prove_dv)
        error = error_of(owner.post(64, body, run.transport.authorization))
        assert (error.code, error.prev_msg_type) == (ErrorCode.INVALID_MESSAGE_ERROR, 64)
        assert "out of order" in error.message
        # Entries asked for out of their order.
        run = driver(owner, device)
        run.hello(65535)
        response = owner.post(62, TO2GetOVNextEntry(1).encode(), run.transport.authorization)
        error = error_of(response)
        assert (error.code, error.prev_msg_type) == (ErrorCode.INVALID_MESSAGE_ERROR, 62)
        # TO2.Done before any service info.
        run = driver(owner, device)
        proof = run.hello(65535)
        run.entries(proof, None)
        setup = run.prove(proof, allow_reuse=False)
        run.ready(proof, setup, 1300)
        with pytest.raises(ServerError, match="out of order") as caught:
            run.send(TO2Done(proof.nonce_prove_dv), TO2Done2, cipher=setup.tunnel)
        assert caught.value.code == ErrorCode.INVALID_MESSAGE_ERROR
        assert owner.store.list() == before


def test_device_service_info_without_devmod_is_refused(factory: Factory, serve_owner: Any) -> None:
    # Threat: an owner decides a device's service info without knowing what the device is.
    device = make_device(factory)
    with serve_owner(device) as owner:
        before = owner.store.list()
        run = driver(owner, device)
        proof = run.hello(65535)
        run.entries(proof, None)
        setup = run.prove(proof, allow_reuse=False)
        run.ready(proof, setup, 1300)
        with pytest.raises(ServerError, match="devmod lacks mandatory keys") as caught:
            message = TO2DeviceServiceInfo(False, (ServiceInfoKV.of("devmod", "os", "x"),))
            run.send(message, TO2OwnerServiceInfo, cipher=setup.tunnel)
        assert caught.value.code == ErrorCode.MESSAGE_BODY_ERROR
        assert owner.store.list() == before


# --- arbitrary input ------------------------------------------------------------------------

_CBOR_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64) + 1, 2**64 - 1) | st.binary() | st.text(),
    lambda children: (
        st.lists(children, max_size=6)
        | st.dictionaries(st.integers(-300, 300) | st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=24,
)


@pytest.fixture(scope="module")
def shared_owner(factory: Factory) -> Iterator[tuple[Owner, Device]]:
    """One owner for the fuzzing, with one device; it must keep serving it afterwards."""
    device = make_device(factory)
    directory = factory.directory / "shared"
    directory.mkdir()
    db = directory / "owner.db"
    store = SqlOwnerStore(f"sqlite:///{db}", owner_key=factory.owner.owner.public_key())
    store.add(device.voucher)
    settings_ = OwnerSettings(trusted_device_cas=[factory.mfg.device_ca.cert])
    app = create_owner_app(factory.owner, store, settings_)
    try:
        with running(app) as url, httpx.Client(base_url=url, timeout=10) as http:
            yield Owner(url, store, db, http), device
    finally:
        store.close()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    msg_type=st.sampled_from([60, 62, 64, 66, 68, 70]),
    in_session=st.booleans(),
    body=st.binary(max_size=300)
    | _CBOR_VALUES.map(encode)
    | _CBOR_VALUES.map(lambda v: encode([encode(v)])),
)
def test_arbitrary_bodies_only_ever_get_an_error_message(
    shared_owner: tuple[Owner, Device], msg_type: int, in_session: bool, body: bytes
) -> None:
    # Threat: some byte string crashes the owner or gets a 500 without an FDO body.
    owner, device = shared_owner
    authorization = None
    if in_session and msg_type != 60:
        run = driver(owner, device, KexSuite.ECDH256)
        run.hello(65535)
        authorization = run.transport.authorization
    error = error_of(owner.post(msg_type, body, authorization))
    assert error.prev_msg_type == msg_type
    assert error.code in (
        ErrorCode.MESSAGE_BODY_ERROR,
        ErrorCode.INVALID_MESSAGE_ERROR,
        ErrorCode.RESOURCE_NOT_FOUND,
    )


def test_the_fuzzed_owner_still_onboards(shared_owner: tuple[Owner, Device]) -> None:
    owner, device = shared_owner
    result = onboard(owner, device)
    row = owner.store.get(device.credential.guid)
    assert row is not None and row.replacement_guid == result.credential.guid


def test_bad_arguments_are_refused_before_any_message(factory: Factory) -> None:
    device = make_device(factory)
    with pytest.raises(FdoError, match="max_owner_message_size"):
        run_to2(
            "http://127.0.0.1:9",
            device.credential,
            device.key,
            devmod=DEVMOD,
            handler=no_replies,
            max_owner_message_size=70000,
        )
    with pytest.raises(FdoError, match="cipher: 2 is not supported"):
        run_to2(
            "http://127.0.0.1:9",
            device.credential,
            device.key,
            devmod=DEVMOD,
            handler=no_replies,
            cipher=2,
        )
