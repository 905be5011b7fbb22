"""SubjectPublicKeyInfo handling: the EC P-256 check, normal form and key identifier."""

from asn1crypto import keys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from signer.errors import CertificateError


def describe_public_key(public_key: object) -> str:
    """A short human name of a public key type, for error messages."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"EC {public_key.curve.name}"
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA {public_key.key_size}-bit"
    return type(public_key).__name__


def require_p256(public_key: object, what: str) -> ec.EllipticCurvePublicKey:
    """Return ``public_key`` if it is an EC P-256 key, else raise :class:`CertificateError`."""
    if isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(
        public_key.curve, ec.SECP256R1
    ):
        return public_key
    raise CertificateError(
        f"public key algorithm check failed: {what} holds a {describe_public_key(public_key)} "
        "key, but ES256 needs an EC P-256 (secp256r1) key; certify the HSM's P-256 key instead"
    )


def load_p256_spki(spki_der: bytes, what: str = "the SubjectPublicKeyInfo") -> bytes:
    """Check that ``spki_der`` is an EC P-256 SubjectPublicKeyInfo; return its normal DER form.

    The normal form uses the uncompressed point and the named curve, so two encodings of the
    same key compare equal as bytes.
    """
    try:
        public_key = serialization.load_der_public_key(spki_der)
    except (ValueError, TypeError) as exc:
        raise CertificateError(
            f"public key parse check failed: {what} is not a DER SubjectPublicKeyInfo ({exc})"
        ) from exc
    p256 = require_p256(public_key, what)
    return p256.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def subject_key_identifier(spki_der: bytes) -> bytes:
    """RFC 5280 §4.2.1.2 method 1 key identifier: SHA-1 over the subjectPublicKey bits."""
    return bytes(keys.PublicKeyInfo.load(spki_der).sha1)
