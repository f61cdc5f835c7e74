"""The FDO PKI: init and reload, file modes, device certificates, and every bad chain rejected."""

from __future__ import annotations

import datetime
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from afield.fdo import ErrorCode, FdoMessageError, VerifyError, Voucher
from afield.fdo.pki import (
    CertifiedKey,
    Pki,
    PkiError,
    fingerprint,
    init_pki,
    issue_device_certificate,
    load_pki,
    verify_device_chain,
)
from afield.fdo.types import Guid, PublicKey

VECTORS = Path(__file__).parent / "vectors"
DER = serialization.Encoding.DER
NOW = datetime.datetime.now(datetime.UTC)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return init_pki(tmp_path_factory.mktemp("pki") / "pki")


def device(
    pki: Pki,
    now: datetime.datetime | None = None,
    validity: datetime.timedelta = datetime.timedelta(days=365),
) -> list[bytes]:
    """A new device's chain [leaf, device CA] in DER, as a voucher carries it."""
    key = ec.generate_private_key(ec.SECP384R1())
    leaf = issue_device_certificate(
        pki.device_ca, key.public_key(), Guid.random(), now=now, validity=validity
    )
    return [leaf.public_bytes(DER), pki.device_ca.cert.public_bytes(DER)]


@pytest.mark.parametrize("curve", ["P-384", "P-256"])
def test_init_writes_keys_and_certificates_that_load_back(tmp_path: Path, curve: str) -> None:
    made = init_pki(tmp_path / "pki", curve=curve)
    loaded = load_pki(tmp_path / "pki")
    size = 384 if curve == "P-384" else 256
    for role in ("manufacturer", "device_ca", "owner"):
        pair: CertifiedKey = getattr(loaded, role)
        assert isinstance(pair.key, ec.EllipticCurvePrivateKey)
        assert pair.key.curve.key_size == size
        assert fingerprint(pair.cert) == fingerprint(getattr(made, role).key.public_key())
        assert pair.public_key().same_key(pair.cert.public_key())  # type: ignore[arg-type]
    ca = loaded.device_ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert ca.ca and ca.path_length == 0
    owner = loaded.owner.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert not owner.ca
    # Three distinct keys.
    assert (
        len({fingerprint(p.cert) for p in (loaded.manufacturer, loaded.device_ca, loaded.owner)})
        == 3
    )


def test_private_keys_are_mode_0600_and_certificates_0644(tmp_path: Path) -> None:
    # Threat: other local users read the manufacturer's or owner's signing key.
    init_pki(tmp_path / "pki")
    for role in ("manufacturer", "device_ca", "owner"):
        assert stat.S_IMODE(Pki.key_path(tmp_path / "pki", role).stat().st_mode) == 0o600
        assert stat.S_IMODE(Pki.cert_path(tmp_path / "pki", role).stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "pki").stat().st_mode) == 0o700


def test_init_refuses_to_overwrite_an_existing_pki(tmp_path: Path) -> None:
    # Threat: re-running init replaces the device CA and orphans every device already made.
    first = init_pki(tmp_path / "pki")
    before = {p: p.read_bytes() for p in Pki.files(tmp_path / "pki")}
    with pytest.raises(PkiError, match=r"manufacturer_key\.pem: already exists") as error:
        init_pki(tmp_path / "pki")
    assert error.value.user_error
    assert error.value.path == Pki.key_path(tmp_path / "pki", "manufacturer")
    assert {p: p.read_bytes() for p in Pki.files(tmp_path / "pki")} == before
    assert fingerprint(load_pki(tmp_path / "pki").owner.cert) == fingerprint(first.owner.cert)


def test_init_refuses_when_only_one_file_exists_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "owner_cert.pem").write_text("someone's certificate\n")
    with pytest.raises(PkiError, match=r"owner_cert\.pem: already exists"):
        init_pki(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["owner_cert.pem"]


def test_unknown_curve_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="unknown curve 'P-521'"):
        init_pki(tmp_path / "pki", curve="P-521")
    assert not (tmp_path / "pki").exists()


