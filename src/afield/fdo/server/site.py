"""A whole FDO deployment on one machine: a manufacturer, a rendezvous server and an owner on
127.0.0.1, each with its SQLite file under one directory, sharing one PKI.

:func:`local_site` starts the rendezvous server and the owner first (the manufacturer writes the
rendezvous server's address into every voucher), then the manufacturer. The rendezvous server
trusts the manufacturer's key and the owner's (the owner's replacement vouchers carry it).
:meth:`LocalSite.sell` does what a sale does between companies: the manufacturer extends the
voucher to the owner, the owner imports it and registers it (TO0).

It is how ``afield demo``, the onboarding benchmark and tests stand up FDO; a real deployment
runs the three servers apart (``afield fdo serve ...``).

What it leaves to others: the device side (:func:`afield.fdo.client.manufacture`,
:func:`afield.device.onboard.onboard`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from afield._serving import running
from afield.errors import FdoError
from afield.fdo.modules import Handoff
from afield.fdo.pki import Pki, init_pki, load_pki
from afield.fdo.rendezvous import (
    RendezvousDirective,
    RendezvousInfo,
    RvProtocol,
    RvTo2Addr,
    RvTo2AddrEntry,
    TransportProtocol,
)
from afield.fdo.server.handoff import HandoffProvider
from afield.fdo.server.manufacturer import ManufacturerSettings, create_manufacturer_app
from afield.fdo.server.owner import OwnerSettings, create_owner_app
from afield.fdo.server.owner_store import SqlOwnerStore
from afield.fdo.server.registrar import Registrar, Registration
from afield.fdo.server.rendezvous import (
    RendezvousSettings,
    SqlRendezvousStore,
    create_rendezvous_app,
)
from afield.fdo.server.store import SqlVoucherStore
from afield.fdo.types import Guid

__all__ = ["LocalSite", "local_site"]


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


@dataclass
class LocalSite:
    """The running servers of :func:`local_site` and their stores."""

    pki: Pki
    manufacturer_url: str
    rendezvous_url: str
    owner_url: str
    vouchers: SqlVoucherStore
    owned: SqlOwnerStore
    registrar: Registrar

    def sell(self, guid: Guid) -> Registration:
        """Transfer the device's voucher to the owner, import it there, register it (TO0)."""
        stored = self.vouchers.get(guid)
        if stored is None:
            raise FdoError(f"the manufacturer has no voucher for device {guid}")
        voucher = stored.voucher.extend(self.pki.manufacturer.key, self.pki.owner.public_key())
        self.owned.add(voucher)
        return self.registrar.register_one(voucher)


@contextmanager
def local_site(
    directory: Path, handoff: Handoff, databases: Mapping[str, str] | None = None
) -> Iterator[LocalSite]:
    """Serve the three FDO servers from ``directory`` (PKI made there unless present).

    Args:
        directory: holds ``pki/`` and the servers' SQLite files.
        handoff: what the owner gives every device in TO2 (a fresh token each).
        databases: SQLAlchemy URLs by server (``manufacturer``, ``rendezvous``, ``owner``)
            instead of SQLite files in ``directory``, e.g. PostgreSQL.
    """

    def url(name: str) -> str:
        return (databases or {}).get(name) or f"sqlite:///{directory / f'{name}.db'}"

    directory.mkdir(parents=True, exist_ok=True)
    pki_dir = directory / "pki"
    pki = load_pki(pki_dir) if pki_dir.exists() else init_pki(pki_dir)
    with ExitStack() as stack:
        rv_store = SqlRendezvousStore(url("rendezvous"))
        stack.callback(rv_store.close)
        owned = SqlOwnerStore(url("owner"), owner_key=pki.owner.public_key())
        stack.callback(owned.close)
        vouchers = SqlVoucherStore(url("manufacturer"))
        stack.callback(vouchers.close)
        trusted = (pki.manufacturer.public_key(), pki.owner.public_key())
        rv_url = stack.enter_context(
            running(create_rendezvous_app(rv_store, RendezvousSettings(trusted)))
        )
        owner_settings = OwnerSettings([pki.device_ca.cert], service_info=HandoffProvider(handoff))
        owner_url = stack.enter_context(running(create_owner_app(pki, owned, owner_settings)))
        rv_host, rv_port = _host_port(rv_url)
        directive = RendezvousDirective.build(
            ip=rv_host, dev_port=rv_port, owner_port=rv_port, protocol=RvProtocol.HTTP
        )
        factory = ManufacturerSettings(rv_info=RendezvousInfo((directive,)))
        mfg_url = stack.enter_context(running(create_manufacturer_app(pki, vouchers, factory)))
        owner_host, owner_port = _host_port(owner_url)
        address = RvTo2AddrEntry(None, owner_host, owner_port, TransportProtocol.HTTP)
        registrar = Registrar(owned, pki.owner.key, RvTo2Addr((address,)))
        yield LocalSite(pki, mfg_url, rv_url, owner_url, vouchers, owned, registrar)
