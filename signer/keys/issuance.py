"""Certificate issuance through a SignDigest: the dev CSCA and the DSCs it issues.

Production DSCs come from the offline national CSCA; these functions serve development, tests
and demonstrations, and build the same profile (DCC DSC: C in the subject, keyUsage
digitalSignature, AKI of the CSCA, optional DCC extended key usages).
"""

import secrets
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from asn1crypto import keys, x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from signer.errors import CertificateError
from signer.keys.csr import verify_csr
from signer.keys.names import build_name, name_country
from signer.keys.pem import load_certificate
from signer.keys.sign_digest import SignDigest, sign_to_der
from signer.keys.spki import load_p256_spki, require_p256, subject_key_identifier
from signer.keys.utc import require_utc

ECDSA_WITH_SHA256 = "sha256_ecdsa"
_UTC_TIME_LAST_YEAR = 2049


def random_serial_number() -> int:
    """A random positive serial number that encodes in exactly 16 bytes (126 random bits)."""
    return secrets.randbits(126) | (1 << 126)


def _time(value: datetime) -> Any:
    # RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime after; no fractional seconds.
    moment = require_utc(value, "certificate validity time").replace(microsecond=0)
    if moment.year <= _UTC_TIME_LAST_YEAR:
        return x509.Time({"utc_time": moment})
    return x509.Time({"general_time": moment})


def _extension(extn_id: str, value: object, *, critical: bool) -> Any:
    return x509.Extension({"extn_id": extn_id, "critical": critical, "extn_value": value})


def _issuer_parts(
    issuer_certificate_der: bytes, start: datetime, end: datetime
) -> tuple[Any, bytes, bytes]:
    """Name, key identifier and P-256 SPKI of an issuer certificate; checks its validity."""
    issuer = load_certificate(issuer_certificate_der)
    spki = load_p256_spki(bytes(issuer.public_key.dump()), "the issuer certificate")
    ski = issuer.key_identifier
    if start < issuer.not_valid_before or end > issuer.not_valid_after:
        raise CertificateError(
            "issuer validity check failed: the requested validity "
            f"{start.isoformat()} .. {end.isoformat()} lies outside the issuer's "
            f"{issuer.not_valid_before.isoformat()} .. {issuer.not_valid_after.isoformat()}; "
            "shorten the validity or renew the issuer"
        )
    return issuer.subject, bytes(ski) if ski is not None else subject_key_identifier(spki), spki


