"""The rendezvous server: owners register where their devices find them (TO0), devices ask (TO1).

::

    owner                                    rendezvous server
    TO0.Hello(20) []                  ->     a fresh NonceTO0Sign for the session
                                      <-     TO0.HelloAck(21) [NonceTO0Sign]
    TO0.OwnerSign(22) [TO0d, to1d]    ->     check the nonce, the voucher and the to1d,
                                             store the to1d under the voucher's GUID
                                      <-     TO0.AcceptOwner(23) [WaitSeconds granted]
    device
    TO1.HelloRV(30) [Guid, eASigInfo] ->     the GUID must be registered and not expired
                                      <-     TO1.HelloRVAck(31) [NonceTO1Proof, eBSigInfo]
    TO1.ProveToRV(32) [EAT]           ->     the EAT is the device's, with the nonce and GUID
                                      <-     TO1.RVRedirect(33) [the to1d as the owner sent it]

TO0.OwnerSign is accepted when, in this order: TO0d's NonceTO0Sign is the session's (else
INVALID_MESSAGE_ERROR, 101); the voucher's manufacturer key (OVHeader's OVPubKey) is one of
``trusted_manufacturers`` (else INVALID_OWNERSHIP_VOUCHER, 2); the voucher has at least one
entry, carries the device certificate chain, and verifies: hash chain, entry signatures,
certificate chain hash (else 2); the to1d is signed by the voucher's last owner key (else
INVALID_OWNER_SIGN_BODY, 3, the code the specification names for that signature); its
to1dTo0dHash is SHA-256 or SHA-384 (else MESSAGE_BODY_ERROR, 100) of the TO0d bytes as sent
(else 3: the owner-signed body does not match). Nothing is written before every check passed.

Choices where the specification leaves room:

- A voucher without entries names its manufacturer as owner; it is refused, as go-fdo and
  fido-device-onboard-rs refuse it: TO0 is for owners a voucher was extended to.
- The device key that TO1.ProveToRV must be signed by is the public key of the first
  certificate of OVDevCertChain. The chain hash is in the header, which entry 0's
  manufacturer signature covers, so a trusted manufacturer vouches for it; the chain is not
  validated to a device CA (the rendezvous server trusts manufacturers, not device CAs).
- WaitSeconds granted: the request capped at ``max_wait_seconds``; 0, to which the
  specification gives no meaning (a 0-second registration is useless; go-fdo's owner reads a
  TTL of 0 as "unset"), is granted ``max_wait_seconds``.
- A new registration for a GUID replaces the old one, whichever owner made it: the voucher
  alone says who owns the device.
- An unknown GUID and an expired registration are both RESOURCE_NOT_FOUND (6) with the same
  text, at TO1.HelloRV and again at TO1.ProveToRV.
- eASigInfo must be an ECDSA or RSA type (EPID is not supported: INVALID_MESSAGE_ERROR);
  eBSigInfo repeats its type with empty info, as go-fdo and fido-device-onboard-rs do.
- TO1.ProveToRV: the EAT must verify with the registered device key, and carry NonceTO1Proof
  and the UEID of the GUID of TO1.HelloRV (each INVALID_MESSAGE_ERROR, 101). Tolerance: the
  nonce belongs in the EAT-NONCE claim; an EAT without that claim whose unprotected header
  carries EUPHNonce (-259) is read with that nonce instead.
- TO1.RVRedirect is the stored to1d byte for byte, as the owner signed and sent it.

:class:`SqlRendezvousStore` keeps one table, ``fdo_rv_registrations``: the GUID (text, UUID
form), the to1d as received, the device key (DER SPKI), SHA-256 fingerprints of the owner and
manufacturer keys, the registration and expiry times.

What it leaves to others: purging expired rows on a timer (:meth:`SqlRendezvousStore.purge`),
rate limits and abuse control per owner, TLS (a reverse proxy), the CLI (``afield fdo serve``).
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import DateTime, LargeBinary, String, delete
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.orm import Session as DbSession
from starlette.applications import Starlette

from afield._sql import as_utc
from afield.errors import ProtocolError
from afield.fdo import _check as check
from afield.fdo._errors import ErrorCode, FdoMessageError, VerifyError, VoucherError
from afield.fdo.cbor import decode
from afield.fdo.cose import Sign1
from afield.fdo.eat import EAT_NONCE, EUPH_NONCE, EatPayload
from afield.fdo.messages import (
    Message,
    TO0AcceptOwner,
    TO0Hello,
    TO0HelloAck,
    TO0OwnerSign,
    To1dPayload,
    TO1HelloRV,
    TO1HelloRVAck,
    TO1ProveToRV,
    TO1RVRedirect,
)
from afield.fdo.pki import fingerprint
from afield.fdo.server.binding import BindingSettings, FdoEndpoint, Session, Step
from afield.fdo.server.binding import Protocol as FdoProtocol
from afield.fdo.server.store import SqlStore, StoreError
from afield.fdo.types import Guid, HashAlg, Nonce, PublicKey, PublicKeyType, SigInfo, SigType
from afield.fdo.voucher import Voucher

__all__ = [
    "RendezvousSettings",
    "RendezvousStore",
    "RvRegistration",
    "SqlRendezvousStore",
    "create_rendezvous_app",
    "rendezvous_protocols",
]

_MAX_WAIT_SECONDS = 0xFFFF_FFFF  # WaitSeconds is a uint32
_TO0D_HASHES = (HashAlg.SHA256, HashAlg.SHA384)
_UTC_NOW = partial(datetime.datetime.now, datetime.UTC)
_DEVICE_SIG_TYPES = frozenset(
    {SigType.ES256, SigType.ES384, SigType.RS256, SigType.RS384, SigType.PS256, SigType.PS384}
)


@dataclass(frozen=True)
class RendezvousSettings:
    """Whose vouchers the rendezvous server accepts, for how long, and the binding's limits.

    Args:
        trusted_manufacturers: the manufacturer keys whose vouchers may be registered. An
            empty tuple is refused unless ``accept_any_manufacturer`` is set, since it would
            refuse every voucher.
        accept_any_manufacturer: accept vouchers of every manufacturer (demos and tests; anyone
            can then make a voucher and register it). Excludes ``trusted_manufacturers``.
        max_wait_seconds: the longest registration granted (at most 2**32 - 1 seconds).
        binding: body limit, session lifetime and session count of the HTTP binding.
    """

    trusted_manufacturers: tuple[PublicKey, ...]
    accept_any_manufacturer: bool = False
    max_wait_seconds: int = 7 * 24 * 3600
    binding: BindingSettings = field(default_factory=BindingSettings)

    def __post_init__(self) -> None:
        object.__setattr__(self, "trusted_manufacturers", tuple(self.trusted_manufacturers))
        if not self.trusted_manufacturers and not self.accept_any_manufacturer:
            raise ValueError(
                "trusted_manufacturers is empty, which refuses every voucher: name the "
                "manufacturer keys to trust, or set accept_any_manufacturer"
            )
        if self.trusted_manufacturers and self.accept_any_manufacturer:
            raise ValueError("give trusted_manufacturers or accept_any_manufacturer, not both")
        if not 1 <= self.max_wait_seconds <= _MAX_WAIT_SECONDS:
            raise ValueError(
                f"max_wait_seconds must be 1..{_MAX_WAIT_SECONDS}, got {self.max_wait_seconds}"
            )

    def trusts(self, manufacturer_key: PublicKey) -> bool:
        """Whether vouchers made with ``manufacturer_key`` may be registered."""
        if self.accept_any_manufacturer:
            return True
        return any(manufacturer_key.same_key(key) for key in self.trusted_manufacturers)


# --- storage --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RvRegistration:
    """One device's registration: where its owner is (the to1d) and the key it proves with."""

    guid: Guid
    to1d: bytes
    device_key: PublicKeyType
    owner_key_fingerprint: str
    manufacturer_key_fingerprint: str
    registered_at: datetime.datetime
    expires_at: datetime.datetime


