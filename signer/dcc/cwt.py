"""CBOR Web Token claims of an HCERT: ``{1: iss, 4: exp, 6: iat, -260: {1: hcert}}``."""

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2

from signer.dcc.cbor_bounds import decode_cbor
from signer.dcc.errors import DccEncodingError, DccError

CLAIM_ISS = 1
CLAIM_EXP = 4
CLAIM_IAT = 6
CLAIM_HCERT = -260
HCERT_EU_DCC = 1
DEFAULT_VALIDITY = dt.timedelta(days=365)
"""QR lifetime of a vaccination certificate (``exp - iat``) unless the caller says otherwise."""
TEST_VALIDITY = dt.timedelta(hours=72)
"""QR lifetime of a test certificate: the longest time after sampling that EU travel rules
accepted a test result (72 hours for a NAA test). Recovery certificates expire with ``du``."""


@dataclass(frozen=True)
class Expiry:
    """The ``exp`` claim and whether it was clipped to the DSC's notAfter."""

    exp: int
    clipped: bool


@dataclass(frozen=True)
class Claims:
    """Decoded CWT claims; absent claims are ``None``."""

    issuer: str | None
    iat: int | None
    exp: int | None
    hcert: dict[Any, Any] | None


def to_unix(value: dt.datetime | int | float) -> int:
    """Return whole seconds since the epoch; naive datetimes are refused (ambiguous zone)."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise DccError("datetime without a time zone is ambiguous; pass an aware datetime")
        return math.floor(value.timestamp())
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DccError(f"expected a time, got {type(value).__name__}")
    return math.floor(value)


def compute_expiry(
    iat: int,
    dsc_not_after: int,
    validity: dt.timedelta = DEFAULT_VALIDITY,
    *,
    until: int | None = None,
) -> Expiry:
    """Return ``iat + validity`` (or ``until`` when given), clipped to ``dsc_not_after`` (a
    certificate must not outlive its DSC). Raises :class:`DccError` when the DSC has already
    expired at ``iat``."""
    if dsc_not_after <= iat:
        raise DccError(
            f"the DSC expired at {dsc_not_after}, not after the issuance time {iat}; "
            "rotate to a key with a valid DSC"
        )
    wanted = iat + int(validity.total_seconds()) if until is None else until
    if wanted > dsc_not_after:
        return Expiry(exp=dsc_not_after, clipped=True)
    return Expiry(exp=wanted, clipped=False)


def encode_claims(hcert: Mapping[str, Any], *, issuer: str, iat: int, exp: int) -> bytes:
    """Return the CBOR-encoded CWT claims set (the COSE payload) with integer times."""
    return cbor2.dumps(
        {
            CLAIM_ISS: issuer,
            CLAIM_EXP: exp,
            CLAIM_IAT: iat,
            CLAIM_HCERT: {HCERT_EU_DCC: dict(hcert)},
        }
    )


def decode_claims(payload: bytes) -> Claims:
    """Decode a CWT claims set (bounded, without tags); float times are floored to whole seconds."""
    claims = decode_cbor(payload, "CWT payload")
    if not isinstance(claims, dict):
        raise DccEncodingError("CWT payload is not a CBOR map")
    issuer = claims.get(CLAIM_ISS)
    hcert_container = claims.get(CLAIM_HCERT)
    hcert = hcert_container.get(HCERT_EU_DCC) if isinstance(hcert_container, dict) else None
    return Claims(
        issuer=issuer if isinstance(issuer, str) else None,
        iat=_time(claims.get(CLAIM_IAT), "iat"),
        exp=_time(claims.get(CLAIM_EXP), "exp"),
        hcert=hcert if isinstance(hcert, dict) else None,
    )


def _time(value: object, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DccEncodingError(f"CWT claim {name} is not a number: {value!r}")
    return math.floor(value)
