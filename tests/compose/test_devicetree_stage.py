"""Stage afield.devicetree on small hand-made trees, and where the plan puts it.

The device side (what OSTree makes of the files at deployment) is tested in
tests/device/test_devicetree_boot.py.
"""

from __future__ import annotations

import base64
import shutil
import stat
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from afield import blueprint as bp
from afield.compose.pipeline import registry, stage_ids, stage_schema
from afield.compose.plan import Target, plan
from afield.compose.stages.devicetree import MAX_BLOB_BYTES, MAX_BLOBS_BYTES
from afield.errors import ComposeError, StageError
from tests.compose import run_stage
from tests.conftest import EXAMPLE

pytestmark = pytest.mark.root

KVER = "6.1.0-28-arm64"
MODULES = f"usr/lib/modules/{KVER}"
DTBS = f"usr/lib/linux-image-{KVER}"
RPI4 = b"\xd0\x0d\xfe\xed rpi4"
PINEBOOK = b"\xd0\x0d\xfe\xed pinebook"
CUSTOM = b"\xd0\x0d\xfe\xed custom board"
SHIPPED = b"\xd0\x0d\xfe\xed shipped with the blueprint"
TARGET = Target(
    suite="bookworm",
    debian_arch="amd64",
    mirrors=("deb http://deb.debian.org/debian bookworm main",),
)


def _tree(tmp_path: Path) -> Path:
    """A tree with one kernel, its DTB directory as Debian ships it, and a file the blueprint
    placed under /etc."""
    tree = tmp_path / "tree"
    (tree / MODULES).mkdir(parents=True)
    (tree / MODULES / "vmlinuz").write_bytes(b"kernel")
    (tree / DTBS / "broadcom").mkdir(parents=True)
    (tree / DTBS / "broadcom" / "bcm2711-rpi-4-b.dtb").write_bytes(RPI4)
    (tree / DTBS / "rockchip").mkdir()
    (tree / DTBS / "rockchip" / "rk3399-pinebook-pro.dtb").write_bytes(PINEBOOK)
    (tree / "etc" / "boards").mkdir(parents=True)
    (tree / "etc" / "boards" / "custom.dtb").write_bytes(CUSTOM)
    return tree


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _run(
    tree: Path,
    files: list[str],
    default: str | None = None,
    blobs: dict[str, bytes] | None = None,
) -> dict[str, Any]:
    options = {
        "files": files,
        "default": default,
        "blobs": {name: _b64(data) for name, data in (blobs or {}).items()},
    }
    return _run_options(tree, options)


def _run_options(tree: Path, options: dict[str, Any]) -> dict[str, Any]:
    jsonschema.validate(options, stage_schema(registry()["afield.devicetree"]))
    return run_stage("afield.devicetree", tree, options)


def test_listed_device_trees_land_under_dtb_and_the_default_as_devicetree(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    facts = _run(
        tree,
        [
            "broadcom/bcm2711-rpi-4-b.dtb",
            "rockchip/rk3399-pinebook-pro.dtb",
            "/etc/boards/custom.dtb",
        ],
        default="broadcom/bcm2711-rpi-4-b.dtb",
    )
    dtb = tree / MODULES / "dtb"
    assert (dtb / "broadcom" / "bcm2711-rpi-4-b.dtb").read_bytes() == RPI4
    assert (dtb / "rockchip" / "rk3399-pinebook-pro.dtb").read_bytes() == PINEBOOK
    assert (dtb / "custom.dtb").read_bytes() == CUSTOM
    assert (tree / MODULES / "devicetree").read_bytes() == RPI4
    for path in (dtb / "custom.dtb", tree / MODULES / "devicetree"):
        st = path.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o644, 0, 0)
    assert facts == {
        "devicetree": {
            "files": [
                "broadcom/bcm2711-rpi-4-b.dtb",
                "rockchip/rk3399-pinebook-pro.dtb",
                "custom.dtb",
            ],
            "default": "broadcom/bcm2711-rpi-4-b.dtb",
        }
    }


