"""TO2 as the device runs it: prove the owner, prove the device, take the owner's service info.

::

    device                                        owner
    TO2.HelloDevice(60)                     ->    finds the voucher, starts the key exchange
                                            <-    TO2.ProveOVHdr(61), signed by the owner key
    TO2.GetOVNextEntry(62) [i]              ->    once per voucher entry, 0 first
                                            <-    TO2.OVNextEntry(63) [i, entry]
    TO2.ProveDevice(64): EAT with xB        ->    checks the device, finishes the key exchange
                                            <-    TO2.SetupDevice(65)           encrypted from here
    TO2.DeviceServiceInfoReady(66)          ->
                                            <-    TO2.OwnerServiceInfoReady(67)
    TO2.DeviceServiceInfo(68)               ->    devmod, then replies, until the owner is done
                                            <-    TO2.OwnerServiceInfo(69)
    TO2.Done(70) [NonceTO2ProveDv]          ->    records the onboarding
                                            <-    TO2.Done2(71) [NonceTO2SetupDv]

The device trusts nothing the owner says until it checks it (FDO 1.1, TO2): TO2.ProveOVHdr is
signed by the key in its unprotected header (CUPHOwnerPubKey), answers this run's
NonceTO2ProveOV and the hash of this run's TO2.HelloDevice; the voucher header in it carries
this device's GUID, this device's HMAC (made with the secret only the device holds) and the
manufacturer key the credential names (DCPubKeyHash). Each voucher entry is then fetched and
checked as it arrives: signed by the previous key (entry 0 by the manufacturer's), hashing the
previous entry (entry 0: header and HMAC) and GUID || DeviceInfo; the last entry's key must be
the key that signed TO2.ProveOVHdr, and a to1d from TO1 must be signed by it too. Only then does
the device sign its EAT (NonceTO2ProveDv, UEID from its GUID, xB, NonceTO2SetupDv in the
unprotected header). TO2.SetupDevice must be signed by the Owner2Key it carries and answer
NonceTO2SetupDv; TO2.Done2 must answer it again. Every failed check raises
:class:`~afield.fdo.VerifyError` or :class:`~afield.fdo.VoucherError` naming the check.

From TO2.SetupDevice on, both directions are COSE_Encrypt0 under the session key of the key
exchange (:mod:`afield.fdo.kex`; TO2.ProveDevice itself travels in the clear, since it carries
xB). The replacement credential keeps the device key, secret and DeviceInfo and takes the new
GUID, RendezvousInfo and Owner2Key; its ReplacementHMac is the HMAC, of the kind the old header
had, over the replacement header :func:`replacement_header` builds (the owner builds the same
one); its DCPubKeyHash uses the old one's hash kind. When TO2.SetupDevice repeats the GUID,
RendezvousInfo and owner key, the owner asks for credential reuse: the device accepts only when
``allow_credential_reuse`` is set (else CRED_REUSE_ERROR) and sends a null ReplacementHMac.

Service info: devmod first, chunked to the owner's maxDeviceServiceInfoSz with
IsMoreServiceInfo (``devmod:modules`` split into several ``[start, count, names...]`` values
when the list does not fit one message, as devmod allows); each owner key/value goes to
``handler`` as it arrives and its answers go in the next TO2.DeviceServiceInfo messages. While
the owner says IsMoreServiceInfo the device sends empty messages, as the specification asks; it
stops when the owner says IsDone.

Tolerances: maxDeviceServiceInfoSz of 0, null or nonsense is read with
:func:`~afield.fdo.messages.effective_message_size`; key/values that come with IsDone (afield's
owner sends none) still go to ``handler``, but its answers cannot be sent; the owner's
maxOwnerMessageSize is not used (the device's messages are bounded by maxDeviceServiceInfoSz
and are small otherwise). The device does not send an Error message when it gives up (the HTTP
binding has no request for it; the owner's session expires).

What it leaves to others: finding the owner (:mod:`afield.fdo.to1`), keeping the new credential
and applying what the owner gave (:mod:`afield.device.onboard`), the service info modules
(:mod:`afield.fdo.modules`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from afield.errors import FdoError, ProtocolError
from afield.fdo import _check as check
from afield.fdo._errors import ErrorCode, VerifyError, VoucherError
from afield.fdo.cbor import decode, encode
from afield.fdo.client import Transport
from afield.fdo.cose import Sign1, SigningKey, sig_type_for
from afield.fdo.credential import DeviceCredential
from afield.fdo.eat import CUPH_NONCE, CUPH_OWNER_PUBKEY, EUPH_NONCE, EatPayload
from afield.fdo.kex import CipherSuite, KexSuite, KeyExchange, Role, Session
from afield.fdo.messages import (
    Message,
    ProveOVHdrPayload,
    SetupDevicePayload,
    TO2DeviceServiceInfo,
    TO2DeviceServiceInfoReady,
    TO2Done,
    TO2Done2,
    TO2GetOVNextEntry,
    TO2HelloDevice,
    TO2OVNextEntry,
    TO2OwnerServiceInfo,
    TO2OwnerServiceInfoReady,
    TO2ProveDevice,
    TO2ProveOVHdr,
    TO2SetupDevice,
    effective_message_size,
)
from afield.fdo.rendezvous import RvTo2Addr, TransportProtocol
from afield.fdo.serviceinfo import DEFAULT_MTU, Devmod, ServiceInfoKV, chunk_service_info
from afield.fdo.types import Hash, Nonce, PublicKey, SigInfo
from afield.fdo.voucher import EntryChain, OVHeader

__all__ = ["Handler", "To2Result", "owner_urls", "replacement_header", "run_to2"]

Handler = Callable[[ServiceInfoKV], list[ServiceInfoKV]]
"""Takes one owner service info key/value, returns the device's answers (maybe none)."""

