"""Every FDO 1.1 protocol message as a typed value with strict decoding.

Each message class has ``MSG_TYPE`` (the number in the ``Message-Type`` header and URL),
``to_cbor()``/``from_cbor(value)``, ``encode()`` and ``decode(body, limits)``.
:func:`decode_message` decodes a body by type number. Decoding checks every field's type and
size and raises only :class:`~afield.fdo.FdoMessageError` (code 100).

Messages that are COSE_Sign1 objects (TO1.ProveToRV, TO1.RVRedirect, TO2.ProveOVHdr,
TO2.ProveDevice, TO2.SetupDevice) decode to a :class:`~afield.fdo.cose.Sign1`; their payload
types (:class:`To1dPayload`, :class:`ProveOVHdrPayload`, :class:`SetupDevicePayload`,
:class:`~afield.fdo.eat.EatPayload`) decode the payload once the signature is checked. TO2
messages 65-71 travel inside a COSE_Encrypt0 (:class:`~afield.fdo.kex.Session`).

What it leaves to others: the order of messages, sessions, nonce checks (servers, client).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from afield.fdo import _check as check
from afield.fdo._errors import FdoMessageError
from afield.fdo.cbor import Limits, RawCbor, decode, encode
from afield.fdo.cose import Sign1
from afield.fdo.rendezvous import RendezvousInfo, RvTo2Addr
from afield.fdo.serviceinfo import ServiceInfoKV, parse_service_info, service_info_cbor
from afield.fdo.types import Guid, Hash, Nonce, PublicKey, SigInfo
from afield.fdo.voucher import OVHeader, Voucher

__all__ = [
    "MESSAGES",
    "DIAppStart",
    "DIDone",
    "DISetCredentials",
    "DISetHMAC",
    "ErrorMessage",
    "Message",
    "ProveOVHdrPayload",
    "SetupDevicePayload",
    "TO0AcceptOwner",
    "TO0Hello",
    "TO0HelloAck",
    "TO0OwnerSign",
    "TO0d",
    "TO1HelloRV",
    "TO1HelloRVAck",
    "TO1ProveToRV",
    "TO1RVRedirect",
    "TO2DeviceServiceInfo",
    "TO2DeviceServiceInfoReady",
    "TO2Done",
    "TO2Done2",
    "TO2GetOVNextEntry",
    "TO2HelloDevice",
    "TO2OVNextEntry",
    "TO2OwnerServiceInfo",
    "TO2OwnerServiceInfoReady",
    "TO2ProveDevice",
    "TO2ProveOVHdr",
    "TO2SetupDevice",
    "To1dPayload",
    "decode_message",
    "effective_message_size",
]

MESSAGES: dict[int, type[Message]] = {}


class Message:
    """Base of the message classes."""

    MSG_TYPE: ClassVar[int]
    NAME: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "MSG_TYPE" in cls.__dict__:
            MESSAGES[cls.MSG_TYPE] = cls

    def to_cbor(self) -> Any:
        """The CBOR data model value of the body."""
        raise NotImplementedError

    @classmethod
    def from_cbor(cls, value: Any) -> Message:
        """Parse a decoded body."""
        raise NotImplementedError

    def encode(self) -> bytes:
        """The body bytes."""
        return encode(self.to_cbor())

    @classmethod
    def decode(cls, data: bytes, limits: Limits | None = None) -> Message:
        """Decode a body of this message type."""
        value = decode(data, limits or Limits())
        try:
            return cls.from_cbor(value)
        except FdoMessageError as e:
            if e.where.startswith(cls.NAME):
                raise
            raise FdoMessageError(e.message, where=cls.NAME, code=e.code) from e


def decode_message(msg_type: int, data: bytes, limits: Limits | None = None) -> Message:
    """Decode a body by its message type number (an unknown number is code 100)."""
    cls = MESSAGES.get(msg_type)
    if cls is None:
        raise FdoMessageError(f"unknown message type {msg_type}")
    return cls.decode(data, limits)


def effective_message_size(value: int | None, default: int = 1300, ceiling: int = 65535) -> int:
    """The message size to use for a peer's advertised maximum.

    Tolerance: 0 and null mean "the default" (the spec), and implementations send nonsense
    such as 1 or values past 65535; anything below 256 is treated as the default and anything
    above ``ceiling`` as ``ceiling``.
    """
    if value is None or value < 256:
        return default
    return min(value, ceiling)


def _empty(cls_name: str, value: Any) -> None:
    check.array(value, cls_name, 0)


def _sign1(value: Any, where: str) -> Sign1:
    return Sign1.from_cbor(value, where)


# --- DI -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DIAppStart(Message):
    """DI.AppStart (10): ``[DeviceMfgInfo: bstr .cbor any / null]``; ``mfg_info`` is decoded."""

    MSG_TYPE = 10
    NAME = "DI.AppStart"
    mfg_info: Any

    def to_cbor(self) -> Any:
        return [None if self.mfg_info is None else encode(self.mfg_info)]

    @classmethod
    def from_cbor(cls, value: Any) -> DIAppStart:
        fields = check.array(value, cls.NAME, 1)
        if fields[0] is None:
            return cls(None)
        # Tolerance: DeviceMfgInfo is bstr .cbor, but an unwrapped value is accepted too.
        if isinstance(fields[0], bytes):
            return cls(check.cbor_in_bstr(fields[0], f"{cls.NAME}[0]"))
        return cls(fields[0])


@dataclass(frozen=True)
class DISetCredentials(Message):
    """DI.SetCredentials (11): ``[bstr .cbor OVHeader]``; ``header_bytes`` is what gets MACed."""

    MSG_TYPE = 11
    NAME = "DI.SetCredentials"
    header_bytes: bytes

    @property
    def header(self) -> OVHeader:
        """The decoded header."""
        return OVHeader.from_cbor(decode(self.header_bytes))

    def to_cbor(self) -> Any:
        return [self.header_bytes]

    @classmethod
    def from_cbor(cls, value: Any) -> DISetCredentials:
        fields = check.array(value, cls.NAME, 1)
        # Tolerance: an OVHeader array not wrapped in a bstr is accepted and re-encoded.
        if isinstance(fields[0], list):
            OVHeader.from_cbor(fields[0], f"{cls.NAME}[0]")
            return cls(encode(fields[0]))
        inner = check.cbor_in_bstr(fields[0], f"{cls.NAME}[0]")
        OVHeader.from_cbor(inner, f"{cls.NAME}[0]")
        return cls(fields[0])


@dataclass(frozen=True)
class DISetHMAC(Message):
    """DI.SetHMAC (12): ``[HMac]``."""

    MSG_TYPE = 12
    NAME = "DI.SetHMAC"
    hmac: Hash

    def to_cbor(self) -> Any:
        return [self.hmac.to_cbor()]

    @classmethod
    def from_cbor(cls, value: Any) -> DISetHMAC:
        fields = check.array(value, cls.NAME, 1)
        hmac = Hash.from_cbor(fields[0], f"{cls.NAME}[0]")
        if not hmac.alg.is_hmac:
            raise FdoMessageError("expected an HMAC type", where=f"{cls.NAME}[0]")
        return cls(hmac)


@dataclass(frozen=True)
class DIDone(Message):
    """DI.Done (13): ``[]``."""

    MSG_TYPE = 13
    NAME = "DI.Done"

    def to_cbor(self) -> Any:
        return []

    @classmethod
    def from_cbor(cls, value: Any) -> DIDone:
        _empty(cls.NAME, value)
        return cls()


# --- TO0 ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TO0Hello(Message):
    """TO0.Hello (20): ``[]``."""

    MSG_TYPE = 20
    NAME = "TO0.Hello"

    def to_cbor(self) -> Any:
        return []

    @classmethod
    def from_cbor(cls, value: Any) -> TO0Hello:
        _empty(cls.NAME, value)
        return cls()


@dataclass(frozen=True)
class TO0HelloAck(Message):
    """TO0.HelloAck (21): ``[NonceTO0Sign]``."""

    MSG_TYPE = 21
    NAME = "TO0.HelloAck"
    nonce: Nonce

    def to_cbor(self) -> Any:
        return [self.nonce.to_cbor()]

    @classmethod
    def from_cbor(cls, value: Any) -> TO0HelloAck:
        fields = check.array(value, cls.NAME, 1)
        return cls(Nonce.from_cbor(fields[0], f"{cls.NAME}[0]"))


@dataclass(frozen=True)
class TO0d:
    """``TO0d = [OwnershipVoucher, WaitSeconds: uint32, NonceTO0Sign]``."""

    voucher: Voucher
    wait_seconds: int
    nonce: Nonce

    def to_cbor(self) -> Any:
        """``TO0d``."""
        return [self.voucher.to_cbor(), self.wait_seconds, self.nonce.to_cbor()]

    @classmethod
    def from_cbor(cls, value: Any, where: str = "TO0d") -> TO0d:
        """Parse TO0d."""
        fields = check.array(value, where, 3)
        return cls(
            Voucher.from_cbor(fields[0], f"{where}[0]"),
            check.uint(fields[1], f"{where}[1]", 32),
            Nonce.from_cbor(fields[2], f"{where}[2]"),
        )


@dataclass(frozen=True)
class To1dPayload:
    """``to1dBlobPayload = [to1dRV: RVTO2Addr, to1dTo0dHash: Hash]`` (signed by the owner)."""

    rv: RvTo2Addr
    to0d_hash: Hash

    def to_cbor(self) -> Any:
        """``to1dBlobPayload``."""
        return [self.rv.to_cbor(), self.to0d_hash.to_cbor()]

    @classmethod
    def from_cbor(cls, value: Any, where: str = "to1dBlobPayload") -> To1dPayload:
        """Parse the payload of a to1d."""
        fields = check.array(value, where, 2)
        return cls(
            RvTo2Addr.from_cbor(fields[0], f"{where}[0]"), Hash.from_cbor(fields[1], f"{where}[1]")
        )


@dataclass(frozen=True)
class TO0OwnerSign(Message):
    """TO0.OwnerSign (22): ``[TO0d: bstr .cbor TO0d, TO1D: COSE_Sign1 of to1dBlobPayload]``."""

    MSG_TYPE = 22
    NAME = "TO0.OwnerSign"
    to0d_bytes: bytes
    to1d: Sign1

    @property
    def to0d(self) -> TO0d:
        """The decoded TO0d."""
        return TO0d.from_cbor(decode(self.to0d_bytes))

    def to_cbor(self) -> Any:
        to1d = self.to1d.to_cbor() if self.to1d.raw is None else RawCbor(self.to1d.raw)
        return [self.to0d_bytes, to1d]

    @classmethod
    def from_cbor(cls, value: Any) -> TO0OwnerSign:
        fields = check.array(value, cls.NAME, 2)
        TO0d.from_cbor(check.cbor_in_bstr(fields[0], f"{cls.NAME}[0]"), f"{cls.NAME}[0]")
        to1d = _sign1(fields[1], f"{cls.NAME}[1]")
        To1dPayload.from_cbor(check.cbor_in_bstr(to1d.payload, f"{cls.NAME}[1]"))
        return cls(fields[0], to1d)


@dataclass(frozen=True)
class TO0AcceptOwner(Message):
    """TO0.AcceptOwner (23): ``[WaitSeconds]``."""

    MSG_TYPE = 23
    NAME = "TO0.AcceptOwner"
    wait_seconds: int

    def to_cbor(self) -> Any:
        return [self.wait_seconds]

    @classmethod
    def from_cbor(cls, value: Any) -> TO0AcceptOwner:
        fields = check.array(value, cls.NAME, 1)
        return cls(check.uint(fields[0], f"{cls.NAME}[0]", 32))


# --- TO1 ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TO1HelloRV(Message):
    """TO1.HelloRV (30): ``[Guid, eASigInfo]``."""

    MSG_TYPE = 30
    NAME = "TO1.HelloRV"
    guid: Guid
    sig_info: SigInfo

    def to_cbor(self) -> Any:
        return [self.guid.to_cbor(), self.sig_info.to_cbor()]

    @classmethod
    def from_cbor(cls, value: Any) -> TO1HelloRV:
        fields = check.array(value, cls.NAME, 2)
        return cls(
            Guid.from_cbor(fields[0], f"{cls.NAME}[0]"),
            SigInfo.from_cbor(fields[1], f"{cls.NAME}[1]"),
        )


@dataclass(frozen=True)
class TO1HelloRVAck(Message):
    """TO1.HelloRVAck (31): ``[NonceTO1Proof, eBSigInfo]``."""

    MSG_TYPE = 31
    NAME = "TO1.HelloRVAck"
    nonce: Nonce
    sig_info: SigInfo

    def to_cbor(self) -> Any:
        return [self.nonce.to_cbor(), self.sig_info.to_cbor()]

    @classmethod
    def from_cbor(cls, value: Any) -> TO1HelloRVAck:
        fields = check.array(value, cls.NAME, 2)
        return cls(
            Nonce.from_cbor(fields[0], f"{cls.NAME}[0]"),
            SigInfo.from_cbor(fields[1], f"{cls.NAME}[1]"),
        )


@dataclass(frozen=True)
class _Signed(Message):
    """A message that is one COSE_Sign1."""

    token: Sign1

    def to_cbor(self) -> Any:
        # A token received (or stored) goes out as the very bytes that were signed, so a
        # relayed signature (TO1.RVRedirect's to1d) is never re-encoded on its way.
        return RawCbor(self.token.raw) if self.token.raw is not None else self.token.to_cbor()

    @classmethod
    def from_cbor(cls, value: Any) -> Message:
        return cls(_sign1(value, cls.NAME))


@dataclass(frozen=True)
class TO1ProveToRV(_Signed):
    """TO1.ProveToRV (32): an EAT signed by the device with NonceTO1Proof."""

    MSG_TYPE = 32
    NAME = "TO1.ProveToRV"


@dataclass(frozen=True)
class TO1RVRedirect(_Signed):
    """TO1.RVRedirect (33): the owner's to1d (COSE_Sign1 of to1dBlobPayload)."""

    MSG_TYPE = 33
    NAME = "TO1.RVRedirect"