class RendezvousStore(Protocol):
    """What the rendezvous server needs from storage."""

    def put(self, registration: RvRegistration) -> None:
        """Store ``registration``, replacing any registration of its GUID."""
        ...

    def get(self, guid: Guid) -> RvRegistration | None:
        """The registration of ``guid``, expired or not, or None."""
        ...


class _Base(DeclarativeBase):
    pass


class _RegistrationRow(_Base):
    __tablename__ = "fdo_rv_registrations"

    guid: Mapped[str] = mapped_column(String(36), primary_key=True)
    to1d: Mapped[bytes] = mapped_column(LargeBinary)
    device_key: Mapped[bytes] = mapped_column(LargeBinary)
    owner_key_fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    manufacturer_key_fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    registered_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True), index=True)


metadata = _Base.metadata
"""The store's tables (for ``create_all`` and, later, Alembic)."""


def _spki(key: PublicKeyType) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class SqlRendezvousStore(SqlStore):
    """:class:`RendezvousStore` on an SQLAlchemy engine (SQLite by default).

    Args:
        url: an SQLAlchemy database URL, e.g. ``sqlite:////var/lib/afield/rendezvous.db``.
        engine: an existing engine to use instead of ``url``.
    """

    def __init__(self, url: str = "sqlite:///fdo-rendezvous.db", *, engine: Engine | None = None):
        super().__init__(url, metadata, "the rendezvous store", engine=engine)

    def put(self, registration: RvRegistration) -> None:
        """Store ``registration``, replacing any of its GUID (see :class:`RendezvousStore`)."""
        row = _RegistrationRow(
            guid=str(registration.guid),
            to1d=registration.to1d,
            device_key=_spki(registration.device_key),
            owner_key_fingerprint=registration.owner_key_fingerprint,
            manufacturer_key_fingerprint=registration.manufacturer_key_fingerprint,
            registered_at=registration.registered_at,
            expires_at=registration.expires_at,
        )
        try:
            with DbSession(self.engine) as session, session.begin():
                session.merge(row)
        except SQLAlchemyError as e:
            raise StoreError(f"cannot store the registration: {type(e).__name__}") from e

    def get(self, guid: Guid) -> RvRegistration | None:
        """The registration of ``guid``, or None (see :class:`RendezvousStore`)."""
        try:
            with DbSession(self.engine) as session:
                row = session.get(_RegistrationRow, str(guid))
                return None if row is None else self._registration(row)
        except SQLAlchemyError as e:
            raise StoreError(f"cannot read the rendezvous store: {type(e).__name__}") from e

    def purge(self, now: datetime.datetime) -> int:
        """Delete the registrations expired at ``now``; the number deleted."""
        try:
            with DbSession(self.engine) as session, session.begin():
                expired = _RegistrationRow.expires_at <= now.astimezone(datetime.UTC)
                result = session.execute(delete(_RegistrationRow).where(expired))
                return int(getattr(result, "rowcount", 0))
        except SQLAlchemyError as e:
            raise StoreError(f"cannot purge the rendezvous store: {type(e).__name__}") from e

    @staticmethod
    def _registration(row: _RegistrationRow) -> RvRegistration:
        try:
            key = serialization.load_der_public_key(row.device_key)
        except ValueError:
            raise StoreError(f"stored device key of {row.guid} is corrupt") from None
        if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise StoreError(f"stored device key of {row.guid} is neither EC nor RSA")
        return RvRegistration(
            guid=Guid(uuid.UUID(row.guid).bytes),
            to1d=row.to1d,
            device_key=key,
            owner_key_fingerprint=row.owner_key_fingerprint,
            manufacturer_key_fingerprint=row.manufacturer_key_fingerprint,
            registered_at=as_utc(row.registered_at),
            expires_at=as_utc(row.expires_at),
        )