_MAX_UINT16 = 0xFFFF
_ENVELOPE = 128
"""Room for the message array and the COSE_Encrypt0 around a ServiceInfo."""
_KV_ROOM = 24
"""What chunk_service_info keeps back from each message beside the key/values."""
_DNS_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_M = TypeVar("_M", bound=Message)


@dataclass(frozen=True)
class To2Result:
    """What a finished TO2 gives the device.

    Attributes:
        credential: the credential to keep: the replacement, or the same one when the owner
            asked for credential reuse (``reused``).
        owner_key: the owner's public key, as TO2.ProveOVHdr carried it.
        owner_service_info: every owner key/value, in the order received.
        replies: every key/value ``handler`` answered, in the order produced.
        reused: whether the owner asked for (and the device accepted) credential reuse.
    """

    credential: DeviceCredential
    owner_key: PublicKey
    owner_service_info: list[ServiceInfoKV]
    replies: list[ServiceInfoKV]
    reused: bool = False


def owner_urls(addrs: RvTo2Addr) -> list[str]:
    """The owner base URLs an RVTO2Addr names, in order, for :func:`run_to2`.

    Each HTTP or HTTPS entry gives its DNS name first, then its IP address (IPv6 in brackets),
    with its port. Entries of other transports (TCP, TLS, CoAP), port 0 and names that are not
    DNS names (anything but letters, digits, dots and hyphens: the address is not authenticated
    until TO2.ProveOVHdr) are skipped, as are repeats.
    """
    schemes = {TransportProtocol.HTTP: "http", TransportProtocol.HTTPS: "https"}
    urls: list[str] = []
    for entry in addrs.entries:
        scheme = schemes.get(entry.protocol)
        if scheme is None or entry.port == 0:
            continue
        hosts = []
        if entry.dns is not None and _DNS_NAME.fullmatch(entry.dns):
            hosts.append(entry.dns)
        if entry.ip is not None:
            ip = ipaddress.ip_address(entry.ip)
            hosts.append(f"[{ip}]" if ip.version == 6 else str(ip))
        for host in hosts:
            url = f"{scheme}://{host}:{entry.port}"
            if url not in urls:
                urls.append(url)
    return urls