def test_load_names_the_missing_file(tmp_path: Path) -> None:
    init_pki(tmp_path / "pki")
    Pki.cert_path(tmp_path / "pki", "device_ca").unlink()
    with pytest.raises(PkiError, match=r"device_ca_cert\.pem: certificate not found"):
        load_pki(tmp_path / "pki")
    with pytest.raises(PkiError, match="no such PKI directory"):
        load_pki(tmp_path / "nowhere")


def test_load_names_a_corrupt_key_without_quoting_it(tmp_path: Path) -> None:
    init_pki(tmp_path / "pki")
    path = Pki.key_path(tmp_path / "pki", "owner")
    pem = path.read_text()
    path.write_text(pem.replace(pem.splitlines()[1][:8], "AAAAAAAA"))
    with pytest.raises(PkiError, match=r"owner_key\.pem: not a PEM private key") as error:
        load_pki(tmp_path / "pki")
    assert pem.splitlines()[2] not in str(error.value)


def test_load_rejects_a_certificate_of_another_key(tmp_path: Path) -> None:
    # Threat: a swapped certificate makes the PKI announce a key it cannot sign with.
    init_pki(tmp_path / "a")
    init_pki(tmp_path / "b")
    owner_b = Pki.cert_path(tmp_path / "b", "owner").read_bytes()
    Pki.cert_path(tmp_path / "a", "owner").write_bytes(owner_b)
    with pytest.raises(PkiError, match=r"owner_cert\.pem: is not the certificate of owner_key"):
        load_pki(tmp_path / "a")


def test_device_certificate_names_the_guid_and_chains_to_the_device_ca(pki: Pki) -> None:
    guid = Guid.random()
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = issue_device_certificate(pki.device_ca, PublicKey.from_key(key.public_key()), guid)
    assert leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == str(guid)
    assert leaf.issuer == pki.device_ca.cert.subject
    assert leaf.not_valid_after_utc <= pki.device_ca.cert.not_valid_after_utc
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    chain = [leaf.public_bytes(DER), pki.device_ca.cert.public_bytes(DER)]
    assert verify_device_chain(chain, [pki.device_ca.cert]) == leaf
    # The leaf alone is enough when its issuer is trusted.
    assert verify_device_chain([leaf], [pki.device_ca.cert]) == leaf


def test_device_key_of_an_unusable_kind_is_refused(pki: Pki) -> None:
    key = ec.generate_private_key(ec.SECP521R1())
    with pytest.raises(FdoMessageError) as error:
        issue_device_certificate(pki.device_ca, key.public_key(), Guid.random())
    assert error.value.code == ErrorCode.INVALID_MESSAGE_ERROR


def test_fido_device_onboard_rs_chain_verifies_against_its_rsa_device_ca() -> None:
    # Interop: a leaf with no extensions at all under an RSA-4096 CA (see vectors/SOURCE.md).
    voucher = Voucher.load((VECTORS / "ov.pem").read_text())
    assert voucher.cert_chain is not None
    ca = x509.load_der_x509_certificate(voucher.cert_chain[1])
    leaf = verify_device_chain(voucher.cert_chain, [ca])
    assert leaf.subject.rfc4514_string() == "CN=go.fdo.example"


def test_chain_from_another_device_ca_is_rejected(pki: Pki, tmp_path: Path) -> None:
    # Threat: a device made by someone else's (or a counterfeiter's) CA claims to be ours.
    other = init_pki(tmp_path / "other")
    chain = device(other)
    with pytest.raises(VerifyError, match="root CA that is not a trusted device CA") as error:
        verify_device_chain(chain, [pki.device_ca.cert])
    assert error.value.code == ErrorCode.INVALID_OWNERSHIP_VOUCHER
    # Without the other CA in the chain, the leaf names an issuer we trust but was not signed
    # by it.
    with pytest.raises(VerifyError, match="signature of device certificate 0") as error:
        verify_device_chain(chain[:1], [pki.device_ca.cert])
    assert error.value.code == ErrorCode.INVALID_OWNERSHIP_VOUCHER


