"""FDO servers: the HTTP binding every FDO server shares, and the manufacturer's DI server.

- :mod:`afield.fdo.server.binding`: ``POST /fdo/101/msg/{n}``, sessions with bearer tokens,
  message order, body limits, Error messages, metrics.
- :mod:`afield.fdo.server.manufacturer`: :func:`create_manufacturer_app` (DI).
- :mod:`afield.fdo.server.store`: the voucher store (SQLAlchemy 2).

This package is server-side only (Starlette, uvicorn, SQLAlchemy); devices use
:mod:`afield.fdo.client`, which imports none of it.

What it leaves to others: the rendezvous (TO0/TO1) and owner (TO2) servers, the CLI
(``afield fdo serve``), mounting inside the fleet manager.
"""

from __future__ import annotations

from afield._serving import running, serve
from afield.fdo.server.binding import BindingSettings, FdoEndpoint, Protocol, Step
from afield.fdo.server.manufacturer import ManufacturerSettings, create_manufacturer_app
from afield.fdo.server.store import SqlVoucherStore, StoredVoucher, VoucherStore

__all__ = [
    "BindingSettings",
    "FdoEndpoint",
    "ManufacturerSettings",
    "Protocol",
    "SqlVoucherStore",
    "Step",
    "StoredVoucher",
    "VoucherStore",
    "create_manufacturer_app",
    "running",
    "serve",
]
