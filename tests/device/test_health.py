"""Health checks run as greenboot runs them: real scripts in temporary deployment trees."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afield.device.health import (
    BubblewrapExecutor,
    GreenbootConfig,
    HealthReport,
    HostExecutor,
    discover,
    load_config,
    parse_config,
    run_checks,
    run_green,
    run_red,
)
from afield.errors import DeviceError

REQ = "usr/lib/greenboot/check/required.d"
WANT = "usr/lib/greenboot/check/wanted.d"
ETC_REQ = "etc/greenboot/check/required.d"
ETC_WANT = "etc/greenboot/check/wanted.d"
CONF = "etc/greenboot/greenboot.conf"


def put(root: Path, path: str, body: str, mode: int = 0o755) -> Path:
    """Write ``body`` to ``root/path`` with ``mode``."""
    file = root / path
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(body)
    file.chmod(mode)
    return file


def logging_script(log: Path, name: str, status: int = 0) -> str:
    """A bash script that appends ``name`` to ``log`` and exits with ``status``."""
    return f"#!/bin/bash\necho {name} >> {log}\nexit {status}\n"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A deployment tree with empty required.d and wanted.d directories."""
    tree = tmp_path / "deploy"
    for d in (REQ, WANT, ETC_REQ, ETC_WANT):
        (tree / d).mkdir(parents=True)
    return tree


def check(root: Path, config: GreenbootConfig | None = None) -> HealthReport:
    """Run the checks of ``root`` on this host."""
    return run_checks(root, HostExecutor(root), config or GreenbootConfig())


