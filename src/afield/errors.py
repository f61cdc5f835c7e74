"""The one error tree of afield.

Every error afield raises on purpose derives from :class:`AfieldError`. Third-party exceptions
(tomllib, GLib, subprocess) are translated where they enter and never leak through a public
function.

::

    AfieldError
     ├── BlueprintError          a blueprint file is unreadable or invalid (user error)
     ├── ComposeError            composing an OS tree or commit failed
     │    └── StageError         one pipeline stage failed; carries the stage name
     ├── RepositoryError         an afield/OSTree repository is missing, corrupt or lacks a ref
     ├── TrustError              signatures, keys or trusted metadata do not verify
     ├── FdoError                FIDO Device Onboard failed
     │    ├── MessageError       an FDO message does not decode
     │    └── ProtocolError      an FDO protocol step failed; carries the FDO error code
     ├── DeviceError             a device-side operation failed
     ├── FleetError              a fleet-manager operation failed
     └── TransportError          a network transfer failed

Each error says whether it is the user's input that is wrong (``user_error``): the CLI exits 2 for
those and 1 for every other failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "AfieldError",
    "BlueprintError",
    "ComposeError",
    "DeviceError",
    "DiskError",
    "FdoError",
    "FleetError",
    "ManifestError",
    "MessageError",
    "Problem",
    "ProtocolError",
    "RepositoryError",
    "StageError",
    "TransportError",
    "TrustError",
    "WorkloadError",
]


@dataclass(frozen=True)
class Problem:
    """One validation problem: where it is (a dotted key path or ``line:col``) and what is wrong."""

    location: str
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}" if self.location else self.message


class AfieldError(Exception):
    """Base of every error afield raises on purpose."""

    user_error: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BlueprintError(AfieldError):
    """A blueprint cannot be read or does not validate; lists every problem found."""

    user_error = True

    def __init__(self, path: Path | str | None, problems: list[Problem]) -> None:
        self.path = Path(path) if path is not None else None
        self.problems = list(problems)
        where = f"{self.path}: " if self.path is not None else ""
        if len(self.problems) == 1:
            text = f"{where}{self.problems[0]}"
        else:
            lines = "\n".join(f"  {p}" for p in self.problems)
            text = f"{where}{len(self.problems)} problems\n{lines}"
        super().__init__(text)


class ComposeError(AfieldError):
    """Composing an OS tree or an OSTree commit failed."""

    def __init__(self, message: str, *, user_error: bool = False) -> None:
        super().__init__(message)
        self.user_error = user_error


class StageError(ComposeError):
    """A pipeline stage failed; ``stage`` names it and ``log`` holds the tail of its output."""

    def __init__(
        self, stage: str, message: str, *, log: str = "", user_error: bool = False
    ) -> None:
        super().__init__(f"stage {stage}: {message}", user_error=user_error)
        self.stage = stage
        self.log = log


class RepositoryError(AfieldError):
    """An afield or OSTree repository is missing, corrupt, or lacks the asked-for ref or commit."""

    def __init__(self, message: str, *, path: Path | None = None, user_error: bool = False) -> None:
        super().__init__(message)
        self.path = path
        self.user_error = user_error


class TrustError(AfieldError):
    """Keys, signatures or trusted metadata do not verify."""


class FdoError(AfieldError):
    """FIDO Device Onboard failed."""


class MessageError(FdoError):
    """An FDO message does not decode or breaks a limit."""


class ProtocolError(FdoError):
    """An FDO protocol step failed; ``code`` is the FDO error code sent to the peer."""

    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(message)
        self.code = code


class DeviceError(AfieldError):
    """A device-side operation (deploy, boot, health check, rollback) failed."""

    def __init__(self, message: str, *, user_error: bool = False) -> None:
        super().__init__(message)
        if user_error:
            self.user_error = True


class DiskError(AfieldError):
    """A bootable disk image could not be built, or a tool it needs is missing."""

    def __init__(self, message: str, *, user_error: bool = False) -> None:
        super().__init__(message)
        self.user_error = user_error


class FleetError(AfieldError):
    """A fleet-manager operation failed."""


class TransportError(AfieldError):
    """A network transfer failed."""


class ManifestError(AfieldError):
    """Kubernetes manifests do not parse, break a limit, or use what podman cannot play; the
    message names the file (or origin), the document and the field."""

    user_error = True


class WorkloadError(AfieldError):
    """A workload (container, pod, application) could not be pulled, played, removed or made
    ready; the message names it and says why."""
