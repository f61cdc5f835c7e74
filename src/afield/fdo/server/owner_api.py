"""The owner server's voucher import: ``POST /api/v1/vouchers`` (what ``afield fdo voucher import
--owner URL`` calls), followed at once by TO0.

The body is one ownership voucher, PEM or raw CBOR, at most 256 KiB; the request must carry
``Authorization: Bearer <import token>`` (compared in constant time). The voucher must verify
and end at this owner's key (:meth:`~afield.fdo.server.owner_store.SqlOwnerStore.add`); it is
stored, then registered with its rendezvous servers by the :class:`~afield.fdo.server.registrar.
Registrar` before the answer goes back, so the caller learns whether a device could find its
owner now. Answers are JSON: ``{"guid", "registered", "until", "errors"}`` with 201, or
``{"error": "..."}`` with 401 (token), 400 (not a voucher), 409 (already imported), 422 (does
not verify or is not this owner's) or 413 (too large).

What it leaves to others: admin authentication beyond one shared token (the fleet manager's
roles, when it mounts the owner server), listing and deleting vouchers.
"""

from __future__ import annotations

import hmac
import json
import logging

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from afield.fdo._errors import FdoMessageError, VerifyError
from afield.fdo.server.owner_store import OwnerStore
from afield.fdo.server.registrar import Registrar
from afield.fdo.server.store import VoucherExistsError
from afield.fdo.voucher import Voucher

__all__ = ["MAX_VOUCHER_BYTES", "import_routes"]

MAX_VOUCHER_BYTES = 256 * 1024
log = logging.getLogger("afield.fdo.owner")


def _error(status: int, text: str) -> Response:
    return JSONResponse({"error": text}, status_code=status)


async def _body(request: Request) -> bytes | None:
    """The body, or None once it passes the limit (read no further)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_VOUCHER_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def import_routes(store: OwnerStore, registrar: Registrar, token: str) -> list[Route]:
    """``POST /api/v1/vouchers`` for ``store``, registered by ``registrar``, behind ``token``."""
    if len(token) < 16:
        raise ValueError("the import token must have at least 16 characters")
    expected = f"Bearer {token}".encode()

    async def import_voucher(request: Request) -> Response:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return _error(401, "a valid 'Authorization: Bearer <import token>' is required")
        data = await _body(request)
        if data is None:
            return _error(413, f"a voucher is at most {MAX_VOUCHER_BYTES} bytes")
        try:
            voucher = Voucher.load(data)
        except FdoMessageError as e:
            return _error(400, f"not an ownership voucher (PEM or CBOR): {e}")
        try:
            await run_in_threadpool(store.add, voucher)
        except VoucherExistsError as e:
            return _error(409, str(e))
        except VerifyError as e:
            return _error(422, str(e))
        registration = await run_in_threadpool(registrar.register_one, voucher)
        log.info(json.dumps({"event": "import", "guid": registration.guid}))
        return JSONResponse(
            {**registration.to_dict(), "registered": registration.until is not None},
            status_code=201,
        )

    return [Route("/api/v1/vouchers", import_voucher, methods=["POST"])]
