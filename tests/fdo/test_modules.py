"""The afield and fdo.download service info modules: what the owner sends is what the device keeps,
and whatever an owner sends, the device either keeps something valid or refuses naming the key."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afield.errors import FdoError
from afield.fdo.cbor import encode
from afield.fdo.modules import (
    AFIELD,
    BLOCK_SIZE,
    DOWNLOAD,
    DeviceModules,
    DownloadFile,
    Handoff,
    HandoffLimits,
    ModuleError,
)
from afield.fdo.serviceinfo import ServiceInfoKV, chunk_service_info

ROOT = json.dumps({"signed": {"_type": "root", "version": 1}, "signatures": []}).encode() * 1
BIG_ROOT = json.dumps({"signed": {"_type": "root", "pad": "x" * 5000}, "signatures": []}).encode()
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKq0 ops@example"


def handoff(**changes: object) -> Handoff:
    values: dict[str, object] = {
        "fleet_url": "https://fleet.example.com:8443",
        "enrollment_token": "tok-0123456789",
        "tuf_root": BIG_ROOT,
        "ssh_keys": (KEY,),
        "files": (
            DownloadFile("motd", b"welcome\n"),
            DownloadFile("/var/lib/app/config.bin", bytes(range(256)) * 20),
        ),
    }
    values.update(changes)
    return Handoff(**values)  # type: ignore[arg-type]


def deliver(kvs: list[ServiceInfoKV], device: DeviceModules) -> list[ServiceInfoKV]:
    replies: list[ServiceInfoKV] = []
    for kv in kvs:
        replies.extend(device(kv))
    return replies


def test_what_the_owner_sends_is_what_the_device_keeps() -> None:
    sent = handoff()
    device = DeviceModules()
    replies = deliver(sent.owner_kvs(), device)
    assert device.handoff() == sent
    answers = [(r.key, r.value()) for r in replies]
    assert answers == [
        ("afield:active", True),
        ("afield:done", True),
        ("fdo.download:active", True),
        ("fdo.download:done", 8),
        ("fdo.download:done", 5120),
    ]


def test_every_value_fits_the_default_mtu_and_large_values_are_split() -> None:
    kvs = handoff().owner_kvs()
    assert max(len(encode(kv.to_cbor())) for kv in kvs) < 1300 - 16
    assert sum(kv.key == "afield:tuf_root" for kv in kvs) == -(-len(BIG_ROOT) // BLOCK_SIZE)
    assert len(chunk_service_info(kvs, 1300)) > 1


def test_unsupported_modules_are_answered_inactive_and_ignored() -> None:
    device = DeviceModules()
    replies = deliver(
        [
            ServiceInfoKV.of("fdo.command", "active", True),
            ServiceInfoKV.of("fdo.command", "command", "sh"),
            ServiceInfoKV.of("fdo.command", "args", ["rm", "-rf", "/"]),
        ],
        device,
    )
    assert [(r.key, r.value()) for r in replies] == [("fdo.command:active", False)]
    assert device.handoff() == Handoff()


def test_a_tampered_tuf_root_is_refused() -> None:
    kvs = handoff().owner_kvs()
    i = next(i for i, kv in enumerate(kvs) if kv.key == "afield:tuf_root")
    kvs[i] = ServiceInfoKV.of(AFIELD, "tuf_root", b"X" + kvs[i].value()[1:])
    with pytest.raises(ModuleError, match="tuf_root: SHA-384 does not match"):
        deliver(kvs, DeviceModules())


def test_a_tampered_download_is_refused() -> None:
    kvs = handoff().owner_kvs()
    i = max(i for i, kv in enumerate(kvs) if kv.key == "fdo.download:data")
    kvs[i] = ServiceInfoKV.of(DOWNLOAD, "data", b"\xff" * len(kvs[i].value()))
    with pytest.raises(ModuleError, match=r"config\.bin.?: SHA-384 does not match"):
        deliver(kvs, DeviceModules())


def test_a_download_longer_than_announced_is_refused() -> None:
    kvs = [
        ServiceInfoKV.of(DOWNLOAD, "active", True),
        ServiceInfoKV.of(DOWNLOAD, "name", "a"),
        ServiceInfoKV.of(DOWNLOAD, "length", 2),
        ServiceInfoKV.of(DOWNLOAD, "data", b"abc"),
    ]
    with pytest.raises(ModuleError, match="more than the 2 bytes announced"):
        deliver(kvs, DeviceModules())


def test_streaming_download_ends_with_an_empty_block() -> None:
    device = DeviceModules()
    replies = deliver(
        [
            ServiceInfoKV.of(DOWNLOAD, "active", True),
            ServiceInfoKV.of(DOWNLOAD, "name", "s.txt"),
            ServiceInfoKV.of(DOWNLOAD, "data", b"abc"),
            ServiceInfoKV.of(DOWNLOAD, "data", b""),
        ],
        device,
    )
    assert replies[-1].value() == 3
    assert device.handoff().files == (DownloadFile("s.txt", b"abc"),)


def test_an_unfinished_transfer_is_refused_at_the_end() -> None:
    kvs = handoff().owner_kvs()
    device = DeviceModules()
    deliver(kvs[:-2], device)
    with pytest.raises(ModuleError, match="arrived incomplete"):
        device.handoff()
    device = DeviceModules()
    deliver([kv for kv in kvs if kv.key != "afield:end"][:3], device)
    with pytest.raises(ModuleError, match="never sent afield:end"):
        device.handoff()


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"fleet_url": "ftp://fleet"}, "fleet_url: 'ftp://fleet' is not an http"),
        ({"fleet_url": "https://"}, "is not an http"),
        ({"enrollment_token": "a\nb"}, "enroll_token: expected 1 to"),
        ({"tuf_root": b"{}"}, "not a TUF root.json"),
        ({"tuf_root": json.dumps({"signed": {"_type": "targets"}}).encode()}, "not 'root'"),
        ({"ssh_keys": ("hello",)}, "ssh_key: expected one authorized_keys line"),
        ({"files": (DownloadFile("/etc/passwd", b""),)}, "absolute names must be under /var/"),
        ({"files": (DownloadFile("../x", b""),)}, "without '..'"),
        ({"files": (DownloadFile("/var/../etc/x", b""),)}, "without '..'"),
        ({"files": (DownloadFile("a//b", b""),)}, "normal path"),
    ],
)
def test_bad_values_are_refused_naming_the_key(changes: dict[str, object], match: str) -> None:
    with pytest.raises(ModuleError, match=match):
        handoff(**changes).owner_kvs()


def test_the_device_refuses_bad_names_even_from_an_owner_that_does_not_check() -> None:
    kvs = [
        ServiceInfoKV.of(DOWNLOAD, "active", True),
        ServiceInfoKV.of(DOWNLOAD, "name", "/usr/bin/sh"),
    ]
    with pytest.raises(ModuleError, match="under /var/"):
        deliver(kvs, DeviceModules())


def test_limits_bound_what_a_device_accepts() -> None:
    limits = HandoffLimits(max_file_bytes=1000, max_tuf_root=100)
    with pytest.raises(ModuleError, match="files exceed 1000 bytes"):
        deliver(handoff(tuf_root=None).owner_kvs(), DeviceModules(limits))
    with pytest.raises(ModuleError, match="tuf_root: larger than 100 bytes"):
        deliver(handoff(files=()).owner_kvs(), DeviceModules(limits))


def test_the_summary_names_no_secret() -> None:
    summary = json.dumps(handoff().to_dict())
    assert "tok-0123456789" not in summary
    assert hashlib.sha256(BIG_ROOT).hexdigest() in summary
    assert "/var/lib/afield/files/motd" in summary


keys = st.sampled_from(
    [
        "afield:active",
        "afield:fleet_url",
        "afield:enroll_token",
        "afield:tuf_root_sha384",
        "afield:tuf_root",
        "afield:ssh_key",
        "afield:end",
        "fdo.download:active",
        "fdo.download:name",
        "fdo.download:length",
        "fdo.download:sha-384",
        "fdo.download:data",
        "fdo.command:active",
        "other:x",
    ]
)
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.binary(max_size=60),
    st.text(max_size=40),
    st.lists(st.integers(0, 1000), max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(keys, values), max_size=25))
def test_any_sequence_of_owner_values_is_kept_valid_or_refused(
    sequence: list[tuple[str, object]],
) -> None:
    device = DeviceModules(HandoffLimits(max_file_bytes=200, max_tuf_root=200))
    try:
        for key, value in sequence:
            for reply in device(ServiceInfoKV(key, encode(value))):
                assert ":" in reply.key
        kept = device.handoff()
    except FdoError:
        return
    assert kept.check(device.limits) == kept
