"""The command line: exit codes, one-line errors that name the problem, and --json output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import EXAMPLE, afield


def test_validate_accepts_the_example() -> None:
    result = afield("blueprint", "validate", str(EXAMPLE))
    assert result.returncode == 0
    assert "valid blueprint gateway 1.0.0" in result.stdout


def test_validate_json_reports_name_version_and_hash() -> None:
    data = json.loads(afield("blueprint", "validate", str(EXAMPLE), "--json").stdout)
    assert data["valid"] is True
    assert data["name"] == "gateway"
    assert len(data["sha256"]) == 64


def test_invalid_blueprint_exits_2_naming_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'name = "gw"\nversion = "1.0.0"\ncolour = "blue"\n'
        '[[customizations.files]]\npath = "/boot/x"\ndata = ""\n'
    )
    result = afield("blueprint", "validate", str(bad))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert str(bad) in result.stderr
    assert "colour" in result.stderr
    assert "customizations.files[0].path" in result.stderr
    assert "Traceback" not in result.stderr


def test_toml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "syntax.toml"
    bad.write_text('name = "gw"\nversion = 1.0.0\n')
    result = afield("blueprint", "validate", str(bad))
    assert result.returncode == 2
    assert "line 2" in result.stderr and "column" in result.stderr


def test_missing_blueprint_file_exits_2(tmp_path: Path) -> None:
    result = afield("blueprint", "validate", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert "nope.toml" in result.stderr


def test_compose_of_an_invalid_blueprint_exits_2_and_creates_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "gw"\nversion = "one"\n')
    repo = tmp_path / "repo"
    result = afield("compose", str(bad), "--repo", str(repo))
    assert result.returncode == 2
    assert "version" in result.stderr
    assert not repo.exists()


def test_image_ls_on_a_directory_that_is_no_repository_exits_2(tmp_path: Path) -> None:
    result = afield("image", "ls", "--repo", str(tmp_path))
    assert result.returncode == 2
    assert "not an afield repository" in result.stderr


def test_unknown_option_is_a_usage_error_exit_2() -> None:
    result = afield("image", "ls", "--colour")
    assert result.returncode == 2


def test_version_flag_prints_the_version() -> None:
    from afield import __version__

    result = afield("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == __version__


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = afield("--debug", "blueprint", "validate", str(tmp_path / "nope.toml"))
    assert result.returncode != 0
    assert "Traceback" in result.stderr


def test_the_cli_starts_without_builder_only_modules() -> None:
    # The same `afield` command runs on devices, whose image has no builder dependencies.
    code = (
        "import sys, afield.cli\n"
        "bad = [m for m in ('jsonschema', 'packaging', 'hatchling', 'afield.compose') "
        "if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_the_cli_starts_without_server_packages() -> None:
    # A device's image has afield's device extra only: importing the CLI (every command group)
    # must not pull in uvicorn, FastAPI, Starlette or SQLAlchemy; servers import them when run.
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'uvicorn', 'fastapi', 'starlette', 'sqlalchemy'}:\n"
        "            raise ImportError(f'server package {name} imported')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import afield.cli\n"
    )
    done = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_command_that_exits_with_a_code_makes_main_return_it() -> None:
    # `afield device healthcheck` exits 1 when unhealthy; systemd must see that code.
    import typer

    from afield import cli

    def failing() -> None:
        raise typer.Exit(3)

    cli.app.command("exit-three-for-test")(failing)
    try:
        assert cli.main(["exit-three-for-test"]) == 3
        assert cli.main(["--version"]) == 0
    finally:
        cli.app.registered_commands.pop()
