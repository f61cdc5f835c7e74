"""The device agent stage without a Debian tree: its unit, its options and what they pin.

Installing the agent into a real image (and running it there) is tested with the session's
composed example in ``test_compose_image.py``.
"""

from __future__ import annotations

import configparser
import importlib.metadata
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest

import afield
from afield.compose.pipeline import registry, stage_ids, stage_schema
from afield.compose.plan import plan
from afield.compose.stages import device_agent
from afield.errors import ComposeError
from tests.compose.test_plan import TARGET, _example
from tests.conftest import PROJECT


def _unit(name: str = "afield-healthcheck.service") -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(device_agent.unit_text(name))
    return unit


def _agent_options() -> dict[str, object]:
    spec = next(s for s in plan(_example(), TARGET) if s.name == device_agent.NAME)
    return dict(spec.options)


def _copy_project(into: Path) -> Path:
    """A source checkout of afield in ``into`` (pyproject, README, src/afield) to change."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(PROJECT / name, into / name)
    shutil.copytree(
        PROJECT / "src" / "afield",
        into / "src" / "afield",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return into


def test_agent_unit_runs_the_agent_after_the_boot_was_judged() -> None:
    unit = _unit("afield-agent.service")
    assert unit["Service"]["ExecStart"] == f"{device_agent.PREFIX}/bin/afield device run"
    assert unit["Service"]["Restart"] == "on-failure"
    assert "afield-healthcheck.service" in unit["Unit"]["After"].split()
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert "afield-agent.service" in device_agent.UNITS


def test_healthcheck_unit_runs_the_agent_once_before_boot_complete() -> None:
    unit = _unit()
    assert unit["Service"]["Type"] == "oneshot"
    assert unit["Service"]["RemainAfterExit"] == "yes"
    assert unit["Service"]["ExecStart"] == f"{device_agent.PREFIX}/bin/afield device healthcheck"
    assert unit["Unit"]["Before"].split() == ["boot-complete.target"]
    assert set(unit["Unit"]["After"].split()) == {
        "local-fs.target",
        "network-online.target",
        "afield-workloads.service",
    }
    assert unit["Unit"]["Wants"].split() == ["network-online.target"]
    assert unit["Install"]["RequiredBy"].split() == ["boot-complete.target"]
    assert unit["Install"]["WantedBy"].split() == ["multi-user.target"]


def test_workloads_unit_starts_the_manifests_before_the_health_check() -> None:
    unit = _unit("afield-workloads.service")
    assert unit["Service"]["Type"] == "oneshot"
    assert unit["Service"]["ExecStart"] == f"{device_agent.PREFIX}/bin/afield workloads up"
    assert unit["Unit"]["Before"].split() == ["afield-healthcheck.service"]
    assert unit["Unit"]["ConditionPathExists"] == "/usr/bin/podman"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    check = device_agent.CHECKS["/usr/lib/greenboot/check/required.d/50-afield-workloads.sh"]
    assert check.endswith("exec /usr/bin/afield workloads wait\n")


def test_every_unit_the_stage_installs_ships_in_the_wheel(tmp_path: Path) -> None:
    # A unit missing from the wheel would pass in a source checkout and break installed builders.
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*build, "--wheel-dir", str(tmp_path), str(PROJECT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("afield-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for unit in device_agent.UNITS:
        assert f"afield/device/units/{unit}" in names
    assert "afield/compose/stages/device_agent.json" in names


def test_plan_installs_the_agent_after_locale_and_before_prepare() -> None:
    specs = plan(_example(), TARGET)
    names = [s.name for s in specs]
    assert names.index("afield.locale") + 1 == names.index(device_agent.NAME)
    assert names.index(device_agent.NAME) + 1 == names.index("afield.ostree.prepare")
    assert registry()[device_agent.NAME].CHECKPOINT is False
    for package in device_agent.PACKAGES:
        assert package in specs[0].options["packages"]
    assert "bubblewrap" not in specs[0].options["packages"]


def test_schema_accepts_the_options_the_plan_gives_for_the_example() -> None:
    options = _agent_options()
    jsonschema.validate(options, stage_schema(registry()[device_agent.NAME]))
    assert options["python"] == "3.11"
    assert options["architecture"] == "amd64"
    assert options["source_date_epoch"] == 1767225600


def test_options_pin_the_builders_versions_and_leave_pygobject_to_debian() -> None:
    requirements = _agent_options()["requirements"]
    assert isinstance(requirements, dict)
    # The base dependencies and what they need, at exactly the versions the builder runs.
    for name in ("typer", "rich", "pydantic", "pydantic-core"):
        assert requirements[name] == importlib.metadata.version(name)
    assert "pygobject" not in requirements
    assert "jsonschema" not in requirements  # builder only
    assert list(requirements) == sorted(requirements)


def test_options_are_the_same_for_the_same_source() -> None:
    assert _agent_options() == _agent_options()


def test_changed_afield_source_changes_the_agent_stage_and_later_ids_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stale agent must never be reused from the cache after afield's code changed.
    before = plan(_example(), TARGET)
    project = _copy_project(tmp_path)
    monkeypatch.setattr(device_agent, "source_dir", lambda: project)
    assert plan(_example(), TARGET) == before
    health = project / "src" / "afield" / "device" / "health.py"
    health.write_text(health.read_text() + "\n# changed\n")
    after = plan(_example(), TARGET)
    old, new = stage_ids(before), stage_ids(after)
    agent = [s.name for s in before].index(device_agent.NAME)
    assert old[:agent] == new[:agent]
    assert all(a != b for a, b in zip(old[agent:], new[agent:], strict=True))
    old_afield = before[agent].options["afield"]
    new_afield = after[agent].options["afield"]
    assert old_afield["source_sha256"] != new_afield["source_sha256"]


def test_changed_afield_version_changes_the_agent_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = _copy_project(tmp_path)
    monkeypatch.setattr(device_agent, "source_dir", lambda: project)
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('version = "0.1.0"', 'version = "0.2.0"', 1))
    options = _agent_options()["afield"]
    assert isinstance(options, dict)
    assert options["version"] == "0.2.0"


def test_source_hash_covers_content_and_execute_bits_not_bytecode(tmp_path: Path) -> None:
    project = _copy_project(tmp_path)
    base = device_agent.source_sha256(project)
    cache = project / "src" / "afield" / "__pycache__"
    cache.mkdir()
    (cache / "errors.cpython-311.pyc").write_bytes(b"\0")
    assert device_agent.source_sha256(project) == base
    errors = project / "src" / "afield" / "errors.py"
    errors.chmod(0o755)
    assert device_agent.source_sha256(project) != base
    errors.chmod(0o644)
    assert device_agent.source_sha256(project) == base
    (project / "src" / "afield" / "device" / "units" / "extra.service").write_text("[Unit]\n")
    assert device_agent.source_sha256(project) != base


def test_afield_not_installed_from_a_checkout_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed = tmp_path / "lib" / "python3.11" / "site-packages" / "afield" / "__init__.py"
    installed.parent.mkdir(parents=True)
    installed.touch()
    monkeypatch.setattr(afield, "__file__", str(installed))
    with pytest.raises(ComposeError, match=r"not from a source checkout.*pip install -e"):
        plan(_example(), TARGET)


def test_unsupported_suite_is_refused() -> None:
    with pytest.raises(ComposeError, match="trixie/amd64"):
        device_agent.plan_options(suite="trixie", architecture="amd64", source_date_epoch=0)
