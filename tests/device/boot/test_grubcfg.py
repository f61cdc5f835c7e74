"""grubcfg: the rendered grub.cfg, checked by GRUB's own parser and run in GRUB itself.

``grub-script-check`` (grub-common) checks the syntax. ``grub-emu`` (Debian's grub-emu package)
is GRUB 2.06 built as a program: it runs the rendered file for real, with ``load_env`` and
``save_env`` on a grubenv inside an ext2 image (mkfs.ext2 from e2fsprogs), so the counter script is
compared with :func:`afield.device.boot.counter.firmware_choose` in the bootloader that will run
it. A tiny interpreter for the script's subset runs the same comparison where grub-emu is missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afield.device.boot.bls import BootEntry, load_entries
from afield.device.boot.counter import COUNTER, MAX_ATTEMPTS_LIMIT, SUCCESS, firmware_choose
from afield.device.boot.grubcfg import (
    COUNTER_BEGIN,
    COUNTER_END,
    GrubCfgError,
    kernel_arguments,
    render_grub_cfg,
)
from afield.device.boot.grubenv import GRUBENV_SIZE, format_grubenv, parse_grubenv

from .test_bls import OSTREE, deploy_sysroot, needs_ostree_admin

SCRIPT_CHECK = shutil.which("grub-script-check")
GRUB_EMU = shutil.which("grub-emu")
MKFS = shutil.which("mkfs.ext2") or (
    "/usr/sbin/mkfs.ext2" if Path("/usr/sbin/mkfs.ext2").exists() else None
)
DEBUGFS = shutil.which("debugfs") or (
    "/usr/sbin/debugfs" if Path("/usr/sbin/debugfs").exists() else None
)
# grub-common, grub-emu and e2fsprogs are installed by scripts/bootstrap.sh: a missing tool
# fails the test, it never skips it.
T = TypeVar("T")


def needs_script_check(test: T) -> T:
    """Documents that the test runs grub-script-check."""
    return test


needs_grub_emu = pytest.mark.root

NASTY_TITLES = [
    'Debian "; reboot; " it\'s',
    "$(reboot) `halt` ${prefix} $root",
    "--id x",
    "'; halt; echo '",
    "a\\b {c} #d ;e &f |g <h>",
    "Débian ✓ 12",
]
GARBAGE = [" 1", "1 ", "03", "+1", "11", "-2", "abc", "=", "-n", "-z", "!", "(", ")", "[", "]"]
GARBAGE += ["-o", "-a", "\\", "a\nb", "${boot_success}", "1;", "x", "0x1", '"1"']


def entry(n: int, **fields: object) -> BootEntry:
    defaults: dict[str, object] = {
        "title": f"Debian GNU/Linux 12 {n}.0 (ostree:{n})",
        "initrd": (f"/ostree/debian-{n}/initramfs.img",),
        "options": f"root=UUID=1234 rw ostree=/ostree/boot.1/debian/{n}/0",
        "devicetree": f"/ostree/debian-{n}/board.dtb",
    }
    defaults.update(fields)
    return BootEntry(
        path=Path(f"/boot/loader/entries/ostree-{9 - n}-debian.conf"),
        version=9 - n,
        linux=f"/ostree/debian-{n}/vmlinuz",
        **defaults,  # type: ignore[arg-type]
    )


def script_check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    assert SCRIPT_CHECK is not None
    path = tmp_path / "grub.cfg"
    path.write_text(text)
    return subprocess.run([SCRIPT_CHECK, str(path)], capture_output=True, text=True)


# --- a tiny interpreter for the counter block ----------------------------------------------

_COND = re.compile(r'(if|elif) \[ "x\$\{(\w+)\}" (=|!=) "x([0-9-]*)" \]; then\Z')
_LOAD = re.compile(r"if load_env(?: -f '[^']*')? ([\w ]+); then\Z")
_SAVE = re.compile(r"save_env(?: -f '[^']*')? ([\w ]+)\Z")
_SET = re.compile(r"set (\w+)=([0-9-]+)\Z")


def interpret(text: str, env: dict[str, str] | None) -> tuple[int, dict[str, str] | None]:
    """Run the counter block of ``text`` for a grubenv (None: cannot be loaded).

    Understands exactly the lines render_grub_cfg writes and fails on anything else, so a change
    to the script that this interpreter does not model cannot pass unnoticed.
    """
    lines = [line.strip() for line in text.splitlines()]
    start, end = lines.index(COUNTER_BEGIN), lines.index(COUNTER_END)
    assert "set default=0" in lines[:start]
    variables: dict[str, str] = {"default": "0"}
    saved = None if env is None else dict(env)
    stack: list[tuple[bool, bool]] = []  # (running this branch, some branch of this if ran)
    running = True
    for line in lines[start + 1 : end]:
        if not line or line.startswith("#"):
            continue
        if match := _LOAD.match(line):
            loaded = env is not None
            if loaded:
                assert env is not None
                variables.update({k: env[k] for k in match.group(1).split() if k in env})
            stack.append((running, loaded))
            running = running and loaded
        elif match := _COND.match(line):
            keyword, name, op, literal = match.groups()
            value = variables.get(name, "")
            truth = (value == literal) == (op == "=")
            if keyword == "if":
                stack.append((running, truth))
                running = running and truth
            else:
                parent, done = stack[-1]
                running = parent and not done and truth
                stack[-1] = (parent, done or truth)
        elif line == "else":
            parent, done = stack[-1]
            running = parent and not done
        elif line == "fi":
            running, _ = stack.pop()
        elif match := _SET.match(line):
            if running:
                variables[match.group(1)] = match.group(2)
        elif match := _SAVE.match(line):
            if running:
                assert saved is not None
                for name in match.group(1).split():
                    if name in variables:
                        saved[name] = variables[name]
                    else:
                        saved.pop(name, None)
        else:
            raise AssertionError(f"line the interpreter does not know: {line!r}")
    assert not stack
    return int(variables["default"]), saved


COUNTER_VALUES = ["", *(str(n) for n in range(-1, MAX_ATTEMPTS_LIMIT + 2)), *GARBAGE]
SUCCESS_VALUES = ["", "0", "1", "2", "-n", "00"]


def maybe(values: st.SearchStrategy[str]) -> st.SearchStrategy[str | None]:
    return st.one_of(st.none(), values, st.text(max_size=4))


grubenvs = st.builds(
    lambda counter, success, other: {
        k: v for k, v in [(COUNTER, counter), (SUCCESS, success), ("x", other)] if v is not None
    },
    maybe(st.sampled_from(COUNTER_VALUES)),
    maybe(st.sampled_from(SUCCESS_VALUES)),
    maybe(st.just("kept")),
)


@pytest.mark.parametrize("counter", [None, *COUNTER_VALUES])
@pytest.mark.parametrize("success", [None, *SUCCESS_VALUES])
def test_counter_script_decides_as_firmware_choose(
    counter: str | None, success: str | None
) -> None:
    # Threat: the GRUB script and the Python model drift apart, so tests prove the wrong thing.
    env = {k: v for k, v in [(COUNTER, counter), (SUCCESS, success)] if v is not None}
    text = render_grub_cfg([entry(0), entry(1)])
    choice = firmware_choose(env, 2)
    assert interpret(text, env) == (choice.entry_index, choice.env)


@settings(max_examples=300, deadline=None)
@given(
    env=st.one_of(st.none(), grubenvs),
    n_entries=st.integers(1, 3),
    fallback_index=st.integers(0, 2),
)
def test_counter_script_decides_as_firmware_choose_for_any_menu(
    env: dict[str, str] | None, n_entries: int, fallback_index: int
) -> None:
    # Threat: the script and the model disagree for some menu size or fallback entry.
    text = render_grub_cfg([entry(n) for n in range(n_entries)], fallback_index=fallback_index)
    choice = firmware_choose(env, n_entries, fallback_index=fallback_index)
    assert interpret(text, env) == (choice.entry_index, choice.env)


# --- GRUB itself -----------------------------------------------------------------------------


@dataclass
class Case:
    env: dict[str, str] | None  # None: a block GRUB rejects too (no signature)
    n_entries: int = 2
    fallback_index: int = 1


def run_grub(tmp_path: Path, wrapper: str, files: dict[str, bytes]) -> tuple[str, Path]:
    """Run grub-emu on ``wrapper`` with ``files`` in an ext2 image as (hd0); return stdout."""
    assert GRUB_EMU is not None and MKFS is not None and DEBUGFS is not None
    image_dir = tmp_path / "image"
    image_dir.mkdir()
    for name, data in files.items():
        (image_dir / name).write_bytes(data)
    disk = tmp_path / "disk.img"
    with disk.open("wb") as f:
        f.truncate(4 * 1024 * 1024)
    subprocess.run([MKFS, "-q", "-F", "-d", str(image_dir), str(disk)], check=True)
    (tmp_path / "device.map").write_text(f"(hd0) {disk}\n")
    (tmp_path / "grub.cfg").write_text("set root=(hd0)\nset prefix=(hd0)/\n" + wrapper)
    result = subprocess.run(
        [GRUB_EMU, "-m", str(tmp_path / "device.map"), "-d", str(tmp_path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
        check=True,
    )
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run([DEBUGFS, "-R", f"rdump / {out}", str(disk)], capture_output=True, check=True)
    return result.stdout.decode("utf-8", "replace").replace("\r", ""), out


@needs_grub_emu
def test_counter_script_in_grub_decides_as_firmware_choose(tmp_path: Path) -> None:
    # Threat: GRUB reads the script differently than the interpreter and the model do.
    cases = [Case({COUNTER: c, SUCCESS: "0"}) for c in ["0", "1", "2", "-1", "", *GARBAGE]]
    cases += [Case({COUNTER: str(MAX_ATTEMPTS_LIMIT), SUCCESS: "0", "other": "kept"})]
    cases += [Case({SUCCESS: s}) for s in ["0", "1", "junk"]]
    for counter in ["2", "-1", "abc"]:
        cases += [
            Case({COUNTER: counter}),
            *(Case({COUNTER: counter, SUCCESS: s}) for s in ["", "1", "2", "-n"]),
        ]
    cases += [Case({COUNTER: "0", SUCCESS: "0"}, n, f) for n in (0, 1, 3) for f in (0, 1, 2)]
    cases += [Case({}), Case(None), Case(None, 3, 0)]
    files: dict[str, bytes] = {}
    wrapper = []
    for i, case in enumerate(cases):
        files[f"env{i}"] = b"\0" * GRUBENV_SIZE if case.env is None else format_grubenv(case.env)
        text = render_grub_cfg(
            [entry(n) for n in range(case.n_entries)],
            fallback_index=case.fallback_index,
            env_file=f"(hd0)/env{i}",
        )
        (tmp_path / f"case{i}.cfg").write_text(text)
        wrapper += [
            f"unset {COUNTER}",
            f"unset {SUCCESS}",
            f"source (host){tmp_path}/case{i}.cfg",
            f'echo "AFIELD-CASE {i} <${{default}}>"',
        ]
    stdout, out = run_grub(tmp_path, "\n".join([*wrapper, "halt", ""]), files)
    decided = dict(re.findall(r"AFIELD-CASE (\d+) <(\d+)>", stdout))
    assert len(decided) == len(cases), stdout
    for i, case in enumerate(cases):
        choice = firmware_choose(case.env, case.n_entries, fallback_index=case.fallback_index)
        after = (out / f"env{i}").read_bytes()
        got_env = None if case.env is None else parse_grubenv(after)
        expected_index = 0 if choice.entry_index is None else choice.entry_index
        assert (int(decided[str(i)]), got_env) == (expected_index, choice.env), (i, case)
        if case.env is None:
            assert after == files[f"env{i}"]


BOOT_HARNESS = """\
function linux {{
  echo "AFIELD-CHOSEN <${{chosen}}>"
  for a in "$@"; do echo "AFIELD-LINUX <${{a}}>"; done
}}
function initrd {{
  for a in "$@"; do echo "AFIELD-INITRD <${{a}}>"; done
}}
function devicetree {{
  echo "AFIELD-DTB <$1>"
  halt
}}
source (host){cfg}
set timeout=0
menuentry 'stop' {{ halt }}
set fallback={n}
"""


def boot(tmp_path: Path, entries: list[BootEntry], env: dict[str, str]) -> dict[str, list[str]]:
    """Boot the rendered menu in grub-emu; return what each command of the booted entry got."""
    cfg = tmp_path / "rendered.cfg"
    cfg.write_text(render_grub_cfg(entries, timeout=0))
    harness = BOOT_HARNESS.format(cfg=cfg, n=len(entries))
    stdout, _ = run_grub(tmp_path, harness, {"grubenv": format_grubenv(env)})
    seen: dict[str, list[str]] = {}
    for kind, value in re.findall(r"AFIELD-(\w+) <(.*?)>\n", stdout, re.DOTALL):
        seen.setdefault(kind, []).append(value)
    return seen


@needs_grub_emu
@pytest.mark.parametrize("title", NASTY_TITLES)
def test_hostile_title_is_shown_verbatim_and_runs_nothing(tmp_path: Path, title: str) -> None:
    # Threat: a title (from a commit's version string) injects GRUB commands into grub.cfg.
    seen = boot(tmp_path, [entry(0, title=title), entry(1)], {SUCCESS: "1"})
    assert seen["CHOSEN"] == [title.replace(">", ">>")]  # GRUB's menu paths escape '>' so
    assert seen["DTB"] == ["/ostree/debian-0/board.dtb"]


@needs_grub_emu
def test_grub_gets_paths_and_kernel_arguments_unchanged(tmp_path: Path) -> None:
    options = 'root=UUID=1234 rw  quiet foo="a b" "bar=c d" x=$y ;reboot systemd.unit=a\\x2db'
    first = entry(0, options=options, initrd=("/i/one.img", "/i/two.img"))
    seen = boot(tmp_path, [first, entry(1)], {SUCCESS: "1"})
    assert seen["LINUX"] == [
        "/ostree/debian-0/vmlinuz",
        "root=UUID=1234",
        "rw",
        "quiet",
        "foo=a b",
        "bar=c d",
        "x=$y",
        ";reboot",
        "systemd.unit=a\\x2db",
    ]
    assert seen["INITRD"] == ["/i/one.img", "/i/two.img"]


@needs_grub_emu
def test_spent_counter_boots_the_fallback_entry_in_grub(tmp_path: Path) -> None:
    seen = boot(tmp_path, [entry(0), entry(1)], {COUNTER: "0", SUCCESS: "0"})
    assert seen["CHOSEN"] == [entry(1).title]
    assert seen["LINUX"][-1] == "ostree=/ostree/boot.1/debian/1/0"


@pytest.mark.root
@needs_grub_emu
@needs_ostree_admin
def test_menu_from_real_ostree_entries_boots_the_default_deployment(tmp_path: Path) -> None:
    assert OSTREE is not None
    sysroot = deploy_sysroot(tmp_path / "os", ["1.0", "2.0"])
    entries = load_entries(sysroot / "boot/loader/entries")
    (tmp_path / "rendered.cfg").write_text(render_grub_cfg(entries, timeout=0))
    expected = f"ostree={entries[0].ostree_path}"  # longer than a terminal line: compare in GRUB
    harness = f"""\