# --- TO2 ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TO2HelloDevice(Message):
    """TO2.HelloDevice (60)."""

    MSG_TYPE = 60
    NAME = "TO2.HelloDevice"
    max_message_size: int
    guid: Guid
    nonce: Nonce
    kex_suite: str
    cipher_suite: int
    sig_info: SigInfo

    def to_cbor(self) -> Any:
        return [
            self.max_message_size,
            self.guid.to_cbor(),
            self.nonce.to_cbor(),
            self.kex_suite,
            self.cipher_suite,
            self.sig_info.to_cbor(),
        ]

    @classmethod
    def from_cbor(cls, value: Any) -> TO2HelloDevice:
        f = check.array(value, cls.NAME, 6)
        n = cls.NAME
        # Tolerance: maxDeviceMessageSize is a uint16, but nonsense values are kept as sent;
        # use effective_message_size() to interpret them.
        return cls(
            check.uint(f[0], f"{n}[0]"),
            Guid.from_cbor(f[1], f"{n}[1]"),
            Nonce.from_cbor(f[2], f"{n}[2]"),
            check.tstr(f[3], f"{n}[3]"),
            check.integer(f[4], f"{n}[4]"),
            SigInfo.from_cbor(f[5], f"{n}[5]"),
        )


@dataclass(frozen=True)
class ProveOVHdrPayload:
    """TO2ProveOVHdrPayload, signed by the owner in TO2.ProveOVHdr."""

    header_bytes: bytes
    num_entries: int
    hmac: Hash
    nonce: Nonce
    sig_info: SigInfo
    kex_a: bytes
    hello_device_hash: Hash
    max_owner_message_size: int

    def to_cbor(self) -> Any:
        """``TO2ProveOVHdrPayload``."""
        return [
            self.header_bytes,
            self.num_entries,
            self.hmac.to_cbor(),
            self.nonce.to_cbor(),
            self.sig_info.to_cbor(),
            self.kex_a,
            self.hello_device_hash.to_cbor(),
            self.max_owner_message_size,
        ]

    @classmethod
    def from_cbor(cls, value: Any, where: str = "TO2ProveOVHdrPayload") -> ProveOVHdrPayload:
        """Parse the payload."""
        f = check.array(value, where, 8)
        OVHeader.from_cbor(check.cbor_in_bstr(f[0], f"{where}[0]"), f"{where}[0]")
        return cls(
            f[0],
            check.uint(f[1], f"{where}[1]", 8),
            Hash.from_cbor(f[2], f"{where}[2]"),
            Nonce.from_cbor(f[3], f"{where}[3]"),
            SigInfo.from_cbor(f[4], f"{where}[4]"),
            check.bstr(f[5], f"{where}[5]"),
            Hash.from_cbor(f[6], f"{where}[6]"),
            check.uint(f[7], f"{where}[7]"),
        )


