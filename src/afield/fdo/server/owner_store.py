"""Where an owner keeps the vouchers it owns: an interface and its SQLAlchemy table.

:class:`OwnerStore` is what the owner's TO2 server and the owner's TO0 registration need;
:class:`SqlOwnerStore` implements it on SQLAlchemy 2 with one table, ``fdo_owner_vouchers``,
keyed by the device GUID (text, UUID form)::

    guid                 the voucher's GUID (primary key)
    voucher              the raw CBOR voucher
    imported_at          when it was added
    registered_until     until when a rendezvous server holds its TO0 registration (or null)
    onboarded_at         when the device last finished TO2 with it (or null)
    replacement_guid     the GUID TO2 gave the device (null: not onboarded, or credential reuse)
    replacement_voucher  the voucher TO2 made for that GUID (raw CBOR, or null)
    previous_guid        on a replacement's own row: the GUID it replaced
    device_summary       JSON: what the device said in its service info (devmod fields, the
                         keys it sent and the keys of its replies); never the values

A voucher is only stored when it verifies and its last owner key is this owner's (the store is
given that key): a voucher for someone else cannot be imported by mistake.

The replacement voucher of an onboarding gets a row of its own under the new GUID (with
``previous_guid`` set), in the same transaction that marks the old row onboarded. The device
can then onboard again with its new credential, and a device that lost power before it kept
its new credential still finds the old voucher: old rows are kept, not rewritten (the owner
server accepts TO2 on either), so a device's history stays readable. Only rows not replaced
are due for TO0 registration. A replacement that keeps the GUID (TO2 without credential reuse
but with the same GUID, which afield's owner never makes) replaces the row's voucher instead.

Times are stored in UTC; SQLite keeps no time zone, so what comes back naive is read as UTC.
The table is created with ``metadata.create_all``; Alembic migrations arrive with the fleet
manager.

What it leaves to others: TO0 itself (which calls :meth:`OwnerStore.set_registration`), the
TO2 protocol (:mod:`afield.fdo.server.owner`), exporting or deleting vouchers.
"""

from __future__ import annotations

import builtins
import datetime
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import DateTime, LargeBinary, String, Text, or_, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from afield._sql import as_utc
from afield.fdo._errors import FdoMessageError
from afield.fdo.server.store import SqlStore, StoreError, VoucherExistsError
from afield.fdo.types import Guid, PublicKey, PublicKeyType
from afield.fdo.voucher import Voucher

__all__ = ["OwnedVoucher", "OwnerStore", "SqlOwnerStore", "UnknownVoucherError", "metadata"]


class UnknownVoucherError(StoreError):
    """No voucher is stored for this GUID; ``guid`` names it."""

    def __init__(self, guid: Guid) -> None:
        super().__init__(f"no voucher for device {guid} is stored")
        self.guid = guid


@dataclass(frozen=True)
class OwnedVoucher:
    """A voucher as the owner keeps it (see the module docstring for each field)."""

    guid: Guid
    voucher: Voucher
    imported_at: datetime.datetime
    registered_until: datetime.datetime | None = None
    onboarded_at: datetime.datetime | None = None
    replacement_guid: Guid | None = None
    replacement_voucher: Voucher | None = None
    previous_guid: Guid | None = None
    device_summary: dict[str, Any] | None = None


class OwnerStore(Protocol):
    """What the owner's servers need from storage."""

    def add(self, voucher: Voucher, *, replace: bool = False) -> OwnedVoucher:
        """Store a voucher this owner owns; see :meth:`SqlOwnerStore.add`."""
        ...

    def get(self, guid: Guid) -> OwnedVoucher | None:
        """The voucher of ``guid``, or None."""
        ...

    def list(self) -> builtins.list[OwnedVoucher]:
        """Every stored voucher, oldest first."""
        ...

    def set_registration(self, guid: Guid, until: datetime.datetime | None) -> None:
        """Record until when ``guid`` is registered with a rendezvous server (None: not)."""
        ...

    def due_for_registration(self, before: datetime.datetime) -> builtins.list[OwnedVoucher]:
        """Vouchers not replaced whose registration is missing or ends before ``before``."""
        ...

    def record_onboarding(
        self, guid: Guid, replacement: Voucher | None, device_summary: Mapping[str, Any]
    ) -> None:
        """Record a finished TO2 for ``guid`` atomically; see :meth:`SqlOwnerStore`."""
        ...


