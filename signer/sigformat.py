"""ECDSA signature encodings: raw ``r||s`` (COSE, JOSE) and DER ``ECDSA-Sig-Value`` (X.509, CMS).

Both halves of a raw signature are left-padded to the curve size: a short ``r`` or ``s`` that
is not padded yields a signature that other verifiers reject.
"""

import enum

from asn1crypto.algos import DSASignature

P256_COORDINATE_BYTES = 32
SHA256_DIGEST_BYTES = 32
P256_SIGNATURE_BYTES = 2 * P256_COORDINATE_BYTES


class SignatureEncoding(enum.Enum):
    """How a signature leaves the appliance."""

    RAW = "raw"
    DER = "der"


def raw_to_der(raw: bytes, size: int = P256_COORDINATE_BYTES) -> bytes:
    """Encode a raw ``r||s`` signature of ``2*size`` bytes as DER."""
    if len(raw) != 2 * size:
        raise ValueError(f"raw ECDSA signature must be {2 * size} bytes, got {len(raw)}")
    r = int.from_bytes(raw[:size], "big")
    s = int.from_bytes(raw[size:], "big")
    return bytes(DSASignature({"r": r, "s": s}).dump())


def der_to_raw(der: bytes, size: int = P256_COORDINATE_BYTES) -> bytes:
    """Decode a DER ``ECDSA-Sig-Value`` into raw ``r||s``, each half padded to ``size`` bytes."""
    sig = DSASignature.load(der, strict=True)
    r = int(sig["r"].native)
    s = int(sig["s"].native)
    if r <= 0 or s <= 0 or r.bit_length() > 8 * size or s.bit_length() > 8 * size:
        raise ValueError("DER ECDSA signature has r or s out of range for the curve")
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")
