"""The DCC key identifier (kid) of a Document Signer Certificate."""

import hashlib

KID_BYTES = 8


def kid_for_certificate(dsc_der: bytes) -> bytes:
    """First 8 bytes of SHA-256 over the DER encoding of the DSC (HCERT specification)."""
    return hashlib.sha256(dsc_der).digest()[:KID_BYTES]
