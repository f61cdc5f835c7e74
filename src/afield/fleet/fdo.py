"""FDO inside the fleet manager: its own rendezvous server and owner, and voucher import.

A small team runs one server. With :class:`FdoSettings` the fleet manager serves, at
``/fdo/101/msg/{n}`` beside its API, the rendezvous protocols (TO0, TO1) and the owner's TO2 on
one FDO endpoint (the binding routes by message type, and an RVTO2Addr carries no path, so one
root serves them all). Their tables (``fdo_rv_registrations``, ``fdo_owner_vouchers``) live in
the fleet database. What a device gets in TO2 is the fleet manager's own address, a one-time
enrollment token stored for its new GUID (:class:`~afield.fleet.enrollment.TokenIssuer`, so the
device enrolls as that GUID right after), the served repository's TUF root, and SSH keys.

``POST /api/v1/vouchers`` (admin token) imports a voucher extended to this owner, PEM or CBOR,
and registers it with the rendezvous servers it names (TO0) before answering; the
:class:`~afield.fdo.server.registrar.Registrar` keeps every voucher registered in a thread.

The server's public address must be known before devices can be sent to it: ``public_url`` in
the settings, or :meth:`FleetFdo.ready` once a server on port 0 knows where it listens. TO0
starts then (its first pass talks to this same server, so it runs in the registrar's thread).

What it leaves to others: the protocols (:mod:`afield.fdo.server`), the manufacturer (DI runs
at the factory: ``afield fdo serve manufacturer``), enrollment (:mod:`afield.fleet.api.device`).
"""

from __future__ import annotations

import datetime
import ipaddress
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from afield.errors import FdoError, FleetError
from afield.fdo._errors import FdoMessageError, VerifyError
from afield.fdo.modules import Handoff
from afield.fdo.pki import load_certificate, load_pki
from afield.fdo.rendezvous import RvTo2Addr, RvTo2AddrEntry, TransportProtocol
from afield.fdo.server.binding import FdoEndpoint
from afield.fdo.server.handoff import HandoffProvider
from afield.fdo.server.owner import OnboardingRequest, OwnerSettings, owner_protocol
from afield.fdo.server.owner_store import SqlOwnerStore
from afield.fdo.server.registrar import Registrar
from afield.fdo.server.rendezvous import (
    RendezvousSettings,
    SqlRendezvousStore,
    rendezvous_protocols,
)
from afield.fdo.server.store import VoucherExistsError
from afield.fdo.serviceinfo import ServiceInfoKV
from afield.fdo.types import PublicKey
from afield.fdo.voucher import Voucher
from afield.fleet.api.deps import ApiError, NowDep, record
from afield.fleet.auth import AdminDep
from afield.fleet.db import Database
from afield.fleet.enrollment import DEFAULT_TTL, TokenIssuer

__all__ = ["FdoSettings", "FleetFdo", "VoucherImported", "router", "to2_address"]

MAX_VOUCHER_BYTES = 256 * 1024
router = APIRouter(prefix="/vouchers", tags=["fdo"])


@dataclass(frozen=True)
class FdoSettings:
    """The FDO servers a fleet manager mounts.

    Args:
        pki_dir: the PKI (``afield fdo init``): the owner key signs TO0 and TO2; the
            manufacturer's certificate and device CA are trusted unless others are named.
        trust_manufacturers: manufacturer certificates (PEM) whose vouchers the rendezvous
            server accepts (default: the PKI's manufacturer).
        device_cas: device CA certificates a device's chain must lead to (default: the PKI's).
        public_url: where devices reach this server (default: learnt by :meth:`FleetFdo.ready`).
        wait_seconds: the registration lifetime the owner asks for at TO0.
        to0_interval: seconds between the registrar's passes.
        token_ttl: how long an onboarded device's enrollment token stays valid.
        labels: labels given to devices that enroll with a token from TO2.
        ssh_keys: authorized_keys lines handed to every device.
        reuse_credential: keep devices' GUIDs (FDO credential reuse).
    """

    pki_dir: Path
    trust_manufacturers: tuple[Path, ...] = ()
    device_cas: tuple[Path, ...] = ()
    public_url: str | None = None
    wait_seconds: int = 7 * 24 * 3600
    to0_interval: float = 60.0
    token_ttl: datetime.timedelta = DEFAULT_TTL
    labels: Mapping[str, str] = field(default_factory=dict)
    ssh_keys: tuple[str, ...] = ()
    reuse_credential: bool = False


