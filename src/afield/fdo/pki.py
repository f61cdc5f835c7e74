"""The FDO key infrastructure: the manufacturer, device CA and owner keys, device certificates.

``init_pki(dir)`` writes three EC key pairs (P-384 by default, P-256 accepted), each a PEM private
key (mode 0600) beside a PEM certificate::

    manufacturer_key.pem  manufacturer_cert.pem   signs entry 0 of every voucher (self-signed cert)
    device_ca_key.pem     device_ca_cert.pem      issues device certificates at DI (CA, pathlen 0)
    owner_key.pem         owner_cert.pem          receives vouchers; proves ownership in TO2

``load_pki(dir)`` reads them back and checks every key matches its certificate.
``issue_device_certificate`` is what the manufacturer server does with the device's key at DI;
``verify_device_chain`` is what a rendezvous or owner server does with a voucher's OVDevCertChain.

Chain validation: the decision is made by ``cryptography.x509.verification`` (path building,
signatures, validity at the validation time, ``basicConstraints`` cA on every issuer and its path
length, unhandled critical extensions, the key sizes and signature algorithms it allows). Its
default policies are the WebPKI's, which FDO device certificates do not meet (fido-device-onboard-rs
issues leaves with no extensions at all: no subjectAltName, no extendedKeyUsage), so the policies
are replaced: issuers must carry ``basicConstraints`` and, where they carry ``keyUsage``, assert
keyCertSign; the leaf may not be a CA and, where it carries ``keyUsage``, must assert
digitalSignature (it signs the EAT in TO2.ProveDevice). When the verifier refuses, the chain is
walked once more, in order, only to say which certificate failed and why; that walk never
accepts anything on its own.

This is the one module of :mod:`afield.fdo` that touches files. Its errors never carry key
material: they name the file, the certificate's position and subject, and the check.

What it leaves to others: DI itself (the manufacturer server), which chains a rendezvous or
owner server trusts (their configuration), revocation (FDO has none).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from afield.errors import FdoError
from afield.fdo._chain import aware_now, verify_device_chain
from afield.fdo._errors import ErrorCode, FdoMessageError
from afield.fdo.cose import SigningKey
from afield.fdo.types import Guid, PublicKey, PublicKeyType

__all__ = [
    "CURVES",
    "DEFAULT_VALIDITY",
    "ROLES",
    "CertifiedKey",
    "Pki",
    "PkiError",
    "build_certificate",
    "fingerprint",
    "init_pki",
    "issue_device_certificate",
    "load_certificate",
    "load_pki",
    "load_private_key",
    "verify_device_chain",
]

CURVES: dict[str, type[ec.SECP256R1] | type[ec.SECP384R1]] = {
    "P-256": ec.SECP256R1,
    "P-384": ec.SECP384R1,
}
"""The curves ``init_pki`` accepts, by their NIST names."""

DEFAULT_VALIDITY = datetime.timedelta(days=20 * 365)
"""How long certificates are valid: devices are onboarded years after they are made."""

_BACKDATE = datetime.timedelta(hours=1)
"""notBefore lies this far in the past, for verifiers whose clocks run a little behind."""

ROLES = ("manufacturer", "device_ca", "owner")
"""The PKI's key pairs, as attributes of :class:`Pki` and file name prefixes."""
_MIN_RSA_BITS = 2048


class PkiError(FdoError):
    """A PKI file is missing, unreadable, corrupt or would be overwritten; ``path`` names it."""

    user_error = True

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        super().__init__(f"{path}: {message}" if path is not None else message)
        self.path = path


@dataclass(frozen=True)
class CertifiedKey:
    """A private key and the certificate of its public key."""

    key: SigningKey
    cert: x509.Certificate

    def public_key(self) -> PublicKey:
        """The FDO PublicKey (X509 encoding) of this key, as vouchers carry it."""
        return PublicKey.from_key(self.key.public_key())


