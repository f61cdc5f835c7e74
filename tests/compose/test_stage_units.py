"""Stages run on small hand-made trees: files, hostname, OSTree layout, services errors.

The full stages run on real Debian trees in test_compose_image.py; here each rule is checked
on its own, fast.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from afield.errors import StageError
from tests.compose import run_stage

pytestmark = pytest.mark.root


def _tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    for d in (
        "etc/ssh",
        "usr/lib/modules/6.1.0-test",
        "usr/lib/systemd/system",
        "var/lib/app",
        "var/log/apt",
        "var/lib/dpkg/info",
        "var/cache/apt",
        "home/op",
        "root",
        "srv",
        "mnt",
        "media",
        "dev",
        "proc",
        "sys",
        "run/lock",
        "tmp",
        "boot",
        "opt",
    ):
        (tree / d).mkdir(parents=True, exist_ok=True)
    (tree / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nop:x:1000:1000::/home/op:\n"
    )
    (tree / "etc" / "group").write_text("root:x:0:\nop:x:1000:\nedge:x:2000:op\n")
    (tree / "etc" / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (tree / "etc" / "ssh" / "ssh_host_ed25519_key").write_text("secret")
    (tree / "etc" / "passwd-").write_text("old")
    (tree / "var" / "lib" / "app" / "state.db").write_text("seed")
    os.chown(tree / "var" / "lib" / "app", 1000, 2000)
    (tree / "var" / "lib" / "app").chmod(0o750)
    (tree / "var" / "log" / "apt" / "history.log").write_text("build log")
    (tree / "var" / "lib" / "dpkg" / "status").write_text("Package: x\n")
    (tree / "var" / "run").symlink_to("/run")
    (tree / "home" / "op" / ".profile").write_text("# op\n")
    (tree / "dev" / "null-ish").write_text("")
    return tree


def test_files_stage_writes_content_owner_and_mode(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    run_stage(
        "afield.files",
        tree,
        {
            "directories": [{"path": "/var/lib/gw", "mode": "0750", "group": "edge"}],
            "files": [
                {
                    "path": "/etc/gw/gw.conf",
                    "mode": "0640",
                    "user": "op",
                    "group": "edge",
                    "data": "x = 1\n",
                    "ensure_parents": True,
                },
            ],
        },
    )
    conf = tree / "etc" / "gw" / "gw.conf"
    assert conf.read_text() == "x = 1\n"
    st = conf.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1000, 2000)
    d = (tree / "var" / "lib" / "gw").stat()
    assert (stat.S_IMODE(d.st_mode), d.st_uid, d.st_gid) == (0o750, 0, 2000)


def test_files_stage_writes_through_symlinks_only_inside_the_tree(tmp_path: Path) -> None:
    # Threat: /var/run is a symlink to /run; a blueprint path through it must not hit the host.
    tree = _tree(tmp_path)
    run_stage(
        "afield.files", tree, {"directories": [], "files": [{"path": "/var/run/x", "data": "1"}]}
    )
    assert (tree / "run" / "x").read_text() == "1"
    assert not Path("/run/x").exists()


def test_files_stage_refuses_a_missing_parent_without_ensure_parents(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    with pytest.raises(StageError, match=r"/etc/nope/x: parent directory does not exist") as e:
        run_stage("afield.files", tree, {"directories": [], "files": [{"path": "/etc/nope/x"}]})
    assert e.value.user_error


def test_files_stage_refuses_an_owner_the_image_does_not_have(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    with pytest.raises(StageError, match=r"/etc/x: user 'ghost' does not exist in the image"):
        run_stage(
            "afield.files",
            tree,
            {"directories": [], "files": [{"path": "/etc/x", "user": "ghost"}]},
        )


def test_services_stage_names_a_unit_the_image_lacks(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    with pytest.raises(
        StageError, match=r"services.enabled: no such unit in the image: nginx.service"
    ):
        run_stage(
            "afield.services", tree, {"enabled": ["nginx.service"], "disabled": [], "masked": []}
        )


def test_hostname_stage_writes_hostname_and_hosts(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    run_stage("afield.hostname", tree, {"hostname": "gw-01"})
    assert (tree / "etc" / "hostname").read_text() == "gw-01\n"
    assert "127.0.1.1\tgw-01" in (tree / "etc" / "hosts").read_text()


def test_timezone_stage_refuses_a_zone_the_image_lacks(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    with pytest.raises(StageError, match="unknown time zone 'Mars/Olympus'"):
        run_stage("afield.timezone", tree, {"timezone": "Mars/Olympus", "ntpservers": []})


def test_ostree_prepare_moves_etc_and_turns_var_into_tmpfiles(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    facts = run_stage("afield.ostree.prepare", tree, {})
    assert not (tree / "etc").exists()
    usr_etc = tree / "usr" / "etc"
    assert (usr_etc / "machine-id").read_text() == ""
    assert not (usr_etc / "passwd-").exists()
    assert not list((usr_etc / "ssh").glob("ssh_host_*"))
    unit = tree / "usr/lib/systemd/system/multi-user.target.wants/afield-ssh-hostkeys.service"
    assert unit.is_symlink()
    assert facts["ssh_keygen_unit"] is True
    assert list((tree / "var").iterdir()) == []
    lines = (tree / "usr/lib/tmpfiles.d/afield-var.conf").read_text().splitlines()
    assert "d /var/lib/app 0750 1000 2000 - -" in lines
    assert "C /var/lib/app/state.db - - - - /usr/share/factory/var/lib/app/state.db" in lines
    assert "L /var/run - - - - /run" in lines
    assert "L /var/lib/dpkg - - - - ../../usr/lib/sysimage/dpkg" in lines
    assert "C /var/home/op/.profile - - - - /usr/share/factory/var/home/op/.profile" in lines
    assert not any("history.log" in line for line in lines)
    assert (tree / "usr/share/factory/var/lib/app/state.db").read_text() == "seed"
    assert (tree / "usr/lib/sysimage/dpkg/status").is_file()
    for name, target in {
        "home": "var/home",
        "root": "var/roothome",
        "media": "run/media",
        "ostree": "sysroot/ostree",
    }.items():
        assert os.readlink(tree / name) == target
    assert (tree / "sysroot").is_dir()
    assert list((tree / "dev").iterdir()) == []
    assert stat.S_IMODE((tree / "tmp").stat().st_mode) == 0o1777


def test_ostree_prepare_refuses_a_tree_prepared_twice(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    run_stage("afield.ostree.prepare", tree, {})
    (tree / "etc").mkdir()
    with pytest.raises(StageError, match="prepared twice"):
        run_stage("afield.ostree.prepare", tree, {})
