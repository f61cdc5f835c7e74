"""The owner's TO0 registrar against a real rendezvous server (uvicorn on 127.0.0.1, SQLite):
which vouchers it registers and when, what it does when a rendezvous server is down, and its
background thread.

Devices are made by a real DI against a manufacturer whose RendezvousInfo names the rendezvous
server; their vouchers are extended to the PKI's owner key and imported into a fresh owner
store per test. The registrar and the rendezvous server share one settable clock for the
module; it only ever moves forward, and every test registers its own devices after reading it,
so a test that advances it cannot shorten another test's registration."""

from __future__ import annotations

import datetime
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from afield.errors import FdoError
from afield.fdo import ErrorCode
from afield.fdo.client import ServerError, manufacture
from afield.fdo.cose import SigningKey
from afield.fdo.credential import DeviceCredential
from afield.fdo.pki import Pki, init_pki, load_private_key
from afield.fdo.rendezvous import (
    RendezvousDirective,
    RendezvousInfo,
    RvProtocol,
    RvTo2Addr,
    RvTo2AddrEntry,
    TransportProtocol,
)
from afield.fdo.server import (
    ManufacturerSettings,
    OwnerSettings,
    RendezvousSettings,
    SqlOwnerStore,
    SqlRendezvousStore,
    SqlVoucherStore,
    create_manufacturer_app,
    create_owner_app,
    create_rendezvous_app,
    running,
)
from afield.fdo.server.registrar import Registrar, Registration
from afield.fdo.serviceinfo import Devmod, ServiceInfoKV
from afield.fdo.to0 import register
from afield.fdo.to1 import find_owner
from afield.fdo.to2 import run_to2
from afield.fdo.types import Guid
from afield.fdo.voucher import Voucher

MAX_WAIT = 3600
MARGIN = datetime.timedelta(seconds=900)
LOCALHOST = b"\x7f\x00\x00\x01"
ADDRS = RvTo2Addr((RvTo2AddrEntry(LOCALHOST, None, 8043, TransportProtocol.HTTP),))
DEVMOD = Devmod(os="Linux", arch="x86_64", version="6.1", device="registrar test", sep=":", bin="x")


class Clock:
    """A settable UTC clock shared by the rendezvous server and the registrars."""

    def __init__(self) -> None:
        self.now = datetime.datetime.now(datetime.UTC)

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += datetime.timedelta(seconds=seconds)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def free_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, then closed again)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def directive(port: int) -> RendezvousDirective:
    """A rendezvous server on 127.0.0.1:``port`` over HTTP, for devices and owners alike."""
    return RendezvousDirective.build(
        ip="127.0.0.1", dev_port=port, owner_port=port, protocol=RvProtocol.HTTP
    )


@dataclass
class Made:
    """A manufactured device: its credential, its key and its voucher extended to the owner."""

    credential: DeviceCredential
    key: SigningKey
    voucher: Voucher

    @property
    def guid(self) -> Guid:
        return self.credential.guid


@dataclass
class Factory:
    """A manufacturer's DI server and its voucher store."""

    url: str
    store: SqlVoucherStore