def replacement_header(header: OVHeader, setup: SetupDevicePayload) -> OVHeader:
    """The header of the replacement voucher: the new GUID, RendezvousInfo and Owner2Key (in the
    manufacturer key's place), the old DeviceInfo, device chain hash and protocol version.

    Device and owner both build it: the device MACs its encoding (ReplacementHMac), the owner
    stores it with that HMAC as the voucher of the device's new credential.
    """
    return OVHeader(
        guid=setup.guid,
        rv_info=setup.rv_info,
        device_info=header.device_info,
        manufacturer_key=setup.owner2_key,
        cert_chain_hash=header.cert_chain_hash,
        protocol_version=header.protocol_version,
    )


def _devmod_kvs(devmod: Devmod, mtu: int) -> list[ServiceInfoKV]:
    """devmod's key/values, ``devmod:modules`` split so that each part fits ``mtu``."""
    kvs = [kv for kv in devmod.to_kvs() if kv.key != "devmod:modules"]
    names, start = list(devmod.modules), 0
    while True:
        count = min(1, len(names) - start)
        while (
            start + count < len(names)
            and len(encode(_modules_kv(names, start, count + 1).to_cbor())) <= mtu - _KV_ROOM
        ):
            count += 1
        kvs.append(_modules_kv(names, start, count))
        start += count
        if start >= len(names):
            return kvs


def _modules_kv(names: list[str], start: int, count: int) -> ServiceInfoKV:
    """One part of ``devmod:modules``: ``[start, count, names...]``."""
    return ServiceInfoKV.of("devmod", "modules", [start, count, *names[start : start + count]])


@dataclass(frozen=True)
class _OwnerProof:
    """What a checked TO2.ProveOVHdr established."""

    header_bytes: bytes
    header: OVHeader
    header_hmac: Hash
    num_entries: int
    owner_key: PublicKey
    nonce_prove_dv: Nonce
    kex_a: bytes


@dataclass(frozen=True)
class _Setup:
    """What a checked TO2.SetupDevice established; ``tunnel`` encrypts from now on."""

    tunnel: Session
    payload: SetupDevicePayload
    nonce_setup_dv: Nonce
    reused: bool


def _check_header(payload: ProveOVHdrPayload, credential: DeviceCredential) -> OVHeader:
    """The voucher header of TO2.ProveOVHdr, if it is this device's own."""
    header = OVHeader.from_cbor(decode(payload.header_bytes))
    if header.guid != credential.guid:
        raise VoucherError(f"GUID {header.guid} is not this device's GUID {credential.guid}")
    if not payload.hmac.alg.is_hmac or not payload.hmac.matches(
        payload.header_bytes, key=credential.hmac_secret
    ):
        raise VoucherError("HMAC does not match this device's secret (the header was altered)")
    if not credential.owner_key_matches(header.manufacturer_key):
        raise VoucherError("manufacturer key is not the one this device's credential names")
    return header


def _check_prove_ovhdr(
    token: Sign1, hello: TO2HelloDevice, credential: DeviceCredential
) -> _OwnerProof:
    """Check TO2.ProveOVHdr against what this device sent and holds (see the module docstring)."""
    where = TO2ProveOVHdr.NAME
    owner_key = PublicKey.from_cbor(
        token.unprotected.get(CUPH_OWNER_PUBKEY), f"{where}.CUPHOwnerPubKey"
    )
    try:
        token.verify(owner_key)
    except VerifyError as e:
        raise VerifyError(f"{where}: not signed by the key in CUPHOwnerPubKey: {e}") from None
    payload = ProveOVHdrPayload.from_cbor(check.cbor_in_bstr(token.payload, where), where)
    if not payload.nonce.matches(hello.nonce):
        raise VerifyError(f"{where}: NonceTO2ProveOV is not the nonce of this TO2.HelloDevice")
    if not payload.hello_device_hash.matches(hello.encode()):
        raise VerifyError(f"{where}: helloDeviceHash is not the hash of this TO2.HelloDevice")
    nonce = Nonce.from_cbor(token.unprotected.get(CUPH_NONCE), f"{where}.CUPHNonce")
    return _OwnerProof(
        header_bytes=payload.header_bytes,
        header=_check_header(payload, credential),
        header_hmac=payload.hmac,
        num_entries=payload.num_entries,
        owner_key=owner_key,
        nonce_prove_dv=nonce,
        kex_a=payload.kex_a,
    )


