"""The fleet manager's HTTP API under ``/api/v1``: one router module per resource.

:func:`api_router` assembles them: :mod:`~afield.fleet.api.devices`,
:mod:`~afield.fleet.api.fleets`, :mod:`~afield.fleet.api.applications` (of fleets and
devices), :mod:`~afield.fleet.api.releases` (and the images' ``running`` endpoint),
:mod:`~afield.fleet.api.rollouts`, :mod:`~afield.fleet.api.events`, and
the device API with enrollment tokens (:mod:`~afield.fleet.api.device`). Reads need a viewer or
admin token, writes an admin token (:mod:`afield.fleet.auth`); the exceptions are
``GET /api/v1/images/{image}/running``, which ``afield release publish`` calls without a token,
and the device routes, which devices sign with their own key. Refused requests answer
``{"error", "field", "problems"}`` (:mod:`afield.fleet.api.deps`). Operation ids are
``<tag>-<name>`` and stable.

What it leaves to others: the application around it (middleware, metrics, error handlers,
``/repo/``: :mod:`afield.fleet.app`), the rollout runner (:mod:`afield.fleet.runner`).
"""

from __future__ import annotations

from fastapi import APIRouter

from afield.fleet.api import applications, device, devices, events, fleets, releases, rollouts

__all__ = ["API_PREFIX", "api_router"]

API_PREFIX = "/api/v1"


def api_router() -> APIRouter:
    """Every route of the API, under ``/api/v1``."""
    router = APIRouter(prefix=API_PREFIX)
    for part in (
        devices.router,
        fleets.router,
        rollouts.fleet_router,
        applications.fleet_router,
        applications.device_router,
        rollouts.router,
        releases.router,
        releases.images_router,
        events.router,
        device.router,
        device.tokens_router,
    ):
        router.include_router(part)
    return router