@dataclass
class Net:
    """The module's rendezvous server, its clock and store, and a manufacturer pointing at it."""

    pki: Pki
    clock: Clock
    rv_url: str
    rv_store: SqlRendezvousStore
    rv_settings: RendezvousSettings
    http: httpx.Client
    factory: Factory
    directory: Path

    @contextmanager
    def manufacturer(self, rv_info: RendezvousInfo) -> Iterator[Factory]:
        """Another manufacturer (same keys), whose vouchers carry ``rv_info``."""
        directory = self.directory / f"mfg-{time.monotonic_ns()}"
        directory.mkdir()
        store = SqlVoucherStore(f"sqlite:///{directory / 'mfg.db'}")
        app = create_manufacturer_app(self.pki, store, ManufacturerSettings(rv_info=rv_info))
        try:
            with running(app) as url:
                yield Factory(url, store)
        finally:
            store.close()

    def device(self, factory: Factory | None = None) -> Made:
        """Run DI for a new device and extend its voucher to the PKI's owner key."""
        factory = factory or self.factory
        path = self.directory / f"device-{time.monotonic_ns()}.cbor"
        credential = manufacture(factory.url, path, device_info="registrar test")
        stored = factory.store.get(credential.guid)
        assert stored is not None
        voucher = stored.voucher.extend(self.pki.manufacturer.key, self.pki.owner.public_key())
        return Made(credential, load_private_key(f"{path}.key.pem"), voucher)

    def rendezvous_app(self) -> Starlette:
        """Another app on the module's rendezvous store and clock (to serve on a chosen port)."""
        return create_rendezvous_app(self.rv_store, self.rv_settings, clock=self.clock)

    def to0_count(self) -> int:
        """How many TO0.OwnerSign (22) messages the rendezvous server has received."""
        text = self.http.get("/metrics").text
        found = re.search(r'^afield_fdo_messages_total\{type="22"\} (\d+)$', text, re.MULTILINE)
        return int(found.group(1)) if found else 0

    def registered_at(self, guid: Guid) -> datetime.datetime | None:
        stored = self.rv_store.get(guid)
        return None if stored is None else stored.registered_at


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    directory = tmp_path_factory.mktemp("registrar")
    pki = init_pki(directory / "pki")
    clock = Clock()
    rv_store = SqlRendezvousStore(f"sqlite:///{directory / 'rv.db'}")
    # The owner's key is trusted as a manufacturer too: a voucher TO2 replaced names the owner
    # in the manufacturer's place (see test_the_replacement_voucher_is_registered).
    rv_settings = RendezvousSettings(
        (pki.manufacturer.public_key(), pki.owner.public_key()), max_wait_seconds=MAX_WAIT
    )
    rv_app = create_rendezvous_app(rv_store, rv_settings, clock=clock)
    mfg_store = SqlVoucherStore(f"sqlite:///{directory / 'mfg.db'}")
    try:
        with running(rv_app) as rv_url, httpx.Client(base_url=rv_url, timeout=10) as http:
            rv_info = RendezvousInfo((directive(port_of(rv_url)),))
            mfg_app = create_manufacturer_app(pki, mfg_store, ManufacturerSettings(rv_info=rv_info))
            with running(mfg_app) as mfg_url:
                factory = Factory(mfg_url, mfg_store)
                yield Net(pki, clock, rv_url, rv_store, rv_settings, http, factory, directory)
    finally:
        rv_store.close()
        mfg_store.close()


@pytest.fixture
def store(net: Net, tmp_path: Path) -> Iterator[SqlOwnerStore]:
    """A fresh owner store for the PKI's owner key."""
    owner_store = SqlOwnerStore(
        f"sqlite:///{tmp_path / 'owner.db'}", owner_key=net.pki.owner.public_key()
    )
    yield owner_store
    owner_store.close()


def registrar(net: Net, store: SqlOwnerStore, to2_addrs: RvTo2Addr | None = ADDRS) -> Registrar:
    return Registrar(
        store,
        net.pki.owner.key,
        to2_addrs,
        wait_seconds=MAX_WAIT,
        margin=MARGIN,
        interval=0.2,
        timeout=5,
        clock=net.clock,
    )


def by_guid(registrations: list[Registration]) -> dict[str, Registration]:
    return {r.guid: r for r in registrations}


def no_replies(kv: ServiceInfoKV) -> list[ServiceInfoKV]:
    return []


@contextmanager
def owner_server(net: Net, store: SqlOwnerStore) -> Iterator[RvTo2Addr]:
    """A TO2 server on ``store``; yields the RVTO2Addr that names it."""
    settings = OwnerSettings(trusted_device_cas=[net.pki.device_ca.cert])
    with running(create_owner_app(net.pki, store, settings)) as url:
        entry = RvTo2AddrEntry(LOCALHOST, None, port_of(url), TransportProtocol.HTTP)
        yield RvTo2Addr((entry,))


def onboard(net: Net, made: Made) -> DeviceCredential:
    """TO1 at the rendezvous server, then TO2 with the owner it names; the new credential."""
    found = find_owner(net.rv_url, made.credential, made.key, timeout=5)
    url = f"http://127.0.0.1:{found.addrs.entries[0].port}"
    result = run_to2(
        url,
        made.credential,
        made.key,
        to1d=found.to1d,
        devmod=DEVMOD,
        handler=no_replies,
        timeout=5,
    )
    return result.credential


