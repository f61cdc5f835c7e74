"""The SQL form of a device's summary status (``status_expression``) agrees with its one
definition (``device_status``) on SQLite and PostgreSQL, row by row and counted by status.

Each database is created once per module; every hypothesis example inserts its devices,
queries them and rolls the insert back, so a few hundred examples take seconds.
"""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from afield.fleet.db import Database
from afield.fleet.models import Device, DeviceStatus, device_status, status_expression
from tests.postgres import cluster, new_database

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)
OFFLINE_AFTER = 300.0


@pytest.fixture(scope="module")
def sqlite_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    path: Path = tmp_path_factory.mktemp("status") / "fleet.db"
    db = Database(f"sqlite:///{path}")
    db.upgrade()
    yield db
    db.close()


@pytest.fixture(scope="module")
def postgres_db() -> Iterator[Database]:
    with cluster() as admin:
        db = Database(new_database(admin))
        db.upgrade()
        yield db
        db.close()


# --- what a device row may hold -----------------------------------------------------------------

# "now" in any zone: the expression must bind its cutoff in UTC, whatever zone the caller used.
_zones = st.integers(min_value=-12 * 4, max_value=14 * 4).map(
    lambda quarters: datetime.timezone(datetime.timedelta(minutes=15 * quarters))
)
_nows = st.builds(
    lambda at, zone: at.astimezone(zone),
    st.datetimes(
        min_value=datetime.datetime(2000, 1, 1),
        max_value=datetime.datetime(2100, 1, 1),
        timezones=st.just(datetime.UTC),
    ),
    _zones,
)
# Whole seconds as the settings usually give, and any fraction down to below a microsecond.
_offline_afters = st.one_of(
    st.integers(min_value=0, max_value=86_400).map(float),
    st.floats(min_value=0, max_value=86_400, allow_nan=False, allow_infinity=False),
)
_microseconds = st.integers(min_value=-3, max_value=3).map(
    lambda n: datetime.timedelta(microseconds=n)
)


@st.composite
def _last_seen(
    draw: st.DrawFn, now: datetime.datetime, offline_after: float
) -> datetime.datetime | None:
    """Never, a few microseconds either side of the offline boundary, long ago, or recently
    (also a little in the future: a device's clock may run ahead). Stored as the app stores
    it: UTC."""
    cutoff = now.astimezone(datetime.UTC) - datetime.timedelta(seconds=offline_after)
    choice = draw(st.sampled_from(["never", "boundary", "old", "recent"]))
    if choice == "never":
        return None
    if choice == "boundary":
        return cutoff + draw(_microseconds)
    if choice == "old":
        return cutoff - datetime.timedelta(seconds=draw(st.floats(1e-3, 10**7)))
    return cutoff + datetime.timedelta(seconds=draw(st.floats(1e-3, offline_after + 60)))


@st.composite
def _fleets(draw: st.DrawFn) -> tuple[datetime.datetime, float, list[Device]]:
    """A time, an ``offline_after`` and one to eight devices with any status columns."""
    now, offline_after = draw(_nows), draw(_offline_afters)
    devices = []
    for number in range(draw(st.integers(min_value=1, max_value=8))):
        rolled_back = draw(st.booleans())
        devices.append(
            Device(
                id=f"dev-{number}",
                last_seen=draw(_last_seen(now, offline_after)),
                updating=draw(st.booleans()),
                pending_version=draw(st.none() | st.just("1.1.0")),
                health_ok=draw(st.sampled_from([None, True, False])),
                rolled_back_at=NOW if rolled_back else None,
            )
        )
    return now, offline_after, devices


def _sql_statuses(
    db: Database, now: datetime.datetime, offline_after: float, devices: list[Device]
) -> dict[str, str]:
    """Each device's status as the database computes it; the insert is rolled back."""
    with db.sessions() as session:
        session.add_all(devices)
        session.flush()
        rows = session.execute(select(Device.id, status_expression(now, offline_after)))
        statuses = {device_id: status for device_id, status in rows}
        session.rollback()
    return statuses


