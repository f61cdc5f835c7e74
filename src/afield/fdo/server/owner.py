"""The owner's TO2 server: prove ownership to a device, check the device, hand it service info.

::

    device                                   owner
    TO2.HelloDevice(60)               ->     find the voucher, start the key exchange (xA)
                                      <-     TO2.ProveOVHdr(61) signed by the owner key
    TO2.GetOVNextEntry(62) [i]        ->     once per voucher entry, in order
                                      <-     TO2.OVNextEntry(63)
    TO2.ProveDevice(64) EAT, xB       ->     check the device, finish the key exchange
                                      <-     TO2.SetupDevice(65)        encrypted from here on
    TO2.DeviceServiceInfoReady(66)    ->     build the replacement voucher
                                      <-     TO2.OwnerServiceInfoReady(67)
    TO2.DeviceServiceInfo(68)         ->     devmod; then the device's replies
                                      <-     TO2.OwnerServiceInfo(69)   until IsDone
    TO2.Done(70) [NonceTO2ProveDv]    ->     record the onboarding
                                      <-     TO2.Done2(71) [NonceTO2SetupDv]

Each step is a method of :class:`_Owner` over the HTTP binding
(:mod:`afield.fdo.server.binding`), which keeps the run in ``session.state`` and, once
TO2.ProveDevice has set the session key, decrypts and encrypts every later message. Refusals
and their codes (FDO 1.1 error codes):

- RESOURCE_NOT_FOUND (6): no voucher for the GUID of TO2.HelloDevice.
- INVALID_OWNERSHIP_VOUCHER (2): the stored voucher is for another GUID, does not end with this
  owner's key, has more than 255 entries, or its device certificate chain is missing or does
  not match the header's hash.
- INVALID_MESSAGE_ERROR (101): an unsupported kexSuiteName, cipherSuiteName or EPID signature;
  entries asked for out of order; a device certificate chain that does not lead to a trusted
  device CA (``trusted_device_cas``); an EAT not signed by the chain's leaf, or whose nonce is
  not this session's NonceTO2ProveDv or whose UEID is not the GUID; a ReplacementHMac that does
  not fit the credential sent (null for a new credential, or not null for credential reuse); a
  wrong nonce in TO2.Done; too many service info messages; a message that does not decrypt
  under this session's key (a replay from another session); a message out of order.
- MESSAGE_BODY_ERROR (100): bodies that do not decode, an EAT without EUPHNonce or xB, devmod
  without its mandatory keys, more device service info than ``max_device_service_info_total``.
- INTERNAL_SERVER_ERROR (500): an owner key/value larger than the device's
  maxOwnerServiceInfoSz (the text names the key and its size), or the store failing.

Choices: by default TO2.SetupDevice gives the device a new random GUID, the voucher's
RendezvousInfo (or ``replacement_rv_info``) and this owner's key; ``reuse_credential`` keeps all
three (the specification's credential reuse, where ReplacementHMac is null). The replacement
voucher is the header :func:`afield.fdo.to2.replacement_header` builds (Owner2Key in the
manufacturer key's place) with the device's ReplacementHMac, the old device certificate chain
and no entries: it is this owner's own, so a second TO2 with it needs no transfer. The owner's
service info is asked for once, when the device has sent all of its own (devmod first), with an
:class:`OnboardingRequest`; it is sent chunked to the device's maxOwnerServiceInfoSz, each chunk
but the last with IsMoreServiceInfo, and IsDone follows the device's answer to the last chunk.
The device's answers go to ``on_device_replies`` at TO2.Done, before the store records the
onboarding (replacement voucher, time, a summary of devmod and the keys answered) in one
transaction; a TO2 that fails anywhere, or whose callback fails, leaves the store unchanged.

Tolerances: maxOwnerServiceInfoSz of 0, null or nonsense is read with
:func:`~afield.fdo.messages.effective_message_size` (and kept 128 bytes under the device's
maxDeviceMessageSize when that is given, for the envelope); any HMAC kind is accepted as
ReplacementHMac; any implemented key exchange goes with any key type. helloDeviceHash is the
hash of the TO2.HelloDevice body as decoded and encoded again (deterministic CBOR gives the
bytes every implementation sends).

What it leaves to others: TO0 registration (which uses the store), the owner's service info
modules (``service_info``; :mod:`afield.fdo.modules`), importing vouchers (the CLI), TLS.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from afield.errors import FdoError, ProtocolError
from afield.fdo import _check as check
from afield.fdo._chain import verify_device_chain
from afield.fdo._errors import ErrorCode, FdoMessageError, VerifyError
from afield.fdo.cbor import encode
from afield.fdo.cose import Sign1
from afield.fdo.eat import CUPH_NONCE, CUPH_OWNER_PUBKEY, EUPH_NONCE, EatPayload
from afield.fdo.kex import CipherSuite, KexSuite, KeyExchange, Role
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
from afield.fdo.pki import Pki
from afield.fdo.rendezvous import RendezvousInfo
from afield.fdo.server.binding import BindingSettings, FdoEndpoint, Protocol, Session, Step
from afield.fdo.server.owner_store import OwnerStore
from afield.fdo.serviceinfo import DEFAULT_MTU, Devmod, ServiceInfoKV, chunk_service_info
from afield.fdo.to2 import replacement_header
from afield.fdo.types import Guid, Hash, HashAlg, Nonce, SigType
from afield.fdo.voucher import Voucher

__all__ = ["OnboardingRequest", "OwnerSettings", "create_owner_app", "owner_protocol"]

_ENVELOPE = 128
"""Room for the message array and the COSE_Encrypt0 around a ServiceInfo."""
_MAX_UINT16 = 0xFFFF
_MAX_ENTRIES = 255
_T = TypeVar("_T")
_M = TypeVar("_M", bound=Message)


@dataclass(frozen=True)
class OnboardingRequest:
    """What the owner knows of a device when it decides the device's service info.

    Attributes:
        guid: the GUID the device onboards with.
        devmod: what the device said about itself.
        device_kvs: every key/value the device sent before the owner's turn (devmod included).
        new_guid: the GUID the device gets (the same one with credential reuse).
    """

    guid: Guid
    devmod: Devmod
    device_kvs: tuple[ServiceInfoKV, ...]
    new_guid: Guid | None = None


def _no_service_info(request: OnboardingRequest) -> Sequence[ServiceInfoKV]:
    return ()


@dataclass(frozen=True)
class OwnerSettings:
    """What the TO2 server trusts and gives, and its limits.

    Args:
        trusted_device_cas: the device CA certificates a device's chain must lead to (at
            least one).
        replacement_rv_info: the RendezvousInfo of replacement credentials (default: the
            voucher's).
        reuse_credential: keep the device's GUID, RendezvousInfo and owner key (credential
            reuse) instead of replacing them.
        service_info: called once per onboarding with an :class:`OnboardingRequest`; returns
            the owner's key/values (default: none).
        on_device_replies: called at TO2.Done with the GUID and the device's answers.
        max_device_service_info_size: maxDeviceServiceInfoSz sent to devices, 256 up to the
            body limit less 128 bytes.
        max_device_service_info_total: the most service info bytes one device may send.
        max_service_info_messages: the most TO2.DeviceServiceInfo messages in one TO2.
        binding: body limit, session lifetime and session count of the HTTP binding.
    """

    trusted_device_cas: Sequence[x509.Certificate]
    replacement_rv_info: RendezvousInfo | None = None
    reuse_credential: bool = False
    service_info: Callable[[OnboardingRequest], Sequence[ServiceInfoKV]] = _no_service_info
    on_device_replies: Callable[[Guid, list[ServiceInfoKV]], None] | None = None
    max_device_service_info_size: int = DEFAULT_MTU
    max_device_service_info_total: int = 1 << 20
    max_service_info_messages: int = 10_000
    binding: BindingSettings = field(default_factory=BindingSettings)

    def __post_init__(self) -> None:
        object.__setattr__(self, "trusted_device_cas", tuple(self.trusted_device_cas))
        if not self.trusted_device_cas:
            raise ValueError("trusted_device_cas: give at least one device CA certificate")
        ceiling = min(self.binding.max_body_bytes - _ENVELOPE, _MAX_UINT16)
        if not 256 <= self.max_device_service_info_size <= ceiling:
            raise ValueError(
                f"max_device_service_info_size: {self.max_device_service_info_size} is not "
                f"256 to {ceiling} (the binding's body limit less {_ENVELOPE}, at most 65535)"
            )
        if self.max_device_service_info_total < 1 or self.max_service_info_messages < 1:
            raise ValueError(
                "max_device_service_info_total and max_service_info_messages must be positive"
            )


@dataclass
class _Run:
    """One device's TO2 as the owner follows it (kept in ``session.state``)."""

    guid: Guid
    voucher: Voucher
    exchange: KeyExchange
    cipher: CipherSuite
    nonce_prove_dv: Nonce
    max_message_size: int = 0
    next_entry: int = 0
    nonce_setup_dv: Nonce | None = None
    setup: SetupDevicePayload | None = None
    reuse: bool = False
    replacement: Voucher | None = None
    mtu: int = DEFAULT_MTU
    device_kvs: list[ServiceInfoKV] = field(default_factory=list)
    devmod: Devmod | None = None
    owner_chunks: list[list[ServiceInfoKV]] | None = None
    replies: list[ServiceInfoKV] = field(default_factory=list)
    received_bytes: int = 0
    messages: int = 0


