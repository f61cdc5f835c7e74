"""Key exchange and the FDO KDF: both sides agree for every suite, exactly as the spec says."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.kbkdf import KBKDFHMAC, CounterLocation, Mode

from afield.fdo import FdoMessageError, VerifyError
from afield.fdo.kex import CipherSuite, KexSuite, KeyExchange, Role, kdf


def fields(param: bytes) -> list[bytes]:
    out = []
    while param:
        size = int.from_bytes(param[:2], "big")
        out.append(param[2 : 2 + size])
        param = param[2 + size :]
    return out


@pytest.mark.parametrize("suite", list(KexSuite))
@pytest.mark.parametrize("cipher", list(CipherSuite))
def test_device_and_owner_agree(suite: KexSuite, cipher: CipherSuite) -> None:
    owner = KeyExchange(suite, Role.OWNER)
    device = KeyExchange(suite, Role.DEVICE)
    owner_session = owner.session(device.parameter, cipher)
    device_session = device.session(owner.parameter, cipher)
    assert owner_session.sek == device_session.sek
    assert len(owner_session.sek) == cipher.key_size
    assert device_session.decrypt(owner_session.encrypt(b"to2 body")) == b"to2 body"
    assert owner_session.decrypt(device_session.encrypt(b"reply")) == b"reply"


@pytest.mark.parametrize(
    ("suite", "size", "rand"), [(KexSuite.ECDH256, 32, 16), (KexSuite.ECDH384, 48, 48)]
)
def test_ecdh_parameter_layout_and_shse_order(suite: KexSuite, size: int, rand: int) -> None:
    owner = KeyExchange(suite, Role.OWNER)
    device = KeyExchange(suite, Role.DEVICE)
    ax, ay, owner_random = fields(owner.parameter)
    assert (len(ax), len(ay), len(owner_random)) == (size, size, rand)
    device_random = fields(device.parameter)[2]
    shse = owner.shared_secret(device.parameter)
    assert shse == device.shared_secret(owner.parameter)
    # ShSe = Shx || DeviceRandom || OwnerRandom
    assert shse[size:] == device_random + owner_random


def test_ecdh_accepts_coordinates_without_leading_zeros() -> None:
    owner = KeyExchange(KexSuite.ECDH256, Role.OWNER)
    device = KeyExchange(KexSuite.ECDH256, Role.DEVICE)
    x, y, rnd = fields(device.parameter)
    stripped = b"".join(
        len(p).to_bytes(2, "big") + p for p in (x.lstrip(b"\0"), y.lstrip(b"\0"), rnd)
    )
    assert owner.shared_secret(stripped) == device.shared_secret(owner.parameter)


def test_dh_parameter_is_padded_to_the_modulus() -> None:
    assert len(KeyExchange(KexSuite.DHKEXID14, Role.OWNER).parameter) == 256
    assert len(KeyExchange(KexSuite.DHKEXID15, Role.OWNER).parameter) == 384


def test_invalid_peer_parameters_are_rejected() -> None:
    # Threat: small-subgroup / invalid-point inputs that force a known shared secret.
    dh = KeyExchange(KexSuite.DHKEXID14, Role.OWNER)
    for bad in (b"\x01", b"\x00", b"\xff" * 256):
        with pytest.raises(VerifyError):
            dh.shared_secret(bad)
    ecdh = KeyExchange(KexSuite.ECDH256, Role.OWNER)
    not_on_curve = b"".join(
        len(p).to_bytes(2, "big") + p for p in (b"\x01" * 32, b"\x02" * 32, b"r" * 16)
    )
    with pytest.raises(VerifyError, match="not a point"):
        ecdh.shared_secret(not_on_curve)
    with pytest.raises(FdoMessageError):
        ecdh.shared_secret(b"\x00\x20abc")
    with pytest.raises(FdoMessageError, match="not supported"):
        KeyExchange("ASYMKEX2048", Role.OWNER)


@pytest.mark.parametrize("length", [16, 32, 48, 80])
@pytest.mark.parametrize("prf", ["sha256", "sha384"])
def test_kdf_is_sp800_108_counter_mode(length: int, prf: str) -> None:
    # Cross-check with cryptography's independent SP 800-108 implementation: 8-bit counter
    # before the fixed input, label, 0x00, context, 16-bit length in bits.
    shse, rand = b"s" * 40, b"context-rand"
    algorithm = hashes.SHA256() if prf == "sha256" else hashes.SHA384()
    reference = KBKDFHMAC(
        algorithm=algorithm,
        mode=Mode.CounterMode,
        length=length,
        rlen=1,
        llen=2,
        location=CounterLocation.BeforeFixed,
        label=b"FIDO-KDF",
        context=b"AutomaticOnboardTunnel" + rand,
        fixed=None,
    ).derive(shse)
    assert kdf(shse, length, prf=prf, context_rand=rand) == reference


def test_session_keys_differ_per_exchange() -> None:
    a = KeyExchange(KexSuite.ECDH256, Role.OWNER)
    b = KeyExchange(KexSuite.ECDH256, Role.DEVICE)
    c = KeyExchange(KexSuite.ECDH256, Role.DEVICE)
    first = a.session(b.parameter, CipherSuite.A128GCM)
    second = a.session(c.parameter, CipherSuite.A128GCM)
    assert first.sek != second.sek
    with pytest.raises(VerifyError):
        second.decrypt(first.encrypt(b"replayed"))
