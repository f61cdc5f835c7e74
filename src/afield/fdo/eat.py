"""Entity Attestation Tokens as FDO uses them (TO1.ProveToRV, TO2.ProveDevice).

An EAT is a COSE_Sign1 signed by the device key whose payload is a claims map:
``{10: nonce (EAT-NONCE), 256: UEID, ? -257: FDO claim}``. The UEID is ``0x01 || GUID`` (type
RAND). The unprotected header may carry EUPHNonce (-259), the TO2.SetupDevice nonce. TO2's
owner-signed ProveOVHdr uses CUPHNonce (256) and CUPHOwnerPubKey (257) in its unprotected header.

What it leaves to others: which nonce a step expects (servers and device client).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from afield.fdo import _check as check
from afield.fdo._errors import FdoMessageError
from afield.fdo.types import Guid, Nonce

__all__ = [
    "CUPH_NONCE",
    "CUPH_OWNER_PUBKEY",
    "EAT_FDO",
    "EAT_NONCE",
    "EAT_UEID",
    "EUPH_NONCE",
    "EatPayload",
]

EAT_NONCE = 10
EAT_UEID = 256
EAT_UEID_OLD = 11
EAT_FDO = -257
EUPH_NONCE = -259
CUPH_NONCE = 256
CUPH_OWNER_PUBKEY = 257
UEID_RAND = 0x01


@dataclass(frozen=True)
class EatPayload:
    """The claims of an FDO EAT; ``other`` keeps claims afield does not interpret."""

    nonce: Nonce
    guid: Guid
    fdo: list[Any] | None = None
    other: dict[Any, Any] = field(default_factory=dict)

    @property
    def ueid(self) -> bytes:
        """``0x01 || GUID``."""
        return bytes([UEID_RAND]) + self.guid.value

    def to_cbor(self) -> dict[Any, Any]:
        """The claims map (UEID sent under claim 256)."""
        claims: dict[Any, Any] = dict(self.other)
        claims[EAT_NONCE] = self.nonce.to_cbor()
        claims[EAT_UEID] = self.ueid
        if self.fdo is not None:
            claims[EAT_FDO] = self.fdo
        return claims

    @classmethod
    def from_cbor(cls, value: Any, where: str = "EAT") -> EatPayload:
        """Parse EAT claims.

        Tolerance: the UEID claim is 256 in FDO 1.1 and RFC 9711 but 11 in the EAT drafts
        some implementations followed; either is accepted (256 wins when both are present).
        """
        claims = dict(check.mapping(value, where))
        nonce = Nonce.from_cbor(claims.pop(EAT_NONCE, None), f"{where}.nonce")
        ueid_value = claims.pop(EAT_UEID, None)
        old = claims.pop(EAT_UEID_OLD, None)
        ueid = check.bstr(ueid_value if ueid_value is not None else old, f"{where}.ueid", 17)
        if ueid[0] != UEID_RAND:
            raise FdoMessageError("UEID must be of type RAND (0x01)", where=f"{where}.ueid")
        fdo = claims.pop(EAT_FDO, None)
        if fdo is not None:
            fdo = check.array(fdo, f"{where}.fdo")
        return cls(nonce, Guid(ueid[1:]), fdo, claims)