def test_expired_device_certificate_is_rejected(pki: Pki) -> None:
    # Threat: a certificate past its validity (a retired or compromised device line) is reused.
    chain = device(pki, now=NOW - datetime.timedelta(days=10), validity=datetime.timedelta(days=1))
    with pytest.raises(VerifyError, match=r"device certificate 0 .* expired on") as error:
        verify_device_chain(chain, [pki.device_ca.cert])
    assert error.value.code == ErrorCode.INVALID_OWNERSHIP_VOUCHER
    # A fresh certificate from the same CA verifies: only the expiry is at fault.
    verify_device_chain(device(pki), [pki.device_ca.cert])


def test_device_certificate_not_yet_valid_is_rejected(pki: Pki) -> None:
    # Threat: a certificate issued for the future (a misused CA or a wrong clock at DI).
    chain = device(pki, now=NOW + datetime.timedelta(days=10))
    with pytest.raises(VerifyError, match="is not valid before") as error:
        verify_device_chain(chain, [pki.device_ca.cert])
    assert error.value.code == ErrorCode.INVALID_OWNERSHIP_VOUCHER


def test_certificate_issued_by_a_non_ca_is_rejected(pki: Pki) -> None:
    # Threat: a device's own (end-entity) key issues certificates for fake devices.
    middle_key = ec.generate_private_key(ec.SECP384R1())
    middle = CertifiedKey(
        middle_key,
        issue_device_certificate(pki.device_ca, middle_key.public_key(), Guid.random()),
    )
    fake = ec.generate_private_key(ec.SECP384R1())
    leaf = issue_device_certificate(middle, fake.public_key(), Guid.random())
    chain = [c.public_bytes(DER) for c in (leaf, middle.cert, pki.device_ca.cert)]
    with pytest.raises(VerifyError, match=r"device certificate 1 .* is not a CA") as error:
        verify_device_chain(chain, [pki.device_ca.cert])
    assert error.value.code == ErrorCode.INVALID_OWNERSHIP_VOUCHER


def test_tampered_device_certificate_signature_is_rejected(pki: Pki) -> None:
    # Threat: a certificate whose content was changed after the CA signed it.
    chain = device(pki)
    tampered = chain[0][:-1] + bytes([chain[0][-1] ^ 0x01])
    with pytest.raises(VerifyError, match="signature of device certificate 0") as error:
        verify_device_chain([tampered, chain[1]], [pki.device_ca.cert])
    assert error.value.code == ErrorCode.INVALID_OWNERSHIP_VOUCHER


def test_device_certificate_that_is_a_ca_is_rejected(pki: Pki) -> None:
    # Threat: the device CA's own certificate presented as a device.
    with pytest.raises(VerifyError) as error:
        verify_device_chain([pki.device_ca.cert], [pki.device_ca.cert])
    assert error.value.code == ErrorCode.INVALID_OWNERSHIP_VOUCHER


def test_bad_chain_errors_carry_no_key_material(pki: Pki) -> None:
    chain = device(pki)
    leaf = x509.load_der_x509_certificate(chain[0])
    spki = leaf.public_key().public_bytes(DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(VerifyError) as error:
        verify_device_chain([chain[0][:-1] + bytes([chain[0][-1] ^ 0x01])], [pki.device_ca.cert])
    text = str(error.value)
    assert spki.hex() not in text and fingerprint(leaf) not in text and "BEGIN" not in text


def test_garbage_chains_and_no_trust_are_rejected(pki: Pki) -> None:
    for chain, trusted, message in (
        ([], [pki.device_ca.cert], "empty"),
        ([b"not a certificate"], [pki.device_ca.cert], "device certificate 0 is not DER"),
        (device(pki), [], "no trusted device CA"),
    ):
        with pytest.raises(VerifyError, match=message) as error:
            verify_device_chain(chain, trusted)
        assert error.value.code == ErrorCode.INVALID_OWNERSHIP_VOUCHER
    with pytest.raises(VerifyError) as error:
        verify_device_chain(
            device(pki),
            [pki.device_ca.cert],
            code=ErrorCode.INVALID_MESSAGE_ERROR,
            now=NOW + datetime.timedelta(days=365 * 30),
        )
    assert error.value.code == ErrorCode.INVALID_MESSAGE_ERROR
