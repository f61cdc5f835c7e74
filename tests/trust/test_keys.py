"""Role keys on disk: generation, the keys.json index, offline keys and rotation."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from afield.errors import TrustError
from afield.trust import ROLES, Keyring, version_key
from tests.conftest import afield


def test_generate_writes_private_pem_files_0600_and_an_index(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keyring = Keyring.generate(keys, root_threshold=2, root_keys=3)
    index = json.loads((keys / "keys.json").read_text())
    assert index["format"] == "afield-keys/1"
    assert set(index["roles"]) == set(ROLES)
    assert index["roles"]["root"]["threshold"] == 2
    assert len(index["roles"]["root"]["keyids"]) == 3
    for role in ("targets", "snapshot", "timestamp"):
        assert index["roles"][role]["threshold"] == 1
        assert index["roles"][role]["keyids"] == keyring.keyids(role)
    pems = sorted(keys.glob("*.pem"))
    assert len(pems) == 6
    for pem in pems:
        assert stat.S_IMODE(pem.stat().st_mode) == 0o600
        assert pem.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    for key in keyring.keys("root"):
        assert key.keytype == "ed25519"


def test_load_reads_back_the_same_keys_and_signs(tmp_path: Path) -> None:
    generated = Keyring.generate(tmp_path / "keys")
    loaded = Keyring.load(tmp_path / "keys")
    for role in ROLES:
        assert loaded.keyids(role) == generated.keyids(role)
        (signer,) = loaded.signers(role)
        signature = signer.sign(b"payload")
        loaded.keys(role)[0].verify_signature(signature, b"payload")


def test_generate_refuses_to_overwrite_existing_keys(tmp_path: Path) -> None:
    Keyring.generate(tmp_path / "keys")
    before = (tmp_path / "keys" / "keys.json").read_bytes()
    with pytest.raises(TrustError, match="refusing to overwrite") as caught:
        Keyring.generate(tmp_path / "keys")
    assert caught.value.user_error
    assert (tmp_path / "keys" / "keys.json").read_bytes() == before


def test_cli_keys_init_refuses_to_overwrite_with_exit_2(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    first = afield("keys", "init", "--dir", str(keys), "--json")
    assert first.returncode == 0, first.stderr
    assert set(json.loads(first.stdout)["roles"]) == set(ROLES)
    second = afield("keys", "init", "--dir", str(keys))
    assert second.returncode == 2
    assert second.stderr.startswith("error: ")
    assert str(keys) in second.stderr and "refusing to overwrite" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("threshold", "count"), [(0, 1), (2, 1), (1, 0)])
def test_root_threshold_must_fit_the_number_of_keys(
    tmp_path: Path, threshold: int, count: int
) -> None:
    with pytest.raises(TrustError, match="--root-threshold") as caught:
        Keyring.generate(tmp_path / "keys", root_threshold=threshold, root_keys=count)
    assert caught.value.user_error
    assert not (tmp_path / "keys").exists()


def test_offline_root_key_is_listed_but_cannot_sign(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    Keyring.generate(keys)
    for pem in keys.glob("root-*.pem"):
        pem.unlink()
    keyring = Keyring.load(keys)
    assert len(keyring.keys("root")) == 1
    assert keyring.signers("timestamp")
    with pytest.raises(TrustError, match="no private key for the root role"):
        keyring.signers("root")
    assert keyring.describe()["root"]["keys"][0]["private"] is False


def test_rotate_is_in_memory_until_saved_then_retires_old_keys(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keyring = Keyring.generate(keys)
    (old,) = keyring.keyids("snapshot")
    removed, added = keyring.rotate("snapshot")
    assert [k.keyid for k in removed] == [old]
    assert Keyring.load(keys).keyids("snapshot") == [old]
    keyring.save()
    reloaded = Keyring.load(keys)
    assert reloaded.keyids("snapshot") == [added[0].keyid]
    assert list((keys / "retired").glob("snapshot-*.pem"))
    index = json.loads((keys / "keys.json").read_text())
    assert [r["keyid"] for r in index["retired"]] == [old]


def test_rotate_one_of_several_root_keys_by_id_prefix(tmp_path: Path) -> None:
    keyring = Keyring.generate(tmp_path / "keys", root_threshold=2, root_keys=3)
    first, second, third = keyring.keyids("root")
    removed, added = keyring.rotate("root", second[:10])
    assert [k.keyid for k in removed] == [second]
    assert keyring.keyids("root") == [first, third, added[0].keyid]
    with pytest.raises(TrustError, match="--key nope"):
        keyring.rotate("root", "nope")
    with pytest.raises(TrustError, match="unknown role 'mirror'"):
        keyring.rotate("mirror")


def test_load_without_an_index_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(TrustError, match="afield keys init") as caught:
        Keyring.load(tmp_path)
    assert caught.value.user_error


def test_versions_compare_numerically() -> None:
    assert version_key("1.10.0") > version_key("1.9.9")
    assert version_key("1.0") == version_key("1.0.0")
    assert version_key("2") > version_key("1.99")
    for bad in ("1.0.0-rc1", "v1", "01.0", "", "1..0"):
        with pytest.raises(TrustError, match="dot-separated numbers"):
            version_key(bad)
