"""The owner's TO0 duty: keep every voucher it holds registered with the rendezvous servers.

A rendezvous server keeps a registration for the WaitSeconds it granted, then forgets it; a
device that powers on later would find no owner. :class:`Registrar` therefore runs TO0 for each
voucher that has no registration yet or whose registration ends within ``margin`` of now,
against the rendezvous servers the voucher's own RendezvousInfo names for owners, and records
the time the registration ends. It runs once on demand (:meth:`Registrar.run_once`, e.g. right
after an import) and in a background thread every ``interval`` seconds while the owner server
runs (:meth:`Registrar.start`).

A rendezvous server that cannot be reached or refuses is logged and tried again at the next
pass; a voucher registered with one of its servers counts as registered (the earliest end is
recorded when several answer).

What it leaves to others: TO0 itself (:func:`afield.fdo.to0.register`), which vouchers the owner
holds (:mod:`afield.fdo.server.owner_store`).
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from afield.errors import FdoError, TransportError
from afield.fdo.cose import SigningKey
from afield.fdo.rendezvous import RvTo2Addr
from afield.fdo.server.owner_store import OwnerStore
from afield.fdo.to0 import owner_rv_urls, register
from afield.fdo.types import PublicKey
from afield.fdo.voucher import Voucher

__all__ = ["Registrar", "Registration"]

log = logging.getLogger("afield.fdo.registrar")


@dataclass(frozen=True)
class Registration:
    """The outcome of TO0 for one voucher at one pass."""

    guid: str
    until: datetime.datetime | None
    rendezvous: list[str]
    errors: list[str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "guid": self.guid,
            "until": None if self.until is None else self.until.isoformat(),
            "rendezvous": self.rendezvous,
            "errors": self.errors,
        }


class Registrar:
    """Registers the owner's vouchers (see the module docstring).

    Args:
        store: the owner's vouchers and their registration times.
        owner_key: the owner's private key (signs TO0's to1d).
        to2_addrs: where devices reach this owner's TO2 server; may be set later (a server on
            port 0 learns its address once bound), but before the first registration.
        wait_seconds: the registration lifetime asked for.
        margin: re-register this long before a registration ends.
        interval: seconds between background passes.
        timeout: seconds for each rendezvous server's answers.
        clock: the current time (UTC).
    """

    def __init__(
        self,
        store: OwnerStore,
        owner_key: SigningKey,
        to2_addrs: RvTo2Addr | None,
        *,
        wait_seconds: int = 7 * 24 * 3600,
        margin: datetime.timedelta | None = None,
        interval: float = 60.0,
        timeout: float = 30.0,
        clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    ) -> None:
        self.store = store
        self.owner_key = owner_key
        self.to2_addrs = to2_addrs
        self.wait_seconds = wait_seconds
        self.margin = margin if margin is not None else datetime.timedelta(seconds=wait_seconds / 4)
        self.interval = interval
        self.timeout = timeout
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _fit_margin(self, granted: int) -> None:
        # A server that grants less than asked would otherwise leave every registration
        # inside the margin, and each pass would register everything again.
        self.margin = min(self.margin, datetime.timedelta(seconds=granted / 2))

    def _as_owner(self, voucher: Voucher) -> Voucher:
        """The voucher as TO0 needs it: a replacement voucher from TO2 has no entries (the
        owner's key is its header's), so it is extended to the owner itself first."""
        if voucher.entries:
            return voucher
        return voucher.extend(self.owner_key, PublicKey.from_key(self.owner_key.public_key()))

    def register_one(self, voucher: Voucher) -> Registration:
        """TO0 for one voucher with every owner rendezvous server it names; records the end."""
        if self.to2_addrs is None:
            raise FdoError("the owner's TO2 address is not known yet: nothing to register")
        voucher = self._as_owner(voucher)
        guid, to2_addrs = voucher.header.guid, self.to2_addrs
        ends: list[datetime.datetime] = []
        servers: list[str] = []
        errors: list[str] = []
        for url in owner_rv_urls(voucher.header.rv_info):
            try:
                granted = register(
                    url,
                    voucher,
                    self.owner_key,
                    to2_addrs,
                    self.wait_seconds,
                    timeout=self.timeout,
                )
            except (FdoError, TransportError) as e:
                errors.append(f"{url}: {e}")
                continue
            self._fit_margin(granted)
            servers.append(url)
            ends.append(self.clock() + datetime.timedelta(seconds=granted))
        until = min(ends) if ends else None
        if until is not None:
            self.store.set_registration(guid, until)
        result = Registration(str(guid), until, servers, errors)
        log.info(json.dumps({"event": "to0", **result.to_dict()}, sort_keys=True))
        return result

    def run_once(self) -> list[Registration]:
        """Register every voucher that is unregistered or due within the margin."""
        with self._lock:
            due = self.store.due_for_registration(self.clock() + self.margin)
            return [self.register_one(stored.voucher) for stored in due]

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("TO0 pass failed; trying again in %s s", self.interval)
            self._stop.wait(self.interval)

    def start(self) -> None:
        """Run passes in a daemon thread until :meth:`stop`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="fdo-to0", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """End the background passes (waits for the current one)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