def to2_address(url: str) -> RvTo2Addr:
    """RVTO2Addr for a base URL (``http://HOST:PORT``; an IP address or a DNS name).

    Raises:
        FleetError: the URL has no host or is neither http nor https.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FleetError(f"public URL {url!r}: expected http(s)://HOST[:PORT]")
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    protocol = TransportProtocol.HTTPS if https else TransportProtocol.HTTP
    try:
        packed: bytes | None = ipaddress.ip_address(parts.hostname).packed
        dns = None
    except ValueError:
        packed, dns = None, parts.hostname
    return RvTo2Addr((RvTo2AddrEntry(packed, dns, port, protocol),))


def _certificate_key(path: Path) -> PublicKey:
    key = load_certificate(path).public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise FleetError(f"{path}: a manufacturer key must be EC or RSA")
    return PublicKey.from_key(key)


class FleetFdo:
    """The rendezvous server and owner of one fleet manager (see the module docstring)."""

    def __init__(
        self,
        settings: FdoSettings,
        db: Database,
        *,
        repo_dir: Path | None,
        clock: Callable[[], datetime.datetime],
    ) -> None:
        self.settings = settings
        self.repo_dir = repo_dir
        pki = load_pki(settings.pki_dir)
        manufacturers = tuple(_certificate_key(path) for path in settings.trust_manufacturers) or (
            pki.manufacturer.public_key(),
        )
        # Replacement vouchers from TO2 carry the owner's key in their header.
        trusted = (*manufacturers, pki.owner.public_key())
        self.rendezvous_store = SqlRendezvousStore(db.url)
        self.owner_store = SqlOwnerStore(db.url, owner_key=pki.owner.public_key())
        cas = [load_certificate(path) for path in settings.device_cas] or [pki.device_ca.cert]
        self._issue_token = TokenIssuer(
            db, ttl=settings.token_ttl, labels=settings.labels, clock=clock
        )
        owner_settings = OwnerSettings(
            trusted_device_cas=cas,
            reuse_credential=settings.reuse_credential,
            service_info=self._service_info,
        )
        protocols = [
            *rendezvous_protocols(
                self.rendezvous_store,
                RendezvousSettings(trusted, max_wait_seconds=settings.wait_seconds),
                clock,
            ),
            owner_protocol(pki, self.owner_store, owner_settings),
        ]
        self.endpoint = FdoEndpoint(protocols)
        self.registrar = Registrar(
            self.owner_store,
            pki.owner.key,
            None,
            wait_seconds=settings.wait_seconds,
            interval=settings.to0_interval,
        )
        self.public_url: str | None = None
        self._serving = False
        self._lock = threading.Lock()
        if settings.public_url is not None:
            self.ready(settings.public_url)

    def ready(self, public_url: str) -> None:
        """Devices reach this server at ``public_url``: hand it over in TO2 and register."""
        with self._lock:
            self.registrar.to2_addrs = to2_address(public_url)
            self.public_url = public_url.rstrip("/")
            if self._serving:
                self.registrar.start()

    def started(self) -> None:
        """The server is up (the app's lifespan calls it): TO0 may begin."""
        with self._lock:
            self._serving = True
            if self.public_url is not None:
                self.registrar.start()

    def close(self) -> None:
        """Stop registering; release the stores' connections."""
        self.registrar.stop()
        self.rendezvous_store.close()
        self.owner_store.close()

    def _handoff(self) -> Handoff:
        root = None
        if self.repo_dir is not None:
            path = self.repo_dir / "tuf" / "root.json"
            root = path.read_bytes() if path.exists() else None
        return Handoff(fleet_url=self.public_url, tuf_root=root, ssh_keys=self.settings.ssh_keys)

    def _service_info(self, request: OnboardingRequest) -> Sequence[ServiceInfoKV]:
        if self.public_url is None:
            raise FdoError("the fleet manager does not know its public URL yet")
        return HandoffProvider(self._handoff(), issue_token=self._issue_token)(request)

    def import_voucher(self, data: bytes) -> dict[str, Any]:
        """Store a voucher extended to this owner and register it (TO0); the outcome.

        Raises:
            ApiError: not a voucher (400), imported already (409), or it does not verify or
                does not end at this owner (422).
        """
        try:
            voucher = Voucher.load(data)
        except FdoMessageError as e:
            message = f"body: not an ownership voucher (PEM or CBOR): {e}"
            raise ApiError(400, message, field="body") from None
        try:
            self.owner_store.add(voucher)
        except VoucherExistsError as e:
            raise ApiError(409, str(e), field="body") from None
        except VerifyError as e:
            raise ApiError(422, f"body: {e}", field="body") from None
        if self.registrar.to2_addrs is None:
            return {"guid": str(voucher.header.guid), "until": None, "rendezvous": [], "errors": []}
        registration = self.registrar.register_one(voucher)
        return registration.to_dict()


class VoucherImported(BaseModel):
    """A voucher this owner now holds, and whether a device can find it (TO0)."""

    guid: str
    registered: bool
    until: str | None = None
    rendezvous: list[str] = []
    errors: list[str] = []


@router.post(
    "",
    status_code=201,
    operation_id="vouchers-import",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/x-pem-file": {"schema": {"type": "string"}},
                "application/cbor": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
async def import_voucher(request: Request, caller: AdminDep, now: NowDep) -> VoucherImported:
    """Import a voucher extended to this owner (PEM or CBOR) and register it at once."""
    fdo: FleetFdo | None = getattr(request.app.state, "fdo", None)
    if fdo is None:
        message = "this fleet manager serves no FDO owner (start it with --fdo-pki)"
        raise ApiError(404, message, field="path")
    data = await request.body()
    if not data:
        raise ApiError(400, "body: empty; send the voucher as PEM or CBOR", field="body")
    if len(data) > MAX_VOUCHER_BYTES:
        raise ApiError(413, f"body: a voucher is at most {MAX_VOUCHER_BYTES} bytes", field="body")
    outcome = await run_in_threadpool(fdo.import_voucher, data)

    def audit() -> None:
        with request.app.state.db.transaction() as session:
            record(
                session,
                actor=caller.actor,
                kind="voucher.import",
                subject=f"guid:{outcome['guid']}",
                now=now,
                details={"until": outcome.get("until"), "errors": outcome.get("errors", [])},
            )

    await run_in_threadpool(audit)
    return VoucherImported(
        guid=str(outcome["guid"]),
        registered=outcome.get("until") is not None,
        until=outcome.get("until"),
        rendezvous=list(outcome.get("rendezvous", [])),
        errors=list(outcome.get("errors", [])),
    )
