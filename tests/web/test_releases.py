"""The releases page: versions per image, device counts, package diffs, sizes and deltas.

The repository is real: small OSTree commits (:func:`tests.device.images.build_tree`) carrying
the metadata ``afield compose`` writes, with different package lists, published as signed TUF
releases with real static deltas (:func:`afield.release.publish`), and served by a real fleet
manager on 127.0.0.1 that registers them at start.
"""

from __future__ import annotations

import html
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from afield.fleet.models import Device, Release
from afield.release import init_repository, list_releases, publish
from afield.trust import Keyring
from afield.web._catalog import Catalog
from tests.device.images import KERNEL
from tests.web import NOW, Site, image_commit, site

HOSTILE = "<b>pwn</b>"
BASE = {"base-files": "12.4", "openssl": "3.0.11", "curl": "7.88.1", "legacy-tool": "0.9"}
# 1.1.0: openssl upgraded, legacy-tool removed, jq and a hostile package name added.
SECOND = {**BASE, "openssl": "3.0.13", "jq": "1.6", HOSTILE: "<i>1</i>"}
del SECOND["legacy-tool"]
# 1.2.0: twenty libraries more (a long diff, folded).
THIRD = {**SECOND, **{f"libextra{n}": "1.0" for n in range(20)}}


@dataclass(frozen=True)
class Published:
    """A repository with releases of gateway (1.0.0, 1.1.0, 1.2.0) and sensor (2.0.0)."""

    directory: Path
    keyring: Keyring
    commits: dict[str, str]  # version -> commit
    deltas: dict[str, dict[str, int]]  # version -> {from version: length}


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Published:
    """Built once per module: four commits, published with deltas (1.2.0 only from 1.1.0)."""
    base = tmp_path_factory.mktemp("published")
    directory = base / "repo"
    keyring = Keyring.generate(base / "keys")
    init_repository(directory, keyring)
    commits = {
        "1.0.0": image_commit(directory, base, "1.0.0", BASE, 120_000_000, "gateway"),
        "1.1.0": image_commit(directory, base, "1.1.0", SECOND, 125_500_000, "gateway"),
        "1.2.0": image_commit(directory, base, "1.2.0", THIRD, 131_000_000, "gateway"),
        "2.0.0": image_commit(directory, base, "2.0.0", {"busybox": "1.36"}, 9_000_000, "sensor"),
    }
    publish(directory, keyring, commits["1.0.0"])
    publish(directory, keyring, commits["1.1.0"])
    publish(directory, keyring, commits["1.2.0"], deltas=1)
    publish(directory, keyring, commits["2.0.0"])
    versions = {c: v for v, c in commits.items()}
    deltas = {
        target.version: {versions[d["from"]]: d["length"] for d in target.deltas}
        for target in list_releases(directory).releases
    }
    assert deltas["1.1.0"].keys() == {"1.0.0"} and deltas["1.2.0"].keys() == {"1.1.0"}
    return Published(directory, keyring, commits, deltas)


def _devices(commits: dict[str, str], running: dict[str, int]) -> list[Device]:
    return [
        Device(
            id=f"dev-{version}-{n}",
            image="gateway",
            arch="x86_64",
            current_version=version,
            current_commit=commits[version],
        )
        for version, count in running.items()
        for n in range(count)
    ]


@pytest.fixture
def served(tmp_path: Path, published: Published) -> Iterator[Site]:
    """A fleet manager serving the published repository, 3 devices on 1.0.0 and 5 on 1.1.0."""
    with site(tmp_path, repo_dir=published.directory) as web:
        web.add(*_devices(published.commits, {"1.0.0": 3, "1.1.0": 5}))
        yield web


def _row(page: str, version: str, image: str = "gateway") -> str:
    found = re.search(
        rf'<tr id="release-{image}-x86_64-{re.escape(version)}">(.*?)</tr>', page, re.DOTALL
    )
    assert found is not None, f"no row for {image} {version}"
    return found.group(1)


