"""What an afield owner gives each device in TO2: the fleet manager's address, a one-time
enrollment token, the update repository's TUF root, SSH keys and files.

:class:`HandoffProvider` is the owner server's ``service_info`` callable
(:class:`afield.fdo.server.owner.OwnerSettings`): one :class:`~afield.fdo.modules.Handoff` for
the whole fleet, plus a fresh enrollment token per device from ``issue_token`` (called with the
GUID the device will have after TO2). A device that does not list the ``afield`` module in its
devmod gets no token: it could not use one. The token itself is never logged; the owner's log
line carries its SHA-256, which is what a fleet manager that did not issue it can compare.

What it leaves to others: keeping and checking tokens (the fleet manager issues them when it
mounts the owner server), the modules' wire format (:mod:`afield.fdo.modules`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import secrets
from collections.abc import Callable

from afield.fdo.modules import AFIELD, Handoff
from afield.fdo.server.owner import OnboardingRequest
from afield.fdo.serviceinfo import ServiceInfoKV
from afield.fdo.types import Guid

__all__ = ["HandoffProvider", "random_token"]

log = logging.getLogger("afield.fdo.owner")


def random_token(guid: Guid) -> str:
    """A 256-bit URL-safe token, unrelated to the GUID."""
    return secrets.token_urlsafe(32)


class HandoffProvider:
    """The owner's service info: ``handoff`` for every device, with its own token.

    Args:
        handoff: what every device gets (its ``enrollment_token`` is ignored).
        issue_token: makes the token for a device's new GUID; None sends no token.
    """

    def __init__(
        self, handoff: Handoff, issue_token: Callable[[Guid], str] | None = random_token
    ) -> None:
        self.handoff = dataclasses.replace(handoff, enrollment_token=None).check()
        self.issue_token = issue_token

    def __call__(self, request: OnboardingRequest) -> list[ServiceInfoKV]:
        """The key/values for one device (see the module docstring)."""
        guid = request.new_guid or request.guid
        token = None
        if self.issue_token is not None and AFIELD in request.devmod.modules:
            token = self.issue_token(guid)
        entry = {
            "event": "handoff",
            "guid": str(request.guid),
            "new_guid": str(guid),
            "token_sha256": hashlib.sha256(token.encode()).hexdigest() if token else None,
        }
        log.info(json.dumps(entry, sort_keys=True))
        return dataclasses.replace(self.handoff, enrollment_token=token).owner_kvs()