@dataclass(frozen=True)
class Pki:
    """The keys ``init_pki`` writes and ``load_pki`` reads."""

    directory: Path
    manufacturer: CertifiedKey
    device_ca: CertifiedKey
    owner: CertifiedKey

    @staticmethod
    def key_path(directory: Path, role: str) -> Path:
        """Where ``role``'s private key lives."""
        return Path(directory) / f"{role}_key.pem"

    @staticmethod
    def cert_path(directory: Path, role: str) -> Path:
        """Where ``role``'s certificate lives."""
        return Path(directory) / f"{role}_cert.pem"

    @classmethod
    def files(cls, directory: Path) -> list[Path]:
        """Every file of a PKI, key then certificate, role by role."""
        return [p for r in ROLES for p in (cls.key_path(directory, r), cls.cert_path(directory, r))]


def fingerprint(key: PublicKey | PublicKeyType | x509.Certificate) -> str:
    """SHA-256 (hex) of the key's DER SubjectPublicKeyInfo, whatever FDO encoding carries it."""
    if isinstance(key, x509.Certificate):
        public: Any = key.public_key()
    else:
        public = key.key() if isinstance(key, PublicKey) else key
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _signature_hash(key: SigningKey) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return hashes.SHA384() if key.curve.key_size >= 384 else hashes.SHA256()
    return hashes.SHA384() if key.key_size >= 3072 else hashes.SHA256()


