"""Document Signer Certificates: kid, public key and validity, with a lenient fallback.

Some DSCs in circulation carry encodings that ``cryptography``'s strict X.509 parser rejects
(bad version numbers, odd extensions, explicitly spelled-out curve parameters). Verification only
needs the public key, so when ``cryptography`` refuses a certificate the SubjectPublicKeyInfo is
taken from it with ``asn1crypto``, which parses lazily.
"""

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

from asn1crypto import keys as asn1_keys
from asn1crypto import pem as asn1_pem
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key
from cryptography.x509.oid import NameOID

from signer.dcc.errors import DccTrustError
from signer.keys.profiles import profile_of_eku

KID_BYTES = 8
VerifyingKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

_P256_PRIME = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
_P256_A = _P256_PRIME - 3
_P256_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B


@dataclass(frozen=True)
class DscInfo:
    """What verification and issuance need from a DSC; unreadable fields are ``None``."""

    der: bytes
    kid: bytes
    public_key: VerifyingKey
    not_before: dt.datetime | None
    not_after: dt.datetime | None
    country: str | None
    strictly_parsed: bool
    profiles: frozenset[str] | None = None
    """The certificate types (profiles) the DSC's DCC extended key usages allow; ``None`` when
    it has no DCC EKU, which allows every type."""

    def allows(self, profile: str) -> bool:
        """Whether the DSC may sign certificates of ``profile`` (its DCC EKUs, if any)."""
        return self.profiles is None or profile in self.profiles


def kid_of(dsc_der: bytes) -> bytes:
    """Return the HCERT kid: the first 8 bytes of SHA-256 over the DSC's DER."""
    return hashlib.sha256(dsc_der).digest()[:KID_BYTES]


def certificate_der(data: bytes) -> bytes:
    """Return DER from PEM or DER certificate bytes (the first certificate of a PEM file)."""
    if asn1_pem.detect(data):
        try:
            _, _, der = asn1_pem.unarmor(data)
        except ValueError as exc:
            raise DccTrustError(f"PEM certificate is malformed: {exc}") from None
        return bytes(der)
    return data


def parse_dsc(data: bytes) -> DscInfo:
    """Parse a DSC (PEM or DER) strictly, falling back to a lenient SubjectPublicKeyInfo read."""
    der = certificate_der(data)
    try:
        cert = x509.load_der_x509_certificate(der)
        public_key = _checked(cert.public_key())
    except Exception:  # any refusal of the strict parser sends us to the lenient path
        return _parse_leniently(der)
    countries = cert.subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)
    return DscInfo(
        der=der,
        kid=kid_of(der),
        public_key=public_key,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        country=str(countries[0].value) if countries else None,
        strictly_parsed=True,
        profiles=_dcc_profiles(cert),
    )


def _dcc_profiles(cert: x509.Certificate) -> frozenset[str] | None:
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return None
    found = {profile_of_eku(usage.dotted_string) for usage in usages}
    return frozenset(p for p in found if p is not None) or None


def public_key_from_spki(spki_der: bytes) -> VerifyingKey:
    """Return the ES256/PS256 public key of a DER SubjectPublicKeyInfo."""
    try:
        return _checked(load_der_public_key(spki_der))
    except (ValueError, UnsupportedAlgorithm):
        pass
    try:
        spki = asn1_keys.PublicKeyInfo.load(spki_der)
        return _explicit_p256_key(spki)
    except (ValueError, TypeError, KeyError) as exc:
        raise DccTrustError(f"unusable public key in DSC: {exc}") from None


def _parse_leniently(der: bytes) -> DscInfo:
    try:
        certificate = asn1_x509.Certificate.load(der)
        tbs = certificate["tbs_certificate"]
        spki_der = tbs["subject_public_key_info"].dump()
    except (ValueError, TypeError, KeyError) as exc:
        raise DccTrustError(f"not an X.509 certificate: {exc}") from None
    return DscInfo(
        der=der,
        kid=kid_of(der),
        public_key=public_key_from_spki(spki_der),
        not_before=_lenient(lambda: tbs["validity"]["not_before"].native),
        not_after=_lenient(lambda: tbs["validity"]["not_after"].native),
        country=_lenient(lambda: tbs["subject"].native.get("country_name")),
        strictly_parsed=False,
        profiles=_lenient(lambda: _profiles_of(certificate.extended_key_usage_value)),
    )


def _profiles_of(usages: Any) -> frozenset[str] | None:
    if usages is None:
        return None
    found = {profile_of_eku(str(oid.dotted)) for oid in usages}
    return frozenset(p for p in found if p is not None) or None


def _lenient(read: Any) -> Any:
    try:
        return read()
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _checked(key: object) -> VerifyingKey:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise DccTrustError(f"DSC key is on {key.curve.name}; ES256 needs P-256")
        return key
    if isinstance(key, rsa.RSAPublicKey):
        return key
    raise DccTrustError(f"DSC key type {type(key).__name__} is neither EC P-256 nor RSA")


def _explicit_p256_key(spki: asn1_keys.PublicKeyInfo) -> ec.EllipticCurvePublicKey:
    if spki["algorithm"]["algorithm"].native != "ec":
        raise ValueError(f"algorithm {spki['algorithm']['algorithm'].native} is not supported")
    params = spki["algorithm"]["parameters"]
    if params.name != "specified":
        raise ValueError(f"EC parameters of kind {params.name} are not supported")
    spec = params.chosen
    prime = spec["field_id"]["parameters"].native
    a = int.from_bytes(spec["curve"]["a"].native, "big")
    b = int.from_bytes(spec["curve"]["b"].native, "big")
    if (prime, a, b) != (_P256_PRIME, _P256_A, _P256_B):
        raise ValueError("explicit EC parameters are not those of P-256")
    point = bytes(spki["public_key"].native)
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
