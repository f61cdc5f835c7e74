"""afield.ostree against real libostree: commits, refs, transactions and local pulls."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from afield.errors import RepositoryError
from afield.ostree import Repo, is_checksum


def _tree(tmp_path: Path, content: str = "v1", *, name: str | None = None) -> Path:
    tree = tmp_path / f"tree-{name or content}"
    (tree / "usr" / "bin").mkdir(parents=True)
    (tree / "usr" / "bin" / "app").write_text(content)
    (tree / "usr" / "bin" / "app").chmod(0o755)
    return tree


def _commit(repo: Repo, tree: Path, ref: str | None = "afield/t/x86_64/stable") -> str:
    return repo.commit_tree(
        tree,
        subject="t",
        metadata={"version": "1.0.0", "afield.packages": ["a=1"]},
        timestamp=1767225600,
        ref=ref,
    )


def test_commit_is_deterministic_and_its_object_hash_is_the_checksum(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    a = _commit(Repo.create(tmp_path / "a"), tree)
    b = _commit(Repo.create(tmp_path / "b", mode="bare"), tree)
    assert a == b and is_checksum(a)
    repo = Repo.open(tmp_path / "a")
    assert hashlib.sha256(repo.commit_object_path(a).read_bytes()).hexdigest() == a


def test_commit_metadata_and_content_read_back(tmp_path: Path) -> None:
    repo = Repo.create(tmp_path / "r")
    checksum = _commit(repo, _tree(tmp_path))
    info = repo.commit_info("afield/t/x86_64/stable")
    assert info.checksum == checksum
    assert info.version == "1.0.0"
    assert info.metadata["afield.packages"] == ["a=1"]
    assert info.timestamp == 1767225600
    assert repo.read_file(checksum, "/usr/bin/app") == b"v1"


def test_resolve_accepts_refs_checksums_and_unique_prefixes(tmp_path: Path) -> None:
    repo = Repo.create(tmp_path / "r")
    checksum = _commit(repo, _tree(tmp_path))
    assert repo.resolve(checksum) == checksum
    assert repo.resolve(checksum[:10]) == checksum
    with pytest.raises(RepositoryError, match="no ref or commit 'nope'; refs here: afield/t"):
        repo.resolve("nope")


def test_failed_commit_leaves_refs_unchanged(tmp_path: Path) -> None:
    repo = Repo.create(tmp_path / "r")
    checksum = _commit(repo, _tree(tmp_path))
    bad = _tree(tmp_path, "v2")
    (bad / "fifo").unlink(missing_ok=True)
    import os

    os.mkfifo(bad / "fifo")  # OSTree refuses special files: the commit fails half-way
    with pytest.raises(RepositoryError, match="cannot commit"):
        _commit(repo, bad)
    assert repo.refs() == {"afield/t/x86_64/stable": checksum}


def test_ref_to_a_missing_commit_is_refused(tmp_path: Path) -> None:
    repo = Repo.create(tmp_path / "r")
    with pytest.raises(RepositoryError, match="no commit"):
        repo.set_ref("afield/t/x86_64/stable", "0" * 64)
    assert repo.refs() == {}


def test_invalid_ref_names_are_refused(tmp_path: Path) -> None:
    repo = Repo.create(tmp_path / "r")
    with pytest.raises(RepositoryError, match="invalid ref"):
        _commit(repo, _tree(tmp_path), ref="../evil ref")


def test_pull_local_copies_only_missing_objects(tmp_path: Path) -> None:
    staging = Repo.create(tmp_path / "staging", mode="bare")
    target = Repo.create(tmp_path / "target")
    first = _commit(staging, _tree(tmp_path), ref=None)
    target.pull_local(staging, first)
    assert target.has_commit(first)
    second = _commit(staging, _tree(tmp_path, "v2"), ref=None)
    target.pull_local(staging, second)
    assert target.read_file(second, "/usr/bin/app") == b"v2"
    assert target.refs() == {}


def test_opening_a_directory_that_is_no_repository_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="not an OSTree repository") as e:
        Repo.open(tmp_path)
    assert e.value.user_error


def test_commit_size_counts_every_object_the_commit_needs(tmp_path: Path) -> None:
    repo = Repo.create(tmp_path / "repo")
    first = _commit(repo, _tree(tmp_path, "v1"))
    stored = sum(p.stat().st_size for p in (repo.path / "objects").rglob("*") if p.is_file())
    assert repo.commit_size(first) == stored
    second = _commit(repo, _tree(tmp_path, "v2" * 1000, name="big"), ref=None)
    # Objects the commits share count for each: it is what a device with nothing pulls.
    assert repo.commit_size(first) == stored < repo.commit_size(second)


def test_static_delta_generate_describe_and_apply(tmp_path: Path) -> None:
    server = Repo.create(tmp_path / "server")
    old = _commit(server, _tree(tmp_path, "v1" * 5000, name="old"))
    new = _commit(server, _tree(tmp_path, "v1" * 5000 + "v2", name="new"), ref=None)
    delta = server.generate_delta(old, new, params={"bsdiff-enabled": True})
    assert (delta.from_commit, delta.to_commit) == (old, new)
    assert delta.files[0].name == "superblock" and delta.length > 0
    for f in delta.files:
        data = (server.path / delta.directory / f.name).read_bytes()
        assert len(data) == f.length and hashlib.sha256(data).hexdigest() == f.sha256
    device = Repo.create(tmp_path / "device", mode="bare")
    device.pull_local(server, old)
    device.apply_delta(server.path / delta.directory)
    assert device.has_commit(new)
    assert device.read_file(new, "/usr/bin/app") == ("v1" * 5000 + "v2").encode()
    # A delta whose base the repository lacks is refused, and the repository stays as it was.
    empty = Repo.create(tmp_path / "empty", mode="bare")
    with pytest.raises(RepositoryError, match="cannot apply the static delta"):
        empty.apply_delta(server.path / delta.directory)
    assert not empty.has_commit(new)
