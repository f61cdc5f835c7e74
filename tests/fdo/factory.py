"""Keys, certificates and vouchers for the FDO tests (a manufacturer, a device, owners)."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from afield.fdo.cbor import encode
from afield.fdo.rendezvous import RendezvousDirective, RendezvousInfo, RvProtocol
from afield.fdo.types import Guid, Hash, HashAlg, PublicKey
from afield.fdo.voucher import OVHeader, Voucher, cert_chain_hash


def cert(
    subject_key: ec.EllipticCurvePrivateKey,
    name: str,
    issuer_key: ec.EllipticCurvePrivateKey | None = None,
    issuer_name: str | None = None,
) -> x509.Certificate:
    """A certificate for ``subject_key``, self-signed unless an issuer is given."""
    now = datetime.datetime.now(datetime.UTC)
    signer = issuer_key or subject_key
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name or name)]))
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(
            signer, hashes.SHA384() if isinstance(signer.curve, ec.SECP384R1) else hashes.SHA256()
        )
    )


@dataclass
class World:
    """A manufacturer, a device with its cert chain and HMAC secret, and a fresh voucher."""

    mfg: ec.EllipticCurvePrivateKey
    device: ec.EllipticCurvePrivateKey
    chain: list[bytes]
    hmac_secret: bytes
    header: OVHeader
    voucher: Voucher


def world(curve: ec.EllipticCurve | None = None) -> World:
    """Manufacture one device on ``curve`` (P-384 by default)."""
    curve = curve or ec.SECP384R1()
    alg = HashAlg.SHA384 if isinstance(curve, ec.SECP384R1) else HashAlg.SHA256
    hmac_alg = HashAlg.HMAC_SHA384 if alg == HashAlg.SHA384 else HashAlg.HMAC_SHA256
    mfg = ec.generate_private_key(curve)
    ca = ec.generate_private_key(curve)
    device = ec.generate_private_key(curve)
    ca_cert = cert(ca, "device ca")
    leaf = cert(device, "device", ca, "device ca")
    chain = [c.public_bytes(serialization.Encoding.DER) for c in (leaf, ca_cert)]
    rv = RendezvousInfo(
        (
            RendezvousDirective.build(
                dns="rv.example.com", dev_port=8041, protocol=RvProtocol.HTTP
            ),
            RendezvousDirective.build(ip="10.0.0.1", owner_port=8041, owner_only=True, delay=5),
        )
    )
    header = OVHeader(
        guid=Guid.random(),
        rv_info=rv,
        device_info="afield test device",
        manufacturer_key=PublicKey.from_key(mfg.public_key()),
        cert_chain_hash=cert_chain_hash(alg, chain),
    )
    secret = os.urandom(48)
    hmac = Hash.hmac(hmac_alg, secret, encode(header.to_cbor()))
    return World(mfg, device, chain, secret, header, Voucher.create(header, hmac, chain))
