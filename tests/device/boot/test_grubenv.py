"""grubenv: GRUB's real format, checked against the real ``grub-editenv`` both ways."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from afield.device.boot.grubenv import (
    GRUBENV_SIGNATURE,
    GRUBENV_SIZE,
    GrubenvError,
    format_grubenv,
    parse_grubenv,
    read_grubenv,
    write_grubenv,
)

T = TypeVar("T")
GRUB_EDITENV = shutil.which("grub-editenv")


# grub-common is installed by scripts/bootstrap.sh: a missing tool fails, never skips.
def needs_editenv(test: T) -> T:
    """Documents that the test runs grub-editenv."""
    return test


names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True)
# Printable text plus the two characters GRUB escapes, and tab.
values = st.text(
    st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from("\\\n\t"), max_size=40
)
envs = st.dictionaries(names, values, max_size=8)


def editenv(path: Path, *args: str) -> str:
    assert GRUB_EDITENV is not None
    result = subprocess.run(
        [GRUB_EDITENV, str(path), *args], capture_output=True, text=True, check=True
    )
    return result.stdout


def listing(env: dict[str, str]) -> str:
    """What ``grub-editenv list`` prints for ``env``: one ``name=value`` per line, unescaped."""
    return "".join(f"{k}={v}\n" for k, v in env.items())


def test_format_is_exactly_one_block() -> None:
    data = format_grubenv({"boot_counter": "3", "boot_success": "0"})
    assert len(data) == GRUBENV_SIZE
    assert data.startswith(GRUBENV_SIGNATURE + b"boot_counter=3\nboot_success=0\n")
    assert data.rstrip(b"#").endswith(b"\n")


def test_backslash_and_newline_are_escaped_as_grub_does() -> None:
    data = format_grubenv({"a": "x\\y", "b": "one\ntwo"})
    assert data.rstrip(b"#") == GRUBENV_SIGNATURE + b"a=x\\\\y\nb=one\\\ntwo\n"
    assert parse_grubenv(data) == {"a": "x\\y", "b": "one\ntwo"}


@needs_editenv
def test_grub_editenv_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    editenv(path, "create")
    editenv(path, "set", "boot_counter=3", "boot_success=0", "a=back\\slash", "b=two\nlines", "e=")
    assert read_grubenv(path) == {
        "boot_counter": "3",
        "boot_success": "0",
        "a": "back\\slash",
        "b": "two\nlines",
        "e": "",
    }


@needs_editenv
def test_grub_editenv_unset_is_read(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    editenv(path, "create")
    editenv(path, "set", "boot_counter=3", "boot_success=0")
    editenv(path, "unset", "boot_counter")
    assert read_grubenv(path) == {"boot_success": "0"}


@needs_editenv
def test_our_file_is_listed_and_edited_by_grub_editenv(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    env = {"boot_counter": "3", "boot_success": "0", "note": "a\\b\nc"}
    write_grubenv(path, env)
    assert editenv(path, "list") == listing(env)
    editenv(path, "set", "boot_success=1")
    editenv(path, "unset", "boot_counter")
    editenv(path, "set", "added=yes")
    assert read_grubenv(path) == {"boot_success": "1", "note": "a\\b\nc", "added": "yes"}
    assert path.stat().st_size == GRUBENV_SIZE


@needs_editenv
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(env=envs)
def test_grub_editenv_lists_what_we_write(tmp_path: Path, env: dict[str, str]) -> None:
    try:
        data = format_grubenv(env)
    except GrubenvError:
        assume(False)
    path = tmp_path / "grubenv"
    path.write_bytes(data)
    assert editenv(path, "list") == listing(env)


@given(env=envs)
def test_round_trip_of_any_env_that_fits(env: dict[str, str]) -> None:
    try:
        data = format_grubenv(env)
    except GrubenvError:
        assume(False)
    assert parse_grubenv(data) == env
    assert list(parse_grubenv(data)) == list(env)


def test_env_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    write_grubenv(path, {"boot_counter": "3"})
    with pytest.raises(GrubenvError, match="1024"):
        write_grubenv(path, {"big": "x" * 1000})
    assert read_grubenv(path) == {"boot_counter": "3"}


def test_exactly_full_block_is_accepted() -> None:
    room = GRUBENV_SIZE - len(GRUBENV_SIGNATURE) - len("v=\n")
    data = format_grubenv({"v": "x" * room})
    assert b"#" not in data[len(GRUBENV_SIGNATURE) :]
    assert parse_grubenv(data) == {"v": "x" * room}
    with pytest.raises(GrubenvError):
        format_grubenv({"v": "x" * (room + 1)})


@pytest.mark.parametrize("name", ["", "1abc", "a-b", "a b", "a=b", "ä"])
def test_name_that_is_not_a_grub_variable_is_refused(name: str) -> None:
    with pytest.raises(GrubenvError, match="variable name"):
        format_grubenv({name: "1"})


def test_control_character_in_value_is_refused() -> None:
    with pytest.raises(GrubenvError, match="control character"):
        format_grubenv({"a": "x\x00y"})


def test_missing_file_is_reported_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    with pytest.raises(GrubenvError, match="cannot read") as info:
        read_grubenv(path)
    assert info.value.path == path


def test_truncated_grubenv_is_detected(tmp_path: Path) -> None:
    # Threat: a torn write leaves a short block; GRUB reads it without complaint.
    path = tmp_path / "grubenv"
    path.write_bytes(format_grubenv({"boot_counter": "2", "boot_success": "0"})[:1000])
    with pytest.raises(GrubenvError, match="1000 bytes"):
        read_grubenv(path)


def test_truncated_inside_a_variable_is_detected() -> None:
    # Threat: a block cut in the middle of a line must not read as the variables before it.
    data = GRUBENV_SIGNATURE + b"boot_success=0\nboot_counter=" + b"9" * 2000
    with pytest.raises(GrubenvError, match="truncated"):
        parse_grubenv(data[:GRUBENV_SIZE])


def test_oversized_grubenv_is_detected(tmp_path: Path) -> None:
    # Threat: something appended to the block; GRUB would rewrite only part of it.
    path = tmp_path / "grubenv"
    path.write_bytes(format_grubenv({"boot_counter": "2"}) + b"#")
    with pytest.raises(GrubenvError, match="1025 bytes"):
        read_grubenv(path)


@pytest.mark.parametrize("data", [b"", b"\0" * GRUBENV_SIZE, b"#" * GRUBENV_SIZE])
def test_block_without_signature_is_detected(data: bytes) -> None:
    # Threat: a zeroed or overwritten file must not read as "no counter set".
    with pytest.raises(GrubenvError):
        parse_grubenv(data)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"boot_counter=2\nboot_counter=1\n", "twice"),
        (b"boot_counter\n", "no '='"),
        (b"boot counter=2\n", "variable name"),
        (b"=2\n", "variable name"),
        (b"a=x\\ty\n", "escape"),
        (b"a=x\x00y\n", "control character"),
        (b"a=\xff\xfe\n", "UTF-8"),
        (b"a=1\n####x=1\n", "comment or padding"),
        (b"a=1\n###x", "padding"),
        (b"a=1\n##\0#", "padding"),
    ],
)
def test_garbage_block_is_detected(body: bytes, message: str) -> None:
    # Threat: a garbled block read as a different set of variables than GRUB sees.
    data = (GRUBENV_SIGNATURE + body).ljust(GRUBENV_SIZE, b"#")
    with pytest.raises(GrubenvError, match=message):
        parse_grubenv(data)


def test_debian_warning_comment_is_accepted() -> None:
    data = GRUBENV_SIGNATURE + b"# WARNING: Do not edit this file by tools other than x!!!\na=1\n"
    assert parse_grubenv(data.ljust(GRUBENV_SIZE, b"#")) == {"a": "1"}


@settings(max_examples=300)
@given(st.binary(min_size=GRUBENV_SIZE, max_size=GRUBENV_SIZE))
def test_fuzzed_block_reads_as_dict_or_grubenv_error(data: bytes) -> None:
    # Threat: arbitrary bytes on disk crash the reader instead of being reported.
    try:
        env = parse_grubenv(data)
    except GrubenvError:
        return
    assert isinstance(env, dict)


@settings(max_examples=300)
@given(st.binary(max_size=GRUBENV_SIZE - len(GRUBENV_SIGNATURE)), st.sampled_from(b"#\n="))
def test_fuzzed_body_reads_as_dict_or_grubenv_error(body: bytes, pad: int) -> None:
    # Threat: a valid signature followed by garbage crashes the reader.
    data = (GRUBENV_SIGNATURE + body).ljust(GRUBENV_SIZE, bytes([pad]))
    try:
        env = parse_grubenv(data)
    except GrubenvError:
        return
    assert parse_grubenv(format_grubenv(env)) == env  # whatever we accept, we can write back


@settings(max_examples=150)
@given(env=envs, offset=st.integers(0, GRUBENV_SIZE - 1), byte=st.integers(0, 255))
def test_flipped_byte_reads_as_dict_or_grubenv_error(
    env: dict[str, str], offset: int, byte: int
) -> None:
    # Threat: one corrupted byte (bit rot, torn sector) crashes the reader.
    try:
        data = bytearray(format_grubenv(env))
    except GrubenvError:
        assume(False)
    data[offset] = byte
    with contextlib.suppress(GrubenvError):
        parse_grubenv(bytes(data))


def test_write_is_atomic_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    write_grubenv(path, {"boot_counter": "3"})
    write_grubenv(path, {"boot_counter": "2"})
    assert os.listdir(tmp_path) == ["grubenv"]
    assert path.stat().st_mode & 0o777 == 0o644
    assert read_grubenv(path) == {"boot_counter": "2"}


def test_write_through_symlink_keeps_the_link(tmp_path: Path) -> None:
    # Fedora layout: /boot/grub2/grubenv -> ../efi/EFI/fedora/grubenv; GRUB reads the target.
    (tmp_path / "efi").mkdir()
    target = tmp_path / "efi" / "grubenv"
    link = tmp_path / "grubenv"
    link.symlink_to(Path("efi") / "grubenv")
    write_grubenv(link, {"boot_success": "1"})
    assert link.is_symlink()
    assert read_grubenv(target) == {"boot_success": "1"}


def test_write_into_missing_directory_is_reported(tmp_path: Path) -> None:
    with pytest.raises(GrubenvError, match="cannot write"):
        write_grubenv(tmp_path / "nope" / "grubenv", {"a": "1"})