class _Base(DeclarativeBase):
    pass


class _OwnedRow(_Base):
    __tablename__ = "fdo_owner_vouchers"

    guid: Mapped[str] = mapped_column(String(36), primary_key=True)
    voucher: Mapped[bytes] = mapped_column(LargeBinary)
    imported_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True), index=True)
    registered_until: Mapped[datetime.datetime | None] = mapped_column(
        DateTime(timezone=True), index=True
    )
    onboarded_at: Mapped[datetime.datetime | None] = mapped_column(DateTime(timezone=True))
    replacement_guid: Mapped[str | None] = mapped_column(String(36), index=True)
    replacement_voucher: Mapped[bytes | None] = mapped_column(LargeBinary)
    previous_guid: Mapped[str | None] = mapped_column(String(36), index=True)
    device_summary: Mapped[str | None] = mapped_column(Text)


metadata = _Base.metadata
"""The store's tables (for ``create_all`` and, later, Alembic)."""


def _aware(value: datetime.datetime, name: str) -> datetime.datetime:
    if value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware (give tzinfo=datetime.UTC)")
    return value.astimezone(datetime.UTC)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _load(raw: bytes, guid: str) -> Voucher:
    try:
        return Voucher.load(raw)
    except FdoMessageError as e:
        raise StoreError(f"stored voucher {guid} is corrupt: {e}") from None


def _guid(text: str) -> Guid:
    return Guid(uuid.UUID(text).bytes)


