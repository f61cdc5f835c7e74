"""``afield serve`` and ``afield admin token``: the real command line in subprocesses."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.conftest import afield, afield_server


def test_afield_serve_answers_healthz_and_migrates_a_new_database(tmp_path: Path) -> None:
    db = tmp_path / "fleet.db"
    with afield_server(tmp_path / "serve.log", "serve", "--db", f"sqlite:///{db}") as url:
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
        assert httpx.get(f"{url}/api/v1/fleets").status_code == 401
    assert db.exists()


def test_a_token_made_by_afield_admin_opens_the_api_until_revoked(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    created = afield(
        "admin", "token", "create", "ops", "--role", "admin", "--db", db, "--json", check=True
    )
    token = json.loads(created.stdout)["token"]
    assert token.startswith("afield_")
    headers = {"Authorization": f"Bearer {token}"}
    with afield_server(tmp_path / "serve.log", "serve", "--db", db) as url:
        made = httpx.post(f"{url}/api/v1/fleets", json={"name": "berlin"}, headers=headers)
        assert made.status_code == 201, made.text
        listed = json.loads(afield("admin", "token", "ls", "--db", db, "--json").stdout)
        (only,) = listed["tokens"]
        assert only["name"] == "ops" and only["role"] == "admin" and only["last_used"]
        assert token not in json.dumps(listed)  # the secret is never shown again
        afield("admin", "token", "revoke", "ops", "--db", db, check=True)
        assert httpx.get(f"{url}/api/v1/fleets", headers=headers).status_code == 401


def test_afield_admin_token_create_with_a_bad_role_exits_2_naming_it(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    result = afield("admin", "token", "create", "ops", "--role", "root", "--db", db)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "role 'root'" in result.stderr
    assert "admin, viewer" in result.stderr


def test_afield_admin_token_create_twice_exits_2(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    afield("admin", "token", "create", "ops", "--role", "viewer", "--db", db, check=True)
    again = afield("admin", "token", "create", "ops", "--role", "viewer", "--db", db)
    assert again.returncode == 2 and "exists already" in again.stderr


def test_afield_serve_with_a_database_url_it_cannot_open_exits_2(tmp_path: Path) -> None:
    result = afield("serve", "--db", "nosuchdb://x/y", "--port", "0")
    assert result.returncode == 2
    assert "nosuchdb://x/y" in result.stderr and "Traceback" not in result.stderr
