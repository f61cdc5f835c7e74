"""Container images for tests, made with no internet: busybox images, archives, a local registry.

Images are built in the host's default podman storage from ``/bin/busybox`` (busybox-static):
the base layer is a tarball written with fixed owners and times, so its digest is the same in
every session; a second layer is added with buildah. :func:`local_registry` runs Debian's
``docker-registry`` on 127.0.0.1 with its storage in a directory the test owns (tests corrupt
blobs there), and :func:`push` copies an image into it with skopeo.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

BUSYBOX = Path("/bin/busybox")
# Applets linked in the base image (busybox runs as any of them through the link's name).
APPLETS = (
    "sh", "echo", "cat", "ls", "sleep", "true", "false", "env", "test", "printf", "wget", "nc",
    "httpd", "id", "hostname", "mkdir", "rm", "touch", "grep", "date", "ps", "kill",
)  # fmt: skip
REGISTRY = "docker-registry"


def _run(*argv: str) -> str:
    """Run a command; its stdout, or AssertionError with its output."""
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def _add(
    archive: tarfile.TarFile, name: str, kind: bytes, data: bytes = b"", link: str = ""
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o755 if kind in (tarfile.DIRTYPE, tarfile.SYMTYPE) else 0o644
    info.uname = info.gname = "root"
    info.linkname = link
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data) if data else None)


def _rootfs_tar(extra_files: dict[str, bytes]) -> bytes:
    """A busybox root file system as a tar with fixed owners and times (a stable digest)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        directories = {"bin", "etc", "tmp"}
        for path in extra_files:
            parts = path.strip("/").split("/")[:-1]
            directories |= {"/".join(parts[: i + 1]) for i in range(len(parts))}
        for directory in sorted(directories):
            _add(archive, directory, tarfile.DIRTYPE)
        busybox = tarfile.TarInfo("bin/busybox")
        busybox.mode = 0o755
        busybox.uname = busybox.gname = "root"
        data = BUSYBOX.read_bytes()
        busybox.size = len(data)
        archive.addfile(busybox, io.BytesIO(data))
        for applet in APPLETS:
            _add(archive, f"bin/{applet}", tarfile.SYMTYPE, link="busybox")
        for path, content in sorted(extra_files.items()):
            _add(archive, path.strip("/"), tarfile.REGTYPE, content)
    return buffer.getvalue()


def build_busybox_image(
    tag: str, extra_files: dict[str, bytes] | None = None, base: str | None = None
) -> str:
    """Build an image in the default podman storage and name it ``tag``; ``tag`` again.

    Without ``base``: one layer, busybox with its applets in /bin (``PATH=/bin``, ``CMD
    /bin/sh``) plus ``extra_files`` (path in the image -> bytes). With ``base`` (an image in
    the storage): that image plus one layer holding ``extra_files``, added with buildah.
    """
    files = extra_files or {}
    with tempfile.TemporaryDirectory(prefix="afield-image-") as scratch:
        if base is None:
            rootfs = Path(scratch) / "rootfs.tar"
            rootfs.write_bytes(_rootfs_tar(files))
            _run(
                "podman", "import", "--quiet",
                "--change", "ENV PATH=/bin", "--change", 'CMD ["/bin/sh"]',
                str(rootfs), tag,
            )  # fmt: skip
            return tag
        container = _run("buildah", "from", "--pull-never", "--quiet", base).strip()
        try:
            for path, content in sorted(files.items()):
                local = Path(scratch) / f"file-{len(os.listdir(scratch))}"
                local.write_bytes(content)
                _run("buildah", "copy", "--quiet", container, str(local), path)
            _run("buildah", "commit", "--quiet", "--rm", container, tag)
        except BaseException:
            subprocess.run(["buildah", "rm", container], capture_output=True, check=False)
            raise
    return tag


def save_archive(
    tag: str, path: Path, fmt: Literal["oci-archive", "docker-archive"] = "oci-archive"
) -> Path:
    """Write image ``tag`` from the default storage to ``path`` as an archive; ``path``."""
    path.unlink(missing_ok=True)
    _run("podman", "save", "--quiet", "--format", fmt, "--output", str(path), tag)
    return path


def remove_image(tag: str) -> None:
    """Remove ``tag`` from the default podman storage, if nothing uses it."""
    subprocess.run(["podman", "rmi", tag], capture_output=True, check=False)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 (http on 127.0.0.1)
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def local_registry(directory: Path) -> Iterator[str]:
    """Run a registry on 127.0.0.1 storing its blobs under ``directory/storage`` until the block
    ends; yield its address ``127.0.0.1:PORT``."""
    storage = directory / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    for _attempt in range(3):
        port = _free_port()
        config = directory / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{port}\n"
        )
        log = (directory / "registry.log").open("ab")
        server = subprocess.Popen(
            [REGISTRY, "serve", str(config)], stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 15
        while server.poll() is None and time.monotonic() < deadline:
            if _answers(f"http://127.0.0.1:{port}/v2/"):
                break
            time.sleep(0.05)
        else:
            server.kill()
            server.wait()
            log.close()
            continue  # the port was taken in between, or the registry did not start: again
        try:
            yield f"127.0.0.1:{port}"
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            log.close()
        return
    raise AssertionError(f"{REGISTRY} did not start:\n{(directory / 'registry.log').read_text()}")


def push(tag: str, registry: str) -> str:
    """Copy image ``tag`` from the default storage to ``registry`` (plain HTTP) under the same
    path without its registry (``localhost/a/b:1`` -> ``REGISTRY/a/b:1``); the reference."""
    first, _, rest = tag.partition("/")
    names_registry = rest and ("." in first or ":" in first or first == "localhost")
    reference = f"{registry}/{rest if names_registry else tag}"
    _run(
        "skopeo", "copy", "--quiet", "--dest-tls-verify=false",
        f"containers-storage:{tag}", f"docker://{reference}",
    )  # fmt: skip
    return reference


def corrupt_blob(registry_dir: Path, digest: str) -> None:
    """Flip a byte near the end of a blob in the registry's storage (its gzip trailer)."""
    hexdigest = digest.removeprefix("sha256:")
    data_file = registry_dir / "storage/docker/registry/v2/blobs/sha256" / hexdigest[:2]
    data_file = data_file / hexdigest / "data"
    data = bytearray(data_file.read_bytes())
    data[-6] ^= 0xFF
    data_file.write_bytes(bytes(data))