def gone(pid: int) -> bool:
    """True once ``pid`` no longer runs (reaped, or a zombie nobody reaped yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


# --- required and wanted ----------------------------------------------------------------------


def test_required_failure_makes_the_boot_unhealthy_with_its_output(root: Path) -> None:
    # Threat: a broken deployment is marked good because a failing required check is ignored.
    put(root, f"{REQ}/10_ok.sh", "echo fine\n")
    put(root, f"{REQ}/20_bad.sh", "echo 'db is down' >&2\necho on stdout\nexit 3\n")
    report = check(root)
    assert not report.healthy
    bad = report.failed[0]
    assert (bad.name, bad.stage, bad.returncode, bad.reason) == (
        "20_bad.sh",
        "required",
        3,
        "exit status 3",
    )
    assert bad.path == "/usr/lib/greenboot/check/required.d/20_bad.sh"
    assert "db is down" in bad.output and "on stdout" in bad.output
    assert report.checks[0].ok and report.checks[0].output == "fine\n"


def test_wanted_failure_is_a_warning_and_the_boot_stays_healthy(root: Path) -> None:
    # Threat: an optional check (e.g. update server reachable) rolls back a working deployment.
    put(root, f"{REQ}/10_ok.sh", "exit 0\n")
    put(root, f"{WANT}/10_flaky.sh", "exit 1\n")
    report = check(root)
    assert report.healthy
    assert [c.ok for c in report.checks] == [True, False]
    assert report.warnings == (f"wanted check /{WANT}/10_flaky.sh failed: exit status 1",)


def test_first_required_failure_skips_every_later_check(root: Path, tmp_path: Path) -> None:
    # Threat: checks keep running (and changing state) on a deployment already known bad;
    # greenboot-rs stops at the first required failure, and so must we.
    log = tmp_path / "log"
    put(root, f"{REQ}/10_bad.sh", logging_script(log, "a", 1))
    put(root, f"{REQ}/20_never.sh", logging_script(log, "b"))
    put(root, f"{ETC_REQ}/10_never.sh", logging_script(log, "c"))
    put(root, f"{WANT}/10_never.sh", logging_script(log, "d"))
    report = check(root)
    assert not report.healthy
    assert log.read_text() == "a\n"
    assert [(s.path, s.reason) for s in report.skipped] == [
        (f"/{REQ}/20_never.sh", "after a failed required check"),
        (f"/{ETC_REQ}/10_never.sh", "after a failed required check"),
        (f"/{WANT}/10_never.sh", "after a failed required check"),
    ]


def test_missing_required_directories_make_the_boot_unhealthy(tmp_path: Path) -> None:
    # Threat: a deployment without its health checks at all passes as healthy
    # (greenboot-rs: "cannot find any required.d folder").
    put(tmp_path, f"{WANT}/10_ok.sh", "exit 0\n")
    report = check(tmp_path)
    assert not report.healthy
    assert "cannot find any required.d folder" in report.warnings[0]


def test_empty_required_directory_is_healthy(root: Path) -> None:
    # Threat: a deployment with no checks installed is rolled back for nothing.
    assert check(root).healthy


def test_disabled_check_is_skipped_in_both_trees_and_listed(root: Path, tmp_path: Path) -> None:
    # Threat: an operator cannot switch off a vendor check that fails on their hardware.
    log = tmp_path / "log"
    put(root, f"{REQ}/01_dns.sh", logging_script(log, "usr", 1))
    put(root, f"{ETC_REQ}/01_dns.sh", logging_script(log, "etc", 1))
    put(root, f"{REQ}/02_ok.sh", logging_script(log, "ok"))
    report = check(root, GreenbootConfig(disabled=frozenset({"01_dns.sh"})))
    assert report.healthy
    assert log.read_text() == "ok\n"
    assert [(s.path, s.reason) for s in report.skipped] == [
        (f"/{REQ}/01_dns.sh", "disabled"),
        (f"/{ETC_REQ}/01_dns.sh", "disabled"),
    ]


def test_disabled_name_that_matches_no_script_is_a_warning(root: Path) -> None:
    # Threat: a misspelt DISABLED_HEALTHCHECKS entry silently disables nothing.
    report = check(root, GreenbootConfig(disabled=frozenset({"01_dsn.sh"})))
    assert report.healthy
    assert report.warnings == (
        "disabled check '01_dsn.sh' was not found in any directory (misspelled?)",
    )


# --- discovery: trees, order, what counts as a script ------------------------------------------


def test_etc_does_not_mask_usr_lib_and_usr_lib_runs_first(root: Path, tmp_path: Path) -> None:
    # Threat: a same-named /etc script hides the vendor's check. greenboot runs both trees,
    # /usr/lib before /etc, all required checks before any wanted one.
    log = tmp_path / "log"
    put(root, f"{ETC_WANT}/00_a.sh", logging_script(log, "etc-wanted"))
    put(root, f"{WANT}/00_a.sh", logging_script(log, "usr-wanted"))
    put(root, f"{ETC_REQ}/00_a.sh", logging_script(log, "etc-required"))
    put(root, f"{REQ}/00_a.sh", logging_script(log, "usr-required"))
    assert check(root).healthy
    assert log.read_text().split() == ["usr-required", "etc-required", "usr-wanted", "etc-wanted"]


def test_scripts_run_in_byte_order_of_their_names(root: Path, tmp_path: Path) -> None:
    # Threat: checks that depend on each other run out of order (locale-dependent sorting).
    log = tmp_path / "log"
    for name in ("b.sh", "10_x.sh", "B.sh", "01_x.sh", "_z.sh", "a.sh"):
        put(root, f"{REQ}/{name}", logging_script(log, name))
    check(root)
    assert log.read_text().split() == ["01_x.sh", "10_x.sh", "B.sh", "_z.sh", "a.sh", "b.sh"]


def test_sh_files_run_with_bash_even_when_not_executable(root: Path) -> None:
    # Threat: a check copied without its mode bit is silently skipped. greenboot runs *.sh with
    # `bash -C` whatever the mode or shebang.
    put(root, f"{REQ}/10_plain.sh", '#!/bin/false\n[ -n "$BASH_VERSION" ] || exit 9\n', mode=0o644)
    report = check(root)
    assert [c.name for c in report.checks] == ["10_plain.sh"]
    assert report.healthy


def test_executables_without_sh_suffix_run_directly(root: Path) -> None:
    # Threat: compiled checks or other interpreters (greenboot-rs runs them) are ignored.
    put(root, f"{REQ}/10_check", "#!/bin/sh\necho direct\nexit 4\n")
    report = check(root)
    assert report.checks[0].output == "direct\n"
    assert report.checks[0].returncode == 4


def test_non_executable_non_sh_files_directories_and_broken_links_are_ignored(root: Path) -> None:
    # Threat: a README, a backup directory or a dangling link is run (or crashes the runner).
    put(root, f"{REQ}/README", "exit 1\n", mode=0o644)
    (root / REQ / "old.sh").mkdir()
    (root / REQ / "gone.sh").symlink_to("/nonexistent/x.sh")
    report = check(root)
    assert report.healthy
    assert report.checks == ()


def test_absolute_symlinks_resolve_inside_the_tree_not_on_the_host(root: Path) -> None:
    # Threat: a link in the deployment to /usr/libexec/x runs (or hides) the host's file.
    put(root, "usr/libexec/afield/check.sh", "exit 0\n")
    (root / REQ / "10_link.sh").symlink_to("/usr/libexec/afield/check.sh")
    (root / REQ / "20_host.sh").symlink_to("/etc/hostname")  # exists on the host, not in the tree
    assert [s.name for s in discover(root, "required")] == ["10_link.sh"]


def test_command_that_cannot_start_fails_with_127(root: Path) -> None:
    # Threat: a check with a missing interpreter crashes the runner instead of failing the boot.
    put(root, f"{REQ}/10_check", "#!/nonexistent/interpreter\n")
    report = check(root)
    assert not report.healthy
    assert report.failed[0].returncode == 127


# --- timeouts and output ------------------------------------------------------------------------


def test_timeout_kills_the_script_and_its_children(root: Path, tmp_path: Path) -> None:
    # Threat: a hung check (or a child it forked) blocks the boot forever.
    pidfile = tmp_path / "child.pid"
    put(root, f"{REQ}/10_hang.sh", f"sleep 100 &\necho $! > {pidfile}\nsleep 100\n")
    started = time.monotonic()
    report = check(root, GreenbootConfig(timeout=0.5))
    assert time.monotonic() - started < 3
    hung = report.checks[0]
    assert (hung.ok, hung.timed_out, hung.reason) == (False, True, "timeout")
    assert not report.healthy
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 2
    while not gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(child)


def test_closing_its_output_does_not_let_a_script_escape_the_timeout(root: Path) -> None:
    # Threat: a hung check that closed stdout/stderr is waited for forever.
    put(root, f"{REQ}/10_quiet.sh", "exec >/dev/null 2>&1\nsleep 100\n")
    started = time.monotonic()
    report = check(root, GreenbootConfig(timeout=0.5))
    assert time.monotonic() - started < 3
    assert report.checks[0].reason == "timeout"


def test_background_process_left_behind_is_killed_and_does_not_block(
    root: Path, tmp_path: Path
) -> None:
    # Threat: a check that starts a daemon holding our output pipe stalls the runner.
    pidfile = tmp_path / "child.pid"
    put(root, f"{REQ}/10_spawn.sh", f"sleep 100 &\necho $! > {pidfile}\necho done\n")
    report = check(root, GreenbootConfig(timeout=30))
    assert report.healthy
    assert report.checks[0].duration < 3
    assert report.checks[0].output == "done\n"
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 2
    while not gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(child)


def test_output_is_capped_to_its_last_bytes(root: Path) -> None:
    # Threat: a chatty check fills the device's memory and its report.
    put(root, f"{REQ}/10_chatty.sh", "head -c 200000 /dev/zero | tr '\\0' x\necho\necho THE END\n")
    report = run_checks(root, HostExecutor(root, output_limit=1000), GreenbootConfig())
    output = report.checks[0].output
    assert output.endswith("THE END\n")
    assert output.startswith(f"[afield: {200009 - 1000} earlier bytes of output dropped]\n")
    assert len(output.split("\n", 1)[1]) == 1000


# --- green.d and red.d --------------------------------------------------------------------------


def test_green_and_red_scripts_run_from_both_trees_and_ignore_disabled(tmp_path: Path) -> None:
    # Threat: post-boot actions (report success, collect logs on failure) never happen.
    log = tmp_path / "log"
    put(tmp_path, "usr/lib/greenboot/green.d/10.sh", logging_script(log, "green-usr", 1))
    put(tmp_path, "etc/greenboot/green.d/10.sh", logging_script(log, "green-etc"))
    put(tmp_path, "etc/greenboot/red.d/10.sh", logging_script(log, "red-etc"))
    config = GreenbootConfig(disabled=frozenset({"10.sh"}))
    green = run_green(tmp_path, HostExecutor(tmp_path), config)
    assert [(r.stage, r.path, r.ok) for r in green] == [
        ("green", "/usr/lib/greenboot/green.d/10.sh", False),
        ("green", "/etc/greenboot/green.d/10.sh", True),
    ]
    red = run_red(tmp_path, HostExecutor(tmp_path), config)
    assert [(r.stage, r.ok) for r in red] == [("red", True)]
    assert log.read_text().split() == ["green-usr", "green-etc", "red-etc"]


def test_report_to_dict_is_json(root: Path) -> None:
    # Threat: the agent cannot send the report to the fleet manager.
    put(root, f"{REQ}/10_ok.sh", "echo ok\n")
    data = json.loads(json.dumps(check(root).to_dict()))
    assert data["healthy"] is True
    assert data["checks"][0]["output"] == "ok\n"
    assert data["started_at"].endswith("+00:00")


# --- greenboot.conf -----------------------------------------------------------------------------

GREENBOOT_SHELL_CONF = """\
# Greenboot configuration file