# --- when a voucher is registered ------------------------------------------------------------


def test_a_new_voucher_is_registered_until_the_end_the_server_granted(
    net: Net, store: SqlOwnerStore
) -> None:
    made = net.device()
    store.add(made.voucher)

    registrations = registrar(net, store).run_once()

    until = net.clock() + datetime.timedelta(seconds=MAX_WAIT)
    assert registrations == [Registration(str(made.guid), until, [net.rv_url], [])]
    owned = store.get(made.guid)
    assert owned is not None and owned.registered_until == until
    stored = net.rv_store.get(made.guid)
    assert stored is not None and stored.expires_at == until
    found = find_owner(net.rv_url, made.credential, made.key, timeout=5)
    assert found.addrs == ADDRS
    found.to1d.verify(net.pki.owner.key.public_key())


def test_a_registration_far_from_its_end_is_left_alone(net: Net, store: SqlOwnerStore) -> None:
    made = net.device()
    store.add(made.voucher)
    registrar(net, store).run_once()
    count, registered_at = net.to0_count(), net.registered_at(made.guid)
    net.clock.advance(60)

    again = registrar(net, store).run_once()

    assert again == []
    assert net.to0_count() == count
    assert net.registered_at(made.guid) == registered_at


def test_a_registration_inside_the_margin_is_renewed_before_it_expires(
    net: Net, store: SqlOwnerStore
) -> None:
    # Threat: a registration that lapses leaves a device that powers on later without an owner.
    made, unattended = net.device(), net.device()
    store.add(made.voucher)
    registrar(net, store).run_once()
    first_end = net.clock() + datetime.timedelta(seconds=MAX_WAIT)
    # The control: registered once at the same time, never renewed.
    assert register(net.rv_url, unattended.voucher, net.pki.owner.key, ADDRS, MAX_WAIT) == MAX_WAIT

    net.clock.advance(MAX_WAIT - MARGIN.total_seconds() + 1)
    renewed = registrar(net, store).run_once()

    new_end = net.clock() + datetime.timedelta(seconds=MAX_WAIT)
    assert renewed == [Registration(str(made.guid), new_end, [net.rv_url], [])]
    owned = store.get(made.guid)
    assert owned is not None and owned.registered_until == new_end
    net.clock.advance(MARGIN.total_seconds())  # past the first registration's end
    assert net.clock() > first_end
    assert find_owner(net.rv_url, made.credential, made.key, timeout=5).addrs == ADDRS
    with pytest.raises(ServerError) as caught:
        find_owner(net.rv_url, unattended.credential, unattended.key, timeout=5)
    assert caught.value.code == ErrorCode.RESOURCE_NOT_FOUND


# --- rendezvous servers that are down ----------------------------------------------------------


def test_a_rendezvous_server_that_is_down_is_reported_and_tried_again(
    net: Net, store: SqlOwnerStore
) -> None:
    port = free_port()
    with net.manufacturer(RendezvousInfo((directive(port),))) as factory:
        made = net.device(factory)
    store.add(made.voucher)
    registrar_ = registrar(net, store)

    (failed,) = registrar_.run_once()

    assert failed.guid == str(made.guid) and failed.until is None and failed.rendezvous == []
    assert len(failed.errors) == 1 and failed.errors[0].startswith(f"http://127.0.0.1:{port}: ")
    owned = store.get(made.guid)
    assert owned is not None and owned.registered_until is None
    (retried,) = registrar_.run_once()
    assert retried.guid == str(made.guid) and retried.errors
    with running(net.rendezvous_app(), port=port) as url:
        (registered,) = registrar_.run_once()
        assert registered.rendezvous == [url] and registered.errors == []
        assert find_owner(url, made.credential, made.key, timeout=5).addrs == ADDRS


