"""Benchmark workloads on a device: boot to ready, update bytes, podman's memory (issue 8).

One realistic application image, built here with no internet: a base layer of static busybox
plus 40 MiB of incompressible "runtime" files (seeded pseudo-random bytes: every run builds the
same layer), and an application layer of 2 MiB (eight files) plus a start script running busybox
``httpd`` on port 8080. v2 changes the whole application layer (eight new files), v3 one file
of the eight. The workload is a Kubernetes Deployment (apps/v1) of the image with an ``httpGet``
readiness probe, played and waited for by :mod:`afield.workloads` (``manifests.parse``,
``labelled``, ``render``; ``Podman.play``; ``wait_ready``, polling every 0.1 s).

1. **Boot to the workload ready.** Each run is a fresh podman storage that has booted once (its
   database and pause image made, untimed, as on a device's second boot); the kinds run
   interleaved, ``--repeats`` times each, medians reported. *baked*: v1 is in a read-only vfs
   store written with skopeo as ``afield.containers`` does (the v1 tree's
   ``usr/lib/containers/storage``, bind-mounted read-only), the storage's additional image
   store; timed from ``podman kube play`` to ready. *pulled*: v1 in ``docker-registry`` on
   127.0.0.1; timed from ``podman pull --tls-verify=false`` to ready, with the vfs driver (what
   an afield device uses for pulled images too) and with overlay (a stock podman device).
   *pulled v2, holds v1*: the storage has v1 (pulled untimed); pull v2, play it, ready.
2. **Bytes a device holding v1 downloads** for v2 and for v3. OSTree: trees of a small ``usr/``
   skeleton and a vfs store of one version at ``usr/lib/containers/storage``, committed into an
   archive repository; the static delta (``static-delta generate`` defaults, its files under
   ``deltas/``) and an object pull (``ostree pull-local`` into a repository holding v1: the
   object files it adds). Registry: predicted from ``skopeo inspect --raw`` (manifest, config,
   the layer blobs v1 lacks) and measured by a counting TCP proxy on 127.0.0.1 in front of the
   registry (every byte both ways, HTTP heads included) while a device that pulled v1 pulls the
   new version. Also the disk: the raw vfs store, the repository, the pulled device's storage.
3. **Memory with one workload ready and idle**: ``VmRSS`` and ``Pss`` (``smaps_rollup``) of
   what podman leaves running (a conmon per container, the infra container's catatonit,
   aardvark-dns for the network's DNS: one per host) and of the workload, and their CPU over
   10 s; compared with MicroShift's published minimum (:data:`MICROSHIFT`). The afield agent's
   memory is measured by ``fleet_scale.py``; ``--agent-rss-mb`` gives its figure.

Everything uses storages of its own under a scratch directory (never the host's default podman
storage) and a private bridge network ``afield-bench`` (10.213.8.0/24, interface ``afbench0``,
DNS on like podman's kube network; netavark keeps its IPAM and aardvark-dns state in the host's
``/run/containers/networks``). Pods, mounts, the registry, the proxy and the scratch directory
are removed at the end, also on failure. Run as root: ``.venv/bin/python
benchmarks/workloads.py [--json] [--repeats N] [--keep]``; about 2-3 minutes. Interpretation:
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.containers: the local registry

from tests.containers import local_registry  # noqa: E402

from _workload import tree_size  # noqa: E402
from afield.compose.stages.containers import GRAPHROOT, RUNROOT, STORE, storage_conf  # noqa: E402
from afield.workloads import manifests  # noqa: E402
from afield.workloads.manifests import Resource  # noqa: E402
from afield.workloads.podman import Podman, wait_ready  # noqa: E402

Log = Callable[[str], None]

SEED = 8  # issue 8: every run builds the same base and application bytes
FILE_BYTES = 256 * 1024
BASE_FILES = 160  # 40 MiB of runtime
APP_FILES = 8  # 2 MiB of application
PORT = 8080
REPOSITORY = "afield-bench/app"
VERSIONS = (1, 2, 3)
# What a device holding v1 downloads: v2 changes the whole application layer (the issue's
# case), v3 one file of the application's eight.
UPDATES = {"app layer": (1, 2), "one app file": (1, 3)}
BAKED_NAME = f"localhost/{REPOSITORY}"
WORKLOAD = "bench.web"
NETWORK = "afield-bench"
NETWORK_CONFIG = {
    "name": NETWORK,
    "id": "af1e1d" + "0" * 57 + "8",
    "driver": "bridge",
    "network_interface": "afbench0",
    "created": "2026-12-02T00:00:00Z",
    "subnets": [{"subnet": "10.213.8.0/24", "gateway": "10.213.8.1"}],
    "ipv6_enabled": False,
    "internal": False,
    "dns_enabled": True,
    "ipam_options": {"driver": "host-local"},
}
APPLETS = ("sh", "echo", "cat", "ls", "sleep", "true", "env", "wget", "httpd", "ps", "kill")
READY_TIMEOUT = 120.0
PROBE_INTERVAL = 0.1
IDLE_WINDOW = 10.0
AGENT_RSS_MB = 76.4  # fleet_scale.py, RESULTS.md "Fleet manager at fleet scale" (2026-12-02)
MICROSHIFT = {
    "ram_bytes": 2 * 10**9,
    "cpus": 2,
    "source": (
        "Red Hat build of MicroShift 4.18 documentation, 'Getting ready to install MicroShift', "
        "1.1 System requirements for installing MicroShift: 2 CPU cores, 2 GB RAM (3 GB for a "
        "network install), 10 GB storage, for RHEL and MicroShift together, workloads extra"
    ),
}
DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 1
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
        - name: httpd
          image: {image}
          readinessProbe:
            httpGet:
              path: /
              port: {port}
            periodSeconds: 1
"""
START_SCRIPT = f"#!/bin/sh\nexec httpd -f -p {PORT} -h /www\n"
NOTES = (
    "boot times are podman's own work: no reboot, a warm page cache (the baked store and the "
    "registry's blobs were just written), and the OS update that brought a baked image is not "
    "timed (it happens before the reboot)",
    "the registry is on 127.0.0.1: pulled times are the best case; a real link adds step 2's "
    "bytes at its speed",
    "wait_ready polls every 0.1 s here (afield's boot check polls every 1 s)",
)


