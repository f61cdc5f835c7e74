"""The bounded CBOR decoder and the deterministic encoder."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afield.errors import MessageError
from afield.fdo import ErrorCode, FdoMessageError, Limits
from afield.fdo.cbor import CborTag, RawCbor, decode, encode

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.binary(max_size=40)
    | st.text(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.integers(-100, 100) | st.text(max_size=5), inner, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(values)
def test_encode_matches_cbor2_canonical_and_decodes_back(value: object) -> None:
    data = encode(value)
    assert decode(data) == value
    assert cbor2.loads(data) == value
    assert data == cbor2.dumps(value, canonical=True) or isinstance(value, dict | list)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_only_raise_the_fdo_message_error(data: bytes) -> None:
    # Threat: a crafted body crashes the decoder with an exception the server does not handle.
    try:
        decode(data)
    except FdoMessageError as e:
        assert e.code == ErrorCode.MESSAGE_BODY_ERROR
        assert isinstance(e, MessageError)


def test_tags_keep_their_exact_bytes() -> None:
    data = bytes.fromhex("d28440a0410140")
    value = decode(data)
    assert isinstance(value, CborTag)
    assert value.tag == 18
    assert value.raw == data


def test_deep_nesting_is_rejected() -> None:
    # Threat: stack exhaustion through nested arrays.
    data = b"\x81" * 100_000 + b"\x00"
    with pytest.raises(FdoMessageError, match="nesting deeper"):
        decode(data)


def test_nesting_limit_is_configurable() -> None:
    data = b"\x81" * 5 + b"\x00"
    assert decode(data, Limits(max_depth=5)) == [[[[[0]]]]]
    with pytest.raises(FdoMessageError):
        decode(data, Limits(max_depth=4))


def test_oversized_body_is_rejected_before_decoding() -> None:
    # Threat: memory exhaustion with a huge body.
    with pytest.raises(FdoMessageError, match="exceeds the limit 100"):
        decode(encode(b"x" * 200), Limits(max_bytes=100))


def test_length_claims_beyond_the_body_are_rejected_without_allocating() -> None:
    # Threat: a 9-byte head claiming 2^63 bytes or elements.
    for head in (b"\x5b", b"\x7b", b"\x9b", b"\xbb"):
        with pytest.raises(FdoMessageError, match="larger than the rest"):
            decode(head + (2**63).to_bytes(8, "big"), Limits(max_string=2**64))


def test_item_and_string_limits() -> None:
    with pytest.raises(FdoMessageError, match="more than 10 items"):
        decode(encode(list(range(20))), Limits(max_items=10))
    with pytest.raises(FdoMessageError, match="exceeds the limit 8"):
        decode(encode("x" * 9), Limits(max_string=8))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x9f\x01\xff", "indefinite"),
        (b"\x5f\x41\x00\xff", "indefinite"),
        (b"\xa2\x01\x01\x01\x02", "duplicate map key"),
        (b"\xa1\x80\x01", "map key of type list"),
        (b"\x01\x02", "trailing"),
        (b"\xf7", "simple value 23"),
        (b"\x1c", "reserved"),
        (b"\x62\xff\xfe", "UTF-8"),
        (b"", "needs 1 more"),
        (b"\xff", "indefinite"),
    ],
)
def test_malformed_cbor_is_rejected(data: bytes, reason: str) -> None:
    with pytest.raises(FdoMessageError, match=reason):
        decode(data)


def test_encoding_is_deterministic() -> None:
    assert encode({"b": 1, 10: 2, -1: 3}) == bytes.fromhex("a30a022003616201")
    assert encode(23) == b"\x17"
    assert encode(24) == b"\x18\x18"
    assert encode(-(2**64)) == b"\x3b" + b"\xff" * 8
    with pytest.raises(ValueError):
        encode(2**64)
    with pytest.raises(TypeError):
        encode(object())


def test_raw_cbor_is_copied_as_is() -> None:
    # A non-minimal head (0x18 0x01 for 1) survives re-encoding when passed as RawCbor.
    assert encode([RawCbor(b"\x18\x01"), 2]) == b"\x82\x18\x01\x02"
