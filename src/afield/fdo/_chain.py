"""Device certificate chains: validated against the trusted device CA, explained when refused.

:func:`verify_device_chain` lets ``cryptography``'s path builder decide (signatures, validity,
CA flags, path length, unknown critical extensions) under FDO's extension rules instead of the
web's (device certificates carry no subjectAltName or extendedKeyUsage); when it refuses, a
separate walk down the chain only works out which certificate failed and why, for the message.

What it leaves to others: issuing certificates and loading the PKI (:mod:`afield.fdo.pki`).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification

from afield.fdo._errors import ErrorCode, VerifyError

__all__ = ["aware_now", "verify_device_chain"]


def aware_now(now: datetime.datetime | None) -> datetime.datetime:
    """``now``, or the current UTC time; naive times are refused (certificates are in UTC)."""
    if now is None:
        return datetime.datetime.now(datetime.UTC)
    if now.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return now


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _require_key_usage(usage: str, role: str) -> Callable[..., None]:
    def check(policy: Any, cert: x509.Certificate, ext: x509.KeyUsage | None) -> None:
        if ext is not None and not getattr(ext, usage):
            raise ValueError(f"{role} keyUsage lacks {usage}")

    return check


def _leaf_not_ca(policy: Any, cert: x509.Certificate, ext: x509.BasicConstraints | None) -> None:
    if ext is not None and ext.ca:
        raise ValueError("the device certificate is a CA certificate")


def _verifier(
    trusted: Sequence[x509.Certificate], when: datetime.datetime
) -> verification.ClientVerifier:
    any_ = verification.Criticality.AGNOSTIC
    ca_policy = (
        verification.ExtensionPolicy.permit_all()
        .require_present(x509.BasicConstraints, any_, None)
        .may_be_present(x509.KeyUsage, any_, _require_key_usage("key_cert_sign", "issuer"))
    )
    ee_policy = (
        verification.ExtensionPolicy.permit_all()
        .may_be_present(x509.KeyUsage, any_, _require_key_usage("digital_signature", "device"))
        .may_be_present(x509.BasicConstraints, any_, _leaf_not_ca)
    )
    return (
        verification.PolicyBuilder()
        .store(verification.Store(list(trusted)))
        .time(when)
        .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
        .build_client_verifier()
    )


def _label(index: int, cert: x509.Certificate) -> str:
    return f"device certificate {index} ({cert.subject.rfc4514_string()})"


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _diagnose(
    certs: list[x509.Certificate], trusted: Sequence[x509.Certificate], when: datetime.datetime
) -> str | None:
    """Why the verifier refused, certificate by certificate (for the message only)."""
    for index, cert in enumerate(certs):
        if when < cert.not_valid_before_utc:
            return f"{_label(index, cert)} is not valid before {cert.not_valid_before_utc:%Y-%m-%d}"
        if when > cert.not_valid_after_utc:
            return f"{_label(index, cert)} expired on {cert.not_valid_after_utc:%Y-%m-%d}"
    anchors = {t.public_bytes(serialization.Encoding.DER) for t in trusted}
    for index, cert in enumerate(certs):
        if cert.public_bytes(serialization.Encoding.DER) in anchors:
            return None
        if cert.issuer == cert.subject and _signed_by(cert, cert):
            return f"{_label(index, cert)} is a root CA that is not a trusted device CA"
        issuers = [(index + 1, certs[index + 1])] if index + 1 < len(certs) else []
        issuers += [(-1, t) for t in trusted if t.subject == cert.issuer]
        if not issuers:
            return f"{_label(index, cert)} is not issued by a trusted device CA"
        signer = next(((i, c) for i, c in issuers if _signed_by(cert, c)), None)
        if signer is None:
            return f"the signature of {_label(index, cert)} does not verify against its issuer"
        position, issuer = signer
        what = "the trusted device CA" if position < 0 else _label(position, issuer)
        if not _is_ca(issuer):
            return f"{what} issued {_label(index, cert)} but is not a CA (basicConstraints)"
        if position < 0:
            return None
    return None


def verify_device_chain(
    chain: Sequence[bytes | x509.Certificate],
    trusted_ca_certs: Sequence[x509.Certificate],
    *,
    now: datetime.datetime | None = None,
    code: int = ErrorCode.INVALID_OWNERSHIP_VOUCHER,
) -> x509.Certificate:
    """Check a device certificate chain (leaf first, DER or parsed) against trusted device CAs.

    The chain is a voucher's OVDevCertChain, so a refusal carries INVALID_OWNERSHIP_VOUCHER by
    default; a caller checking it in another step passes its own ``code``.

    Returns:
        The device (leaf) certificate.

    Raises:
        VerifyError: empty chain, unparsable certificate, no trusted CA, or the chain does not
            lead to a trusted CA (signature, validity at ``now``, CA flags, key usage); the
            message names the certificate and the check, never key material.
    """
    when = aware_now(now)
    if not chain:
        raise VerifyError("the device certificate chain is empty", code=code)
    if not trusted_ca_certs:
        raise VerifyError("no trusted device CA is configured", code=code)
    certs: list[x509.Certificate] = []
    for index, item in enumerate(chain):
        if isinstance(item, x509.Certificate):
            certs.append(item)
            continue
        try:
            certs.append(x509.load_der_x509_certificate(bytes(item)))
        except ValueError:
            raise VerifyError(f"device certificate {index} is not DER X.509", code=code) from None
    try:
        _verifier(trusted_ca_certs, when).verify(certs[0], certs[1:])
    except verification.VerificationError as e:
        reason = _diagnose(certs, trusted_ca_certs, when)
        if reason is None:
            # The verifier's reason names certificates by subject only, never by key.
            reason = f"{_label(0, certs[0])} does not chain to a trusted device CA: {e}"
        raise VerifyError(reason, code=code) from None
    return certs[0]
