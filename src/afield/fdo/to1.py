"""TO1 as the device runs it: ask a rendezvous server where the owner is.

::

    device                                            rendezvous server
    TO1.HelloRV(30) [Guid, eASigInfo]          ->
                                               <-     TO1.HelloRVAck(31) [NonceTO1Proof, eBSigInfo]
    TO1.ProveToRV(32) [EAT]                    ->
                                               <-     TO1.RVRedirect(33) [to1d]

eASigInfo follows the device key: ES256 for P-256, ES384 for P-384 (RS256/RS384 for RSA), with
empty info. TO1.ProveToRV is an Entity Attestation Token (:mod:`afield.fdo.eat`): a COSE_Sign1
by the device key over the claims ``{EAT-NONCE: NonceTO1Proof, EAT-UEID: 0x01 || GUID}``; the
nonce is sent in the claim, where the specification puts it, not in the unprotected header.
:func:`prove_to_rv_message` builds it (no I/O); :func:`find_owner` runs the two round trips over
:class:`afield.fdo.client.Transport`.

The answer, the owner's to1d, is kept as received (:attr:`To1Result.to1d`, raw bytes included)
together with its parsed RVTO2Addr. Neither is verified here: the device does not know the
owner's key until TO2.ProveOVHdr, where the to1d's signature is checked with it.

:func:`device_rv_targets` walks the credential's RendezvousInfo for the device: every directive
except the RVOwnerOnly ones, in order, each URL with RVDevPort (see
:meth:`afield.fdo.rendezvous.RendezvousDirective.urls`). A directive with RVBypass names the
owner itself: its targets say ``bypass`` and the device skips TO1 and runs TO2 there.

This module runs on devices: it imports no web framework, database or FDO server.

What it leaves to others: the retry loop over the targets with their delays and the spec's
wait once all have failed (the device agent), checking DCActive, TO2.
"""

from __future__ import annotations

from dataclasses import dataclass

from afield.errors import FdoError, ProtocolError
from afield.fdo._errors import ErrorCode
from afield.fdo.cbor import decode, encode
from afield.fdo.client import Transport
from afield.fdo.cose import Sign1, SigningKey, sig_type_for
from afield.fdo.credential import DeviceCredential
from afield.fdo.eat import EatPayload
from afield.fdo.messages import (
    To1dPayload,
    TO1HelloRV,
    TO1HelloRVAck,
    TO1ProveToRV,
    TO1RVRedirect,
)
from afield.fdo.rendezvous import RendezvousInfo, RvTo2Addr
from afield.fdo.types import Guid, Nonce, SigInfo

__all__ = ["RvTarget", "To1Result", "device_rv_targets", "find_owner", "prove_to_rv_message"]


@dataclass(frozen=True)
class RvTarget:
    """One place a device tries: a rendezvous server, or with ``bypass`` the owner (TO2).

    ``delay`` is how many seconds to wait when this target fails before trying the next: the
    directive's RVDelaysec on its last URL, 0 otherwise.
    """

    url: str
    delay: int = 0
    bypass: bool = False


@dataclass(frozen=True)
class To1Result:
    """What TO1 found: the owner's to1d as received, and its (unverified) TO2 addresses."""

    to1d: Sign1
    addrs: RvTo2Addr


def device_rv_targets(rv_info: RendezvousInfo) -> list[RvTarget]:
    """The targets a device tries, in the order of the directives (see the module docstring)."""
    targets: list[RvTarget] = []
    for directive in rv_info.for_device():
        urls = directive.urls(owner=False)
        for index, url in enumerate(urls):
            last = index == len(urls) - 1
            delay = (directive.delay or 0) if last else 0
            targets.append(RvTarget(url, delay, directive.bypass))
    return targets


def prove_to_rv_message(guid: Guid, nonce: Nonce, device_key: SigningKey) -> TO1ProveToRV:
    """TO1.ProveToRV: the EAT with ``nonce`` (TO1.HelloRVAck's) and ``guid``, signed."""
    claims = EatPayload(nonce, guid).to_cbor()
    return TO1ProveToRV(Sign1.sign(device_key, encode(claims)))


def find_owner(
    rv_url: str,
    credential: DeviceCredential,
    device_key: SigningKey,
    *,
    timeout: float = 30.0,
) -> To1Result:
    """Run TO1 with the rendezvous server at ``rv_url``: where is this device's owner?

    Args:
        rv_url: the rendezvous server's base URL (a target of :func:`device_rv_targets`).
        credential: the device's credential (its GUID is asked for).
        device_key: the device's private key, whose certificate is in the voucher.
        timeout: seconds for connecting and for each answer.

    Raises:
        FdoError: the device key has no FDO signature type (a curve other than P-256/P-384).
        ServerError: the server refused a message; RESOURCE_NOT_FOUND (6) means no owner has
            registered the device (yet, or any more).
        TransportError: the server cannot be reached or does not speak FDO.
        ProtocolError, MessageError: an answer is not the expected message.
    """
    try:
        sig_info = SigInfo(sig_type_for(device_key))
    except ValueError as e:
        raise FdoError(f"device key: {e}") from None
    transport = Transport(rv_url, timeout=timeout)
    ack = transport.send(TO1HelloRV(credential.guid, sig_info), TO1HelloRVAck)
    if not isinstance(ack, TO1HelloRVAck):
        raise ProtocolError("TO1.HelloRVAck expected", code=ErrorCode.MESSAGE_BODY_ERROR)
    message = prove_to_rv_message(credential.guid, ack.nonce, device_key)
    redirect = transport.send(message, TO1RVRedirect)
    if not isinstance(redirect, TO1RVRedirect):
        raise ProtocolError("TO1.RVRedirect expected", code=ErrorCode.MESSAGE_BODY_ERROR)
    payload = decode(redirect.token.payload, transport.limits)
    addrs = To1dPayload.from_cbor(payload, "TO1.RVRedirect.payload").rv
    return To1Result(redirect.token, addrs)