def _check_setup(token: Sign1, nonce: Nonce) -> SetupDevicePayload:
    """TO2.SetupDevice's payload, if Owner2Key signed it and it answers this run's nonce."""
    where = TO2SetupDevice.NAME
    payload = SetupDevicePayload.from_cbor(check.cbor_in_bstr(token.payload, where), where)
    try:
        token.verify(payload.owner2_key)
    except VerifyError as e:
        raise VerifyError(f"{where}: not signed by its Owner2Key: {e}") from None
    if not payload.nonce.matches(nonce):
        raise VerifyError(f"{where}: NonceTO2SetupDv is not the nonce of this TO2.ProveDevice")
    return payload


class _Device:
    """One TO2 run, step by step; each step checks the owner's answer before the next."""

    def __init__(
        self,
        transport: Transport,
        credential: DeviceCredential,
        device_key: SigningKey,
        kex_suite: KexSuite | str,
        cipher: CipherSuite | int,
    ) -> None:
        self.transport = transport
        self.credential = credential
        self.key = device_key
        self.exchange = KeyExchange(kex_suite, Role.DEVICE)
        try:
            self.cipher = CipherSuite(cipher)
        except ValueError:
            accepted = ", ".join(f"{c.name} ({c.value})" for c in CipherSuite)
            raise FdoError(f"cipher: {cipher} is not supported; use {accepted}") from None
        self.messages = 0

    def send(self, message: Message, expect: type[_M], **options: Any) -> _M:
        """Send one message; the answer must be of type ``expect``."""
        self.messages += 1
        answer = self.transport.send(message, expect, **options)
        if not isinstance(answer, expect):
            raise ProtocolError(f"{expect.NAME} expected", code=ErrorCode.MESSAGE_BODY_ERROR)
        return answer

    def hello(self, max_message_size: int) -> _OwnerProof:
        """TO2.HelloDevice -> TO2.ProveOVHdr, checked."""
        hello = TO2HelloDevice(
            max_message_size,
            self.credential.guid,
            Nonce.random(),
            self.exchange.suite.value,
            int(self.cipher),
            SigInfo(sig_type_for(self.key)),
        )
        answer = self.send(hello, TO2ProveOVHdr)
        return _check_prove_ovhdr(answer.token, hello, self.credential)

    def entries(self, proof: _OwnerProof, to1d: Sign1 | None) -> None:
        """TO2.GetOVNextEntry -> TO2.OVNextEntry for every entry, each checked on arrival."""
        chain = EntryChain(proof.header, proof.header_bytes, proof.header_hmac)
        for index in range(proof.num_entries):
            answer = self.send(TO2GetOVNextEntry(index), TO2OVNextEntry)
            if answer.entry_num != index:
                raise VerifyError(
                    f"{TO2OVNextEntry.NAME}: entry {answer.entry_num} sent, {index} asked for"
                )
            chain.add(answer.entry)
        chain.expect_owner(proof.owner_key, "the key that signed TO2.ProveOVHdr")
        if to1d is not None:
            try:
                to1d.verify(proof.owner_key)
            except VerifyError:
                raise VerifyError(
                    "to1d (from TO1.RVRedirect) is not signed by the owner's key"
                ) from None

    def prove(self, proof: _OwnerProof, *, allow_reuse: bool) -> _Setup:
        """TO2.ProveDevice -> TO2.SetupDevice, checked; the session key is set up here."""
        tunnel = self.exchange.session(proof.kex_a, self.cipher)
        nonce = Nonce.random()
        eat = EatPayload(proof.nonce_prove_dv, self.credential.guid, [self.exchange.parameter])
        token = Sign1.sign(
            self.key, encode(eat.to_cbor()), unprotected={EUPH_NONCE: nonce.to_cbor()}
        )
        answer = self.send(TO2ProveDevice(token), TO2SetupDevice, cipher=tunnel, plain_request=True)
        setup = _check_setup(answer.token, nonce)
        reused = (
            setup.guid == self.credential.guid
            and setup.rv_info == self.credential.rv_info
            and setup.owner2_key.same_key(proof.owner_key)
        )
        if reused and not allow_reuse:
            raise ProtocolError(
                "the owner asked for credential reuse, which this device does not allow",
                code=ErrorCode.CRED_REUSE_ERROR,
            )
        return _Setup(tunnel, setup, nonce, reused)

    def ready(self, proof: _OwnerProof, setup: _Setup, max_service_info: int) -> int:
        """TO2.DeviceServiceInfoReady -> TO2.OwnerServiceInfoReady; the owner's service info
        size (how large the device's service info messages may be)."""
        replacement = None
        if not setup.reused:
            header = replacement_header(proof.header, setup.payload)
            replacement = Hash.hmac(
                proof.header_hmac.alg, self.credential.hmac_secret, encode(header.to_cbor())
            )
        answer = self.send(
            TO2DeviceServiceInfoReady(replacement, max_service_info),
            TO2OwnerServiceInfoReady,
            cipher=setup.tunnel,
        )
        return effective_message_size(answer.max_device_service_info_size)

    def service_info(
        self, setup: _Setup, mtu: int, devmod: Devmod, handler: Handler, max_messages: int
    ) -> tuple[list[ServiceInfoKV], list[ServiceInfoKV]]:
        """TO2.DeviceServiceInfo -> TO2.OwnerServiceInfo until the owner is done; returns the
        owner's key/values and the device's answers."""
        received: list[ServiceInfoKV] = []
        replies: list[ServiceInfoKV] = []
        outbox = _devmod_kvs(devmod, mtu)
        while True:
            answer = self._send_all(setup, outbox, mtu, max_messages)
            outbox = []
            while True:
                for kv in answer.service_info:
                    received.append(kv)
                    produced = handler(kv)
                    replies.extend(produced)
                    outbox.extend(produced)
                if answer.is_done:
                    return received, replies
                if not answer.is_more:
                    break
                answer = self._send_one(setup, False, [], max_messages)

    def _send_all(
        self, setup: _Setup, kvs: list[ServiceInfoKV], mtu: int, max_messages: int
    ) -> TO2OwnerServiceInfo:
        """Send ``kvs`` in as many messages as ``mtu`` needs; the owner's answer to the last."""
        try:
            chunks = chunk_service_info(kvs, mtu)
        except ValueError as e:
            raise FdoError(f"device service info: {e} (the owner's maxDeviceServiceInfoSz)") from e
        for chunk in chunks[:-1]:
            answer = self._send_one(setup, True, chunk, max_messages)
            if answer.service_info or answer.is_more or answer.is_done:
                raise ProtocolError(
                    f"{TO2OwnerServiceInfo.NAME}: the owner sent service info or ended while the "
                    "device had more to send (IsMoreServiceInfo)",
                    code=ErrorCode.INVALID_MESSAGE_ERROR,
                )
        return self._send_one(setup, False, chunks[-1], max_messages)

    def _send_one(
        self, setup: _Setup, more: bool, kvs: list[ServiceInfoKV], max_messages: int
    ) -> TO2OwnerServiceInfo:
        if self.messages >= max_messages:
            raise ProtocolError(
                f"the owner kept TO2 going past {max_messages} messages",
                code=ErrorCode.INVALID_MESSAGE_ERROR,
            )
        message = TO2DeviceServiceInfo(more, tuple(kvs))
        return self.send(message, TO2OwnerServiceInfo, cipher=setup.tunnel)

    def done(self, proof: _OwnerProof, setup: _Setup) -> None:
        """TO2.Done -> TO2.Done2, checked."""
        answer = self.send(TO2Done(proof.nonce_prove_dv), TO2Done2, cipher=setup.tunnel)
        if not answer.nonce.matches(setup.nonce_setup_dv):
            raise VerifyError(
                f"{TO2Done2.NAME}: NonceTO2SetupDv is not the nonce of this TO2.ProveDevice"
            )

    def new_credential(self, setup: _Setup) -> DeviceCredential:
        """The credential to keep after TO2."""
        if setup.reused:
            return self.credential
        old = self.credential
        return DeviceCredential(
            active=True,
            hmac_secret=old.hmac_secret,
            device_info=old.device_info,
            guid=setup.payload.guid,
            rv_info=setup.payload.rv_info,
            public_key_hash=Hash.of(
                old.public_key_hash.alg, encode(setup.payload.owner2_key.to_cbor())
            ),
            protocol_version=old.protocol_version,
        )