# -- commands ----------------------------------------------------------------------------------


def run(argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 300) -> str:
    """A command's stdout; SystemExit with its output when it fails."""
    result = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        errors="replace",
        env={**os.environ, **(env or {})},
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def unmount_all(path: Path) -> None:
    """Unmount whatever is mounted under ``path`` (shm of a pod podman did not clean up)."""
    for point in _mounts_under(path):
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


# -- the images --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildStore:
    """The vfs storage the images are built in (podman, buildah and skopeo use it)."""

    graphroot: Path
    runroot: Path
    conf: Path

    @property
    def args(self) -> list[str]:
        return [
            *("--root", str(self.graphroot), "--runroot", str(self.runroot)),
            *("--storage-driver", "vfs"),
        ]

    @property
    def env(self) -> dict[str, str]:
        return {"CONTAINERS_STORAGE_CONF": str(self.conf)}

    def reference(self, name: str) -> str:
        return f"containers-storage:[vfs@{self.graphroot}+{self.runroot}]{name}"


def _tar_add(archive: tarfile.TarFile, name: str, kind: bytes, data: bytes = b"") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE or name.startswith("bin/") else 0o644
    info.uname = info.gname = "root"
    if kind == tarfile.SYMTYPE:
        info.linkname = "busybox"
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data) if data else None)


def base_tar() -> bytes:
    """busybox, its applets and the runtime files, owners and times fixed (a stable digest)."""
    rng = random.Random(f"afield-bench-base-{SEED}")  # noqa: S311 (reproducible, not secret)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for directory in ("bin", "etc", "tmp", "opt", "opt/runtime", "opt/runtime/lib"):
            _tar_add(archive, directory, tarfile.DIRTYPE)
        _tar_add(archive, "bin/busybox", tarfile.REGTYPE, Path("/bin/busybox").read_bytes())
        for applet in APPLETS:
            _tar_add(archive, f"bin/{applet}", tarfile.SYMTYPE)
        for index in range(BASE_FILES):
            name = f"opt/runtime/lib/module-{index:03d}.so"
            _tar_add(archive, name, tarfile.REGTYPE, rng.randbytes(FILE_BYTES))
    return buffer.getvalue()


def app_files(version: int) -> dict[str, bytes]:
    """The application's files: v2 changes all of them, v3 only the first of eight."""
    files = {}
    for index in range(APP_FILES):
        source = 1 if version == 3 and index > 0 else version
        seed = f"afield-bench-app-{SEED}-{source}-{index}"
        files[f"lib/part-{index}.bin"] = random.Random(seed).randbytes(FILE_BYTES)  # noqa: S311
    files["start.sh"] = START_SCRIPT.encode()
    return files


def build_images(store: BuildStore, work: Path, say: Log) -> dict[int, str]:
    """Build the base and the application's versions in ``store``; their local names."""
    base = f"localhost/afield-bench/base:{SEED}"
    work.mkdir(parents=True)
    (work / "base.tar").write_bytes(base_tar())
    run(
        [
            "podman", *store.args, "import", "--quiet",
            "--change", "ENV PATH=/bin", "--change", 'CMD ["/bin/sh"]',
            str(work / "base.tar"), base,
        ],
        env=store.env,
    )  # fmt: skip
    (work / "base.tar").unlink()
    names = {}
    for version in VERSIONS:
        app = work / f"app-{version}"
        (app / "app" / "lib").mkdir(parents=True)
        (app / "www").mkdir()
        for name, data in app_files(version).items():
            (app / "app" / name).write_bytes(data)
        (app / "app" / "start.sh").chmod(0o755)
        (app / "www" / "index.html").write_text(f"<p>afield bench app {version}</p>\n")
        buildah = ["buildah", *store.args]
        container = run([*buildah, "from", "--pull-never", "--quiet", base], env=store.env)
        container = container.strip()
        for source, target in ((app / "app", "/app"), (app / "www", "/www")):
            run([*buildah, "copy", "--quiet", container, str(source), target], env=store.env)
        run([*buildah, "config", "--cmd", '["/app/start.sh"]', container], env=store.env)
        name = f"{BAKED_NAME}:{version}"
        run(
            [*buildah, "commit", "--quiet", "--rm", "--timestamp", "0", container, name],
            env=store.env,
        )
        names[version] = name
        shutil.rmtree(app)
    say(f"built {base} and {', '.join(names.values())}")
    return names


