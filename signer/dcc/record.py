"""A DCC record (JSON) -> validated HCERT payload, DCC schema 1.3: vaccination, test, recovery.

Input record: the HCERT shape without the fields the issuer derives, with exactly one entry
in exactly one of ``v`` (vaccination), ``t`` (test) or ``r`` (recovery)::

    {"nam": {"fn": "Nguyễn", "gn": "Văn Đức"}, "dob": "1985-03-21",
     "v": [{"vp": "1119349007", "mp": "EU/1/20/1528", "ma": "ORG-100030215",
            "dn": 2, "sd": 2, "dt": "2021-09-15", "co": "VN",
            "is": "Ministry of Health of Viet Nam"}]}
    {"nam": ..., "dob": ..., "t": [{"tt": "LP217198-3", "ma": "1232",
            "sc": "2026-11-30T08:15:00+07:00", "tr": "260415000", "tc": "Bach Mai Hospital",
            "co": "VN", "is": "..."}]}
    {"nam": ..., "dob": ..., "r": [{"fr": "2026-10-01", "df": "2026-10-12",
            "du": "2027-03-30", "co": "VN", "is": "..."}]}

Names: ``nam`` needs a surname (``fn``/``fnt``), a given name (``gn``/``gnt``) or both; a
person with a given name only is issued with schema version 1.3.2, the first that allows a
payload without ``fnt`` (Implementing Decision (EU) 2022/483), every other payload with 1.3.0,
which every verifier knows. ``fnt``/``gnt`` may be given (``^[A-Z<]{1,80}$``); otherwise they
are the ICAO 9303 transliterations of ``fn``/``gn`` (:mod:`signer.dcc.names`). A given-name
transliteration longer than 80 characters is truncated by the documented ICAO rule
(:func:`signer.dcc.names.truncate_given_names`) and reported in ``notes``; a surname longer
than 80 characters is refused (supply ``fnt``): a surname is never cut by the kit.

``dob`` is ``YYYY``, ``YYYY-MM`` or ``YYYY-MM-DD`` (1900-2099, real calendar dates); the empty
``dob`` the schema allows for "unknown" is refused: an issuer knows the holder.

Coded fields are checked against the eHN value sets (:mod:`signer.dcc.value_sets`): ``tg``
(may be omitted: it can only be COVID-19), ``vp``, ``mp``, ``ma``, ``tt``, ``tr``, the test
device ``ma`` and every ``co``. Free text (``is``, ``tc``, ``nm``) is 1-80 characters.

* ``v``: ``dn``/``sd`` integers 1-9, ``dn <= sd`` unless ``allow_dose_beyond_series`` (eHN
  booster encodings such as ``2/1``); ``dt`` a date from 2020, not before ``dob``, not after
  the issuance date.
* ``t``: ``sc`` an RFC 3339 date-time with offset, from 2020, not before ``dob``, not after
  the issuance time (plus :data:`CLOCK_SKEW`); a rapid antigen test (``tt`` LP217198-3) needs
  the device ``ma``, a NAA test (LP6464-4) must not have one and may name itself in ``nm``.
* ``r``: ``fr`` (first positive NAA test) from 2020, not before ``dob``, not after the
  issuance date; ``df <= du``, ``fr <= df``, and ``du`` at most :data:`RECOVERY_MAX_DAYS` after
  ``fr`` (Regulation (EU) 2021/953). The CWT ``exp`` follows ``du`` (see
  :func:`recovery_valid_until`).

``ci`` is generated (:func:`signer.dcc.uvci.generate_uvci`) when missing; a given ``ci`` must be
a UVCI whose check character, if present, is right. Unknown fields are refused, so that a
misspelt field name cannot be silently dropped.
"""

import datetime as dt
import re
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any, Final

from signer.dcc.errors import DccRecordError
from signer.dcc.names import (
    MAX_LENGTH,
    TransliterationError,
    is_icao_name,
    transliterate,
    truncate_given_names,
)
from signer.dcc.uvci import UvciError, generate_uvci, validate_uvci
from signer.dcc.value_sets import ValueSets

SCHEMA_VERSION = "1.3.0"
SCHEMA_VERSION_WITHOUT_FNT = "1.3.2"
COVID19_TARGET = "840539006"
MAX_TEXT = 80
MAX_DOSE = 9
EARLIEST_EVENT = dt.date(2020, 1, 1)
EARLIEST_VACCINATION = EARLIEST_EVENT
CLOCK_SKEW: Final = dt.timedelta(minutes=5)
RECOVERY_MAX_DAYS: Final = 180
TEST_RAT: Final = "LP217198-3"
TEST_NAAT: Final = "LP6464-4"

