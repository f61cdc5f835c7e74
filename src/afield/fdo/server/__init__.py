"""FDO servers: the HTTP binding every FDO server shares, and the manufacturer's DI server.

- :mod:`afield.fdo.server.binding`: ``POST /fdo/101/msg/{n}``, sessions with bearer tokens,
  message order, body limits, Error messages, metrics.
- :mod:`afield.fdo.server.manufacturer`: :func:`create_manufacturer_app` (DI).
- :mod:`afield.fdo.server.store`: the voucher store (SQLAlchemy 2).
- :mod:`afield.fdo.server.rendezvous`: :func:`create_rendezvous_app` (TO0 and TO1) and its
  registration store.
- :mod:`afield.fdo.server.owner`: :func:`create_owner_app` (TO2); its voucher store is
  :mod:`afield.fdo.server.owner_store`.

This package is server-side only (Starlette, uvicorn, SQLAlchemy); devices use
:mod:`afield.fdo.client`, which imports none of it.

What it leaves to others: the CLI (``afield fdo serve``), mounting
inside the fleet manager.
"""

from __future__ import annotations

from afield._serving import running, serve
from afield.fdo.server.binding import BindingSettings, FdoEndpoint, Protocol, Step
from afield.fdo.server.manufacturer import ManufacturerSettings, create_manufacturer_app
from afield.fdo.server.owner import OnboardingRequest, OwnerSettings, create_owner_app
from afield.fdo.server.owner_store import OwnedVoucher, OwnerStore, SqlOwnerStore
from afield.fdo.server.rendezvous import (
    RendezvousSettings,
    RendezvousStore,
    RvRegistration,
    SqlRendezvousStore,
    create_rendezvous_app,
)
from afield.fdo.server.store import SqlVoucherStore, StoredVoucher, VoucherStore

__all__ = [
    "BindingSettings",
    "FdoEndpoint",
    "ManufacturerSettings",
    "OnboardingRequest",
    "OwnedVoucher",
    "OwnerSettings",
    "OwnerStore",
    "Protocol",
    "RendezvousSettings",
    "RendezvousStore",
    "RvRegistration",
    "SqlOwnerStore",
    "SqlRendezvousStore",
    "SqlVoucherStore",
    "Step",
    "StoredVoucher",
    "VoucherStore",
    "create_manufacturer_app",
    "create_owner_app",
    "create_rendezvous_app",
    "running",
    "serve",
]