def test_a_voucher_answered_by_one_of_its_servers_counts_as_registered(
    net: Net, store: SqlOwnerStore
) -> None:
    port = free_port()
    rv_info = RendezvousInfo((directive(port), directive(port_of(net.rv_url))))
    with net.manufacturer(rv_info) as factory:
        made = net.device(factory)
    store.add(made.voucher)

    (registration,) = registrar(net, store).run_once()

    assert registration.until == net.clock() + datetime.timedelta(seconds=MAX_WAIT)
    assert registration.rendezvous == [net.rv_url]
    assert len(registration.errors) == 1
    assert registration.errors[0].startswith(f"http://127.0.0.1:{port}: ")
    assert find_owner(net.rv_url, made.credential, made.key, timeout=5).addrs == ADDRS


def test_a_voucher_whose_server_is_down_does_not_hold_up_the_others(
    net: Net, store: SqlOwnerStore
) -> None:
    # Threat: one voucher naming a dead rendezvous server keeps every later import unregistered.
    with net.manufacturer(RendezvousInfo((directive(free_port()),))) as factory:
        stuck = net.device(factory)
    store.add(stuck.voucher)  # imported first: due first
    made = net.device()
    store.add(made.voucher)

    registrations = by_guid(registrar(net, store).run_once())

    assert registrations[str(stuck.guid)].until is None
    assert registrations[str(made.guid)].until is not None
    assert find_owner(net.rv_url, made.credential, made.key, timeout=5).addrs == ADDRS


# --- vouchers replaced by TO2 ------------------------------------------------------------------


def test_a_voucher_replaced_by_an_onboarding_is_no_longer_registered(
    net: Net, store: SqlOwnerStore
) -> None:
    made = net.device()
    store.add(made.voucher)
    with owner_server(net, store) as addrs:
        registrar(net, store, addrs).run_once()
        new = onboard(net, made)
    owned = store.get(made.guid)
    assert owned is not None and owned.replacement_guid == new.guid
    registered_at = net.registered_at(made.guid)

    net.clock.advance(MAX_WAIT)  # the old registration is due, and then expired
    registrations = by_guid(registrar(net, store).run_once())

    assert str(made.guid) not in registrations
    assert str(new.guid) in registrations
    assert net.registered_at(made.guid) == registered_at
    with pytest.raises(ServerError):
        find_owner(net.rv_url, made.credential, made.key, timeout=5)


def test_the_replacement_voucher_is_registered(net: Net, store: SqlOwnerStore) -> None:
    # Threat: a device that onboards again with its new credential (a reset, or a power cut
    # before onboarding.json was written) finds no owner at the rendezvous server.
    made = net.device()
    store.add(made.voucher)
    with owner_server(net, store) as addrs:
        registrar_ = registrar(net, store, addrs)
        registrar_.run_once()
        new = onboard(net, made)

        registration = by_guid(registrar_.run_once())[str(new.guid)]

        assert registration.errors == []
        assert registration.until == net.clock() + datetime.timedelta(seconds=MAX_WAIT)
        assert find_owner(net.rv_url, new, made.key, timeout=5).addrs == addrs


# --- the background thread and the TO2 address ------------------------------------------------


def test_the_background_thread_registers_a_new_import_and_stops(
    net: Net, store: SqlOwnerStore
) -> None:
    registrar_ = registrar(net, store)
    registrar_.start()
    try:
        made = net.device()
        store.add(made.voucher)  # imported while the thread runs
        deadline = time.monotonic() + 5
        owned = store.get(made.guid)
        while owned is not None and owned.registered_until is None:
            assert time.monotonic() < deadline, "not registered within 5 s"
            time.sleep(0.05)
            owned = store.get(made.guid)
    finally:
        registrar_.stop()
    assert not any(t.name == "fdo-to0" for t in threading.enumerate())
    assert find_owner(net.rv_url, made.credential, made.key, timeout=5).addrs == ADDRS


def test_registering_without_a_to2_address_names_the_missing_address(
    net: Net, store: SqlOwnerStore
) -> None:
    made = net.device()
    store.add(made.voucher)
    count = net.to0_count()

    with pytest.raises(FdoError, match="TO2 address"):
        registrar(net, store, None).register_one(made.voucher)

    assert net.to0_count() == count
    owned = store.get(made.guid)
    assert owned is not None and owned.registered_until is None