@dataclass(frozen=True)
class TO2ProveOVHdr(_Signed):
    """TO2.ProveOVHdr (61): COSE_Sign1 of ProveOVHdrPayload; unprotected CUPHNonce (256) and
    CUPHOwnerPubKey (257)."""

    MSG_TYPE = 61
    NAME = "TO2.ProveOVHdr"


@dataclass(frozen=True)
class TO2GetOVNextEntry(Message):
    """TO2.GetOVNextEntry (62): ``[OVEntryNum]``."""

    MSG_TYPE = 62
    NAME = "TO2.GetOVNextEntry"
    entry_num: int

    def to_cbor(self) -> Any:
        return [self.entry_num]

    @classmethod
    def from_cbor(cls, value: Any) -> TO2GetOVNextEntry:
        fields = check.array(value, cls.NAME, 1)
        return cls(check.uint(fields[0], f"{cls.NAME}[0]", 8))


@dataclass(frozen=True)
class TO2OVNextEntry(Message):
    """TO2.OVNextEntry (63): ``[OVEntryNum, OVEntry]``."""

    MSG_TYPE = 63
    NAME = "TO2.OVNextEntry"
    entry_num: int
    entry: Sign1

    def to_cbor(self) -> Any:
        return [
            self.entry_num,
            self.entry.to_cbor() if self.entry.raw is None else RawCbor(self.entry.raw),
        ]

    @classmethod
    def from_cbor(cls, value: Any) -> TO2OVNextEntry:
        fields = check.array(value, cls.NAME, 2)
        return cls(check.uint(fields[0], f"{cls.NAME}[0]", 8), _sign1(fields[1], f"{cls.NAME}[1]"))


