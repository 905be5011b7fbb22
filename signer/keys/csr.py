"""PKCS#10 certificate signing requests: build one for an HSM key, check one received."""

from collections.abc import Mapping
from dataclasses import dataclass

from asn1crypto import csr, keys, x509
from cryptography import x509 as cx509

from signer.errors import CertificateError
from signer.keys.names import build_name, name_country, name_text
from signer.keys.pem import csr_der
from signer.keys.sign_digest import SignDigest, sign_to_der
from signer.keys.spki import load_p256_spki

ECDSA_WITH_SHA256 = "sha256_ecdsa"


@dataclass(frozen=True)
class CsrInfo:
    """What a verified CSR asks for."""

    spki_der: bytes
    """SubjectPublicKeyInfo of the requested key (EC P-256, normal DER form)."""
    subject_der: bytes
    """DER of the requested subject Name, exactly as in the CSR."""
    subject: str
    """The subject rendered for people."""
    country: str | None
    """The subject's country (C), if any."""
    der: bytes
    """The CSR itself (DER)."""


def build_csr(spki_der: bytes, subject: Mapping[str, str], sign: SignDigest) -> bytes:
    """Build a DER PKCS#10 CSR for the key ``spki_der``, self-signed through ``sign``.

    ``subject`` is a dict such as ``{"country_name": "VN", "organization_name": "...",
    "common_name": "..."}``. The signature is ecdsa-with-SHA256. The result is verified
    against ``spki_der`` before it is returned, so a signing callable that uses another key
    raises :class:`CertificateError` instead of producing a useless CSR.
    """
    normal_spki = load_p256_spki(spki_der, "the key to certify")
    info = csr.CertificationRequestInfo(
        {
            "version": "v1",
            "subject": x509.Name.load(build_name(subject)),
            "subject_pk_info": keys.PublicKeyInfo.load(normal_spki),
            "attributes": [],
        }
    )
    signature = sign_to_der(info.dump(), sign)
    request = csr.CertificationRequest(
        {
            "certification_request_info": info,
            "signature_algorithm": {"algorithm": ECDSA_WITH_SHA256},
            "signature": signature,
        }
    )
    der = bytes(request.dump())
    verify_csr(der)
    return der


def verify_csr(data: bytes) -> CsrInfo:
    """Check a CSR (PEM or DER): well formed, EC P-256 key, valid self-signature.

    Returns the requested key and subject. Raises :class:`CertificateError` naming the check
    that failed.
    """
    der = csr_der(data)
    try:
        request = cx509.load_der_x509_csr(der)
    except ValueError as exc:
        raise CertificateError(f"CSR parse check failed: {exc}") from exc
    info = csr.CertificationRequest.load(der)["certification_request_info"]
    spki_der = load_p256_spki(bytes(info["subject_pk_info"].dump()), "the CSR")
    if not request.is_signature_valid:
        raise CertificateError(
            "CSR signature check failed: the CSR is not signed by the key it contains; "
            "generate the CSR again with the HSM key it names"
        )
    subject = info["subject"]
    return CsrInfo(
        spki_der=spki_der,
        subject_der=bytes(subject.dump()),
        subject=name_text(subject),
        country=name_country(subject),
        der=der,
    )
