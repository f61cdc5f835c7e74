"""Composing real images: mmdebstrap, dracut and libostree, end to end.

These share the session's composed example (``composed`` in conftest) and compose variants of it;
the first run on a machine downloads Debian packages, later runs reuse the .deb cache.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from afield import blueprint as bp
from afield.compose import compose
from afield.image import diff_packages, image_info, open_repository
from tests.conftest import PROJECT, Composed, afield, fresh_cache, keep_debs

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.network]


def _ostree(*args: str) -> str:
    return subprocess.run(["ostree", *args], capture_output=True, text=True, check=True).stdout


def _variant(composed: Composed, name: str, old: str, new: str) -> Path:
    text = composed.blueprint.read_text()
    assert old in text
    path = composed.blueprint.parent / name
    path.write_text(text.replace(old, new, 1))
    return path


def test_commit_lands_on_the_image_ref_with_its_metadata(composed: Composed) -> None:
    repo = open_repository(composed.repo)
    assert composed.result.ref == "afield/gateway/x86_64/stable"
    assert repo.refs()[composed.result.ref] == composed.result.commit
    info = image_info(repo, composed.result.ref)
    assert info.version == "1.0.0"
    assert info.image == "gateway"
    assert info.blueprint_sha256 == bp.load(composed.blueprint).sha256
    for name in ("openssh-server", "curl", "nftables", "python3", "ostree-boot", "dracut"):
        assert name in info.packages, name
    assert info.kernel is not None and info.kernel.endswith("-cloud-amd64")
    assert info.kernel_args == ("console=ttyS0,115200", "quiet")
    commit = repo.commit_info(composed.result.commit)
    assert commit.metadata["ostree.bootable"] is True
    assert commit.metadata["ostree.ref-binding"] == [composed.result.ref]
    assert commit.parent is None
    assert commit.timestamp == 1767225600


def test_commit_checksum_is_the_sha256_of_the_commit_object(composed: Composed) -> None:
    import hashlib

    repo = open_repository(composed.repo)
    data = repo.commit_object_path(composed.result.commit).read_bytes()
    assert hashlib.sha256(data).hexdigest() == composed.result.commit


def test_tree_has_the_ostree_layout_and_the_customizations(composed: Composed) -> None:
    repo = open_repository(composed.repo)
    commit = composed.result.commit
    kver = image_info(repo, commit).kernel
    listing = _ostree(
        f"--repo={composed.repo}/ostree", "ls", commit, "/", f"/usr/lib/modules/{kver}"
    )
    assert re.search(r"l00777 0 0\s+0 /home -> var/home", listing)
    assert re.search(r"l00777 0 0\s+0 /ostree -> sysroot/ostree", listing)
    assert f"/usr/lib/modules/{kver}/vmlinuz" in listing
    assert f"/usr/lib/modules/{kver}/initramfs.img" in listing
    assert "/usr/etc" in _ostree(f"--repo={composed.repo}/ostree", "ls", commit, "/usr")
    # No /etc (OSTree makes it from /usr/etc at deployment); /var is empty (tmpfiles fills it).
    assert "/etc" not in _ostree(f"--repo={composed.repo}/ostree", "ls", commit, "/").split()
    assert _ostree(f"--repo={composed.repo}/ostree", "ls", commit, "/var").count("\n") == 1
    assert repo.read_file(commit, "/usr/etc/hostname") == b"gateway\n"
    conf = repo.read_file(commit, "/usr/etc/gateway/gateway.conf").decode()
    assert "interval_seconds = 30" in conf
    # The file's mode and group are the blueprint's: 0640, group edge (gid 2000).
    line = _ostree(f"--repo={composed.repo}/ostree", "ls", commit, "/usr/etc/gateway/gateway.conf")
    assert line.startswith("-00640 0 2000 ")
    assert repo.read_file(commit, "/usr/etc/machine-id") == b""
    passwd = repo.read_file(commit, "/usr/etc/passwd").decode()
    assert re.search(r"^operator:x:\d+:\d+:Field operator:/home/operator:/bin/bash$", passwd, re.M)
    group = repo.read_file(commit, "/usr/etc/group").decode()
    assert re.search(r"^edge:x:2000:operator$", group, re.M)
    assert "Europe/Berlin" in repo.read_file(commit, "/usr/etc/timezone").decode()
    tmpfiles = repo.read_file(commit, "/usr/lib/tmpfiles.d/afield-var.conf").decode()
    assert "d /var/lib/gateway 0750 0 2000 - -" in tmpfiles
    assert "L /var/lib/dpkg - - - - ../../usr/lib/sysimage/dpkg" in tmpfiles
    key_line = "C /var/home/operator/.ssh/authorized_keys - - - - "
    assert key_line + "/usr/share/factory/var/home/operator/.ssh/authorized_keys" in tmpfiles
    ssh = _ostree(f"--repo={composed.repo}/ostree", "ls", commit, "/usr/etc/ssh")
    assert "ssh_host_" not in ssh
    units = _ostree(f"--repo={composed.repo}/ostree", "ls", "-R", commit, "/usr/etc/systemd/system")
    # Enabled as their [Install] sections say: ssh by multi-user, nftables early at sysinit.
    assert "/usr/etc/systemd/system/multi-user.target.wants/ssh.service" in units
    assert "/usr/etc/systemd/system/sysinit.target.wants/nftables.service" in units


@pytest.fixture(scope="module")
def checkout(composed: Composed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's commit checked out, to run what the image ships."""
    directory = tmp_path_factory.mktemp("checkout") / "root"
    _ostree(f"--repo={composed.repo}/ostree", "checkout", composed.result.commit, str(directory))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def _in_image(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with the checkout as /, its /usr/etc as /etc (OSTree makes /etc so)."""
    sandbox = ["bwrap", "--bind", str(root), "/", "--ro-bind", str(root / "usr/etc"), "/etc"]
    sandbox += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/var"]
    return subprocess.run(
        [*sandbox, *argv],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/sbin:/usr/bin", "LC_ALL": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"},
    )


def test_image_ships_the_device_agent(composed: Composed, checkout: Path) -> None:
    repo, commit = f"--repo={composed.repo}/ostree", composed.result.commit
    units = "/usr/lib/systemd/system"
    listing = _ostree(
        repo,
        "ls",
        "-d",
        commit,
        "/usr/bin/afield",
        "/usr/lib/afield/bin/afield",
        f"{units}/afield-healthcheck.service",
        f"{units}/boot-complete.target.requires/afield-healthcheck.service",
        f"{units}/multi-user.target.wants/afield-healthcheck.service",
        f"{units}/multi-user.target.wants/afield-agent.service",
        *(
            f"{base}/{sub}"
            for base in ("/usr/lib/greenboot", "/usr/etc/greenboot")
            for sub in ("check/required.d", "check/wanted.d", "green.d", "red.d")
        ),
    )
    assert re.search(r"^l00777 .* /usr/bin/afield -> \.\./lib/afield/bin/afield$", listing, re.M)
    assert re.search(r"^-00755 0 0 .* /usr/lib/afield/bin/afield$", listing, re.M)
    assert re.search(
        r"/boot-complete\.target\.requires/afield-healthcheck\.service -> "
        r"\.\./afield-healthcheck\.service$",
        listing,
        re.M,
    )
    assert "/multi-user.target.wants/afield-healthcheck.service -> ../" in listing
    assert len(re.findall(r"^d00755 0 0 .*greenboot/", listing, re.M)) == 8
    unit = open_repository(composed.repo).read_file(commit, f"{units}/afield-healthcheck.service")
    assert b"ExecStart=/usr/lib/afield/bin/afield device healthcheck" in unit
    packaged = checkout / "usr/lib/afield/lib/python3.11/site-packages/afield/device/units"
    assert unit == (packaged / "afield-healthcheck.service").read_bytes()
    # The venv runs with the image's own Python and Debian's OSTree bindings.
    check = (
        "import afield.device.lifecycle, gi, pydantic, rich, typer; "
        "gi.require_version('OSTree', '1.0'); from gi.repository import OSTree; "
        "print('ok', OSTree.RepoMode.ARCHIVE)"
    )
    result = _in_image(checkout, "/usr/lib/afield/bin/python", "-c", check)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok ")
    # Nothing of the builder reached the image: no host paths, no byte code written at build.
    venv = checkout / "usr" / "lib" / "afield"
    assert not list(venv.rglob("__pycache__"))
    assert not list(venv.rglob("direct_url.json"))
    for needle in (str(composed.cache), str(PROJECT)):
        found = subprocess.run(
            ["grep", "-rlF", needle, str(venv)], capture_output=True, text=True, check=False
        )
        assert found.stdout == "", f"{needle} found in {found.stdout}"


def test_installed_afield_command_runs_in_the_image(checkout: Path) -> None:
    result = _in_image(checkout, "/usr/bin/afield", "--help")
    assert result.returncode == 0, result.stderr
    assert "device" in result.stdout
    result = _in_image(checkout, "/usr/bin/afield", "device", "healthcheck", "--help")
    assert result.returncode == 0, result.stderr


def test_warm_recompose_runs_no_stage_and_gives_the_same_commit(composed: Composed) -> None:
    again = compose(bp.load(composed.blueprint), composed.repo, cache_dir=composed.cache)
    assert again.ran == ()
    assert again.commit == composed.result.commit


def test_files_only_change_reuses_the_package_stages(composed: Composed) -> None:
    changed = _variant(
        composed, "files-only.toml", "interval_seconds = 30", "interval_seconds = 60"
    )
    result = compose(bp.load(changed), composed.repo, cache_dir=composed.cache, ref="test/files")
    assert "afield.debian.bootstrap" in result.cached
    assert "afield.kernel" in result.cached
    assert "afield.files" in result.ran
    assert result.commit != composed.result.commit
    repo = open_repository(composed.repo)
    assert b"interval_seconds = 60" in repo.read_file(
        result.commit, "/usr/etc/gateway/gateway.conf"
    )
    old, new = image_info(repo, composed.result.commit), image_info(repo, result.commit)
    assert diff_packages(old.packages, new.packages).empty
    # The session's ref still points at the original image.
    assert repo.refs()[composed.result.ref] == composed.result.commit


def test_same_blueprint_gives_the_same_commit_from_a_fresh_cache(
    composed: Composed, tmp_path: Path
) -> None:
    # Reproducibility: nothing host- or time-dependent may reach the commit.
    cache = fresh_cache(tmp_path / "cache")
    result = compose(bp.load(composed.blueprint), tmp_path / "repo", cache_dir=cache)
    keep_debs(cache)
    assert result.ran[0] == "afield.debian.bootstrap"
    assert result.commit == composed.result.commit


def test_unknown_package_exits_2_naming_it_and_leaves_refs_unchanged(composed: Composed) -> None:
    bad = _variant(
        composed, "bad-package.toml", '[[packages]]\nname = "curl"', '[[packages]]\nname = "curlx"'
    )
    refs_before = open_repository(composed.repo).refs()
    result = afield(
        "compose", str(bad), "--repo", str(composed.repo), "--cache-dir", str(composed.cache)
    )
    assert result.returncode == 2, result.stderr
    assert "error:" in result.stderr and "curlx" in result.stderr
    assert open_repository(composed.repo).refs() == refs_before


def test_image_commands_read_the_repository_as_json(composed: Composed) -> None:
    repo = str(composed.repo)
    listed = json.loads(afield("image", "ls", "--repo", repo, "--json", check=True).stdout)
    assert composed.result.ref in [r for image in listed for r in image["refs"]]
    shown = json.loads(
        afield(
            "image", "show", "--repo", repo, composed.result.commit[:12], "--json", check=True
        ).stdout
    )
    assert shown["checksum"] == composed.result.commit
    assert shown["packages"]["openssh-server"]
    diff = json.loads(
        afield(
            "image",
            "diff",
            "--repo",
            repo,
            composed.result.ref,
            composed.result.commit,
            "--json",
            check=True,
        ).stdout
    )
    assert diff["added"] == {} and diff["removed"] == {} and diff["changed"] == []


def test_version_bump_with_a_new_package_shows_in_the_diff(composed: Composed) -> None:
    text = composed.blueprint.read_text().replace('version = "1.0.0"', 'version = "1.1.0"', 1)
    path = composed.blueprint.parent / "v2.toml"
    path.write_text(text + '\n[[packages]]\nname = "jq"\n')
    result = compose(bp.load(path), composed.repo, cache_dir=composed.cache, ref="test/v2")
    out = afield(
        "image",
        "diff",
        "--repo",
        str(composed.repo),
        composed.result.commit,
        result.commit,
        "--json",
        check=True,
    ).stdout
    diff = json.loads(out)
    assert "jq" in diff["added"]
    assert diff["removed"] == {}


def test_commit_deploys_with_ostree_admin(composed: Composed, tmp_path: Path) -> None:
    # Bootable by OSTree's rules: the kernel is found and a BLS entry is written.
    sysroot = tmp_path / "sysroot"
    sysroot.mkdir()
    commit = composed.result.commit
    _ostree("admin", "init-fs", "--modern", str(sysroot))
    _ostree("admin", f"--sysroot={sysroot}", "os-init", "gateway")
    _ostree(f"--repo={sysroot}/ostree/repo", "pull-local", f"{composed.repo}/ostree", commit)
    # A BLS entry needs a bootloader directory to write into; GRUB's layout is what afield uses.
    (sysroot / "boot" / "grub2").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OSTREE_SYSROOT_DEBUG": "mutable-deployments"}
    subprocess.run(
        [
            "ostree",
            "admin",
            f"--sysroot={sysroot}",
            "deploy",
            "--os=gateway",
            "--karg=console=ttyS0,115200",
            commit,
        ],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    entries = list((sysroot / "boot" / "loader" / "entries").glob("*.conf"))
    assert len(entries) == 1
    entry = entries[0].read_text()
    assert re.search(r"^linux /ostree/gateway-[0-9a-f]+/vmlinuz-", entry, re.M)
    assert re.search(r"^initrd /ostree/gateway-[0-9a-f]+/initramfs-", entry, re.M)
    assert re.search(r"^options .*ostree=/ostree/boot\.\d/gateway/[0-9a-f]+/0", entry, re.M)
    deployment = next((sysroot / "ostree" / "deploy" / "gateway" / "deploy").glob(f"{commit}.0"))
    assert (deployment / "etc" / "hostname").read_text() == "gateway\n"
    assert (deployment / "usr" / "etc" / "gateway" / "gateway.conf").is_file()
    shutil.rmtree(sysroot, ignore_errors=True)
