"""Which applications each device runs: resolved from fleets and devices, stored per device.

An application (:class:`~afield.fleet.models.Application`) is set on a fleet, for every device
its selector matches, or on one device, where it replaces a fleet's application of the same
name. When two fleets that match one device have an application of the same name, the fleet
whose name sorts first wins. A device's resolved list is stored on its row
(``devices.applications``) as the JSON text the desired state carries, sorted by name, so a poll
reads one more column of the row it reads anyway and evaluates no selector.

:func:`refresh` re-resolves devices and writes the rows whose list changed. It must run in the
transaction of every write that can change a list, after that write: setting or removing an
application, a fleet's selector changing or the fleet going away, a device enrolling (its
labels are given then). It answers the devices whose list changed, for the caller to wake
their long-polls (:class:`~afield.fleet.notify.Notifier`) once committed, and the devices whose
list would break a device's limits (:data:`~afield.fleet.protocol.MAX_APPLICATIONS`
applications, :data:`MAX_TEXT_BYTES` of JSON), for an admin write to be refused. Refreshes are
serialised (on PostgreSQL with an advisory lock; SQLite has one writer and the caller wrote
first), so a device enrolling while an application is set ends up with it either way.

What it leaves to others: checking manifests and the HTTP side
(:mod:`afield.fleet.api.applications`), answering polls (:mod:`afield.fleet.api.device`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from afield.fleet.models import Application, Device, Fleet
from afield.fleet.policy import Selector, SelectorError
from afield.fleet.protocol import MAX_APPLICATIONS, MAX_DESIRED_BYTES
from afield.fleet.protocol import Application as WireApplication

__all__ = [
    "DEVICE_SOURCE",
    "MAX_TEXT_BYTES",
    "Refreshed",
    "TooLarge",
    "decode",
    "matching_devices",
    "refresh",
    "sources",
    "wire",
]

MAX_TEXT_BYTES = MAX_DESIRED_BYTES - 16 * 1024
"""The most bytes of application JSON one device gets: its whole desired state must stay under
:data:`~afield.fleet.protocol.MAX_DESIRED_BYTES`, the most a device reads."""
DEVICE_SOURCE = "device"
_CHUNK = 500  # device ids per query
_LOCK_KEY = 0x61617070  # "aapp": the advisory lock that serialises refreshes on PostgreSQL


@dataclass(frozen=True)
class TooLarge:
    """A device whose resolved applications break a limit: how many, and their JSON's bytes."""

    device_id: str
    count: int
    size: int

    def __str__(self) -> str:
        if self.count > MAX_APPLICATIONS:
            return (
                f"device {self.device_id!r} would run {self.count} applications; "
                f"a device runs at most {MAX_APPLICATIONS}"
            )
        return (
            f"device {self.device_id!r} would get {self.size} bytes of applications; "
            f"a device takes at most {MAX_TEXT_BYTES}"
        )


@dataclass
class Refreshed:
    """What :func:`refresh` did: devices whose list changed, devices over a limit."""

    changed: list[str] = field(default_factory=list)
    too_large: list[TooLarge] = field(default_factory=list)


def wire(row: Application) -> WireApplication:
    """The wire form of a stored application."""
    return WireApplication(
        name=row.name, manifests=row.manifests, images=list(row.images), digest=row.digest
    )


def decode(stored: str | None) -> list[dict[str, Any]]:
    """The applications of a ``devices.applications`` text, as JSON objects ([] for None)."""
    if not stored:
        return []
    loaded = json.loads(stored)
    return [item for item in loaded if isinstance(item, dict)] if isinstance(loaded, list) else []


def _labels(raw: Mapping[str, Any] | None) -> dict[str, str]:
    return {str(k): str(v) for k, v in (raw or {}).items()}


def _selector(text: str) -> Selector | None:
    try:
        return Selector.parse(text)
    except SelectorError:  # stored selectors were checked; one that no longer parses selects none
        return None


def _chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]


def _serialised(session: Session) -> None:
    """Wait for other refreshes to commit (PostgreSQL; re-entrant, held until commit). SQLite
    serialises them by its one writer: each caller writes before it reads."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SELECT pg_advisory_xact_lock({_LOCK_KEY})"))


def matching_devices(session: Session, selectors: Iterable[str]) -> list[str]:
    """Ids of the devices any of ``selectors`` matches (read a chunk at a time), read under
    :func:`refresh`'s lock, so a device enrolling meanwhile is either seen here or sees the
    caller's writes."""
    parsed = [s for s in (_selector(text) for text in selectors) if s is not None]
    if not parsed:
        return []
    session.flush()
    _serialised(session)
    found = []
    query = select(Device.id, Device.labels).execution_options(yield_per=1000)
    for device_id, labels in session.execute(query):
        plain = _labels(labels)
        if any(selector.matches(plain) for selector in parsed):
            found.append(device_id)
    return found


@dataclass(frozen=True)
class _App:
    """What resolving needs of an application (its manifests are read only when sent)."""

    id: int
    name: str


