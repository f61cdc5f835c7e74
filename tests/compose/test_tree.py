"""Resolving blueprint paths inside an OS tree: symlinks never lead out of it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afield.compose._tree import lookup_gid, lookup_uid, resolve_in_tree
from afield.errors import ComposeError


def _tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    (tree / "run").mkdir(parents=True)
    (tree / "var").mkdir()
    (tree / "usr" / "lib").mkdir(parents=True)
    (tree / "var" / "run").symlink_to("/run")
    (tree / "lib").symlink_to("usr/lib")
    (tree / "etc").mkdir()
    (tree / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nop:x:1000:1000::/home/op:\n"
    )
    (tree / "etc" / "group").write_text("root:x:0:\nedge:x:2000:op\n")
    return tree


def test_absolute_symlink_resolves_inside_the_tree(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    assert resolve_in_tree(tree, "/var/run/app.pid") == tree / "run" / "app.pid"


def test_relative_symlink_resolves_inside_the_tree(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    assert resolve_in_tree(tree, "/lib/x") == tree / "usr" / "lib" / "x"


def test_symlink_to_the_host_root_cannot_escape(tmp_path: Path) -> None:
    # Threat: a package (or an earlier stage) plants /etc/evil -> /etc on the builder.
    tree = _tree(tmp_path)
    (tree / "etc" / "evil").symlink_to("/etc")
    (tree / "etc" / "up").symlink_to("../../../../../../../../etc")
    assert resolve_in_tree(tree, "/etc/evil/passwd") == tree / "etc" / "passwd"
    assert resolve_in_tree(tree, "/etc/up/shadow") == tree / "etc" / "shadow"


def test_dotdot_cannot_climb_out(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    assert resolve_in_tree(tree, "/../../etc/passwd") == tree / "etc" / "passwd"


def test_symlink_loop_is_an_error(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    (tree / "a").symlink_to("b")
    (tree / "b").symlink_to("a")
    with pytest.raises(ComposeError, match="too many levels"):
        resolve_in_tree(tree, "/a/x")


def test_owner_lookup_reads_the_image_not_the_builder(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    assert lookup_uid(tree, "op") == 1000
    assert lookup_gid(tree, "edge") == 2000
    assert lookup_gid(tree, 7) == 7


_segment = st.sampled_from(["a", "b", "..", ".", "etc", "lib", "var", "run", "link"])


@settings(max_examples=300, deadline=None)
@given(
    links=st.lists(st.tuples(_segment, st.lists(_segment, max_size=6), st.booleans()), max_size=5),
    path=st.lists(_segment, max_size=8),
)
def test_resolution_always_stays_inside_the_tree(
    links: list[tuple[str, list[str], bool]], path: list[str]
) -> None:
    # Threat: any combination of absolute/relative symlinks and '..' aimed at the builder.
    import tempfile

    with tempfile.TemporaryDirectory() as base:
        tree = _tree(Path(base))
        for name, target, absolute in links:
            link = tree / "usr" / name
            text = ("/" if absolute else "") + "/".join(target)
            if text and not link.exists() and not link.is_symlink() and name not in ("..", "."):
                os.symlink(text, link)
        try:
            resolved = resolve_in_tree(tree, "/usr/" + "/".join(path))
        except ComposeError as e:
            assert "too many levels" in e.message  # a loop: refused, which is safe
            return
        assert os.path.normpath(resolved).startswith(str(tree))