function linux {{
  echo "AFIELD-CHOSEN <${{chosen}}>"
  for a in "$@"; do
    if [ "x${{a}}" = "x{expected}" ]; then echo "AFIELD-DEPLOYMENT-ARGUMENT"; fi
  done
  halt
}}
source (host){tmp_path}/rendered.cfg
"""
    stdout, _ = run_grub(tmp_path, harness, {"grubenv": format_grubenv({SUCCESS: "1"})})
    assert f"AFIELD-CHOSEN <{entries[0].title}>" in stdout
    assert "AFIELD-DEPLOYMENT-ARGUMENT" in stdout


# --- syntax and refusals ---------------------------------------------------------------------


@needs_script_check
@pytest.mark.parametrize("n_entries", [0, 1, 2])
def test_grub_script_check_accepts_menus_of_any_size(tmp_path: Path, n_entries: int) -> None:
    text = render_grub_cfg([entry(n) for n in range(n_entries)], boot_fs_uuid="1234-ABCD")
    result = script_check(tmp_path, text)
    assert result.returncode == 0, result.stderr
    assert text.count("menuentry ") == n_entries


@needs_script_check
def test_grub_script_check_accepts_hostile_titles(tmp_path: Path) -> None:
    entries = [entry(n, title=title) for n, title in enumerate(NASTY_TITLES)]
    result = script_check(tmp_path, render_grub_cfg(entries, env_file="/grub/it's env"))
    assert result.returncode == 0, result.stderr


def test_entry_without_title_is_named_after_its_file() -> None:
    text = render_grub_cfg([entry(0, title=None)])
    assert "-- 'ostree-9-debian' {" in text


def test_entry_without_initrd_or_devicetree_has_no_such_lines() -> None:
    text = render_grub_cfg([entry(0, initrd=(), devicetree=None, options="")])
    assert "  linux '/ostree/debian-0/vmlinuz'\n}" in text
    assert "initrd" not in text
    assert "devicetree" not in text


def test_fallback_beyond_the_menu_is_entry_zero() -> None:
    assert "set default=1" not in render_grub_cfg([entry(0)], fallback_index=1)
    assert "set default=1" in render_grub_cfg([entry(0), entry(1)], fallback_index=1)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ("", []),
        ("  a\tb  ", ["a", "b"]),
        ('k="v w"', ["k=v w"]),
        ('"k=v w" z', ["k=v w", "z"]),
        ("k=a=b", ["k=a=b"]),
        ("esc=\\x41", ["esc=\\x41"]),
    ],
)
def test_kernel_arguments_split_as_the_kernel_does(options: str, words: list[str]) -> None:
    assert kernel_arguments(options) == words


@pytest.mark.parametrize(
    "options", ["it's", "a\\b", "a\\", 'k="v', 'a"b c"d', 'k=v"w"', "a\nb", "a\x00"]
)
def test_kernel_argument_grub_would_alter_is_refused(options: str) -> None:
    # Threat: GRUB re-escapes quotes and backslashes, so the kernel would get a different line.
    with pytest.raises(GrubCfgError):
        render_grub_cfg([entry(0, options=options)])


@pytest.mark.parametrize(
    "fields",
    [
        {"title": "new\nline"},
        {"title": "bell\x07"},
        {"linux": "vmlinuz"},
        {"initrd": ("initrd.img",)},
        {"devicetree": "-dtb"},
    ],
)
def test_unsafe_entry_is_refused_naming_its_file(fields: dict[str, object]) -> None:
    # Threat: a control character or a relative path makes GRUB parse or load something else.
    with pytest.raises(GrubCfgError, match=r"ostree-9-debian\.conf"):
        render_grub_cfg([replace(entry(0), **fields)])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [{"timeout": -1}, {"timeout": 3601}, {"fallback_index": -1}, {"boot_fs_uuid": "x; reboot"}],
)
def test_settings_out_of_range_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(GrubCfgError):
        render_grub_cfg([entry(0)], **kwargs)  # type: ignore[arg-type]


def test_grubenv_variables_other_than_the_counter_are_not_loaded() -> None:
    # Threat: a `default` or `next_entry` planted in grubenv steers the boot past the counter.
    text = render_grub_cfg([entry(0), entry(1)])
    assert f"if load_env {COUNTER} {SUCCESS}; then" in text
    assert "set default=0\n### BEGIN" in text
