"""RendezvousInfo (how a device finds its rendezvous server) and RVTO2Addr (where the owner is).

``RendezvousInfo = [+ RendezvousDirective]``, ``RendezvousDirective = [+ RendezvousInstr]``,
``RendezvousInstr = [RVVariable, RVValue]`` where ``RVValue`` is ``bstr .cbor`` of the
variable's value. The flag variables (RVDevOnly, RVOwnerOnly, RVBypass) carry no value: afield
sends ``[RVVariable]`` (what go-fdo and fido-device-onboard-rs send).

``RVTO2Addr = [+ RVTO2AddrEntry]``, ``RVTO2AddrEntry = [RVIP: IPAddress / null, RVDNS: tstr /
null, RVPort: uint16, RVProtocol: TransportProtocol]``.

Where a directive sends an owner (TO0) or a device (TO1) is :meth:`RendezvousDirective.urls`
(:func:`owner_rv_urls` gathers the owner's over a RendezvousInfo):
one base URL per RVDns and RVIPAddress (DNS first), the port from RVOwnerPort (owner) or
RVDevPort (device), else the protocol's well-known port (http 80, https 443). RVProtocol http
and https map to their schemes; rest means "the first supported of https, http" and gives both,
https first. Tolerance: the specification's default protocol, when RVProtocol is absent, is
TLS, and afield's one binding is HTTP, so an absent RVProtocol and an explicit tls are read as
https; tcp and the CoAP protocols give no URL (afield has no such binding).

What it leaves to others: trying the directives in order with their delays (the device client,
:mod:`afield.fdo.to1`; the owner, :mod:`afield.fdo.to0`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from afield.fdo import _check as check
from afield.fdo._errors import ErrorCode, FdoMessageError
from afield.fdo.cbor import encode
from afield.fdo.types import Hash

__all__ = [
    "RendezvousDirective",
    "RendezvousInfo",
    "RendezvousInstr",
    "RvMedium",
    "RvProtocol",
    "RvTo2Addr",
    "RvTo2AddrEntry",
    "RvVar",
    "TransportProtocol",
    "owner_rv_urls",
]


class RvVar(IntEnum):
    """RVVariable."""

    DEV_ONLY = 0
    OWNER_ONLY = 1
    IP_ADDRESS = 2
    DEV_PORT = 3
    OWNER_PORT = 4
    DNS = 5
    SV_CERT_HASH = 6
    CL_CERT_HASH = 7
    USER_INPUT = 8
    WIFI_SSID = 9
    WIFI_PW = 10
    MEDIUM = 11
    PROTOCOL = 12
    DELAYSEC = 13
    BYPASS = 14
    EXT_RV = 15


class RvProtocol(IntEnum):
    """RVProtocolValue (the value of RVProtocol)."""

    REST = 0
    HTTP = 1
    HTTPS = 2
    TCP = 3
    TLS = 4
    COAP_TCP = 5
    COAP_UDP = 6


class RvMedium(IntEnum):
    """RVMediumValue: eth0..eth9 are 0..9, wifi0..wifi9 are 10..19."""

    ETH_ALL = 20
    WIFI_ALL = 21


class TransportProtocol(IntEnum):
    """TransportProtocol of an RVTO2AddrEntry."""

    TCP = 1
    TLS = 2
    HTTP = 3
    COAP = 4
    HTTPS = 5
    COAPS = 6


_FLAGS = frozenset({RvVar.DEV_ONLY, RvVar.OWNER_ONLY, RvVar.BYPASS})

_SCHEMES: dict[int | None, tuple[str, ...]] = {
    None: ("https",),
    RvProtocol.TLS: ("https",),
    RvProtocol.HTTPS: ("https",),
    RvProtocol.HTTP: ("http",),
    RvProtocol.REST: ("https", "http"),
}
"""URL schemes per RVProtocol (see the module docstring); protocols not listed give none."""

_WELL_KNOWN_PORTS = {"http": 80, "https": 443}


def _check_value(var: int, value: Any, where: str) -> Any:
    """Check the value of a known variable; unknown variables pass untouched."""
    if var == RvVar.IP_ADDRESS:
        raw = check.bstr(value, where)
        if len(raw) not in (4, 16):
            raise FdoMessageError("an IP address is 4 or 16 bytes", where=where)
    elif var in (RvVar.DEV_PORT, RvVar.OWNER_PORT):
        check.uint(value, where, 16)
    elif var in (RvVar.DNS, RvVar.WIFI_SSID, RvVar.WIFI_PW):
        check.tstr(value, where)
    elif var in (RvVar.SV_CERT_HASH, RvVar.CL_CERT_HASH):
        Hash.from_cbor(value, where)
    elif var == RvVar.USER_INPUT:
        check.boolean(value, where)
    elif var in (RvVar.MEDIUM, RvVar.PROTOCOL):
        check.uint(value, where, 8)
    elif var == RvVar.DELAYSEC:
        check.uint(value, where, 32)
    elif var == RvVar.EXT_RV:
        check.array(value, where, minimum=1)
    return value


@dataclass(frozen=True)
class RendezvousInstr:
    """One ``[RVVariable, RVValue]``; ``value`` is the decoded value (None for a flag)."""

    var: int
    value: Any = None

    def __post_init__(self) -> None:
        if not 0 <= self.var <= 255:
            raise ValueError("RVVariable is a uint8")
        if self.var in _FLAGS:
            if self.value not in (None, True):
                raise ValueError(f"{RvVar(self.var).name} is a flag and takes no value")
            object.__setattr__(self, "value", None)
        else:
            if self.value is None and self.var in RvVar.__members__.values():
                raise ValueError(f"{RvVar(self.var).name} needs a value")
            _check_value(self.var, self.value, "RendezvousInstr")

    def to_cbor(self) -> list[Any]:
        """``[RVVariable]`` for a flag, else ``[RVVariable, bstr .cbor value]``."""
        if self.var in _FLAGS:
            return [self.var]
        return [self.var, encode(self.value)]

    @classmethod
    def from_cbor(cls, value: Any, where: str = "RendezvousInstr") -> RendezvousInstr:
        """Parse one instruction."""
        fields = check.array(value, where)
        if len(fields) not in (1, 2):
            raise FdoMessageError("expected [RVVariable] or [RVVariable, RVValue]", where=where)
        var = check.uint(fields[0], f"{where}[0]", 8)
        if var in _FLAGS:
            # Tolerance: flags arrive as [var], [var, null], [var, h'f6'] (bstr-wrapped null)
            # or [var, h'f5'] (bstr-wrapped true) depending on the implementation; all mean
            # "set". We send [var].
            if len(fields) == 2 and fields[1] not in (None, b"\xf6", b"\xf5", b""):
                raise FdoMessageError("a flag variable takes no value", where=f"{where}[1]")
            return cls(var)
        if len(fields) != 2:
            raise FdoMessageError(f"variable {var} needs a value", where=where)
        inner = check.cbor_in_bstr(fields[1], f"{where}[1]")
        return cls(var, _check_value(var, inner, f"{where}[1]"))


@dataclass(frozen=True)
class RendezvousDirective:
    """One directive: instructions a device tries together (one rendezvous server)."""

    instructions: tuple[RendezvousInstr, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "instructions", tuple(self.instructions))
        if not self.instructions:
            raise ValueError("a RendezvousDirective has at least one instruction")

    @classmethod
    def build(
        cls,
        *,
        dns: str | None = None,
        ip: str | None = None,
        dev_port: int | None = None,
        owner_port: int | None = None,
        protocol: RvProtocol | None = None,
        dev_only: bool = False,
        owner_only: bool = False,
        delay: int | None = None,
    ) -> RendezvousDirective:
        """A directive from the common variables (only the given ones are included)."""
        instructions: list[RendezvousInstr] = []
        if dev_only:
            instructions.append(RendezvousInstr(RvVar.DEV_ONLY))
        if owner_only:
            instructions.append(RendezvousInstr(RvVar.OWNER_ONLY))
        if ip is not None:
            instructions.append(RendezvousInstr(RvVar.IP_ADDRESS, ipaddress.ip_address(ip).packed))
        if dns is not None:
            instructions.append(RendezvousInstr(RvVar.DNS, dns))
        if dev_port is not None:
            instructions.append(RendezvousInstr(RvVar.DEV_PORT, dev_port))
        if owner_port is not None:
            instructions.append(RendezvousInstr(RvVar.OWNER_PORT, owner_port))
        if protocol is not None:
            instructions.append(RendezvousInstr(RvVar.PROTOCOL, int(protocol)))
        if delay is not None:
            instructions.append(RendezvousInstr(RvVar.DELAYSEC, delay))
        return cls(tuple(instructions))

    def get(self, var: RvVar) -> Any:
        """The value of ``var`` (True for a set flag), or None when absent."""
        for instr in self.instructions:
            if instr.var == var:
                return True if var in _FLAGS else instr.value
        return None

    @property
    def dns(self) -> str | None:
        """RVDns."""
        value = self.get(RvVar.DNS)
        return value if isinstance(value, str) else None

    @property
    def ip(self) -> str | None:
        """RVIPAddress as text."""
        value = self.get(RvVar.IP_ADDRESS)
        return str(ipaddress.ip_address(value)) if isinstance(value, bytes) else None

    @property
    def dev_port(self) -> int | None:
        """RVDevPort."""
        value = self.get(RvVar.DEV_PORT)
        return value if isinstance(value, int) else None

    @property
    def owner_port(self) -> int | None:
        """RVOwnerPort."""
        value = self.get(RvVar.OWNER_PORT)
        return value if isinstance(value, int) else None

    @property
    def protocol(self) -> RvProtocol | None:
        """RVProtocol (None when absent or unknown)."""
        value = self.get(RvVar.PROTOCOL)
        return RvProtocol(value) if value in RvProtocol.__members__.values() else None

    @property
    def delay(self) -> int | None:
        """RVDelaysec."""
        value = self.get(RvVar.DELAYSEC)
        return value if isinstance(value, int) else None

    @property
    def dev_only(self) -> bool:
        """RVDevOnly: only the device uses this directive."""
        return self.get(RvVar.DEV_ONLY) is True

    @property
    def owner_only(self) -> bool:
        """RVOwnerOnly: only the owner uses this directive."""
        return self.get(RvVar.OWNER_ONLY) is True

    @property
    def bypass(self) -> bool:
        """RVBypass: the address is the owner's (TO2), not a rendezvous server's."""
        return self.get(RvVar.BYPASS) is True

    def urls(self, *, owner: bool = False) -> list[str]:
        """The base URLs (``scheme://host:port``) this directive names, DNS name first.

        Args:
            owner: True for the owner's view (RVOwnerPort), False for the device's (RVDevPort).
                Whether the directive applies to that side at all (RVDevOnly, RVOwnerOnly,
                RVBypass) is the caller's question.
        """
        port = self.owner_port if owner else self.dev_port
        hosts = [self.dns] if self.dns is not None else []
        if self.ip is not None:
            hosts.append(f"[{self.ip}]" if ":" in self.ip else self.ip)
        schemes = _SCHEMES.get(self.get(RvVar.PROTOCOL), ())
        return [
            f"{scheme}://{host}:{port if port is not None else _WELL_KNOWN_PORTS[scheme]}"
            for scheme in schemes
            for host in hosts
        ]

    def to_cbor(self) -> list[Any]:
        """``[+ RendezvousInstr]``."""
        return [instr.to_cbor() for instr in self.instructions]

    @classmethod
    def from_cbor(cls, value: Any, where: str = "RendezvousDirective") -> RendezvousDirective:
        """Parse one directive."""
        fields = check.array(value, where, minimum=1)
        return cls(
            tuple(RendezvousInstr.from_cbor(f, f"{where}[{i}]") for i, f in enumerate(fields))
        )


@dataclass(frozen=True)
class RendezvousInfo:
    """``RendezvousInfo = [+ RendezvousDirective]``."""

    directives: tuple[RendezvousDirective, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "directives", tuple(self.directives))

    def __iter__(self) -> Iterator[RendezvousDirective]:
        return iter(self.directives)

    def for_device(self) -> list[RendezvousDirective]:
        """The directives a device uses (all but RVOwnerOnly)."""
        return [d for d in self.directives if not d.owner_only]

    def for_owner(self) -> list[RendezvousDirective]:
        """The directives an owner uses for TO0 (all but RVDevOnly)."""
        return [d for d in self.directives if not d.dev_only]

    def to_cbor(self) -> list[Any]:
        """``[+ RendezvousDirective]``."""
        return [d.to_cbor() for d in self.directives]

    @classmethod
    def from_cbor(cls, value: Any, where: str = "RendezvousInfo") -> RendezvousInfo:
        """Parse RendezvousInfo.

        Tolerance: the CDDL asks for at least one directive, but fido-device-onboard-rs
        writes an empty array for a device that only uses its credential's defaults; an empty
        array is accepted.
        """
        fields = check.array(value, where)
        return cls(
            tuple(RendezvousDirective.from_cbor(f, f"{where}[{i}]") for i, f in enumerate(fields))
        )


def owner_rv_urls(rv_info: RendezvousInfo) -> list[str]:
    """The base URLs of the rendezvous servers an owner registers with (TO0), in order.

    Every directive but the RVDevOnly ones and the RVBypass ones (they name the owner itself,
    not a rendezvous server), with RVOwnerPort; a URL named twice is listed once.
    """
    urls: list[str] = []
    for directive in rv_info.for_owner():
        if not directive.bypass:
            urls.extend(u for u in directive.urls(owner=True) if u not in urls)
    return urls


@dataclass(frozen=True)
class RvTo2AddrEntry:
    """Where a device can reach its owner for TO2."""

    ip: bytes | None
    dns: str | None
    port: int
    protocol: TransportProtocol

    def __post_init__(self) -> None:
        object.__setattr__(self, "protocol", TransportProtocol(self.protocol))
        if self.ip is None and self.dns is None:
            raise ValueError("an RVTO2AddrEntry needs an IP address or a DNS name")
        if self.ip is not None and len(self.ip) not in (4, 16):
            raise ValueError("an IP address is 4 or 16 bytes")
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError("a port is a uint16")

    def to_cbor(self) -> list[Any]:
        """``[RVIP, RVDNS, RVPort, RVProtocol]``."""
        return [self.ip, self.dns, self.port, int(self.protocol)]

    @classmethod
    def from_cbor(cls, value: Any, where: str = "RVTO2AddrEntry") -> RvTo2AddrEntry:
        """Parse one entry."""
        fields = check.array(value, where, 4)
        ip = None if fields[0] is None else check.bstr(fields[0], f"{where}[0]")
        if ip is not None and len(ip) not in (4, 16):
            raise FdoMessageError(
                f"an IP address is 4 (IPv4) or 16 (IPv6) bytes, not {len(ip)}",
                where=f"{where}[0]",
                code=ErrorCode.INVALID_IP_ADDRESS,
            )
        dns = None if fields[1] is None else check.tstr(fields[1], f"{where}[1]")
        port = check.uint(fields[2], f"{where}[2]", 16)
        number = check.uint(fields[3], f"{where}[3]", 8)
        try:
            return cls(ip, dns, port, TransportProtocol(number))
        except ValueError as e:
            raise FdoMessageError(str(e), where=where) from None


@dataclass(frozen=True)
class RvTo2Addr:
    """``RVTO2Addr = [+ RVTO2AddrEntry]``."""

    entries: tuple[RvTo2AddrEntry, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", tuple(self.entries))
        if not self.entries:
            raise ValueError("RVTO2Addr has at least one entry")

    def to_cbor(self) -> list[Any]:
        """``[+ RVTO2AddrEntry]``."""
        return [e.to_cbor() for e in self.entries]

    @classmethod
    def from_cbor(cls, value: Any, where: str = "RVTO2Addr") -> RvTo2Addr:
        """Parse RVTO2Addr."""
        fields = check.array(value, where, minimum=1)
        return cls(
            tuple(RvTo2AddrEntry.from_cbor(f, f"{where}[{i}]") for i, f in enumerate(fields))
        )