def _agree(db: Database, fleet: tuple[datetime.datetime, float, list[Device]]) -> None:
    now, offline_after, devices = fleet
    wanted = {d.id: device_status(d, now, offline_after).value for d in devices}
    assert _sql_statuses(db, now, offline_after, devices) == wanted


# --- the property, on both databases ------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleet=_fleets())
def test_the_sql_status_of_every_device_is_device_status_on_sqlite(
    sqlite_db: Database, fleet: tuple[datetime.datetime, float, list[Device]]
) -> None:
    # Threat: a dashboard counts or filters devices by a status the device page contradicts.
    _agree(sqlite_db, fleet)


@pytest.mark.root
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleet=_fleets())
def test_the_sql_status_of_every_device_is_device_status_on_postgresql(
    postgres_db: Database, fleet: tuple[datetime.datetime, float, list[Device]]
) -> None:
    # Threat: the status differs between SQLite and PostgreSQL (zones, NULLs, booleans).
    _agree(postgres_db, fleet)


# --- counting by status ---------------------------------------------------------------------------


def _one_of_each() -> list[Device]:
    """Seven devices: every status at least once, Offline and Degraded twice."""
    recent = NOW - datetime.timedelta(seconds=10)
    stale = NOW - datetime.timedelta(seconds=OFFLINE_AFTER + 1)
    rows: list[dict[str, object]] = [
        {"last_seen": None},
        {"last_seen": stale, "updating": True},
        {"last_seen": recent, "pending_version": "1.1.0"},
        {"last_seen": recent, "health_ok": False},
        {"last_seen": recent, "health_ok": False, "rolled_back_at": NOW},
        {"last_seen": recent, "health_ok": None, "rolled_back_at": NOW},
        {"last_seen": NOW - datetime.timedelta(seconds=OFFLINE_AFTER), "health_ok": True},
    ]
    return [Device(id=f"dev-{n}", **row) for n, row in enumerate(rows)]


def _counted(db: Database) -> dict[str, int]:
    status = status_expression(NOW, OFFLINE_AFTER).label("status")
    with db.sessions() as session:
        session.add_all(_one_of_each())
        session.flush()
        rows = session.execute(select(status, func.count()).group_by(status))
        counts = {name: count for name, count in rows}
        session.rollback()
    return counts


def _expected_counts() -> dict[str, int]:
    counted = Counter(device_status(d, NOW, OFFLINE_AFTER).value for d in _one_of_each())
    assert set(counted) == {s.value for s in DeviceStatus}  # every status is exercised
    return dict(counted)


def test_devices_counted_by_status_in_sql_match_device_status_on_sqlite(
    sqlite_db: Database,
) -> None:
    # Threat: the dashboard's per-status totals disagree with the device list.
    assert _counted(sqlite_db) == _expected_counts()


@pytest.mark.root
def test_devices_counted_by_status_in_sql_match_device_status_on_postgresql(
    postgres_db: Database,
) -> None:
    # Threat: PostgreSQL refuses a GROUP BY on the bound CASE, or counts it differently.
    assert _counted(postgres_db) == _expected_counts()


def test_filtering_by_status_in_sql_selects_the_devices_device_status_names(
    sqlite_db: Database,
) -> None:
    # Threat: a status filter on a large fleet returns devices of another status.
    devices = _one_of_each()
    wanted = sorted(
        d.id for d in devices if device_status(d, NOW, OFFLINE_AFTER) is DeviceStatus.DEGRADED
    )
    with sqlite_db.sessions() as session:
        session.add_all(devices)
        session.flush()
        query = select(Device.id).where(
            status_expression(NOW, OFFLINE_AFTER) == DeviceStatus.DEGRADED.value
        )
        found = sorted(session.scalars(query))
        session.rollback()
    assert found == wanted == ["dev-3", "dev-4"]
