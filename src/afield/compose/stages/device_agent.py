"""Stage afield.device.agent: install afield's device side into the image.

Every afield image carries the agent that boots, checks and rolls it back (DESIGN.md, "The device
side ships inside every composed image"):

- A venv at ``/usr/lib/afield`` made by the image's own ``python3`` with system site packages, so
  the OSTree bindings come from Debian's ``python3-gi`` and ``gir1.2-ostree-1.0`` (the plan adds
  :data:`PACKAGES` to the bootstrap). afield goes in as a wheel built from the builder's source
  checkout; its other dependencies (the ``device`` extra less what Debian provides, and everything
  they need) are pinned to the versions installed in the builder, downloaded as wheels for the
  image's Python into the cache's ``wheels/`` and installed offline, without byte-compiling, from
  a fixed path inside the tree, so the same options always give the same files.
  ``/usr/bin/afield`` links to the venv's ``afield``.
- greenboot's directory layout under ``/usr/lib/greenboot`` and ``/etc/greenboot`` (a boot with no
  ``check/required.d`` is unhealthy), and afield's own required checks in
  ``/usr/lib/greenboot/check/required.d`` (:data:`CHECKS`): ``40-afield-fleet.sh`` fails a boot
  whose agent configuration cannot reach its fleet manager (``afield device check-fleet``), so
  an update that cuts a device off from its fleet rolls back by itself; ``50-afield-workloads.sh``
  fails a boot whose baked workloads are not ready in time (``afield workloads wait``), so an
  update that breaks the application rolls back too.
- ``afield-healthcheck.service`` (shipped in ``afield.device/units``), enabled through links in
  ``/usr/lib/systemd/system`` as its ``[Install]`` section says.

:func:`plan_options` reads the builder (afield's source, versions of installed distributions) and
gives the options that pin all of it, so the stage id changes whenever the installed agent would.
What the agent does at boot is :mod:`afield.device`'s business.
"""

from __future__ import annotations

import configparser
import hashlib
import importlib.metadata
import importlib.resources
import os
import shutil
import stat
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

import afield
from afield.compose._tree import chroot, resolve_in_tree
from afield.compose._tree import run as run_command
from afield.compose.pipeline import Facts, StageContext
from afield.errors import ComposeError, StageError

__all__ = [
    "CHECKS",
    "PACKAGES",
    "PREFIX",
    "UNITS",
    "pinned_requirements",
    "plan_options",
    "source_dir",
    "source_sha256",
    "unit_text",
]

NAME = "afield.device.agent"
CHECKPOINT = False

# Debian packages the agent needs in the image at run time.
PACKAGES = ("python3", "python3-venv", "python3-gi", "gir1.2-ostree-1.0")
PREFIX = "/usr/lib/afield"
UNITS = ("afield-healthcheck.service", "afield-agent.service", "afield-workloads.service")
GREENBOOT_DIRS = ("check/required.d", "check/wanted.d", "green.d", "red.d")
# Health checks every image gets: path in the image -> script (mode 0755).
CHECKS = {
    "/usr/lib/greenboot/check/required.d/40-afield-fleet.sh": (
        "#!/bin/sh\n"
        "# afield: the fleet manager this deployment's agent is configured for must answer\n"
        "# (within network_grace seconds); an unmanaged device passes.\n"
        "exec /usr/bin/afield device check-fleet\n"
    ),
    "/usr/lib/greenboot/check/required.d/50-afield-workloads.sh": (
        "#!/bin/sh\n"
        "# afield: every baked (/usr/lib/afield/manifests{,.d/*}) and local\n"
        "# (/etc/afield/manifests{,.d/*}) workload must be running and ready within\n"
        "# AFIELD_WORKLOADS_WAIT_TIMEOUT_SEC (greenboot.conf; default 300 s), so an update that\n"
        "# breaks the application rolls back. A device with no manifests passes at once.\n"
        "found=\n"
        "for d in /usr/lib/afield/manifests /usr/lib/afield/manifests.d/* \\\n"
        "         /etc/afield/manifests /etc/afield/manifests.d/*; do\n"
        '    [ -d "$d" ] && found=yes\n'
        "done\n"
        '[ -n "$found" ] || exit 0\n'
        "if [ -r /etc/greenboot/greenboot.conf ]; then . /etc/greenboot/greenboot.conf; fi\n"
        "export AFIELD_WORKLOADS_WAIT_TIMEOUT_SEC\n"
        "exec /usr/bin/afield workloads wait\n"
    ),
}
# Where the wheels sit inside the tree while pip installs them: fixed, so no host path leaks.
_WHEELS_IN_TREE = "/tmp/afield-wheels"  # noqa: S108 (a path inside the image, not the builder)
# Distributions the image gets from Debian (system site packages), never from PyPI.
_FROM_DEBIAN = frozenset({"pygobject", "pycairo"})
# Debian suite -> the version of its python3 and of its glibc (for manylinux wheel tags).
_SUITES = {"bookworm": ("3.11", "2.36")}
_MACHINES = {"amd64": "x86_64", "arm64": "aarch64"}
# Files next to pyproject.toml that hatchling puts into the wheel's metadata.
_PROJECT_FILES = ("pyproject.toml", "README.md", "LICENSE", "LICENSE.txt", "COPYING", "NOTICE")


