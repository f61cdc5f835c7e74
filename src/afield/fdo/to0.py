"""TO0 as the owner runs it: tell a rendezvous server where a device will find its owner.

::

    owner                                             rendezvous server
    TO0.Hello(20) []                           ->
                                               <-     TO0.HelloAck(21) [NonceTO0Sign]
    TO0.OwnerSign(22) [TO0d, to1d]             ->
                                               <-     TO0.AcceptOwner(23) [WaitSeconds]

``TO0d = [OwnershipVoucher, WaitSeconds, NonceTO0Sign]`` travels as a byte string; the to1d is
a COSE_Sign1 by the voucher's last owner key over ``[RVTO2Addr, to1dTo0dHash]``, where the hash
is over those TO0d bytes: SHA-384 for a P-384 (or RSA-3072) owner key, SHA-256 otherwise, the
strength of the signature. :func:`owner_sign_message` builds TO0.OwnerSign (no I/O);
:func:`register` runs the two round trips over :class:`afield.fdo.client.Transport` and returns
the WaitSeconds the server granted, which may be less than requested: the owner registers again
before it runs out.

:func:`owner_rv_urls` (from :mod:`afield.fdo.rendezvous`) lists the rendezvous servers an owner
registers with: the URLs of every directive of the voucher's RendezvousInfo except the RVDevOnly
ones and the RVBypass ones (those name the owner itself, not a rendezvous server), with
RVOwnerPort (see :meth:`afield.fdo.rendezvous.RendezvousDirective.urls`).

This module runs wherever the owner does and imports no web framework or database.

What it leaves to others: which addresses to publish and when to register again (the owner
server and the CLI), trying several rendezvous servers, TLS trust settings.
"""

from __future__ import annotations

from collections.abc import Sequence

from afield.errors import FdoError, ProtocolError
from afield.fdo._errors import ErrorCode
from afield.fdo.cbor import encode
from afield.fdo.client import Transport
from afield.fdo.cose import Sign1, SigningKey, sig_type_for
from afield.fdo.messages import (
    TO0AcceptOwner,
    TO0d,
    TO0Hello,
    TO0HelloAck,
    TO0OwnerSign,
    To1dPayload,
)
from afield.fdo.rendezvous import RvTo2Addr, RvTo2AddrEntry, owner_rv_urls
from afield.fdo.types import Hash, HashAlg, Nonce, SigType
from afield.fdo.voucher import Voucher

__all__ = ["MAX_WAIT_SECONDS", "owner_rv_urls", "owner_sign_message", "register"]

MAX_WAIT_SECONDS = 0xFFFF_FFFF
"""WaitSeconds is a uint32."""


def _to0d_hash_alg(owner_key: SigningKey) -> HashAlg:
    strong = sig_type_for(owner_key) in (SigType.ES384, SigType.RS384, SigType.PS384)
    return HashAlg.SHA384 if strong else HashAlg.SHA256


def owner_sign_message(
    voucher: Voucher,
    owner_key: SigningKey,
    to2_addrs: RvTo2Addr,
    wait_seconds: int,
    nonce: Nonce,
) -> TO0OwnerSign:
    """TO0.OwnerSign for ``nonce`` (TO0.HelloAck's): TO0d and the to1d signed by ``owner_key``.

    No check is made that ``owner_key`` owns the voucher: :func:`register` does that.
    """
    to0d_bytes = encode(TO0d(voucher, wait_seconds, nonce).to_cbor())
    payload = To1dPayload(to2_addrs, Hash.of(_to0d_hash_alg(owner_key), to0d_bytes))
    return TO0OwnerSign(to0d_bytes, Sign1.sign(owner_key, encode(payload.to_cbor())))


def _check_arguments(voucher: Voucher, owner_key: SigningKey, wait_seconds: int) -> None:
    if not 0 <= wait_seconds <= MAX_WAIT_SECONDS:
        raise FdoError(f"wait_seconds must be 0..{MAX_WAIT_SECONDS}, got {wait_seconds}")
    if not voucher.entries:
        raise FdoError(
            f"voucher {voucher.header.guid} has no entries: extend it to the owner key first"
        )
    if not voucher.owner_key().same_key(owner_key.public_key()):
        raise FdoError(f"the owner key is not the last owner key of voucher {voucher.header.guid}")


def register(
    rv_url: str,
    voucher: Voucher,
    owner_key: SigningKey,
    to2_addrs: RvTo2Addr | Sequence[RvTo2AddrEntry],
    wait_seconds: int,
    *,
    timeout: float = 30.0,
) -> int:
    """Run TO0 with the rendezvous server at ``rv_url``: register where the device finds us.

    Args:
        rv_url: the rendezvous server's base URL (one of :func:`owner_rv_urls`).
        voucher: the device's voucher, extended to ``owner_key``.
        owner_key: the private key of the voucher's last entry; signs the to1d.
        to2_addrs: where the device reaches the owner for TO2.
        wait_seconds: how long to ask the server to keep the registration (0: its maximum).
        timeout: seconds for connecting and for each answer.

    Returns:
        The WaitSeconds the server granted.

    Raises:
        FdoError: the arguments do not fit (see the messages).
        ServerError: the server refused a message (its code and text are named).
        TransportError: the server cannot be reached or does not speak FDO.
        ProtocolError, MessageError: an answer is not the expected message.
    """
    if not isinstance(to2_addrs, RvTo2Addr):
        if not to2_addrs:
            raise FdoError("to2_addrs: give at least one RVTO2AddrEntry")
        to2_addrs = RvTo2Addr(tuple(to2_addrs))
    _check_arguments(voucher, owner_key, wait_seconds)
    transport = Transport(rv_url, timeout=timeout)
    ack = transport.send(TO0Hello(), TO0HelloAck)
    if not isinstance(ack, TO0HelloAck):
        raise ProtocolError("TO0.HelloAck expected", code=ErrorCode.MESSAGE_BODY_ERROR)
    message = owner_sign_message(voucher, owner_key, to2_addrs, wait_seconds, ack.nonce)
    accepted = transport.send(message, TO0AcceptOwner)
    if not isinstance(accepted, TO0AcceptOwner):
        raise ProtocolError("TO0.AcceptOwner expected", code=ErrorCode.MESSAGE_BODY_ERROR)
    return accepted.wait_seconds
