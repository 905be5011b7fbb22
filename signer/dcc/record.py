"""Vaccination record (JSON) -> validated HCERT payload, DCC schema 1.3.0.

Input record: the HCERT shape without the fields the issuer derives::

    {
      "nam": {"fn": "Nguyễn", "gn": "Văn Đức"},
      "dob": "1985-03-21",
      "v": [{"vp": "1119349007", "mp": "EU/1/20/1528", "ma": "ORG-100030215",
             "dn": 2, "sd": 2, "dt": "2021-09-15", "co": "VN",
             "is": "Ministry of Health of Viet Nam"}]
    }

* ``nam.fnt``/``nam.gnt`` may be given (they must then match ``^[A-Z<]{1,80}$``); otherwise they
  are ICAO 9303 transliterations of ``fn``/``gn`` (see :mod:`signer.dcc.names`).
  ``fn`` is required; ``gn`` is optional (people with one name).
* ``dob`` is ``YYYY``, ``YYYY-MM`` or ``YYYY-MM-DD`` (years 1900-2099, real calendar dates).
  The empty ``dob`` the schema allows for "unknown" is refused: an issuer knows the holder.
* ``v`` holds exactly one entry. ``tg`` may be omitted (it can only be ``840539006``).
  ``vp``, ``mp``, ``ma`` and ``is`` are non-empty strings of at most 80 characters; their value
  sets are not checked here (they change faster than this code). ``dt`` is ``YYYY-MM-DD``, not
  before 2020, not before ``dob`` and not after the issuance date. ``co`` is an ISO 3166-1
  alpha-2 code (or ``XK``). ``dn`` and ``sd`` are integers 1-9 with ``dn <= sd``; pass
  ``allow_dose_beyond_series=True`` for the eHN booster encodings such as ``2/1``.
* ``ci`` is generated (:func:`signer.dcc.uvci.generate_uvci`) when missing; a given ``ci`` must be
  a UVCI whose check character, if present, is right.
* Unknown fields are refused, so that a misspelt field name cannot be silently dropped.
"""

import datetime as dt
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from signer.dcc.countries import is_country_code
from signer.dcc.errors import DccRecordError
from signer.dcc.names import TransliterationError, is_icao_name, transliterate
from signer.dcc.uvci import UvciError, generate_uvci, validate_uvci

SCHEMA_VERSION = "1.3.0"
COVID19_TARGET = "840539006"
MAX_TEXT = 80
MAX_DOSE = 9
EARLIEST_VACCINATION = dt.date(2020, 1, 1)

_RECORD_KEYS = frozenset({"ver", "nam", "dob", "v"})
_NAME_KEYS = frozenset({"fn", "gn", "fnt", "gnt"})
_VACCINATION_KEYS = frozenset({"tg", "vp", "mp", "ma", "dn", "sd", "dt", "co", "is", "ci"})
_DOB = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def build_hcert(
    record: Mapping[str, Any],
    *,
    issuer_country: str | None = None,
    issued_on: dt.date | None = None,
    allow_dose_beyond_series: bool = False,
) -> dict[str, Any]:
    """Validate ``record`` and return the HCERT payload (the value of claim ``-260``/``1``).

    ``issuer_country`` is the country of a generated UVCI (default: the record's ``co``).
    ``issued_on`` (the issuance date) bounds ``dt`` from above when given.
    Raises :class:`DccRecordError` naming the first invalid field.
    """
    if not isinstance(record, Mapping):
        raise DccRecordError("record", "must be a JSON object")
    _refuse_unknown(record, _RECORD_KEYS, "")
    ver = record.get("ver", SCHEMA_VERSION)
    if not (isinstance(ver, str) and ver.startswith("1.3.")):
        raise DccRecordError("ver", f"schema version {ver!r} is not supported (only 1.3.x)")

    nam = _names(record.get("nam"))
    dob = _dob(record.get("dob"))
    entries = record.get("v")
    if not isinstance(entries, list) or len(entries) != 1:
        raise DccRecordError("v", "must be a list with exactly one vaccination entry")
    vaccination = _vaccination(
        entries[0],
        dob=dob,
        issuer_country=issuer_country,
        issued_on=issued_on,
        allow_dose_beyond_series=allow_dose_beyond_series,
    )
    return {"ver": SCHEMA_VERSION, "nam": nam, "dob": record["dob"], "v": [vaccination]}


def _refuse_unknown(obj: Mapping[str, Any], allowed: frozenset[str], path: str) -> None:
    for key in obj:
        if key not in allowed:
            raise DccRecordError(f"{path}{key}", "unknown field")


def _text(value: object, field: str, *, required: bool = True) -> str | None:
    if value is None:
        if required:
            raise DccRecordError(field, "is required")
        return None
    if not isinstance(value, str):
        raise DccRecordError(field, f"must be a string, got {type(value).__name__}")
    text = unicodedata.normalize("NFC", value).strip()
    if not text:
        raise DccRecordError(field, "must not be empty")
    if len(text) > MAX_TEXT:
        raise DccRecordError(field, f"is {len(text)} characters, more than {MAX_TEXT}")
    return text