def _quiet(_line: str) -> None:
    pass


def source_dir() -> Path:
    """The source checkout afield runs from (the directory holding its ``pyproject.toml``)."""
    project = Path(afield.__file__).resolve().parents[2]
    if _project(project, missing_ok=True).get("name") != "afield":
        raise ComposeError(
            f"afield runs from {Path(afield.__file__).resolve().parent}, not from a source "
            "checkout: the device agent stage builds afield's wheel from its source "
            "(install afield with `pip install -e` from a checkout to compose images)"
        )
    return project


def _project(project: Path, *, missing_ok: bool = False) -> dict[str, Any]:
    """The ``[project]`` table of ``project/pyproject.toml``."""
    try:
        with open(project / "pyproject.toml", "rb") as handle:
            return cast(dict[str, Any], tomllib.load(handle).get("project", {}))
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise
    except tomllib.TOMLDecodeError as e:
        raise ComposeError(f"{project / 'pyproject.toml'}: {e}") from e


def source_sha256(project: Path) -> str:
    """sha256 of every file afield's wheel is built from: its content, name and execute bit."""
    files = [project / name for name in _PROJECT_FILES if (project / name).is_file()]
    for root, dirs, names in os.walk(project / "src" / "afield"):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        files += [Path(root, n) for n in names if not n.endswith((".pyc", ".pyo"))]
    digest = hashlib.sha256()
    for path in sorted(files):
        data = path.read_bytes()
        executable = bool(path.stat().st_mode & stat.S_IXUSR)
        header = f"{path.relative_to(project).as_posix()}\0{executable:d}\0{len(data)}\0"
        digest.update(header.encode())
        digest.update(data)
    return digest.hexdigest()