def push(store: BuildStore, name: str, registry: str, version: int) -> str:
    reference = f"{registry}/{REPOSITORY}:{version}"
    run(
        [
            "skopeo", "copy", "--quiet", "--dest-tls-verify=false",
            store.reference(name), f"docker://{reference}",
        ],
        env=store.env,
    )  # fmt: skip
    return reference


def bake(reference: str, tree: Path, work: Path, version: int) -> Path:
    """Copy the registry image into ``tree``'s baked store as ``afield.containers`` does."""
    store = tree / STORE.lstrip("/")
    store.parent.mkdir(parents=True, exist_ok=True)
    for sub in ("run", "tmp"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    conf = work / "storage.conf"
    conf.write_text(storage_conf(graphroot=str(store), runroot=str(work / "run")))
    run(
        [
            "skopeo", f"--tmpdir={work / 'tmp'}", "--override-os=linux", "copy", "--quiet",
            "--src-tls-verify=false", f"docker://{reference}",
            f"containers-storage:[vfs@{store}+{work / 'run'}]{BAKED_NAME}:{version}",
        ],
        env={"CONTAINERS_STORAGE_CONF": str(conf), "TMPDIR": str(work / "tmp")},
    )  # fmt: skip
    shutil.rmtree(work)
    return store


def write_tree(tree: Path, version: int) -> None:
    """The small fixed ``usr/`` skeleton beside the baked store."""
    for directory in ("usr/bin", "usr/etc/containers", "usr/lib/afield/manifests", "var", "etc"):
        (tree / directory).mkdir(parents=True, exist_ok=True)
    shutil.copy2("/bin/busybox", tree / "usr/bin/busybox")
    (tree / "usr/lib/os-release").write_text('ID=debian\nVERSION_ID="12"\nNAME="afield bench"\n')
    (tree / "usr/etc/containers/storage.conf").write_text(
        storage_conf(graphroot=GRAPHROOT, runroot=RUNROOT, additional=[STORE])
    )
    manifest = DEPLOYMENT.format(image=f"{BAKED_NAME}:{version}", port=PORT)
    (tree / "usr/lib/afield/manifests/web.yaml").write_text(manifest)


# -- a device's podman -------------------------------------------------------------------------


class Device:
    """A fresh podman storage (graphroot, runroot, tmpdir of its own), with the vfs driver and
    optionally a baked store, or with the overlay driver (a stock podman device)."""

    def __init__(
        self, path: Path, run: Path, networks: Path, baked: Path | None, driver: str = "vfs"
    ) -> None:
        self.path, self.run = path, run
        self.graphroot, runroot, tmpdir = path / "root", run / "run", run / "tmp"
        for directory in (self.graphroot, runroot, tmpdir):
            directory.mkdir(parents=True)
        conf = path / "storage.conf"
        additional = [str(baked)] if baked is not None else []
        text = storage_conf(
            graphroot=str(self.graphroot), runroot=str(runroot), additional=additional
        )
        conf.write_text(text.replace('driver = "vfs"', f'driver = "{driver}"'))
        # The storage comes from storage.conf only: podman 4.3's --root and --storage-driver
        # each drop the file's additional image store.
        self.podman = Podman(
            global_args=["--tmpdir", str(tmpdir), "--network-config-dir", str(networks)],
            env={"CONTAINERS_STORAGE_CONF": str(conf)},
            timeout=300,
        )

    def prime(self) -> None:
        """Boot once: podman's database, the pause image (built by podman), untimed."""
        self.podman.run("pod", "create", "--name", "prime")
        self.podman.run("pod", "rm", "--force", "prime")

    def remove(self) -> None:
        """Remove every pod and container, then the storage."""
        for what in ("pod", "container"):
            self.podman.run(what, "rm", "--all", "--force", "--time", "0", check=False)
        for path in (self.path, self.run):
            unmount_all(path)
            shutil.rmtree(path, ignore_errors=True)


def run_dir(scratch: Path) -> Path:
    """Where the devices' runroots go: podman refuses one longer than 50 characters."""
    return Path("/run") / f"afwl-{scratch.name.rsplit('-', 1)[-1]}"


@contextmanager
def device(
    scratch: Path, name: str, baked: Path | None = None, driver: str = "vfs"
) -> Iterator[Device]:
    """A fresh device that has booted once; removed when the block ends."""
    fresh = Device(
        scratch / "devices" / name, run_dir(scratch) / name, scratch / "networks", baked, driver
    )
    try:
        fresh.prime()
        yield fresh
    finally:
        fresh.remove()


def workload(image: str, directory: Path) -> tuple[Path, list[Resource]]:
    """The rendered, labelled Deployment for ``image``: its file and its resources."""
    text = DEPLOYMENT.format(image=image, port=PORT)
    resources = manifests.labelled(manifests.parse(text, "bench web.yaml"), WORKLOAD)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "web.yaml"
    path.write_text(manifests.render(resources))
    return path, resources


def until_ready(podman: Podman, resources: Sequence[Resource]) -> None:
    [state] = wait_ready(podman, {WORKLOAD: resources}, READY_TIMEOUT, interval=PROBE_INTERVAL)
    if state.state != "ready":
        raise SystemExit(f"the workload is not ready: {state.state}: {state.reason}")


# -- 1. boot to ready --------------------------------------------------------------------------

# Each kind of device: its storage driver, whether v1 is baked (else it pulls v1), and the
# version it already holds, pulled before the clock starts (then it pulls and plays v2).
BOOTS: dict[str, tuple[str, bool, int | None]] = {
    "baked": ("vfs", True, None),
    "pulled": ("vfs", False, None),
    "pulled, overlay": ("overlay", False, None),
    "pulled v2, holds v1": ("vfs", False, 1),
}


def boot(
    scratch: Path, kind: str, baked: Path, references: Mapping[int, str], index: int
) -> dict[str, float]:
    """One boot of a fresh device: pull (if it pulls), play, wait until ready; seconds."""
    driver, has_store, held = BOOTS[kind]
    reference = references[1 if held is None else 2]
    image = f"{BAKED_NAME}:1" if has_store else reference
    slug = kind.replace(", ", "-").replace(" ", "-")
    manifest, resources = workload(image, scratch / "manifests" / slug)
    with device(scratch, f"{slug}-{index}", baked if has_store else None, driver) as fresh:
        if held is not None:
            fresh.podman.run("pull", "--quiet", "--tls-verify=false", references[held])
        began = time.perf_counter()
        if not has_store:
            fresh.podman.run("pull", "--quiet", "--tls-verify=false", reference)
        pulled = time.perf_counter()
        fresh.podman.play(manifest, network=NETWORK)
        played = time.perf_counter()
        until_ready(fresh.podman, resources)
        ready = time.perf_counter()
    return {
        "pull": pulled - began,
        "play": played - pulled,
        "wait": ready - played,
        "total": ready - began,
    }


def measure_boot(
    scratch: Path, baked: Path, references: Mapping[int, str], repeats: int, say: Log
) -> dict[str, Any]:
    """``repeats`` boots of each kind, interleaved (so the machine's noise hits all alike)."""
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in BOOTS}
    for index in range(repeats):
        for kind in BOOTS:
            timing = boot(scratch, kind, baked, references, index)
            runs[kind].append(timing)
            say(
                f"boot {kind} {index + 1}/{repeats}: ready in {timing['total']:.2f} s "
                f"(pull {timing['pull']:.2f}, play {timing['play']:.2f}, "
                f"wait {timing['wait']:.2f})"
            )
    medians = {
        kind: {part: statistics.median(r[part] for r in rs) for part in rs[0]}
        for kind, rs in runs.items()
    }
    baked_total = medians["baked"]["total"]
    return {
        "runs": runs,
        "median": medians,
        "ratio_to_baked": {kind: m["total"] / baked_total for kind, m in medians.items()},
    }


