"""Certificates and CSRs in PEM or DER: read them strictly, write them as PEM."""

from typing import Any

from asn1crypto import csr, pem, x509
from cryptography import x509 as cx509

from signer.errors import CertificateError

_CERTIFICATE_PEM_TYPES = ("CERTIFICATE",)
_CSR_PEM_TYPES = ("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST")


def _der_from_pem_or_der(data: bytes, pem_types: tuple[str, ...], what: str) -> bytes:
    if not data:
        raise CertificateError(f"{what} parse check failed: the input is empty")
    if not pem.detect(data):
        return data
    try:
        blocks = list(pem.unarmor(data, multiple=True))
    except (ValueError, TypeError) as exc:
        raise CertificateError(
            f"{what} parse check failed: the PEM armour is damaged ({exc}); export it again"
        ) from exc
    if len(blocks) != 1:
        raise CertificateError(
            f"{what} parse check failed: the PEM input holds {len(blocks)} blocks; give exactly "
            f"one {pem_types[0]} block"
        )
    type_name, _headers, der = blocks[0]
    if type_name not in pem_types:
        raise CertificateError(
            f"{what} parse check failed: the PEM block is a {type_name!r}, "
            f"expected {pem_types[0]!r}"
        )
    return bytes(der)


def _force_parse(value: Any, what: str) -> None:
    try:
        value.native  # noqa: B018 - decodes every field so that damage shows up here
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
        raise CertificateError(
            f"{what} parse check failed: the DER does not decode ({exc}); "
            "make sure the file is the right one and not truncated"
        ) from exc


def load_certificate(data: bytes) -> Any:
    """Parse a PEM or DER X.509 certificate strictly; return the asn1crypto ``Certificate``.

    Raises :class:`CertificateError` for anything that is not exactly one well-formed
    certificate (garbage, a truncated file, trailing bytes, another PEM type).
    """
    der = _der_from_pem_or_der(data, _CERTIFICATE_PEM_TYPES, "certificate")
    try:
        certificate = x509.Certificate.load(der, strict=True)
        cx509.load_der_x509_certificate(der)
    except (ValueError, TypeError) as exc:
        raise CertificateError(
            f"certificate parse check failed: the input is not an X.509 certificate in PEM or "
            f"DER ({exc}); give the DSC file the CSCA returned"
        ) from exc
    _force_parse(certificate, "certificate")
    return certificate


def certificate_der(data: bytes) -> bytes:
    """DER bytes of a certificate given as PEM or DER (checked as in :func:`load_certificate`)."""
    return bytes(load_certificate(data).dump())


def csr_der(data: bytes) -> bytes:
    """DER bytes of a PKCS#10 CSR given as PEM or DER; refuses anything else."""
    der = _der_from_pem_or_der(data, _CSR_PEM_TYPES, "CSR")
    try:
        request = csr.CertificationRequest.load(der, strict=True)
    except (ValueError, TypeError) as exc:
        raise CertificateError(
            f"CSR parse check failed: the input is not a PKCS#10 request in PEM or DER ({exc})"
        ) from exc
    _force_parse(request, "CSR")
    return bytes(request.dump())


def certificate_pem(der: bytes) -> bytes:
    """PEM armour (``CERTIFICATE``) of a DER certificate."""
    return bytes(pem.armor("CERTIFICATE", der))


def csr_pem(der: bytes) -> bytes:
    """PEM armour (``CERTIFICATE REQUEST``) of a DER CSR."""
    return bytes(pem.armor("CERTIFICATE REQUEST", der))
