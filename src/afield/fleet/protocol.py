"""The device API's wire format and request signatures: what the agent and the fleet manager share.

Three calls, all JSON (the models below are the contract and the OpenAPI schema):

* ``POST /api/v1/device/enroll`` with :class:`EnrollRequest`: the one-time enrollment token the
  owner handed over in FDO TO2 (or an operator created) and a PKCS#10 CSR for the device's own
  P-256 key. The answer, :class:`EnrollResponse`, names the device and carries its certificate,
  issued by the fleet manager's CA. The token is spent; a second use is refused.
* ``GET /api/v1/device/desired?wait=S`` answers :class:`DesiredState` with an ``ETag``. A device
  sends the ETag it has in ``If-None-Match``; while nothing changed the server holds the request
  up to ``wait`` seconds (long-poll) and answers ``304``, so an idle device costs one quiet
  connection, not a stream of queries. The state names the release to run and the
  applications (:class:`Application`: Kubernetes manifests and their images) to run beside it.
* ``POST /api/v1/device/status`` with :class:`StatusReport`: what runs, what is staged, the last
  health checks, the update in progress, the last rollback and how each application is
  (:class:`ApplicationStatus`).

Every call after enrollment is signed with the device key (TLS may terminate at a proxy, so the
identity travels in the request itself). The header is::

    Authorization: AfieldDevice id=<device id>, ts=<unix seconds>, nonce=<hex>, sig=<base64url>

and the signature is ECDSA P-256 with SHA-256 (DER) over :func:`signing_string`: the method,
the path with its query, the time, the nonce and the body's SHA-256, one per line. The server
accepts a time within :data:`MAX_SKEW` seconds of its own and each nonce once in that window, so
a captured request cannot be replayed later or elsewhere.

What it leaves to others: checking tokens, issuing certificates and storing reports (the fleet
manager, :mod:`afield.fleet.api.device`), and the agent loop (:mod:`afield.device.agent`). This
module imports neither a web framework nor a database, so the device side can use it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Annotated, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import BaseModel, ConfigDict, Field

from afield.errors import FleetError

__all__ = [
    "APP_NAME",
    "AUTH_SCHEME",
    "DESIRED_PATH",
    "ENROLL_PATH",
    "MAX_APPLICATIONS",
    "MAX_DESIRED_BYTES",
    "MAX_MANIFEST_CHARS",
    "MAX_SKEW",
    "MAX_WAIT",
    "STATUS_PATH",
    "Application",
    "ApplicationStatus",
    "DesiredRelease",
    "DesiredState",
    "DeviceAuth",
    "DeviceAuthError",
    "EnrollRequest",
    "EnrollResponse",
    "HealthReport",
    "Rollback",
    "StatusReport",
    "UpdateProgress",
    "VersionRef",
    "authorization",
    "make_csr",
    "manifests_digest",
    "new_device_key",
    "parse_authorization",
    "signing_string",
    "verify_request",
]

ENROLL_PATH = "/api/v1/device/enroll"
DESIRED_PATH = "/api/v1/device/desired"
STATUS_PATH = "/api/v1/device/status"
AUTH_SCHEME = "AfieldDevice"
MAX_SKEW = 300  # seconds a signed request's time may differ from the server's
MAX_WAIT = 120  # the longest long-poll a device may ask for, seconds
MAX_APPLICATIONS = 64  # the most applications one device runs (and reports)
MAX_MANIFEST_CHARS = 262144  # the longest manifests text of one application
MAX_DESIRED_BYTES = 1 << 20  # the largest desired state a device must read (its JSON, bytes)
_NONCE = re.compile(r"^[0-9a-f]{16,64}$")
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_AUTH_PART = re.compile(r"\s*([a-z]+)=([^,\s]*)\s*(?:,|$)")

COMMIT = r"^[0-9a-f]{64}$"
VERSION = r"^[A-Za-z0-9][A-Za-z0-9.+~_-]*$"
NAME = r"^[a-z0-9][a-z0-9._-]*$"

Commit = Annotated[str, Field(pattern=COMMIT, description="OSTree commit: 64 lowercase hex.")]
Version = Annotated[str, Field(min_length=1, max_length=64, pattern=VERSION)]
ShortText = Annotated[str, Field(max_length=500)]
APP_NAME = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
AppName = Annotated[
    str, Field(pattern=APP_NAME, description="The application's name: a DNS label (RFC 1123).")
]
Digest = Annotated[
    str, Field(pattern=COMMIT, description="SHA-256 of the manifests' UTF-8 bytes, 64 hex.")
]


class DeviceAuthError(FleetError):
    """A device request whose signature, time, nonce or header is not acceptable."""

    user_error = True


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- enrollment ------------------------------------------------------------------------------


class EnrollRequest(_Strict):
    """A device's first call: its one-time token and a CSR for its own key."""

    token: Annotated[str, Field(min_length=16, max_length=256, description="One-time token.")]
    csr: Annotated[
        str, Field(min_length=64, max_length=8192, description="PKCS#10 CSR, PEM, P-256 key.")
    ]
    name: Annotated[str, Field(max_length=255)] = ""
    image: Annotated[str, Field(max_length=64, pattern=NAME)] | None = None
    arch: Annotated[str, Field(max_length=32, pattern=r"^[A-Za-z0-9_]+$")] | None = None