def test_an_absolute_default_is_the_devicetree(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    _run(tree, ["/etc/boards/custom.dtb"], default="/etc/boards/custom.dtb")
    assert (tree / MODULES / "devicetree").read_bytes() == CUSTOM


def test_without_a_default_there_is_no_devicetree_file(tmp_path: Path) -> None:
    # OSTree then copies dtb/ to /boot and writes fdtdir, leaving the choice to the firmware.
    tree = _tree(tmp_path)
    facts = _run(tree, ["rockchip/rk3399-pinebook-pro.dtb"])
    assert (tree / MODULES / "dtb" / "rockchip" / "rk3399-pinebook-pro.dtb").is_file()
    assert not (tree / MODULES / "devicetree").exists()
    assert facts["devicetree"]["default"] is None


def test_missing_device_tree_names_the_entry_and_where_it_looked(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    with pytest.raises(StageError) as e:
        _run(tree, ["broadcom/bcm2711-rpi-4-b.dtb", "broadcom/bcm2712-rpi-5-b.dtb"])
    assert e.value.user_error
    assert e.value.stage == "afield.devicetree"
    assert (
        "customizations.afield.devicetree.files[1]: broadcom/bcm2712-rpi-5-b.dtb not found: "
        f"looked for /usr/lib/linux-image-{KVER}/broadcom/bcm2712-rpi-5-b.dtb in the image"
    ) in e.value.message


def test_missing_absolute_device_tree_names_the_path(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    with pytest.raises(StageError) as e:
        _run(tree, ["/etc/boards/custom.dtb", "/etc/boards/gone.dtb"])
    assert (
        "customizations.afield.devicetree.files[1]: /etc/boards/gone.dtb not found: "
        "looked for /etc/boards/gone.dtb in the image"
    ) in e.value.message
    assert e.value.user_error


def test_kernel_without_device_trees_is_named(tmp_path: Path) -> None:
    # amd64 kernels ship no DTB directory at all.
    tree = _tree(tmp_path)
    shutil.rmtree(tree / DTBS)
    with pytest.raises(StageError, match=r"the kernel package ships no device trees") as e:
        _run(tree, ["broadcom/bcm2711-rpi-4-b.dtb"])
    assert e.value.user_error


def test_directory_named_like_a_device_tree_is_refused(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    (tree / DTBS / "odd.dtb").mkdir()
    with pytest.raises(StageError, match=r"odd.dtb in the image is not a regular file") as e:
        _run(tree, ["odd.dtb"])
    assert e.value.user_error


def test_symlinked_device_tree_is_read_inside_the_tree(tmp_path: Path) -> None:
    # Threat: a package's absolute symlink must resolve in the image, never on the builder.
    tree = _tree(tmp_path)
    (tree / "usr" / "share" / "afield-test").mkdir(parents=True)
    (tree / "usr" / "share" / "afield-test" / "real.dtb").write_bytes(CUSTOM)
    (tree / DTBS / "linked.dtb").symlink_to("/usr/share/afield-test/real.dtb")
    (tree / DTBS / "escape.dtb").symlink_to("../../../../../../../etc/hostname")
    _run(tree, ["linked.dtb"])
    assert (tree / MODULES / "dtb" / "linked.dtb").read_bytes() == CUSTOM
    assert not (tree / MODULES / "dtb" / "linked.dtb").is_symlink()
    with pytest.raises(StageError, match=r"looked for /usr/lib/linux-image-.*/escape.dtb"):
        _run(tree, ["escape.dtb"])


def test_symlink_loop_is_refused(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    (tree / DTBS / "loop.dtb").symlink_to("loop.dtb")
    with pytest.raises(StageError, match=r"too many levels of symbolic links") as e:
        _run(tree, ["loop.dtb"])
    assert e.value.user_error


def test_an_existing_devicetree_is_replaced(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    (tree / MODULES / "devicetree").write_bytes(b"stale")
    (tree / MODULES / "dtb").mkdir()
    (tree / MODULES / "dtb" / "custom.dtb").symlink_to("/etc/hostname")
    _run(tree, ["/etc/boards/custom.dtb"], default="/etc/boards/custom.dtb")
    assert (tree / MODULES / "devicetree").read_bytes() == CUSTOM
    assert not (tree / MODULES / "dtb" / "custom.dtb").is_symlink()


def test_shipped_device_tree_is_written_from_the_options(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    facts = _run(
        tree,
        ["./boards/gateway.dtb", "broadcom/bcm2711-rpi-4-b.dtb"],
        default="./boards/gateway.dtb",
        blobs={"./boards/gateway.dtb": SHIPPED},
    )
    assert (tree / MODULES / "dtb" / "boards" / "gateway.dtb").read_bytes() == SHIPPED
    assert (tree / MODULES / "devicetree").read_bytes() == SHIPPED
    st = (tree / MODULES / "dtb" / "boards" / "gateway.dtb").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o644, 0, 0)
    assert facts["devicetree"] == {
        "files": ["boards/gateway.dtb", "broadcom/bcm2711-rpi-4-b.dtb"],
        "default": "./boards/gateway.dtb",
    }


def test_shipped_device_tree_is_never_read_from_the_tree(tmp_path: Path) -> None:
    # Threat: options without the blob must not fall back to a file of the same name.
    tree = _tree(tmp_path)
    (tree / "boards").mkdir()
    (tree / "boards" / "gateway.dtb").write_bytes(CUSTOM)
    with pytest.raises(StageError, match=r"\./boards/gateway\.dtb: no valid blob"):
        _run(tree, ["./boards/gateway.dtb"])


def test_blob_for_a_name_not_listed_is_refused(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    with pytest.raises(StageError, match=r"blobs for device trees not in files: \./extra\.dtb"):
        _run(tree, ["broadcom/bcm2711-rpi-4-b.dtb"], blobs={"./extra.dtb": SHIPPED})


# --- planning ---------------------------------------------------------------------------------


def _names(text: str) -> list[str]:
    return [spec.name for spec in plan(bp.parse(text), TARGET)]


def test_plan_has_no_devicetree_stage_without_the_table() -> None:
    assert "afield.devicetree" not in _names(EXAMPLE.read_text())


def test_plan_runs_the_devicetree_stage_after_the_files() -> None:
    text = EXAMPLE.read_text() + (
        "\n[customizations.afield.devicetree]\n"
        'files = ["broadcom/bcm2711-rpi-4-b.dtb", "/etc/gateway/board.dtb"]\n'
        'default = "/etc/gateway/board.dtb"\n'
    )
    specs = plan(bp.parse(text), TARGET)
    names = [spec.name for spec in specs]
    index = names.index("afield.devicetree")
    assert names[index - 1] == "afield.files"
    assert index < names.index("afield.device.agent")
    assert names.index("afield.kernel") < index
    options = specs[index].options
    assert options == {
        "files": ["broadcom/bcm2711-rpi-4-b.dtb", "/etc/gateway/board.dtb"],
        "default": "/etc/gateway/board.dtb",
        "blobs": {},
    }
    jsonschema.validate(dict(options), stage_schema(registry()["afield.devicetree"]))


def test_plan_passes_a_missing_default_as_null() -> None:
    text = EXAMPLE.read_text() + (
        '\n[customizations.afield.devicetree]\nfiles = ["broadcom/bcm2711-rpi-4-b.dtb"]\n'
    )
    [spec] = [s for s in plan(bp.parse(text), TARGET) if s.name == "afield.devicetree"]
    assert spec.options == {"files": ["broadcom/bcm2711-rpi-4-b.dtb"], "default": None, "blobs": {}}


def _shipping(
    tmp_path: Path, files: list[str], blobs: dict[str, bytes], default: str | None = None
) -> Path:
    """A blueprint file in ``tmp_path/bp`` listing ``files``, with ``blobs`` (paths relative to
    its directory) beside it; its path."""
    directory = tmp_path / "bp"
    directory.mkdir(exist_ok=True)
    for name, data in blobs.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)
    table = "\n[customizations.afield.devicetree]\nfiles = [" + ", ".join(
        f'"{name}"' for name in files
    )
    table += "]\n" + (f'default = "{default}"\n' if default else "")
    path = directory / "gateway.toml"
    path.write_text(EXAMPLE.read_text() + table)
    return path


def _devicetree_spec(path: Path) -> dict[str, Any]:
    [spec] = [s for s in plan(bp.load(path), TARGET) if s.name == "afield.devicetree"]
    return dict(spec.options)


def _plan_error(path: Path) -> ComposeError:
    with pytest.raises(ComposeError) as e:
        plan(bp.load(path), TARGET)
    assert e.value.user_error
    return e.value


def test_plan_pins_shipped_device_trees_and_the_stage_installs_them(tmp_path: Path) -> None:
    path = _shipping(
        tmp_path,
        ["./boards/gateway.dtb", "broadcom/bcm2711-rpi-4-b.dtb"],
        {"boards/gateway.dtb": SHIPPED},
        default="./boards/gateway.dtb",
    )
    options = _devicetree_spec(path)
    assert options == {
        "files": ["./boards/gateway.dtb", "broadcom/bcm2711-rpi-4-b.dtb"],
        "default": "./boards/gateway.dtb",
        "blobs": {"./boards/gateway.dtb": _b64(SHIPPED)},
    }
    # The builder's copy may change or vanish after planning; the stage uses the pinned bytes.
    (path.parent / "boards" / "gateway.dtb").unlink()
    tree = _tree(tmp_path)
    _run_options(tree, options)
    assert (tree / MODULES / "dtb" / "boards" / "gateway.dtb").read_bytes() == SHIPPED
    assert (tree / MODULES / "devicetree").read_bytes() == SHIPPED


def test_editing_a_shipped_device_tree_changes_the_stage_id(tmp_path: Path) -> None:
    # Threat: a cached stage silently reused after the board's .dtb was rebuilt.
    path = _shipping(tmp_path, ["./board.dtb"], {"board.dtb": SHIPPED})
    before = plan(bp.load(path), TARGET)
    (path.parent / "board.dtb").write_bytes(SHIPPED + b" v2")
    after = plan(bp.load(path), TARGET)
    index = [s.name for s in before].index("afield.devicetree")
    assert before[index].options["blobs"] != after[index].options["blobs"]
    assert stage_ids(before)[:index] == stage_ids(after)[:index]
    assert stage_ids(before)[index] != stage_ids(after)[index]


def test_shipped_file_that_is_not_a_device_tree_is_refused(tmp_path: Path) -> None:
    path = _shipping(
        tmp_path, ["./a.dtb", "./board.dtb"], {"a.dtb": SHIPPED, "board.dtb": b"/dts-v1/;"}
    )
    error = _plan_error(path)
    assert error.message == (
        f"customizations.afield.devicetree.files[1]: {path.parent / 'board.dtb'} is not a "
        "flattened device tree (a .dtb starts with the bytes d0 0d fe ed; compile a .dts with dtc)"
    )


def test_too_large_shipped_device_tree_is_refused(tmp_path: Path) -> None:
    # Threat: a huge file pulled into the stage options (and the cache's records).
    path = _shipping(tmp_path, ["./big.dtb"], {"big.dtb": SHIPPED.ljust(MAX_BLOB_BYTES + 1, b"\0")})
    error = _plan_error(path)
    assert error.message.startswith("customizations.afield.devicetree.files[0]: ")
    assert f"{path.parent / 'big.dtb'} is larger than the limit of {MAX_BLOB_BYTES} bytes" in (
        error.message
    )


def test_the_largest_shipped_device_tree_is_accepted(tmp_path: Path) -> None:
    path = _shipping(tmp_path, ["./big.dtb"], {"big.dtb": SHIPPED.ljust(MAX_BLOB_BYTES, b"\0")})
    assert len(base64.b64decode(_devicetree_spec(path)["blobs"]["./big.dtb"])) == MAX_BLOB_BYTES
    _run_options(_tree(tmp_path), _devicetree_spec(path))  # within the schema's maxLength


def test_shipped_device_trees_too_large_together_are_refused(tmp_path: Path) -> None:
    count = MAX_BLOBS_BYTES // MAX_BLOB_BYTES + 1
    blob = SHIPPED.ljust(MAX_BLOB_BYTES, b"\0")
    path = _shipping(
        tmp_path, [f"./d{i}.dtb" for i in range(count)], {f"d{i}.dtb": blob for i in range(count)}
    )
    error = _plan_error(path)
    assert error.message == (
        f"customizations.afield.devicetree.files[{count - 1}]: the device trees shipped with the "
        f"blueprint hold more than {MAX_BLOBS_BYTES} bytes together"
    )


def test_shipped_device_tree_linking_out_of_the_blueprint_directory_is_refused(
    tmp_path: Path,
) -> None:
    # Threat: a blueprint that bakes a builder file (a key, a password hash) into the image.
    path = _shipping(tmp_path, ["./board.dtb"], {})
    (tmp_path / "secret.dtb").write_bytes(SHIPPED)
    (path.parent / "board.dtb").symlink_to(tmp_path / "secret.dtb")
    error = _plan_error(path)
    assert error.message == (
        f"customizations.afield.devicetree.files[0]: ./board.dtb resolves to "
        f"{tmp_path / 'secret.dtb'}, outside the blueprint's directory {path.parent}; a './' "
        "device tree must be a file inside it"
    )


def test_shipped_device_tree_linking_inside_the_blueprint_directory_is_read(
    tmp_path: Path,
) -> None:
    path = _shipping(tmp_path, ["./board.dtb"], {"boards/real.dtb": SHIPPED})
    (path.parent / "board.dtb").symlink_to("boards/real.dtb")
    assert _devicetree_spec(path)["blobs"] == {"./board.dtb": _b64(SHIPPED)}


def test_missing_shipped_device_tree_names_the_path(tmp_path: Path) -> None:
    path = _shipping(tmp_path, ["./a.dtb", "./boards/gone.dtb"], {"a.dtb": SHIPPED})
    error = _plan_error(path)
    assert error.message == (
        f"customizations.afield.devicetree.files[1]: ./boards/gone.dtb not found: "
        f"{path.parent / 'boards' / 'gone.dtb'} does not exist (a './' name is relative to the "
        "blueprint's directory)"
    )


def test_shipped_device_tree_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    path = _shipping(tmp_path, ["./odd.dtb"], {})
    (path.parent / "odd.dtb").mkdir()
    error = _plan_error(path)
    assert error.message == (
        f"customizations.afield.devicetree.files[0]: {path.parent / 'odd.dtb'} is not a "
        "regular file"
    )


def test_shipped_device_tree_of_a_blueprint_not_read_from_a_file_is_refused() -> None:
    # No directory to look in: the current directory would be a guess.
    text = EXAMPLE.read_text() + '\n[customizations.afield.devicetree]\nfiles = ["./board.dtb"]\n'
    with pytest.raises(ComposeError) as e:
        plan(bp.parse(text), TARGET)
    assert e.value.user_error
    assert e.value.message == (
        "customizations.afield.devicetree.files[0]: ./board.dtb is a file relative to the "
        "blueprint's directory, but this blueprint was not read from a file; compose it from a "
        "file to ship device trees with it"
    )