class SqlOwnerStore(SqlStore):
    """:class:`OwnerStore` on an SQLAlchemy engine (SQLite by default).

    Args:
        url: an SQLAlchemy database URL, e.g. ``sqlite:////var/lib/afield/fdo-owner.db``.
        owner_key: this owner's public key: every voucher stored must end with it.
        engine: an existing engine to use instead of ``url``.
    """

    def __init__(
        self,
        url: str = "sqlite:///fdo-owner.db",
        *,
        owner_key: PublicKey | PublicKeyType,
        engine: Engine | None = None,
    ) -> None:
        self.owner_key = owner_key
        super().__init__(url, metadata, "the owner's voucher store", engine=engine)

    def add(self, voucher: Voucher, *, replace: bool = False) -> OwnedVoucher:
        """Store a voucher this owner owns.

        ``replace`` overwrites a stored voucher of the same GUID as a fresh import: its
        registration, onboarding and replacement fields are cleared.

        Raises:
            VoucherError: the voucher does not verify, or its last owner key is not this
                owner's (the message names the entry).
            VoucherExistsError: a voucher for this GUID is stored and ``replace`` is False.
            StoreError: the database cannot be written.
        """
        voucher.verify(owner=self.owner_key)
        guid, imported_at = voucher.header.guid, _now()
        row = _OwnedRow(
            guid=str(guid),
            voucher=voucher.encode(),
            imported_at=imported_at,
            # Every field is given, so that ``merge`` clears what an earlier import left.
            registered_until=None,
            onboarded_at=None,
            replacement_guid=None,
            replacement_voucher=None,
            previous_guid=None,
            device_summary=None,
        )
        try:
            with Session(self.engine) as session, session.begin():
                if replace:
                    session.merge(row)
                else:
                    session.add(row)
        except IntegrityError:
            raise VoucherExistsError(guid) from None
        except SQLAlchemyError as e:
            raise StoreError(f"cannot store the voucher: {type(e).__name__}") from e
        return OwnedVoucher(guid, voucher, imported_at)

    def get(self, guid: Guid) -> OwnedVoucher | None:
        """The voucher of ``guid``, or None."""
        try:
            with Session(self.engine) as session:
                row = session.get(_OwnedRow, str(guid))
                return None if row is None else self._owned(row)
        except SQLAlchemyError as e:
            raise StoreError(f"cannot read the owner's voucher store: {type(e).__name__}") from e

    def list(self) -> builtins.list[OwnedVoucher]:
        """Every stored voucher, oldest first."""
        return self._select(select(_OwnedRow).order_by(_OwnedRow.imported_at, _OwnedRow.guid))

    def due_for_registration(self, before: datetime.datetime) -> builtins.list[OwnedVoucher]:
        """Vouchers not replaced by TO2 whose registration is missing or ends before
        ``before`` (timezone-aware), soonest first."""
        limit = _aware(before, "before")
        query = (
            select(_OwnedRow)
            .where(_OwnedRow.replacement_guid.is_(None))
            .where(or_(_OwnedRow.registered_until.is_(None), _OwnedRow.registered_until < limit))
            .order_by(_OwnedRow.registered_until, _OwnedRow.imported_at)
        )
        return self._select(query)

    def set_registration(self, guid: Guid, until: datetime.datetime | None) -> None:
        """Record until when ``guid`` is registered (timezone-aware; None: not registered).

        Raises:
            UnknownVoucherError: no voucher is stored for ``guid``.
        """
        value = None if until is None else _aware(until, "until")
        try:
            with Session(self.engine) as session, session.begin():
                row = session.get(_OwnedRow, str(guid))
                if row is None:
                    raise UnknownVoucherError(guid)
                row.registered_until = value
        except SQLAlchemyError as e:
            raise StoreError(f"cannot record the registration: {type(e).__name__}") from e

    def record_onboarding(
        self, guid: Guid, replacement: Voucher | None, device_summary: Mapping[str, Any]
    ) -> None:
        """Record a finished TO2 for ``guid``, all in one transaction.

        The row of ``guid`` gets ``onboarded_at``, the summary and, unless the credential was
        reused (``replacement`` None), the replacement's GUID and voucher; the replacement also
        gets its own row (or replaces this row's voucher when TO2 kept the GUID).

        Raises:
            UnknownVoucherError: no voucher is stored for ``guid``.
            VoucherError: the replacement does not verify or does not end with this owner's key.
            StoreError: the replacement's GUID is taken by another row, or the database fails;
                nothing is written.
        """
        if replacement is not None:
            replacement.verify(owner=self.owner_key)
        summary = json.dumps(dict(device_summary), sort_keys=True)
        now = _now()
        try:
            with Session(self.engine) as session, session.begin():
                row = session.get(_OwnedRow, str(guid))
                if row is None:
                    raise UnknownVoucherError(guid)
                row.onboarded_at, row.device_summary = now, summary
                if replacement is not None:
                    self._replace(session, row, replacement, now)
        except IntegrityError:
            raise StoreError(
                f"the replacement GUID of device {guid} is already stored; nothing was recorded"
            ) from None
        except SQLAlchemyError as e:
            raise StoreError(f"cannot record the onboarding: {type(e).__name__}") from e

    @staticmethod
    def _replace(
        session: Session, row: _OwnedRow, replacement: Voucher, now: datetime.datetime
    ) -> None:
        new_guid, raw = str(replacement.header.guid), replacement.encode()
        if new_guid == row.guid:
            # Same GUID, new voucher (another key or RendezvousInfo): it needs a new TO0.
            row.voucher, row.registered_until = raw, None
            return
        row.replacement_guid, row.replacement_voucher = new_guid, raw
        session.add(_OwnedRow(guid=new_guid, voucher=raw, imported_at=now, previous_guid=row.guid))
        session.flush()

    def _select(self, query: Any) -> builtins.list[OwnedVoucher]:
        try:
            with Session(self.engine) as session:
                return [self._owned(row) for row in session.scalars(query).all()]
        except SQLAlchemyError as e:
            raise StoreError(f"cannot read the owner's voucher store: {type(e).__name__}") from e

    @staticmethod
    def _owned(row: _OwnedRow) -> OwnedVoucher:
        replacement = row.replacement_voucher
        # The GUID is the row's key: a voucher stored under another device's GUID (a tampered
        # database) shows as such, and the TO2 server refuses it.
        return OwnedVoucher(
            guid=_guid(row.guid),
            voucher=_load(row.voucher, row.guid),
            imported_at=as_utc(row.imported_at),
            registered_until=None if row.registered_until is None else as_utc(row.registered_until),
            onboarded_at=None if row.onboarded_at is None else as_utc(row.onboarded_at),
            replacement_guid=None if row.replacement_guid is None else _guid(row.replacement_guid),
            replacement_voucher=None if replacement is None else _load(replacement, row.guid),
            previous_guid=None if row.previous_guid is None else _guid(row.previous_guid),
            device_summary=None if row.device_summary is None else json.loads(row.device_summary),
        )
