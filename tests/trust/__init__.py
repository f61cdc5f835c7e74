"""Helpers shared by the trust and release tests: a real HTTP server and fake commit objects.

``serve`` runs Python's ``ThreadingHTTPServer`` on 127.0.0.1 over a directory (an afield
repository), the way any static web server would serve it to devices. ``fake_commit`` writes a
file where a commit object lives, so TUF-level tests need no OSTree; the release tests use real
commits.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from afield.trust import ReleaseTarget, commit_target_path


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve ``directory`` over HTTP on 127.0.0.1; yields the base URL (ending in ``/``)."""
    handler = partial(_QuietHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def fake_commit(directory: Path, content: bytes) -> str:
    """Write ``content`` as the commit object of its own sha256 under ``directory``."""
    checksum = hashlib.sha256(content).hexdigest()
    path = directory / commit_target_path(checksum)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return checksum


def fake_release(
    directory: Path,
    version: str,
    *,
    image: str = "gateway",
    arch: str = "x86_64",
    channel: str = "stable",
) -> ReleaseTarget:
    """A release target for a fake commit object written under ``directory``."""
    content = f"commit {image} {arch} {version} {channel}\n".encode()
    checksum = fake_commit(directory, content)
    return ReleaseTarget(
        path=commit_target_path(checksum),
        length=len(content),
        sha256=checksum,
        image=image,
        arch=arch,
        version=version,
        channel=channel,
        ref=f"afield/{image}/{arch}/{channel}",
    )
