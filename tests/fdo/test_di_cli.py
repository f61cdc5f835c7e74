"""DI from the command line: `afield fdo serve manufacturer` and `afield device manufacture`."""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from afield.device.lifecycle import Device
from afield.fdo.cbor import decode
from afield.fdo.credential import DeviceCredential
from afield.fdo.server import SqlVoucherStore
from tests.conftest import afield, afield_server

pytestmark = pytest.mark.root


def _manufacturer(pki: Path, db: str, *rendezvous: str) -> AbstractContextManager[str]:
    args = ["fdo", "serve", "manufacturer", "--pki", str(pki), "--db", db]
    for value in rendezvous:
        args += ["--rendezvous", value]
    return afield_server(pki.parent / "manufacturer.log", *args)


def test_a_device_is_manufactured_from_the_command_line(tmp_path: Path) -> None:
    afield("fdo", "init", "--dir", str(tmp_path / "pki"), check=True)
    db = f"sqlite:///{tmp_path / 'vouchers.db'}"
    device = Device.init(tmp_path / "sysroot", "gateway")
    with _manufacturer(tmp_path / "pki", db, "rv.example.com:8040/https", "127.0.0.1:8041") as url:
        done = afield(
            "device",
            "manufacture",
            "--sysroot",
            str(device.sysroot_path),
            "--manufacturer",
            url,
            "--device-info",
            "acme gw-100",
            "--json",
            check=True,
        )
    report = json.loads(done.stdout)
    credential_path = Path(report["credential"])
    assert credential_path.stat().st_mode & 0o777 == 0o600
    credential = DeviceCredential.from_cbor(decode(credential_path.read_bytes()))
    assert str(credential.guid) == report["guid"] and credential.device_info == "acme gw-100"
    assert len(credential.rv_info.directives) == 2
    store = SqlVoucherStore(db)
    try:
        (stored,) = [store.get(g) for g in store.guids()]
    finally:
        store.close()
    assert stored is not None and stored.guid == credential.guid
    stored.voucher.verify(hmac_secret=credential.hmac_secret)
    assert [e["event"] for e in device.state.events()][-1] == "manufactured"


def test_a_bad_rendezvous_address_exits_2_naming_it(tmp_path: Path) -> None:
    afield("fdo", "init", "--dir", str(tmp_path / "pki"), check=True)
    for bad in ("no-port", "host:99999", "host:80/gopher"):
        done = afield(
            "fdo", "serve", "manufacturer", "--pki", str(tmp_path / "pki"), "--rendezvous", bad
        )
        assert done.returncode == 2 and "--rendezvous" in done.stderr, done.stderr


def test_manufacture_against_nothing_is_a_clear_error(tmp_path: Path) -> None:
    device = Device.init(tmp_path / "sysroot", "gateway")
    done = afield(
        "device",
        "manufacture",
        "--sysroot",
        str(device.sysroot_path),
        "--manufacturer",
        "http://127.0.0.1:1",
    )
    assert done.returncode != 0 and "127.0.0.1:1" in done.stderr
    assert not (device.state.directory / "fdo" / "credential.cbor").exists()