# -- 2. update bytes ---------------------------------------------------------------------------


def _objects(repo: Path) -> dict[str, int]:
    """Every object file of an OSTree repository: relative path -> size."""
    objects = repo / "objects"
    return {
        str(path.relative_to(objects)): path.stat().st_size
        for path in objects.rglob("*")
        if path.is_file()
    }


def measure_ostree(trees: Mapping[int, Path], scratch: Path, say: Log) -> dict[str, Any]:
    """Commit the trees; per update, the static delta's files and an object pull's objects."""
    repo = scratch / "ostree" / "repo"
    repo.mkdir(parents=True)
    ostree = ["ostree", f"--repo={repo}"]
    run([*ostree, "init", "--mode=archive"])
    commits: dict[int, str] = {}
    for version, tree in trees.items():
        commits[version] = run(
            [
                *ostree, "commit", f"--tree=dir={tree}", "--branch=afield/bench/x86_64",
                "--owner-uid=0", "--owner-gid=0", "--no-xattrs", f"--subject=app {version}",
            ],
        ).strip()  # fmt: skip
    updates: dict[str, Any] = {}
    for update, (old, new) in UPDATES.items():
        before = tree_size(repo / "deltas") if (repo / "deltas").exists() else (0, 0)
        began = time.perf_counter()
        run([*ostree, "static-delta", "generate", f"--from={commits[old]}", f"--to={commits[new]}"])
        seconds = time.perf_counter() - began
        after = tree_size(repo / "deltas")
        # An object pull: what a repository holding the old commit adds to get the new one.
        client = scratch / "ostree" / f"client-{new}"
        client.mkdir()
        run(["ostree", f"--repo={client}", "init", "--mode=archive"])
        run(["ostree", f"--repo={client}", "pull-local", str(repo), commits[old]])
        held = _objects(client)
        run(["ostree", f"--repo={client}", "pull-local", str(repo), commits[new]])
        objects = _objects(client)
        added = {path: size for path, size in objects.items() if path not in held}
        by_kind: dict[str, int] = {}
        for path, size in added.items():
            kind = path.rsplit(".", 1)[-1]
            by_kind[kind] = by_kind.get(kind, 0) + size
        updates[update] = {
            "delta_bytes": after[1] - before[1],
            "delta_files": after[0] - before[0],
            "delta_generate_seconds": seconds,
            "object_pull_bytes": sum(added.values()),
            "object_pull_objects": len(added),
            "object_pull_bytes_by_kind": by_kind,
            "device_repo_bytes": sum(objects.values()),
        }
        shutil.rmtree(client)
        say(
            f"ostree, {update}: delta {_mb(after[1] - before[1])}, object pull "
            f"{_mb(sum(added.values()))} ({len(added)} objects)"
        )
    stores = {v: tree_size(tree / STORE.lstrip("/")) for v, tree in trees.items()}
    return {
        "commits": commits,
        "updates": updates,
        "store_raw": {str(v): {"files": f, "bytes": b} for v, (f, b) in stores.items()},
        "repo_objects_bytes": tree_size(repo / "objects")[1],
    }