class _Fleets:
    """Every fleet that has applications: its selector and its applications, by fleet name."""

    def __init__(self, session: Session) -> None:
        by_fleet: dict[int, list[_App]] = {}
        owned = select(Application.id, Application.name, Application.fleet_id).where(
            Application.fleet_id.is_not(None)
        )
        for app_id, name, fleet_id in session.execute(owned):
            if fleet_id is not None:
                by_fleet.setdefault(fleet_id, []).append(_App(app_id, name))
        self.fleets: list[tuple[str, Selector, list[_App]]] = []
        if by_fleet:
            query = select(Fleet.id, Fleet.name, Fleet.selector).where(Fleet.id.in_(list(by_fleet)))
            for fleet_id, name, selector_text in sorted(session.execute(query), key=lambda r: r[1]):
                selector = _selector(selector_text)
                if selector is not None:
                    self.fleets.append((name, selector, by_fleet[fleet_id]))

    def resolve(
        self, labels: Mapping[str, str], own: Sequence[_App]
    ) -> dict[str, tuple[_App, str]]:
        """Name -> (application, source) for a device with ``labels`` and its own ``own``."""
        chosen: dict[str, tuple[_App, str]] = {}
        for name, selector, apps in self.fleets:
            if selector.matches(labels):
                for app in apps:
                    chosen.setdefault(app.name, (app, f"fleet:{name}"))
        for app in own:
            chosen[app.name] = (app, DEVICE_SOURCE)
        return chosen


def _own(session: Session, device_ids: Sequence[str]) -> dict[str, list[_App]]:
    query = select(Application.id, Application.name, Application.device_id).where(
        Application.device_id.in_(device_ids)
    )
    by_device: dict[str, list[_App]] = {}
    for app_id, name, device_id in session.execute(query):
        if device_id is not None:
            by_device.setdefault(device_id, []).append(_App(app_id, name))
    return by_device


class _Texts:
    """The JSON text of lists of applications, each application serialised once."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.fragments: dict[int, str] = {}  # application id -> its wire JSON
        self.texts: dict[tuple[int, ...], str | None] = {}  # application ids -> the list's

    def prepare(self, keys: Iterable[tuple[int, ...]]) -> None:
        """Read the applications of ``keys`` not serialised yet (one query)."""
        missing = {i for key in keys if key not in self.texts for i in key} - self.fragments.keys()
        if missing:
            for row in self.session.scalars(
                select(Application).where(Application.id.in_(sorted(missing)))
            ):
                self.fragments[row.id] = wire(row).model_dump_json()

    def text(self, key: tuple[int, ...]) -> str | None:
        """The list's JSON (None for no application); :meth:`prepare` it first."""
        if key not in self.texts:
            parts = [self.fragments[i] for i in key]
            self.texts[key] = "[" + ",".join(parts) + "]" if parts else None
        return self.texts[key]


def refresh(session: Session, device_ids: Iterable[str]) -> Refreshed:
    """Re-resolve ``device_ids`` and store the lists that changed (see the module docstring).

    Runs in the caller's transaction, after its writes (they are flushed first); the caller
    commits, then wakes :attr:`Refreshed.changed`.
    """
    ids = sorted(set(device_ids))
    result = Refreshed()
    if not ids:
        return result
    session.flush()
    _serialised(session)
    fleets, texts = _Fleets(session), _Texts(session)
    by_text: dict[str | None, list[str]] = {}
    for chunk in _chunks(ids):
        own = _own(session, chunk)
        keys: dict[str, tuple[int, ...]] = {}
        for device_id, labels in session.execute(
            select(Device.id, Device.labels).where(Device.id.in_(chunk))
        ):
            chosen = fleets.resolve(_labels(labels), own.get(device_id, ()))
            keys[device_id] = tuple(chosen[name][0].id for name in sorted(chosen))
        texts.prepare(keys.values())
        for device_id, key in keys.items():
            stored = texts.text(key)
            size = 0 if stored is None else len(stored.encode())
            if len(key) > MAX_APPLICATIONS or size > MAX_TEXT_BYTES:
                result.too_large.append(TooLarge(device_id, len(key), size))
            by_text.setdefault(stored, []).append(device_id)
    for stored, group in by_text.items():
        for chunk in _chunks(group):
            written = session.execute(
                update(Device)
                .where(Device.id.in_(chunk), Device.applications.is_distinct_from(stored))
                .values(applications=stored)
                .returning(Device.id)
                .execution_options(synchronize_session=False)
            )
            result.changed.extend(written.scalars())
    changed = set(result.changed)
    for loaded in list(session.identity_map.values()):
        if isinstance(loaded, Device) and loaded.id in changed:
            session.expire(loaded, ["applications"])  # written around the ORM
    result.changed.sort()
    return result


def sources(session: Session, device_id: str, labels: Mapping[str, Any] | None) -> dict[str, str]:
    """Where each application of one device comes from: name -> ``fleet:NAME`` or ``device``."""
    own = _own(session, [device_id]).get(device_id, [])
    chosen = _Fleets(session).resolve(_labels(labels), own)
    return {name: source for name, (_, source) in chosen.items()}
