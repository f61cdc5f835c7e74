"""The device's identity with its fleet manager: a P-256 key, a certificate, an id.

:func:`enroll` runs once per device, in the order that survives a power cut:

1. the key is made and written to ``/var/lib/afield/identity/device.key`` (mode 0600) before
   any CSR leaves the device; a cut attempt leaves the key, and the next one reuses it;
2. the one-time token (``/var/lib/afield/fdo/enroll-token`` from onboarding, or given) and a
   CSR go to the fleet manager, which answers the device id and a certificate for that key;
3. ``device.crt``, ``ca.crt`` and, last, ``identity.json`` (device id, fleet URL) are replaced
   atomically: a device is enrolled exactly when ``identity.json`` exists;
4. the token file is deleted (spent) and the journal records ``enrolled``.

A cut between 2 and 3 leaves a spent token and no identity: the device needs a new token (the
fleet manager refuses a second use, by design).

What it leaves to others: signing requests with the key (:mod:`afield.device.fleetclient`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from afield.device._agentconfig import read_limited
from afield.device.fleetclient import FleetClient
from afield.device.lifecycle import Device
from afield.device.state import atomic_write
from afield.device.update import device_arch
from afield.errors import DeviceError, Problem
from afield.fleet.protocol import NAME, EnrollRequest, make_csr, new_device_key

__all__ = ["Identity", "enroll", "identity_dir", "load_identity", "token_file"]

_NAME = re.compile(NAME)


@dataclass(frozen=True)
class Identity:
    """Who the device is to its fleet manager: its id, where it enrolled, its key."""

    device_id: str
    fleet_url: str
    key: ec.EllipticCurvePrivateKey


def identity_dir(device: Device) -> Path:
    """``/var/lib/afield/identity``: the key, the certificates and ``identity.json``."""
    return device.state.directory / "identity"


def token_file(device: Device) -> Path:
    """Where onboarding left the one-time enrollment token."""
    return device.state.directory / "fdo" / "enroll-token"


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise DeviceError(f"{path}: cannot load the device key: {e}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise DeviceError(f"{path}: not an EC (P-256) key")
    return key


def load_identity(device: Device) -> Identity | None:
    """The device's identity, or None when it has not enrolled.

    Raises:
        DeviceError: ``identity.json`` or the key is damaged.
    """
    directory = identity_dir(device)
    record = directory / "identity.json"
    problems: list[Problem] = []
    data = read_limited(record, problems)
    if problems:
        raise DeviceError(str(problems[0]))
    if data is None:
        return None
    try:
        value = json.loads(data)
        device_id, fleet_url = str(value["device_id"]), str(value["fleet_url"])
    except (ValueError, KeyError, TypeError) as e:
        raise DeviceError(f"{record}: not an identity record: {e}") from e
    return Identity(device_id, fleet_url, _load_key(directory / "device.key"))


def _read_token(device: Device, token: str | None) -> tuple[str, Path | None]:
    if token is not None:
        return token.strip(), None
    path = token_file(device)
    problems: list[Problem] = []
    data = read_limited(path, problems)
    if problems:
        raise DeviceError(str(problems[0]))
    if data is None:
        raise DeviceError(
            f"{device.sysroot_path}: not enrolled and no enrollment token: onboarding leaves one "
            f"in {path}, or pass --token",
            user_error=True,
        )
    return data.decode("utf-8", errors="replace").strip(), path


def _device_key(directory: Path) -> ec.EllipticCurvePrivateKey:
    """The key of an enrollment: the one a cut attempt left, else a new one, on disk first."""
    path = directory / "device.key"
    if path.exists():
        return _load_key(path)
    key = new_device_key()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    atomic_write(path, pem, point="identity:key", mode=0o600)
    return key


def enroll(
    device: Device, client: FleetClient, *, token: str | None = None, name: str = ""
) -> Identity:
    """Enroll with the fleet manager behind ``client`` and keep the identity.

    Raises:
        DeviceError: no token, or the certificate is not for the device's key.
        FleetRefusedError: the token is unknown, spent or expired, or the CSR is refused.
        TransportError: the fleet manager cannot be reached.
    """
    secret, from_file = _read_token(device, token)
    directory = identity_dir(device)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = _device_key(directory)
    request = EnrollRequest(
        token=secret,
        csr=make_csr(key, name or "afield device"),
        name=name[:255],
        image=device.osname if _NAME.match(device.osname) else None,
        arch=device_arch(),
    )
    answer = client.enroll(request)
    try:
        certificate = x509.load_pem_x509_certificate(answer.certificate.encode())
        x509.load_pem_x509_certificate(answer.ca_certificate.encode())
    except ValueError as e:
        raise DeviceError(f"the fleet manager's enrollment answer: bad certificate: {e}") from e
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if certificate.public_key().public_bytes(
        serialization.Encoding.DER, public
    ) != key.public_key().public_bytes(serialization.Encoding.DER, public):
        raise DeviceError("the fleet manager certified another key than the device's")
    atomic_write(directory / "device.crt", answer.certificate.encode(), point="identity:crt")
    atomic_write(directory / "ca.crt", answer.ca_certificate.encode(), point="identity:ca")
    record = {"device_id": answer.device_id, "fleet_url": client.base_url}
    atomic_write(
        directory / "identity.json",
        (json.dumps(record, indent=1) + "\n").encode(),
        point="identity:record",
    )
    if from_file is not None:
        from_file.unlink(missing_ok=True)  # spent: single use
    device.state.record("enrolled", device_id=answer.device_id, fleet_url=client.base_url)
    return Identity(answer.device_id, client.base_url, key)
