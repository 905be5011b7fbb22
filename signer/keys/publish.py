"""What a country publishes, signed by its upload key (DCC Gateway NB_UP) inside the HSM.

* :func:`ensure_upload_key`: the upload key is generated in the HSM like every other key
  (sensitive, not extractable, sign only) under its own reserved label (``[hsm]
  upload_key_label``), with its own self-signed certificate stored beside it. The gateway
  operator onboards that certificate (by its SHA-256 thumbprint) out of band; a direct partner
  pins it.
* :func:`dsc_packages`: the DCC Gateway upload package of a DSC, CMS SignedData over the DSC's
  DER signed by the upload key (``POST /signerCertificate``), and its revocation package, the
  same structure the gateway takes to withdraw the DSC (``DELETE /signerCertificate``).
* :func:`csca_certificate`: the national CSCA certificate as configured, checked to be a CA,
  with the thumbprint partners compare out of band.
* :func:`sign_publication`: CMS SignedData over any bytes, e.g. the trust list for direct
  partners (``signer keys sign-trust-list``; ``signer dcc verify --trust-list`` checks it).

Only SHA-256 digests go to the HSM; nothing here knows gRPC.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from asn1crypto import x509 as asn1_x509

from signer.errors import CertificateError, ConfigError, InvalidRequest, KeyNotFound, PolicyError
from signer.hsm.api import Token, digest_signer
from signer.keys.cms import signed_data
from signer.keys.issuance import issue_certificate
from signer.keys.names import build_name, name_country, name_text
from signer.keys.pem import certificate_pem, load_certificate
from signer.keys.spki import load_p256_spki
from signer.keys.utc import require_utc

UPLOAD_CERT_VALIDITY = timedelta(days=730)
"""Validity of a new self-signed upload certificate (NB_UP): two years, like a DSC."""
UPLOAD_CERT_MIN_REMAINING = timedelta(days=30)
"""An upload certificate expiring sooner than this is replaced when the key is ensured."""
_KEY_ID = re.compile(r"(?:[0-9a-f]{2}){1,64}")


@dataclass(frozen=True)
class UploadKey:
    """The upload key in the HSM and its certificate."""

    key_id: str
    certificate_der: bytes
    created: bool
    """True when this call generated the key or issued a new certificate."""

    @property
    def thumbprint(self) -> str:
        """SHA-256 of the certificate's DER, hex: what the gateway operator onboards."""
        return hashlib.sha256(self.certificate_der).hexdigest()


@dataclass(frozen=True)
class DscPackages:
    """The DCC Gateway packages of one DSC, both CMS SignedData (DER) by the upload key."""

    dsc_der: bytes
    upload: bytes
    revocation: bytes
    upload_certificate_der: bytes


def ensure_upload_key(
    token: Token,
    label: str,
    country: str,
    now: datetime,
    validity: timedelta = UPLOAD_CERT_VALIDITY,
) -> UploadKey:
    """The upload key with label ``label``, generated in the HSM if missing, and a self-signed
    certificate for it (made, signed in the HSM and stored on the token when missing, not for
    this key, or valid for less than :data:`UPLOAD_CERT_MIN_REMAINING`)."""
    moment = require_utc(now, "now")
    created = False
    try:
        key_id = token.key_id_by_label(label)
    except KeyNotFound:
        key_id = token.generate_key(label).key_id
        created = True
    spki = token.public_key(key_id)
    current = token.certificate(key_id)
    if current is not None and _still_good(current, spki, moment):
        return UploadKey(key_id, current, created)
    der = issue_certificate(
        subject_name_der=build_name(
            {
                "country_name": country,
                "organization_name": f"DCC national backend {country}",
                "common_name": f"DCC upload {country} (NB_UP)",
            }
        ),
        subject_spki_der=spki,
        not_before=moment - timedelta(minutes=5),
        not_after=moment + validity,
        sign=digest_signer(token, key_id),
        issuer_certificate_der=None,
        is_ca=False,
        key_usage={"digital_signature"},
    )
    token.store_certificate(key_id, label, der)
    return UploadKey(key_id, der, True)


def upload_key(token: Token, label: str) -> UploadKey:
    """The existing upload key and certificate; refuses when either is missing."""
    try:
        key_id = token.key_id_by_label(label)
    except KeyNotFound:
        raise PolicyError(
            f"there is no upload key {label!r} in the HSM; create it first with"
            " `signer keys upload-key`"
        ) from None
    der = token.certificate(key_id)
    if der is None:
        raise PolicyError(
            f"the upload key {label!r} has no certificate; run `signer keys upload-key`"
        )
    return UploadKey(key_id, der, False)


