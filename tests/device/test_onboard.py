"""Zero-touch onboarding on the device (``afield.device.onboard``) against real servers on
127.0.0.1: a rendezvous server, owners serving TO2 with a hand-off, and a manufacturer per
RendezvousInfo for DI into a fresh device sysroot, as ``afield device manufacture`` does it.

Vouchers are extended to the owner, imported into the owner's store and registered by the
owner's :class:`~afield.fdo.server.registrar.Registrar`. Nothing is mocked but ``sleep``, which
records the waits instead of waiting."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from afield.device.lifecycle import Device
from afield.device.onboard import OnboardOptions, OnboardResult, onboard, onboarding_status
from afield.errors import DeviceError
from afield.fdo.cbor import decode
from afield.fdo.client import manufacture
from afield.fdo.credential import DeviceCredential
from afield.fdo.modules import DOWNLOAD, DownloadFile, Handoff
from afield.fdo.pki import Pki, init_pki
from afield.fdo.rendezvous import (
    RendezvousDirective,
    RendezvousInfo,
    RendezvousInstr,
    RvProtocol,
    RvTo2Addr,
    RvTo2AddrEntry,
    RvVar,
    TransportProtocol,
)
from afield.fdo.server import (
    ManufacturerSettings,
    OnboardingRequest,
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
from afield.fdo.server.handoff import HandoffProvider
from afield.fdo.server.registrar import Registrar
from afield.fdo.serviceinfo import ServiceInfoKV
from afield.fdo.types import Guid
from afield.fdo.voucher import Voucher

FLEET_URL = "https://fleet.example.com"
TUF_ROOT = json.dumps({"signed": {"_type": "root", "version": 1}, "signatures": []}).encode()
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOnboardTestKey ops@example.com"
APP_CONF = b"mode = field\n"
NOTES = b"welcome to the fleet\n"
HANDOFF = Handoff(
    fleet_url=FLEET_URL,
    tuf_root=TUF_ROOT,
    ssh_keys=(SSH_KEY,),
    files=(DownloadFile("/var/lib/app/app.conf", APP_CONF), DownloadFile("notes.txt", NOTES)),
)
DELAY = 10
"""RVDelaysec of the directives that are meant to fail."""
RETRY_WAIT = 1000.0
"""Seconds between passes: far from DELAY, so the recorded sleeps tell the two apart."""


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def free_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, then closed again)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def directive(
    port: int, *, delay: int | None = None, dev_only: bool = False
) -> RendezvousDirective:
    """A server on 127.0.0.1:``port`` over HTTP; ``dev_only`` keeps the owner's TO0 away."""
    return RendezvousDirective.build(
        ip="127.0.0.1",
        dev_port=port,
        owner_port=port,
        protocol=RvProtocol.HTTP,
        dev_only=dev_only,
        delay=delay,
    )


def to2_addrs(*ports: int) -> RvTo2Addr:
    return RvTo2Addr(
        tuple(RvTo2AddrEntry(b"\x7f\x00\x00\x01", None, p, TransportProtocol.HTTP) for p in ports)
    )


def refused_download(request: OnboardingRequest) -> list[ServiceInfoKV]:
    """A proper hand-off, then a file the device must refuse to write: /etc/passwd."""
    data = b"root::0:0::/root:/bin/sh\n"
    return [
        *HANDOFF.owner_kvs(),
        ServiceInfoKV.of(DOWNLOAD, "active", True),
        ServiceInfoKV.of(DOWNLOAD, "name", "/etc/passwd"),
        ServiceInfoKV.of(DOWNLOAD, "length", len(data)),
        ServiceInfoKV.of(DOWNLOAD, "sha-384", hashlib.sha384(data).digest()),
        ServiceInfoKV.of(DOWNLOAD, "data", data),
    ]


