"""``afield fdo``: init, voucher show/verify/extend, exit codes and messages that name the file.

Most tests run the real command line in-process (``afield.cli.main``, the same entry point the
``afield`` script calls, so error handling and exit codes are the real ones); one runs it in a
subprocess end to end.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from afield.cli import main
from afield.fdo import Voucher
from afield.fdo.pki import fingerprint, load_pki
from afield.fdo.types import PublicKey
from tests.conftest import afield
from tests.fdo.factory import world

VECTORS = Path(__file__).parents[1] / "fdo" / "vectors"
OV = VECTORS / "ov.pem"


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


Runner = Callable[..., Result]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Runner:
    def invoke(*args: str | Path) -> Result:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return invoke


def mfg_fingerprint() -> str:
    key = serialization.load_pem_private_key((VECTORS / "mfg_key.pem").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return fingerprint(key.public_key())


def test_init_writes_a_pki_and_reports_it_as_json(run: Runner, tmp_path: Path) -> None:
    result = run("fdo", "init", "--dir", tmp_path / "pki", "--curve", "P-256", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["curve"] == "P-256"
    pki = load_pki(tmp_path / "pki")
    assert isinstance(pki.owner.key, ec.EllipticCurvePrivateKey)
    assert pki.owner.key.curve.name == "secp256r1"
    for role in ("manufacturer", "device_ca", "owner"):
        assert data[role]["fingerprint"] == fingerprint(getattr(pki, role).cert)
        assert stat.S_IMODE(Path(data[role]["key"]).stat().st_mode) == 0o600


def test_init_over_an_existing_pki_exits_2_naming_the_file(run: Runner, tmp_path: Path) -> None:
    assert run("fdo", "init", "--dir", tmp_path).returncode == 0
    before = (tmp_path / "owner_key.pem").read_bytes()
    result = run("fdo", "init", "--dir", tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert str(tmp_path / "manufacturer_key.pem") in result.stderr
    assert (tmp_path / "owner_key.pem").read_bytes() == before
    assert run("fdo", "init", "--dir", tmp_path / "x", "--curve", "P-521").returncode == 2


def test_show_json_on_the_fido_device_onboard_rs_vector(run: Runner) -> None:
    result = run("fdo", "voucher", "show", OV, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["guid"] == "66b2146f-fec5-3ca6-ad01-7625990572ce"
    assert data["device_info"] == "go.fdo.example"
    assert data["protocol_version"] == 101
    assert data["manufacturer_key"]["type"] == "SECP384R1"
    assert data["manufacturer_key"]["fingerprint"] == mfg_fingerprint()
    assert data["entries"] == []
    assert data["device_cert_chain"] == 2
    text = run("fdo", "voucher", "show", OV).stdout
    assert "66b2146f-fec5-3ca6-ad01-7625990572ce" in text and mfg_fingerprint() in text


def test_show_json_lists_each_entrys_owner_key_fingerprint(run: Runner, tmp_path: Path) -> None:
    w = world()
    owners = [ec.generate_private_key(ec.SECP384R1()) for _ in range(2)]
    voucher = w.voucher.extend(w.mfg, PublicKey.from_key(owners[0].public_key()))
    voucher = voucher.extend(owners[0], PublicKey.from_key(owners[1].public_key()))
    (tmp_path / "ov.pem").write_text(voucher.to_pem())
    data = json.loads(run("fdo", "voucher", "show", tmp_path / "ov.pem", "--json").stdout)
    assert data["guid"] == str(w.header.guid)
    assert data["device_info"] == "afield test device"
    assert [e["owner_key"]["fingerprint"] for e in data["entries"]] == [
        fingerprint(o.public_key()) for o in owners
    ]
    assert data["owner_key"]["fingerprint"] == fingerprint(owners[1].public_key())
    assert [e["index"] for e in data["entries"]] == [0, 1]
    # Untrusted text from the voucher is printed as it is, never as console markup.
    text = run("fdo", "voucher", "show", tmp_path / "ov.pem").stdout
    assert "afield test device" in text and fingerprint(owners[1].public_key()) in text
    # Raw CBOR reads the same.
    (tmp_path / "ov.cbor").write_bytes(voucher.encode())
    raw = json.loads(run("fdo", "voucher", "show", tmp_path / "ov.cbor", "--json").stdout)
    assert raw["entries"] == data["entries"]


def test_device_info_with_console_markup_is_printed_verbatim(run: Runner, tmp_path: Path) -> None:
    # Threat: a voucher's DeviceInfo crafted as rich markup hides or fakes what is shown.
    w = world()
    header = replace(w.header, device_info="[/][bold red]owner: evil")
    voucher = Voucher.create(header, w.voucher.header_hmac, w.chain)
    (tmp_path / "ov.pem").write_text(voucher.to_pem())
    result = run("fdo", "voucher", "show", tmp_path / "ov.pem")
    assert result.returncode == 0, result.stderr
    assert "[/][bold red]owner: evil" in result.stdout


def test_verify_ok_exits_0(run: Runner) -> None:
    result = run("fdo", "voucher", "verify", OV, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["valid"] is True
    assert data["owner_key"]["fingerprint"] == mfg_fingerprint()


def test_tampered_voucher_exits_1_naming_the_entry(run: Runner, tmp_path: Path) -> None:
    # Threat: a forged transfer entry that redirects the device to an attacker's owner server.
    w = world()
    owner = ec.generate_private_key(ec.SECP384R1())
    voucher = w.voucher.extend(w.mfg, PublicKey.from_key(owner.public_key()))
    voucher = voucher.extend(owner, PublicKey.from_key(owner.public_key()))
    entry = voucher.entries[1]
    forged = replace(
        entry, signature=bytes([entry.signature[0] ^ 1]) + entry.signature[1:], raw=None
    )
    path = tmp_path / "forged.pem"
    path.write_text(replace(voucher, entries=[voucher.entries[0], forged]).to_pem())
    result = run("fdo", "voucher", "verify", path)
    assert result.returncode == 1
    assert str(path) in result.stderr
    assert "entry 1: not signed by the previous owner" in result.stderr
    assert "Traceback" not in result.stderr


def test_extend_then_verify_with_the_new_owner(run: Runner, tmp_path: Path) -> None:
    assert run("fdo", "init", "--dir", tmp_path / "pki").returncode == 0
    assert run("fdo", "init", "--dir", tmp_path / "next").returncode == 0
    owner_cert = tmp_path / "pki" / "owner_cert.pem"
    out = tmp_path / "ov1.pem"
    result = run(
        "fdo",
        "voucher",
        "extend",
        OV,
        "--key",
        VECTORS / "mfg_key.pem",
        "--to",
        owner_cert,
        "-o",
        out,
    )
    assert result.returncode == 0, result.stderr
    assert out.read_text().startswith("-----BEGIN OWNERSHIP VOUCHER-----")
    assert run("fdo", "voucher", "verify", out, "--owner-cert", owner_cert).returncode == 0
    # The manufacturer no longer owns it.
    wrong = run(
        "fdo", "voucher", "verify", out, "--owner-cert", tmp_path / "pki" / "manufacturer_cert.pem"
    )
    assert wrong.returncode == 1
    assert "entry 0: the final owner is not the expected owner key" in wrong.stderr
    # The new owner transfers it on.
    out2 = tmp_path / "ov2.pem"
    result = run(
        "fdo", "voucher", "extend", out, "--key", tmp_path / "pki" / "owner_key.pem",
        "--to", tmp_path / "next" / "owner_cert.pem", "-o", out2, "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    next_owner = x509.load_pem_x509_certificate((tmp_path / "next" / "owner_cert.pem").read_bytes())
    assert json.loads(result.stdout)["owner_key"]["fingerprint"] == fingerprint(next_owner)
    public = next_owner.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert Voucher.load(out2.read_text()).verify(owner=public).same_key(public)


def test_extend_with_a_key_that_is_not_the_owners_exits_2_and_writes_nothing(
    run: Runner, tmp_path: Path
) -> None:
    # Threat: someone without the owner's key transfers the device to themselves.
    assert run("fdo", "init", "--dir", tmp_path / "pki").returncode == 0
    out = tmp_path / "stolen.pem"
    result = run(
        "fdo", "voucher", "extend", OV, "--key", tmp_path / "pki" / "owner_key.pem",
        "--to", tmp_path / "pki" / "owner_cert.pem", "-o", out,
    )  # fmt: skip
    assert result.returncode == 2
    assert str(tmp_path / "pki" / "owner_key.pem") in result.stderr
    assert "not the voucher's current owner key" in result.stderr
    assert "PRIVATE KEY" not in result.stderr
    assert not out.exists()


def test_verify_device_chain_against_a_device_ca(run: Runner, tmp_path: Path) -> None:
    # Threat: a voucher for a device that our device CA never certified.
    voucher = Voucher.load(OV.read_text())
    assert voucher.cert_chain is not None
    their_ca = tmp_path / "their_ca.pem"
    their_ca.write_bytes(
        x509.load_der_x509_certificate(voucher.cert_chain[1]).public_bytes(
            serialization.Encoding.PEM
        )
    )
    assert run("fdo", "voucher", "verify", OV, "--device-ca", their_ca).returncode == 0
    assert run("fdo", "init", "--dir", tmp_path / "pki").returncode == 0
    result = run(
        "fdo", "voucher", "verify", OV, "--device-ca", tmp_path / "pki" / "device_ca_cert.pem"
    )
    assert result.returncode == 1
    assert (
        "device certificate 1 (CN=dev.ca.fdo) is a root CA that is not a trusted" in result.stderr
    )


def test_malformed_voucher_exits_2_naming_the_file(run: Runner, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN OWNERSHIP VOUCHER-----\n!!!\n-----END OWNERSHIP VOUCHER-----\n")
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x83\x01\x02")
    for path in (bad, garbage, tmp_path / "missing.pem"):
        for command in ("show", "verify"):
            result = run("fdo", "voucher", command, path)
            assert result.returncode == 2, (command, path, result.stderr)
            assert result.stderr.startswith(f"error: {path}: ")
            assert "Traceback" not in result.stderr
    result = run("fdo", "voucher", "verify", OV, "--owner-cert", bad)
    assert result.returncode == 2
    assert f"{bad}: not a PEM certificate" in result.stderr


def test_the_real_command_line_verifies_in_a_subprocess(tmp_path: Path) -> None:
    result = afield("fdo", "voucher", "verify", str(OV))
    assert result.returncode == 0, result.stderr
    assert "valid ownership voucher for 66b2146f-fec5-3ca6-ad01-7625990572ce" in result.stdout
    missing = afield("fdo", "voucher", "show", str(tmp_path / "nope.pem"))
    assert missing.returncode == 2
    assert "nope.pem" in missing.stderr


def test_import_into_the_owners_store_checks_the_owner_and_refuses_duplicates(
    run: Runner, tmp_path: Path
) -> None:
    assert run("fdo", "init", "--dir", tmp_path / "pki").returncode == 0
    owned = tmp_path / "ov-owned.pem"
    owner_cert = tmp_path / "pki" / "owner_cert.pem"
    extended = run(
        "fdo", "voucher", "extend", OV, "--key", VECTORS / "mfg_key.pem", "--to", owner_cert,
        "-o", owned,
    )  # fmt: skip
    assert extended.returncode == 0, extended.stderr
    db = f"sqlite:///{tmp_path / 'owner.db'}"
    imported = run(
        "fdo", "voucher", "import", owned, "--db", db, "--pki", tmp_path / "pki", "--json"
    )
    assert imported.returncode == 0, imported.stderr
    guid = str(Voucher.load(owned.read_text()).header.guid)
    assert json.loads(imported.stdout) == {"imported": [{"guid": guid, "registered": False}]}
    again = run("fdo", "voucher", "import", owned, "--db", db, "--pki", tmp_path / "pki")
    assert again.returncode == 2 and f"{owned}: " in again.stderr and "already" in again.stderr
    # The vector's voucher still belongs to its manufacturer, not to this owner.
    foreign = run("fdo", "voucher", "import", OV, "--db", db, "--pki", tmp_path / "pki")
    assert foreign.returncode == 2 and f"{OV}: " in foreign.stderr and "owner" in foreign.stderr


def test_import_needs_exactly_one_destination(run: Runner, tmp_path: Path) -> None:
    neither = run("fdo", "voucher", "import", OV)
    assert neither.returncode == 2 and "--owner URL or --db URL" in neither.stderr
    remote = run("fdo", "voucher", "import", OV, "--owner", "http://127.0.0.1:9")
    assert remote.returncode == 2 and "--token" in remote.stderr
