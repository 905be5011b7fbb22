"""Batch issuance as pure steps around one remote signing call.

The signing daemon only ever sees SHA-256 digests, so a client does::

    prepared = prepare(records, kid, issuer_country, iat, dsc_not_after)
    signatures = <SignBatch(profile, kid, [p.digest for p in prepared])>
    hc1_strings = finish(prepared, signatures)

or lets :func:`issue` drive any :class:`DigestSigner` in chunks.

Kinds and profiles: a record's entry group decides the profile whose key signs it (``v`` ->
vaccination, ``t`` -> test, ``r`` -> recovery, :data:`signer.dcc.record.KINDS`); a profile
given by the caller must match, and a DSC whose DCC extended key usages exclude the profile is
refused before anything is signed. ``exp`` is ``iat`` plus the validity of the kind (365 days
for a vaccination, :data:`~signer.dcc.cwt.TEST_VALIDITY` for a test, unless the caller gives
one) or, for a recovery, the end of its ``du`` day; never after the DSC's notAfter.

Key rotation: the kid is inside the protected header, so it is part of what gets hashed. When
the signer refuses a kid because another key has taken over (an exception carrying
``current_kid``, such as :class:`signer.client.KidChanged`), :class:`ChunkSigner` asks the
signer for the new key, rebuilds the header, ``exp`` (the new DSC's notAfter may be earlier)
and digest of every certificate not yet signed, and signs again. Certificates already
finished keep the old kid, which is the key that signed them. Nothing here imports gRPC: the
refusal is recognised by its ``current_kid`` attribute.
"""

import datetime as dt
import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from signer.dcc.cose import assemble_sign1, protected_header, sig_structure, sig_structure_digest
from signer.dcc.countries import is_country_code
from signer.dcc.cwt import (
    DEFAULT_VALIDITY,
    TEST_VALIDITY,
    compute_expiry,
    encode_claims,
    to_unix,
)
from signer.dcc.dsc import parse_dsc
from signer.dcc.errors import DccError, DccRecordError
from signer.dcc.hc1 import encode_hc1
from signer.dcc.qr import check_qr_length
from signer.dcc.record import KINDS, build_hcert, kind_of, recovery_valid_until
from signer.dcc.sigcheck import SignatureCheck
from signer.dcc.value_sets import ValueSets

DEFAULT_PROFILE = "vaccination"
DEFAULT_CHUNK_SIZE = 1000
MAX_ROTATIONS_PER_CHUNK = 3
_DEFAULT_VALIDITY = {"v": DEFAULT_VALIDITY, "t": TEST_VALIDITY}


def profile_for(record: Mapping[str, Any], profile: str | None = None) -> str:
    """The signing profile of ``record``'s kind; refuses a ``profile`` that does not match it
    (:class:`DccRecordError` naming the entry group)."""
    return _profile_of(kind_of(record), profile)


def _profile_of(kind: str, profile: str | None) -> str:
    wanted = KINDS[kind]
    if profile is not None and profile != wanted:
        raise DccRecordError(
            kind,
            f"a {wanted} entry cannot be signed for profile {profile!r}: the {profile} key's"
            f" DSC is for {profile} certificates; issue it with profile {wanted!r}",
        )
    return wanted


class DigestSigner(Protocol):
    """Anything that signs SHA-256 digests with the key named ``kid`` (raw ``r||s`` out)."""

    def sign(self, profile: str, kid: bytes, digests: Sequence[bytes]) -> Sequence[bytes]:
        """Return one 64-byte raw signature per digest, in order.

        Raise an exception with a ``current_kid`` attribute (bytes) when ``kid`` may not sign
        any more; see :func:`rotated_kid`.
        """
        ...


@runtime_checkable
class KeySource(Protocol):
    """A signer that can also name its current key (what a rotation needs)."""

    def signing_key(self, profile: str) -> tuple[bytes, bytes]:
        """Return ``(kid, dsc_der)`` of the key that signs ``profile`` now, fresh."""
        ...


def rotated_kid(error: BaseException) -> bytes | None:
    """The ``current_kid`` of a "this kid may not sign any more" refusal, else ``None``."""
    current = getattr(error, "current_kid", None)
    return current if isinstance(current, bytes) and current else None