@dataclass
class Fleet:
    """The module's servers: a rendezvous server owners register with, one nobody registers
    with (``stranger_url``), an owner handing over HANDOFF and one handing over a file the
    device refuses, both on one owner store."""

    pki: Pki
    directory: Path
    rv_url: str
    stranger_url: str
    owner_url: str
    refusing_url: str
    store: SqlOwnerStore
    tokens: dict[str, str]
    http: httpx.Client

    @contextmanager
    def manufacturer(self, *directives: RendezvousDirective) -> Iterator[Factory]:
        """A DI server whose vouchers carry ``directives`` (default: the rendezvous server)."""
        rv_info = RendezvousInfo(directives or (directive(port_of(self.rv_url)),))
        path = self.directory / f"mfg-{time.monotonic_ns()}.db"
        store = SqlVoucherStore(f"sqlite:///{path}")
        app = create_manufacturer_app(self.pki, store, ManufacturerSettings(rv_info=rv_info))
        try:
            with running(app) as url:
                yield Factory(self, url, store)
        finally:
            store.close()

    def registrar(self, owner_url: str | None = None) -> Registrar:
        addrs = to2_addrs(port_of(owner_url or self.owner_url))
        return Registrar(self.store, self.pki.owner.key, addrs, wait_seconds=3600, timeout=5)

    def to1_count(self) -> int:
        """How many TO1.HelloRV (30) the rendezvous server has received."""
        text = self.http.get(f"{self.rv_url}/metrics").text
        found = re.search(r'^afield_fdo_messages_total\{type="30"\} (\d+)$', text, re.MULTILINE)
        return int(found.group(1)) if found else 0


@dataclass
class Factory:
    """A running manufacturer: DI into device sysroots, vouchers handed to the fleet's owner."""

    fleet: Fleet
    url: str
    store: SqlVoucherStore

    def device(self, sysroot: Path) -> Device:
        """A fresh device sysroot with the credential DI leaves (``afield device manufacture``)."""
        device = Device.init(sysroot, "gateway")
        directory = device.state.directory / "fdo"
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        manufacture(self.url, directory / "credential.cbor", device_info="onboard test")
        return device

    def sell(self, device: Device) -> Voucher:
        """Extend the device's voucher to the owner and import it (not yet registered)."""
        stored = self.store.get(credential_of(device).guid)
        assert stored is not None
        pki = self.fleet.pki
        voucher = stored.voucher.extend(pki.manufacturer.key, pki.owner.public_key())
        self.fleet.store.add(voucher)
        return voucher


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    directory = tmp_path_factory.mktemp("onboard")
    pki = init_pki(directory / "pki")
    rv_settings = RendezvousSettings((pki.manufacturer.public_key(),), max_wait_seconds=3600)
    rv_store = SqlRendezvousStore(f"sqlite:///{directory / 'rv.db'}")
    stranger_store = SqlRendezvousStore(f"sqlite:///{directory / 'stranger.db'}")
    store = SqlOwnerStore(f"sqlite:///{directory / 'owner.db'}", owner_key=pki.owner.public_key())
    tokens: dict[str, str] = {}

    def issue_token(guid: Guid) -> str:
        tokens[str(guid)] = f"enroll-{secrets.token_urlsafe(24)}"
        return tokens[str(guid)]

    cas = [pki.device_ca.cert]
    owner = OwnerSettings(cas, service_info=HandoffProvider(HANDOFF, issue_token))
    refusing = OwnerSettings(cas, service_info=refused_download)
    try:
        with (
            running(create_rendezvous_app(rv_store, rv_settings)) as rv_url,
            running(create_rendezvous_app(stranger_store, rv_settings)) as stranger_url,
            running(create_owner_app(pki, store, owner)) as owner_url,
            running(create_owner_app(pki, store, refusing)) as refusing_url,
            httpx.Client(timeout=10) as http,
        ):
            yield Fleet(
                pki, directory, rv_url, stranger_url, owner_url, refusing_url, store, tokens, http
            )
    finally:
        for closing in (rv_store, stranger_store, store):
            closing.close()