KINDS: Final = {"v": "vaccination", "t": "test", "r": "recovery"}
"""Entry group of the HCERT -> the signing profile whose key signs that kind."""

_RECORD_KEYS = frozenset({"ver", "nam", "dob", *KINDS})
_NAME_KEYS = frozenset({"fn", "gn", "fnt", "gnt"})
_ENTRY_KEYS = {
    "v": frozenset({"tg", "vp", "mp", "ma", "dn", "sd", "dt", "co", "is", "ci"}),
    "t": frozenset({"tg", "tt", "nm", "ma", "sc", "tr", "tc", "co", "is", "ci"}),
    "r": frozenset({"tg", "fr", "co", "is", "df", "du", "ci"}),
}
_DOB = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2})$")


def kind_of(record: Mapping[str, Any]) -> str:
    """The entry group of ``record`` (``v``, ``t`` or ``r``); raises :class:`DccRecordError`
    unless there is exactly one group with exactly one entry."""
    if not isinstance(record, Mapping):
        raise DccRecordError("record", "must be a JSON object")
    present = [kind for kind in KINDS if kind in record]
    if not present:
        raise DccRecordError(
            "record", "needs one entry in v (vaccination), t (test) or r (recovery)"
        )
    if len(present) > 1:
        raise DccRecordError(
            present[1], f"a certificate holds one kind only, but {' and '.join(present)} are given"
        )
    kind = present[0]
    entries = record[kind]
    if not isinstance(entries, list) or len(entries) != 1:
        count = len(entries) if isinstance(entries, list) else "no list"
        raise DccRecordError(kind, f"must be a list with exactly one {KINDS[kind]} entry ({count})")
    return kind