@dataclass(frozen=True)
class IssuingKey:
    """What issuance needs from the key that signs: its kid, DSC limits and public key."""

    kid: bytes
    not_after: dt.datetime
    public_key: ec.EllipticCurvePublicKey | None
    country: str | None

    @classmethod
    def from_dsc(cls, kid: bytes, dsc_der: bytes, profile: str | None = None) -> "IssuingKey":
        """Check that ``kid`` is the kid of ``dsc_der`` (and, with ``profile``, that the DSC's
        extended key usages allow that certificate type) and read the DSC's limits."""
        dsc = parse_dsc(dsc_der)
        if dsc.kid != kid:
            raise DccError(f"signer reports kid {kid.hex()} but its DSC hashes to {dsc.kid.hex()}")
        if profile is not None and not dsc.allows(profile):
            allowed = ", ".join(sorted(dsc.profiles or ()))
            raise DccError(
                f"the DSC of kid {kid.hex()} is restricted to {allowed} certificates by its"
                f" extended key usage; it must not sign {profile} certificates (the signer's"
                f" {profile} key has the wrong DSC)"
            )
        if dsc.not_after is None:
            raise DccError("the DSC's notAfter cannot be read; refusing to issue")
        key = dsc.public_key
        return cls(
            kid=kid,
            not_after=dsc.not_after,
            public_key=key if isinstance(key, ec.EllipticCurvePublicKey) else None,
            country=dsc.country,
        )


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
    kid: bytes
    issuer: str
    validity_seconds: int
    kind: str = "v"
    """Entry group: ``v``, ``t`` or ``r``."""
    notes: tuple[str, ...] = ()
    """Things the operator should know that did not stop issuance (a truncated name)."""

    @property
    def profile(self) -> str:
        """The signing profile of this certificate's kind."""
        return KINDS[self.kind]

    @property
    def country(self) -> str:
        """The entry's ``co``: where the vaccination, test or recovery took place."""
        return str(self.hcert[self.kind][0]["co"])


def prepare_one(
    record: Mapping[str, Any],
    kid: bytes,
    issuer_country: str,
    iat: dt.datetime | int,
    dsc_not_after: dt.datetime | int,
    *,
    validity: dt.timedelta | None = None,
    allow_dose_beyond_series: bool = False,
    profile: str | None = None,
    value_sets: ValueSets | None = None,
) -> PreparedCertificate:
    """Validate one record and build its protected header, CWT payload and digest.

    ``exp`` is ``iat + validity`` (default: by kind, see the module docstring), for a recovery
    the end of its ``du`` day, but never after ``dsc_not_after``; ``exp_clipped`` says when it
    was cut. ``profile``, when given, must be the profile of the record's kind. Raises
    :class:`signer.dcc.errors.DccRecordError` for an invalid record.
    """
    if not is_country_code(issuer_country):
        raise DccError(f"issuer country {issuer_country!r} is not an ISO 3166-1 alpha-2 code")
    kind = kind_of(record)
    _profile_of(kind, profile)
    iat_s = to_unix(iat)
    notes: list[str] = []
    hcert = build_hcert(
        record,
        issuer_country=issuer_country,
        issued_at=dt.datetime.fromtimestamp(iat_s, dt.UTC),
        allow_dose_beyond_series=allow_dose_beyond_series,
        value_sets=value_sets,
        notes=notes,
    )
    until = recovery_valid_until(hcert)
    if until is not None:
        if until <= iat_s:
            raise DccRecordError(
                "r[0].du",
                f"{hcert['r'][0]['du']} has passed: the certificate would be expired when issued",
            )
        validity = dt.timedelta(seconds=until - iat_s)
    elif validity is None:
        validity = _DEFAULT_VALIDITY[kind]
    expiry = compute_expiry(iat_s, to_unix(dsc_not_after), validity)
    return _assemble(
        hcert, kind, kid, issuer_country, iat_s, expiry.exp, expiry.clipped, validity, tuple(notes)
    )


def reprepare(
    cert: PreparedCertificate, kid: bytes, dsc_not_after: dt.datetime | int
) -> PreparedCertificate:
    """Rebuild a prepared (not yet signed) certificate for another key.

    The HCERT (and so the UVCI), issuer and ``iat`` stay; the protected header names ``kid``,
    and ``exp`` is recomputed against the new DSC's notAfter.
    """
    validity = dt.timedelta(seconds=cert.validity_seconds)
    expiry = compute_expiry(cert.iat, to_unix(dsc_not_after), validity)
    return _assemble(
        cert.hcert,
        cert.kind,
        kid,
        cert.issuer,
        cert.iat,
        expiry.exp,
        expiry.clipped,
        validity,
        cert.notes,
    )


