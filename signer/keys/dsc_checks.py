"""Checks a Document Signer Certificate must pass before it is attached to an HSM key."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509 as cx509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from signer.errors import CertificateError
from signer.keys.kid import kid_for_certificate
from signer.keys.names import name_country, name_text
from signer.keys.pem import load_certificate
from signer.keys.profiles import eku_for_profile, profile_of_eku, require_profile
from signer.keys.spki import describe_public_key, load_p256_spki
from signer.keys.utc import require_utc

DEFAULT_MIN_REMAINING = timedelta(days=365)


class DscLifetimeTooShort(CertificateError):
    """The DSC expires too soon: credentials signed now would outlive it."""


@dataclass(frozen=True)
class DscInfo:
    """A DSC that passed :func:`check_dsc`, with the facts the key record needs."""

    kid: bytes
    """First 8 bytes of SHA-256 over ``der``."""
    subject: str
    issuer: str
    country: str
    serial_number: int
    not_before: datetime
    not_after: datetime
    spki_der: bytes
    """The certified public key (normal DER form)."""
    ekus: tuple[str, ...]
    """All extended key usage OIDs of the DSC (dotted), empty when it has none."""
    der: bytes


def _check_public_key(certificate: Any, expected_spki_der: bytes) -> bytes:
    spki = load_p256_spki(bytes(certificate.public_key.dump()), "the DSC")
    expected = load_p256_spki(expected_spki_der, "the HSM key")
    if spki != expected:
        raise CertificateError(
            "public key match check failed: the DSC certifies another key than the HSM key it "
            "is imported for; import the DSC issued for this key's CSR (or pick the right key id)"
        )
    return spki


_CA_KEY_USAGES = {"key_cert_sign": "keyCertSign", "crl_sign": "cRLSign"}


def _check_end_entity(certificate: Any) -> None:
    constraints = certificate.basic_constraints_value
    if constraints is not None and constraints["ca"].native:
        raise CertificateError(
            "basicConstraints check failed: the DSC is a CA certificate (CA:true), so its key "
            "could certify other keys; ask the CSCA for a DSC without CA:true"
        )


def _check_key_usage(certificate: Any) -> None:
    key_usage = certificate.key_usage_value
    if key_usage is None or "digital_signature" not in key_usage.native:
        raise CertificateError(
            "keyUsage check failed: the DSC's keyUsage lacks digitalSignature; ask the CSCA "
            "for a DSC with keyUsage digitalSignature"
        )
    ca_usages = [name for usage, name in _CA_KEY_USAGES.items() if usage in key_usage.native]
    if ca_usages:
        raise CertificateError(
            f"keyUsage check failed: the DSC's keyUsage allows {', '.join(ca_usages)}, which "
            "belong to a CA, not to a document signer; ask the CSCA for a DSC with keyUsage "
            "digitalSignature and without keyCertSign and cRLSign"
        )


def _check_validity(
    not_before: datetime, not_after: datetime, now: datetime, min_remaining: timedelta
) -> None:
    if now < not_before:
        raise CertificateError(
            f"validity check failed: the DSC is not valid yet (valid from "
            f"{not_before.isoformat()}, now {now.isoformat()}); import it once it is valid "
            "or check the clock"
        )
    if now >= not_after:
        raise CertificateError(
            f"validity check failed: the DSC expired at {not_after.isoformat()}; "
            "request a new DSC from the CSCA"
        )
    if not_after < now + min_remaining:
        left = not_after - now
        raise DscLifetimeTooShort(
            f"remaining lifetime check failed: the DSC expires at {not_after.isoformat()}, "
            f"{left.days} days from now, but it must stay valid at least {min_remaining.days} "
            "days so that credentials signed now never outlive it; request a DSC valid until "
            f"at least {(now + min_remaining).isoformat()}"
        )


def _eku_text(oid: Any) -> str:
    dotted = str(oid.dotted)
    name = str(oid.native)
    return dotted if name == dotted else f"{name} ({dotted})"


def _check_ekus(certificate: Any, profile: str) -> tuple[str, ...]:
    eku = certificate.extended_key_usage_value
    if eku is None:
        return ()
    if len(eku) == 0:
        raise CertificateError(
            "extended key usage check failed: the DSC's extendedKeyUsage extension is empty "
            "(RFC 5280 needs at least one purpose); ask the CSCA for a DSC with the DCC EKU of "
            "the profile or without the extension"
        )
    foreign = [_eku_text(oid) for oid in eku if profile_of_eku(str(oid.dotted)) is None]
    if foreign:
        raise CertificateError(
            f"extended key usage check failed: the DSC allows {', '.join(foreign)} besides or "
            "instead of the DCC certificate types, so its key would be trusted for other "
            "purposes too; ask the CSCA for a DSC whose extendedKeyUsage holds only DCC EKUs "
            f"(such as {eku_for_profile(profile)} for {profile}) or no extendedKeyUsage at all"
        )
    dcc_profiles = {p for p in (profile_of_eku(str(oid.dotted)) for oid in eku) if p is not None}
    if profile not in dcc_profiles:
        raise CertificateError(
            f"extended key usage check failed: the DSC is restricted to "
            f"{', '.join(sorted(dcc_profiles))} certificates but is imported for profile "
            f"{profile!r}; import it for the matching profile or request a DSC with that EKU"
        )
    return tuple(str(oid.dotted) for oid in eku)


_CSCA_FIX = "fix `[keys] csca_cert`: it must name the national CSCA certificate"
_CSCA_CURVES = (
    ec.SECP256R1,
    ec.SECP384R1,
    ec.SECP521R1,
    ec.BrainpoolP256R1,
    ec.BrainpoolP384R1,
    ec.BrainpoolP512R1,
)
_CSCA_MIN_RSA_BITS = 3000
_CSCA_MIN_RSA_EXPONENT = 2**16 + 1


def _check_csca_public_key(public_key: object) -> None:
    if isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(
        public_key.curve, _CSCA_CURVES
    ):
        return
    if (
        isinstance(public_key, rsa.RSAPublicKey)
        and public_key.key_size >= _CSCA_MIN_RSA_BITS
        and public_key.public_numbers().e >= _CSCA_MIN_RSA_EXPONENT
    ):
        return
    raise CertificateError(
        f"CSCA public key check failed: the CSCA certificate holds a "
        f"{describe_public_key(public_key)} key, but a CSCA key must be EC on P-256, P-384, "
        "P-521 or brainpoolP256r1/P384r1/P512r1, or RSA of at least 3000 bits with an exponent "
        f"above 2^16; {_CSCA_FIX}"
    )


def _check_csca(csca: Any, csca_key: object, now: datetime) -> None:
    constraints = csca.basic_constraints_value
    if constraints is None or not constraints["ca"].native:
        raise CertificateError(
            "CSCA basicConstraints check failed: the CSCA certificate is not a CA (no "
            f"basicConstraints CA:true); {_CSCA_FIX}"
        )
    key_usage = csca.key_usage_value
    if key_usage is None or "key_cert_sign" not in key_usage.native:
        raise CertificateError(
            "CSCA keyUsage check failed: the CSCA certificate's keyUsage lacks keyCertSign, so "
            f"it may not certify DSCs; {_CSCA_FIX}"
        )
    not_before = require_utc(csca.not_valid_before, "CSCA not_before")
    not_after = require_utc(csca.not_valid_after, "CSCA not_after")
    if now < not_before:
        raise CertificateError(
            f"CSCA validity check failed: the CSCA certificate is not valid yet (valid from "
            f"{not_before.isoformat()}, now {now.isoformat()}); check the clock, or {_CSCA_FIX}"
        )
    if now >= not_after:
        raise CertificateError(
            f"CSCA validity check failed: the CSCA certificate expired at "
            f"{not_after.isoformat()}; {_CSCA_FIX} in force now, and import a DSC it issued"
        )
    _check_csca_public_key(csca_key)


def _check_issued_by_csca(certificate: Any, dsc_der: bytes, csca_der: bytes, now: datetime) -> None:
    try:
        csca = load_certificate(csca_der)
    except CertificateError as exc:
        raise CertificateError(f"CSCA {exc}") from exc
    csca_certificate = cx509.load_der_x509_certificate(bytes(csca.dump()))
    _check_csca(csca, csca_certificate.public_key(), now)
    if certificate.issuer != csca.subject:
        raise CertificateError(
            f"issuer name check failed: the DSC was issued by {name_text(certificate.issuer)!r}, "
            f"not by the CSCA {name_text(csca.subject)!r}; give the CSCA that issued this DSC"
        )
    try:
        cx509.load_der_x509_certificate(dsc_der).verify_directly_issued_by(csca_certificate)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise CertificateError(
            "CSCA signature check failed: the DSC's signature does not verify with the CSCA "
            f"public key ({exc or 'invalid signature'}); the DSC was not issued by this CSCA "
            "or was altered"
        ) from exc
    aki = certificate.authority_key_identifier
    ski = csca.key_identifier
    if aki is not None and ski is not None and bytes(aki) != bytes(ski):
        raise CertificateError(
            "authority key identifier check failed: the DSC's AKI does not match the CSCA's "
            "subject key identifier; give the CSCA certificate of the key that issued the DSC"
        )


def check_dsc(
    dsc: bytes,
    expected_spki_der: bytes,
    profile: str,
    now: datetime,
    csca_der: bytes | None = None,
    min_remaining: timedelta = DEFAULT_MIN_REMAINING,
) -> DscInfo:
    """Check a DSC (PEM or DER) for import onto the HSM key ``expected_spki_der``.

    Checks, in order: X.509 parse; EC P-256 key; key equal to the HSM key; an end-entity
    certificate (no basicConstraints CA:true); keyUsage digitalSignature and neither
    keyCertSign nor cRLSign; ``now`` inside the validity window; at least ``min_remaining``
    validity left (:class:`DscLifetimeTooShort`); a country (C) in the subject; extended key
    usages; with ``csca_der``: the CSCA certificate itself, then issuer name, signature and
    AKI/SKI of the CSCA. Each refusal is a :class:`CertificateError` whose message names the
    check.

    A DSC without an extendedKeyUsage extension is valid for every profile. A DSC with one
    must list only DCC EKUs (current or older OID forms, see
    :func:`signer.keys.profiles.profile_of_eku`), one of them for ``profile``; several DCC
    profiles are fine. Any other EKU is refused even next to the right DCC EKU (serverAuth,
    anyExtendedKeyUsage, ...): it would let the signing key be trusted beyond DCC signing.

    The CSCA certificate must be a CA (basicConstraints CA:true) with keyUsage keyCertSign,
    valid at ``now``, with a key within what the eHealth Network certificate governance (§4.1)
    allows for a CSCA: EC on P-256, P-384, P-521 or brainpoolP256r1/P384r1/P512r1, or RSA
    of at least 3000 bits with an exponent above 2^16 (real CSCAs are not all P-256). Its
    refusals name a "CSCA ..." check and point at ``[keys] csca_cert``.
    """
    require_profile(profile)
    moment = require_utc(now, "now")
    certificate = load_certificate(dsc)
    der = bytes(certificate.dump())
    spki = _check_public_key(certificate, expected_spki_der)
    _check_end_entity(certificate)
    _check_key_usage(certificate)
    not_before = require_utc(certificate.not_valid_before, "DSC not_before")
    not_after = require_utc(certificate.not_valid_after, "DSC not_after")
    _check_validity(not_before, not_after, moment, min_remaining)
    country = name_country(certificate.subject)
    if country is None:
        raise CertificateError(
            "subject country check failed: the DSC subject has no country (C); "
            "ask the CSCA for a DSC whose subject names the issuing country"
        )
    ekus = _check_ekus(certificate, profile)
    if csca_der is not None:
        _check_issued_by_csca(certificate, der, csca_der, moment)
    return DscInfo(
        kid=kid_for_certificate(der),
        subject=name_text(certificate.subject),
        issuer=name_text(certificate.issuer),
        country=country,
        serial_number=int(certificate.serial_number),
        not_before=not_before,
        not_after=not_after,
        spki_der=spki,
        ekus=ekus,
        der=der,
    )
