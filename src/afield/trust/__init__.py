"""Trust: TUF keys, the update repository's signed metadata, and the device's verifying client.

Built on python-tuf (the Metadata API to write, ``ngclient`` to verify) and securesystemslib's
ed25519 signers; nothing here re-implements TUF. :class:`Keyring` keeps role keys on disk,
:class:`MetadataRepository` signs and writes ``DIR/tuf``, :class:`ReleaseTarget` is what a
release target says, and :class:`TrustedUpdater` is what a device calls to verify a repository
and choose its update. Shared by builder, server and device, so it imports nothing from afield
but :mod:`afield.errors`.

What it leaves to others: choosing and reading OSTree commits (:mod:`afield.release`), pulling and
deploying them (the device agent), certificates for mTLS (a later step).
"""

from __future__ import annotations

from afield.trust.client import TrustedUpdater, UpdaterLimits
from afield.trust.keys import ROLES, Keyring
from afield.trust.repository import Expiries, MetadataRepository, RefreshResult, parse_duration
from afield.trust.targets import ReleaseTarget, commit_target_path, version_key

__all__ = [
    "ROLES",
    "Expiries",
    "Keyring",
    "MetadataRepository",
    "RefreshResult",
    "ReleaseTarget",
    "TrustedUpdater",
    "UpdaterLimits",
    "commit_target_path",
    "parse_duration",
    "version_key",
]
