"""The fleet database: migrations give exactly the models' schema (SQLite and PostgreSQL), the
summary status of a device by its one definition, and the conversions to the rollout engine."""

from __future__ import annotations

import datetime
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, inspect, text
from sqlalchemy.exc import IntegrityError

from afield.fleet.db import Database, DatabaseError, alembic_config
from afield.fleet.models import (
    Application,
    Device,
    DeviceStatus,
    device_status,
    device_view,
    metadata,
    state_from_json,
    state_to_json,
)
from afield.fleet.rollout import Cause, Counters, Phase, RolloutState, Status
from tests.postgres import cluster, new_database

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)
OFFLINE_AFTER = 300.0
HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


def _schema_differences(db: Database) -> list[object]:
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'fleet.db'}")
    yield db
    db.close()


def test_upgrade_on_an_empty_sqlite_database_gives_the_models_schema(sqlite_db: Database) -> None:
    assert sqlite_db.revision() is None
    sqlite_db.upgrade()
    assert sqlite_db.revision() == HEAD
    assert _schema_differences(sqlite_db) == []


def test_upgrade_twice_is_a_no_op(sqlite_db: Database) -> None:
    sqlite_db.upgrade()
    sqlite_db.upgrade()
    assert sqlite_db.revision() == HEAD


def test_upgrading_a_database_with_devices_keeps_them(sqlite_db: Database) -> None:
    sqlite_db.upgrade("0001")
    with sqlite_db.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO devices (id, name, labels, updating, phase, created) "
                "VALUES ('dev-1', 'one', '{\"site\": \"berlin\"}', 0, 'idle', "
                "'2026-01-01 00:00:00')"
            )
        )
    sqlite_db.upgrade()
    with sqlite_db.sessions() as session:
        device = session.get(Device, "dev-1")
        assert device is not None
        assert device.labels == {"site": "berlin"}
        assert device.report == {}
        assert device.desired_release_id is None
    assert _schema_differences(sqlite_db) == []


def _device_at_0002(db: Database) -> None:
    """A device as revision 0002 knows it: enrolled, reporting, told a release."""
    with db.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO devices (id, name, labels, updating, phase, created, guid, "
                "public_key, report) VALUES ('dev-1', 'one', '{\"site\": \"berlin\"}', "
                "false, 'idle', '2026-01-01 00:00:00', "
                "'3f2c6d0e-8f1a-4a57-9d35-0d7c1b3a9e42', 'PEM', '{\"image\": \"gateway\"}')"
            )
        )


def _upgraded_from_0002_keeps_devices(db: Database) -> None:
    db.upgrade("0002")
    _device_at_0002(db)
    db.upgrade()
    assert db.revision() == HEAD
    with db.transaction() as session:
        device = session.get(Device, "dev-1")
        assert device is not None
        assert (device.labels, device.report) == ({"site": "berlin"}, {"image": "gateway"})
        assert device.applications is None  # no application yet: nothing to backfill
        session.add(
            Application(
                device_id="dev-1",
                name="web",
                manifests="kind: Pod",
                images=[],
                digest="0" * 64,
                created=NOW,
                updated=NOW,
                updated_by="admin:ops",
            )
        )
    assert _schema_differences(db) == []
    # An application has exactly one owner: a fleet or a device.
    for owners in ({}, {"fleet_id": None, "device_id": None}):
        with pytest.raises(IntegrityError), db.transaction() as session:
            session.add(
                Application(
                    **owners,
                    name="orphan",
                    manifests="kind: Pod",
                    images=[],
                    digest="0" * 64,
                    created=NOW,
                    updated=NOW,
                    updated_by="admin:ops",
                )
            )
    # And back down: the table and the column go, the devices stay.
    with db.engine.begin() as connection:
        command.downgrade(alembic_config(connection), "0002")
    schema = inspect(db.engine)
    assert "applications" not in schema.get_table_names()
    assert "applications" not in {c["name"] for c in schema.get_columns("devices")}
    assert db.revision() == "0002"


def test_upgrading_from_0002_adds_applications_and_keeps_devices(sqlite_db: Database) -> None:
    _upgraded_from_0002_keeps_devices(sqlite_db)


@pytest.mark.root
def test_upgrading_from_0002_on_postgresql_adds_applications_and_keeps_devices() -> None:
    with cluster() as admin:
        db = Database(new_database(admin))
        try:
            _upgraded_from_0002_keeps_devices(db)
        finally:
            db.close()


def test_sqlite_database_runs_in_wal_mode(sqlite_db: Database) -> None:
    sqlite_db.upgrade()
    with sqlite_db.engine.connect() as connection:
        mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
    assert mode == "wal"


def test_a_url_no_driver_opens_is_a_user_error_naming_it() -> None:
    with pytest.raises(DatabaseError) as caught:
        Database("nosuchdb://somewhere/fleet")
    assert caught.value.user_error
    assert "nosuchdb://somewhere/fleet" in str(caught.value)


