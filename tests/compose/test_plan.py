"""Planning: which stages a blueprint needs, and which of their ids a change touches."""

from __future__ import annotations

from afield import blueprint as bp
from afield.compose.pipeline import stage_ids
from afield.compose.plan import BASE_PACKAGES, Target, image_ref, plan
from tests.conftest import EXAMPLE

TARGET = Target(
    suite="bookworm",
    debian_arch="amd64",
    mirrors=("deb http://deb.debian.org/debian bookworm main",),
)


def _example(**replace: str) -> bp.Blueprint:
    text = EXAMPLE.read_text()
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new, 1)
    return bp.parse(text)


def test_plan_installs_base_kernel_and_blueprint_packages() -> None:
    specs = plan(_example(), TARGET)
    bootstrap = specs[0].options
    assert specs[0].name == "afield.debian.bootstrap"
    for name in (*BASE_PACKAGES, "linux-image-cloud-amd64", "openssh-server", "locales", "tzdata"):
        assert name in bootstrap["packages"]
    assert bootstrap["packages"] == sorted(bootstrap["packages"])
    assert bootstrap["source_date_epoch"] == 1767225600
    assert specs[-1].name == "afield.ostree.commit"
    assert specs[-1].options["ref"] == "afield/gateway/x86_64/stable"


def test_plan_normalises_service_names_to_units() -> None:
    services = next(s for s in plan(_example(), TARGET) if s.name == "afield.services")
    assert services.options["enabled"] == ["ssh.service", "nftables.service"]


def test_version_constraints_go_to_the_bootstrap_stage() -> None:
    blueprint = _example(**{'name = "curl"': 'name = "curl"\nversion = "7.88.*"'})
    assert plan(blueprint, TARGET)[0].options["constraints"] == {"curl": "7.88.*"}


def test_files_change_keeps_package_and_kernel_stage_ids() -> None:
    old = stage_ids(plan(_example(), TARGET))
    new = stage_ids(plan(_example(**{"interval_seconds = 30": "interval_seconds = 60"}), TARGET))
    # bootstrap, kernel and users are untouched; files and everything after it change.
    assert old[:3] == new[:3]
    assert all(a != b for a, b in zip(old[3:], new[3:], strict=True))


def test_package_change_invalidates_everything() -> None:
    old = stage_ids(plan(_example(), TARGET))
    new = stage_ids(plan(_example(**{'name = "curl"': 'name = "wget"'}), TARGET))
    assert all(a != b for a, b in zip(old, new, strict=True))


def test_explicit_ref_overrides_the_image_ref() -> None:
    blueprint = _example()
    assert image_ref(blueprint, TARGET) == "afield/gateway/x86_64/stable"
    assert plan(blueprint, TARGET, ref="lab/gw")[-1].options["ref"] == "lab/gw"
