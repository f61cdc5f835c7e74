"""The FDO servers on PostgreSQL: the three stores against a real cluster the test starts, and a
whole onboarding (DI, TO0, TO1, TO2, then TO0 and TO2 again with the replacement credential)
with every server's state in PostgreSQL instead of SQLite."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from afield.fdo.client import manufacture
from afield.fdo.credential import DeviceCredential
from afield.fdo.modules import AFIELD, DeviceModules, Handoff
from afield.fdo.pki import load_private_key
from afield.fdo.server.rendezvous import RvRegistration, SqlRendezvousStore
from afield.fdo.server.site import LocalSite, local_site
from afield.fdo.server.store import VoucherExistsError
from afield.fdo.serviceinfo import Devmod
from afield.fdo.to1 import find_owner
from afield.fdo.to2 import To2Result, owner_urls, run_to2
from afield.fdo.types import Guid
from tests.postgres import cluster, new_database

pytestmark = pytest.mark.root

DEVMOD = Devmod(
    os="Linux", arch="x86_64", version="1", device="pg", sep=":", bin="x86_64",
    modules=("devmod", AFIELD),
)  # fmt: skip
ROOT = b'{"signed": {"_type": "root"}, "signatures": []}'


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """One cluster for the module; each test makes its own databases."""
    with cluster() as admin:
        yield admin


@pytest.fixture
def site(postgres: str, tmp_path: Path) -> Iterator[LocalSite]:
    databases = {name: new_database(postgres) for name in ("manufacturer", "rendezvous", "owner")}
    handoff = Handoff(fleet_url="https://fleet.example.com", tuf_root=ROOT)
    with local_site(tmp_path / "site", handoff, databases) as served:
        yield served


def _onboard(site: LocalSite, credential: DeviceCredential, key_path: Path) -> To2Result:
    key = load_private_key(key_path)
    found = find_owner(site.rendezvous_url, credential, key)
    (owner,) = owner_urls(found.addrs)
    modules = DeviceModules()
    result = run_to2(owner, credential, key, to1d=found.to1d, devmod=DEVMOD, handler=modules)
    assert modules.handoff().tuf_root == ROOT
    return result


def test_a_device_onboards_twice_with_every_server_on_postgresql(
    site: LocalSite, tmp_path: Path
) -> None:
    path = tmp_path / "credential.cbor"
    credential = manufacture(site.manufacturer_url, path, device_info="pg device")
    assert site.sell(credential.guid).until is not None

    first = _onboard(site, credential, Path(f"{path}.key.pem"))

    assert first.credential.guid != credential.guid
    owned = site.owned.get(credential.guid)
    assert owned is not None and owned.replacement_guid == first.credential.guid
    # The owner registers the replacement voucher, and the device onboards with it again.
    (registered,) = site.registrar.run_once()
    assert registered.guid == str(first.credential.guid) and registered.errors == []
    second = _onboard(site, first.credential, Path(f"{path}.key.pem"))
    assert second.credential.guid != first.credential.guid


def test_voucher_store_on_postgresql(site: LocalSite, tmp_path: Path) -> None:
    credential = manufacture(site.manufacturer_url, tmp_path / "c.cbor", device_info="pg")
    stored = site.vouchers.get(credential.guid)
    assert stored is not None and stored.created.tzinfo is not None
    assert [v.guid for v in site.vouchers.vouchers()] == [credential.guid]
    with pytest.raises(VoucherExistsError):
        site.vouchers.add(stored.voucher, serial_number="again")


def test_rendezvous_store_keeps_times_in_utc_and_purges(postgres: str) -> None:
    store = SqlRendezvousStore(new_database(postgres))
    try:
        now = datetime.datetime.now(datetime.timezone(datetime.timedelta(hours=5)))
        guid = Guid.random()
        device = ec.generate_private_key(ec.SECP256R1()).public_key()
        registration = RvRegistration(
            guid=guid,
            to1d=b"\xd2\x84",
            device_key=device,
            owner_key_fingerprint="a" * 64,
            manufacturer_key_fingerprint="b" * 64,
            registered_at=now,
            expires_at=now + datetime.timedelta(seconds=60),
        )
        store.put(registration)
        got = store.get(guid)
        assert got is not None
        assert got.expires_at == registration.expires_at
        assert got.expires_at.utcoffset() == datetime.timedelta(0)
        assert store.purge(now + datetime.timedelta(seconds=59)) == 0
        assert store.purge(now + datetime.timedelta(seconds=60)) == 1
        assert store.get(guid) is None
    finally:
        store.close()
