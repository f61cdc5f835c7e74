"""Device check-ins (``last_seen``), written behind: one transaction a second for every poll.

A device's poll is a check-in. Writing it row by row made the write the largest part of a poll's
cost on SQLite (a commit each), so polls only note the time here and a thread writes what
gathered, every :data:`FLUSH_EVERY` seconds, in one ``executemany``. Readers of ``last_seen``
in this process (the devices API, ``/metrics``, the rollout runner) call :meth:`CheckIns.flush`
first, so they see every check-in; other processes see it at most a second late. A check-in
never moves ``last_seen`` back (a report may have written a later time meanwhile), and a
device deleted since its poll is simply not updated.

What it leaves to others: the poll and its signature (:mod:`afield.fleet.api.device`).
What a crash costs: the check-ins of the last second, which the devices' next polls repeat.
"""

from __future__ import annotations

import datetime
import logging
import threading

from sqlalchemy import bindparam, or_, update
from sqlalchemy.exc import SQLAlchemyError

from afield.fleet.db import Database
from afield.fleet.models import Device

__all__ = ["FLUSH_EVERY", "CheckIns"]

FLUSH_EVERY = 1.0
log = logging.getLogger(__name__)

_WRITE = (
    update(Device)
    .where(
        Device.id == bindparam("device"),
        or_(Device.last_seen.is_(None), Device.last_seen < bindparam("at")),
    )
    .values(last_seen=bindparam("at"))
)


class CheckIns:
    """Check-in times waiting to be written, and the thread that writes them."""

    def __init__(self, db: Database, *, every: float = FLUSH_EVERY) -> None:
        self.db = db
        self.every = every
        self.written = 0  # check-ins written so far
        self._pending: dict[str, datetime.datetime] = {}
        self._lock = threading.Lock()  # guards _pending
        self._writing = threading.Lock()  # one flush at a time, so writes land in order
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def seen(self, device_id: str, at: datetime.datetime) -> None:
        """Note that ``device_id`` checked in at ``at`` (written at the next flush)."""
        with self._lock:
            self._keep_later(device_id, at)

    def _keep_later(self, device_id: str, at: datetime.datetime) -> None:
        """Note ``at`` unless a later time is noted already (``_lock`` held)."""
        noted = self._pending.get(device_id)
        if noted is None or at > noted:
            self._pending[device_id] = at

    def flush(self) -> int:
        """Write every noted check-in now; the number written. A failed write is kept for
        the next flush (and logged), never raised: a check-in must not fail a reader."""
        with self._writing:
            with self._lock:
                batch, self._pending = self._pending, {}
            if not batch:
                return 0
            try:
                with self.db.engine.begin() as connection:
                    connection.execute(
                        _WRITE, [{"device": device, "at": at} for device, at in batch.items()]
                    )
            except SQLAlchemyError as e:
                log.warning(
                    "writing %d device check-ins failed (kept for later): %s", len(batch), e
                )
                with self._lock:
                    for device, at in batch.items():
                        self._keep_later(device, at)
                return 0
            self.written += len(batch)
            return len(batch)

    def start(self) -> None:
        """Flush every :attr:`every` seconds from a thread until :meth:`stop`."""
        if self._thread is not None:
            return
        self._stopped.clear()
        self._thread = threading.Thread(target=self._run, name="afield-checkins", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and write what is left."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stopped.set()
            thread.join()
        self.flush()

    def _run(self) -> None:
        while not self._stopped.wait(self.every):
            self.flush()
