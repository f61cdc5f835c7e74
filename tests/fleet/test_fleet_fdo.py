"""FDO mounted in the fleet manager: a device made at a separate manufacturer onboards against
the fleet manager's own rendezvous server and owner (one endpoint, one database), gets the fleet
manager's address, the repository's TUF root and a token, and enrolls as its new GUID. Real
servers on 127.0.0.1, a real device sysroot, nothing mocked."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from afield._serving import running
from afield.device.lifecycle import Device
from afield.device.onboard import OnboardOptions, manufacture, onboard
from afield.fdo.pki import Pki, init_pki
from afield.fdo.rendezvous import RendezvousDirective, RendezvousInfo, RvProtocol
from afield.fdo.server import ManufacturerSettings, SqlVoucherStore, create_manufacturer_app
from afield.fleet.app import FleetSettings, create_app
from afield.fleet.auth import create_token
from afield.fleet.fdo import FdoSettings, to2_address
from afield.fleet.protocol import DESIRED_PATH, ENROLL_PATH, authorization, make_csr, new_device_key
from afield.release import init_repository
from afield.trust import Keyring


@dataclass
class Site:
    fleet_url: str
    manufacturer_url: str
    admin: httpx.Client
    pki: Pki
    vouchers: SqlVoucherStore
    repo: Path

    def sell(self, guid: object) -> httpx.Response:
        stored = self.vouchers.get(guid)  # type: ignore[arg-type]
        assert stored is not None
        voucher = stored.voucher.extend(self.pki.manufacturer.key, self.pki.owner.public_key())
        return self.admin.post(
            "/api/v1/vouchers",
            content=voucher.to_pem().encode(),
            headers={"Content-Type": "application/x-pem-file"},
        )


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    pki = init_pki(tmp_path / "pki")
    repo = tmp_path / "repo"
    (repo / "ostree").mkdir(parents=True)  # the repository app serves it; no commit needed
    init_repository(repo, Keyring.generate(tmp_path / "keys"))
    settings = FleetSettings(
        db_url=f"sqlite:///{tmp_path / 'fleet.db'}",
        repo_dir=repo,
        runner_interval=0,
        fdo=FdoSettings(pki_dir=tmp_path / "pki", labels={"via": "fdo"}),
    )
    app = create_app(settings)
    token = create_token(app.state.db, "ops", "admin")
    vouchers = SqlVoucherStore(f"sqlite:///{tmp_path / 'manufacturer.db'}")
    with running(app) as fleet_url:
        app.state.fdo.ready(fleet_url)
        host, port = fleet_url.removeprefix("http://").rsplit(":", 1)
        directive = RendezvousDirective.build(
            ip=host, dev_port=int(port), owner_port=int(port), protocol=RvProtocol.HTTP
        )
        factory = ManufacturerSettings(rv_info=RendezvousInfo((directive,)))
        manufacturer = create_manufacturer_app(pki, vouchers, factory)
        with (
            running(manufacturer) as manufacturer_url,
            httpx.Client(base_url=fleet_url, headers={"Authorization": f"Bearer {token}"}) as admin,
        ):
            yield Site(fleet_url, manufacturer_url, admin, pki, vouchers, repo)
    vouchers.close()


def test_a_device_onboards_through_the_fleet_manager_and_enrolls_as_its_new_guid(
    site: Site, tmp_path: Path
) -> None:
    device = Device.init(tmp_path / "device", "gateway")
    made, _ = manufacture(device, site.manufacturer_url, device_info="test gateway")
    imported = site.sell(made.guid)
    assert imported.status_code == 201, imported.text
    assert imported.json()["registered"] is True, imported.json()

    result = onboard(device, OnboardOptions(rounds=1, timeout=10))
    assert result.handoff["fleet_url"] == site.fleet_url
    root = device.state.directory / "trust" / "root.json"
    assert root.read_bytes() == (site.repo / "tuf" / "root.json").read_bytes()
    token = (device.state.directory / "fdo" / "enroll-token").read_text()

    key = new_device_key()
    with httpx.Client(base_url=site.fleet_url) as client:
        enrolled = client.post(ENROLL_PATH, json={"token": token, "csr": make_csr(key)})
        assert enrolled.status_code == 201, enrolled.text
        device_id = enrolled.json()["device_id"]
        assert device_id == result.new_guid
        auth = authorization(key, device_id, "GET", DESIRED_PATH, b"", _now())
        assert client.get(DESIRED_PATH, headers={"Authorization": auth}).status_code == 200
    shown = site.admin.get(f"/api/v1/devices/{device_id}").json()
    assert shown["labels"] == {"via": "fdo"}
    kinds = [e["kind"] for e in site.admin.get("/api/v1/events").json()["data"]]
    assert "voucher.import" in kinds and "device.enrolled" in kinds
    assert "afield_fdo_messages_total" in site.admin.get("/metrics").text


def test_a_voucher_import_needs_an_admin_and_a_voucher(site: Site) -> None:
    response = httpx.post(f"{site.fleet_url}/api/v1/vouchers", content=b"x")
    assert response.status_code == 401
    garbage = site.admin.post("/api/v1/vouchers", content=b"not a voucher at all")
    assert garbage.status_code == 400, garbage.text
    assert "voucher" in garbage.json()["error"]


def test_a_voucher_not_extended_to_this_owner_is_refused(site: Site, tmp_path: Path) -> None:
    device = Device.init(tmp_path / "device", "gateway")
    made, _ = manufacture(device, site.manufacturer_url, device_info="test gateway")
    stored = site.vouchers.get(made.guid)
    assert stored is not None
    response = site.admin.post("/api/v1/vouchers", content=stored.voucher.to_pem().encode())
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "body"


def test_to2_address_accepts_ips_and_names() -> None:
    (entry,) = to2_address("http://127.0.0.1:8080").entries
    assert (entry.ip, entry.dns, entry.port) == (bytes([127, 0, 0, 1]), None, 8080)
    (named,) = to2_address("https://fleet.example.com").entries
    assert (named.ip, named.dns, named.port) == (None, "fleet.example.com", 443)


def _now() -> float:
    return time.time()