def dsc_packages(token: Token, key_id: str, upload: UploadKey, now: datetime) -> DscPackages:
    """Upload and revocation packages for the DSC of HSM key ``key_id``; refused (nothing
    signed) when the key is unknown, has no DSC yet, or its certificate is not a DSC."""
    if not _KEY_ID.fullmatch(key_id):
        raise InvalidRequest(
            f"{key_id[:40]!r} is not a key id (hex); take it from `signer keys list`"
        )
    if key_id == upload.key_id:
        raise PolicyError("the upload key's own certificate is not a DSC; name a signing key")
    try:
        token.public_key(key_id)
    except KeyNotFound:
        raise KeyNotFound(
            f"key {key_id}: no such key in the HSM; take the key id from `signer keys list`"
        ) from None
    dsc = token.certificate(key_id)
    if dsc is None:
        raise PolicyError(
            f"key {key_id} has no DSC yet (pending): import the DSC the CSCA issued for it"
            " (`signer keys import-cert`) before publishing it"
        )
    _require_dsc(dsc, key_id)
    sign = digest_signer(token, upload.key_id)
    return DscPackages(
        dsc_der=dsc,
        upload=signed_data(dsc, upload.certificate_der, sign, now),
        revocation=signed_data(dsc, upload.certificate_der, sign, now),
        upload_certificate_der=upload.certificate_der,
    )


def sign_publication(token: Token, content: bytes, upload: UploadKey, now: datetime) -> bytes:
    """CMS SignedData over ``content`` by the upload key (DER)."""
    return signed_data(content, upload.certificate_der, digest_signer(token, upload.key_id), now)


@dataclass(frozen=True)
class CscaCertificate:
    """The national CSCA certificate as configured, checked to be a CA."""

    der: bytes
    subject: str
    country: str | None
    not_before: datetime
    not_after: datetime

    @property
    def pem(self) -> bytes:
        """The certificate in PEM."""
        return certificate_pem(self.der)

    def summary(self) -> dict[str, object]:
        """What partners compare out of band, as JSON-ready values."""
        return {
            "certificateType": "CSCA",
            "subject": self.subject,
            "country": self.country,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "sha256_thumbprint": hashlib.sha256(self.der).hexdigest(),
        }


def csca_certificate(path: Path | None) -> CscaCertificate:
    """The CSCA certificate ``[keys] csca_cert`` names; refused unless it is a CA certificate
    allowed to sign certificates."""
    if path is None:
        raise ConfigError("[keys] csca_cert is not set: there is no CSCA certificate to export")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"[keys] csca_cert {path}: {exc.strerror or exc}") from None
    certificate = load_certificate(data)
    constraints = certificate.basic_constraints_value
    usage = certificate.key_usage_value
    if constraints is None or not constraints["ca"].native:
        raise ConfigError(f"[keys] csca_cert {path} is not a CA certificate (no CA:true)")
    if usage is None or "key_cert_sign" not in usage.native:
        raise ConfigError(f"[keys] csca_cert {path} lacks keyUsage keyCertSign")
    return CscaCertificate(
        der=bytes(certificate.dump()),
        subject=name_text(certificate.subject),
        country=name_country(certificate.subject),
        not_before=require_utc(certificate.not_valid_before, "not_before"),
        not_after=require_utc(certificate.not_valid_after, "not_after"),
    )


def _still_good(der: bytes, spki: bytes, now: datetime) -> bool:
    try:
        certificate = load_certificate(der)
        same_key = load_p256_spki(bytes(certificate.public_key.dump())) == load_p256_spki(spki)
    except CertificateError:
        return False
    remaining = require_utc(certificate.not_valid_after, "not_after") - now
    return same_key and remaining >= UPLOAD_CERT_MIN_REMAINING


def _require_dsc(der: bytes, key_id: str) -> None:
    try:
        certificate = asn1_x509.Certificate.load(der)
        constraints = certificate.basic_constraints_value
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"key {key_id}: its certificate cannot be parsed: {exc}") from None
    if constraints is not None and constraints["ca"].native:
        raise PolicyError(f"key {key_id} holds a CA certificate, not a DSC; name a signing key")
