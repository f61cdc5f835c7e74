"""bls: OSTree's boot loader entries, read in OSTree's menu order."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from afield.device.boot.bls import (
    MAX_ENTRIES,
    MAX_ENTRY_BYTES,
    BootEntry,
    BootEntryError,
    load_entries,
    load_entry,
    parse_entry,
)

OSTREE = shutil.which("ostree")
needs_ostree_admin = pytest.mark.root

ENTRY = """\
title Debian GNU/Linux 12 (bookworm) 2.0 (ostree:0)
version 2
options root=UUID=1234 rw ostree=/ostree/boot.1/debian/abc/0 quiet
devicetree /ostree/debian-abc/board.dtb
linux /ostree/debian-abc/vmlinuz-6.1.0-13-arm64
initrd /ostree/debian-abc/initramfs-6.1.0-13-arm64.img
initrd /ostree/debian-abc/overlay.img
aboot /ostree/debian-abc/aboot.img
"""


def ostree(*args: str) -> str:
    assert OSTREE is not None
    return subprocess.run([OSTREE, *args], capture_output=True, text=True, check=True).stdout


def deploy_sysroot(root: Path, versions: list[str]) -> Path:
    """A real OSTree sysroot under ``root`` with one deployment per version, last one default."""
    tree = root / "tree"
    kernel_dir = tree / "usr/lib/modules/6.1.0-test"
    kernel_dir.mkdir(parents=True)
    (kernel_dir / "vmlinuz").write_text("kernel\n")
    (kernel_dir / "initramfs.img").write_text("initrd\n")
    (tree / "usr/etc").mkdir(parents=True)
    (tree / "usr/etc/os-release").write_text('ID=debian\nPRETTY_NAME="Debian GNU/Linux 12"\n')
    sysroot = root / "sysroot"
    sysroot.mkdir()
    ostree("admin", "init-fs", "--modern", str(sysroot))
    ostree("admin", "os-init", f"--sysroot={sysroot}", "debian")
    repo = f"--repo={sysroot}/ostree/repo"
    for version in versions:
        (tree / "usr/share").mkdir(parents=True, exist_ok=True)
        (tree / "usr/share/afield-version").write_text(version)
        ostree(repo, "commit", "-b", "test", f"--tree=dir={tree}", "-s", version,
               f"--add-metadata-string=version={version}")  # fmt: skip
        ostree("admin", "deploy", f"--sysroot={sysroot}", "--os=debian", "--retain",
               "--karg=root=UUID=1234", "--karg=rw", "test")  # fmt: skip
    return sysroot


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def entry_text(version: int, title: str = "t") -> str:
    return f"title {title}\nversion {version}\nlinux /vmlinuz\n"


@pytest.mark.root
@needs_ostree_admin
def test_entries_ostree_writes_load_in_its_menu_order(tmp_path: Path) -> None:
    sysroot = deploy_sysroot(tmp_path, ["1.0", "2.0", "3.0"])
    entries = load_entries(sysroot / "boot/loader/entries")
    assert [e.version for e in entries] == [3, 2, 1]
    assert [e.filename for e in entries] == [
        "ostree-3-debian.conf",
        "ostree-2-debian.conf",
        "ostree-1-debian.conf",
    ]
    # `ostree admin status` lists deployments default first; titles end with the index.
    assert [e.title for e in entries] == [
        "Debian GNU/Linux 12 3.0 (ostree:0)",
        "Debian GNU/Linux 12 2.0 (ostree:1)",
        "Debian GNU/Linux 12 1.0 (ostree:2)",
    ]
    for entry in entries:
        assert entry.ostree_path is not None
        assert (sysroot / entry.ostree_path.lstrip("/")).is_symlink()
        assert (sysroot / "boot" / entry.linux.lstrip("/")).is_file()
        assert len(entry.initrd) == 1
        assert entry.options.startswith("root=UUID=1234 rw ostree=")


def test_every_field_is_parsed(tmp_path: Path) -> None:
    entry = load_entry(write(tmp_path, "ostree-2-debian.conf", ENTRY))
    assert entry == BootEntry(
        path=tmp_path / "ostree-2-debian.conf",
        version=2,
        linux="/ostree/debian-abc/vmlinuz-6.1.0-13-arm64",
        title="Debian GNU/Linux 12 (bookworm) 2.0 (ostree:0)",
        initrd=(
            "/ostree/debian-abc/initramfs-6.1.0-13-arm64.img",
            "/ostree/debian-abc/overlay.img",
        ),
        options="root=UUID=1234 rw ostree=/ostree/boot.1/debian/abc/0 quiet",
        devicetree="/ostree/debian-abc/board.dtb",
        extra=(("aboot", "/ostree/debian-abc/aboot.img"),),
    )
    assert entry.filename == "ostree-2-debian.conf"
    assert entry.ostree_path == "/ostree/boot.1/debian/abc/0"


def test_first_ostree_argument_is_the_deployment() -> None:
    # ostree-prepare-root takes the first ostree= on the command line.
    text = "version 1\nlinux /k\noptions ostree=/ostree/boot.0/a/b/0 ostree=/evil\n"
    assert parse_entry(text, Path("e.conf")).ostree_path == "/ostree/boot.0/a/b/0"


def test_entry_without_ostree_argument_has_no_deployment() -> None:
    entry = parse_entry("version 1\nlinux /k\noptions root=/dev/sda1 notostree=x\n", Path("e"))
    assert entry.ostree_path is None
    assert entry.title is None


def test_tabs_comments_blank_lines_and_trailing_space_are_accepted() -> None:
    text = "# made by hand\n\ntitle\tTab  separated\t\nversion   7  \nlinux /k\n   \n"
    entry = parse_entry(text, Path("e.conf"))
    assert (entry.title, entry.version, entry.linux) == ("Tab  separated", 7, "/k")


def test_versions_sort_numerically_highest_first(tmp_path: Path) -> None:
    for version in (2, 10, 9, 1):
        write(tmp_path, f"ostree-{version}-debian.conf", entry_text(version))
    assert [e.version for e in load_entries(tmp_path)] == [10, 9, 2, 1]


def test_equal_versions_are_ordered_by_file_name(tmp_path: Path) -> None:
    write(tmp_path, "ostree-b.conf", entry_text(1, "b"))
    write(tmp_path, "ostree-a.conf", entry_text(1, "a"))
    write(tmp_path, "ostree-c.conf", entry_text(2, "c"))
    assert [e.title for e in load_entries(tmp_path)] == ["c", "a", "b"]


def test_only_ostree_conf_files_are_entries(tmp_path: Path) -> None:
    # Threat: a foreign entry shifts the menu, so index 1 is no longer the rollback deployment.
    write(tmp_path, "ostree-1-debian.conf", entry_text(1))
    write(tmp_path, "memtest.conf", entry_text(9))
    write(tmp_path, "ostree-2-debian.conf.bak", entry_text(8))
    (tmp_path / "ostree-3-debian.conf").mkdir()
    write(tmp_path / "other", "real.conf", entry_text(2))
    (tmp_path / "ostree-2-debian.conf").symlink_to(tmp_path / "other" / "real.conf")
    (tmp_path / "ostree-4-debian.conf").symlink_to(tmp_path / "dangling")
    with pytest.raises(BootEntryError, match=r"ostree-4-debian\.conf: cannot stat"):
        load_entries(tmp_path)
    (tmp_path / "ostree-4-debian.conf").unlink()
    assert [e.version for e in load_entries(tmp_path)] == [2, 1]


def test_empty_entries_directory_is_an_empty_menu(tmp_path: Path) -> None:
    assert load_entries(tmp_path) == []


def test_missing_entries_directory_is_reported(tmp_path: Path) -> None:
    with pytest.raises(BootEntryError, match="cannot list entries"):
        load_entries(tmp_path / "nope")


def test_oversized_entry_is_refused(tmp_path: Path) -> None:
    # Threat: a huge file exhausts memory of the agent that reads entries at every boot.
    path = write(tmp_path, "ostree-1-debian.conf", entry_text(1) + "#" * MAX_ENTRY_BYTES)
    with pytest.raises(BootEntryError, match="larger than 65536 bytes"):
        load_entry(path)


def test_too_many_entries_are_refused(tmp_path: Path) -> None:
    # Threat: a directory flooded with entries makes every boot's menu rendering unbounded.
    for n in range(MAX_ENTRIES + 1):
        write(tmp_path, f"ostree-{n}.conf", entry_text(n))
    with pytest.raises(BootEntryError, match=f"more than {MAX_ENTRIES}"):
        load_entries(tmp_path)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("version 1\nlinux /k\ntitle\n", 3, "no value"),
        ("version 1\n linux /k\n", 2, "not a 'key value' line"),
        ("version 1\n1linux /k\n", 2, "not a 'key value' line"),
        ("version 1\nlin=ux /k\n", 2, "not a 'key value' line"),
        ("version 1\nlinux /k\r\n", 2, "control character"),
        ("version 1\nlinux /k\x00x\n", 2, "control character"),
        ("version 1\nlinux /k\nlinux /j\n", 3, "appears twice"),
        ("version 1\nlinux /k\noptions a\noptions b\n", 4, "appears twice"),
        ("version one\nlinux /k\n", 1, "not a non-negative integer"),
        ("version -1\nlinux /k\n", 1, "not a non-negative integer"),
        ("version 1.0\nlinux /k\n", 1, "not a non-negative integer"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    # Threat: a garbled entry silently boots a different kernel or command line.
    path = write(tmp_path, "ostree-1-debian.conf", text)
    with pytest.raises(BootEntryError, match=message) as info:
        load_entry(path)
    assert (info.value.path, info.value.line) == (path, line)
    assert str(info.value).startswith(f"{path}:{line}: ")


@pytest.mark.parametrize(("text", "message"), [("version 1\n", "linux"), ("linux /k\n", "version")])
def test_entry_missing_a_required_key_is_refused(text: str, message: str) -> None:
    with pytest.raises(BootEntryError, match=f"no '{message}' line"):
        parse_entry(text, Path("ostree-1.conf"))


def test_entry_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ostree-1.conf"
    path.write_bytes(b"version 1\nlinux /k\ntitle \xff\n")
    with pytest.raises(BootEntryError, match="not UTF-8") as info:
        load_entry(path)
    assert info.value.line == 3
