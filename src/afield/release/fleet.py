"""Ask a fleet manager which commits its devices run, so deltas are built from those.

A static delta helps only the devices that run its base commit. The previous releases are a
guess; the fleet manager knows: ``GET {URL}/api/v1/images/{image}/running?arch={arch}`` answers

    {"image": "gateway", "arch": "x86_64",
     "running": [{"commit": "<64 hex>", "version": "1.2.0", "devices": 1200}, ...]}

(``version`` optional) and :func:`running_commits` returns the commits run by the most devices
first. The answer is parsed with a size limit and checked field by field: a fleet manager is a
server on the network like any other.

What it leaves to others: the fleet manager's side of this endpoint (the fleet-manager issue),
generating the deltas (:mod:`afield.release.publish`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from urllib.parse import quote

import urllib3

from afield.errors import RepositoryError

__all__ = ["RunningCommit", "running_commits", "running_url"]

MAX_RESPONSE = 1 << 20
_CHECKSUM = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class RunningCommit:
    """A commit devices run and how many of them."""

    commit: str
    devices: int


def running_url(fleet_url: str, image: str, arch: str) -> str:
    """The endpoint that lists the commits devices of ``image``/``arch`` run."""
    base = fleet_url.rstrip("/")
    return f"{base}/api/v1/images/{quote(image, safe='')}/running?arch={quote(arch, safe='')}"


def _error(url: str, message: str) -> RepositoryError:
    return RepositoryError(f"fleet manager {url}: {message}", user_error=True)


def running_commits(
    fleet_url: str, image: str, arch: str, *, limit: int = 5, timeout: float = 10.0
) -> list[RunningCommit]:
    """The commits run by most devices of ``image``/``arch``, at most ``limit``, most first.

    Raises:
        RepositoryError: the fleet manager cannot be reached or answers something else than
            the documented JSON (the message names the field); a user error, since the URL
            came from the command line.
    """
    url = running_url(fleet_url, image, arch)
    if not url.startswith(("http://", "https://")):
        raise _error(url, "expected an http:// or https:// URL")
    try:
        with urllib3.PoolManager() as pool:
            response = pool.request(
                "GET",
                url,
                preload_content=False,
                retries=False,
                timeout=urllib3.Timeout(connect=timeout, read=timeout),
                headers={"Accept": "application/json"},
            )
            try:
                body = response.read(MAX_RESPONSE + 1)
            finally:
                response.close()
    except urllib3.exceptions.HTTPError as e:
        raise _error(url, f"cannot be reached: {e}") from e
    if response.status != 200:
        raise _error(url, f"answered HTTP {response.status}")
    if len(body) > MAX_RESPONSE:
        raise _error(url, f"answer is larger than {MAX_RESPONSE} bytes")
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise _error(url, f"answer is not JSON: {e}") from e
    return _parse(document, url)[:limit]


def _parse(document: object, url: str) -> list[RunningCommit]:
    running = document.get("running") if isinstance(document, dict) else None
    if not isinstance(running, list):
        raise _error(url, "expected an object with a 'running' list")
    found: list[RunningCommit] = []
    for i, item in enumerate(running):
        commit = item.get("commit") if isinstance(item, dict) else None
        devices = item.get("devices") if isinstance(item, dict) else None
        if not isinstance(commit, str) or not _CHECKSUM.fullmatch(commit):
            raise _error(url, f"running[{i}].commit must be a commit checksum, got {commit!r}")
        if not isinstance(devices, int) or isinstance(devices, bool) or devices < 0:
            raise _error(url, f"running[{i}].devices must be a count, got {devices!r}")
        found.append(RunningCommit(commit, devices))
    return sorted(found, key=lambda r: (-r.devices, r.commit))
