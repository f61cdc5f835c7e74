"""FIDO Device Onboard 1.1: the protocol core, and the PKI that feeds it.

- :mod:`afield.fdo.cbor`: bounded strict CBOR decoding (:class:`Limits`) and deterministic encoding.
- :mod:`afield.fdo.types`, :mod:`afield.fdo.rendezvous`, :mod:`afield.fdo.eat`,
  :mod:`afield.fdo.serviceinfo`, :mod:`afield.fdo.credential`: the specification's data types.
- :mod:`afield.fdo.cose`: COSE_Sign1 (ES256/ES384) and COSE_Encrypt0 (A128GCM/A256GCM).
- :mod:`afield.fdo.kex`: ECDH256/ECDH384/DHKEXid14/DHKEXid15 and the FDO KDF.
- :mod:`afield.fdo.voucher`: ownership vouchers.
- :mod:`afield.fdo.messages`: every DI/TO0/TO1/TO2/Error message.
- :mod:`afield.fdo.pki`: manufacturer, device CA and owner keys and certificates on disk (the one
  module here that touches files), device certificates, and device chain validation.

Every decoder raises only :class:`FdoMessageError` (an :class:`afield.errors.MessageError`)
carrying the FDO error code to answer with; failed checks raise :class:`VerifyError` /
:class:`VoucherError` (:class:`afield.errors.ProtocolError`).

What it leaves to others: HTTP servers and the device client, sessions and message order,
storage.
"""

from __future__ import annotations

from afield.fdo._errors import ErrorCode, FdoMessageError, VerifyError, VoucherError
from afield.fdo.cbor import Limits
from afield.fdo.messages import MESSAGES, ErrorMessage, Message, decode_message
from afield.fdo.voucher import Voucher

__all__ = [
    "MESSAGES",
    "ErrorCode",
    "ErrorMessage",
    "FdoMessageError",
    "Limits",
    "Message",
    "VerifyError",
    "Voucher",
    "VoucherError",
    "decode_message",
]