class CountingProxy:
    """A TCP proxy on 127.0.0.1 that counts the bytes it moves each way."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.lock = threading.Lock()
        self.down = self.up = self.connections = 0
        self.threads: list[threading.Thread] = []
        self.accepting = threading.Thread(target=self._accept, name="proxy", daemon=True)
        self.accepting.start()

    def reset(self) -> dict[str, int]:
        """The counts so far, then zero."""
        with self.lock:
            counts = {"down": self.down, "up": self.up, "connections": self.connections}
            self.down = self.up = self.connections = 0
        return counts

    def close(self) -> None:
        self.listener.close()
        for thread in self.threads:
            thread.join(timeout=5)

    def _accept(self) -> None:
        while True:
            try:
                client, _address = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            with self.lock:
                self.connections += 1
            for source, target, direction in ((client, server, "up"), (server, client, "down")):
                thread = threading.Thread(
                    target=self._pump, args=(source, target, direction), daemon=True
                )
                self.threads.append(thread)
                thread.start()

    def _pump(self, source: socket.socket, target: socket.socket, direction: str) -> None:
        try:
            while data := source.recv(1 << 16):
                target.sendall(data)
                with self.lock:
                    if direction == "down":
                        self.down += len(data)
                    else:
                        self.up += len(data)
        except OSError:
            pass
        finally:
            try:
                target.shutdown(socket.SHUT_WR)
            except OSError:
                target.close()


def _manifest(reference: str) -> tuple[bytes, dict[str, Any]]:
    raw = run(
        ["skopeo", "inspect", "--raw", "--no-tags", "--tls-verify=false", f"docker://{reference}"]
    ).encode()
    return raw, json.loads(raw)


def measure_registry(
    scratch: Path, registry: str, references: Mapping[int, str], say: Log
) -> dict[str, Any]:
    """Per update: the bytes predicted from the manifests, and those a pull moves (counted)."""
    manifests_ = {v: _manifest(reference) for v, reference in references.items()}
    host, _, port = registry.partition(":")
    proxy = CountingProxy((host, int(port)))
    updates: dict[str, Any] = {}
    first: dict[str, int] = {}
    try:
        via = {v: f"127.0.0.1:{proxy.port}/{REPOSITORY}:{v}" for v in references}
        for update, (old, new) in UPDATES.items():
            have = {layer["digest"] for layer in manifests_[old][1]["layers"]}
            raw, manifest = manifests_[new]
            layers = manifest["layers"]
            new_layers = [layer for layer in layers if layer["digest"] not in have]
            predicted = len(raw) + manifest["config"]["size"] + sum(x["size"] for x in new_layers)
            with device(scratch, f"registry-{new}") as fresh:
                proxy.reset()
                fresh.podman.run("pull", "--quiet", "--tls-verify=false", via[old])
                first = proxy.reset()
                fresh.podman.run("pull", "--quiet", "--tls-verify=false", via[new])
                counted = proxy.reset()
                disk = tree_size(fresh.graphroot)[1]
            updates[update] = {
                "manifest_bytes": len(raw),
                "config_bytes": manifest["config"]["size"],
                "layers": [x["size"] for x in layers],
                "new_layer_bytes": sum(x["size"] for x in new_layers),
                "predicted_bytes": predicted,
                "measured_down": counted["down"],
                "measured_up": counted["up"],
                "measured_bytes": counted["down"] + counted["up"],
                "connections": counted["connections"],
                "device_storage_bytes": disk,
            }
            say(
                f"registry, {update}: predicted {_mb(predicted)}, measured "
                f"{_mb(counted['down'] + counted['up'])} ({counted['connections']} connections)"
            )
    finally:
        proxy.close()
    return {
        "media_type": manifests_[1][1].get("mediaType", ""),
        "updates": updates,
        "first_pull_bytes": first["down"] + first["up"],
    }


# -- 3. memory ---------------------------------------------------------------------------------


def _status(pid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def _kb(text: str) -> int:
    return int(text.split()[0]) * 1024 if text else 0


def _pss(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return _kb(line.split(":", 1)[1])
    except OSError:
        return None
    return None


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(_status(int(entry)).get("PPid", "0"))
        except (OSError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _descendants(pid: int, tree: Mapping[int, list[int]]) -> list[int]:
    out = [pid]
    for child in tree.get(pid, []):
        out += _descendants(child, tree)
    return out


def podman_processes(fresh: Device) -> dict[str, list[int]]:
    """The device's processes by role: conmon, infra (catatonit), workload, aardvark-dns (one
    per host, serving every network with DNS on)."""
    groups: dict[str, list[int]] = {"conmon": [], "infra": [], "workload": [], "aardvark-dns": []}
    tree = _children()
    for cid in fresh.podman.run("ps", "--all", "--format", "{{.ID}}").split():
        line = fresh.podman.run(
            "inspect", "--format", "{{.State.Pid}} {{.State.ConmonPid}} {{.IsInfra}}", cid
        ).split()
        pid, conmon, infra = int(line[0]), int(line[1]), line[2] == "true"
        groups["conmon"].append(conmon)
        groups["infra" if infra else "workload"] += _descendants(pid, tree)
    for entry in os.listdir("/proc"):
        try:
            status = _status(int(entry)) if entry.isdigit() else {}
        except OSError:
            continue
        if status.get("Name") == "aardvark-dns" and not status.get("State", "").startswith("Z"):
            groups["aardvark-dns"].append(int(entry))
    return groups


def measure_memory(scratch: Path, baked: Path, agent_mb: float, say: Log) -> dict[str, Any]:
    """RSS, PSS and idle CPU of the processes of one ready workload, by role."""
    manifest, resources = workload(f"{BAKED_NAME}:1", scratch / "manifests" / "memory")
    hz = os.sysconf("SC_CLK_TCK")
    rows: dict[str, dict[str, Any]] = {}
    with device(scratch, "memory", baked) as fresh:
        fresh.podman.play(manifest, network=NETWORK)
        until_ready(fresh.podman, resources)
        groups = podman_processes(fresh)
        disk = tree_size(fresh.graphroot)[1]
        ticks = {pid: _cpu_ticks(pid) for pids in groups.values() for pid in pids}
        time.sleep(IDLE_WINDOW)
        for role, pids in groups.items():
            statuses = [_status(pid) for pid in pids]
            pss = [_pss(pid) for pid in pids]
            rows[role] = {
                "processes": [status.get("Name", "?") for status in statuses],
                "rss_bytes": sum(_kb(status.get("VmRSS", "")) for status in statuses),
                "pss_bytes": None if None in pss else sum(p or 0 for p in pss),
                "cpu_seconds": sum(_cpu_ticks(pid) - ticks[pid] for pid in pids) / hz,
            }
    podman = [rows[r] for r in ("conmon", "infra", "aardvark-dns")]
    overhead_rss = sum(r["rss_bytes"] for r in podman)
    overhead_pss = sum(r["pss_bytes"] or 0 for r in podman)
    agent = agent_mb * 1e6
    ram = float(MICROSHIFT["ram_bytes"])  # type: ignore[arg-type]
    say(f"memory: podman's processes {_mb(overhead_rss)} RSS, {_mb(overhead_pss)} PSS")
    return {
        "groups": rows,
        "idle_window_seconds": IDLE_WINDOW,
        "device_storage_bytes": disk,
        "podman_rss_bytes": overhead_rss,
        "podman_pss_bytes": overhead_pss,
        "with_workload_rss_bytes": overhead_rss + rows["workload"]["rss_bytes"],
        "with_workload_pss_bytes": overhead_pss + (rows["workload"]["pss_bytes"] or 0),
        "podman_cpu_seconds": sum(r["cpu_seconds"] for r in podman),
        "agent_rss_bytes": agent,
        "microshift": MICROSHIFT,
        "microshift_to_podman_rss": ram / overhead_rss,
        "microshift_to_podman_pss": ram / overhead_pss if overhead_pss else None,
        "microshift_to_agent_and_podman": ram / (agent + overhead_rss),
    }


# -- the run -----------------------------------------------------------------------------------


@contextmanager
def read_only(path: Path, at: Path) -> Iterator[Path]:
    """``path`` bind-mounted read-only at ``at`` (as /usr is on a device)."""
    at.mkdir(parents=True)
    run(["mount", "--bind", str(path), str(at)])
    try:
        run(["mount", "-o", "remount,bind,ro", str(at)])
        yield at
    finally:
        subprocess.run(["umount", str(at)], capture_output=True, check=False)


def measure(scratch: Path, repeats: int, agent_mb: float, say: Log) -> dict[str, Any]:
    """Build, then measure update bytes, boot times and memory; the results."""
    store = BuildStore(scratch / "build" / "root", scratch / "build" / "run", scratch / "s.conf")
    store.conf.write_text(storage_conf(graphroot=str(store.graphroot), runroot=str(store.runroot)))
    (scratch / "networks").mkdir()
    (scratch / "networks" / f"{NETWORK}.json").write_text(json.dumps(NETWORK_CONFIG, indent=2))
    began = time.perf_counter()
    names = build_images(store, scratch / "images", say)
    build_seconds = time.perf_counter() - began
    with ExitStack() as stack:
        registry = stack.enter_context(local_registry(scratch / "registry"))
        references = {v: push(store, names[v], registry, v) for v in VERSIONS}
        shutil.rmtree(store.graphroot.parent, ignore_errors=True)  # the registry has them now
        say(f"pushed to {registry}")
        trees = {}
        for version in VERSIONS:
            tree = scratch / "trees" / f"v{version}"
            write_tree(tree, version)
            bake(references[version], tree, scratch / "bake-work", version)
            trees[version] = tree
        ostree = measure_ostree(trees, scratch, say)
        registry_bytes = measure_registry(scratch, registry, references, say)
        for version in VERSIONS[1:]:
            shutil.rmtree(trees[version])
        baked = stack.enter_context(
            read_only(trees[1] / STORE.lstrip("/"), scratch / "sysroot-store")
        )
        boot = measure_boot(scratch, baked, references, repeats, say)
        memory = measure_memory(scratch, baked, agent_mb, say)
    updates = {
        update: {
            "ostree": ostree["updates"][update],
            "registry": registry_bytes["updates"][update],
            "ratio_registry_to_delta": registry_bytes["updates"][update]["measured_bytes"]
            / ostree["updates"][update]["delta_bytes"],
            "ratio_registry_to_object_pull": registry_bytes["updates"][update]["measured_bytes"]
            / ostree["updates"][update]["object_pull_bytes"],
        }
        for update in UPDATES
    }
    return {
        "date": datetime.date.today().isoformat(),
        "machine": _machine(),
        "image": {
            "base_runtime_bytes": BASE_FILES * FILE_BYTES,
            "app_bytes": APP_FILES * FILE_BYTES,
            "layer_blobs": registry_bytes["updates"]["app layer"]["layers"],
            "media_type": registry_bytes["media_type"],
            "build_seconds": build_seconds,
        },
        "boot": boot,
        "update": {
            "updates": updates,
            "store_raw": ostree["store_raw"],
            "repo_objects_bytes": ostree["repo_objects_bytes"],
            "first_pull_bytes": registry_bytes["first_pull_bytes"],
        },
        "memory": memory,
        "notes": list(NOTES),
    }


def _version(argv: Sequence[str]) -> str:
    out = subprocess.run(list(argv), capture_output=True, text=True, check=False).stdout
    lines = [line for line in out.splitlines() if "ersion" in line]
    return lines[0].split()[-1].strip("'") if lines else "?"


def _machine() -> dict[str, Any]:
    mem_kb = 0
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    debian = Path("/etc/debian_version")
    return {
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kb / 2**20, 1),
        "debian": debian.read_text().strip() if debian.is_file() else "unknown",
        "kernel": platform.release(),
        "podman": _version(["podman", "--version"]),
        "skopeo": _version(["skopeo", "--version"]),
        "ostree": _version(["ostree", "--version"]),
        "load_average": os.getloadavg(),
    }


def render(data: dict[str, Any], console: Console) -> None:
    """Print the three tables and the ratios."""
    m = data["machine"]
    image = data["image"]
    console.print(
        f"{data['date']}: {m['cores']} cores, {m['ram_gib']} GiB, Debian {m['debian']}, kernel "
        f"{m['kernel']}, podman {m['podman']}, skopeo {m['skopeo']}, ostree {m['ostree']}; "
        f"image: busybox + {_mb(image['base_runtime_bytes'])} runtime, app "
        f"{_mb(image['app_bytes'])}; layer blobs "
        + ", ".join(_mb(size) for size in image["layer_blobs"])
    )
    boot = data["boot"]
    table = Table(title="1. boot to the workload ready (median of runs, seconds)")
    for column in ("device", "pull", "kube play", "wait_ready", "total", "vs baked", "runs"):
        table.add_column(column, justify="left" if column == "device" else "right")
    for kind, med in boot["median"].items():
        table.add_row(
            kind,
            f"{med['pull']:.2f}" if med["pull"] else "-",
            f"{med['play']:.2f}",
            f"{med['wait']:.2f}",
            f"{med['total']:.2f}",
            f"{boot['ratio_to_baked'][kind]:.2f}x",
            ", ".join(f"{r['total']:.2f}" for r in boot["runs"][kind]),
        )
    console.print(table)
    update = data["update"]
    table = Table(title="2. bytes a device holding v1 downloads to update")
    for column in ("update", "method", "bytes", "vs static delta", "notes"):
        left = column in ("update", "method", "notes")
        table.add_column(column, justify="left" if left else "right")
    for name, pair in update["updates"].items():
        ostree, registry = pair["ostree"], pair["registry"]
        delta = ostree["delta_bytes"]
        kinds = ostree["object_pull_bytes_by_kind"]
        rows = [
            (
                "OSTree static delta",
                delta,
                f"{ostree['delta_files']} files under deltas/, generated in "
                f"{ostree['delta_generate_seconds']:.1f} s",
            ),
            (
                "OSTree object pull",
                ostree["object_pull_bytes"],
                f"{ostree['object_pull_objects']} new objects ("
                + ", ".join(f"{k} {v / 1e3:.1f} kB" for k, v in sorted(kinds.items()))
                + ")",
            ),
            (
                "registry, predicted",
                registry["predicted_bytes"],
                f"manifest {registry['manifest_bytes']} B + config {registry['config_bytes']} B"
                f" + new layer blobs {_mb(registry['new_layer_bytes'])}",
            ),
            (
                "registry, measured",
                registry["measured_bytes"],
                f"counting proxy, both directions ({registry['measured_up']} B up), "
                f"{registry['connections']} connections",
            ),
        ]
        for index, (method, size, note) in enumerate(rows):
            table.add_row(
                name if index == 0 else "", method, _mb(size), f"{size / delta:.2f}x", note
            )
        table.add_section()
    console.print(table)
    store = update["store_raw"]
    pair = update["updates"]["app layer"]
    console.print(
        "registry (measured) / static delta: "
        + "; ".join(
            f"{name} {p['ratio_registry_to_delta']:.2f}x" for name, p in update["updates"].items()
        )
        + f". First install of v1 from the registry: {_mb(update['first_pull_bytes'])}."
    )
    console.print(
        f"on disk: the raw vfs store of one version is {_mb(store['1']['bytes'])} "
        f"({store['1']['files']} files: every layer a full copy); the OSTree repository with "
        f"all three commits {_mb(update['repo_objects_bytes'])}; a device's repository after "
        f"v1 -> v2 {_mb(pair['ostree']['device_repo_bytes'])} (archive mode), its podman vfs "
        f"storage after pulling v1 and v2 {_mb(pair['registry']['device_storage_bytes'])}"
    )
    memory = data["memory"]
    window = memory["idle_window_seconds"]
    table = Table(title=f"3. memory with one workload ready (CPU over {window:.0f} s idle)")
    for column in ("role", "processes", "RSS", "PSS", "CPU"):
        table.add_column(column, justify="left" if column in ("role", "processes") else "right")
    for role, row in memory["groups"].items():
        table.add_row(
            role,
            ", ".join(row["processes"]) or "(none)",
            _mb(row["rss_bytes"]),
            _mb(row["pss_bytes"]) if row["pss_bytes"] is not None else "-",
            f"{row['cpu_seconds']:.2f} s",
        )
    table.add_section()
    table.add_row(
        "podman's share",
        "conmon, infra, aardvark-dns",
        _mb(memory["podman_rss_bytes"]),
        _mb(memory["podman_pss_bytes"]),
        f"{memory['podman_cpu_seconds']:.2f} s",
    )
    table.add_row(
        "with the workload",
        "",
        _mb(memory["with_workload_rss_bytes"]),
        _mb(memory["with_workload_pss_bytes"]),
        "",
    )
    console.print(table)
    console.print(
        f"podman's storage while it runs (baked image): {_mb(memory['device_storage_bytes'])} "
        "(vfs: the container's own full copy of the image's files, and the pause image)"
    )
    micro = memory["microshift"]
    console.print(
        f"MicroShift's minimum {micro['ram_bytes'] / 1e9:.0f} GB, {micro['cpus']} CPUs; / "
        f"podman's share: {memory['microshift_to_podman_rss']:.0f}x (RSS), "
        f"{memory['microshift_to_podman_pss']:.0f}x (PSS); / (afield agent "
        f"{memory['agent_rss_bytes'] / 1e6:.1f} MB, from fleet_scale.py, + podman's RSS): "
        f"{memory['microshift_to_agent_and_podman']:.1f}x"
    )
    console.print(f"source: {micro['source']}")
    for note in data["notes"]:
        console.print(f"note: {note}")


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--repeats", type=int, default=5, help="boot runs of each kind")
    parser.add_argument(
        "--agent-rss-mb", type=float, default=AGENT_RSS_MB, help="the agent's RSS to add"
    )
    parser.add_argument(
        "--workdir", type=Path, default=Path("/var/tmp"), help="where scratch space goes"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--save", type=Path, metavar="FILE", help="also write the JSON to FILE")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Build the images, measure the three figures, print tables (or JSON)."""
    args = _arguments(argv)
    console = Console(stderr=True, log_path=False)
    if os.geteuid() != 0:
        console.print("error: podman with its own storages, mounts and networks: run as root")
        return 2
    began = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="afield-bench-workloads-", dir=args.workdir))
    try:
        data = measure(scratch, max(1, args.repeats), args.agent_rss_mb, console.log)
    finally:
        for path in (scratch, run_dir(scratch)):
            unmount_all(path)
        shutil.rmtree(run_dir(scratch), ignore_errors=True)
        if args.keep:
            console.log(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    data["seconds"] = time.perf_counter() - began
    console.log(f"done in {data['seconds']:.0f} s")
    if args.save is not None:
        args.save.write_text(json.dumps(data, indent=2))
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        render(data, Console(width=200))
    return 0


if __name__ == "__main__":
    sys.exit(main())