def _assemble(
    hcert: dict[str, Any],
    kind: str,
    kid: bytes,
    issuer: str,
    iat: int,
    exp: int,
    clipped: bool,
    validity: dt.timedelta,
    notes: tuple[str, ...] = (),
) -> PreparedCertificate:
    protected = _protected_header(kid)
    payload = encode_claims(hcert, issuer=issuer, iat=iat, exp=exp)
    return PreparedCertificate(
        protected=protected,
        payload=payload,
        digest=sig_structure_digest(protected, payload),
        hcert=hcert,
        uvci=str(hcert[kind][0]["ci"]),
        iat=iat,
        exp=exp,
        exp_clipped=clipped,
        kid=kid,
        issuer=issuer,
        validity_seconds=int(validity.total_seconds()),
        kind=kind,
        notes=notes,
    )


# Every certificate of a key has the same protected header.
_protected_header = functools.lru_cache(maxsize=64)(protected_header)


def prepare(
    records: Sequence[Mapping[str, Any]],
    kid: bytes,
    issuer_country: str,
    iat: dt.datetime | int,
    dsc_not_after: dt.datetime | int,
    *,
    validity: dt.timedelta | None = None,
    allow_dose_beyond_series: bool = False,
    profile: str | None = None,
    value_sets: ValueSets | None = None,
) -> list[PreparedCertificate]:
    """Run :func:`prepare_one` on every record; a record error names its index
    (``records[3].v[0].dn: ...``)."""
    return _prepare_all(
        records,
        lambda record: prepare_one(
            record,
            kid,
            issuer_country,
            iat,
            dsc_not_after,
            validity=validity,
            allow_dose_beyond_series=allow_dose_beyond_series,
            profile=profile,
            value_sets=value_sets,
        ),
    )


def _prepare_all(
    records: Sequence[Mapping[str, Any]],
    prepare_record: Callable[[Mapping[str, Any]], PreparedCertificate],
) -> list[PreparedCertificate]:
    prepared = []
    for index, record in enumerate(records):
        try:
            prepared.append(prepare_record(record))
        except DccRecordError as exc:
            raise DccRecordError(f"records[{index}].{exc.field}", exc.problem) from exc
    return prepared


class SignatureMismatch(DccError):
    """A signature does not verify under the DSC of the kid it was made for: the signer used
    another key or returned a broken signature. Nothing signed by it should be handed out."""


def finish(
    prepared: Sequence[PreparedCertificate],
    signatures: Sequence[bytes],
    *,
    verify_with: ec.EllipticCurvePublicKey | None = None,
    check: SignatureCheck | None = None,
) -> list[str]:
    """Assemble COSE_Sign1 messages and return their ``HC1:`` strings, in order.

    With ``verify_with`` (the DSC's public key) signatures are checked before anything is
    returned, so a signer using the wrong key cannot leak unusable certificates: every one, or
    those ``check`` picks (:class:`~signer.dcc.sigcheck.SignatureCheck`).
    """
    if len(signatures) != len(prepared):
        raise DccError(f"got {len(signatures)} signatures for {len(prepared)} certificates")
    return [
        finish_one(cert, signature, verify_with=verify_with, check=check, index=index)
        for index, (cert, signature) in enumerate(zip(prepared, signatures, strict=True))
    ]


def finish_one(
    cert: PreparedCertificate,
    signature: bytes,
    *,
    verify_with: ec.EllipticCurvePublicKey | None = None,
    check: SignatureCheck | None = None,
    index: int = 0,
) -> str:
    """The ``HC1:`` string of one signed certificate (see :func:`finish`).

    Raises :class:`SignatureMismatch` for a signature that is checked and does not verify
    (``index`` names it), :class:`DccError` when the string does not fit a QR code.
    """
    if verify_with is not None and (check is None or check.wanted(cert.kid)):
        _check(verify_with, cert, signature, index)
    hc1 = encode_hc1(assemble_sign1(cert.protected, cert.payload, signature))
    check_qr_length(hc1)  # the characters are right by construction (base45)
    return hc1


