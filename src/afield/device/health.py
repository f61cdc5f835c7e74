"""Greenboot-compatible health checks: find the scripts of a deployment, run them, report.

Scripts are found as greenboot-rs 0.16 does (``src/lib/greenboot.rs`` in fedora-iot/greenboot-rs,
which replaced the shell ``usr/libexec/greenboot/greenboot`` of greenboot <= 0.15), so existing
scripts work unchanged:

* Directories ``check/required.d``, ``check/wanted.d``, ``green.d`` and ``red.d`` under both
  ``/usr/lib/greenboot`` and ``/etc/greenboot``. The trees are **not** merged: a script in
  ``/etc`` does not mask one of the same name in ``/usr/lib``, both run. Order: every
  ``/usr/lib`` script of a stage, then every ``/etc`` one; all required checks before any wanted
  check. Within a directory, entries run in byte order of their names (hidden files included, as
  greenboot's ``glob("dir/*")`` includes them); subdirectories are not entered.
* An entry runs if it is a regular file (symlinks followed) and either its name ends in ``.sh`` or
  it has an execute bit. ``*.sh`` files run as ``bash -C FILE`` whatever their mode and shebang;
  other executables run directly. Anything else is ignored.
* The first failing required check makes the boot unhealthy and stops everything: the checks after
  it (required and wanted) are skipped and listed. A failing wanted check is a warning. A boot with
  no ``check/required.d`` in either tree is unhealthy ("cannot find any required.d folder").
* ``DISABLED_HEALTHCHECKS`` names files (not paths) to skip in required.d and wanted.d of both
  trees; a listed name that matches no script is a warning. green.d and red.d ignore it.

afield adds a per-script timeout (``AFIELD_HEALTHCHECK_TIMEOUT``): a script still running then is
killed with its whole process group and fails with reason "timeout". Processes a script leaves
behind in its group are killed when it exits. Output (stdout and stderr together) is kept up to
its last :data:`OUTPUT_LIMIT` bytes. Scripts get stdin from ``/dev/null``, working directory ``/``
and the environment :data:`SCRIPT_ENV`.

Discovery and configuration are pure or read-only; running goes through an :class:`Executor`.
Deciding what a result means for the boot counter, running green.d/red.d at the right time and
rolling back are left to the agent and ``afield.device.boot``.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import stat
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Literal, Protocol, cast

from afield.device._greenboot_conf import GreenbootConfig, parse_config
from afield.errors import DeviceError

__all__ = [
    "BubblewrapExecutor",
    "CheckResult",
    "ExecResult",
    "Executor",
    "GreenbootConfig",
    "HealthReport",
    "HostExecutor",
    "Script",
    "SkippedCheck",
    "discover",
    "load_config",
    "parse_config",
    "run_checks",
    "run_green",
    "run_red",
]

Stage = Literal["required", "wanted", "green", "red"]

TREES = ("/usr/lib/greenboot", "/etc/greenboot")
STAGE_DIRS: Mapping[Stage, str] = {
    "required": "check/required.d",
    "wanted": "check/wanted.d",
    "green": "green.d",
    "red": "red.d",
}
CONFIG_PATH = "/etc/greenboot/greenboot.conf"
MAX_CONFIG_BYTES = 64 * 1024
OUTPUT_LIMIT = 64 * 1024
SCRIPT_ENV: Mapping[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}
_DRAIN_SECONDS = 1.0  # how long to read leftovers after the script exited or was killed


# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExecResult:
    """What running one command gave: exit status (negative: killed by that signal), output."""

    returncode: int
    output: str
    timed_out: bool
    duration: float


@dataclass(frozen=True)
class CheckResult:
    """One script's run; ``path`` is where the deployment has it, ``reason`` why it failed."""

    name: str
    stage: Stage
    path: str
    returncode: int
    ok: bool
    timed_out: bool
    duration: float
    output: str
    reason: str | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class SkippedCheck:
    """A check that did not run: ``reason`` is "disabled" or "after a failed required check"."""

    name: str
    stage: Stage
    path: str
    reason: str

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class HealthReport:
    """The outcome of required.d and wanted.d: healthy or not, and why."""

    healthy: bool
    checks: tuple[CheckResult, ...]
    warnings: tuple[str, ...]
    started_at: datetime
    finished_at: datetime
    skipped: tuple[SkippedCheck, ...] = ()

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        """The required checks that failed (at most one: the first failure stops the run)."""
        return tuple(c for c in self.checks if c.stage == "required" and not c.ok)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form; times are ISO 8601 in UTC."""
        return {
            "healthy": self.healthy,
            "checks": [c.to_dict() for c in self.checks],
            "skipped": [s.to_dict() for s in self.skipped],
            "warnings": list(self.warnings),
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
        }


# --- discovery (reads the tree, runs nothing) ---------------------------------------------------


@dataclass(frozen=True)
class Script:
    """A script to run: its file name, stage, path inside the deployment and command line."""

    name: str
    stage: Stage
    path: str
    argv: tuple[str, ...]


@dataclass(frozen=True)
class Entry:
    """A directory entry as discovery sees it: name, regular file (after symlinks), mode bits."""

    name: str
    is_file: bool
    mode: int


def _resolve(root: Path, inner: str, *, max_links: int = 40) -> Path | None:
    """Where ``inner`` (absolute, inside the tree) is on the host, following symlinks as if
    ``root`` were ``/``; None for a symlink loop or an unreadable link."""
    todo = [p for p in reversed(inner.split("/")) if p]
    parts: list[str] = []
    while todo:
        part = todo.pop()
        if part in (".", ".."):
            if part == ".." and parts:
                parts.pop()
            continue
        here = root.joinpath(*parts, part)
        if not here.is_symlink():
            parts.append(part)
            continue
        max_links -= 1
        try:
            target = os.readlink(here)
        except OSError:
            return None
        if max_links < 0:
            return None
        if target.startswith("/"):
            parts = []
        todo.extend(p for p in reversed(target.split("/")) if p)
    return root.joinpath(*parts)


def _list(root: Path, directory: str) -> list[Entry] | None:
    """The entries of ``directory`` in the tree, or None if it is not a directory.

    Raises:
        DeviceError: the directory exists but cannot be listed.
    """
    host = _resolve(root, directory)
    if host is None or not host.is_dir():
        return None
    try:
        names = os.listdir(host)
    except OSError as e:
        raise DeviceError(f"{directory}: cannot list: {e.strerror or e}") from e
    entries = []
    for name in names:
        target = _resolve(root, f"{directory}/{name}")
        try:
            st = os.stat(target) if target is not None else None
        except OSError:
            st = None
        entries.append(
            Entry(name, st is not None and stat.S_ISREG(st.st_mode), st.st_mode if st else 0)
        )
    return entries


def select_scripts(stage: Stage, directory: str, entries: Iterable[Entry]) -> tuple[Script, ...]:
    """Pick and order the scripts of one directory as greenboot does (pure)."""
    scripts = []
    for entry in sorted(entries, key=lambda e: os.fsencode(e.name)):
        is_sh = PurePosixPath(entry.name).suffix == ".sh"
        if not entry.is_file or not (is_sh or entry.mode & 0o111):
            continue
        path = f"{directory}/{entry.name}"
        argv = ("bash", "-C", path) if is_sh else (path,)
        scripts.append(Script(entry.name, stage, path, argv))
    return tuple(scripts)


def discover(root: Path, stage: Stage) -> tuple[Script, ...]:
    """Every script of ``stage`` in the deployment at ``root``, in the order greenboot runs them."""
    scripts: list[Script] = []
    for tree in TREES:
        directory = f"{tree}/{STAGE_DIRS[stage]}"
        scripts += select_scripts(stage, directory, _list(root, directory) or ())
    return tuple(scripts)


def load_config(root: Path, *, max_bytes: int = MAX_CONFIG_BYTES) -> GreenbootConfig:
    """Read ``/etc/greenboot/greenboot.conf`` of the deployment at ``root``; defaults if absent.

    Raises:
        DeviceError: the file is unreadable, larger than ``max_bytes``, not UTF-8 or malformed.
    """
    host = _resolve(root, CONFIG_PATH)
    if host is None or not host.exists():
        return GreenbootConfig()
    try:
        with open(host, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise DeviceError(f"{CONFIG_PATH}: cannot read: {e.strerror or e}") from e
    if len(data) > max_bytes:
        raise DeviceError(f"{CONFIG_PATH}: larger than {max_bytes} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DeviceError(f"{CONFIG_PATH}: not UTF-8 text (byte {e.start})") from e
    return parse_config(text, path=CONFIG_PATH)


# --- running ------------------------------------------------------------------------------------


class Executor(Protocol):
    """Runs a command whose paths are as seen inside the deployment."""

    def run(self, argv: list[str], *, timeout: float, env: Mapping[str, str]) -> ExecResult:
        """Run ``argv`` with ``env``; kill its process group after ``timeout`` seconds."""
        ...


def _spawn(
    argv: Sequence[str], *, cwd: str, env: Mapping[str, str], timeout: float, limit: int
) -> ExecResult:
    """Run ``argv`` in a new process group, keeping the last ``limit`` bytes of its output.

    Raises:
        OSError: the command could not be started.
    """
    start = time.monotonic()
    deadline, buf, dropped, timed_out = start + timeout, bytearray(), 0, False
    with (
        subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        ) as proc,
        selectors.DefaultSelector() as sel,
    ):
        fd = cast(IO[bytes], proc.stdout).fileno()  # a pipe: stdout=PIPE above
        sel.register(fd, selectors.EVENT_READ)
        exited = eof = False
        while True:
            now = time.monotonic()
            if not exited and now >= deadline:
                timed_out, exited, deadline = True, True, now + _DRAIN_SECONDS
                _killpg(proc.pid)
            elif not exited and os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                # the leader is a zombie, so its group id cannot be reused: kill the leftovers
                exited, deadline = True, min(deadline, now + _DRAIN_SECONDS)
                _killpg(proc.pid)
            elif exited and (eof or now >= deadline):
                break
            wait = min(0.05, max(deadline - now, 0))
            if eof:  # output closed but the script still runs: keep watching the clock
                time.sleep(wait)
                continue
            for _key, _events in sel.select(wait):
                chunk = os.read(fd, 65536)
                if not chunk:
                    eof = True
                    sel.unregister(fd)
                buf += chunk
                if len(buf) > limit:
                    dropped += len(buf) - limit
                    del buf[: len(buf) - limit]
        returncode = proc.wait()
    output = buf.decode("utf-8", errors="replace")
    if dropped:
        output = f"[afield: {dropped} earlier bytes of output dropped]\n{output}"
    return ExecResult(returncode, output, timed_out, time.monotonic() - start)


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


@dataclass(frozen=True)
class HostExecutor:
    """Runs commands on this host; absolute paths in argv are taken relative to ``root``.

    With ``root`` ``/`` (a real device) this is a plain subprocess. With another root only the
    script's path is translated: the script itself still sees the host's ``/``.
    """

    root: Path = Path("/")
    output_limit: int = OUTPUT_LIMIT

    def run(self, argv: list[str], *, timeout: float, env: Mapping[str, str]) -> ExecResult:
        """Run ``argv``; a command that cannot start gives 127 (not found) or 126, as a shell."""
        host = [str(self.root / a.lstrip("/")) if a.startswith("/") else a for a in argv]
        try:
            return _spawn(
                host, cwd=str(self.root), env=env, timeout=timeout, limit=self.output_limit
            )
        except OSError as e:
            code = 127 if isinstance(e, FileNotFoundError) else 126
            return ExecResult(code, f"cannot execute {host[0]}: {e.strerror or e}\n", False, 0.0)


@dataclass(frozen=True)
class BubblewrapExecutor:
    """Runs commands inside the tree at ``root`` with bubblewrap, so they see it as ``/``.

    The sandbox has its own ``/proc``, a minimal ``/dev``, an empty ``/tmp``, and its own PID and
    IPC namespaces; it dies with its parent. Its network is its own too (no network at all)
    unless ``share_net``: then it uses the host's, as the checks of a booted device see the
    device's network (the boot simulator shares it, so a check can reach a fleet manager on
    127.0.0.1). ``extra_args`` are passed to bwrap before the command, e.g.
    ``("--bind", "/srv/dev1/var", "/var")``. Meant to run as root.
    """

    root: Path
    output_limit: int = OUTPUT_LIMIT
    bwrap: str = "bwrap"
    extra_args: tuple[str, ...] = field(default=())
    share_net: bool = False

    def command(self, argv: Sequence[str]) -> list[str]:
        """The full bwrap command line for ``argv``."""
        net = () if self.share_net else ("--unshare-net",)
        return [
            self.bwrap,
            *("--bind", str(self.root), "/", "--proc", "/proc", "--dev", "/dev"),
            *("--tmpfs", "/tmp", "--unshare-pid", *net, "--unshare-ipc"),  # noqa: S108
            *("--die-with-parent", "--chdir", "/", *self.extra_args, "--", *argv),
        ]

    def run(self, argv: list[str], *, timeout: float, env: Mapping[str, str]) -> ExecResult:
        """Run ``argv`` in the sandbox.

        Raises:
            DeviceError: bwrap itself cannot be started.
        """
        try:
            return _spawn(
                self.command(argv), cwd="/", env=env, timeout=timeout, limit=self.output_limit
            )
        except OSError as e:
            raise DeviceError(f"cannot run {self.bwrap}: {e.strerror or e}") from e


def _run(script: Script, executor: Executor, config: GreenbootConfig) -> CheckResult:
    r = executor.run(list(script.argv), timeout=config.timeout, env=SCRIPT_ENV)
    ok = r.returncode == 0 and not r.timed_out
    if ok:
        reason = None
    elif r.timed_out:
        reason = "timeout"
    elif r.returncode < 0:
        reason = f"killed by signal {-r.returncode}"
    else:
        reason = f"exit status {r.returncode}"
    return CheckResult(
        script.name,
        script.stage,
        script.path,
        r.returncode,
        ok,
        r.timed_out,
        r.duration,
        r.output,
        reason,
    )


def run_checks(root: Path, executor: Executor, config: GreenbootConfig) -> HealthReport:
    """Run required.d, then wanted.d, of the deployment at ``root`` (see the module docstring).

    Raises:
        DeviceError: the executor cannot run anything at all (e.g. bwrap is missing).
    """
    started = datetime.now(UTC)
    required, wanted = discover(root, "required"), discover(root, "wanted")
    checks: list[CheckResult] = []
    skipped: list[SkippedCheck] = []
    warnings: list[str] = []
    has_required = any(
        _list(root, f"{tree}/{STAGE_DIRS['required']}") is not None for tree in TREES
    )
    if not has_required:
        warnings.append(
            "cannot find any required.d folder: "
            + ", ".join(f"{tree}/{STAGE_DIRS['required']}" for tree in TREES)
        )
    failed = False
    for script in (*required, *wanted):
        if failed:
            skipped.append(
                SkippedCheck(
                    script.name, script.stage, script.path, "after a failed required check"
                )
            )
            continue
        if script.name in config.disabled:
            skipped.append(SkippedCheck(script.name, script.stage, script.path, "disabled"))
            continue
        result = _run(script, executor, config)
        checks.append(result)
        if not result.ok and script.stage == "required":
            failed = True
        elif not result.ok:
            warnings.append(f"wanted check {script.path} failed: {result.reason}")
    present = {s.name for s in (*required, *wanted)}
    warnings += (
        f"disabled check {name!r} was not found in any directory (misspelled?)"
        for name in sorted(config.disabled - present)
    )
    return HealthReport(
        healthy=has_required and not failed,
        checks=tuple(checks),
        warnings=tuple(warnings),
        started_at=started,
        finished_at=datetime.now(UTC),
        skipped=tuple(skipped),
    )


def run_green(root: Path, executor: Executor, config: GreenbootConfig) -> tuple[CheckResult, ...]:
    """Run every green.d script (after a healthy boot); failures are reported, nothing stops."""
    return tuple(_run(s, executor, config) for s in discover(root, "green"))


def run_red(root: Path, executor: Executor, config: GreenbootConfig) -> tuple[CheckResult, ...]:
    """Run every red.d script (after an unhealthy boot); failures are reported, nothing stops."""
    return tuple(_run(s, executor, config) for s in discover(root, "red"))