@pytest.mark.root
def test_upgrade_on_an_empty_postgresql_database_gives_the_models_schema() -> None:
    with cluster() as admin:
        db = Database(new_database(admin))
        try:
            db.upgrade()
            db.upgrade()
            assert db.revision() == HEAD
            assert _schema_differences(db) == []
        finally:
            db.close()


# --- device_status: one test per status, with a fixed now -----------------------------------


def _device(**fields: object) -> Device:
    base: dict[str, object] = {
        "id": "dev-1",
        "labels": {},
        "last_seen": NOW - datetime.timedelta(seconds=10),
        "updating": False,
        "health_ok": True,
    }
    base.update(fields)
    return Device(**base)


def _status(device: Device) -> DeviceStatus:
    return device_status(device, NOW, OFFLINE_AFTER)


def test_a_device_that_checked_in_recently_and_is_healthy_is_online() -> None:
    assert _status(_device()) is DeviceStatus.ONLINE


def test_a_device_never_seen_is_offline() -> None:
    assert _status(_device(last_seen=None)) is DeviceStatus.OFFLINE


def test_a_device_silent_past_offline_after_is_offline_even_while_updating() -> None:
    stale = NOW - datetime.timedelta(seconds=OFFLINE_AFTER + 1)
    assert _status(_device(last_seen=stale, updating=True)) is DeviceStatus.OFFLINE
    edge = NOW - datetime.timedelta(seconds=OFFLINE_AFTER)
    assert _status(_device(last_seen=edge)) is DeviceStatus.ONLINE


def test_a_device_reporting_an_update_or_a_staged_deployment_is_updating() -> None:
    assert _status(_device(updating=True)) is DeviceStatus.UPDATING
    assert _status(_device(pending_version="1.1")) is DeviceStatus.UPDATING


def test_a_device_whose_health_checks_failed_is_degraded_even_after_a_rollback() -> None:
    assert _status(_device(health_ok=False)) is DeviceStatus.DEGRADED
    assert _status(_device(health_ok=False, rolled_back_at=NOW)) is DeviceStatus.DEGRADED


def test_a_healthy_device_that_fell_back_is_rolled_back() -> None:
    assert _status(_device(rolled_back_at=NOW)) is DeviceStatus.ROLLED_BACK
    assert _status(_device(rolled_back_at=NOW, health_ok=None)) is DeviceStatus.ROLLED_BACK


def test_a_naive_last_seen_from_sqlite_is_read_as_utc() -> None:
    naive = (NOW - datetime.timedelta(seconds=10)).replace(tzinfo=None)
    assert _status(_device(last_seen=naive)) is DeviceStatus.ONLINE


# --- conversions to the rollout engine --------------------------------------------------------


def test_device_view_converts_times_to_epoch_seconds_for_its_rollout_only() -> None:
    booted = NOW - datetime.timedelta(minutes=1)
    device = _device(
        labels={"site": "berlin"},
        current_version="1.0",
        rollout_id=7,
        phase="booted",
        batch=1,
        assigned_at=booted - datetime.timedelta(minutes=5),
        booted_at=booted,
    )
    view = device_view(device, rollout_id=7, online=True)
    assert view.phase is Phase.BOOTED and view.batch == 1
    assert view.booted_at == booted.timestamp()
    assert view.last_seen == (NOW - datetime.timedelta(seconds=10)).timestamp()
    other = device_view(device, rollout_id=8, online=True)
    assert other.phase is Phase.IDLE and other.batch is None and other.booted_at is None


def test_rollout_state_survives_its_json_column() -> None:
    state = RolloutState(
        status=Status.PAUSED,
        batch=2,
        reason="1 of 3 devices failed",
        cause=Cause.FAILURES,
        batch_started_at=1767268800.5,
        failures_accepted=1,
        gate_waived=True,
        counters=Counters(selected=3, assigned=3, rolled_back=1, succeeded=2),
    )
    assert state_from_json(state_to_json(state)) == state
    assert state_from_json(state_to_json(RolloutState())) == RolloutState()


def test_a_busy_server_keeps_its_database_connections(sqlite_db: Database) -> None:
    # With SQLAlchemy's default pool (5 kept, 10 more closed when returned) a server busy in
    # 15 threads opened a connection for most requests: a new backend process on PostgreSQL.
    connects = 0

    @event.listens_for(sqlite_db.engine, "connect")
    def counted(*_: object) -> None:
        nonlocal connects
        connects += 1

    start = threading.Barrier(15)

    def busy() -> None:
        start.wait()
        for _ in range(40):
            with sqlite_db.engine.connect() as connection:
                connection.execute(text("SELECT 1"))

    threads = [threading.Thread(target=busy) for _ in range(15)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 1 <= connects <= 15