def _names(nam: object) -> dict[str, str]:
    if not isinstance(nam, Mapping):
        raise DccRecordError("nam", "is required and must be an object with fn and gn")
    _refuse_unknown(nam, _NAME_KEYS, "nam.")
    out: dict[str, str] = {}
    for plain, icao, required in (("fn", "fnt", True), ("gn", "gnt", False)):
        name = _text(nam.get(plain), f"nam.{plain}", required=required)
        given = nam.get(icao)
        if given is not None:
            if not (isinstance(given, str) and is_icao_name(given)):
                raise DccRecordError(f"nam.{icao}", "must match ^[A-Z<]{1,80}$")
            transliterated = given
        elif name is None:
            continue
        else:
            try:
                transliterated = transliterate(name)
            except TransliterationError as exc:
                raise DccRecordError(f"nam.{plain}", str(exc)) from None
        if name is not None:
            out[plain] = name
        out[icao] = transliterated
    return out


def _dob(value: object) -> dt.date:
    """Return the earliest day the (possibly partial) date of birth can mean."""
    if not isinstance(value, str):
        raise DccRecordError("dob", "is required: YYYY, YYYY-MM or YYYY-MM-DD")
    match = _DOB.match(value)
    if match is None:
        raise DccRecordError("dob", f"{value!r} is not YYYY, YYYY-MM or YYYY-MM-DD")
    year, month, day = (int(part) if part else 1 for part in match.groups())
    if not 1900 <= year <= 2099:
        raise DccRecordError("dob", f"year {year} is outside 1900-2099")
    try:
        return dt.date(year, month, day)
    except ValueError as exc:
        raise DccRecordError("dob", f"{value!r} is not a calendar date ({exc})") from None


def _date(value: object, field: str) -> dt.date:
    if not isinstance(value, str) or not _DATE.match(value):
        raise DccRecordError(field, f"{value!r} is not a date YYYY-MM-DD")
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise DccRecordError(field, f"{value!r} is not a calendar date ({exc})") from None


def _dose(value: object, field: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DccRecordError(field, f"{what} must be an integer")
    if value < 1:
        raise DccRecordError(field, f"{what} must be >= 1")
    if value > MAX_DOSE:
        raise DccRecordError(field, f"{what} must be <= {MAX_DOSE}")
    return value


def _vaccination(
    entry: object,
    *,
    dob: dt.date,
    issuer_country: str | None,
    issued_on: dt.date | None,
    allow_dose_beyond_series: bool,
) -> dict[str, Any]:
    p = "v[0]."
    if not isinstance(entry, Mapping):
        raise DccRecordError("v[0]", "must be an object")
    _refuse_unknown(entry, _VACCINATION_KEYS, p)
    tg = entry.get("tg", COVID19_TARGET)
    if tg != COVID19_TARGET:
        raise DccRecordError(f"{p}tg", f"must be {COVID19_TARGET} (COVID-19), got {tg!r}")
    texts = {key: _text(entry.get(key), p + key) for key in ("vp", "mp", "ma")}
    dn = _dose(entry.get("dn"), f"{p}dn", "dose number")
    sd = _dose(entry.get("sd"), f"{p}sd", "total series of doses")
    if dn > sd and not allow_dose_beyond_series:
        raise DccRecordError(f"{p}dn", f"dose number {dn} exceeds total series of doses {sd}")
    date = _date(entry.get("dt"), f"{p}dt")
    if date < EARLIEST_VACCINATION:
        raise DccRecordError(f"{p}dt", f"{date} is before {EARLIEST_VACCINATION}")
    if date < dob:
        raise DccRecordError(f"{p}dt", f"{date} is before the date of birth")
    if issued_on is not None and date > issued_on:
        raise DccRecordError(f"{p}dt", f"{date} is after the issuance date {issued_on}")
    co = entry.get("co")
    if not is_country_code(co):
        raise DccRecordError(f"{p}co", f"{co!r} is not an ISO 3166-1 alpha-2 country code")
    issuer = _text(entry.get("is"), f"{p}is")
    ci = _text(entry.get("ci"), f"{p}ci", required=False)
    if ci is None:
        country = issuer_country or str(co)
        try:
            ci = generate_uvci(country)
        except UvciError as exc:
            raise DccRecordError(f"{p}ci", f"cannot generate a UVCI: {exc}") from None
    else:
        try:
            validate_uvci(ci, require_check=False)
        except UvciError as exc:
            raise DccRecordError(f"{p}ci", str(exc)) from None
    return {
        "tg": COVID19_TARGET,
        "vp": texts["vp"],
        "mp": texts["mp"],
        "ma": texts["ma"],
        "dn": dn,
        "sd": sd,
        "dt": entry["dt"],
        "co": co,
        "is": issuer,
        "ci": ci,
    }
