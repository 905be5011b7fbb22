"""``HC1:`` strings: COSE bytes -> zlib (level 9) -> base45 -> ``HC1:`` prefix, and back."""

import zlib

from signer.dcc.base45 import b45decode, b45encode
from signer.dcc.errors import DccEncodingError

PREFIX = "HC1:"
_ZLIB_LEVEL = 9


def encode_hc1(cose: bytes) -> str:
    """Return the ``HC1:`` string for a COSE_Sign1."""
    return PREFIX + b45encode(zlib.compress(cose, _ZLIB_LEVEL))


def decode_hc1(text: str) -> bytes:
    """Return the COSE bytes inside an ``HC1:`` string.

    Tolerated, because scanners and real issuers produce them: surrounding whitespace, a
    missing ``HC1:`` prefix (some scanner apps strip it), and uncompressed content (decompression
    is attempted only when the data starts with a zlib header; COSE starts with 0xD2, 0xD8 or 0x84).
    """
    body = text.strip()
    if body.startswith(PREFIX):
        body = body[len(PREFIX) :]
    data = b45decode(body)
    if _looks_like_zlib(data):
        try:
            return zlib.decompress(data)
        except zlib.error as exc:
            raise DccEncodingError(f"zlib: {exc}") from None
    return data


def _looks_like_zlib(data: bytes) -> bool:
    # RFC 1950: CM=8 in the low nibble of CMF, and CMF*256+FLG a multiple of 31.
    return len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