def issue_certificate(
    *,
    subject_name_der: bytes,
    subject_spki_der: bytes,
    not_before: datetime,
    not_after: datetime,
    sign: SignDigest,
    issuer_certificate_der: bytes | None,
    is_ca: bool,
    key_usage: Iterable[str],
    extended_key_usages: Iterable[str] = (),
    serial_number: int | None = None,
) -> bytes:
    """Build and sign an X.509 v3 certificate; return its DER.

    ``issuer_certificate_der=None`` makes a self-signed certificate (``sign`` then signs with
    the subject's own key). Otherwise the issuer name and authority key identifier come from
    the issuer certificate, whose EC P-256 key ``sign`` must use, and the validity must lie
    inside the issuer's. ``key_usage`` holds asn1crypto KeyUsage names (``digital_signature``,
    ``key_cert_sign``, ``crl_sign``); ``extended_key_usages`` holds dotted OIDs. The serial
    number defaults to :func:`random_serial_number`. The signature is verified before the
    certificate is returned.
    """
    start = require_utc(not_before, "not_before")
    end = require_utc(not_after, "not_after")
    if end <= start:
        raise CertificateError(
            f"validity check failed: not_after {end.isoformat()} is not after not_before "
            f"{start.isoformat()}; give a validity window that ends after it starts"
        )
    subject_spki = load_p256_spki(subject_spki_der, "the key to certify")
    subject_name = x509.Name.load(subject_name_der)
    subject_ski = subject_key_identifier(subject_spki)
    if issuer_certificate_der is None:
        issuer_name, issuer_ski, issuer_spki = subject_name, subject_ski, subject_spki
    else:
        issuer_name, issuer_ski, issuer_spki = _issuer_parts(issuer_certificate_der, start, end)

    usages = set(key_usage)
    extensions = []
    if is_ca:
        extensions.append(
            _extension("basic_constraints", {"ca": True, "path_len_constraint": 0}, critical=True)
        )
    extensions.append(_extension("key_usage", x509.KeyUsage(usages), critical=True))
    eku_oids = list(extended_key_usages)
    if eku_oids:
        extensions.append(
            _extension("extended_key_usage", x509.ExtKeyUsageSyntax(eku_oids), critical=False)
        )
    extensions.append(_extension("key_identifier", subject_ski, critical=False))
    extensions.append(
        _extension("authority_key_identifier", {"key_identifier": issuer_ski}, critical=False)
    )

    tbs = x509.TbsCertificate(
        {
            "version": "v3",
            "serial_number": serial_number if serial_number is not None else random_serial_number(),
            "signature": {"algorithm": ECDSA_WITH_SHA256},
            "issuer": issuer_name,
            "validity": {"not_before": _time(start), "not_after": _time(end)},
            "subject": subject_name,
            "subject_public_key_info": keys.PublicKeyInfo.load(subject_spki),
            "extensions": extensions,
        }
    )
    tbs_der = tbs.dump()
    signature = sign_to_der(tbs_der, sign)
    issuer_key = require_p256(serialization.load_der_public_key(issuer_spki), "the issuer")
    try:
        issuer_key.verify(signature, tbs_der, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise CertificateError(
            "issuer signature check failed: the signing callable does not use the issuer's key "
            "(or the HSM returned a faulty signature); sign with the key of the issuer certificate"
        ) from exc
    certificate = x509.Certificate(
        {
            "tbs_certificate": tbs,
            "signature_algorithm": {"algorithm": ECDSA_WITH_SHA256},
            "signature_value": signature,
        }
    )
    return bytes(certificate.dump())


def issue_self_signed_csca(
    *,
    spki_der: bytes,
    subject: Mapping[str, str],
    sign: SignDigest,
    not_before: datetime,
    not_after: datetime,
) -> bytes:
    """A self-signed development CSCA certificate (CA:true, pathlen 0, keyCertSign + cRLSign)."""
    return issue_certificate(
        subject_name_der=build_name(subject),
        subject_spki_der=spki_der,
        not_before=not_before,
        not_after=not_after,
        sign=sign,
        issuer_certificate_der=None,
        is_ca=True,
        key_usage={"key_cert_sign", "crl_sign"},
    )


def issue_dsc(
    *,
    csca_der: bytes,
    csca_sign: SignDigest,
    subject_spki_der: bytes,
    subject_name_der: bytes,
    not_before: datetime,
    not_after: datetime,
    extended_key_usages: Iterable[str] = (),
) -> bytes:
    """A Document Signer Certificate issued by ``csca_der`` (signing through ``csca_sign``).

    keyUsage digitalSignature (critical), SKI, AKI = the CSCA's SKI, a random 16-byte serial,
    optional DCC extended key usages (see :func:`signer.keys.profiles.eku_for_profile`). The
    subject must carry a country (C).
    """
    if name_country(x509.Name.load(subject_name_der)) is None:
        raise CertificateError(
            "subject country check failed: a DSC subject must carry a country (C); "
            "add country_name to the subject"
        )
    return issue_certificate(
        subject_name_der=subject_name_der,
        subject_spki_der=subject_spki_der,
        not_before=not_before,
        not_after=not_after,
        sign=csca_sign,
        issuer_certificate_der=csca_der,
        is_ca=False,
        key_usage={"digital_signature"},
        extended_key_usages=extended_key_usages,
    )


def issue_dsc_from_csr(
    *,
    csca_der: bytes,
    csca_sign: SignDigest,
    csr: bytes,
    not_before: datetime,
    not_after: datetime,
    extended_key_usages: Iterable[str] = (),
) -> bytes:
    """Verify ``csr`` (PEM or DER), then issue a DSC for its key and subject (as `issue_dsc`)."""
    request = verify_csr(csr)
    return issue_dsc(
        csca_der=csca_der,
        csca_sign=csca_sign,
        subject_spki_der=request.spki_der,
        subject_name_der=request.subject_der,
        not_before=not_before,
        not_after=not_after,
        extended_key_usages=extended_key_usages,
    )
