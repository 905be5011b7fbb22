"""Base45 (RFC 9285): the QR-alphanumeric-friendly encoding used by ``HC1:`` strings."""

import functools
import struct

from signer.dcc.errors import DccEncodingError

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
_VALUES = {char: index for index, char in enumerate(ALPHABET)}


@functools.cache
def _triplets() -> tuple[str, ...]:
    """The 3 characters of every 16-bit value (built once, ~3 MB; encoding is then a lookup
    per byte pair, which matters at hundreds of thousands of certificates)."""
    return tuple(
        ALPHABET[n % 45] + ALPHABET[n // 45 % 45] + ALPHABET[n // 2025] for n in range(65536)
    )


def b45encode(data: bytes) -> str:
    """Encode bytes as base45: each 2 bytes become 3 characters, a trailing byte 2 characters."""
    pairs = len(data) // 2
    table = _triplets()
    text = "".join([table[n] for n in struct.unpack_from(f">{pairs}H", data)])
    if len(data) % 2:
        d, c = divmod(data[-1], 45)
        text += ALPHABET[c] + ALPHABET[d]
    return text


def b45decode(text: str) -> bytes:
    """Decode base45; raise :class:`DccEncodingError` on characters or lengths RFC 9285 forbids."""
    try:
        values = [_VALUES[char] for char in text]
    except KeyError as exc:
        raise DccEncodingError(f"base45: invalid character {exc.args[0]!r}") from None
    if len(values) % 3 == 1:
        raise DccEncodingError(f"base45: invalid length {len(values)} (remainder 1 modulo 3)")
    out = bytearray()
    for i in range(0, len(values), 3):
        chunk = values[i : i + 3]
        n = sum(v * 45**k for k, v in enumerate(chunk))
        if len(chunk) == 3:
            if n > 0xFFFF:
                raise DccEncodingError(f"base45: triplet at {i} encodes {n} > 65535")
            out += n.to_bytes(2, "big")
        else:
            if n > 0xFF:
                raise DccEncodingError(f"base45: final pair encodes {n} > 255")
            out.append(n)
    return bytes(out)
