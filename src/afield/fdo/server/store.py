"""Where the manufacturer keeps the vouchers DI produces: an interface and its SQLAlchemy table.

:class:`VoucherStore` is what the DI server needs (add one voucher, read one back, list them);
:class:`SqlVoucherStore` implements it on SQLAlchemy 2 with one table, ``fdo_vouchers``, keyed
by the device GUID (text, UUID form) with the raw CBOR voucher, the device's serial number and
DeviceInfo, and the time it was made. SQLite (a file URL) is the default; any SQLAlchemy URL
works (PostgreSQL at scale).

The table is created with ``metadata.create_all``: Alembic migrations arrive with the fleet
manager, which will own this table's history from then on.

What it leaves to others: exporting vouchers to owners (``afield fdo voucher export``), TO0.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import DateTime, LargeBinary, MetaData, String, Text, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from afield._sql import as_utc, open_engine
from afield.errors import FdoError
from afield.fdo._errors import FdoMessageError
from afield.fdo.types import Guid
from afield.fdo.voucher import Voucher

__all__ = [
    "SqlStore",
    "SqlVoucherStore",
    "StoreError",
    "StoredVoucher",
    "VoucherExistsError",
    "VoucherStore",
    "as_utc",
    "open_engine",
]


class StoreError(FdoError):
    """The voucher store cannot be read or written."""


class VoucherExistsError(StoreError):
    """A voucher for this GUID is already stored; ``guid`` names it."""

    def __init__(self, guid: Guid) -> None:
        super().__init__(f"a voucher for device {guid} is already stored")
        self.guid = guid


@dataclass(frozen=True)
class StoredVoucher:
    """A voucher as the manufacturer keeps it."""

    guid: Guid
    voucher: Voucher
    serial_number: str
    device_info: str
    created: datetime.datetime


class VoucherStore(Protocol):
    """What the DI server needs from storage."""

    def add(self, voucher: Voucher, *, serial_number: str) -> StoredVoucher:
        """Store a new voucher; raises :class:`VoucherExistsError` if its GUID is taken."""
        ...

    def get(self, guid: Guid) -> StoredVoucher | None:
        """The voucher of ``guid``, or None."""
        ...

    def guids(self) -> list[Guid]:
        """Every stored GUID, oldest first."""
        ...


class _Base(DeclarativeBase):
    pass


class _VoucherRow(_Base):
    __tablename__ = "fdo_vouchers"

    guid: Mapped[str] = mapped_column(String(36), primary_key=True)
    serial_number: Mapped[str] = mapped_column(String(255), index=True)
    device_info: Mapped[str] = mapped_column(Text)
    voucher: Mapped[bytes] = mapped_column(LargeBinary)
    created: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True), index=True)


metadata = _Base.metadata
"""The store's tables (for ``create_all`` and, later, Alembic)."""


class SqlStore:
    """An engine with a store's tables created (``metadata.create_all``); every FDO store is one.

    Args:
        url: an SQLAlchemy database URL (:func:`open_engine`).
        metadata: the store's tables.
        what: the store's name in error messages ("the voucher store").
        engine: an existing engine to use instead of ``url``.
    """

    def __init__(
        self, url: str, metadata: MetaData, what: str, *, engine: Engine | None = None
    ) -> None:
        try:
            self.engine = engine if engine is not None else open_engine(url)
            metadata.create_all(self.engine)
        except SQLAlchemyError as e:
            raise StoreError(f"cannot open {what}: {type(e).__name__}") from e

    def close(self) -> None:
        """Release the engine's connections."""
        self.engine.dispose()


class SqlVoucherStore(SqlStore):
    """:class:`VoucherStore` on an SQLAlchemy engine (SQLite by default).

    Args:
        url: an SQLAlchemy database URL, e.g. ``sqlite:////var/lib/afield/fdo.db``.
        engine: an existing engine to use instead of ``url``.
    """

    def __init__(self, url: str = "sqlite:///fdo-manufacturer.db", *, engine: Engine | None = None):
        super().__init__(url, metadata, "the voucher store", engine=engine)

    def add(self, voucher: Voucher, *, serial_number: str) -> StoredVoucher:
        """Store a new voucher (see :class:`VoucherStore`)."""
        header = voucher.header
        created = datetime.datetime.now(datetime.UTC)
        row = _VoucherRow(
            guid=str(header.guid),
            serial_number=serial_number,
            device_info=header.device_info,
            voucher=voucher.encode(),
            created=created,
        )
        try:
            with Session(self.engine) as session, session.begin():
                session.add(row)
        except IntegrityError:
            raise VoucherExistsError(header.guid) from None
        except SQLAlchemyError as e:
            raise StoreError(f"cannot store the voucher: {type(e).__name__}") from e
        return StoredVoucher(header.guid, voucher, serial_number, header.device_info, created)

    def get(self, guid: Guid) -> StoredVoucher | None:
        """The voucher of ``guid``, or None (see :class:`VoucherStore`)."""
        try:
            with Session(self.engine) as session:
                row = session.get(_VoucherRow, str(guid))
                return None if row is None else self._stored(row)
        except SQLAlchemyError as e:
            raise StoreError(f"cannot read the voucher store: {type(e).__name__}") from e

    def guids(self) -> list[Guid]:
        """Every stored GUID, oldest first."""
        return [stored.guid for stored in self.vouchers()]

    def vouchers(self) -> list[StoredVoucher]:
        """Every stored voucher, oldest first."""
        try:
            with Session(self.engine) as session:
                rows = session.scalars(select(_VoucherRow).order_by(_VoucherRow.created)).all()
                return [self._stored(row) for row in rows]
        except SQLAlchemyError as e:
            raise StoreError(f"cannot read the voucher store: {type(e).__name__}") from e

    @staticmethod
    def _stored(row: _VoucherRow) -> StoredVoucher:
        try:
            voucher = Voucher.load(row.voucher)
        except FdoMessageError as e:
            raise StoreError(f"stored voucher {row.guid} is corrupt: {e}") from None
        return StoredVoucher(
            voucher.header.guid, voucher, row.serial_number, row.device_info, as_utc(row.created)
        )
