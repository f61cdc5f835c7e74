"""The fleet manager's device CA: certify the key of each device that enrolls.

:func:`load_or_create_ca` reads the CA from the ``certificate_authorities`` table, creating it on
the first start (an EC P-256 key and a self-signed certificate, ``cA`` true, path length 0). When
several API processes start together on PostgreSQL each may create one; every process then uses
the one with the lowest id, so they agree.

:meth:`DeviceCA.issue` checks a device's CSR (PEM, at most :data:`MAX_CSR_BYTES`, a valid
self-signature, an EC P-256 key: the curve device secure elements and TPMs hold) and issues a
certificate whose subject CN is the device id, ``keyUsage`` digitalSignature, for
:data:`DEVICE_VALIDITY`. The certificate is what the device shows; every request it signs is
checked against the key it certifies (:mod:`afield.fleet.protocol`).

What it leaves to others: tokens and the device record (:mod:`afield.fleet.api.device`),
renewal and revocation (not there yet: a device is removed by deleting its record).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from afield.errors import FleetError
from afield.fdo.pki import CertifiedKey, build_certificate
from afield.fleet.db import Database
from afield.fleet.models import CertificateAuthority

__all__ = ["CA_VALIDITY", "DEVICE_VALIDITY", "MAX_CSR_BYTES", "CsrError", "DeviceCA", "Issued"]

MAX_CSR_BYTES = 8192
CA_VALIDITY = datetime.timedelta(days=20 * 365)
DEVICE_VALIDITY = datetime.timedelta(days=5 * 365)
_BACKDATE = datetime.timedelta(minutes=10)


class CsrError(FleetError):
    """A certificate signing request the CA refuses; the message says what it accepts."""

    user_error = True


@dataclass(frozen=True)
class Issued:
    """A device certificate: PEM, its serial (hex), and the certified public key (PEM)."""

    certificate: str
    serial: str
    public_key: str


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class DeviceCA:
    """A CA key and certificate that certify device keys."""

    def __init__(self, certified: CertifiedKey) -> None:
        self.certified = certified
        self.certificate_pem = _pem(certified.cert)

    @classmethod
    def create(cls, now: datetime.datetime) -> DeviceCA:
        """A new CA: EC P-256, self-signed, valid for :data:`CA_VALIDITY`."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "afield fleet device CA")])
        cert = build_certificate(
            subject=name,
            public_key=key.public_key(),
            issuer=None,
            signer=key,
            ca=True,
            not_before=now - _BACKDATE,
            not_after=now + CA_VALIDITY,
        )
        return cls(CertifiedKey(key, cert))

    def issue(self, csr_pem: str, device_id: str, now: datetime.datetime) -> Issued:
        """Certify the key in ``csr_pem`` as device ``device_id``.

        Raises:
            CsrError: the CSR is too large, not PEM, not self-signed correctly, or not for an
                EC P-256 key.
        """
        data = csr_pem.encode()
        if len(data) > MAX_CSR_BYTES:
            raise CsrError(f"csr: {len(data)} bytes, more than the {MAX_CSR_BYTES} accepted")
        try:
            csr = x509.load_pem_x509_csr(data)
        except ValueError:
            raise CsrError("csr: not a PEM certificate signing request (PKCS#10)") from None
        public = csr.public_key()
        if not (isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1"):
            raise CsrError("csr: the key must be EC P-256 (secp256r1)")
        if not csr.is_signature_valid:
            raise CsrError("csr: its signature does not verify with its own key")
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
        cert = build_certificate(
            subject=subject,
            public_key=public,
            issuer=self.certified,
            signer=self.certified.key,
            ca=False,
            not_before=now - _BACKDATE,
            not_after=min(now + DEVICE_VALIDITY, self.certified.cert.not_valid_after_utc),
        )
        key_pem = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
        return Issued(_pem(cert), format(cert.serial_number, "x"), key_pem)


def load_or_create_ca(db: Database, now: datetime.datetime) -> DeviceCA:
    """The fleet's device CA from the database, created and stored on first use."""
    query = select(CertificateAuthority).order_by(CertificateAuthority.id).limit(1)
    with db.sessions() as session:
        row = session.scalars(query).first()
        if row is None:
            created = DeviceCA.create(now)
            key_pem = created.certified.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode()
            session.add(
                CertificateAuthority(
                    certificate=created.certificate_pem, private_key=key_pem, created=now
                )
            )
            session.commit()
            row = session.scalars(query).first()
        assert row is not None  # noqa: S101  # committed just above
        key = serialization.load_pem_private_key(row.private_key.encode(), password=None)
        cert = x509.load_pem_x509_certificate(row.certificate.encode())
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise FleetError("certificate_authorities: the stored CA key is not an EC key")
    return DeviceCA(CertifiedKey(key, cert))
