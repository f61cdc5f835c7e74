"""Device Initialize over HTTP: the manufacturer server on uvicorn (127.0.0.1, SQLite file) and
the device client, end to end, and every kind of bad input the binding must survive."""

from __future__ import annotations

import stat
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from afield.fdo import ErrorCode, ErrorMessage, VoucherError
from afield.fdo.cbor import decode, encode
from afield.fdo.client import ServerError, Transport, manufacture
from afield.fdo.credential import DeviceCredential
from afield.fdo.messages import DIAppStart, DIDone, DISetCredentials, DISetHMAC
from afield.fdo.pki import Pki, init_pki, load_private_key, verify_device_chain
from afield.fdo.rendezvous import RendezvousDirective, RendezvousInfo, RvProtocol
from afield.fdo.server import (
    BindingSettings,
    ManufacturerSettings,
    SqlVoucherStore,
    create_manufacturer_app,
    running,
)
from afield.fdo.types import Hash, HashAlg, KeyEncoding, KeyType

RV = RendezvousInfo(
    (RendezvousDirective.build(dns="rv.example.com", dev_port=8041, protocol=RvProtocol.HTTP),)
)
BODY_LIMIT = 4096


@dataclass
class Served:
    """A manufacturer server on 127.0.0.1 with its PKI, store and an HTTP client."""

    url: str
    pki: Pki
    store: SqlVoucherStore
    http: httpx.Client

    def post(self, n: int | str, body: bytes, headers: dict[str, str] | None = None) -> Any:
        """POST ``body`` as FDO message ``n`` (CBOR content type and Message-Type by default)."""
        sent = {"Content-Type": "application/cbor", "Message-Type": str(n), **(headers or {})}
        return self.http.post(f"/fdo/101/msg/{n}", content=body, headers=sent)


@contextmanager
def manufacturer(directory: Path, **binding: Any) -> Iterator[Served]:
    """Serve a fresh manufacturer (own PKI, own SQLite file) with these binding settings."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = init_pki(directory / "pki")
    store = SqlVoucherStore(f"sqlite:///{directory / 'fdo.db'}")
    settings = ManufacturerSettings(rv_info=RV, binding=BindingSettings(**binding))
    app = create_manufacturer_app(pki, store, settings)
    try:
        with running(app) as url, httpx.Client(base_url=url, timeout=10) as http:
            yield Served(url, pki, store, http)
    finally:
        store.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One manufacturer shared by the module: every attack must leave it serving."""
    with manufacturer(
        tmp_path_factory.mktemp("mfg"), max_body_bytes=BODY_LIMIT, session_ttl=30
    ) as s:
        yield s


@pytest.fixture
def fresh(tmp_path: Path) -> Callable[..., AbstractContextManager[Served]]:
    """A manufacturer of one's own, with the given binding settings."""

    def make(**binding: Any) -> AbstractContextManager[Served]:
        return manufacturer(tmp_path / "own", **binding)

    return make