def _installed_version(name: str, needed_by: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError as e:
        raise ComposeError(
            f"{name} (needed by {needed_by}) is not installed in the builder: the image gets the "
            "versions the builder has (install afield[builder,device])"
        ) from e


def _requirement(text: str, where: str) -> Requirement:
    try:
        return Requirement(text)
    except InvalidRequirement as e:
        raise ComposeError(f"{where}: invalid requirement {text!r}: {e}") from e


def pinned_requirements(project: Mapping[str, Any], python: str, machine: str) -> dict[str, str]:
    """Every distribution afield's device side needs, at the version the builder has installed.

    The closure of ``[project] dependencies`` and the ``device`` extra over the builder's
    installed metadata, markers evaluated for the image's Python on Linux; what Debian provides
    (PyGObject) is left out.
    """
    environment = {
        "python_version": python,
        "platform_machine": machine,
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    }
    wanted = [
        *project.get("dependencies", []),
        *project.get("optional-dependencies", {}).get("device", []),
    ]
    pending = [(_requirement(text, "pyproject.toml"), "afield") for text in wanted]
    pins: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    while pending:
        requirement, needed_by = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in _FROM_DEBIAN or name == "afield":
            continue
        version = _installed_version(requirement.name, needed_by)
        if not requirement.specifier.contains(version, prereleases=True):
            raise ComposeError(
                f"the builder has {requirement.name} {version}, but {needed_by} needs "
                f"{requirement} (reinstall afield[builder,device])"
            )
        pins[name] = version
        requires = importlib.metadata.requires(requirement.name) or []
        for extra in ("", *sorted(requirement.extras)):
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            for text in requires:
                sub = _requirement(text, f"{requirement.name} {version}")
                if sub.marker is None or sub.marker.evaluate({**environment, "extra": extra}):
                    pending.append((sub, f"{requirement.name} {version}"))
    return dict(sorted(pins.items()))


def _build_requires(project_dir: Path) -> dict[str, str]:
    """The builder's versions of the build backend's requirements (used without isolation)."""
    with open(project_dir / "pyproject.toml", "rb") as handle:
        requires = tomllib.load(handle).get("build-system", {}).get("requires", [])
    found: dict[str, str] = {}
    for text in requires:
        name = _requirement(text, "pyproject.toml [build-system]").name
        found[canonicalize_name(name)] = _installed_version(name, "building afield's wheel")
    return dict(sorted(found.items()))


def plan_options(*, suite: str, architecture: str, source_date_epoch: int) -> dict[str, Any]:
    """The options of this stage for an image of ``suite``/``architecture``, from this builder."""
    if suite not in _SUITES or architecture not in _MACHINES:
        raise ComposeError(f"the device agent cannot be installed for {suite}/{architecture}")
    python, glibc = _SUITES[suite]
    project_dir = source_dir()
    project = _project(project_dir)
    if not isinstance(project.get("version"), str):
        raise ComposeError(f"{project_dir / 'pyproject.toml'}: [project] has no static version")
    return {
        "afield": {
            "version": project["version"],
            "source_sha256": source_sha256(project_dir),
            "build_requires": _build_requires(project_dir),
        },
        "requirements": pinned_requirements(project, python, _MACHINES[architecture]),
        "python": python,
        "glibc": glibc,
        "architecture": architecture,
        "source_date_epoch": source_date_epoch,
    }


def _build_afield_wheel(ctx: StageContext, options: Mapping[str, Any], into: Path) -> Path:
    """Build afield's wheel from the source checkout, reproducibly; the wheel's path."""
    project = source_dir()
    if source_sha256(project) != options["afield"]["source_sha256"]:
        raise StageError(NAME, f"afield's source in {project} changed during the compose")
    into.mkdir(parents=True)
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    argv += ["--no-cache-dir", "--disable-pip-version-check", "--wheel-dir", str(into)]
    run_command(
        [*argv, str(project)],
        log=ctx.log,
        env={"SOURCE_DATE_EPOCH": str(options["source_date_epoch"])},
        what="pip wheel (afield)",
    )
    version = options["afield"]["version"]
    wheels = sorted(into.glob("afield-*.whl"))
    if [parse_wheel_filename(w.name)[1] for w in wheels] != [Version(version)]:
        found = ", ".join(w.name for w in wheels) or "nothing"
        raise StageError(NAME, f"building afield {version} gave {found}")
    return wheels[0]


def _download_dependencies(ctx: StageContext, options: Mapping[str, Any], into: Path) -> None:
    """Put the pinned dependencies' wheels for the image into ``into``, from the cache if there."""
    cache = ctx.cache_dir / "wheels"
    cache.mkdir(parents=True, exist_ok=True)
    into.mkdir(parents=True)
    python: str = options["python"]
    machine = _MACHINES[options["architecture"]]
    newest = int(str(options["glibc"]).split(".")[1])
    platforms = [f"manylinux_2_{minor}_{machine}" for minor in range(newest, 16, -1)]
    if machine == "x86_64":
        platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    argv += ["--disable-pip-version-check", "--python-version", python, "--implementation", "cp"]
    argv += ["--abi", f"cp{python.replace('.', '')}", "--abi", "abi3", "--abi", "none"]
    argv += [f"--platform={p}" for p in platforms]
    argv += ["--find-links", str(cache), "--dest", str(into)]
    argv += [f"{name}=={version}" for name, version in options["requirements"].items()]
    try:
        run_command([*argv, "--no-index"], log=_quiet, what="pip download")
    except ComposeError:
        ctx.log("agent: fetching wheels that are not in the cache yet")
        shutil.rmtree(into)
        into.mkdir()
        run_command(argv, log=ctx.log, what="pip download")
    for wheel in sorted(into.glob("*.whl")):
        if not (cache / wheel.name).is_file():
            partial = cache / f".{wheel.name}.partial"
            shutil.copyfile(wheel, partial)
            partial.rename(cache / wheel.name)


def _install_venv(ctx: StageContext, options: Mapping[str, Any], wheels: list[Path]) -> None:
    """Make the venv with the image's python3 and install ``wheels`` into it, offline."""
    tree = ctx.tree
    pips = sorted(resolve_in_tree(tree, "/usr/share/python-wheels").glob("pip-*.whl"))
    if not pips:
        raise StageError(NAME, "the image has no /usr/share/python-wheels/pip-*.whl (python3-venv)")
    if resolve_in_tree(tree, PREFIX).exists():
        raise StageError(NAME, f"{PREFIX} already exists in the image")
    staged = resolve_in_tree(tree, _WHEELS_IN_TREE)
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    env = {
        "PYTHONDONTWRITEBYTECODE": "1",
        "PIP_NO_CACHE_DIR": "1",
        "SOURCE_DATE_EPOCH": str(options["source_date_epoch"]),
    }
    try:
        for wheel in wheels:
            shutil.copyfile(wheel, staged / wheel.name)
        chroot(
            tree,
            ["python3", "-m", "venv", "--without-pip", "--system-site-packages", PREFIX],
            log=ctx.log,
            env=env,
        )
        # Debian's own pip (python3-pip-whl) runs from its wheel: the venv needs no pip.
        argv = [f"{PREFIX}/bin/python", f"/usr/share/python-wheels/{pips[-1].name}/pip"]
        argv += ["install", "--no-index", "--find-links", _WHEELS_IN_TREE, "--no-deps"]
        argv += ["--only-binary=:all:", "--ignore-installed", "--no-compile", "--no-cache-dir"]
        argv += ["--disable-pip-version-check", "--no-warn-script-location"]
        argv.append(f"afield=={options['afield']['version']}")
        argv += [f"{name}=={version}" for name, version in options["requirements"].items()]
        chroot(tree, argv, log=ctx.log, env=env)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    venv = resolve_in_tree(tree, PREFIX)
    for cache in sorted(venv.rglob("__pycache__")):
        shutil.rmtree(cache)
    launcher = resolve_in_tree(tree, "/usr/bin/afield")
    if launcher.exists() or launcher.is_symlink():
        launcher.unlink()
    launcher.symlink_to(f"..{PREFIX.removeprefix('/usr')}/bin/afield")
    # The device side must import with the image's own Python and OSTree bindings.
    chroot(
        tree,
        [f"{PREFIX}/bin/python", "-c", "import afield.device.lifecycle"],
        log=ctx.log,
        env=env,
    )


def _install_greenboot_dirs(tree: Path) -> None:
    for base in ("/usr/lib/greenboot", "/etc/greenboot"):
        for sub in GREENBOOT_DIRS:
            path = resolve_in_tree(tree, f"{base}/{sub}")
            path.mkdir(mode=0o755, parents=True, exist_ok=True)
    for name, text in CHECKS.items():
        script = resolve_in_tree(tree, name)
        script.write_text(text)
        script.chmod(0o755)


def unit_text(name: str) -> str:
    """The text of one of afield's systemd units, as shipped in the afield package."""
    return (importlib.resources.files("afield.device") / "units" / name).read_text()


def _install_units(tree: Path) -> list[str]:
    """Copy afield's units into /usr/lib/systemd/system and link them as [Install] says."""
    system = resolve_in_tree(tree, "/usr/lib/systemd/system")
    system.mkdir(parents=True, exist_ok=True)
    links: list[str] = []
    for name in UNITS:
        text = unit_text(name)
        (system / name).write_text(text)
        (system / name).chmod(0o644)
        unit = configparser.ConfigParser(interpolation=None, strict=False)
        unit.optionxform = str  # type: ignore[assignment,method-assign]
        unit.read_string(text)
        for key, suffix in (("WantedBy", "wants"), ("RequiredBy", "requires")):
            for target in unit.get("Install", key, fallback="").split():
                directory = system / f"{target}.{suffix}"
                directory.mkdir(exist_ok=True)
                link = directory / name
                if link.is_symlink():
                    link.unlink()
                link.symlink_to(f"../{name}")
                links.append(f"/usr/lib/systemd/system/{target}.{suffix}/{name}")
    return sorted(links)


def _size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(root, name))
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def run(ctx: StageContext, options: Mapping[str, Any]) -> Facts:
    """Install the agent, greenboot's layout and the units; facts ``agent``."""
    python = options["python"]
    if not resolve_in_tree(ctx.tree, f"/usr/bin/python{python}").exists():
        raise StageError(
            NAME, f"the image has no /usr/bin/python{python} (the plan installs {PACKAGES[0]})"
        )
    work = ctx.workdir / "agent"
    shutil.rmtree(work, ignore_errors=True)
    wheel = _build_afield_wheel(ctx, options, work / "afield")
    _download_dependencies(ctx, options, work / "deps")
    _install_venv(ctx, options, [wheel, *sorted((work / "deps").glob("*.whl"))])
    _install_greenboot_dirs(ctx.tree)
    links = _install_units(ctx.tree)
    wheel_sha256 = hashlib.sha256(wheel.read_bytes()).hexdigest()
    shutil.rmtree(work, ignore_errors=True)
    return {
        "agent": {
            "afield": options["afield"]["version"],
            "wheel_sha256": wheel_sha256,
            "python": python,
            "prefix": PREFIX,
            "requirements": dict(options["requirements"]),
            "units": list(UNITS),
            "checks": sorted(CHECKS),
            "enabled": links,
            "size": _size(resolve_in_tree(ctx.tree, PREFIX)),
        }
    }