class EnrollResponse(BaseModel):
    """The device's identity: its id, its certificate and the CA that issued it (PEM)."""

    device_id: str
    certificate: str
    ca_certificate: str


# --- desired state ---------------------------------------------------------------------------


class DesiredRelease(BaseModel):
    """The release a device should run."""

    image: str
    arch: str
    version: str
    commit: str


class Application(_Strict):
    """A workload the fleet manager wants on a device, as Kubernetes manifests podman plays.

    ``manifests`` is a YAML stream (checked by the fleet manager when it was set, with
    :func:`afield.workloads.manifests.parse`), ``images`` the images it uses (to pull first),
    ``digest`` the SHA-256 of the manifests' UTF-8 bytes (:func:`manifests_digest`), computed
    by the fleet manager, so a device tells a change without comparing texts.
    """

    name: AppName
    manifests: Annotated[str, Field(min_length=1, max_length=MAX_MANIFEST_CHARS)]
    images: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=255)]], Field(max_length=32)
    ] = []
    digest: Digest


class DesiredState(BaseModel):
    """What the fleet manager wants a device to run, and where to get it.

    ``repo_url`` is the update repository, absolute or relative to the fleet manager's URL.
    ``release`` None: keep running what runs. ``poll_seconds``: how long to wait between polls.
    ``applications``: the workloads to run beside the release, by name (none: remove every
    application the fleet manager deployed). The fleet manager leaves the field out while it is
    empty, so a device that predates applications reads the same state (and ETag) as before.
    """

    device_id: str
    release: DesiredRelease | None = None
    rollout_id: int | None = None
    repo_url: str | None = None
    poll_seconds: int = 30
    applications: list[Application] = []


# --- status ----------------------------------------------------------------------------------


class VersionRef(_Strict):
    """A deployment: its release version (None when its commit names none) and commit."""

    version: Version | None = None
    commit: Commit


class HealthReport(_Strict):
    """The health checks of the last boot of ``commit``."""

    ok: bool
    commit: Commit
    failed: Annotated[list[Annotated[str, Field(max_length=255)]], Field(max_length=64)] = []
    detail: ShortText = ""


class UpdateProgress(_Strict):
    """The update the device works on.

    ``state``: ``idle`` (nothing to do), ``downloading``, ``staged`` (boots next), ``failed``
    (it will retry), ``refused`` (the device will not install it: it rolled back from it
    before, or it is older than what runs).
    """

    state: Literal["idle", "downloading", "staged", "failed", "refused"]
    version: Version | None = None
    commit: Annotated[str, Field(pattern=COMMIT)] | None = None
    bytes_downloaded: Annotated[int, Field(ge=0, le=2**53)] = 0
    error: ShortText = ""


class Rollback(_Strict):
    """The device's last fall back: from which commit to which, and when (unix seconds)."""

    from_commit: Commit
    to_commit: Commit
    at: Annotated[float, Field(ge=0, le=2**40)]
    reason: ShortText = ""


class ApplicationStatus(_Strict):
    """How an application is on the device, for the manifests of ``digest``.

    ``state``: ``pending`` (pulling images, not played yet), ``running`` (played, not ready
    yet), ``ready``, ``failed`` (``reason`` says why; the device runs the manifests that ran
    before, if any, and does not retry this digest).
    """

    name: AppName
    digest: Digest
    state: Literal["pending", "running", "ready", "failed"]
    reason: ShortText = ""


class StatusReport(_Strict):
    """What the device reports; every field describes its state now (reports are idempotent).

    ``applications`` None: the device did not say (the fleet manager keeps what it said
    before); ``[]``: it runs none.
    """

    image: Annotated[str, Field(max_length=64, pattern=NAME)] | None = None
    arch: Annotated[str, Field(max_length=32, pattern=r"^[A-Za-z0-9_]+$")] | None = None
    booted: VersionRef | None = None
    pending: VersionRef | None = None
    rollback: VersionRef | None = None
    health: HealthReport | None = None
    update: UpdateProgress | None = None
    rolled_back: Rollback | None = None
    applications: Annotated[list[ApplicationStatus], Field(max_length=MAX_APPLICATIONS)] | None = (
        None
    )


