"""FDO error codes and the errors the protocol core raises, each carrying the code to answer with.

The codes are those of the FDO 1.1 specification (section "Error Codes"); a server answers a
failed step with the 5-element Error message (type 255) holding ``error.code``.

::

    MessageError (afield.errors)
     └── FdoMessageError     a body does not decode or has the wrong shape (code 100)
    ProtocolError (afield.errors)
     └── VerifyError         a signature, MAC, hash, nonce or decryption check failed (code 101)
          └── VoucherError   an ownership voucher does not verify (code 2); names the entry

What it leaves to others: turning an error into an Error message and an HTTP status (servers).
"""

from __future__ import annotations

from enum import IntEnum

from afield.errors import MessageError, ProtocolError

__all__ = ["ErrorCode", "FdoMessageError", "VerifyError", "VoucherError"]


class ErrorCode(IntEnum):
    """EMErrorCode values of the FDO 1.1 specification."""

    INVALID_JWT_TOKEN = 1
    INVALID_OWNERSHIP_VOUCHER = 2
    INVALID_OWNER_SIGN_BODY = 3
    INVALID_IP_ADDRESS = 4
    INVALID_GUID = 5
    RESOURCE_NOT_FOUND = 6
    MESSAGE_BODY_ERROR = 100
    INVALID_MESSAGE_ERROR = 101
    CRED_REUSE_ERROR = 102
    INTERNAL_SERVER_ERROR = 500


class FdoMessageError(MessageError):
    """An FDO body is not well-formed CBOR, breaks a limit, or has the wrong shape.

    ``code`` is the FDO error code to answer with (MESSAGE_BODY_ERROR unless the body is
    well-formed but semantically invalid); ``where`` names the field (``"TO2.HelloDevice[1]"``).
    """

    def __init__(
        self, message: str, *, where: str = "", code: int = ErrorCode.MESSAGE_BODY_ERROR
    ) -> None:
        super().__init__(f"{where}: {message}" if where else message)
        self.where = where
        self.code = int(code)


class VerifyError(ProtocolError):
    """A signature, MAC, hash, nonce or decryption check failed."""

    def __init__(self, message: str, *, code: int = ErrorCode.INVALID_MESSAGE_ERROR) -> None:
        super().__init__(message, code=int(code))


class VoucherError(VerifyError):
    """An ownership voucher does not verify; ``entry`` is the failing entry (None: the header)."""

    def __init__(
        self,
        message: str,
        *,
        entry: int | None = None,
        code: int = ErrorCode.INVALID_OWNERSHIP_VOUCHER,
    ) -> None:
        where = "header" if entry is None else f"entry {entry}"
        super().__init__(f"ownership voucher {where}: {message}", code=code)
        self.entry = entry
