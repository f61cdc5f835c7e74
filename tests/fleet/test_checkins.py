"""Device check-ins written behind: every noted poll lands, in order, without moving
``last_seen`` back, and a write that fails is kept for the next flush."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from afield._sql import as_utc
from afield.fleet.checkins import CheckIns
from afield.fleet.db import Database
from afield.fleet.models import Device

T0 = datetime.datetime(2026, 12, 2, 12, 0, tzinfo=datetime.UTC)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'fleet.db'}")
    database.upgrade()
    with database.transaction() as session:
        session.add_all(Device(id=f"d{i}", labels={}) for i in range(3))
    yield database
    database.close()


def _seen(db: Database) -> dict[str, datetime.datetime | None]:
    with db.sessions() as session:
        return {
            d.id: None if d.last_seen is None else as_utc(d.last_seen)
            for d in session.query(Device)
        }


def test_noted_check_ins_are_written_at_the_flush_latest_wins(db: Database) -> None:
    checkins = CheckIns(db)
    checkins.seen("d0", T0)
    checkins.seen("d0", T0 + datetime.timedelta(seconds=5))
    checkins.seen("d0", T0 + datetime.timedelta(seconds=2))  # out of order: the later stays
    checkins.seen("d1", T0)
    assert _seen(db) == {"d0": None, "d1": None, "d2": None}  # noted, not written yet
    assert checkins.flush() == 2
    assert _seen(db) == {"d0": T0 + datetime.timedelta(seconds=5), "d1": T0, "d2": None}
    assert checkins.flush() == 0 and checkins.written == 2


def test_a_check_in_never_moves_last_seen_back(db: Database) -> None:
    later = T0 + datetime.timedelta(minutes=1)
    with db.transaction() as session:
        device = session.get(Device, "d0")
        assert device is not None
        device.last_seen = later  # a report written meanwhile
    checkins = CheckIns(db)
    checkins.seen("d0", T0)
    checkins.seen("gone", T0)  # a device deleted since its poll: nothing to update
    checkins.flush()
    assert _seen(db)["d0"] == later


def test_a_failed_write_is_kept_for_the_next_flush(db: Database) -> None:
    checkins = CheckIns(db)
    checkins.seen("d2", T0)
    with db.engine.begin() as connection:
        connection.execute(text("ALTER TABLE devices RENAME TO devices_away"))
    assert checkins.flush() == 0  # logged, not raised
    with db.engine.begin() as connection:
        connection.execute(text("ALTER TABLE devices_away RENAME TO devices"))
    assert checkins.flush() == 1
    assert _seen(db)["d2"] == T0


def test_the_thread_flushes_and_stop_writes_the_rest(db: Database) -> None:
    checkins = CheckIns(db, every=0.05)
    checkins.start()
    checkins.seen("d0", T0)
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=10)
    while _seen(db)["d0"] is None and datetime.datetime.now() < deadline:
        pass
    assert _seen(db)["d0"] == T0
    checkins.seen("d1", T0)
    checkins.stop()
    assert _seen(db)["d1"] == T0