# --- protocol steps -------------------------------------------------------------------------


def _device_key(voucher: Voucher) -> PublicKeyType:
    """The public key of the voucher's device certificate (the first of OVDevCertChain)."""
    if not voucher.cert_chain:
        raise VoucherError(
            "has no device certificate chain: the rendezvous server needs the device key"
        )
    try:
        key = x509.load_der_x509_certificate(voucher.cert_chain[0]).public_key()
    except ValueError:
        raise VoucherError("device certificate 0 is not a DER X.509 certificate") from None
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise VoucherError("device certificate 0 holds neither an EC nor an RSA key")
    return key


def _check_to1d(message: TO0OwnerSign, owner: PublicKey) -> None:
    """The to1d is signed by ``owner`` and names the hash of the TO0d bytes."""
    try:
        message.to1d.verify(owner)
    except VerifyError:
        raise ProtocolError(
            "TO0.OwnerSign[1]: to1d is not signed by the voucher's last owner key",
            code=ErrorCode.INVALID_OWNER_SIGN_BODY,
        ) from None
    to0d_hash = To1dPayload.from_cbor(decode(message.to1d.payload)).to0d_hash
    if to0d_hash.alg not in _TO0D_HASHES:
        raise FdoMessageError(
            f"hash type {to0d_hash.alg.name} is not accepted; use SHA256 or SHA384",
            where="TO0.OwnerSign[1].to1dTo0dHash",
        )
    if not to0d_hash.matches(message.to0d_bytes):
        raise ProtocolError(
            "TO0.OwnerSign[1]: to1dTo0dHash is not the hash of TO0.OwnerSign[0] (TO0d)",
            code=ErrorCode.INVALID_OWNER_SIGN_BODY,
        )


