"""``[customizations.afield.devicetree]``: device tree names are safe paths to ``.dtb`` files,
each installed once, with a default from the list; every bad value is reported at its key.

A ``./`` name (a file shipped with the blueprint) is only checked for syntax here; reading it is
the plan's business (tests/compose/test_devicetree_stage.py)."""

from __future__ import annotations

import json

import pytest

from afield.blueprint import parse
from afield.blueprint._checks import MAX_DTB_PATH, MAX_DTBS
from afield.blueprint.model import DeviceTree
from afield.errors import BlueprintError, Problem

HEAD = 'name = "img"\nversion = "1.0.0"\n'
TABLE = "[customizations.afield.devicetree]\n"
FILES = "customizations.afield.devicetree.files"


def devicetree(toml: str) -> DeviceTree | None:
    """Parse ``toml`` as the devicetree table; return the validated table."""
    return parse(HEAD + TABLE + toml).customizations.afield.devicetree


def problems(toml: str) -> list[Problem]:
    """Parse ``toml`` as the devicetree table expecting failure; return the problems."""
    with pytest.raises(BlueprintError) as info:
        parse(HEAD + TABLE + toml)
    return info.value.problems


def only(toml: str) -> Problem:
    """Parse ``toml`` as the devicetree table expecting exactly one problem; return it."""
    found = problems(toml)
    assert len(found) == 1, found
    return found[0]


def test_blueprint_without_the_table_has_no_devicetree() -> None:
    assert parse(HEAD).customizations.afield.devicetree is None


def test_kernel_relative_and_absolute_names_with_a_default_are_accepted() -> None:
    table = devicetree(
        'files = ["broadcom/bcm2711-rpi-4-b.dtb", "/usr/lib/firmware/board,v2+r1@a_b.dtb"]\n'
        'default = "broadcom/bcm2711-rpi-4-b.dtb"\n'
    )
    assert table is not None
    assert table.files == ("broadcom/bcm2711-rpi-4-b.dtb", "/usr/lib/firmware/board,v2+r1@a_b.dtb")
    assert table.default == "broadcom/bcm2711-rpi-4-b.dtb"
    assert [DeviceTree.installed_name(name) for name in table.files] == [
        "broadcom/bcm2711-rpi-4-b.dtb",
        "board,v2+r1@a_b.dtb",
    ]


def test_names_shipped_with_the_blueprint_are_accepted() -> None:
    table = devicetree(
        'files = ["./board.dtb", "./boards/gw,v2+r1@a_b.dtb", "broadcom/bcm2711-rpi-4-b.dtb"]\n'
        'default = "./boards/gw,v2+r1@a_b.dtb"\n'
    )
    assert table is not None
    assert table.default == "./boards/gw,v2+r1@a_b.dtb"
    assert [DeviceTree.is_bundled(name) for name in table.files] == [True, True, False]
    assert [DeviceTree.installed_name(name) for name in table.files] == [
        "board.dtb",
        "boards/gw,v2+r1@a_b.dtb",
        "broadcom/bcm2711-rpi-4-b.dtb",
    ]


def test_default_is_optional() -> None:
    table = devicetree('files = ["rockchip/rk3399-pinebook-pro.dtb"]\n')
    assert table is not None
    assert table.default is None


@pytest.mark.parametrize(
    "name",
    [
        "../board.dtb",
        "broadcom/../../../etc/shadow.dtb",
        "./../board.dtb",
        "./boards/../../board.dtb",
        "././board.dtb",
        ".//board.dtb",
        "./.hidden.dtb",
        "./",
        ".board.dtb",
        "broadcom//board.dtb",
        "broadcom/.hidden.dtb",
        "broadcom/board.dtb/",
        "board name.dtb",
        "board'.dtb",
        "board\n.dtb",
        "/usr/lib/../../etc/board.dtb",
    ],
)
def test_unsafe_path_is_rejected(name: str) -> None:
    # Threat: a name that climbs out of the DTB directory, the blueprint's directory or the
    # dtb/ target, or that smuggles quotes and newlines into files and logs.
    problem = only(f"files = [{json.dumps(name)}]\n")
    assert problem.location == f"{FILES}[0]"


def test_name_that_is_not_a_dtb_is_rejected() -> None:
    problem = only('files = ["broadcom/bcm2711-rpi-4-b.dtbo"]\n')
    assert problem == Problem(
        f"{FILES}[0]", "expected a device tree blob whose name ends in '.dtb'"
    )