@dataclass(frozen=True)
class TO2ProveDevice(_Signed):
    """TO2.ProveDevice (64): EAT with NonceTO2ProveDv, FDO claim ``[xBKeyExchange]`` and
    EUPHNonce (-259) NonceTO2SetupDv in the unprotected header."""

    MSG_TYPE = 64
    NAME = "TO2.ProveDevice"


@dataclass(frozen=True)
class SetupDevicePayload:
    """TO2SetupDevicePayload: the replacement credential values, signed by Owner2Key."""

    rv_info: RendezvousInfo
    guid: Guid
    nonce: Nonce
    owner2_key: PublicKey

    def to_cbor(self) -> Any:
        """``TO2SetupDevicePayload``."""
        return [
            self.rv_info.to_cbor(),
            self.guid.to_cbor(),
            self.nonce.to_cbor(),
            self.owner2_key.to_cbor(),
        ]

    @classmethod
    def from_cbor(cls, value: Any, where: str = "TO2SetupDevicePayload") -> SetupDevicePayload:
        """Parse the payload."""
        f = check.array(value, where, 4)
        return cls(
            RendezvousInfo.from_cbor(f[0], f"{where}[0]"),
            Guid.from_cbor(f[1], f"{where}[1]"),
            Nonce.from_cbor(f[2], f"{where}[2]"),
            PublicKey.from_cbor(f[3], f"{where}[3]"),
        )


