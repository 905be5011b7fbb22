"""Batch issuance as pure steps around one remote signing call.

The signing daemon only ever sees SHA-256 digests, so a client does::

    prepared = prepare(records, kid, issuer_country, iat, dsc_not_after)
    signatures = <SignBatch(profile, kid, [p.digest for p in prepared])>
    hc1_strings = finish(prepared, signatures)

or lets :func:`issue` drive any :class:`DigestSigner` in chunks.
"""

import datetime as dt
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from signer.dcc.cose import assemble_sign1, protected_header, sig_structure, sig_structure_digest
from signer.dcc.countries import is_country_code
from signer.dcc.cwt import DEFAULT_VALIDITY, compute_expiry, encode_claims, to_unix
from signer.dcc.errors import DccError, DccRecordError
from signer.dcc.hc1 import encode_hc1
from signer.dcc.qr import check_qr_payload
from signer.dcc.record import build_hcert
from signer.sigformat import raw_to_der

DEFAULT_PROFILE = "vaccination"
DEFAULT_CHUNK_SIZE = 1000


class DigestSigner(Protocol):
    """Anything that signs SHA-256 digests with the key named ``kid`` (raw ``r||s`` out)."""

    def sign(self, profile: str, kid: bytes, digests: Sequence[bytes]) -> Sequence[bytes]:
        """Return one 64-byte raw signature per digest, in order."""
        ...


@dataclass(frozen=True)
class PreparedCertificate:
    """A certificate ready for signing: ``digest`` goes to the signer, the rest stays here."""

    protected: bytes
    payload: bytes
    digest: bytes
    hcert: dict[str, Any]
    uvci: str
    iat: int
    exp: int
    exp_clipped: bool


def prepare_one(
    record: Mapping[str, Any],
    kid: bytes,
    issuer_country: str,
    iat: dt.datetime | int,
    dsc_not_after: dt.datetime | int,
    *,
    validity: dt.timedelta = DEFAULT_VALIDITY,
    allow_dose_beyond_series: bool = False,
) -> PreparedCertificate:
    """Validate one record and build its protected header, CWT payload and digest.

    ``exp`` is ``iat + validity`` but never after ``dsc_not_after``; ``exp_clipped`` says when
    it was cut. Raises :class:`signer.dcc.errors.DccRecordError` for an invalid record.
    """
    if not is_country_code(issuer_country):
        raise DccError(f"issuer country {issuer_country!r} is not an ISO 3166-1 alpha-2 code")
    iat_s = to_unix(iat)
    expiry = compute_expiry(iat_s, to_unix(dsc_not_after), validity)
    hcert = build_hcert(
        record,
        issuer_country=issuer_country,
        issued_on=dt.datetime.fromtimestamp(iat_s, dt.UTC).date(),
        allow_dose_beyond_series=allow_dose_beyond_series,
    )
    protected = protected_header(kid)
    payload = encode_claims(hcert, issuer=issuer_country, iat=iat_s, exp=expiry.exp)
    return PreparedCertificate(
        protected=protected,
        payload=payload,
        digest=sig_structure_digest(protected, payload),
        hcert=hcert,
        uvci=str(hcert["v"][0]["ci"]),
        iat=iat_s,
        exp=expiry.exp,
        exp_clipped=expiry.clipped,
    )


def prepare(
    records: Sequence[Mapping[str, Any]],
    kid: bytes,
    issuer_country: str,
    iat: dt.datetime | int,
    dsc_not_after: dt.datetime | int,
    *,
    validity: dt.timedelta = DEFAULT_VALIDITY,
    allow_dose_beyond_series: bool = False,
) -> list[PreparedCertificate]:
    """Run :func:`prepare_one` on every record; a record error names its index
    (``records[3].v[0].dn: ...``)."""
    prepared = []
    for index, record in enumerate(records):
        try:
            prepared.append(
                prepare_one(
                    record,
                    kid,
                    issuer_country,
                    iat,
                    dsc_not_after,
                    validity=validity,
                    allow_dose_beyond_series=allow_dose_beyond_series,
                )
            )
        except DccRecordError as exc:
            raise DccRecordError(f"records[{index}].{exc.field}", exc.problem) from exc
    return prepared


def finish(
    prepared: Sequence[PreparedCertificate],
    signatures: Sequence[bytes],
    *,
    verify_with: ec.EllipticCurvePublicKey | None = None,
) -> list[str]:
    """Assemble COSE_Sign1 messages and return their ``HC1:`` strings, in order.

    With ``verify_with`` (the DSC's public key) every signature is checked before anything is
    returned, so a signer using the wrong key cannot leak unusable certificates.
    """
    if len(signatures) != len(prepared):
        raise DccError(f"got {len(signatures)} signatures for {len(prepared)} certificates")
    out = []
    for index, (cert, signature) in enumerate(zip(prepared, signatures, strict=True)):
        if verify_with is not None:
            _check(verify_with, cert, signature, index)
        hc1 = encode_hc1(assemble_sign1(cert.protected, cert.payload, signature))
        check_qr_payload(hc1)
        out.append(hc1)
    return out


def issue(
    records: Sequence[Mapping[str, Any]],
    signer: DigestSigner,
    kid: bytes,
    *,
    issuer_country: str,
    dsc_not_after: dt.datetime | int,
    profile: str = DEFAULT_PROFILE,
    iat: dt.datetime | int | None = None,
    validity: dt.timedelta = DEFAULT_VALIDITY,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    verify_with: ec.EllipticCurvePublicKey | None = None,
    allow_dose_beyond_series: bool = False,
) -> list[str]:
    """Prepare, sign (in chunks of ``chunk_size`` digests) and finish; return ``HC1:`` strings.

    ``iat`` defaults to now. All records are validated before the first digest is signed.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    issued_at = math.floor(time.time()) if iat is None else iat
    prepared = prepare(
        records,
        kid,
        issuer_country,
        issued_at,
        dsc_not_after,
        validity=validity,
        allow_dose_beyond_series=allow_dose_beyond_series,
    )
    out: list[str] = []
    for start in range(0, len(prepared), chunk_size):
        chunk = prepared[start : start + chunk_size]
        signatures = signer.sign(profile, kid, [cert.digest for cert in chunk])
        out += finish(chunk, signatures, verify_with=verify_with)
    return out


def _check(
    public_key: ec.EllipticCurvePublicKey, cert: PreparedCertificate, signature: bytes, index: int
) -> None:
    try:
        der = raw_to_der(signature)
        signed = sig_structure(cert.protected, cert.payload)
        public_key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise DccError(
            f"signature {index} does not verify under the DSC's public key; "
            "the signer used another key or returned a non-raw signature"
        ) from None
