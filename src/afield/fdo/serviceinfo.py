"""ServiceInfo: the key/value pairs of TO2 messages 68/69, the ``devmod`` module, and chunking.

``ServiceInfo = [* ServiceInfoKV]``, ``ServiceInfoKV = [ServiceInfoKey: tstr ("module:message"),
ServiceInfoVal: bstr .cbor any]``. A sender splits its key/values into messages that fit the
peer's maximum service info size (MTU); ``IsMoreServiceInfo`` is true on all but the last.

What it leaves to others: owner modules (fdo.command, afield), applying service info.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from afield.fdo import _check as check
from afield.fdo._errors import FdoMessageError
from afield.fdo.cbor import decode, encode

__all__ = [
    "DEFAULT_MTU",
    "Devmod",
    "ServiceInfoKV",
    "chunk_service_info",
    "parse_service_info",
    "service_info_cbor",
]

DEFAULT_MTU = 1300
"""The service info size to assume when the peer sends none (the spec's recommended default)."""
_MESSAGE_OVERHEAD = 16
"""Room for the message array, booleans and encryption-free framing around a ServiceInfo."""


@dataclass(frozen=True)
class ServiceInfoKV:
    """One ``[key, bstr .cbor value]``; ``raw`` is the encoded value."""

    key: str
    raw: bytes

    @classmethod
    def of(cls, module: str, message: str, value: Any) -> ServiceInfoKV:
        """A key/value for ``module:message`` with ``value`` encoded as CBOR."""
        return cls(f"{module}:{message}", encode(value))

    @property
    def module(self) -> str:
        """The module name (before the colon)."""
        return self.key.partition(":")[0]

    @property
    def message(self) -> str:
        """The message name (after the colon)."""
        return self.key.partition(":")[2]

    def value(self) -> Any:
        """The decoded value."""
        return decode(self.raw)

    def to_cbor(self) -> list[Any]:
        """``[key, bstr]``."""
        return [self.key, self.raw]

    @classmethod
    def from_cbor(cls, value: Any, where: str = "ServiceInfoKV") -> ServiceInfoKV:
        """Parse one key/value (the value must be one CBOR item)."""
        fields_ = check.array(value, where, 2)
        key = check.tstr(fields_[0], f"{where}[0]")
        if ":" not in key:
            raise FdoMessageError("service info key must be 'module:message'", where=f"{where}[0]")
        raw = check.bstr(fields_[1], f"{where}[1]")
        check.cbor_in_bstr(raw, f"{where}[1]")
        return cls(key, raw)


def service_info_cbor(kvs: list[ServiceInfoKV]) -> list[Any]:
    """``ServiceInfo``."""
    return [kv.to_cbor() for kv in kvs]


def parse_service_info(value: Any, where: str = "ServiceInfo") -> list[ServiceInfoKV]:
    """Parse ``ServiceInfo``."""
    return [
        ServiceInfoKV.from_cbor(kv, f"{where}[{i}]")
        for i, kv in enumerate(check.array(value, where))
    ]


def chunk_service_info(kvs: list[ServiceInfoKV], mtu: int) -> list[list[ServiceInfoKV]]:
    """Split ``kvs`` into messages whose encoded ServiceInfo fits ``mtu`` bytes.

    Send each chunk with IsMoreServiceInfo true except the last. Raises ValueError when one
    key/value cannot fit even alone (the owner must then split the value at module level).
    """
    budget = mtu - _MESSAGE_OVERHEAD
    chunks: list[list[ServiceInfoKV]] = [[]]
    size = 3  # array head of up to 65535 elements
    for kv in kvs:
        kv_size = len(encode(kv.to_cbor()))
        if kv_size > budget:
            raise ValueError(f"service info {kv.key} ({kv_size} bytes) does not fit in {mtu}")
        if size + kv_size > budget and chunks[-1]:
            chunks.append([])
            size = 3
        chunks[-1].append(kv)
        size += kv_size
    return chunks


@dataclass(frozen=True)
class Devmod:
    """The ``devmod`` module every device sends first; ``modules`` lists its modules."""

    os: str
    arch: str
    version: str
    device: str
    sep: str
    bin: str
    modules: tuple[str, ...] = ("devmod",)
    active: bool = True
    sn: str | bytes | None = None
    pathsep: str | None = None
    nl: str | None = None
    tmp: str | None = None
    dir: str | None = None
    progenv: str | None = None
    mudurl: str | None = None

    REQUIRED = ("active", "os", "arch", "version", "device", "sep", "bin", "nummodules", "modules")

    def to_kvs(self) -> list[ServiceInfoKV]:
        """The devmod key/values: every mandatory key, then the optional ones that are set."""
        kvs = [ServiceInfoKV.of("devmod", "active", self.active)]
        for name in ("os", "arch", "version", "device", "sep", "bin"):
            kvs.append(ServiceInfoKV.of("devmod", name, getattr(self, name)))
        for name in ("sn", "pathsep", "nl", "tmp", "dir", "progenv", "mudurl"):
            if getattr(self, name) is not None:
                kvs.append(ServiceInfoKV.of("devmod", name, getattr(self, name)))
        kvs.append(ServiceInfoKV.of("devmod", "nummodules", len(self.modules)))
        kvs.append(ServiceInfoKV.of("devmod", "modules", [0, len(self.modules), *self.modules]))
        return kvs

    @classmethod
    def from_kvs(cls, kvs: list[ServiceInfoKV]) -> Devmod:
        """Collect devmod from key/values (other modules' keys are skipped).

        Tolerance: ``devmod:modules`` may come in several messages (``[start, len, names...]``
        each); they are joined by their start index. Raises FdoMessageError when a mandatory
        key is missing or has the wrong type.
        """
        values: dict[str, Any] = {}
        modules: dict[int, str] = {}
        for kv in kvs:
            if kv.module != "devmod":
                continue
            value = kv.value()
            if kv.message == "modules":
                part = check.array(value, "devmod:modules", minimum=2)
                start = check.uint(part[0], "devmod:modules[0]", 16)
                count = check.uint(part[1], "devmod:modules[1]", 16)
                names = part[2:]
                if len(names) != count:
                    raise FdoMessageError("module count does not match", where="devmod:modules")
                for i, name in enumerate(names):
                    modules[start + i] = check.tstr(name, f"devmod:modules[{2 + i}]")
                values["modules"] = True
            else:
                values[kv.message] = value
        missing = [k for k in cls.REQUIRED if k not in values]
        if missing:
            raise FdoMessageError(f"devmod lacks mandatory keys {', '.join(missing)}")
        number = check.uint(values["nummodules"], "devmod:nummodules", 16)
        if sorted(modules) != list(range(number)):
            raise FdoMessageError("devmod:modules does not list nummodules modules")
        kwargs: dict[str, Any] = {"modules": tuple(modules[i] for i in range(number))}
        kwargs["active"] = check.boolean(values["active"], "devmod:active")
        for f in fields(cls):
            if f.name in ("modules", "active"):
                continue
            if f.name in values:
                value = values[f.name]
                if f.name == "sn" and isinstance(value, bytes):
                    kwargs["sn"] = value
                else:
                    kwargs[f.name] = check.tstr(value, f"devmod:{f.name}")
        return cls(**kwargs)