@dataclass(frozen=True)
class TO2SetupDevice(_Signed):
    """TO2.SetupDevice (65): COSE_Sign1 of SetupDevicePayload."""

    MSG_TYPE = 65
    NAME = "TO2.SetupDevice"


@dataclass(frozen=True)
class TO2DeviceServiceInfoReady(Message):
    """TO2.DeviceServiceInfoReady (66): ``[ReplacementHMac / null, maxOwnerServiceInfoSz /
    null]``."""

    MSG_TYPE = 66
    NAME = "TO2.DeviceServiceInfoReady"
    replacement_hmac: Hash | None
    max_owner_service_info_size: int | None

    def to_cbor(self) -> Any:
        hmac = None if self.replacement_hmac is None else self.replacement_hmac.to_cbor()
        return [hmac, self.max_owner_service_info_size]

    @classmethod
    def from_cbor(cls, value: Any) -> TO2DeviceServiceInfoReady:
        f = check.array(value, cls.NAME, 2)
        hmac = None if f[0] is None else Hash.from_cbor(f[0], f"{cls.NAME}[0]")
        size = None if f[1] is None else check.uint(f[1], f"{cls.NAME}[1]")
        return cls(hmac, size)


@dataclass(frozen=True)
class TO2OwnerServiceInfoReady(Message):
    """TO2.OwnerServiceInfoReady (67): ``[maxDeviceServiceInfoSz / null]``."""

    MSG_TYPE = 67
    NAME = "TO2.OwnerServiceInfoReady"
    max_device_service_info_size: int | None

    def to_cbor(self) -> Any:
        return [self.max_device_service_info_size]

    @classmethod
    def from_cbor(cls, value: Any) -> TO2OwnerServiceInfoReady:
        f = check.array(value, cls.NAME, 1)
        return cls(None if f[0] is None else check.uint(f[0], f"{cls.NAME}[0]"))


