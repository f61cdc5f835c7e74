"""Zero-touch onboarding from the command line, every server a real `afield fdo serve` process:
DI at the factory, the voucher exported to its owner and imported there (which registers it
with the rendezvous server), then `afield device onboard` and what the device keeps."""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from afield.device.lifecycle import Device
from afield.fdo.pki import Pki
from tests.conftest import afield, afield_server

pytestmark = pytest.mark.root

TUF_ROOT = json.dumps({"signed": {"_type": "root", "version": 1}, "signatures": []})
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOnboardTestKey ops@example.com"
TOKEN = "import-secret-0123456789"  # noqa: S105 (a test token)


def _serve(log: Path, *args: str) -> AbstractContextManager[str]:
    """Run `afield fdo serve ...` on a free port; its URL."""
    return afield_server(log, "fdo", "serve", *args)


def _json(*args: str) -> dict[str, object]:
    result: dict[str, object] = json.loads(afield(*args, "--json", check=True).stdout)
    return result


def test_a_device_onboards_itself_from_the_command_line(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    afield("fdo", "init", "--dir", str(pki), check=True)
    (tmp_path / "root.json").write_text(TUF_ROOT)
    (tmp_path / "keys.pub").write_text(SSH_KEY + "\n")
    (tmp_path / "app.conf").write_text("mode = field\n")
    mfg_db = f"sqlite:///{tmp_path / 'mfg.db'}"
    owner_db = f"sqlite:///{tmp_path / 'owner.db'}"
    device = Device.init(tmp_path / "sysroot", "gateway")
    sysroot = str(device.sysroot_path)
    manufacturer_cert = str(Pki.cert_path(pki, "manufacturer"))
    with (
        _serve(tmp_path / "rv.log", "rendezvous", "--trust-manufacturer", manufacturer_cert,
               "--db", f"sqlite:///{tmp_path / 'rv.db'}") as rv_url,
        _serve(tmp_path / "mfg.log", "manufacturer", "--pki", str(pki), "--db", mfg_db,
               "--rendezvous", rv_url.removeprefix("http://")) as mfg_url,
        _serve(tmp_path / "owner.log", "owner", "--pki", str(pki), "--db", owner_db,
               "--fleet-url", "https://fleet.example.com", "--tuf-root",
               str(tmp_path / "root.json"), "--ssh-keys", str(tmp_path / "keys.pub"),
               "--file", f"{tmp_path / 'app.conf'}=/var/lib/app/app.conf",
               "--import-token", TOKEN) as owner_url,
    ):  # fmt: skip
        made = _json("device", "manufacture", "--sysroot", sysroot, "--manufacturer", mfg_url)
        guid = str(made["guid"])
        assert _json("device", "status", "--sysroot", sysroot)["onboarding"] == {
            "guid": guid,
            "completed": False,
            "fleet_url": None,
        }
        _json("fdo", "voucher", "export", "--db", mfg_db, "--guid", guid,
              "--key", str(Pki.key_path(pki, "manufacturer")),
              "--to", str(Pki.cert_path(pki, "owner")), "--dir", str(tmp_path / "out"))  # fmt: skip
        voucher = tmp_path / "out" / f"{guid}.pem"
        refused = afield("fdo", "voucher", "import", str(voucher), "--owner", owner_url,
                         "--token", "wrong")  # fmt: skip
        assert refused.returncode != 0 and "token" in refused.stderr
        imported = _json("fdo", "voucher", "import", str(voucher), "--owner", owner_url,
                         "--token", TOKEN)  # fmt: skip
        assert imported["imported"] == [{"guid": guid, "registered": True}]

        result = _json("device", "onboard", "--sysroot", sysroot, "--rounds", "1")
        again = afield("device", "onboard", "--sysroot", sysroot)
    assert result["guid"] == guid and result["new_guid"] != guid
    assert result["owner_url"] == owner_url
    status = _json("device", "status", "--sysroot", sysroot)["onboarding"]
    assert status["completed"] is True
    assert status["guid"] == result["new_guid"]
    assert status["fleet_url"] == "https://fleet.example.com"
    state = device.state.directory
    assert (state / "trust" / "root.json").read_text() == TUF_ROOT
    token = state / "fdo" / "enroll-token"
    assert token.stat().st_mode & 0o777 == 0o600 and len(token.read_text()) >= 32
    var = state.parent.parent
    keys = var / "roothome" / ".ssh" / "authorized_keys"
    assert keys.read_text() == SSH_KEY + "\n" and keys.stat().st_mode & 0o777 == 0o600
    assert (var / "lib" / "app" / "app.conf").read_text() == "mode = field\n"
    assert [e["event"] for e in device.state.events()][-1] == "onboarded"
    assert again.returncode != 0 and "already onboarded" in again.stderr
