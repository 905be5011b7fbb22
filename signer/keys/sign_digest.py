"""The one signing primitive the key logic needs: sign a SHA-256 digest, get raw ``r||s``."""

import hashlib
from collections.abc import Callable

from signer.errors import SignerError
from signer.sigformat import P256_COORDINATE_BYTES, raw_to_der

SignDigest = Callable[[bytes], bytes]
"""Signs a 32-byte SHA-256 digest with an ECDSA P-256 key; returns the raw 64-byte ``r||s``."""


def sign_to_der(data: bytes, sign: SignDigest) -> bytes:
    """Hash ``data`` with SHA-256, sign the digest with ``sign`` and return a DER ECDSA signature.

    This is the ``ecdsa-with-SHA256`` signature over ``data`` as X.509 and PKCS#10 carry it.
    """
    digest = hashlib.sha256(data).digest()
    raw = sign(digest)
    if len(raw) != 2 * P256_COORDINATE_BYTES:
        raise SignerError(
            f"signing check failed: the signing callable returned {len(raw)} bytes instead of "
            f"a raw {2 * P256_COORDINATE_BYTES}-byte r||s P-256 signature; check that the key is "
            "an EC P-256 key and that the HSM is called with CKM_ECDSA"
        )
    return raw_to_der(raw)