@dataclass(frozen=True)
class TO2DeviceServiceInfo(Message):
    """TO2.DeviceServiceInfo (68): ``[IsMoreServiceInfo, ServiceInfo]``."""

    MSG_TYPE = 68
    NAME = "TO2.DeviceServiceInfo"
    is_more: bool
    service_info: tuple[ServiceInfoKV, ...]

    def to_cbor(self) -> Any:
        return [self.is_more, service_info_cbor(list(self.service_info))]

    @classmethod
    def from_cbor(cls, value: Any) -> TO2DeviceServiceInfo:
        f = check.array(value, cls.NAME, 2)
        return cls(
            check.boolean(f[0], f"{cls.NAME}[0]"),
            tuple(parse_service_info(f[1], f"{cls.NAME}[1]")),
        )


@dataclass(frozen=True)
class TO2OwnerServiceInfo(Message):
    """TO2.OwnerServiceInfo (69): ``[IsMoreServiceInfo, IsDone, ServiceInfo]``."""

    MSG_TYPE = 69
    NAME = "TO2.OwnerServiceInfo"
    is_more: bool
    is_done: bool
    service_info: tuple[ServiceInfoKV, ...]

    def to_cbor(self) -> Any:
        return [self.is_more, self.is_done, service_info_cbor(list(self.service_info))]

    @classmethod
    def from_cbor(cls, value: Any) -> TO2OwnerServiceInfo:
        f = check.array(value, cls.NAME, 3)
        return cls(
            check.boolean(f[0], f"{cls.NAME}[0]"),
            check.boolean(f[1], f"{cls.NAME}[1]"),
            tuple(parse_service_info(f[2], f"{cls.NAME}[2]")),
        )


@dataclass(frozen=True)
class TO2Done(Message):
    """TO2.Done (70): ``[NonceTO2ProveDv]``."""

    MSG_TYPE = 70
    NAME = "TO2.Done"
    nonce: Nonce

    def to_cbor(self) -> Any:
        return [self.nonce.to_cbor()]

    @classmethod
    def from_cbor(cls, value: Any) -> TO2Done:
        f = check.array(value, cls.NAME, 1)
        return cls(Nonce.from_cbor(f[0], f"{cls.NAME}[0]"))


@dataclass(frozen=True)
class TO2Done2(Message):
    """TO2.Done2 (71): ``[NonceTO2SetupDv]``."""

    MSG_TYPE = 71
    NAME = "TO2.Done2"
    nonce: Nonce

    def to_cbor(self) -> Any:
        return [self.nonce.to_cbor()]

    @classmethod
    def from_cbor(cls, value: Any) -> TO2Done2:
        f = check.array(value, cls.NAME, 1)
        return cls(Nonce.from_cbor(f[0], f"{cls.NAME}[0]"))


# --- Error ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorMessage(Message):
    """Error (255): ``[EMErrorCode: uint16, EMPrevMsgID: uint8, EMErrorStr: tstr, EMErrorTs,
    EMErrorCID]``."""

    MSG_TYPE = 255
    NAME = "Error"
    code: int
    prev_msg_type: int
    message: str
    timestamp: Any = None
    correlation_id: int | None = None

    def to_cbor(self) -> Any:
        return [self.code, self.prev_msg_type, self.message, self.timestamp, self.correlation_id]

    @classmethod
    def from_cbor(cls, value: Any) -> ErrorMessage:
        f = check.array(value, cls.NAME, 5)
        n = cls.NAME
        # Tolerance: EMErrorTs is null / UTCStr / UTCInt / TIME_T in the spec; go-fdo sends an
        # int, others a string or a tagged time: any of null, int, text or tag is kept as sent.
        timestamp = f[3]
        if (
            timestamp is not None
            and not isinstance(timestamp, int | str)
            and not hasattr(timestamp, "tag")
        ):
            raise FdoMessageError(
                "EMErrorTs must be null, a number, text or a tag", where=f"{n}[3]"
            )
        # Tolerance: EMErrorCID is a uint, but null is accepted (go-fdo sends null).
        cid = None if f[4] is None else check.uint(f[4], f"{n}[4]")
        return cls(
            check.uint(f[0], f"{n}[0]", 16),
            check.uint(f[1], f"{n}[1]", 8),
            check.tstr(f[2], f"{n}[2]"),
            timestamp,
            cid,
        )
