"""The stage registry: every stage module loads and carries a complete, strict JSON schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest

from afield.compose.pipeline import StageSpec, load_stage, registry, stage_ids, stage_schema
from afield.errors import ComposeError

STAGES = sorted(registry())


def _objects(schema: dict[str, Any], where: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every object schema inside ``schema`` (itself, properties, items, $defs)."""
    found: list[tuple[str, dict[str, Any]]] = []
    if schema.get("type") == "object":
        found.append((where or "(root)", schema))
    for key in ("properties", "$defs"):
        for name, sub in schema.get(key, {}).items():
            found += _objects(sub, f"{where}.{name}")
    if isinstance(schema.get("items"), dict):
        found += _objects(schema["items"], f"{where}[]")
    return found


def test_the_pipeline_stages_are_all_registered() -> None:
    assert (
        sorted(
            [
                "afield.debian.bootstrap",
                "afield.kernel",
                "afield.containers",
                "afield.users",
                "afield.files",
                "afield.devicetree",
                "afield.services",
                "afield.hostname",
                "afield.timezone",
                "afield.locale",
                "afield.device.agent",
                "afield.manifests",
                "afield.ostree.prepare",
                "afield.ostree.commit",
            ]
        )
        == STAGES
    )


@pytest.mark.parametrize("name", STAGES)
def test_stage_module_has_name_checkpoint_run_and_a_valid_schema(name: str) -> None:
    module = registry()[name]
    assert isinstance(module.CHECKPOINT, bool)
    assert callable(module.run)
    assert module.__doc__ and module.__doc__.startswith(f"Stage {name}:")
    schema = stage_schema(module)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["title"] == name
    assert Path(module.__file__).with_suffix(".json").is_file()


@pytest.mark.parametrize("name", STAGES)
def test_stage_schema_is_closed_and_documented(name: str) -> None:
    schema = stage_schema(registry()[name])
    assert "description" in schema
    defs = schema.get("$defs", {})
    for where, obj in _objects(schema):
        if isinstance(obj.get("additionalProperties"), dict):
            continue  # a map from names to values, e.g. package -> version; no fixed keys
        assert obj.get("additionalProperties") is False, f"{name} {where}"
        assert "required" in obj, f"{name} {where}"
        for prop, sub in obj.get("properties", {}).items():
            if "$ref" in sub:
                sub = defs[sub["$ref"].rsplit("/", 1)[-1]]
            assert "description" in sub, f"{name} {where}.{prop} has no description"


def test_unknown_stage_is_refused_with_the_known_names() -> None:
    with pytest.raises(ComposeError, match=r"unknown stage 'afield.nope'.*afield.files"):
        load_stage("afield.nope")


def _specs(hostname: str, timezone: str | None) -> list[StageSpec]:
    return [
        StageSpec("afield.files", {"directories": [], "files": []}),
        StageSpec("afield.hostname", {"hostname": hostname}),
        StageSpec("afield.timezone", {"timezone": timezone, "ntpservers": []}),
    ]


def test_changing_a_stage_changes_its_id_and_every_later_id_only() -> None:
    base = stage_ids(_specs("a", None))
    changed = stage_ids(_specs("b", None))
    assert base[0] == changed[0]
    assert base[1] != changed[1]
    assert base[2] != changed[2]
    assert stage_ids(_specs("a", None)) == base
    last_only = stage_ids(_specs("a", "UTC"))
    assert last_only[:2] == base[:2] and last_only[2] != base[2]