def _eat(token: Sign1) -> EatPayload:
    """The EAT claims of TO1.ProveToRV (nonce from EUPHNonce when the claim is absent)."""
    where = "TO1.ProveToRV.payload"
    claims = dict(check.mapping(decode(token.payload), where))
    header_nonce = token.unprotected.get(EUPH_NONCE)
    if EAT_NONCE not in claims and header_nonce is not None:
        claims[EAT_NONCE] = header_nonce
    return EatPayload.from_cbor(claims, where)


class _Rendezvous:
    """The TO0 and TO1 steps, bound to the store, the settings and the clock."""

    def __init__(
        self,
        store: RendezvousStore,
        settings: RendezvousSettings,
        clock: Callable[[], datetime.datetime],
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock

    def _now(self) -> datetime.datetime:
        """The clock's time in UTC (the store compares times as written)."""
        now = self.clock()
        if now.tzinfo is None:
            raise ValueError("the rendezvous clock must return timezone-aware times")
        return now.astimezone(datetime.UTC)

    def _live(self, guid: Guid) -> RvRegistration:
        """The registration of ``guid`` if it has not expired (both failures look alike)."""
        registration = self.store.get(guid)
        if registration is None or registration.expires_at <= self._now():
            raise ProtocolError(
                f"device {guid} is not registered here (no TO0, or it expired)",
                code=ErrorCode.RESOURCE_NOT_FOUND,
            )
        return registration

    def _granted(self, requested: int) -> int:
        limit = self.settings.max_wait_seconds
        return limit if requested == 0 else min(requested, limit)

    def hello(self, message: Message, session: Session) -> Message:
        if not isinstance(message, TO0Hello):
            raise TypeError(f"TO0.Hello step given {type(message).__name__}")
        nonce = Nonce.random()
        session.state["nonce"] = nonce
        return TO0HelloAck(nonce)

    def _owner_key(self, voucher: Voucher) -> PublicKey:
        """The verified voucher's last owner key, once its manufacturer is trusted."""
        if not self.settings.trusts(voucher.header.manufacturer_key):
            raise VoucherError("the manufacturer key is not trusted by this rendezvous server")
        if not voucher.entries:
            raise VoucherError("has no entries: extend it to its owner before TO0")
        return voucher.verify()

    def _not_a_former_owner(self, voucher: Voucher) -> None:
        """Refuse a registration that would take a live one from its owner.

        A voucher stays valid after its owner extends it to a buyer, so the seller could
        otherwise point the device back to itself. While a registration is live, a new one must
        come from the same owner or from a voucher that passes through that owner's key (a
        later owner); once it has expired, anyone the voucher names may register.
        """
        current = self.store.get(voucher.header.guid)
        if current is None or current.expires_at <= self._now():
            return
        fingerprints = [fingerprint(key) for key in voucher.owner_keys()]
        if current.owner_key_fingerprint in fingerprints:
            return
        raise VoucherError(
            "the device is registered by an owner this voucher does not pass through "
            "(a former owner cannot take back a device it transferred)"
        )

    def owner_sign(self, message: Message, session: Session) -> Message:
        if not isinstance(message, TO0OwnerSign):
            raise TypeError(f"TO0.OwnerSign step given {type(message).__name__}")
        to0d = message.to0d
        if not to0d.nonce.matches(session.state["nonce"]):
            raise VerifyError("TO0.OwnerSign[0]: NonceTO0Sign does not match TO0.HelloAck's")
        voucher = to0d.voucher
        owner = self._owner_key(voucher)
        device_key = _device_key(voucher)
        _check_to1d(message, owner)
        self._not_a_former_owner(voucher)
        granted = self._granted(to0d.wait_seconds)
        now = self._now()
        self.store.put(
            RvRegistration(
                guid=voucher.header.guid,
                to1d=message.to1d.encode(),
                device_key=device_key,
                owner_key_fingerprint=fingerprint(owner),
                manufacturer_key_fingerprint=fingerprint(voucher.header.manufacturer_key),
                registered_at=now,
                expires_at=now + datetime.timedelta(seconds=granted),
            )
        )
        return TO0AcceptOwner(granted)

    def hello_rv(self, message: Message, session: Session) -> Message:
        if not isinstance(message, TO1HelloRV):
            raise TypeError(f"TO1.HelloRV step given {type(message).__name__}")
        sig_type = message.sig_info.type
        if sig_type not in _DEVICE_SIG_TYPES:
            accepted = ", ".join(sorted(t.name for t in _DEVICE_SIG_TYPES))
            raise ProtocolError(
                f"TO1.HelloRV[1]: eASigInfo type {sig_type.name} is not supported; "
                f"use one of {accepted}",
                code=ErrorCode.INVALID_MESSAGE_ERROR,
            )
        self._live(message.guid)
        nonce = Nonce.random()
        session.state.update(guid=message.guid, nonce=nonce)
        return TO1HelloRVAck(nonce, SigInfo(sig_type))

    def prove_to_rv(self, message: Message, session: Session) -> Message:
        if not isinstance(message, TO1ProveToRV):
            raise TypeError(f"TO1.ProveToRV step given {type(message).__name__}")
        guid: Guid = session.state["guid"]
        registration = self._live(guid)
        try:
            message.token.verify(registration.device_key)
        except VerifyError:
            raise VerifyError(
                "TO1.ProveToRV: the EAT is not signed by the registered device's key"
            ) from None
        eat = _eat(message.token)
        if not eat.nonce.matches(session.state["nonce"]):
            raise VerifyError("TO1.ProveToRV: EAT nonce does not match TO1.HelloRVAck's")
        if eat.guid != guid:
            raise VerifyError("TO1.ProveToRV: EAT UEID names another device than TO1.HelloRV")
        return TO1RVRedirect(Sign1.decode(registration.to1d))


def create_rendezvous_app(
    store: RendezvousStore,
    settings: RendezvousSettings,
    *,
    clock: Callable[[], datetime.datetime] = _UTC_NOW,
) -> Starlette:
    """The rendezvous ASGI app: TO0 and TO1 at ``/fdo/101/msg/{20,22,30,32}``, ``/metrics``,
    ``/healthz``.

    Args:
        store: where registrations go.
        settings: trusted manufacturers, the longest registration, binding limits.
        clock: the current time, timezone-aware (tests pass a fake to expire registrations).
    """
    endpoint = FdoEndpoint(rendezvous_protocols(store, settings, clock), settings.binding)
    return endpoint.app()


def rendezvous_protocols(
    store: RendezvousStore,
    settings: RendezvousSettings,
    clock: Callable[[], datetime.datetime] = _UTC_NOW,
) -> list[FdoProtocol]:
    """TO0 and TO1 as protocols of the HTTP binding, for an endpoint that serves more."""
    steps = _Rendezvous(store, settings, clock)
    to0 = FdoProtocol(
        "TO0",
        (Step(TO0Hello.MSG_TYPE, steps.hello), Step(TO0OwnerSign.MSG_TYPE, steps.owner_sign)),
    )
    to1 = FdoProtocol(
        "TO1",
        (Step(TO1HelloRV.MSG_TYPE, steps.hello_rv), Step(TO1ProveToRV.MSG_TYPE, steps.prove_to_rv)),
    )
    return [to0, to1]