def manifests_digest(manifests: str) -> str:
    """The :attr:`Application.digest` of ``manifests``: SHA-256 of its UTF-8 bytes, hex."""
    return hashlib.sha256(manifests.encode()).hexdigest()


# --- keys and CSRs ---------------------------------------------------------------------------


def new_device_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key (the curve device TPMs and secure elements support)."""
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(key: ec.EllipticCurvePrivateKey, common_name: str = "afield device") -> str:
    """A PKCS#10 request for ``key``, PEM; the fleet manager sets the subject it certifies."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64] or "device")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


# --- signed requests -------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceAuth:
    """The parts of an ``Authorization: AfieldDevice ...`` header."""

    device_id: str
    timestamp: int
    nonce: str
    signature: bytes


def signing_string(method: str, target: str, timestamp: int, nonce: str, body: bytes) -> bytes:
    """What a device signs: method, path with query, time, nonce, SHA-256 of the body."""
    digest = hashlib.sha256(body).hexdigest()
    return f"{method.upper()}\n{target}\n{timestamp}\n{nonce}\n{digest}".encode()


def authorization(
    key: ec.EllipticCurvePrivateKey,
    device_id: str,
    method: str,
    target: str,
    body: bytes,
    now: float,
) -> str:
    """The ``Authorization`` header value for one request (``target``: path and query)."""
    timestamp, nonce = int(now), secrets.token_hex(16)
    message = signing_string(method, target, timestamp, nonce, body)
    signature = key.sign(message, ec.ECDSA(hashes.SHA256()))
    encoded = base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
    return f"{AUTH_SCHEME} id={device_id}, ts={timestamp}, nonce={nonce}, sig={encoded}"


def parse_authorization(header: str | None) -> DeviceAuth:
    """The parts of a device's ``Authorization`` header.

    Raises:
        DeviceAuthError: the header is missing or not ``AfieldDevice id=, ts=, nonce=, sig=``.
    """
    expected = f"expected `{AUTH_SCHEME} id=<device>, ts=<unix seconds>, nonce=<hex>, sig=<b64>`"
    if not header:
        raise DeviceAuthError(f"Authorization: missing; {expected}")
    scheme, _, rest = header.strip().partition(" ")
    if scheme != AUTH_SCHEME or len(header) > 1024:
        raise DeviceAuthError(f"Authorization: not a device signature; {expected}")
    parts: dict[str, str] = {}
    position = 0
    while position < len(rest):
        match = _AUTH_PART.match(rest, position)
        if match is None or match.end() == position:
            raise DeviceAuthError(
                f"Authorization: cannot read {rest[position:][:40]!r}; {expected}"
            )
        parts[match.group(1)] = match.group(2)
        position = match.end()
    missing = [name for name in ("id", "ts", "nonce", "sig") if not parts.get(name)]
    if missing:
        raise DeviceAuthError(f"Authorization: {', '.join(missing)} missing; {expected}")
    if not _DEVICE_ID.match(parts["id"]):
        raise DeviceAuthError("Authorization: id is not a device id")
    if not parts["ts"].isdigit() or len(parts["ts"]) > 12:
        raise DeviceAuthError("Authorization: ts is not unix seconds")
    if not _NONCE.match(parts["nonce"]):
        raise DeviceAuthError("Authorization: nonce is not 16 to 64 lowercase hex digits")
    sig = parts["sig"]
    try:
        signature = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    except (binascii.Error, ValueError):
        raise DeviceAuthError("Authorization: sig is not base64url") from None
    if not 8 <= len(signature) <= 80:
        raise DeviceAuthError("Authorization: sig is not an ECDSA P-256 signature")
    return DeviceAuth(parts["id"], int(parts["ts"]), parts["nonce"], signature)


def verify_request(
    public_key: ec.EllipticCurvePublicKey,
    auth: DeviceAuth,
    method: str,
    target: str,
    body: bytes,
    now: float,
) -> None:
    """Check a request's signature and time (the nonce's freshness is the caller's to check).

    Raises:
        DeviceAuthError: the time is more than :data:`MAX_SKEW` seconds off, or the signature
            does not verify with the device's key.
    """
    if abs(now - auth.timestamp) > MAX_SKEW:
        raise DeviceAuthError(
            f"Authorization: ts {auth.timestamp} is {int(auth.timestamp - now):+d} s from the "
            f"server's clock; accepted within {MAX_SKEW} s (check the device's time)"
        )
    message = signing_string(method, target, auth.timestamp, auth.nonce, body)
    try:
        public_key.verify(auth.signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise DeviceAuthError("Authorization: the signature does not verify") from None
