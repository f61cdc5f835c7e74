"""The manufacturer's DI server: Device Initialize over the FDO HTTP binding.

::

    device                                   manufacturer
    DI.AppStart(10) [DeviceMfgInfo]   ->     issue the device certificate from the CSR,
                                             build the voucher header
                                      <-     DI.SetCredentials(11) [bstr .cbor OVHeader]
    DI.SetHMAC(12) [HMac of header]   ->     check the voucher, store it under its GUID
                                      <-     DI.Done(13) []

DeviceMfgInfo (:class:`afield.fdo.credential.DeviceMfgInfo`) carries the device's key in a CSR
whose signature must verify (the device holds the key); its public key, not its subject, goes
into the device certificate, which the device CA issues with the GUID as subject
(:func:`afield.fdo.pki.issue_device_certificate`). KeyEncoding chooses how the manufacturer key
is written in the header (X509, X5CHAIN with the manufacturer certificate, or COSEKEY).

The header: protocol 101, a random GUID, RendezvousInfo from the settings, DeviceInfo from
DeviceMfgInfo, the manufacturer's public key, and the SHA-384 hash of the device certificate
chain (leaf, device CA) as concatenated DER. SHA-384 whatever the curves, as
fido-device-onboard-rs does: the device never computes this hash, only owners do.

What it leaves to others: TO0 and the owner side (:mod:`afield.fdo.server.rendezvous`,
:mod:`afield.fdo.server.owner`), voucher export (``afield fdo voucher export``), DIUN, mTLS to
the factory network.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette

from afield.errors import ProtocolError
from afield.fdo._chain import verify_device_chain
from afield.fdo._errors import ErrorCode, VerifyError
from afield.fdo.cbor import encode
from afield.fdo.credential import DeviceMfgInfo
from afield.fdo.messages import DIAppStart, DIDone, DISetCredentials, DISetHMAC, Message
from afield.fdo.pki import DEFAULT_VALIDITY, Pki, issue_device_certificate
from afield.fdo.rendezvous import RendezvousInfo
from afield.fdo.server.binding import BindingSettings, FdoEndpoint, Protocol, Session, Step
from afield.fdo.server.store import VoucherExistsError, VoucherStore
from afield.fdo.types import Guid, HashAlg, KeyEncoding, PublicKey
from afield.fdo.voucher import OVHeader, Voucher, cert_chain_hash

__all__ = ["ManufacturerSettings", "create_manufacturer_app"]


@dataclass(frozen=True)
class ManufacturerSettings:
    """How the DI server builds vouchers, and the binding's limits.

    Args:
        rv_info: the RendezvousInfo written into every voucher header.
        binding: body limit, session lifetime and session count of the HTTP binding.
        device_cert_validity: how long device certificates are valid (capped by the CA's).
    """

    rv_info: RendezvousInfo
    binding: BindingSettings = field(default_factory=BindingSettings)
    device_cert_validity: datetime.timedelta = DEFAULT_VALIDITY


class _Manufacturer:
    """The DI steps, bound to the PKI, the store and the settings."""

    def __init__(self, pki: Pki, store: VoucherStore, settings: ManufacturerSettings) -> None:
        self.pki = pki
        self.store = store
        self.settings = settings

    def _manufacturer_key(self, encoding: int) -> PublicKey:
        certified = self.pki.manufacturer
        if encoding == KeyEncoding.X5CHAIN:
            return PublicKey.from_chain([certified.cert])
        if encoding == KeyEncoding.COSEKEY and isinstance(
            certified.key, ec.EllipticCurvePrivateKey
        ):
            return PublicKey.from_key(certified.key.public_key(), KeyEncoding.COSEKEY)
        # Tolerance: any other encoding (Crypto is for RSA keys only) gets X509, which every
        # implementation reads.
        return certified.public_key()

    def app_start(self, message: Message, session: Session) -> Message:
        if not isinstance(message, DIAppStart):
            raise TypeError(f"DI.AppStart step given {type(message).__name__}")
        info = DeviceMfgInfo.from_cbor(message.mfg_info)
        if not info.csr.is_signature_valid:
            raise ProtocolError(
                "DeviceMfgInfo: the CSR's signature does not verify",
                code=ErrorCode.INVALID_MESSAGE_ERROR,
            )
        device_key = info.csr.public_key()
        if not isinstance(device_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise ProtocolError(
                "DeviceMfgInfo: the CSR's key is neither EC nor RSA",
                code=ErrorCode.INVALID_MESSAGE_ERROR,
            )
        guid = Guid.random()
        device_cert = issue_device_certificate(
            self.pki.device_ca, device_key, guid, validity=self.settings.device_cert_validity
        )
        chain = [
            cert.public_bytes(serialization.Encoding.DER)
            for cert in (device_cert, self.pki.device_ca.cert)
        ]
        header = OVHeader(
            guid=guid,
            rv_info=self.settings.rv_info,
            device_info=info.device_info,
            manufacturer_key=self._manufacturer_key(info.key_encoding),
            cert_chain_hash=cert_chain_hash(HashAlg.SHA384, chain),
        )
        header_bytes = encode(header.to_cbor())
        session.state.update(
            header_bytes=header_bytes, chain=chain, serial_number=info.serial_number
        )
        return DISetCredentials(header_bytes)

    def set_hmac(self, message: Message, session: Session) -> Message:
        if not isinstance(message, DISetHMAC):
            raise TypeError(f"DI.SetHMAC step given {type(message).__name__}")
        chain: list[bytes] = session.state["chain"]
        voucher = Voucher(session.state["header_bytes"], message.hmac, chain)
        # The header and chain are the server's own, so a failure here is the server's (a
        # device CA certificate that expired, say), but a voucher is only stored if it stands
        # on its own: versions agree, the chain matches its hash and leads to the device CA.
        try:
            voucher.verify()
            verify_device_chain(chain, [self.pki.device_ca.cert])
        except VerifyError as e:
            raise ProtocolError(
                f"the new voucher does not verify: {e}", code=ErrorCode.INTERNAL_SERVER_ERROR
            ) from None
        try:
            self.store.add(voucher, serial_number=session.state["serial_number"])
        except VoucherExistsError as e:
            raise ProtocolError(str(e), code=ErrorCode.INTERNAL_SERVER_ERROR) from None
        return DIDone()


def create_manufacturer_app(
    pki: Pki, store: VoucherStore, settings: ManufacturerSettings
) -> Starlette:
    """The manufacturer's ASGI app: DI at ``/fdo/101/msg/{10,12}``, ``/metrics``, ``/healthz``.

    Args:
        pki: the manufacturer key (signs nothing at DI, its public key goes into headers) and
            the device CA (issues device certificates).
        store: where finished vouchers go.
        settings: RendezvousInfo, binding limits, device certificate validity.
    """
    steps = _Manufacturer(pki, store, settings)
    di = Protocol(
        "DI",
        (Step(DIAppStart.MSG_TYPE, steps.app_start), Step(DISetHMAC.MSG_TYPE, steps.set_hmac)),
    )
    endpoint = FdoEndpoint([di], settings.binding)
    return endpoint.app()
