"""The rollout runner: feed device states to the rollout engine and carry out what it decides.

:meth:`RolloutRunner.step_all` steps every live rollout: the newest rollout of each fleet, unless
it was aborted. Running rollouts are stepped on every tick (:attr:`RolloutRunner.interval`);
paused, waiting and completed ones (which still record outcomes, and a completed one still
updates devices that join late) on every tenth tick, or at once when a device report rings the
doorbell; after each tick the runner rests as long as the tick took, so a busy rollout over a
large fleet never takes more than half the server's time. One step of a rollout:

1. read the rollout (state, ``revision``), its fleet's policy and selector, and every device's
   engine view (:func:`afield.fleet.models.device_view`; online means checked in within
   ``offline_after``), in one short read;
2. run :func:`afield.fleet.rollout.step` (pure);
3. write in one transaction, starting with the rollout row *only if its revision is still the
   one read*: an operator who paused meanwhile wins and the step is simply redone next tick.
   Devices told to update become ``pending`` in the batch with the rollout's release as their
   desired release; timed-out and succeeded devices get those phases, each only if the device
   is still in the phase the step saw (a report that arrived meanwhile wins);
4. record what changed in the audit trail (status, batch, devices told to update), and wake the
   long-polls of the devices told to update.

Reading and writing in separate transactions keeps SQLite's single writer free while the
engine thinks, and lets several API processes on PostgreSQL run runners side by side: the
revision check makes each step happen once.

:func:`sync_releases` registers the releases of the served repository's TUF targets that the
database does not know yet (run at start and on every tick when ``targets.json`` changed).

What it leaves to others: the engine's rules (:mod:`afield.fleet.rollout`), what reports do to
phases (:mod:`afield.fleet.reports`), the HTTP side (:mod:`afield.fleet.api`).
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from afield._sql import as_utc
from afield.errors import AfieldError
from afield.fleet.api.deps import record
from afield.fleet.checkins import CheckIns
from afield.fleet.db import Database
from afield.fleet.models import (
    Device,
    Release,
    Rollout,
    device_view,
    state_from_json,
    state_to_json,
)
from afield.fleet.notify import Doorbell, Notifier
from afield.fleet.policy import RolloutPolicy, Selector
from afield.fleet.rollout import Phase, RolloutState, Status, step

__all__ = ["RolloutRunner", "StepOutcome", "sync_releases"]

log = logging.getLogger("afield.fleet.runner")
_CHUNK = 500  # ids per UPDATE ... WHERE id IN (...)
_SHOWN = 20  # device ids an assignment event lists
_SLOW_EVERY = 10  # ticks between steps of rollouts that are not running
_DEVICE_COLUMNS = (
    Device.id,
    Device.labels,
    Device.last_seen,
    Device.current_version,
    Device.rollout_id,
    Device.phase,
    Device.batch,
    Device.assigned_at,
    Device.booted_at,
)


@dataclass(frozen=True)
class StepOutcome:
    """What one step of one rollout did (``written`` False: its revision moved, redo later)."""

    rollout_id: int
    status: str
    assigned: tuple[str, ...]
    timed_out: tuple[str, ...]
    succeeded: tuple[str, ...]
    written: bool


class RolloutRunner:
    """Steps live rollouts on a timer in a thread, or when asked (:meth:`step_all`)."""

    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], datetime.datetime],
        offline_after: float,
        notifier: Notifier | None = None,
        doorbell: Doorbell | None = None,
        checkins: CheckIns | None = None,
        interval: float = 2.0,
        repo_dir: Path | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.offline_after = offline_after
        self.notifier = notifier or Notifier()
        self.doorbell = doorbell or Doorbell()
        self.checkins = checkins
        self.interval = interval
        self.repo_dir = repo_dir
        self._targets_mtime: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.steps = 0  # rollout steps written, for /metrics

    # -- the thread ----------------------------------------------------------------------------

    def start(self) -> None:
        """Step in a daemon thread until :meth:`stop`."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="rollout-runner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (after the step in progress)."""
        self._stop.set()
        self.doorbell.ring()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _loop(self) -> None:
        tick = 0
        while not self._stop.is_set():
            rung = self.doorbell.wait(self.interval)
            if self._stop.is_set():
                return
            tick += 1
            started = time.monotonic()
            try:
                self.sync()
                self.step_all(everything=rung or tick % _SLOW_EVERY == 0)
            except (AfieldError, SQLAlchemyError) as e:  # keep running: the next tick retries
                log.warning("rollout step failed: %s: %s", type(e).__name__, e)
            # During a rollout every report rings the doorbell, faster than a step over a
            # large fleet takes: rest as long as the tick took (rings meanwhile are kept), so
            # the runner never takes more than half of the server's time from the devices.
            if self._stop.wait(time.monotonic() - started):
                return

    # -- one pass ------------------------------------------------------------------------------

    def sync(self) -> int:
        """Register new releases of the served repository; how many were added."""
        if self.repo_dir is None:
            return 0
        targets = self.repo_dir / "tuf" / "targets.json"
        try:
            mtime = targets.stat().st_mtime
        except OSError:
            return 0
        if mtime == self._targets_mtime:
            return 0
        added = sync_releases(self.db, self.repo_dir, self.clock())
        self._targets_mtime = mtime
        return added

    def step_all(self, *, everything: bool = True) -> list[StepOutcome]:
        """Step the live rollouts (only running ones unless ``everything``)."""
        newest = select(func.max(Rollout.id)).group_by(Rollout.fleet_id)
        query = select(Rollout.id, Rollout.status).where(
            Rollout.id.in_(newest), Rollout.status != Status.ABORTED.value
        )
        with self.db.sessions() as session:
            live = session.execute(query).all()
        outcomes = []
        for rollout_id, status in live:
            if everything or status == Status.RUNNING.value:
                outcome = self.step_rollout(rollout_id)
                if outcome is not None:
                    outcomes.append(outcome)
        return outcomes

    def step_rollout(self, rollout_id: int) -> StepOutcome | None:
        """One engine step of one rollout (see the module docstring); None if it is gone."""
        if self.checkins is not None:
            self.checkins.flush()  # the devices' last check-ins decide who is online
        now = self.clock()
        with self.db.sessions() as session:
            rollout = session.get(Rollout, rollout_id)
            if rollout is None:
                return None
            revision, release = rollout.revision, rollout.release
            policy = RolloutPolicy.parse(rollout.fleet.policy)
            selector = Selector.parse(rollout.fleet.selector)
            before = state_from_json(rollout.state)
            rows = session.execute(select(*_DEVICE_COLUMNS)).all()
        seen_before = now - datetime.timedelta(seconds=self.offline_after)
        views, phases = [], {}
        for row in rows:
            online = row.last_seen is not None and as_utc(row.last_seen) >= seen_before
            views.append(device_view(row, rollout_id=rollout_id, online=online))
            phases[row.id] = row.phase if row.rollout_id == rollout_id else Phase.IDLE.value
        result = step(policy, selector, release.version, views, before, now.timestamp())
        after = result.state
        with self.db.transaction() as session:
            written = session.execute(
                update(Rollout)
                .where(Rollout.id == rollout_id, Rollout.revision == revision)
                .values(
                    state=state_to_json(after),
                    status=after.status.value,
                    revision=revision + 1,
                    updated=now,
                )
                .execution_options(synchronize_session=False)
            )
            if getattr(written, "rowcount", 0) != 1:
                session.rollback()
                return StepOutcome(rollout_id, before.status.value, (), (), (), written=False)
            _assign(session, result.assign, rollout_id, after.batch, release.id, now)
            _settle(session, result.timed_out, rollout_id, phases, Phase.TIMED_OUT)
            _settle(session, result.succeeded, rollout_id, phases, Phase.SUCCEEDED)
            _record_changes(session, rollout_id, before, after, result.assign, now)
        self.steps += 1
        if result.assign:
            self.notifier.wake(result.assign)
        return StepOutcome(
            rollout_id,
            after.status.value,
            result.assign,
            result.timed_out,
            result.succeeded,
            written=True,
        )


def _chunks(ids: Iterable[str]) -> Iterable[list[str]]:
    batch: list[str] = []
    for device_id in ids:
        batch.append(device_id)
        if len(batch) == _CHUNK:
            yield batch
            batch = []
    if batch:
        yield batch


def _assign(
    session: Session,
    ids: tuple[str, ...],
    rollout_id: int,
    batch: int,
    release_id: int,
    now: datetime.datetime,
) -> None:
    for chunk in _chunks(ids):
        session.execute(
            update(Device)
            .where(
                Device.id.in_(chunk),
                (Device.rollout_id.is_(None)) | (Device.rollout_id != rollout_id),
            )
            .values(
                rollout_id=rollout_id,
                phase=Phase.PENDING.value,
                batch=batch,
                assigned_at=now,
                booted_at=None,
                desired_release_id=release_id,
            )
            .execution_options(synchronize_session=False)
        )


def _settle(
    session: Session,
    ids: tuple[str, ...],
    rollout_id: int,
    phases: dict[str, str],
    phase: Phase,
) -> None:
    by_phase: dict[str, list[str]] = {}
    for device_id in ids:
        by_phase.setdefault(phases[device_id], []).append(device_id)
    for seen, group in by_phase.items():
        for chunk in _chunks(group):
            session.execute(
                update(Device)
                .where(Device.id.in_(chunk), Device.rollout_id == rollout_id, Device.phase == seen)
                .values(phase=phase.value)
                .execution_options(synchronize_session=False)
            )


def _record_changes(
    session: Session,
    rollout_id: int,
    before: RolloutState,
    after: RolloutState,
    assigned: tuple[str, ...],
    now: datetime.datetime,
) -> None:
    old, new = state_to_json(before), state_to_json(after)
    subject = f"rollout:{rollout_id}"
    if new["batch"] != old["batch"]:
        record(
            session,
            actor="system",
            kind="rollout.batch",
            subject=subject,
            now=now,
            details={"batch": new["batch"]},
        )
    if old["status"] != new["status"]:
        details = {"from": old["status"], "to": new["status"], "reason": new["reason"]}
        record(
            session,
            actor="system",
            kind=f"rollout.{new['status']}",
            subject=subject,
            now=now,
            details=details,
        )
    if assigned:
        record(
            session,
            actor="system",
            kind="rollout.assign",
            subject=subject,
            now=now,
            details={
                "batch": new["batch"],
                "count": len(assigned),
                "devices": list(assigned[:_SHOWN]),
            },
        )


def sync_releases(db: Database, repo_dir: Path, now: datetime.datetime) -> int:
    """Register the repository's releases the database lacks; how many were added."""
    from afield.release import list_releases

    listing = list_releases(repo_dir)
    added = 0
    with db.transaction() as session:
        known = {
            (r.image, r.arch, r.version)
            for r in session.execute(select(Release.image, Release.arch, Release.version))
        }
        for target in listing.releases:
            key = (target.image, target.arch, target.version)
            if key in known:
                continue
            known.add(key)
            session.add(
                Release(
                    image=target.image,
                    arch=target.arch,
                    version=target.version,
                    commit=target.sha256,
                    created=now,
                )
            )
            record(
                session,
                actor="system",
                kind="release.create",
                subject=f"release:{target.image}/{target.arch}/{target.version}",
                now=now,
                details={"commit": target.sha256, "channel": target.channel, "from": "repository"},
            )
            added += 1
    return added
