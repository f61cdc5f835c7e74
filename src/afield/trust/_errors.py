"""Translate python-tuf and urllib3 exceptions into afield errors that name the failed check.

ngclient raises one exception type per TUF check (signature threshold, version, expiry,
length/hash, download length) with terse messages; a device operator needs to read which
check failed, on which file, and what attack it stops. :func:`translate` turns each into a
:class:`~afield.errors.TrustError` (verification failed) or :class:`~afield.errors.TransportError`
(the network failed) whose message starts with the check's name.

What it leaves to others: deciding what to do about the failure (retry, report, keep the
booted deployment) — that is the device agent's job.
"""

from __future__ import annotations

import urllib3
from tuf.api import exceptions
from tuf.api.serialization import DeserializationError

from afield.errors import AfieldError, TransportError, TrustError

__all__ = ["translate"]


def translate(error: Exception, *, url: str | None) -> AfieldError:
    """The afield error for an exception raised while verifying; ``url`` was fetched last."""
    where = f" (last fetched {url})" if url else ""
    if isinstance(error, exceptions.UnsignedMetadataError):
        return TrustError(f"signature check failed: {error}{where}")
    if isinstance(error, exceptions.ExpiredMetadataError):
        return TrustError(
            f"expiry check failed: {error}; the repository serves stale metadata "
            f"(freeze attack, or nobody ran `afield release refresh`){where}"
        )
    if isinstance(error, exceptions.BadVersionNumberError):
        return TrustError(
            f"version check failed: {error or 'metadata version went backwards'}; older "
            f"metadata was offered (rollback attack) or files of different versions were mixed "
            f"(mix-and-match attack){where}"
        )
    if isinstance(error, exceptions.LengthOrHashMismatchError):
        return TrustError(
            f"length/hash check failed: {error}; the file is not the one the signed metadata "
            f"describes (tampered file, or mix-and-match of metadata){where}"
        )
    if isinstance(error, DeserializationError):
        return TrustError(f"format check failed: {error}{where}")
    if isinstance(error, exceptions.RepositoryError):
        return TrustError(f"metadata check failed: {error}{where}")
    if isinstance(error, exceptions.DownloadLengthMismatchError):
        return TrustError(
            f"length limit check failed: {error}; the server sent more than the configured or "
            f"signed length (endless data attack){where}"
        )
    if isinstance(error, exceptions.SlowRetrievalError):
        # urllib3 counts a refused connection as a connect timeout; tell the two apart.
        cause = error.__cause__
        reason = getattr(cause, "reason", None)
        if isinstance(reason, urllib3.exceptions.NewConnectionError):
            return TransportError(f"download failed: cannot connect{where}: {reason}")
        return TransportError(f"download stalled (slow retrieval){where}: {cause or error}")
    if isinstance(error, exceptions.DownloadHTTPError):
        return TransportError(f"HTTP {error.status_code}{where}: {error}")
    if isinstance(error, exceptions.DownloadError | urllib3.exceptions.HTTPError):
        return TransportError(f"download failed{where}: {error}")
    if isinstance(error, OSError):
        return TrustError(f"cannot read or write trusted metadata: {error}")
    return TrustError(f"TUF verification failed: {type(error).__name__}: {error}{where}")