def _cell(row: str, name: str) -> str:
    found = re.search(rf'<td class="[^"]*\b{name}\b[^"]*">(.*?)</td>', row, re.DOTALL)
    assert found is not None, f"no {name} cell in {row[:300]}"
    return " ".join(found.group(1).split())


def test_versions_are_listed_newest_first_with_how_many_devices_run_each(
    served: Site, published: Published
) -> None:
    page = served.login("viewer").get("/releases")
    assert page.status_code == 200
    gateway = page.text[page.text.index('id="gateway-x86_64"') :]
    order = [gateway.index(f'id="release-gateway-x86_64-{v}"') for v in ("1.2.0", "1.1.0", "1.0.0")]
    assert order == sorted(order)
    counts = {v: _cell(_row(page.text, v), "devices") for v in ("1.0.0", "1.1.0", "1.2.0")}
    assert counts == {"1.0.0": "3", "1.1.0": "5", "1.2.0": "0"}
    assert published.commits["1.1.0"][:12] in _row(page.text, "1.1.0")
    assert "first release" in _row(page.text, "1.0.0")


def test_the_package_diff_shows_added_removed_and_upgraded_packages(served: Site) -> None:
    page = served.login("viewer").get("/releases").text
    diff = _cell(_row(page, "1.1.0"), "packages")
    assert "since 1.0.0" in diff
    assert '<li class="added">+ jq 1.6</li>' in diff
    assert '<li class="removed">- legacy-tool 0.9</li>' in diff
    assert '<li class="changed">~ openssl 3.0.11 → 3.0.13</li>' in diff
    assert "+2 added" in diff and "-1 removed" in diff and "~1 changed" in diff
    assert "curl" not in diff  # unchanged packages are not listed
    assert '<details class="diff" open>' in diff
    long_diff = _cell(_row(page, "1.2.0"), "packages")
    assert '<details class="diff">' in long_diff  # 20 lines: folded
    assert long_diff.count('<li class="added">') == 20
    assert "openssl" not in long_diff


def test_a_hostile_package_name_in_commit_metadata_is_escaped(served: Site) -> None:
    # Threat: whoever composes an image controls its package list; markup in it must not run in
    # an operator's browser.
    page = served.login("viewer").get("/releases").text
    escaped = f"+ {html.escape(HOSTILE)} {html.escape('<i>1</i>')}"
    assert escaped in _cell(_row(page, "1.1.0"), "packages")
    assert HOSTILE not in page
    assert "<i>1</i>" not in page


def test_sizes_kernels_and_published_deltas_with_their_lengths(
    served: Site, published: Published
) -> None:
    page = served.login("viewer").get("/releases").text
    second = _row(page, "1.1.0")
    assert "125.5 MB" in _cell(second, "image")
    assert KERNEL in _cell(second, "image")
    deltas = _cell(second, "deltas")
    length = published.deltas["1.1.0"]["1.0.0"]
    assert "from <strong>1.0.0</strong>: <span" in deltas
    assert f"{length} bytes" in deltas
    assert "missing" not in deltas
    # 1.2.0 was published with a delta from 1.1.0 only: the 3 devices on 1.0.0 have none.
    third = _cell(_row(page, "1.2.0"), "deltas")
    assert f"{published.deltas['1.2.0']['1.1.0']} bytes" in third
    assert "missing: from <strong>1.0.0</strong> (3 devices would pull the whole commit)" in third
    assert "none needed" in _cell(_row(page, "1.0.0"), "deltas")


def test_the_image_filter_shows_only_that_image(served: Site) -> None:
    client = served.login("viewer")
    page = client.get("/releases", params={"image": "sensor"}).text
    assert 'id="sensor-x86_64"' in page
    assert 'id="gateway-x86_64"' not in page
    assert "9.0 MB" in _cell(_row(page, "2.0.0", "sensor"), "image")
    assert '<option value="sensor" selected>' in page
    none = client.get("/releases", params={"image": "nosuch", "arch": "x86_64"})
    assert none.status_code == 200
    assert "No releases of image <strong>nosuch</strong> for <strong>x86_64</strong>" in none.text