class ChunkSigner:
    """Signs prepared certificates chunk by chunk and follows key rotations.

    ``key`` is the key the certificates were prepared for. When the signer refuses its kid
    (see :func:`rotated_kid`) and can name its current key (:class:`KeySource`), the chunk is
    re-prepared for the new key and signed again, at most ``max_rotations`` times per chunk;
    later chunks are prepared for the new key directly. With ``verify`` signatures are checked
    against the DSC of the kid in their header before the certificates are returned: every
    one, or those ``check`` picks.
    """

    def __init__(
        self,
        signer: DigestSigner,
        key: IssuingKey,
        *,
        profile: str = DEFAULT_PROFILE,
        verify: bool = True,
        max_rotations: int = MAX_ROTATIONS_PER_CHUNK,
        check: SignatureCheck | None = None,
    ) -> None:
        self.key = key
        self.rotations = 0
        self.check = check
        self._signer = signer
        self._profile = profile
        self._verify = verify
        self._max_rotations = max_rotations

    def sign(
        self, prepared: Sequence[PreparedCertificate]
    ) -> tuple[list[PreparedCertificate], list[str]]:
        """Return the certificates as signed (re-prepared after a rotation) and their HC1s."""
        certs, signatures = self.sign_digests(prepared)
        return certs, finish(certs, signatures, verify_with=self.verify_with(), check=self.check)

    def sign_digests(
        self, prepared: Sequence[PreparedCertificate]
    ) -> tuple[list[PreparedCertificate], list[bytes]]:
        """Have the digests signed, following rotations; return the certificates as signed
        (all for :attr:`key`) and their raw signatures, not yet checked or encoded."""
        if not prepared:
            return [], []
        certs = self._for_current_key(prepared)
        attempts = 0
        while True:
            try:
                signatures = self._signer.sign(
                    self._profile, self.key.kid, [cert.digest for cert in certs]
                )
            except Exception as error:
                current = rotated_kid(error)
                if current is None or not isinstance(self._signer, KeySource):
                    raise
                if attempts >= self._max_rotations:
                    raise DccError(
                        f"the signing key changed {attempts} times while signing one chunk;"
                        f" last refusal: {error}"
                    ) from error
                attempts += 1
                self._follow(current)
                certs = self._for_current_key(certs)
                continue
            if len(signatures) != len(certs):
                raise DccError(f"got {len(signatures)} signatures for {len(certs)} certificates")
            return certs, list(signatures)

    def verify_with(self) -> ec.EllipticCurvePublicKey | None:
        """The public key signatures are checked with (``None`` without ``verify``)."""
        if not self._verify:
            return None
        if self.key.public_key is None:
            raise DccError("the DSC's key is not an EC key; cannot check ES256 signatures")
        return self.key.public_key

    def _for_current_key(
        self, prepared: Sequence[PreparedCertificate]
    ) -> list[PreparedCertificate]:
        return [
            cert if cert.kid == self.key.kid else reprepare(cert, self.key.kid, self.key.not_after)
            for cert in prepared
        ]

    def _follow(self, refused_for: bytes) -> None:
        assert isinstance(self._signer, KeySource)
        kid, dsc_der = self._signer.signing_key(self._profile)
        if kid == self.key.kid:
            raise DccError(
                f"the signer refused kid {kid.hex()} (current: {refused_for.hex()}) but still"
                " reports it as its signing key"
            )
        new = IssuingKey.from_dsc(kid, dsc_der)
        if self.key.country and new.country and new.country != self.key.country:
            raise DccError(
                f"the new signing key's DSC is for {new.country}, not {self.key.country};"
                " refusing to change the issuing country mid-batch"
            )
        self.key = new
        self.rotations += 1


