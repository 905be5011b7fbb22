"""Verification of ``HC1:`` strings against trusted DSCs.

Accepted, because the specification allows them or real issuers produce them: kid in the
protected or the unprotected header (protected wins), alg and kid in any order, several DSCs
under one kid (each is tried), COSE_Sign1 tagged 18, wrapped in CWT tag 61 or untagged, zlib
compressed or not, a missing ``HC1:`` prefix, float timestamps (floored), ES256 and PS256
(the DCC's fallback algorithm), and DSCs that need the lenient parser of :mod:`signer.dcc.dsc`.
A COSE_Sign1 without any kid is checked against every trusted key (with a warning).

Refused: a certificate of a type its DSC's DCC extended key usages exclude (a test
certificate signed with a DSC restricted to vaccinations, as EU verifier apps refuse it), a
certificate whose SIGNATURE, UCI or COUNTRYCODEUCI hash a given revocation list names for its
kid (or for an unknown kid; see :mod:`signer.dcc.revocation`), and ES256 signatures in DER
form. COSE (RFC 9053, section 2.1) requires raw ``r||s``;
a DER signature marks a broken issuer, and accepting it would let two encodings of one
signature circulate. The error message says what was found.
"""

import datetime as dt
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from signer.dcc.cose import (
    ALG_ES256,
    ALG_PS256,
    ES256_SIGNATURE_BYTES,
    Sign1,
    parse_sign1,
    sig_structure,
)
from signer.dcc.cwt import decode_claims, to_unix
from signer.dcc.errors import DccError
from signer.dcc.hc1 import decode_hc1
from signer.dcc.record import KINDS
from signer.dcc.revocation import RevocationList, Revoked, certificate_hashes
from signer.dcc.trust import TrustedKey, TrustStore
from signer.sigformat import raw_to_der

CLOCK_SKEW_SECONDS = 300


@dataclass(frozen=True)
class VerificationResult:
    """Outcome of :func:`verify`.

    ``signature_valid`` says only that a trusted DSC signed the bytes; ``expired`` compares
    ``exp`` with the time asked about; ``payload`` is the HCERT (claim -260/1). ``error`` says
    why the certificate is not acceptable, apart from expiry; ``warnings`` are oddities that do
    not invalidate it.
    """

    signature_valid: bool
    kid: bytes | None = None
    issuer: str | None = None
    iat: int | None = None
    exp: int | None = None
    expired: bool = False
    payload: dict[Any, Any] | None = None
    error: str | None = None
    warnings: tuple[str, ...] = ()
    revoked: tuple[str, ...] = ()
    """Hash types under which a revocation list names this certificate (empty: none)."""

    @property
    def acceptable(self) -> bool:
        """Signature valid, not expired, no error."""
        return self.signature_valid and not self.expired and self.error is None

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (kid as hex)."""
        out = asdict(self)
        out["kid"] = self.kid.hex() if self.kid is not None else None
        out["warnings"] = list(self.warnings)
        out["revoked"] = list(self.revoked)
        return out


def verify(
    hc1: str,
    trust: TrustStore,
    at: dt.datetime | int | float | None = None,
    revocations: RevocationList | None = None,
) -> VerificationResult:
    """Verify an ``HC1:`` string; ``at`` is the time for the expiry check (default: now).

    With ``revocations``, a certificate whose revocation hash is listed gets an ``error``
    naming the hash type and ``revoked`` set. Never raises for bad input: problems are
    reported in the result's ``error``.
    """
    now = math.floor(time.time()) if at is None else to_unix(at)
    try:
        message = parse_sign1(decode_hc1(hc1))
    except DccError as exc:
        return VerificationResult(signature_valid=False, error=f"cannot decode: {exc}")

    kid = message.kid
    warnings: list[str] = []
    signer_key, error = _check_signature(message, trust, warnings)
    try:
        claims = decode_claims(message.payload)
    except DccError as exc:
        return VerificationResult(
            signature_valid=signer_key is not None, kid=kid, error=error or str(exc)
        )
    if error is None and claims.exp is None:
        error = "CWT has no exp claim"
    if error is None and claims.hcert is None:
        error = "CWT has no HCERT (claim -260/1)"
    if error is None and signer_key is not None and claims.hcert is not None:
        error = _type_not_allowed(claims.hcert, signer_key)
    revoked: list[Revoked] = []
    if revocations is not None:
        uci, country = _uci_and_country(claims.hcert)
        hashes = certificate_hashes(message.alg, message.signature, uci, (country, claims.issuer))
        revoked = revocations.find(kid, hashes)
        if revoked:
            listed = "; ".join(
                f"its {r.hash_type.value} hash {r.value.hex()} is listed in {r.source}"
                for r in revoked
            )
            reason = f"revoked: {listed}"
            error = f"{error}; {reason}" if error else reason
    if claims.iat is not None:
        if claims.iat > now + CLOCK_SKEW_SECONDS:
            warnings.append("iat is in the future")
        if signer_key is not None and not _within_dsc_validity(claims.iat, signer_key):
            warnings.append("iat is outside the validity of the DSC")
    return VerificationResult(
        signature_valid=signer_key is not None,
        kid=kid,
        issuer=claims.issuer,
        iat=claims.iat,
        exp=claims.exp,
        expired=claims.exp is not None and now > claims.exp,
        payload=claims.hcert,
        error=error,
        warnings=tuple(warnings),
        revoked=tuple(dict.fromkeys(r.hash_type.value for r in revoked)),
    )


def _uci_and_country(hcert: dict[Any, Any] | None) -> tuple[str | None, str | None]:
    """The ``ci`` and ``co`` of the certificate's entry, where readable."""
    for kind in KINDS:
        entries = hcert.get(kind) if isinstance(hcert, dict) else None
        if isinstance(entries, list) and entries and isinstance(entries[0], dict):
            ci, co = entries[0].get("ci"), entries[0].get("co")
            return (ci if isinstance(ci, str) else None, co if isinstance(co, str) else None)
    return None, None


