"""The device side of the FDO HTTP binding, and Device Initialize (DI) as the device runs it.

:class:`Transport` sends one protocol's messages to one server with urllib3 (no web framework
or database on devices): ``POST {base}/fdo/101/msg/{n}`` with ``Content-Type: application/cbor``
and ``Message-Type``, keeps the ``Authorization`` value the server's first answer carries and
echoes it, bounds every answer's size, and turns an Error message (type 255) into
:class:`ServerError` naming the code, the message and the server's correlation id. Given TO2's
session cipher it encrypts the body and decrypts the answer (Error messages are never
encrypted).

:func:`manufacture` runs DI: it makes the device key (EC, P-384 by default), sends DI.AppStart
with DeviceMfgInfo ``[KeyType, KeyEncoding (X509), SerialNumber, DeviceInfo, CSR]`` (the form of
the Intel clients and go-fdo, :class:`~afield.fdo.credential.DeviceMfgInfo`), MACs the
header of DI.SetCredentials with a fresh secret (HMAC-SHA384 for a P-384 key, HMAC-SHA256 for
P-256), sends DI.SetHMAC and, once DI.Done arrives, writes the private key and then the
:class:`~afield.fdo.credential.DeviceCredential` (the specification's layout), each atomically
and mode 0600. Nothing is written before DI.Done: a DI that fails leaves no credential.

What it leaves to others: TO1 and TO2 (:mod:`afield.fdo.to1`, :mod:`afield.fdo.to2`), where the
credential lives (``/var/lib/afield/`` of a sysroot: the device agent and CLI), DIUN, TLS trust
settings.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from pathlib import Path

import urllib3
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from afield.errors import FdoError, ProtocolError, TransportError
from afield.fdo._errors import ErrorCode, FdoMessageError
from afield.fdo.cbor import Limits, decode, encode
from afield.fdo.credential import DeviceCredential, DeviceMfgInfo
from afield.fdo.kex import Session
from afield.fdo.messages import (
    MESSAGES,
    DIAppStart,
    DIDone,
    DISetCredentials,
    DISetHMAC,
    ErrorMessage,
    Message,
)
from afield.fdo.types import PROTOCOL_VERSION, Hash, HashAlg

__all__ = ["KEY_CURVES", "ServerError", "Transport", "manufacture"]

KEY_CURVES: dict[str, type[ec.SECP256R1] | type[ec.SECP384R1]] = {
    "P-256": ec.SECP256R1,
    "P-384": ec.SECP384R1,
}
"""The curves a device key may be made on."""

_CBOR = "application/cbor"


class ServerError(ProtocolError):
    """The server answered with an FDO Error message.

    ``code`` is its EMErrorCode, ``prev_msg_type`` the message it refused, ``server_message``
    its text and ``correlation_id`` what to look for in the server's log.
    """

    def __init__(self, url: str, error: ErrorMessage) -> None:
        try:
            name = ErrorCode(error.code).name
        except ValueError:
            name = "unknown code"
        refused = MESSAGES.get(error.prev_msg_type)
        what = f"{refused.NAME} ({error.prev_msg_type})" if refused else str(error.prev_msg_type)
        super().__init__(
            f"{url}: the server refused {what}: error {error.code} {name}: {error.message} "
            f"(correlation id {error.correlation_id})",
            code=error.code,
        )
        self.prev_msg_type = error.prev_msg_type
        self.server_message = error.message
        self.correlation_id = error.correlation_id


class Transport:
    """One protocol session with one FDO server over HTTP.

    Args:
        base_url: the server's base URL (``http://host:port``), without ``/fdo/...``.
        timeout: seconds for connecting and for each read.
        max_response_bytes: the largest answer accepted.
        pool: a urllib3 pool manager to share (one of its own when omitted).
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        max_response_bytes: int = 64 * 1024,
        pool: urllib3.PoolManager | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.limits = Limits(max_bytes=max_response_bytes)
        self.authorization: str | None = None
        self._pool = pool or urllib3.PoolManager()

    def send(
        self,
        message: Message,
        expect: type[Message],
        *,
        cipher: Session | None = None,
        plain_request: bool = False,
    ) -> Message:
        """Send ``message`` and return the server's answer, which must be of type ``expect``.

        Args:
            message: what to send.
            expect: the message type the answer must be.
            cipher: TO2's session cipher: the body goes out as a COSE_Encrypt0 and the answer
                is decrypted before it is decoded.
            plain_request: with ``cipher``, send the body in the clear and decrypt only the
                answer (TO2.ProveDevice, whose answer TO2.SetupDevice is the first encrypted
                message).

        Raises:
            ServerError: the server answered with an Error message.
            TransportError: the server cannot be reached, or answers with something that is no
                FDO message (another HTTP status, an oversized body).
            FdoMessageError: the answer does not decode as ``expect``.
            ProtocolError: the answer is of another message type (code MESSAGE_BODY_ERROR).
            VerifyError: with ``cipher``, the answer does not decrypt.
        """
        url = f"{self.base_url}/fdo/{PROTOCOL_VERSION}/msg/{message.MSG_TYPE}"
        payload = message.encode()
        if cipher is not None and not plain_request:
            payload = cipher.encrypt(payload)
        headers = {"Content-Type": _CBOR, "Message-Type": str(message.MSG_TYPE)}
        if self.authorization is not None:
            headers["Authorization"] = self.authorization
        try:
            response = self._pool.request(
                "POST",
                url,
                body=payload,
                headers=headers,
                timeout=urllib3.Timeout(connect=self.timeout, read=self.timeout),
                retries=False,
                redirect=False,
                preload_content=False,
            )
            try:
                body = response.read(self.limits.max_bytes + 1)
            finally:
                response.release_conn()
        except urllib3.exceptions.HTTPError as e:
            raise TransportError(f"{url}: {type(e).__name__}: {e}") from e
        if len(body) > self.limits.max_bytes:
            raise TransportError(f"{url}: answer exceeds {self.limits.max_bytes} bytes")
        declared = response.headers.get("Message-Type", "").strip()
        if response.status != 200 or declared == str(ErrorMessage.MSG_TYPE):
            try:
                error = ErrorMessage.from_cbor(decode(body, self.limits))
            except FdoMessageError:
                raise TransportError(
                    f"{url}: HTTP {response.status} without an FDO Error message"
                ) from None
            raise ServerError(url, error)
        # Tolerance: an answer without Message-Type is read as the expected type.
        if declared and declared != str(expect.MSG_TYPE):
            raise ProtocolError(
                f"{url}: answer is message type {declared[:8]}, expected {expect.NAME} "
                f"({expect.MSG_TYPE})",
                code=ErrorCode.MESSAGE_BODY_ERROR,
            )
        if cipher is not None:
            body = cipher.decrypt(body, self.limits)
        answer = expect.decode(body, self.limits)
        authorization = response.headers.get("Authorization")
        if authorization:
            self.authorization = authorization
        return answer


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (mode 0600) so a reader sees the old or the new file."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def manufacture(
    url: str,
    credential_path: Path | str,
    *,
    device_info: str,
    key_curve: str = "P-384",
    serial_number: str | None = None,
    key_path: Path | str | None = None,
    timeout: float = 30.0,
) -> DeviceCredential:
    """Run DI against the manufacturer at ``url`` and store the device's credential.

    Args:
        url: the manufacturer server's base URL.
        credential_path: where the DeviceCredential (CBOR) goes; its directory must exist.
        device_info: the DeviceInfo to ask for (the model, e.g. ``"acme gateway gw-100"``).
        key_curve: ``"P-384"`` or ``"P-256"``: the device key's curve; it also picks the
            HMAC (SHA-384 or SHA-256) and the DCPubKeyHash hash.
        serial_number: the device's serial number (a random one when omitted).
        key_path: where the device's private key (PEM, PKCS#8) goes; default
            ``<credential_path>.key.pem``.
        timeout: seconds for connecting and for each answer.

    Returns:
        The credential written.

    Raises:
        ServerError: the manufacturer refused a message (its code and text are named).
        TransportError: the server cannot be reached or does not speak FDO.
        FdoError: the answer is malformed, or the files cannot be written.
    """
    if key_curve not in KEY_CURVES:
        raise FdoError(f"unknown key curve {key_curve!r}; use one of {', '.join(KEY_CURVES)}")
    credential_path = Path(credential_path)
    key_file = Path(key_path) if key_path is not None else Path(f"{credential_path}.key.pem")
    for target in (credential_path, key_file):
        if not target.parent.is_dir():
            raise FdoError(f"{target.parent}: no such directory for the device credential")
    serial = serial_number if serial_number is not None else secrets.token_hex(8)
    key = ec.generate_private_key(KEY_CURVES[key_curve]())
    strong = key.curve.key_size >= 384
    hmac_alg = HashAlg.HMAC_SHA384 if strong else HashAlg.HMAC_SHA256
    hash_alg = HashAlg.SHA384 if strong else HashAlg.SHA256

    transport = Transport(url, timeout=timeout)
    mfg_info = DeviceMfgInfo.for_key(key, serial, device_info).to_cbor()
    answer = transport.send(DIAppStart(mfg_info), DISetCredentials)
    if not isinstance(answer, DISetCredentials):
        raise ProtocolError("DI.SetCredentials expected", code=ErrorCode.MESSAGE_BODY_ERROR)
    header = answer.header
    if header.protocol_version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"the voucher header is for protocol {header.protocol_version}, not {PROTOCOL_VERSION}",
            code=ErrorCode.INVALID_MESSAGE_ERROR,
        )
    hmac_secret = secrets.token_bytes(hmac_alg.size)
    header_hmac = Hash.hmac(hmac_alg, hmac_secret, answer.header_bytes)
    transport.send(DISetHMAC(header_hmac), DIDone)

    credential = DeviceCredential(
        active=True,
        hmac_secret=hmac_secret,
        device_info=header.device_info,
        guid=header.guid,
        rv_info=header.rv_info,
        public_key_hash=Hash.of(hash_alg, encode(header.manufacturer_key.to_cbor())),
        protocol_version=header.protocol_version,
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        _write_atomic(key_file, pem)
        _write_atomic(credential_path, encode(credential.to_cbor()))
    except OSError as e:
        raise FdoError(f"{e.filename or credential_path}: cannot write: {e.strerror}") from e
    return credential
