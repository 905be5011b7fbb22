"""Unique Vaccination Certificate Identifiers (UVCI) with their Luhn mod N check character.

Format (eHealth Network guidelines, Volume 1, Annex 2, option 3)::

    URN:UVCI:01:<CC>:<opaque>#<check>

``<opaque>`` uses ``A-Z0-9`` with ``/`` separating blocks. The check character is Luhn mod N
over the alphabet ``A-Z0-9/:`` (N = 38), computed over everything before ``#`` including the
``URN:UVCI:`` prefix (reference vector: ``URN:UVCI:01:NL:187/37512422923`` -> ``Z``).
"""

import re
import secrets
from collections.abc import Mapping

from signer.dcc.errors import DccError

CHECK_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/:"
PREFIX = "URN:UVCI:"
VERSION = "01"
MAX_LENGTH = 80
DEFAULT_OPAQUE_LENGTH = 24
_OPAQUE_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_ACCEPTED_BYTES = 256 - 256 % len(_OPAQUE_ALPHABET)
_BYTE_TO_CHAR = bytes(
    ord(_OPAQUE_ALPHABET[value % len(_OPAQUE_ALPHABET)]) if value < _ACCEPTED_BYTES else 0
    for value in range(256)
)
_REJECTED_BYTES = bytes(range(_ACCEPTED_BYTES, 256))
_COUNTRY = re.compile(r"[A-Z]{2}")
_ISSUER_BLOCK = re.compile(r"[A-Z0-9]+")
_UVCI = re.compile(
    r"^(?P<body>(?:URN:UVCI:)?(?P<version>\d\d):(?P<country>[A-Z]{2}):(?P<opaque>[A-Z0-9/]+))"
    r"(?:#(?P<check>[A-Z0-9/:]))?$"
)


class UvciError(DccError):
    """A UVCI is malformed or its check character is wrong."""


def _addends(factor: int) -> Mapping[str, int]:
    n = len(CHECK_ALPHABET)
    addends = {}
    for code, char in enumerate(CHECK_ALPHABET):
        value = factor * code
        addends[char] = value // n + value % n
    return addends


# Luhn mod N weighs characters 2, 1, 2, ... from the right; the sum of the base-N digits of
# each weighted code point is looked up, not recomputed, for every certificate issued.
_DOUBLED = _addends(2)
_SINGLE = _addends(1)


def check_character(text: str) -> str:
    """Return the Luhn mod 38 check character of ``text`` (characters of ``A-Z0-9/:`` only)."""
    n = len(CHECK_ALPHABET)
    backwards = text[::-1]
    try:
        total = sum(map(_DOUBLED.__getitem__, backwards[0::2])) + sum(
            map(_SINGLE.__getitem__, backwards[1::2])
        )
    except KeyError as exc:
        char = exc.args[0]
        raise UvciError(f"character {char!r} is outside the UVCI alphabet A-Z0-9/:") from None
    return CHECK_ALPHABET[(n - total % n) % n]


def generate_uvci(
    country: str, *, issuer_block: str | None = None, length: int = DEFAULT_OPAQUE_LENGTH
) -> str:
    """Return a new UVCI for ``country`` whose opaque part is ``length`` secure random characters.

    ``issuer_block`` (``A-Z0-9`` only) is put in front of the random part, separated by ``/``.
    The default 24 characters of ``A-Z0-9`` carry about 124 bits of randomness.
    """
    if not _COUNTRY.fullmatch(country):
        raise UvciError(f"country {country!r} must be two upper-case letters")
    if issuer_block is not None and not _ISSUER_BLOCK.fullmatch(issuer_block):
        raise UvciError(f"issuer block {issuer_block!r} must match [A-Z0-9]+")
    random_part = _random_text(length)
    opaque = f"{issuer_block}/{random_part}" if issuer_block else random_part
    body = f"{PREFIX}{VERSION}:{country}:{opaque}"
    uvci = f"{body}#{check_character(body)}"
    if len(uvci) > MAX_LENGTH:
        raise UvciError(f"UVCI would be {len(uvci)} characters, more than {MAX_LENGTH}")
    return uvci


def _random_text(length: int) -> str:
    """``length`` uniformly random characters of ``A-Z0-9`` from the CSPRNG.

    Each random byte below 252 (7 x 36) picks ``byte % 36``; bytes 252-255 are dropped so that
    every character stays equally likely.
    """
    text = ""
    while len(text) < length:
        text += secrets.token_bytes(length + 8).translate(_BYTE_TO_CHAR, _REJECTED_BYTES).decode()
    return text[:length]


def validate_uvci(value: str, *, require_check: bool = True) -> None:
    """Raise :class:`UvciError` unless ``value`` is a well-formed UVCI with a correct check.

    With ``require_check=False`` a UVCI without ``#<check>`` is accepted (the HCERT schema makes
    the check character and the ``URN:UVCI:`` prefix optional); one that has it must be right.
    """
    if len(value) > MAX_LENGTH:
        raise UvciError(f"UVCI is {len(value)} characters, more than {MAX_LENGTH}")
    match = _UVCI.match(value)
    if match is None:
        raise UvciError(f"{value!r} is not of the form URN:UVCI:01:CC:OPAQUE#C")
    if match["version"] != VERSION:
        raise UvciError(f"UVCI version {match['version']} is not supported (only {VERSION})")
    check = match["check"]
    if check is None:
        if require_check:
            raise UvciError("UVCI has no check character (#C)")
        return
    expected = check_character(match["body"])
    if check != expected:
        raise UvciError(f"UVCI check character is {check!r}, expected {expected!r}")


def is_valid_uvci(value: str, *, require_check: bool = True) -> bool:
    """Tell whether :func:`validate_uvci` accepts ``value``."""
    try:
        validate_uvci(value, require_check=require_check)
    except UvciError:
        return False
    return True