def test_absolute_name_outside_the_image_paths_is_rejected() -> None:
    # Threat: reading the builder's view of /proc or /boot, emptied or absent in the image.
    problem = only('files = ["/proc/device-tree.dtb"]\n')
    assert problem.location == f"{FILES}[0]"
    assert "/etc/, /usr/, /var/, /opt/" in problem.message


def test_overlong_name_is_rejected() -> None:
    name = "a" * (MAX_DTB_PATH - 3) + ".dtb"
    problem = only(f'files = ["{name}"]\n')
    assert problem == Problem(f"{FILES}[0]", f"expected at most {MAX_DTB_PATH} characters")


def test_default_that_is_not_listed_is_rejected() -> None:
    problem = only('files = ["a.dtb"]\ndefault = "b.dtb"\n')
    assert problem.location == "customizations.afield.devicetree.default"
    assert "'b.dtb' is not in customizations.afield.devicetree.files" in problem.message


def test_unsafe_default_is_rejected_at_the_default() -> None:
    problem = only('files = ["a.dtb"]\ndefault = "../a.dtb"\n')
    assert problem.location == "customizations.afield.devicetree.default"


def test_duplicate_name_is_rejected() -> None:
    problem = only('files = ["a.dtb", "b.dtb", "a.dtb"]\n')
    assert problem == Problem(f"{FILES}[2]", f"duplicate device tree 'a.dtb'; see {FILES}[0]")


def test_absolute_name_installed_like_another_is_rejected() -> None:
    # Two names that land on the same file under dtb/ would silently overwrite each other.
    problem = only('files = ["board.dtb", "/usr/share/board/board.dtb"]\n')
    assert problem.location == f"{FILES}[1]"
    assert "would be installed as dtb/board.dtb, like 'board.dtb'" in problem.message


def test_shipped_name_installed_like_a_kernel_one_is_rejected() -> None:
    # './broadcom/x.dtb' and 'broadcom/x.dtb' would both become dtb/broadcom/x.dtb.
    problem = only('files = ["broadcom/x.dtb", "./broadcom/x.dtb"]\n')
    assert problem.location == f"{FILES}[1]"
    assert "would be installed as dtb/broadcom/x.dtb, like 'broadcom/x.dtb'" in problem.message
    assert "a './' one without the './'" in problem.message


def test_too_many_names_are_rejected_once() -> None:
    # Threat: a huge list; one problem, not one per entry.
    names = ", ".join(f'"d{i}.dtb"' for i in range(MAX_DTBS + 1))
    problem = only(f"files = [{names}]\n")
    assert problem == Problem(FILES, f"expected 1 to {MAX_DTBS} device tree names")


def test_the_most_names_are_accepted() -> None:
    names = ", ".join(f'"d{i}.dtb"' for i in range(MAX_DTBS))
    table = devicetree(f"files = [{names}]\n")
    assert table is not None
    assert len(table.files) == MAX_DTBS


def test_empty_list_is_rejected() -> None:
    assert only("files = []\n") == Problem(FILES, f"expected 1 to {MAX_DTBS} device tree names")


@pytest.mark.parametrize(
    ("toml", "location", "message"),
    [
        ("", FILES, "required key is missing"),
        ('files = "a.dtb"\n', FILES, "expected an array"),
        ("files = [1]\n", f"{FILES}[0]", "expected a string"),
        (
            'files = ["a.dtb"]\ndefault = 1\n',
            "customizations.afield.devicetree.default",
            "expected a string",
        ),
    ],
)
def test_wrong_types_are_rejected(toml: str, location: str, message: str) -> None:
    assert only(toml) == Problem(location, message)


def test_table_of_the_wrong_type_is_rejected() -> None:
    with pytest.raises(BlueprintError) as info:
        parse(HEAD + '[customizations.afield]\ndevicetree = "a.dtb"\n')
    assert info.value.problems == [Problem("customizations.afield.devicetree", "expected a table")]


def test_unknown_key_names_the_accepted_ones() -> None:
    problem = only('files = ["a.dtb"]\noverlays = ["x.dtbo"]\n')
    assert problem == Problem(
        "customizations.afield.devicetree.overlays", "unknown key; accepted keys: default, files"
    )


def test_every_problem_is_reported_at_once() -> None:
    found = problems('files = ["../a.dtb", "b.txt"]\ndefault = "c"\n')
    assert [p.location for p in found] == [
        f"{FILES}[0]",
        f"{FILES}[1]",
        "customizations.afield.devicetree.default",
    ]