def issue(
    records: Sequence[Mapping[str, Any]],
    signer: DigestSigner,
    kid: bytes,
    *,
    issuer_country: str,
    dsc_not_after: dt.datetime | int,
    profile: str = DEFAULT_PROFILE,
    iat: dt.datetime | int | None = None,
    validity: dt.timedelta | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    verify_with: ec.EllipticCurvePublicKey | None = None,
    allow_dose_beyond_series: bool = False,
    value_sets: ValueSets | None = None,
) -> list[str]:
    """Prepare, sign (in chunks of ``chunk_size`` digests) and finish; return ``HC1:`` strings.

    ``kid`` signs ``profile``, so every record must be of that profile's kind. ``iat``
    defaults to now. All records are validated before the first digest is signed.
    When the signer refuses ``kid`` because of a rotation and is a :class:`KeySource`, the
    remaining certificates are rebuilt for the new key (see :class:`ChunkSigner`); after a
    rotation signatures are checked against the new DSC when ``verify_with`` was given.
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
        profile=profile,
        value_sets=value_sets,
    )
    key = IssuingKey(
        kid=kid,
        not_after=dt.datetime.fromtimestamp(to_unix(dsc_not_after), dt.UTC),
        public_key=verify_with,
        country=None,
    )
    chunks = ChunkSigner(signer, key, profile=profile, verify=verify_with is not None)
    out: list[str] = []
    for start in range(0, len(prepared), chunk_size):
        out += chunks.sign(prepared[start : start + chunk_size])[1]
    return out


class RotatingSigner(DigestSigner, KeySource, Protocol):
    """A signer that names its key and signs with it (e.g. ``SignerClient.dcc_signer()``)."""


def issue_records(
    records: Sequence[Mapping[str, Any]],
    signer: RotatingSigner,
    *,
    profile: str | None = None,
    issuer_country: str | None = None,
    iat: dt.datetime | int | None = None,
    validity: dt.timedelta | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    allow_dose_beyond_series: bool = False,
    value_sets: ValueSets | None = None,
) -> list[str]:
    """Issue certificates with whatever keys sign their profiles now; return ``HC1:`` strings.

    Each record is signed by the key of its kind's profile (``profile``, when given, must
    match every record). Kids, DSC notAfter and (by default) the issuing country come from the
    signer; every record is validated before anything is signed; every signature is checked
    against the DSC; a rotation during the batch is followed (:class:`ChunkSigner`).
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    wanted = _prepare_all_profiles(records, profile)
    keys: dict[str, IssuingKey] = {}
    for name in dict.fromkeys(wanted):
        keys[name] = IssuingKey.from_dsc(*signer.signing_key(name), profile=name)
        if not (issuer_country or keys[name].country):
            raise DccError(f"the {name} DSC has no subject country; pass issuer_country")
    issued_at = math.floor(time.time()) if iat is None else iat
    prepared = _prepare_all(
        records,
        lambda record: _prepare_for(
            record, keys, issuer_country, issued_at, validity, allow_dose_beyond_series, value_sets
        ),
    )
    signers = {
        name: ChunkSigner(signer, key, profile=name, verify=True) for name, key in keys.items()
    }
    out: list[str] = [""] * len(prepared)
    for start in range(0, len(prepared), chunk_size):
        for name, chunks in signers.items():
            indices = [
                i
                for i in range(start, min(start + chunk_size, len(prepared)))
                if prepared[i].profile == name
            ]
            if indices:
                hc1s = chunks.sign([prepared[i] for i in indices])[1]
                for i, hc1 in zip(indices, hc1s, strict=True):
                    out[i] = hc1
    return out


def _prepare_all_profiles(records: Sequence[Mapping[str, Any]], profile: str | None) -> list[str]:
    profiles = []
    for index, record in enumerate(records):
        try:
            profiles.append(profile_for(record, profile))
        except DccRecordError as exc:
            raise DccRecordError(f"records[{index}].{exc.field}", exc.problem) from exc
    return profiles


def _prepare_for(
    record: Mapping[str, Any],
    keys: Mapping[str, IssuingKey],
    issuer_country: str | None,
    iat: dt.datetime | int,
    validity: dt.timedelta | None,
    allow_dose_beyond_series: bool,
    value_sets: ValueSets | None,
) -> PreparedCertificate:
    key = keys[profile_for(record)]
    return prepare_one(
        record,
        key.kid,
        issuer_country or str(key.country),
        iat,
        key.not_after,
        validity=validity,
        allow_dose_beyond_series=allow_dose_beyond_series,
        value_sets=value_sets,
    )


def _check(
    public_key: ec.EllipticCurvePublicKey, cert: PreparedCertificate, signature: bytes, index: int
) -> None:
    try:
        if len(signature) != 64:
            raise ValueError("not a raw r||s signature")
        der = encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        signed = sig_structure(cert.protected, cert.payload)
        public_key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise SignatureMismatch(
            f"signature {index} does not verify under the DSC's public key; "
            "the signer used another key or returned a non-raw signature"
        ) from None
