"""The SIGNATURE revocation hash the audit log keeps for every signature it records.

EU DCC revocation lists name a certificate by a 16-byte hash of one of three kinds (UCI,
COUNTRYCODEUCI, SIGNATURE). For an ES256 certificate the SIGNATURE hash is the first 16 bytes
of SHA-256 over the first half of the raw COSE signature, that is over ``r`` (32 bytes,
left-padded), never over ``s`` or over the whole ``r||s``:

* eu-digital-green-certificates/dgca-verifier-app-android,
  ``revocation/src/main/java/dcc/app/revocation/domain/Util.kt`` (``getDccSignatureSha256``):
  for COSE alg -7 it hashes ``copyOfRange(coseSignature, 0, size / 2)``; for PS256 (-37) the
  whole signature;
* corona-warn-app/cwa-app-android, ``covidcertificate/revocation/calculation``
  (``calculateRevocationEntryTypeSIGNATURE``): ES256 -> ``signature.bisect()`` (first half),
  ``sha256()``, bytes 0..16 (``BYTE_COUNT = 16``);
* eu-digital-green-certificates/dgc-gateway, ``RevocationBatchDto``: each entry is the
  "Base64 encoded first 128 Bits of the hash" (24 base64 characters).

The daemon only makes ES256 signatures; callers may ask for them raw (``r||s``, 64 bytes) or in
DER (``ECDSA-Sig-Value``), and the audit layer is handed them as they leave. A 64-byte value is
taken as raw (a P-256 DER signature of exactly 64 bytes needs ``r`` and ``s`` about 2**-48 times
shorter than usual); anything else must be strict DER and is converted, so both encodings of
one signature give the hash the certificate's verifier computes.
"""

import hashlib
from collections.abc import Sequence

from signer.sigformat import P256_COORDINATE_BYTES, P256_SIGNATURE_BYTES, der_to_raw

SIGNATURE_HASH_BYTES = 16
"""Revocation hashes are truncated to 128 bits (the gateway's entry size)."""


def revocation_hash(data: bytes) -> bytes:
    """First 16 bytes of SHA-256 over ``data``: the shape of every DCC revocation hash."""
    return hashlib.sha256(data).digest()[:SIGNATURE_HASH_BYTES]


def signature_hash(signature: bytes) -> bytes:
    """The SIGNATURE revocation hash of one ES256 signature (raw ``r||s`` or DER).

    Raises :class:`ValueError` for anything that is neither.
    """
    if len(signature) == P256_SIGNATURE_BYTES:
        return revocation_hash(signature[:P256_COORDINATE_BYTES])
    try:
        raw = der_to_raw(signature)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"signature of {len(signature)} bytes is neither raw ES256 r||s "
            f"({P256_SIGNATURE_BYTES} bytes) nor DER: {exc}"
        ) from exc
    return revocation_hash(raw[:P256_COORDINATE_BYTES])


def signature_hashes(signatures: Sequence[bytes]) -> bytes:
    """The SIGNATURE hashes of ``signatures``, concatenated in order (16 bytes each)."""
    return b"".join(signature_hash(signature) for signature in signatures)


def split_hashes(packed: bytes) -> list[bytes]:
    """The 16-byte hashes of a value made by :func:`signature_hashes`."""
    size = SIGNATURE_HASH_BYTES
    return [packed[i : i + size] for i in range(0, len(packed), size)]
