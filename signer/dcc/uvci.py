"""Unique Vaccination Certificate Identifiers (UVCI) with their Luhn mod N check character.

Format (eHealth Network guidelines, Volume 1, Annex 2, option 3)::

    URN:UVCI:01:<CC>:<opaque>#<check>

``<opaque>`` uses ``A-Z0-9`` with ``/`` separating blocks. The check character is Luhn mod N
over the alphabet ``A-Z0-9/:`` (N = 38), computed over everything before ``#`` including the
``URN:UVCI:`` prefix (reference vector: ``URN:UVCI:01:NL:187/37512422923`` -> ``Z``).
"""

import re
import secrets

from signer.dcc.errors import DccError

CHECK_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/:"
PREFIX = "URN:UVCI:"
VERSION = "01"
MAX_LENGTH = 80
DEFAULT_OPAQUE_LENGTH = 24
_OPAQUE_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_UVCI = re.compile(
    r"^(?P<body>(?:URN:UVCI:)?(?P<version>\d\d):(?P<country>[A-Z]{2}):(?P<opaque>[A-Z0-9/]+))"
    r"(?:#(?P<check>[A-Z0-9/:]))?$"
)


class UvciError(DccError):
    """A UVCI is malformed or its check character is wrong."""


def check_character(text: str) -> str:
    """Return the Luhn mod 38 check character of ``text`` (characters of ``A-Z0-9/:`` only)."""
    n = len(CHECK_ALPHABET)
    total = 0
    factor = 2
    for char in reversed(text):
        code_point = CHECK_ALPHABET.find(char)
        if code_point < 0:
            raise UvciError(f"character {char!r} is outside the UVCI alphabet A-Z0-9/:")
        addend = factor * code_point
        total += addend // n + addend % n
        factor = 3 - factor
    return CHECK_ALPHABET[(n - total % n) % n]


def generate_uvci(
    country: str, *, issuer_block: str | None = None, length: int = DEFAULT_OPAQUE_LENGTH
) -> str:
    """Return a new UVCI for ``country`` whose opaque part is ``length`` secure random characters.

    ``issuer_block`` (``A-Z0-9`` only) is put in front of the random part, separated by ``/``.
    The default 24 characters of ``A-Z0-9`` carry about 124 bits of randomness.
    """
    if not re.fullmatch(r"[A-Z]{2}", country):
        raise UvciError(f"country {country!r} must be two upper-case letters")
    if issuer_block is not None and not re.fullmatch(r"[A-Z0-9]+", issuer_block):
        raise UvciError(f"issuer block {issuer_block!r} must match [A-Z0-9]+")
    random_part = _random_text(length)
    opaque = f"{issuer_block}/{random_part}" if issuer_block else random_part
    body = f"{PREFIX}{VERSION}:{country}:{opaque}"
    uvci = f"{body}#{check_character(body)}"
    if len(uvci) > MAX_LENGTH:
        raise UvciError(f"UVCI would be {len(uvci)} characters, more than {MAX_LENGTH}")
    return uvci


def _random_text(length: int) -> str:
    """``length`` uniformly random characters of ``A-Z0-9`` from one CSPRNG draw."""
    base = len(_OPAQUE_ALPHABET)
    value = secrets.randbelow(base**length)
    chars = []
    for _ in range(length):
        value, digit = divmod(value, base)
        chars.append(_OPAQUE_ALPHABET[digit])
    return "".join(chars)


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
