"""X.501 distinguished names built from, and rendered to, plain dictionaries."""

from collections.abc import Mapping
from typing import Any

from asn1crypto import x509

from signer.errors import CertificateError


def build_name(subject: Mapping[str, str]) -> bytes:
    """DER of an X.501 Name from ``{"country_name": "VN", "common_name": ...}``.

    Keys are asn1crypto attribute names (``country_name``, ``organization_name``,
    ``organizational_unit_name``, ``common_name``, ...). The country must be two upper-case
    letters (ISO 3166-1 alpha-2); other values are UTF8String.
    """
    if not subject:
        raise CertificateError("subject check failed: the subject is empty; give at least C and CN")
    country = subject.get("country_name")
    if country is not None and (
        len(country) != 2 or not country.isascii() or not country.isupper()
    ):
        raise CertificateError(
            f"subject check failed: country_name {country!r} is not an ISO 3166-1 alpha-2 "
            "code; use two upper-case letters such as 'VN'"
        )
    for key, value in subject.items():
        if not value:
            raise CertificateError(f"subject check failed: {key} is empty; give it a value")
    try:
        return bytes(x509.Name.build(dict(subject)).dump())
    except (ValueError, TypeError, KeyError) as exc:
        raise CertificateError(
            f"subject check failed: cannot build a name from {sorted(subject)} ({exc}); "
            "use asn1crypto attribute names such as country_name, organization_name, common_name"
        ) from exc


def name_text(name: Any) -> str:
    """RFC 4514-like one-line rendering of an asn1crypto Name (for messages and listings)."""
    return str(name.human_friendly)


def name_country(name: Any) -> str | None:
    """The country (C) of an asn1crypto Name, or ``None`` when it has none."""
    country = name.native.get("country_name")
    if isinstance(country, list):
        country = country[0] if country else None
    return str(country) if country else None