def run_to2(
    owner_url: str,
    credential: DeviceCredential,
    device_key: SigningKey,
    *,
    to1d: Sign1 | None = None,
    devmod: Devmod,
    handler: Handler,
    kex_suite: KexSuite | str = KexSuite.ECDH384,
    cipher: CipherSuite | int = CipherSuite.A256GCM,
    max_owner_message_size: int = _MAX_UINT16,
    max_owner_service_info_size: int = DEFAULT_MTU,
    allow_credential_reuse: bool = False,
    max_messages: int = 100_000,
    timeout: float = 30.0,
) -> To2Result:
    """Run TO2 with the owner at ``owner_url``; the caller keeps the new credential.

    Args:
        owner_url: the owner's base URL (see :func:`owner_urls`).
        credential: the device's credential (from DI or an earlier TO2).
        device_key: the device's private key (its certificate is in the voucher).
        to1d: the owner's signed redirect from TO1; checked with the owner's key (None when
            the RendezvousInfo bypassed the rendezvous server).
        devmod: what the device says about itself first.
        handler: given each owner service info key/value; returns the device's answers.
        kex_suite: the key exchange (ECDH256, ECDH384, DHKEXid14, DHKEXid15).
        cipher: the session cipher (A128GCM or A256GCM).
        max_owner_message_size: the largest owner message accepted (maxDeviceMessageSize),
            256 to 65535.
        max_owner_service_info_size: the largest owner service info per message
            (maxOwnerServiceInfoSz), 256 up to ``max_owner_message_size`` less 128.
        allow_credential_reuse: accept an owner that keeps GUID, RendezvousInfo and key.
        max_messages: the most messages one TO2 may take (an owner that never says IsDone).
        timeout: seconds for connecting and for each answer.

    Raises:
        ServerError: the owner refused a message (its code and text are named).
        VerifyError: a check of the owner's answers failed (VoucherError: the voucher).
        ProtocolError: credential reuse refused (CRED_REUSE_ERROR), or the owner broke the
            service info rules.
        TransportError: the owner cannot be reached or does not speak FDO.
        FdoError: a bad argument, or the device's own service info does not fit.
    """
    if not 256 <= max_owner_message_size <= _MAX_UINT16:
        raise FdoError(f"max_owner_message_size: {max_owner_message_size} is not 256 to 65535")
    if not 256 <= max_owner_service_info_size <= max_owner_message_size - _ENVELOPE:
        raise FdoError(
            f"max_owner_service_info_size: {max_owner_service_info_size} is not 256 to "
            f"{max_owner_message_size - _ENVELOPE} (max_owner_message_size less {_ENVELOPE})"
        )
    transport = Transport(owner_url, timeout=timeout, max_response_bytes=max_owner_message_size)
    device = _Device(transport, credential, device_key, kex_suite, cipher)
    proof = device.hello(max_owner_message_size)
    device.entries(proof, to1d)
    setup = device.prove(proof, allow_reuse=allow_credential_reuse)
    mtu = device.ready(proof, setup, max_owner_service_info_size)
    received, replies = device.service_info(setup, mtu, devmod, handler, max_messages)
    device.done(proof, setup)
    return To2Result(
        credential=device.new_credential(setup),
        owner_key=proof.owner_key,
        owner_service_info=received,
        replies=replies,
        reused=setup.reused,
    )