@pytest.fixture(scope="module")
def factory(fleet: Fleet) -> Iterator[Factory]:
    """The manufacturer whose devices go to the module's rendezvous server."""
    with fleet.manufacturer() as made:
        yield made


@dataclass
class Sleeps:
    """What onboarding would have slept."""

    waits: list[float] = field(default_factory=list)

    def options(self, rounds: int = 1) -> OnboardOptions:
        return OnboardOptions(
            rounds=rounds, retry_wait=RETRY_WAIT, timeout=5, sleep=self.waits.append
        )

    def around(self, seconds: float) -> list[float]:
        """The waits within ±25 % of ``seconds``."""
        return [w for w in self.waits if 0.75 * seconds <= w <= 1.25 * seconds]


def credential_of(device: Device) -> DeviceCredential:
    path = device.state.directory / "fdo" / "credential.cbor"
    return DeviceCredential.from_cbor(decode(path.read_bytes()))


def assert_nothing_kept(device: Device, credential: bytes) -> None:
    """The device is as DI left it: no hand-off, no record, the same credential."""
    state = device.state.directory
    assert (state / "fdo" / "credential.cbor").read_bytes() == credential
    assert not (state / "onboarding.json").exists()
    assert not (state / "trust" / "root.json").exists()
    assert not (state / "fdo" / "enroll-token").exists()
    var = state.parent.parent
    assert not (var / "roothome").exists()
    assert not (var / "lib" / "app").exists()
    assert not (var / "lib" / "afield" / "files").exists()
    assert onboarding_status(device)["completed"] is False
    assert "onboarded" not in [e["event"] for e in device.state.events()]


def onboarded(fleet: Fleet, factory: Factory, tmp_path: Path) -> tuple[Device, OnboardResult]:
    device = factory.device(tmp_path / "sysroot")
    factory.sell(device)
    fleet.registrar().run_once()
    return device, onboard(device, Sleeps().options())


# --- the way it should go ----------------------------------------------------------------------


def test_a_device_onboards_and_keeps_the_handoff(
    fleet: Fleet, factory: Factory, tmp_path: Path
) -> None:
    device = factory.device(tmp_path / "sysroot")
    guid = factory.sell(device).header.guid
    assert str(guid) in {r.guid for r in fleet.registrar().run_once()}
    sleeps = Sleeps()

    result = onboard(device, sleeps.options())

    new = credential_of(device)
    assert result.guid == str(guid)
    assert result.new_guid == str(new.guid) != str(guid)
    assert (result.owner_url, result.rendezvous_url) == (fleet.owner_url, fleet.rv_url)
    assert result.attempts == [] and result.seconds > 0
    assert result.handoff == {
        "fleet_url": FLEET_URL,
        "enrollment_token": True,
        "tuf_root_sha256": hashlib.sha256(TUF_ROOT).hexdigest(),
        "ssh_keys": 1,
        "files": [
            {"path": "/var/lib/app/app.conf", "length": len(APP_CONF)},
            {"path": "/var/lib/afield/files/notes.txt", "length": len(NOTES)},
        ],
    }
    assert all(w == 0 for w in sleeps.waits)
    owned = fleet.store.get(guid)
    assert owned is not None and owned.replacement_guid == new.guid