def test_a_malformed_filter_gets_a_400_page_naming_it(served: Site) -> None:
    # Threat: a crafted link puts markup in a filter; it is refused, and never echoed raw.
    answer = served.login("viewer").get("/releases", params={"image": "<script>x</script>"})
    assert answer.status_code == 400
    assert answer.headers["content-type"].startswith("text/html")
    assert "image: expected a name of letters, digits" in answer.text
    assert "<script>x" not in answer.text
    arch = served.login("viewer").get("/releases", params={"arch": "x" * 40})
    assert arch.status_code == 400
    assert "arch: expected" in arch.text


def test_without_a_served_repository_the_page_says_what_needs_repo(
    tmp_path: Path, published: Published
) -> None:
    with site(tmp_path) as web:
        commits = published.commits
        web.add(
            *(
                Release(image="gateway", arch="x86_64", version=v, commit=commits[v], created=NOW)
                for v in ("1.0.0", "1.1.0")
            ),
            *_devices(commits, {"1.1.0": 2}),
        )
        page = web.login("viewer").get("/releases")
    assert page.status_code == 200
    assert "afield serve --repo DIR" in page.text
    assert _cell(_row(page.text, "1.1.0"), "devices") == "2"
    assert "Deltas to it" not in page.text
    assert "jq" not in page.text


def test_an_unverifiable_repository_leaves_a_note_and_the_rest_of_the_page(
    tmp_path: Path, published: Published
) -> None:
    # Threat: tampered TUF metadata; the page must not show its deltas as if they were signed.
    directory = tmp_path / "repo"
    shutil.copytree(published.directory, directory)
    with site(tmp_path, repo_dir=directory) as web:
        client = web.login("viewer")
        assert "bytes" in _cell(_row(client.get("/releases").text, "1.1.0"), "deltas")
        targets = directory / "tuf" / "targets.json"
        targets.write_text(targets.read_text().replace('"1.1.0"', '"1.1.9"'))
        page = client.get("/releases")
    assert page.status_code == 200
    assert "TUF metadata could not be read or verified" in page.text
    assert "Traceback" not in page.text
    second = _row(page.text, "1.1.0")
    assert "bytes" not in _cell(second, "deltas")
    assert "+ jq 1.6" in _cell(second, "packages")  # OSTree is still read


def test_a_release_whose_commit_is_not_in_the_repository_says_so(
    served: Site, published: Published
) -> None:
    served.add(
        Release(image="gateway", arch="x86_64", version="1.3.0", commit="ab" * 32, created=NOW)
    )
    page = served.login("viewer").get("/releases").text
    row = _row(page, "1.3.0")
    assert "not in the served repository" in _cell(row, "image")
    assert "this commit cannot be read" in _cell(row, "packages")
    assert "not published in the served repository" in _cell(row, "deltas")


def test_the_catalog_reads_each_commit_once_and_the_listing_when_the_metadata_changes(
    tmp_path: Path, published: Published
) -> None:
    directory = tmp_path / "repo"
    shutil.copytree(published.directory, directory)
    commits = published.commits
    kept = Catalog(directory, max_images=2)
    first = kept.listing()
    assert kept.listing() is first
    kept.images([commits["1.0.0"], commits["1.1.0"]])
    again = kept.images([commits["1.1.0"], commits["1.0.0"]])
    assert kept.image_reads == 2
    assert again.found[commits["1.1.0"]].packages["jq"] == "1.6"
    kept.images([commits["1.2.0"]])  # the least recently used (1.1.0) goes
    assert kept.cached() == 2
    kept.images([commits["1.1.0"]])
    assert kept.image_reads == 4
    # Publishing rewrites targets, snapshot and timestamp: the listing is verified again.
    work = tmp_path / "work"
    newer = image_commit(directory, work, "1.4.0", THIRD, 1, "gateway")
    publish(directory, published.keyring, newer, deltas=0)
    assert kept.listing_reads == 1
    assert newer in {r.commit for r in kept.listing().releases}
    assert kept.listing_reads == 2
