"""COSE_Sign1 (RFC 9052) pieces for HCERT: protected header, Sig_structure, assembly, parsing.

Issuance never holds a private key: the caller hashes :func:`sig_structure` with
:func:`sig_structure_digest`, has the digest signed remotely and hands the raw ``r||s``
signature to :func:`assemble_sign1`.
"""

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import cbor2

from signer.dcc.cbor_bounds import decode_cbor
from signer.dcc.errors import DccEncodingError

HEADER_ALG = 1
HEADER_KID = 4
ALG_ES256 = -7
ALG_PS256 = -37
TAG_SIGN1 = 18
TAG_CWT = 61
ES256_SIGNATURE_BYTES = 64
_OUTER_TAGS = frozenset({TAG_CWT, TAG_SIGN1})

_T = TypeVar("_T")


def protected_header(kid: bytes, alg: int = ALG_ES256) -> bytes:
    """Return the protected header ``{1: alg, 4: kid}`` encoded as the bstr contents."""
    if not kid:
        raise ValueError("kid must not be empty")
    return cbor2.dumps({HEADER_ALG: alg, HEADER_KID: kid})


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """Return CBOR ``["Signature1", protected, h'', payload]``: the bytes that get signed."""
    return cbor2.dumps(["Signature1", protected, b"", payload])


def sig_structure_digest(protected: bytes, payload: bytes) -> bytes:
    """Return SHA-256 of :func:`sig_structure`: the 32 bytes sent to the signing daemon."""
    return hashlib.sha256(sig_structure(protected, payload)).digest()


def assemble_sign1(protected: bytes, payload: bytes, signature: bytes) -> bytes:
    """Return a tagged (18) COSE_Sign1 with an empty unprotected map.

    ``signature`` must be raw ``r||s`` (64 bytes), as COSE requires; convert DER first
    with :func:`signer.sigformat.der_to_raw`.
    """
    if len(signature) != ES256_SIGNATURE_BYTES:
        raise DccEncodingError(
            f"ES256 signature must be raw r||s of {ES256_SIGNATURE_BYTES} bytes, "
            f"got {len(signature)} (DER? convert with signer.sigformat.der_to_raw)"
        )
    return cbor2.dumps(cbor2.CBORTag(TAG_SIGN1, [protected, {}, payload, signature]))


@dataclass(frozen=True)
class Sign1:
    """A parsed COSE_Sign1; ``protected`` is kept as received, since it is what was signed."""

    protected: bytes
    protected_map: dict[Any, Any]
    unprotected: dict[Any, Any]
    payload: bytes
    signature: bytes

    @property
    def kid(self) -> bytes | None:
        """The kid, from the protected header if there, else from the unprotected one."""
        return _header(self, HEADER_KID, bytes)

    @property
    def alg(self) -> int | None:
        """The algorithm, from the protected header if there, else from the unprotected one."""
        return _header(self, HEADER_ALG, int)


def _header(message: Sign1, label: int, kind: type[_T]) -> _T | None:
    for headers in (message.protected_map, message.unprotected):
        value = headers.get(label)
        if isinstance(value, kind):
            return value
    return None


def parse_sign1(data: bytes) -> Sign1:
    """Parse a COSE_Sign1 that is tagged 18, wrapped in CWT tag 61, or untagged.

    Bounded by :func:`signer.dcc.cbor_bounds.check_cbor`: no tags but 61 and 18 outside.
    """
    obj = decode_cbor(data, "COSE_Sign1", _OUTER_TAGS)
    if isinstance(obj, cbor2.CBORTag) and obj.tag == TAG_CWT:
        obj = obj.value
    if isinstance(obj, cbor2.CBORTag):
        if obj.tag != TAG_SIGN1:
            raise DccEncodingError(f"CBOR tag {obj.tag} is not COSE_Sign1 (18)")
        obj = obj.value
    # cbor2 decodes the contents of a tag as immutable tuple and frozendict.
    if not (isinstance(obj, list | tuple) and len(obj) == 4):
        raise DccEncodingError("COSE_Sign1 must be an array of 4 elements")
    protected, unprotected, payload, signature = obj
    if not isinstance(protected, bytes):
        raise DccEncodingError("COSE_Sign1 protected header is not a byte string")
    if not isinstance(unprotected, Mapping):
        raise DccEncodingError("COSE_Sign1 unprotected header is not a map")
    if not isinstance(payload, bytes):
        raise DccEncodingError("COSE_Sign1 payload is not a byte string (detached?)")
    if not isinstance(signature, bytes):
        raise DccEncodingError("COSE_Sign1 signature is not a byte string")
    protected_map = decode_cbor(protected, "protected header") if protected else {}
    if not isinstance(protected_map, dict):
        raise DccEncodingError("protected header is not a CBOR map")
    return Sign1(protected, protected_map, dict(unprotected), payload, signature)