def _type_not_allowed(hcert: dict[Any, Any], key: TrustedKey) -> str | None:
    refused = [KINDS[kind] for kind in KINDS if kind in hcert and not key.dsc.allows(KINDS[kind])]
    if not refused:
        return None
    profile = " and ".join(refused)
    allowed = ", ".join(sorted(key.dsc.profiles or ()))
    return (
        f"a {profile} certificate signed by a DSC whose extended key usage allows only"
        f" {allowed} certificates"
    )


def _check_signature(
    message: Sign1, trust: TrustStore, warnings: list[str]
) -> tuple[TrustedKey | None, str | None]:
    alg = message.alg
    if alg not in (ALG_ES256, ALG_PS256):
        return None, f"unsupported COSE algorithm {alg!r} (ES256 -7 or PS256 -37 expected)"
    if alg == ALG_ES256 and len(message.signature) != ES256_SIGNATURE_BYTES:
        found = "DER-encoded" if message.signature[:1] == b"\x30" else "malformed"
        return None, (
            f"ES256 signature is {found} ({len(message.signature)} bytes); COSE requires "
            f"raw r||s of {ES256_SIGNATURE_BYTES} bytes"
        )
    kid = message.kid
    if kid is None:
        warnings.append("no kid in the headers; every trusted key was tried")
    if kid is not None and kid in trust.revoked_kids:
        return None, f"kid {kid.hex()} is revoked: its key was withdrawn, distrust this certificate"
    candidates = trust.candidates(kid)
    if not candidates:
        return None, f"unknown kid {kid.hex()}" if kid is not None else "no trusted keys"
    to_be_signed = sig_structure(message.protected, message.payload)
    revoked = False
    for key in candidates:
        if key.revoked:
            revoked = True
            continue
        if _signature_matches(alg, key, message.signature, to_be_signed):
            return key, None
    if revoked:
        return None, "signature not valid under any trusted key (a matching DSC is revoked)"
    return None, "signature not valid under any trusted key for this kid"


def _signature_matches(alg: int, key: TrustedKey, signature: bytes, data: bytes) -> bool:
    public_key = key.public_key
    try:
        if alg == ALG_ES256 and isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(raw_to_der(signature), data, ec.ECDSA(hashes.SHA256()))
            return True
        if alg == ALG_PS256 and isinstance(public_key, rsa.RSAPublicKey):
            pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
            public_key.verify(signature, data, pss, hashes.SHA256())
            return True
    except (InvalidSignature, ValueError):
        return False
    return False


def _within_dsc_validity(iat: int, key: TrustedKey) -> bool:
    not_before, not_after = key.dsc.not_before, key.dsc.not_after
    if not_before is not None and iat < math.floor(not_before.timestamp()):
        return False
    return not (not_after is not None and iat > math.floor(not_after.timestamp()))