def mfg_info(key: ec.EllipticCurvePrivateKey | None = None, serial: str = "SN-1") -> list[Any]:
    """A well-formed DeviceMfgInfo (go-fdo's / the Intel clients' array)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, serial)]))
        .sign(key, hashes.SHA256())
    )
    der = csr.public_bytes(serialization.Encoding.DER)
    return [int(KeyType.SECP256R1), int(KeyEncoding.X509), serial, "test device", der]


def error_of(response: httpx.Response) -> ErrorMessage:
    """The Error message of a refusal: HTTP 500, CBOR, Message-Type 255, 5 elements."""
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/cbor"
    assert response.headers["message-type"] == "255"
    assert isinstance(decode(response.content), list)
    assert len(decode(response.content)) == 5
    error = ErrorMessage.decode(response.content)
    assert isinstance(error, ErrorMessage)
    assert isinstance(error.timestamp, int)
    assert isinstance(error.correlation_id, int)
    return error


def still_serves(served: Served, directory: Path) -> DeviceCredential:
    """A good DI still works, and its voucher is stored."""
    directory.mkdir(parents=True, exist_ok=True)
    credential = manufacture(served.url, directory / "cred", device_info="after the attack")
    assert served.store.get(credential.guid) is not None
    return credential


def open_session(served: Served) -> str:
    """Send a good DI.AppStart; the Authorization value the server handed out."""
    response = served.post(10, DIAppStart(mfg_info()).encode())
    assert response.status_code == 200, response.content
    assert response.headers["message-type"] == "11"
    DISetCredentials.decode(response.content)
    authorization = response.headers["authorization"]
    assert authorization.startswith("Bearer ")
    return str(authorization)


def good_hmac() -> bytes:
    return DISetHMAC(Hash.hmac(HashAlg.HMAC_SHA256, b"k" * 32, b"header")).encode()


# --- the protocol ---------------------------------------------------------------------------


@pytest.mark.parametrize("curve", ["P-256", "P-384"])
def test_di_writes_a_credential_and_stores_a_voucher_that_verifies(
    served: Served, tmp_path: Path, curve: str
) -> None:
    path = tmp_path / "device_credential"
    credential = manufacture(
        served.url, path, device_info="acme gw-100", key_curve=curve, serial_number="SN-42"
    )

    # The credential on disk is the spec's layout, mode 0600, and what manufacture returned.
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    on_disk = DeviceCredential.from_cbor(decode(path.read_bytes()))
    assert on_disk == credential
    assert credential.active
    assert credential.device_info == "acme gw-100"
    assert credential.rv_info == RV
    key_file = Path(f"{path}.key.pem")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    device_key = load_private_key(key_file)

    # The stored voucher has the credential's GUID, verifies with the device's HMAC secret,
    # names the manufacturer key the credential hashes, and chains to the device CA.
    stored = served.store.get(credential.guid)
    assert stored is not None
    assert stored.guid == credential.guid
    assert stored.serial_number == "SN-42"
    voucher = stored.voucher
    assert voucher.header.guid == credential.guid
    owner = voucher.verify(hmac_secret=credential.hmac_secret)
    assert owner.same_key(served.pki.manufacturer.key.public_key())
    assert credential.owner_key_matches(voucher.header.manufacturer_key)
    assert voucher.cert_chain is not None
    leaf = verify_device_chain(voucher.cert_chain, [served.pki.device_ca.cert])
    assert leaf.public_key() == device_key.public_key()
    assert leaf.subject.rfc4514_string() == f"CN={credential.guid}"
    expected_hmac = HashAlg.HMAC_SHA384 if curve == "P-384" else HashAlg.HMAC_SHA256
    assert voucher.header_hmac.alg == expected_hmac

    # Another device's secret does not verify the voucher.
    with pytest.raises(VoucherError, match="HMAC"):
        voucher.verify(hmac_secret=b"\x00" * len(credential.hmac_secret))


def test_each_di_makes_a_new_guid(served: Served, tmp_path: Path) -> None:
    first = manufacture(served.url, tmp_path / "a", device_info="d")
    second = manufacture(served.url, tmp_path / "b", device_info="d")
    assert first.guid != second.guid
    assert {first.guid, second.guid} <= set(served.store.guids())


def test_metrics_count_messages_and_errors(served: Served) -> None:
    served.post(10, b"\xff")
    text = served.http.get("/metrics").text
    assert 'afield_fdo_messages_total{type="10"}' in text
    assert 'afield_fdo_errors_total{code="100"}' in text
    assert served.http.get("/healthz").text == "ok\n"


# --- bad input: each answered with an Error message, and the server keeps serving ----------


def test_malformed_cbor_is_refused_with_message_body_error(served: Served, tmp_path: Path) -> None:
    # Threat: a body that is not CBOR crashes the decoder or the server.
    error = error_of(served.post(10, b"\x9f\x01\x02"))  # indefinite-length array, never closed
    assert (error.code, error.prev_msg_type) == (ErrorCode.MESSAGE_BODY_ERROR, 10)
    still_serves(served, tmp_path)


def test_message_type_header_contradicting_the_url_is_refused(
    served: Served, tmp_path: Path
) -> None:
    # Threat: a message processed as one type while its header claims another.
    response = served.post(10, DIAppStart(mfg_info()).encode(), {"Message-Type": "12"})
    error = error_of(response)
    assert (error.code, error.prev_msg_type) == (ErrorCode.MESSAGE_BODY_ERROR, 10)
    assert "Message-Type" in error.message
    still_serves(served, tmp_path)


def test_body_of_another_message_type_is_refused(served: Served, tmp_path: Path) -> None:
    # Threat: a SetHMAC body sent as AppStart is read as DeviceMfgInfo.
    error = error_of(served.post(10, good_hmac()))
    assert (error.code, error.prev_msg_type) == (ErrorCode.MESSAGE_BODY_ERROR, 10)
    still_serves(served, tmp_path)


def test_set_hmac_before_app_start_is_refused_as_out_of_order(
    served: Served, tmp_path: Path
) -> None:
    # Threat: a voucher stored for a header the server never issued.
    before = set(served.store.guids())
    error = error_of(served.post(12, good_hmac()))
    assert (error.code, error.prev_msg_type) == (ErrorCode.INVALID_MESSAGE_ERROR, 12)
    assert "out of order" in error.message
    assert set(served.store.guids()) == before
    still_serves(served, tmp_path)


def test_unknown_bearer_token_is_refused(served: Served, tmp_path: Path) -> None:
    # Threat: a guessed or forged token joins another device's session.
    open_session(served)
    response = served.post(12, good_hmac(), {"Authorization": "Bearer not-a-session"})
    error = error_of(response)
    assert (error.code, error.prev_msg_type) == (ErrorCode.INVALID_JWT_TOKEN, 12)
    still_serves(served, tmp_path)


def test_authorization_that_is_not_a_bearer_token_is_refused(
    served: Served, tmp_path: Path
) -> None:
    # Threat: a malformed Authorization header is taken for a session.
    response = served.post(12, good_hmac(), {"Authorization": "Basic dXNlcjpwdw=="})
    error = error_of(response)
    assert (error.code, error.prev_msg_type) == (ErrorCode.INVALID_JWT_TOKEN, 12)
    still_serves(served, tmp_path)


def test_oversized_body_is_refused_before_decoding(served: Served, tmp_path: Path) -> None:
    # Threat: memory exhaustion with a body larger than any DI message.
    body = encode([b"\x00" * (BODY_LIMIT + 100)])
    error = error_of(served.post(10, body))
    assert (error.code, error.prev_msg_type) == (ErrorCode.MESSAGE_BODY_ERROR, 10)
    assert "limit" in error.message
    still_serves(served, tmp_path)


def test_wrong_content_type_is_refused(served: Served, tmp_path: Path) -> None:
    # Threat: a JSON or form body reaches the CBOR decoder under another content type.
    response = served.post(10, DIAppStart(mfg_info()).encode(), {"Content-Type": "text/plain"})
    error = error_of(response)
    assert (error.code, error.prev_msg_type) == (ErrorCode.MESSAGE_BODY_ERROR, 10)
    still_serves(served, tmp_path)


def test_message_type_not_served_here_is_refused(served: Served, tmp_path: Path) -> None:
    # Threat: TO2 messages reach a manufacturer that has no such step.
    error = error_of(served.post(60, b"\x80"))
    assert (error.code, error.prev_msg_type) == (ErrorCode.MESSAGE_BODY_ERROR, 60)
    error = error_of(served.post("abc", b"\x80"))
    assert (error.code, error.prev_msg_type) == (ErrorCode.MESSAGE_BODY_ERROR, 0)
    still_serves(served, tmp_path)


def test_an_error_ends_the_session(served: Served, tmp_path: Path) -> None:
    # Threat: a client probes a session with bad messages, then finishes it.
    authorization = open_session(served)
    bad = served.post(12, b"\x81\x00", {"Authorization": authorization})
    assert error_of(bad).code == ErrorCode.MESSAGE_BODY_ERROR
    again = served.post(12, good_hmac(), {"Authorization": authorization})
    assert error_of(again).code == ErrorCode.INVALID_JWT_TOKEN
    still_serves(served, tmp_path)


def test_text_device_mfg_info_without_a_key_is_refused(served: Served, tmp_path: Path) -> None:
    # Threat: a device certificate issued with no proof of a device key.
    error = error_of(served.post(10, DIAppStart("serial-from-fdo-rs").encode()))
    assert (error.code, error.prev_msg_type) == (ErrorCode.MESSAGE_BODY_ERROR, 10)
    assert "device key" in error.message
    still_serves(served, tmp_path)


def test_csr_with_a_bad_signature_is_refused(served: Served, tmp_path: Path) -> None:
    # Threat: a certificate issued for a key the device does not hold.
    info = mfg_info()
    csr = bytearray(info[4])
    csr[-1] ^= 0x01  # the last byte is in the signature
    info[4] = bytes(csr)
    error = error_of(served.post(10, DIAppStart(info).encode()))
    assert (error.code, error.prev_msg_type) == (ErrorCode.INVALID_MESSAGE_ERROR, 10)
    assert "signature" in error.message
    still_serves(served, tmp_path)


def test_expired_session_is_refused(
    fresh: Callable[..., AbstractContextManager[Served]], tmp_path: Path
) -> None:
    # Threat: a session left open is finished long after by whoever holds its token.
    with fresh(session_ttl=0.3) as own:
        authorization = open_session(own)
        time.sleep(0.5)
        error = error_of(own.post(12, good_hmac(), {"Authorization": authorization}))
        assert (error.code, error.prev_msg_type) == (ErrorCode.INVALID_JWT_TOKEN, 12)
        assert own.store.guids() == []
        still_serves(own, tmp_path)


def test_client_reports_the_servers_error_and_writes_nothing(
    fresh: Callable[..., AbstractContextManager[Served]], tmp_path: Path
) -> None:
    # Threat: a device believes it is manufactured when the manufacturer refused it.
    with fresh(max_body_bytes=200) as own:
        with pytest.raises(ServerError, match=r"DI\.AppStart \(10\).*error 100") as caught:
            manufacture(own.url, tmp_path / "cred", device_info="d")
        assert caught.value.code == ErrorCode.MESSAGE_BODY_ERROR
        assert caught.value.prev_msg_type == 10
        assert not (tmp_path / "cred").exists()
        assert not Path(f"{tmp_path / 'cred'}.key.pem").exists()


def test_transport_echoes_the_token_through_a_whole_di(served: Served) -> None:
    transport = Transport(served.url)
    answer = transport.send(DIAppStart(mfg_info()), DISetCredentials)
    assert isinstance(answer, DISetCredentials)
    assert transport.authorization is not None
    secret = b"s" * 32
    hmac = Hash.hmac(HashAlg.HMAC_SHA256, secret, answer.header_bytes)
    assert isinstance(transport.send(DISetHMAC(hmac), DIDone), DIDone)
    stored = served.store.get(answer.header.guid)
    assert stored is not None
    stored.voucher.verify(hmac_secret=secret)


_CBOR_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64) + 1, 2**64 - 1) | st.binary() | st.text(),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.integers(0, 20) | st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    body=st.binary(max_size=300)
    | _CBOR_VALUES.map(encode)
    | _CBOR_VALUES.map(lambda v: encode([encode(v)]))
)
def test_arbitrary_bodies_only_ever_get_an_error_message(served: Served, body: bytes) -> None:
    # Threat: some byte string crashes the server or gets a 500 without an FDO body.
    error = error_of(served.post(10, body))
    assert error.prev_msg_type == 10
    assert error.code in (ErrorCode.MESSAGE_BODY_ERROR, ErrorCode.INVALID_MESSAGE_ERROR)