def test_every_handoff_file_is_in_place_with_its_mode(
    fleet: Fleet, factory: Factory, tmp_path: Path
) -> None:
    device, result = onboarded(fleet, factory, tmp_path)

    state = device.state.directory
    var = state.parent.parent

    def mode(path: Path) -> int:
        return path.stat().st_mode & 0o777

    app_conf, notes = var / "lib/app/app.conf", var / "lib/afield/files/notes.txt"
    assert (app_conf.read_bytes(), notes.read_bytes()) == (APP_CONF, NOTES)
    assert mode(app_conf) == mode(notes) == 0o644
    keys = var / "roothome/.ssh/authorized_keys"
    assert keys.read_text() == SSH_KEY + "\n" and mode(keys) == 0o600
    assert mode(keys.parent) == 0o700
    assert (state / "trust/root.json").read_bytes() == TUF_ROOT
    token = state / "fdo/enroll-token"
    assert token.read_text() == fleet.tokens[result.new_guid]
    assert mode(token) == 0o600
    credential = state / "fdo/credential.cbor"
    assert str(credential_of(device).guid) == result.new_guid and mode(credential) == 0o600


def test_the_record_says_completed_and_carries_no_token(
    fleet: Fleet, factory: Factory, tmp_path: Path
) -> None:
    # Threat: the one-time enrollment token leaks into files that logs and support bundles read.
    device, result = onboarded(fleet, factory, tmp_path)

    status = onboarding_status(device)
    assert status["completed"] is True
    assert status["guid"] == result.new_guid and status["previous_guid"] == result.guid
    assert (status["fleet_url"], status["owner_url"]) == (FLEET_URL, fleet.owner_url)
    events = device.state.events()
    assert events[-1]["event"] == "onboarded" and events[-1]["new_guid"] == result.new_guid
    token = fleet.tokens[result.new_guid]
    assert token not in device.state.journal.read_text()
    assert token not in (device.state.directory / "onboarding.json").read_text()


def test_a_bypass_directive_sends_the_device_straight_to_its_owner(
    fleet: Fleet, tmp_path: Path
) -> None:
    bypass = RendezvousDirective(
        (
            *RendezvousDirective.build(
                ip="127.0.0.1", dev_port=port_of(fleet.owner_url), protocol=RvProtocol.HTTP
            ).instructions,
            RendezvousInstr(RvVar.BYPASS),
        )
    )
    with fleet.manufacturer(bypass) as factory:
        device = factory.device(tmp_path / "sysroot")
        guid = factory.sell(device).header.guid  # never registered: no rendezvous server
    to1 = fleet.to1_count()

    result = onboard(device, Sleeps().options())

    assert (result.guid, result.owner_url, result.rendezvous_url) == (
        str(guid),
        fleet.owner_url,
        None,
    )
    assert onboarding_status(device)["completed"] is True
    assert fleet.to1_count() == to1


# --- directives that fail ------------------------------------------------------------------------


def test_a_directive_that_does_not_know_the_device_is_followed_by_the_next(
    fleet: Fleet, tmp_path: Path
) -> None:
    # The first rendezvous server answers, but no owner registered the device there.
    first = directive(port_of(fleet.stranger_url), delay=DELAY, dev_only=True)
    with fleet.manufacturer(first, directive(port_of(fleet.rv_url))) as factory:
        device = factory.device(tmp_path / "sysroot")
        factory.sell(device)
    fleet.registrar().run_once()
    sleeps = Sleeps()

    result = onboard(device, sleeps.options(rounds=2))

    assert result.rendezvous_url == fleet.rv_url
    assert len(result.attempts) == 1
    assert result.attempts[0].startswith(f"TO1 {fleet.stranger_url}: ")
    assert "RESOURCE_NOT_FOUND" in result.attempts[0]
    assert len(sleeps.around(DELAY)) == 1 and sleeps.around(RETRY_WAIT) == []


def test_a_rendezvous_server_that_is_down_is_followed_by_the_next(
    fleet: Fleet, tmp_path: Path
) -> None:
    down = free_port()
    first = directive(down, delay=DELAY, dev_only=True)
    with fleet.manufacturer(first, directive(port_of(fleet.rv_url))) as factory:
        device = factory.device(tmp_path / "sysroot")
        factory.sell(device)
    fleet.registrar().run_once()
    sleeps = Sleeps()

    result = onboard(device, sleeps.options(rounds=2))

    assert result.rendezvous_url == fleet.rv_url
    assert len(result.attempts) == 1
    assert result.attempts[0].startswith(f"TO1 http://127.0.0.1:{down}: ")
    assert len(sleeps.around(DELAY)) == 1 and sleeps.around(RETRY_WAIT) == []