def build_hcert(
    record: Mapping[str, Any],
    *,
    issuer_country: str | None = None,
    issued_on: dt.date | None = None,
    issued_at: dt.datetime | None = None,
    allow_dose_beyond_series: bool = False,
    value_sets: ValueSets | None = None,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """Validate ``record`` and return the HCERT payload (the value of claim ``-260``/``1``).

    ``issuer_country`` is the country of a generated UVCI (default: the entry's ``co``).
    ``issued_at`` (or just ``issued_on``) bounds event dates from above when given.
    ``value_sets`` default to the ones shipped with signer. Anything worth telling the
    operator that does not stop issuance (a truncated name) is appended to ``notes``.
    Raises :class:`DccRecordError` naming the first invalid field.
    """
    kind = kind_of(record)
    _refuse_unknown(record, _RECORD_KEYS, "")
    ver = record.get("ver", SCHEMA_VERSION)
    if not (isinstance(ver, str) and ver.startswith("1.3.")):
        raise DccRecordError("ver", f"schema version {ver!r} is not supported (only 1.3.x)")
    sets = value_sets or ValueSets.shipped()
    if issued_at is not None:
        issued_on = issued_at.astimezone(dt.UTC).date()
    nam = _names(record.get("nam"), notes if notes is not None else [])
    dob = _dob(record.get("dob"))
    context = _Context(kind, dob, issuer_country, issued_on, issued_at, sets)
    build = {"v": _vaccination, "t": _test, "r": _recovery}[kind]
    entry = build(record[kind][0], context, allow_dose_beyond_series)
    version = SCHEMA_VERSION if "fnt" in nam else SCHEMA_VERSION_WITHOUT_FNT
    return {"ver": version, "nam": nam, "dob": record["dob"], kind: [entry]}


def recovery_valid_until(hcert: Mapping[str, Any]) -> int | None:
    """For a recovery HCERT, the last second (UTC) of its ``du`` day as a Unix time: the CWT
    ``exp`` of a recovery certificate (before the DSC limit). ``None`` for other kinds."""
    entries = hcert.get("r")
    if not entries:
        return None
    until = dt.date.fromisoformat(entries[0]["du"]) + dt.timedelta(days=1)
    return int(dt.datetime(until.year, until.month, until.day, tzinfo=dt.UTC).timestamp()) - 1


class _Context:
    """What every entry check needs besides the entry."""

    def __init__(
        self,
        kind: str,
        dob: dt.date,
        issuer_country: str | None,
        issued_on: dt.date | None,
        issued_at: dt.datetime | None,
        value_sets: ValueSets,
    ) -> None:
        self.prefix = f"{kind}[0]."
        self.dob = dob
        self.issuer_country = issuer_country
        self.issued_on = issued_on
        self.issued_at = issued_at
        self.sets = value_sets

    def code(self, entry: Mapping[str, Any], key: str, value_set: str) -> str:
        field = self.prefix + key
        value = entry.get(key)
        if value is None:
            raise DccRecordError(field, "is required")
        if isinstance(value, str) and not value.strip():
            raise DccRecordError(field, "must not be empty")
        return self.sets.check(value_set, value, field)

    def target(self, entry: Mapping[str, Any]) -> str:
        field = self.prefix + "tg"
        return self.sets.check("disease-agent-targeted", entry.get("tg", COVID19_TARGET), field)

    def text(self, entry: Mapping[str, Any], key: str, *, required: bool = True) -> str | None:
        return _text(entry.get(key), self.prefix + key, required=required)

    def event_date(self, entry: Mapping[str, Any], key: str, what: str) -> dt.date:
        """A date of something that happened: from 2020, not before birth, not in the future."""
        field = self.prefix + key
        date = _date(entry.get(key), field)
        if date < EARLIEST_EVENT:
            raise DccRecordError(field, f"{date} is before {EARLIEST_EVENT}")
        if date < self.dob:
            raise DccRecordError(field, f"{date} is before the date of birth")
        if self.issued_on is not None and date > self.issued_on:
            raise DccRecordError(
                field, f"{date} is after the issuance date {self.issued_on}: {what}"
            )
        return date

    def country_and_uvci(self, entry: Mapping[str, Any]) -> tuple[str, str, str]:
        co = self.code(entry, "co", "country-2-codes")
        issuer = _text(entry.get("is"), self.prefix + "is")
        assert issuer is not None
        return co, issuer, self._uvci(entry, co)

    def _uvci(self, entry: Mapping[str, Any], co: str) -> str:
        field = self.prefix + "ci"
        ci = _text(entry.get("ci"), field, required=False)
        try:
            if ci is None:
                return generate_uvci(self.issuer_country or co)
            validate_uvci(ci, require_check=False)
        except UvciError as exc:
            problem = f"cannot generate a UVCI: {exc}" if ci is None else str(exc)
            raise DccRecordError(field, problem) from None
        return ci


def _vaccination(entry: object, c: _Context, allow_dose_beyond_series: bool) -> dict[str, Any]:
    entry = _entry(entry, "v", c)
    p = c.prefix
    tg = c.target(entry)
    vp = c.code(entry, "vp", "vaccine-prophylaxis")
    mp = c.code(entry, "mp", "vaccine-medicinal-product")
    ma = c.code(entry, "ma", "vaccine-mah-manf")
    dn = _dose(entry.get("dn"), f"{p}dn", "dose number")
    sd = _dose(entry.get("sd"), f"{p}sd", "total series of doses")
    if dn > sd and not allow_dose_beyond_series:
        raise DccRecordError(f"{p}dn", f"dose number {dn} exceeds total series of doses {sd}")
    c.event_date(entry, "dt", "a vaccination cannot be in the future")
    co, issuer, ci = c.country_and_uvci(entry)
    return {
        "tg": tg,
        "vp": vp,
        "mp": mp,
        "ma": ma,
        "dn": dn,
        "sd": sd,
        "dt": entry["dt"],
        "co": co,
        "is": issuer,
        "ci": ci,
    }


def _test(entry: object, c: _Context, _allow: bool) -> dict[str, Any]:
    entry = _entry(entry, "t", c)
    p = c.prefix
    tg = c.target(entry)
    tt = c.code(entry, "tt", "test-type")
    out: dict[str, Any] = {"tg": tg, "tt": tt}
    name = c.text(entry, "nm", required=False)
    if name is not None:
        out["nm"] = name
    if tt == TEST_RAT:
        out["ma"] = c.code(entry, "ma", "test-manf")
    elif entry.get("ma") is not None:
        raise DccRecordError(
            f"{p}ma", f"only a rapid antigen test ({TEST_RAT}) names its device in ma"
        )
    out["sc"] = _sample_time(entry.get("sc"), f"{p}sc", c)
    out["tr"] = c.code(entry, "tr", "test-result")
    out["tc"] = c.text(entry, "tc")
    out["co"], out["is"], out["ci"] = c.country_and_uvci(entry)
    return out


def _recovery(entry: object, c: _Context, _allow: bool) -> dict[str, Any]:
    entry = _entry(entry, "r", c)
    p = c.prefix
    tg = c.target(entry)
    first_positive = c.event_date(
        entry, "fr", "the first positive test of a recovery cannot be in the future"
    )
    valid_from = _date(entry.get("df"), f"{p}df")
    valid_until = _date(entry.get("du"), f"{p}du")
    if valid_from < first_positive:
        raise DccRecordError(
            f"{p}df", f"{valid_from} is before the first positive test {first_positive}"
        )
    if valid_until < valid_from:
        raise DccRecordError(
            f"{p}du", f"{valid_until} is before the start of validity {valid_from}"
        )
    longest = first_positive + dt.timedelta(days=RECOVERY_MAX_DAYS)
    if valid_until > longest:
        raise DccRecordError(
            f"{p}du",
            f"{valid_until} is more than {RECOVERY_MAX_DAYS} days after the first positive test"
            f" {first_positive} (at most {longest}, Regulation (EU) 2021/953)",
        )
    co, issuer, ci = c.country_and_uvci(entry)
    return {
        "tg": tg,
        "fr": entry["fr"],
        "co": co,
        "is": issuer,
        "df": entry["df"],
        "du": entry["du"],
        "ci": ci,
    }


def _entry(entry: object, kind: str, c: _Context) -> Mapping[str, Any]:
    if not isinstance(entry, Mapping):
        raise DccRecordError(f"{kind}[0]", "must be an object")
    _refuse_unknown(entry, _ENTRY_KEYS[kind], c.prefix)
    return entry


def _sample_time(value: object, field: str, c: _Context) -> str:
    if not isinstance(value, str) or not _DATE_TIME.match(value):
        raise DccRecordError(
            field, f"{value!r} is not a date-time with offset such as 2026-11-30T08:15:00+07:00"
        )
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise DccRecordError(field, f"{value!r} is not a calendar time ({exc})") from None
    day = moment.astimezone(dt.UTC).date()
    if day < EARLIEST_EVENT:
        raise DccRecordError(field, f"{value} is before {EARLIEST_EVENT}")
    if moment.date() < c.dob:
        raise DccRecordError(field, f"{value} is before the date of birth")
    if c.issued_at is not None and moment > c.issued_at + CLOCK_SKEW:
        raise DccRecordError(
            field, f"{value} is after the issuance time: a sample cannot be collected in the future"
        )
    if c.issued_at is None and c.issued_on is not None and day > c.issued_on:
        raise DccRecordError(field, f"{value} is after the issuance date {c.issued_on}")
    return value


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


def _names(nam: object, notes: list[str]) -> dict[str, str]:
    if not isinstance(nam, Mapping):
        raise DccRecordError("nam", "is required and must be an object with fn and/or gn")
    _refuse_unknown(nam, _NAME_KEYS, "nam.")
    out: dict[str, str] = {}
    fitting: dict[str, Callable[[str, str], str]] = {"fnt": _surname_fits, "gnt": _truncated}
    for plain, icao in (("fn", "fnt"), ("gn", "gnt")):
        name = _text(nam.get(plain), f"nam.{plain}", required=False)
        given = nam.get(icao)
        if given is not None:
            if not (isinstance(given, str) and is_icao_name(given)):
                raise DccRecordError(f"nam.{icao}", "must match ^[A-Z<]{1,80}$")
            transliterated = given
        elif name is None:
            continue
        else:
            try:
                full = transliterate(name)
            except TransliterationError as exc:
                raise DccRecordError(f"nam.{plain}", str(exc)) from None
            transliterated = fitting[icao](full, plain)
            if transliterated != full:
                notes.append(
                    f"nam.{icao}: the transliteration of nam.{plain} has {len(full)} characters;"
                    f" truncated to {len(transliterated)} by the ICAO 9303 rule: {transliterated}"
                )
        if name is not None:
            out[plain] = name
        out[icao] = transliterated
    if "fnt" not in out and "gnt" not in out:
        raise DccRecordError("nam", "needs a surname (fn or fnt), a given name (gn or gnt) or both")
    return out


def _surname_fits(transliterated: str, plain: str) -> str:
    if len(transliterated) > MAX_LENGTH:
        raise DccRecordError(
            f"nam.{plain}",
            f"transliterates to {len(transliterated)} characters, more than {MAX_LENGTH} for"
            " nam.fnt; supply nam.fnt (ICAO 9303 truncates given names first, a surname is"
            " never cut here)",
        )
    return transliterated


def _truncated(transliterated: str, _plain: str) -> str:
    return truncate_given_names(transliterated, MAX_LENGTH)


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
    if value is None:
        raise DccRecordError(field, "is required: a date YYYY-MM-DD")
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
