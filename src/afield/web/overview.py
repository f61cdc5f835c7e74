"""``/``: the overview an operator opens first: how the fleet is, what runs where, what moves.

Four parts, each one or two SQL queries whatever the fleet's size (no device row is read into
Python, so the page costs about the same at 100 devices and at 100,000):

* devices by summary status (Online, Updating, Degraded, RolledBack, Offline), counted with
  :func:`afield.fleet.models.status_expression`, each tile linking to the filtered device list;
* the version distribution per image: devices by image and the version they run, as a Chart.js
  bar chart per image with the same numbers in a table beside it (the page reads without JS);
* rollouts in progress (running, paused, waiting for approval) with their progress;
* the latest events of the audit trail.

What it leaves to others: the pages it links to, what a status means (:mod:`afield.fleet.models`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import func, select

from afield.fleet.api.deps import CHECKINS_WRITTEN
from afield.fleet.api.fleets import ACTIVE
from afield.fleet.api.rollouts import RolloutPublic, rollout_public
from afield.fleet.models import Device, DeviceStatus, Event, Rollout, status_expression
from afield.web._render import render, version_order
from afield.web._session import ViewerPage

__all__ = ["ImageVersions", "router"]

router = APIRouter()
LATEST_EVENTS = 10
ROLLOUTS_SHOWN = 20


@dataclass(frozen=True)
class ImageVersions:
    """How many devices of one image run each version, oldest version first."""

    image: str
    versions: list[tuple[str, int]]

    @property
    def total(self) -> int:
        """Devices of this image."""
        return sum(n for _, n in self.versions)

    def chart(self) -> dict[str, Any]:
        """What ``afield.js`` draws: one bar per version."""
        return {
            "type": "bar",
            "labels": [v for v, _ in self.versions],
            "datasets": [
                {"label": f"{self.image}: devices", "data": [n for _, n in self.versions]}
            ],
        }


def _images(rows: list[Any]) -> list[ImageVersions]:
    by_image: dict[str, list[tuple[str | None, int]]] = {}
    for image, version, count in rows:
        by_image.setdefault(image or "(not reported)", []).append((version, int(count)))
    return [
        ImageVersions(
            image,
            [
                (version or "(none)", n)
                for version, n in sorted(versions, key=lambda item: version_order(item[0]))
            ],
        )
        for image, versions in sorted(by_image.items())
    ]


@router.get("/", dependencies=[CHECKINS_WRITTEN])  # polls noted in memory count as seen
def overview(request: Request, caller: ViewerPage) -> HTMLResponse:
    """The overview page."""
    state = request.app.state
    now = state.clock()
    status = status_expression(now, state.offline_after)
    with state.db.sessions() as session:
        by_status = dict(session.execute(select(status, func.count()).group_by(status)).all())
        versions = session.execute(
            select(Device.image, Device.current_version, func.count()).group_by(
                Device.image, Device.current_version
            )
        ).all()
        active = session.scalars(
            select(Rollout)
            .where(Rollout.status.in_(ACTIVE))
            .order_by(Rollout.id.desc())
            .limit(ROLLOUTS_SHOWN)
        ).all()
        rollouts: list[RolloutPublic] = [rollout_public(r) for r in active]
        events = session.scalars(select(Event).order_by(Event.id.desc()).limit(LATEST_EVENTS)).all()
        counts = {s: int(by_status.get(s.value, 0)) for s in DeviceStatus}
        return render(
            request,
            "overview.html",
            caller=caller,
            section="overview",
            counts=counts,
            total=sum(counts.values()),
            images=_images(list(versions)),
            rollouts=rollouts,
            events=events,
        )