def test_an_owner_address_that_is_down_is_followed_by_the_next(
    fleet: Fleet, factory: Factory, tmp_path: Path
) -> None:
    device = factory.device(tmp_path / "sysroot")
    voucher = factory.sell(device)
    addrs = to2_addrs(free_port(), port_of(fleet.owner_url))
    registrar = Registrar(fleet.store, fleet.pki.owner.key, addrs, timeout=5)
    assert registrar.register_one(voucher).until is not None

    result = onboard(device, Sleeps().options())

    assert result.owner_url == fleet.owner_url
    assert len(result.attempts) == 1 and result.attempts[0].startswith("TO2 http://127.0.0.1:")


def test_every_directive_failing_ends_in_a_device_error_and_keeps_nothing(
    fleet: Fleet, tmp_path: Path
) -> None:
    # Both rendezvous servers answer; no owner ever registered the device with either.
    stranger = port_of(fleet.stranger_url)
    directives = (directive(stranger, delay=DELAY), directive(port_of(fleet.rv_url)))
    with fleet.manufacturer(*directives) as factory:
        device = factory.device(tmp_path / "sysroot")
    credential = (device.state.directory / "fdo" / "credential.cbor").read_bytes()
    sleeps = Sleeps()

    with pytest.raises(DeviceError) as caught:
        onboard(device, sleeps.options(rounds=3))

    message = str(caught.value)
    assert "after 3 passes over 2 rendezvous directives (6 failures)" in message
    assert f"TO1 {fleet.stranger_url}: " in message and f"TO1 {fleet.rv_url}: " in message
    assert len(sleeps.around(RETRY_WAIT)) == 2  # between the passes, not after the last
    assert len(sleeps.around(DELAY)) == 3  # after the first directive, once a pass
    assert len(sleeps.waits) == 5  # nothing else: no 0 s waits, none after the last directive
    assert_nothing_kept(device, credential)


def test_a_handoff_the_device_refuses_keeps_nothing(
    fleet: Fleet, factory: Factory, tmp_path: Path
) -> None:
    # Threat: an owner (or whoever answers in its name) writes outside /var, e.g. /etc/passwd.
    device = factory.device(tmp_path / "sysroot")
    voucher = factory.sell(device)
    assert fleet.registrar(fleet.refusing_url).register_one(voucher).until is not None
    credential = (device.state.directory / "fdo" / "credential.cbor").read_bytes()

    with pytest.raises(DeviceError, match="/etc/passwd"):
        onboard(device, Sleeps().options())

    assert_nothing_kept(device, credential)
    owned = fleet.store.get(voucher.header.guid)
    assert owned is not None and owned.onboarded_at is None


# --- when onboarding cannot start ------------------------------------------------------------


def test_a_device_onboarded_already_is_refused(
    fleet: Fleet, factory: Factory, tmp_path: Path
) -> None:
    device, result = onboarded(fleet, factory, tmp_path)
    record = (device.state.directory / "onboarding.json").read_bytes()

    with pytest.raises(DeviceError, match="already onboarded"):
        onboard(device, Sleeps().options())

    assert (device.state.directory / "onboarding.json").read_bytes() == record
    assert str(credential_of(device).guid) == result.new_guid


def test_a_device_without_a_credential_is_told_to_run_manufacture(tmp_path: Path) -> None:
    device = Device.init(tmp_path / "sysroot", "gateway")
    sleeps = Sleeps()

    with pytest.raises(DeviceError, match="afield device manufacture"):
        onboard(device, sleeps.options())

    assert sleeps.waits == [] and onboarding_status(device) == {}
