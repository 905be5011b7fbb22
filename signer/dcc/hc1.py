"""``HC1:`` strings: COSE bytes -> zlib (level 9) -> base45 -> ``HC1:`` prefix, and back.

Decoding is bounded (see :mod:`signer.dcc.limits`): the text length is checked before base45
decoding, and inflating stops once the output passes the COSE size limit.
"""

import zlib
from collections.abc import Iterator
from typing import TextIO

from signer.dcc.base45 import b45decode, b45encode
from signer.dcc.errors import DccEncodingError
from signer.dcc.limits import MAX_COSE_BYTES, MAX_HC1_CHARS, QR_ALPHANUMERIC_CAPACITY

PREFIX = "HC1:"
_ZLIB_LEVEL = 9
_SKIP_CHUNK = 64 * 1024


def encode_hc1(cose: bytes) -> str:
    """Return the ``HC1:`` string for a COSE_Sign1."""
    return PREFIX + b45encode(zlib.compress(cose, _ZLIB_LEVEL))


def decode_hc1(text: str) -> bytes:
    """Return the COSE bytes inside an ``HC1:`` string.

    Tolerated, because scanners and real issuers produce them: surrounding whitespace, a
    missing ``HC1:`` prefix (some scanner apps strip it), and uncompressed content (decompression
    is attempted only when the data starts with a zlib header; COSE starts with 0xD2, 0xD8 or 0x84).
    Refused before any decoding: text longer than :data:`~signer.dcc.limits.MAX_HC1_CHARS`.
    """
    if len(text) > MAX_HC1_CHARS:
        raise DccEncodingError(
            f"HC1 text has {len(text)} characters, over the limit of {MAX_HC1_CHARS} "
            f"(a QR code holds at most {QR_ALPHANUMERIC_CAPACITY}); not decoded"
        )
    body = text.strip()
    if body.startswith(PREFIX):
        body = body[len(PREFIX) :]
    data = b45decode(body)
    if _looks_like_zlib(data):
        return inflate(data)
    return data


def inflate(data: bytes, limit: int = MAX_COSE_BYTES) -> bytes:
    """Return the zlib-decompressed ``data``, holding at most ``limit`` + 1 bytes of output.

    Raises :class:`DccEncodingError` when the output would exceed ``limit`` (a decompression
    bomb), when the stream is corrupt or incomplete, and when bytes follow its end.
    """
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise DccEncodingError(f"zlib: {exc}") from None
    if len(out) > limit:
        raise DccEncodingError(
            f"zlib: the data inflates to more than the limit of {limit} bytes "
            "(a DCC is a few KiB); refused as a decompression bomb"
        )
    if not inflater.eof:
        raise DccEncodingError("zlib: incomplete or truncated stream")
    if inflater.unused_data:
        raise DccEncodingError(
            f"zlib: {len(inflater.unused_data)} bytes after the end of the compressed stream"
        )
    return out


def hc1_lines(stream: TextIO) -> Iterator[str]:
    """Yield the stripped, non-blank lines of ``stream``, one ``HC1:`` string each.

    A line is read at most :data:`~signer.dcc.limits.MAX_HC1_CHARS` + 1 characters at a time:
    an overlong one is yielded cut there, unstripped (so :func:`decode_hc1` refuses it by its
    length), and the rest of it is skipped, so memory stays bounded whatever the stream holds.
    """
    while line := stream.readline(MAX_HC1_CHARS + 1):
        if len(line) > MAX_HC1_CHARS and not line.endswith("\n"):
            _skip_line(stream)
            yield line
        elif text := line.strip():
            yield text


def _skip_line(stream: TextIO) -> None:
    while (chunk := stream.readline(_SKIP_CHUNK)) and not chunk.endswith("\n"):
        pass


def _looks_like_zlib(data: bytes) -> bool:
    # RFC 1950: CM=8 in the low nibble of CMF, and CMF*256+FLG a multiple of 31.
    return len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
