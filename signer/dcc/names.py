"""ICAO Doc 9303 (Part 3, section 6) transliteration of names for the HCERT ``fnt``/``gnt`` fields.

The result matches ``^[A-Z<]*$`` and is never empty. It may be longer than the 80 characters
a DCC field holds: :mod:`signer.dcc.record` then applies :func:`truncate_given_names` to given
names and refuses a surname, so that nothing is ever cut silently.

Choices, where ICAO 9303 offers options:

* Letters with diacritics lose them (``Ễ`` -> ``E``, ``Ç`` -> ``C``, ``Ñ`` -> ``N``).
* Letters ICAO lists separately get its *recommended* multi-letter form: ``Ä`` -> ``AE``,
  ``Ö`` -> ``OE``, ``Ü`` -> ``UE``, ``Å`` -> ``AA``, ``Æ`` -> ``AE``, ``Ø`` -> ``OE``,
  ``Œ`` -> ``OE``, ``ß`` -> ``SS``, ``Þ`` -> ``TH``, ``Ĳ`` -> ``IJ``; ``Đ`` (Vietnamese,
  Croatian) and ``Ð`` -> ``D``, ``Ł`` -> ``L``, ``Ħ`` -> ``H``, ``Ŧ`` -> ``T``, ``Ŋ`` -> ``N``,
  dotless ``i`` (U+0131) -> ``I``. ICAO applies them whatever the language, so
  ``Müller`` -> ``MUELLER``.
* Spaces, hyphens and commas become the filler ``<``; runs of fillers collapse to one and
  leading or trailing fillers are dropped. Apostrophes and full stops are omitted
  (``O'Brien`` -> ``OBRIEN``).
* Anything else, in particular non-Latin scripts (Cyrillic, Greek, Han, ...), is refused:
  ICAO's tables for those scripts are not implemented, so the caller must supply ``fnt``/``gnt``.

Truncation (:func:`truncate_given_names`), after ICAO 9303 Part 3 (names too long for their
field: the secondary identifier, the given names, is truncated first, characters are removed
from the end of name components, and a truncated field never ends in a filler): the given-name
components are shortened from the last one backwards, each down to its initial, until the
field fits; if it still does not, the first given name is cut at the end.
``ANNA<MARIA<...<ZOE`` keeps ``ANNA`` whole as long as any later name can give way.
"""

import functools
import re
import unicodedata

from signer.dcc.errors import DccError

MAX_LENGTH = 80
ICAO_PATTERN = re.compile(r"^[A-Z<]*$")

_SPECIAL = {
    "Ä": "AE",
    "Ö": "OE",
    "Ü": "UE",
    "Å": "AA",
    "Æ": "AE",
    "Ø": "OE",
    "Œ": "OE",
    "ẞ": "SS",
    "Þ": "TH",
    "Ĳ": "IJ",
    "Đ": "D",
    "Ð": "D",
    "Ł": "L",
    "Ħ": "H",
    "Ŧ": "T",
    "Ŋ": "N",
    "Ŀ": "L",
}
_FILLERS = frozenset(" \t\u00a0-\u2010\u2011\u2012\u2013\u2014,")
_OMITTED = frozenset("'\u2018\u2019\u02bc`\u00b4.")
_FILLER_RUN = re.compile(r"<{2,}")


class TransliterationError(DccError):
    """A name contains a character that has no ICAO 9303 Latin transliteration here."""


def transliterate(name: str) -> str:
    """Return the ICAO 9303 machine-readable form of ``name`` (e.g. ``NGUYEN<VAN<DUC``)."""
    # str.upper() already maps ß -> SS and dotless i (U+0131) -> I.
    upper = unicodedata.normalize("NFC", name).upper()
    out: list[str] = []
    for char in upper:
        if char in _SPECIAL:
            out.append(_SPECIAL[char])
        elif char in _FILLERS:
            out.append("<")
        elif char in _OMITTED:
            continue
        else:
            out.append(_strip_marks(char))
    result = _FILLER_RUN.sub("<", "".join(out)).strip("<")
    if not result:
        raise TransliterationError(f"name {name!r} has no letters to transliterate")
    return result


def truncate_given_names(value: str, limit: int = MAX_LENGTH) -> str:
    """``value`` (ICAO form, components joined by ``<``) shortened to ``limit`` characters by
    the rule of the module docstring; unchanged when it fits."""
    if len(value) <= limit:
        return value
    parts = value.split("<")
    for index in range(len(parts) - 1, 0, -1):
        excess = len("<".join(parts)) - limit
        if excess <= 0:
            break
        parts[index] = parts[index][: max(1, len(parts[index]) - excess)]
    return "<".join(parts)[:limit].rstrip("<")


def is_icao_name(value: str) -> bool:
    """Tell whether ``value`` is a well-formed ``fnt``/``gnt`` value."""
    return 0 < len(value) <= MAX_LENGTH and ICAO_PATTERN.match(value) is not None


@functools.lru_cache(maxsize=4096)
def _strip_marks(char: str) -> str:
    base = "".join(c for c in unicodedata.normalize("NFD", char) if not unicodedata.combining(c))
    if len(base) == 0 or not all("A" <= c <= "Z" for c in base):
        raise TransliterationError(
            f"character {char!r} (U+{ord(char):04X}) cannot be transliterated to ICAO 9303 "
            "Latin letters; supply fnt/gnt explicitly"
        )
    return base