def _key_usage(*, sign: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    # digitalSignature, nonRepudiation, keyEncipherment, dataEncipherment, keyAgreement,
    # keyCertSign, cRLSign, encipherOnly, decipherOnly.
    return x509.KeyUsage(sign, False, False, False, False, cert_sign, cert_sign, False, False)


def build_certificate(
    *,
    subject: x509.Name,
    public_key: PublicKeyType,
    issuer: CertifiedKey | None,
    signer: SigningKey,
    ca: bool,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.Certificate:
    """A v3 certificate; self-signed (by ``signer``) when ``issuer`` is None."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(_key_usage(sign=not ca, cert_sign=ca), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if issuer is not None:
        try:
            ski = issuer.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)
        except x509.ExtensionNotFound:
            aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key())
        builder = builder.add_extension(aki, critical=False)
    return builder.sign(signer, _signature_hash(signer))


def _write(path: Path, data: bytes, mode: int, written: list[Path]) -> None:
    # O_EXCL: never overwrite, even a file created between the check and the write.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    written.append(path)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)
        f.write(data)


def init_pki(
    directory: Path | str,
    *,
    curve: str = "P-384",
    organization: str = "afield",
    validity: datetime.timedelta = DEFAULT_VALIDITY,
    now: datetime.datetime | None = None,
) -> Pki:
    """Generate and write a new FDO PKI into ``directory`` (created, mode 0700, if missing).

    Raises:
        PkiError: ``curve`` is not P-256 or P-384, a PKI file already exists (it is named and
            nothing is written), or a file cannot be written (what was written is removed).
    """
    if curve not in CURVES:
        raise PkiError(f"unknown curve {curve!r}; use one of {', '.join(CURVES)}")
    directory = Path(directory)
    for path in Pki.files(directory):
        if path.exists() or path.is_symlink():
            raise PkiError("already exists; refusing to overwrite an existing FDO PKI", path=path)
    start = aware_now(now) - _BACKDATE
    end = start + _BACKDATE + validity
    pairs: dict[str, CertifiedKey] = {}
    for role, title in zip(ROLES, ("manufacturer", "device CA", "owner"), strict=True):
        key = ec.generate_private_key(CURVES[curve]())
        cert = build_certificate(
            subject=_name(f"{organization} FDO {title}", organization),
            public_key=key.public_key(),
            issuer=None,
            signer=key,
            ca=role == "device_ca",
            not_before=start,
            not_after=end,
        )
        pairs[role] = CertifiedKey(key, cert)
    written: list[Path] = []
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for role, pair in pairs.items():
            pem, pkcs8 = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
            key_pem = pair.key.private_bytes(pem, pkcs8, serialization.NoEncryption())
            _write(Pki.key_path(directory, role), key_pem, 0o600, written)
            _write(Pki.cert_path(directory, role), pair.cert.public_bytes(pem), 0o644, written)
    except FileExistsError as e:
        _remove(written)
        raise PkiError(
            "already exists; refusing to overwrite an existing FDO PKI", path=Path(str(e.filename))
        ) from None
    except OSError as e:
        _remove(written)
        where = Path(str(e.filename)) if e.filename else directory
        raise PkiError(f"cannot write: {e.strerror}", path=where) from None
    return Pki(directory, **pairs)


def _remove(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PkiError(f"{what} not found", path=path) from None
    except OSError as e:
        raise PkiError(f"cannot read {what}: {e.strerror}", path=path) from None


def load_private_key(path: Path | str) -> SigningKey:
    """Read an unencrypted PEM private key (EC P-256/P-384, or RSA of 2048 bits or more).

    Raises:
        PkiError: missing, unreadable, not a PEM private key, encrypted, or of another kind.
            The message never quotes the file's content.
    """
    path = Path(path)
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise PkiError(
            "private key is encrypted; afield reads only plain keys", path=path
        ) from None
    except ValueError:
        # cryptography's message can describe the content: say only what was expected.
        raise PkiError("not a PEM private key (corrupt or of another format)", path=path) from None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1):
            raise PkiError(f"EC key on {key.curve.name}; FDO uses P-256 or P-384", path=path)
        return key
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= _MIN_RSA_BITS:
        return key
    raise PkiError("not an FDO signing key (EC P-256/P-384 or RSA >= 2048)", path=path)


def load_certificate(path: Path | str) -> x509.Certificate:
    """Read a PEM certificate (the first if the file holds several).

    Raises:
        PkiError: missing, unreadable, or no PEM certificate in it.
    """
    path = Path(path)
    data = _read(path, "certificate")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise PkiError("not a PEM certificate (corrupt or of another format)", path=path) from None
    return certs[0]


def load_pki(directory: Path | str) -> Pki:
    """Read the PKI ``init_pki`` wrote, checking each key matches its certificate.

    Raises:
        PkiError: the directory is missing, or a file is missing, corrupt, or does not match.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise PkiError("no such PKI directory", path=directory)
    pairs: dict[str, CertifiedKey] = {}
    for role in ROLES:
        key_path, cert_path = Pki.key_path(directory, role), Pki.cert_path(directory, role)
        key = load_private_key(key_path)
        cert = load_certificate(cert_path)
        if fingerprint(cert) != fingerprint(key.public_key()):
            raise PkiError(f"is not the certificate of {key_path.name}", path=cert_path)
        pairs[role] = CertifiedKey(key, cert)
    if not _is_ca(pairs["device_ca"].cert):
        raise PkiError(
            "the device CA certificate is not a CA", path=Pki.cert_path(directory, "device_ca")
        )
    return Pki(directory, pairs["manufacturer"], pairs["device_ca"], pairs["owner"])


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def issue_device_certificate(
    ca: CertifiedKey,
    device_public_key: PublicKey | PublicKeyType,
    guid: Guid,
    *,
    validity: datetime.timedelta = DEFAULT_VALIDITY,
    now: datetime.datetime | None = None,
) -> x509.Certificate:
    """The device certificate DI hands back: subject CN is the GUID in UUID form.

    It ends no later than the CA's certificate, carries ``basicConstraints`` cA false and
    ``keyUsage`` digitalSignature (both critical), and key identifiers. The voucher's
    OVDevCertChain is ``[this, ca.cert]`` in DER.

    Raises:
        FdoMessageError: the device's key is not one FDO attests with (EC P-256/P-384 or RSA of
            2048 bits or more); code INVALID_MESSAGE_ERROR.
    """
    public = (
        device_public_key.key() if isinstance(device_public_key, PublicKey) else device_public_key
    )
    if isinstance(public, ec.EllipticCurvePublicKey):
        usable = isinstance(public.curve, ec.SECP256R1 | ec.SECP384R1)
    else:
        usable = public.key_size >= _MIN_RSA_BITS
    if not usable:
        raise FdoMessageError(
            "the device key must be EC P-256/P-384 or RSA of 2048 bits or more",
            code=ErrorCode.INVALID_MESSAGE_ERROR,
        )
    start = aware_now(now) - _BACKDATE
    end = min(start + _BACKDATE + validity, ca.cert.not_valid_after_utc)
    return build_certificate(
        subject=_name(str(guid)),
        public_key=public,
        issuer=ca,
        signer=ca.key,
        ca=False,
        not_before=start,
        not_after=end,
    )