def _required(value: _T | None, what: str) -> _T:
    if value is None:
        raise RuntimeError(f"TO2 state lacks {what}")  # the binding's step order prevents it
    return value


def _of(message: Message, kind: type[_M]) -> _M:
    if not isinstance(message, kind):
        raise TypeError(f"{kind.NAME} step given {type(message).__name__}")
    return message


def _run(session: Session) -> _Run:
    run = session.state.get("to2")
    if not isinstance(run, _Run):
        raise RuntimeError("TO2 session has no state")
    return run


def _suites(hello: TO2HelloDevice) -> tuple[KeyExchange, CipherSuite]:
    try:
        exchange = KeyExchange(hello.kex_suite, Role.OWNER)
    except FdoMessageError:
        accepted = ", ".join(suite.value for suite in KexSuite)
        raise VerifyError(
            f"kexSuiteName {hello.kex_suite[:24]!r} is not supported; use one of {accepted}"
        ) from None
    try:
        cipher = CipherSuite(hello.cipher_suite)
    except ValueError:
        accepted = ", ".join(f"{c.name} ({c.value})" for c in CipherSuite)
        raise VerifyError(
            f"cipherSuiteName {hello.cipher_suite} is not supported; use {accepted}"
        ) from None
    return exchange, cipher


def _json(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    return list(value) if isinstance(value, tuple) else value


def _summary(run: _Run) -> dict[str, Any]:
    """What the store keeps of the device's service info: devmod and the keys, no values."""
    devmod: dict[str, Any] = {}
    if run.devmod is not None:
        for item in dataclasses.fields(run.devmod):
            value = getattr(run.devmod, item.name)
            if value is not None:
                devmod[item.name] = _json(value)
    others = sorted({kv.key for kv in run.device_kvs if kv.module != "devmod"})
    return {
        "devmod": devmod,
        "device_keys": others,
        "replies": dict(collections.Counter(kv.key for kv in run.replies)),
    }


class _Owner:
    """The TO2 steps, bound to the PKI (the owner key), the store and the settings."""

    def __init__(self, pki: Pki, store: OwnerStore, settings: OwnerSettings) -> None:
        self.key = pki.owner.key
        self.store = store
        self.settings = settings

    def _voucher(self, guid: Guid) -> Voucher:
        """The stored voucher of ``guid``, if this owner can prove it owns it."""
        stored = self.store.get(guid)
        if stored is None:
            raise ProtocolError(
                f"no ownership voucher for device {guid}", code=ErrorCode.RESOURCE_NOT_FOUND
            )
        voucher, bad = stored.voucher, ErrorCode.INVALID_OWNERSHIP_VOUCHER
        try:
            header_guid, owner = voucher.header.guid, voucher.owner_key()
        except FdoMessageError:
            raise VerifyError("the stored voucher does not decode", code=bad) from None
        if header_guid != guid:
            raise VerifyError(f"the voucher stored for {guid} is for {header_guid}", code=bad)
        if not owner.same_key(self.key.public_key()):
            raise VerifyError("this owner's key is not the voucher's last owner key", code=bad)
        if len(voucher.entries) > _MAX_ENTRIES:
            raise VerifyError(f"the voucher has more than {_MAX_ENTRIES} entries", code=bad)
        return voucher

    def hello_device(self, message: Message, session: Session) -> Message:
        """TO2.HelloDevice -> TO2.ProveOVHdr: prove this owner holds the voucher's last key."""
        hello = _of(message, TO2HelloDevice)
        if hello.sig_info.type in (SigType.EPID10, SigType.EPID11):
            raise VerifyError("eASigInfo: EPID is not supported; devices attest with ECDSA or RSA")
        voucher = self._voucher(hello.guid)
        exchange, cipher = _suites(hello)
        strong = hello.sig_info.type in (SigType.ES384, SigType.RS384, SigType.PS384)
        hello_hash = Hash.of(HashAlg.SHA384 if strong else HashAlg.SHA256, hello.encode())
        nonce = Nonce.random()
        payload = ProveOVHdrPayload(
            header_bytes=voucher.header_bytes,
            num_entries=len(voucher.entries),
            hmac=voucher.header_hmac,
            nonce=hello.nonce,
            sig_info=hello.sig_info,
            kex_a=exchange.parameter,
            hello_device_hash=hello_hash,
            max_owner_message_size=min(self.settings.binding.max_body_bytes, _MAX_UINT16),
        )
        unprotected = {
            CUPH_NONCE: nonce.to_cbor(),
            CUPH_OWNER_PUBKEY: voucher.owner_key().to_cbor(),
        }
        token = Sign1.sign(self.key, encode(payload.to_cbor()), unprotected=unprotected)
        session.state["to2"] = _Run(
            guid=hello.guid,
            voucher=voucher,
            exchange=exchange,
            cipher=cipher,
            nonce_prove_dv=nonce,
            max_message_size=hello.max_message_size,
        )
        if not voucher.entries:
            session.next_step = TO2ProveDevice.MSG_TYPE
        return TO2ProveOVHdr(token)

    def next_entry(self, message: Message, session: Session) -> Message:
        """TO2.GetOVNextEntry -> TO2.OVNextEntry, entries in order; repeats until the last."""
        request, run = _of(message, TO2GetOVNextEntry), _run(session)
        count = len(run.voucher.entries)
        if request.entry_num != run.next_entry:
            raise VerifyError(
                f"OVEntryNum {request.entry_num} asked for, {run.next_entry} expected "
                f"(entries go 0 to {count - 1} in order)"
            )
        run.next_entry += 1
        if run.next_entry < count:
            session.next_step = TO2GetOVNextEntry.MSG_TYPE
        return TO2OVNextEntry(request.entry_num, run.voucher.entries[request.entry_num])

    def _device_key(self, voucher: Voucher) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
        """The device's key from the voucher's certificate chain, if it is trusted."""
        chain, expected = voucher.cert_chain, voucher.header.cert_chain_hash
        bad = ErrorCode.INVALID_OWNERSHIP_VOUCHER
        if chain is None or expected is None:
            raise VerifyError("the voucher has no device certificate chain", code=bad)
        if not expected.matches(*chain):
            raise VerifyError("the device certificate chain does not match its hash", code=bad)
        leaf = verify_device_chain(
            chain, self.settings.trusted_device_cas, code=ErrorCode.INVALID_MESSAGE_ERROR
        )
        key = leaf.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise VerifyError("the device certificate's key is neither EC nor RSA")
        return key

    def _check_eat(self, token: Sign1, run: _Run) -> tuple[bytes, Nonce]:
        """xB and NonceTO2SetupDv from a TO2.ProveDevice that proves this session's device."""
        where = TO2ProveDevice.NAME
        device_key = self._device_key(run.voucher)
        try:
            token.verify(device_key)
        except VerifyError:
            raise VerifyError(f"{where}: the EAT is not signed by the device's key") from None
        eat = EatPayload.from_cbor(check.cbor_in_bstr(token.payload, where), f"{where}.EAT")
        if not eat.nonce.matches(run.nonce_prove_dv):
            raise VerifyError(f"{where}: the EAT nonce is not this session's NonceTO2ProveDv")
        if eat.guid != run.guid:
            raise VerifyError(f"{where}: the EAT UEID is not the device's GUID")
        claim = check.array(eat.fdo, f"{where}.EAT.fdo", minimum=1)
        x_b = check.bstr(claim[0], f"{where}.EAT.fdo[0] (xBKeyExchange)")
        nonce = Nonce.from_cbor(token.unprotected.get(EUPH_NONCE), f"{where}.EUPHNonce")
        return x_b, nonce

    def prove_device(self, message: Message, session: Session) -> Message:
        """TO2.ProveDevice -> TO2.SetupDevice: check the device, set the session key, hand over
        the replacement credential's values."""
        token, run = _of(message, TO2ProveDevice).token, _run(session)
        x_b, nonce = self._check_eat(token, run)
        tunnel = run.exchange.session(x_b, run.cipher)
        header = run.voucher.header
        owner_key = run.voucher.owner_key()
        if self.settings.reuse_credential:
            guid, rv_info = header.guid, header.rv_info
        else:
            guid, rv_info = Guid.random(), self.settings.replacement_rv_info or header.rv_info
        setup = SetupDevicePayload(rv_info, guid, nonce, owner_key)
        run.setup, run.nonce_setup_dv = setup, nonce
        run.reuse = self.settings.reuse_credential
        session.cipher = tunnel
        return TO2SetupDevice(Sign1.sign(self.key, encode(setup.to_cbor())))

    def service_info_ready(self, message: Message, session: Session) -> Message:
        """TO2.DeviceServiceInfoReady -> TO2.OwnerServiceInfoReady: build the replacement
        voucher from ReplacementHMac, note the device's service info size."""
        ready, run = _of(message, TO2DeviceServiceInfoReady), _run(session)
        setup = _required(run.setup, "TO2.SetupDevice")
        hmac_value = ready.replacement_hmac
        if run.reuse and hmac_value is not None:
            raise VerifyError("ReplacementHMac must be null: the owner offered credential reuse")
        if not run.reuse:
            if hmac_value is None:
                raise VerifyError(
                    "ReplacementHMac is null, but the owner sent a new credential (no reuse)"
                )
            if not hmac_value.alg.is_hmac:
                raise FdoMessageError(
                    "ReplacementHMac must be HMAC-SHA256 (5) or HMAC-SHA384 (6)",
                    where=f"{TO2DeviceServiceInfoReady.NAME}[0]",
                )
            header = replacement_header(run.voucher.header, setup)
            run.replacement = Voucher(
                encode(header.to_cbor()),
                hmac_value,
                run.voucher.cert_chain,
                [],
                run.voucher.protocol_version,
            )
        run.mtu = effective_message_size(ready.max_owner_service_info_size)
        if run.max_message_size >= 256 + _ENVELOPE:
            # The whole message, encrypted, must also fit what the device said it receives.
            run.mtu = min(run.mtu, run.max_message_size - _ENVELOPE)
        return TO2OwnerServiceInfoReady(self.settings.max_device_service_info_size)

    def device_service_info(self, message: Message, session: Session) -> Message:
        """TO2.DeviceServiceInfo -> TO2.OwnerServiceInfo: collect devmod, then send the owner's
        chunks and collect the replies, until IsDone."""
        info, run = _of(message, TO2DeviceServiceInfo), _run(session)
        self._count(run, info)
        if run.owner_chunks is None:
            run.device_kvs.extend(info.service_info)
            if not info.is_more:
                run.devmod = Devmod.from_kvs(run.device_kvs)
                run.owner_chunks = self._owner_chunks(run)
        else:
            run.replies.extend(info.service_info)
        if info.is_more:
            session.next_step = TO2DeviceServiceInfo.MSG_TYPE
            return TO2OwnerServiceInfo(False, False, ())
        chunks = _required(run.owner_chunks, "the owner's service info")
        if not chunks:
            return TO2OwnerServiceInfo(False, True, ())
        session.next_step = TO2DeviceServiceInfo.MSG_TYPE
        chunk = chunks.pop(0)
        return TO2OwnerServiceInfo(bool(chunks), False, tuple(chunk))

    def _count(self, run: _Run, info: TO2DeviceServiceInfo) -> None:
        run.messages += 1
        run.received_bytes += sum(len(kv.key) + len(kv.raw) for kv in info.service_info)
        if run.messages > self.settings.max_service_info_messages:
            raise VerifyError(
                f"more than {self.settings.max_service_info_messages} "
                f"{TO2DeviceServiceInfo.NAME} messages"
            )
        if run.received_bytes > self.settings.max_device_service_info_total:
            raise FdoMessageError(
                f"device service info exceeds {self.settings.max_device_service_info_total} "
                "bytes in total",
                where=TO2DeviceServiceInfo.NAME,
            )

    def _owner_chunks(self, run: _Run) -> list[list[ServiceInfoKV]]:
        devmod = _required(run.devmod, "devmod")
        new_guid = _required(run.setup, "TO2.SetupDevice").guid
        request = OnboardingRequest(run.guid, devmod, tuple(run.device_kvs), new_guid)
        kvs = list(self.settings.service_info(request))
        try:
            chunks = chunk_service_info(kvs, run.mtu)
        except ValueError as e:
            raise ProtocolError(
                f"owner service info: {e} (the device's maxOwnerServiceInfoSz); the owner "
                "module must split the value",
                code=ErrorCode.INTERNAL_SERVER_ERROR,
            ) from None
        return [chunk for chunk in chunks if chunk]

    def done(self, message: Message, session: Session) -> Message:
        """TO2.Done -> TO2.Done2: the nonces close the run; only now is the store written."""
        done, run = _of(message, TO2Done), _run(session)
        if not done.nonce.matches(run.nonce_prove_dv):
            raise VerifyError(f"{TO2Done.NAME}: NonceTO2ProveDv is not this session's")
        if self.settings.on_device_replies is not None:
            self.settings.on_device_replies(run.guid, list(run.replies))
        try:
            self.store.record_onboarding(run.guid, run.replacement, _summary(run))
        except FdoError as e:
            raise ProtocolError(
                f"cannot record the onboarding: {e}", code=ErrorCode.INTERNAL_SERVER_ERROR
            ) from None
        return TO2Done2(_required(run.nonce_setup_dv, "NonceTO2SetupDv"))


def create_owner_app(
    pki: Pki, store: OwnerStore, settings: OwnerSettings, extra_routes: Sequence[BaseRoute] = ()
) -> Starlette:
    """The owner's ASGI app: TO2 at ``/fdo/101/msg/{60,62,64,66,68,70}``, ``/metrics``,
    ``/healthz``.

    Args:
        pki: the owner key (signs TO2.ProveOVHdr and TO2.SetupDevice; the other keys are not
            used).
        store: the vouchers this owner owns; finished onboardings are recorded in it.
        settings: trusted device CAs, the replacement credential, service info, limits.
        extra_routes: more routes to serve (e.g. :func:`afield.fdo.server.owner_api.import_routes`).
    """
    endpoint = FdoEndpoint([owner_protocol(pki, store, settings)], settings.binding)
    return endpoint.app(extra_routes)


def owner_protocol(pki: Pki, store: OwnerStore, settings: OwnerSettings) -> Protocol:
    """TO2 as a protocol of the HTTP binding, for an endpoint that serves more (the fleet
    manager serves it beside TO0 and TO1)."""
    owner = _Owner(pki, store, settings)
    return Protocol(
        "TO2",
        (
            Step(TO2HelloDevice.MSG_TYPE, owner.hello_device),
            Step(TO2GetOVNextEntry.MSG_TYPE, owner.next_entry),
            Step(TO2ProveDevice.MSG_TYPE, owner.prove_device),
            Step(TO2DeviceServiceInfoReady.MSG_TYPE, owner.service_info_ready),
            Step(TO2DeviceServiceInfo.MSG_TYPE, owner.device_service_info),
            Step(TO2Done.MSG_TYPE, owner.done),
        ),
    )