## Generic
# GREENBOOT_MAX_BOOT_ATTEMPTS=3

## Watchdog
GREENBOOT_WATCHDOG_CHECK_ENABLED=true
# GREENBOOT_WATCHDOG_GRACE_PERIOD=24
### DISABLED_HEALTHCHECKS=(
### \t"01_repository_dns_check.sh"
### \t"02_watchdog.sh"
### )
DISABLED_HEALTHCHECKS=()
"""


def test_conf_as_shipped_by_greenboot_gives_defaults() -> None:
    # Threat: greenboot's own file (etc/greenboot/greenboot.conf) is rejected on a real device.
    assert parse_config(GREENBOOT_SHELL_CONF) == GreenbootConfig()
    assert (
        parse_config("GREENBOOT_MAX_BOOT_ATTEMPTS=3\n\nDISABLED_HEALTHCHECKS=()\n")
        == GreenbootConfig()
    )


def test_conf_reads_keys_quotes_and_multiline_arrays() -> None:
    # Threat: a valid shell config means something different to afield than to bash.
    text = (
        "export GREENBOOT_MAX_BOOT_ATTEMPTS='5'  # five\n"
        'AFIELD_HEALTHCHECK_TIMEOUT="0.5"; UNKNOWN_KEY=$(whatever)\n'
        "DISABLED_HEALTHCHECKS=(\n"
        '\t"01_repository dns.sh"  # a comment\n'
        "\t'02_watchdog.sh' 03_x\\ y.sh\n"
        ")\n"
    )
    config = parse_config(text)
    assert config.max_boot_attempts == 5
    assert config.timeout == 0.5
    assert config.disabled == {"01_repository dns.sh", "02_watchdog.sh", "03_x y.sh"}


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (
            "# c\nGREENBOOT_MAX_BOOT_ATTEMPTS=three\n",
            ":2: GREENBOOT_MAX_BOOT_ATTEMPTS: expected an integer",
        ),
        (
            "GREENBOOT_MAX_BOOT_ATTEMPTS=0\n",
            ":1: GREENBOOT_MAX_BOOT_ATTEMPTS: expected an integer 1..10",
        ),
        (
            "\n\nAFIELD_HEALTHCHECK_TIMEOUT=-1\n",
            ":3: AFIELD_HEALTHCHECK_TIMEOUT: expected a number",
        ),
        ("AFIELD_HEALTHCHECK_TIMEOUT=$T\n", ":1: AFIELD_HEALTHCHECK_TIMEOUT: expected"),
        ('DISABLED_HEALTHCHECKS="01.sh"\n', ":1: DISABLED_HEALTHCHECKS: expected a bash array"),
        ("x=1\nDISABLED_HEALTHCHECKS=(\n a.sh\n", ":2: DISABLED_HEALTHCHECKS: unterminated array"),
        (
            'DISABLED_HEALTHCHECKS=("../x.sh")\n',
            ":1: DISABLED_HEALTHCHECKS: '../x.sh' is not a check",
        ),
        ("DISABLED_HEALTHCHECKS=(*.sh)\n", ":1: DISABLED_HEALTHCHECKS: '*.sh': shell expansion"),
        ("A=1\necho hello\n", ":2: not a KEY=VALUE assignment"),
        ("GREENBOOT_MAX_BOOT_ATTEMPTS=3 4\n", ":1: GREENBOOT_MAX_BOOT_ATTEMPTS: unexpected '4'"),
        ('A="open\n\n', ":1: unterminated double quote"),
    ],
)
def test_malformed_conf_error_names_file_line_and_key(
    tmp_path: Path, text: str, where: str
) -> None:
    # Threat: a typo in greenboot.conf silently changes rollback behaviour, or cannot be found.
    put(tmp_path, CONF, text, mode=0o644)
    with pytest.raises(DeviceError) as error:
        load_config(tmp_path)
    assert str(error.value).startswith(f"/etc/greenboot/greenboot.conf{where}")


def test_missing_conf_gives_defaults(tmp_path: Path) -> None:
    # Threat: a device without greenboot.conf refuses to check its health.
    assert load_config(tmp_path) == GreenbootConfig()


def test_oversized_or_binary_conf_is_rejected(tmp_path: Path) -> None:
    # Threat: a huge or corrupt file exhausts memory or is half-read.
    put(tmp_path, CONF, "#" * 100, mode=0o644)
    with pytest.raises(DeviceError, match="larger than 64 bytes"):
        load_config(tmp_path, max_bytes=64)
    (tmp_path / CONF).write_bytes(b"A=\xff\n")
    with pytest.raises(DeviceError, match="not UTF-8"):
        load_config(tmp_path)


SHELLISH = st.lists(
    st.sampled_from(
        [
            "GREENBOOT_MAX_BOOT_ATTEMPTS=",
            "DISABLED_HEALTHCHECKS=",
            "AFIELD_HEALTHCHECK_TIMEOUT=",
            "export ",
            "(",
            ")",
            '"',
            "'",
            "\\",
            "\n",
            " ",
            "\t",
            "#",
            ";",
            "$",
            "3",
            "0.5",
            "a.sh",
            "/",
            "*",
            "=",
            "X",
        ]
    ),
    max_size=40,
).map("".join)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=300), SHELLISH))
def test_conf_fuzz_gives_a_config_or_a_device_error(text: str) -> None:
    # Threat: a crafted greenboot.conf crashes the health-check runner with an unexpected error.
    try:
        config = parse_config(text)
    except DeviceError as e:
        assert str(e).startswith("/etc/greenboot/greenboot.conf:")
    else:
        assert 1 <= config.max_boot_attempts <= 10 and 0 < config.timeout <= 86400


NAMES = st.from_regex(r"[A-Za-z0-9_.][A-Za-z0-9_. -]{0,20}", fullmatch=True).filter(
    lambda n: n not in (".", "..")
)


@given(st.integers(1, 10), st.frozensets(NAMES, max_size=5), st.integers(1, 86400))
def test_conf_written_as_shell_reads_back_the_same(
    attempts: int, disabled: frozenset[str], timeout: int
) -> None:
    # Threat: what an operator writes (quoted as bash needs it) is read differently by afield.
    names = " ".join(f'"{n}"' for n in sorted(disabled))
    text = (
        f"GREENBOOT_MAX_BOOT_ATTEMPTS={attempts}\n"
        f"DISABLED_HEALTHCHECKS=({names})\n"
        f"AFIELD_HEALTHCHECK_TIMEOUT={timeout}\n"
    )
    assert parse_config(text) == GreenbootConfig(attempts, disabled, float(timeout))


# --- bubblewrap ---------------------------------------------------------------------------------


@pytest.fixture
def busybox_root(tmp_path: Path) -> Path:
    """A tiny deployment tree: busybox as /bin/sh (and bash), a marker only it has."""
    busybox = shutil.which("busybox")
    # busybox-static and bubblewrap come from scripts/bootstrap.sh; missing means broken set-up.
    assert busybox is not None and shutil.which("bwrap") is not None
    tree = tmp_path / "busybox-deploy"
    for d in ("bin", "proc", "dev", "tmp", REQ, ETC_REQ):
        (tree / d).mkdir(parents=True)
    shutil.copy(busybox, tree / "bin" / "busybox")
    for name in ("sh", "cat", "sleep"):
        (tree / "bin" / name).symlink_to("busybox")
    put(tree, "bin/bash", '#!/bin/sh\nexec /bin/sh "$@"\n')  # busybox has no "bash" applet
    (tree / "marker").write_text(f"inside {tree.name}\n")
    return tree


@pytest.mark.root
def test_bubblewrap_script_sees_the_tree_as_root(busybox_root: Path) -> None:
    # Threat: a simulated device's checks test the host instead of the deployment being booted.
    put(busybox_root, f"{REQ}/10_marker", "#!/bin/sh\ncat /marker\necho pid=$$\n")
    put(busybox_root, f"{ETC_REQ}/20_bash.sh", "echo via bash\n", mode=0o644)
    assert not Path("/marker").exists()
    report = run_checks(busybox_root, BubblewrapExecutor(busybox_root), GreenbootConfig())
    assert report.healthy, report.to_dict()
    assert report.checks[0].output == "inside busybox-deploy\npid=2\n"
    assert report.checks[1].output == "via bash\n"


@pytest.mark.root
def test_bubblewrap_timeout_kills_the_sandbox(busybox_root: Path) -> None:
    # Threat: a hung check inside the sandbox outlives its timeout.
    put(busybox_root, f"{REQ}/10_hang", "#!/bin/sh\nsleep 100 &\nsleep 100\n")
    started = time.monotonic()
    report = run_checks(
        busybox_root, BubblewrapExecutor(busybox_root), GreenbootConfig(timeout=0.5)
    )
    assert time.monotonic() - started < 3
    assert report.checks[0].reason == "timeout"
    assert not report.healthy


def test_bubblewrap_missing_is_a_device_error(root: Path) -> None:
    # Threat: a broken sandbox setup is mistaken for a failing deployment and rolls it back.
    put(root, f"{REQ}/10_ok.sh", "exit 0\n")
    with pytest.raises(DeviceError, match="cannot run /nonexistent/bwrap"):
        run_checks(root, BubblewrapExecutor(root, bwrap="/nonexistent/bwrap"), GreenbootConfig())


def test_host_executor_passes_a_fixed_environment(root: Path) -> None:
    # Threat: the agent's own environment (tokens, proxies) leaks into third-party check scripts.
    os.environ["AFIELD_TEST_SECRET"] = "leak"  # noqa: S105 - not a password
    try:
        put(root, f"{REQ}/10_env.sh", 'echo "${AFIELD_TEST_SECRET:-clean} $PWD"\n')
        assert check(root).checks[0].output == f"clean {root}\n"
    finally:
        del os.environ["AFIELD_TEST_SECRET"]
