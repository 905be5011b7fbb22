"""The eHealth Network value sets a DCC record is checked against before anything is signed.

Eight value sets, each a JSON document ``{"valueSetId", "valueSetDate", "valueSetValues":
{code: {"display", "active", ...}}}`` in a file named as the eHN names it (see
:data:`VALUE_SETS`). signer ships a copy (``signer/dcc/valuesets/``, sources and versions in
its ``SOURCES.md``); an operator points the configuration at a folder of newer files
(``[dcc] value_sets``) once the DCC Gateway publishes them.

A code passes when the value set lists it as active. A code the value set marks inactive
(``"active": false``, "deprecated" in the eHN guidelines) is refused: the guidelines say such
codes must not be used for new certificates. National codes (a vaccine only one country uses,
a national test device) pass only when the configuration lists them explicitly under
``[dcc.national_codes]``, by value-set name; nothing else outside the sets is ever signed.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final

from signer.dcc.errors import DccError, DccRecordError

SHIPPED_FOLDER: Final = Path(__file__).resolve().parent / "valuesets"

VALUE_SETS: Final = MappingProxyType(
    {
        "disease-agent-targeted": "disease-agent-targeted",
        "vaccine-prophylaxis": "sct-vaccines-covid-19",
        "vaccine-medicinal-product": "vaccines-covid-19-names",
        "vaccine-mah-manf": "vaccines-covid-19-auth-holders",
        "test-type": "covid-19-lab-test-type",
        "test-manf": "covid-19-lab-test-manufacturer-and-name",
        "test-result": "covid-19-lab-result",
        "country-2-codes": "country-2-codes",
    }
)
"""Value-set name (the file is ``NAME.json``) -> the ``valueSetId`` the file must carry."""

WHAT: Final = MappingProxyType(
    {
        "disease-agent-targeted": "disease or agent",
        "vaccine-prophylaxis": "vaccine type",
        "vaccine-medicinal-product": "vaccine product",
        "vaccine-mah-manf": "vaccine marketing authorisation holder",
        "test-type": "test type",
        "test-manf": "rapid antigen test device",
        "test-result": "test result",
        "country-2-codes": "country code",
    }
)
"""What a code of each value set names, for messages."""

MAX_FILE_BYTES: Final = 4 * 1024 * 1024
"""Largest value-set file read: the JRC device list, the biggest set, is a few hundred KiB."""
MAX_CODE_CHARS: Final = 80
_LISTED_IN_MESSAGE = 5
_SHOWN_VALUE_CHARS = 40
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class DccValueSetError(DccError):
    """A value-set file or folder cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Code:
    """One code of a value set."""

    display: str
    active: bool


@dataclass(frozen=True)
class ValueSet:
    """One value set as loaded, with the national codes the configuration adds to it."""

    name: str
    value_set_id: str
    date: str
    codes: Mapping[str, Code]
    source: Path
    national: frozenset[str] = field(default_factory=frozenset)

    @property
    def version(self) -> str:
        """``valueSetId@valueSetDate``, as messages and ``signer dcc value-sets`` show it."""
        return f"{self.value_set_id}@{self.date}"

    def check(self, value: object, field_name: str) -> str:
        """Return ``value`` if it may be signed in ``field_name``; else raise
        :class:`DccRecordError` naming the field, the value and the value set."""
        if not isinstance(value, str):
            raise DccRecordError(field_name, f"must be a string code, got {type(value).__name__}")
        if value in self.national:
            return value
        code = self.codes.get(value)
        if code is None:
            raise DccRecordError(field_name, self._unknown(value))
        if not code.active:
            raise DccRecordError(
                field_name,
                f"{_shown(value)} ({code.display}) is inactive in value set {self.version}: "
                "the eHN guidelines forbid it in new certificates; use its successor",
            )
        return value

    def _unknown(self, value: str) -> str:
        message = f"{_shown(value)} is not a {WHAT[self.name]} of value set {self.version}"
        active = [code for code, entry in self.codes.items() if entry.active]
        if len(active) <= _LISTED_IN_MESSAGE:
            listed = ", ".join(f"{code} ({self.codes[code].display})" for code in active)
            return f"{message}; allowed: {listed}"
        return f"{message}; a national code must be listed under [dcc.national_codes] {self.name}"


class ValueSets:
    """All eight value sets a record is checked against."""

    def __init__(self, sets: Mapping[str, ValueSet]) -> None:
        """Value sets by name; every name of :data:`VALUE_SETS` must be present."""
        missing = sorted(set(VALUE_SETS) - set(sets))
        if missing:
            raise DccValueSetError(f"value sets missing: {', '.join(missing)}")
        self._sets = dict(sets)

    @classmethod
    def load(
        cls, folder: Path | None = None, national: Mapping[str, Iterable[str]] | None = None
    ) -> ValueSets:
        """Load ``NAME.json`` for every value set from ``folder`` (default: the shipped copy)
        and add the ``national`` codes (value-set name -> codes)."""
        source = SHIPPED_FOLDER if folder is None else Path(folder)
        if not source.is_dir():
            raise DccValueSetError(f"value-set folder {source} does not exist")
        extra = dict(national or {})
        unknown = sorted(set(extra) - set(VALUE_SETS))
        if unknown:
            raise DccValueSetError(
                f"national codes for unknown value set(s) {', '.join(unknown)};"
                f" known: {', '.join(VALUE_SETS)}"
            )
        sets = {
            name: _load_one(source / f"{name}.json", name, frozenset(extra.get(name, ())))
            for name in VALUE_SETS
        }
        return cls(sets)

    @staticmethod
    @functools.cache
    def shipped() -> ValueSets:
        """The value sets shipped with signer, without national codes (loaded once)."""
        return ValueSets.load()

    def __getitem__(self, name: str) -> ValueSet:
        """The value set called ``name`` (a key of :data:`VALUE_SETS`)."""
        return self._sets[name]

    def check(self, name: str, value: object, field_name: str) -> str:
        """Check ``value`` of ``field_name`` against value set ``name`` (see
        :meth:`ValueSet.check`)."""
        return self._sets[name].check(value, field_name)

    def versions(self) -> dict[str, str]:
        """Value-set name -> ``valueSetId@valueSetDate`` of every set in use."""
        return {name: value_set.version for name, value_set in self._sets.items()}


def _shown(value: str) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_VALUE_CHARS else text[: _SHOWN_VALUE_CHARS - 3] + "..."


def _load_one(path: Path, name: str, national: frozenset[str]) -> ValueSet:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise DccValueSetError(f"value-set file {path} does not exist") from None
    except OSError as exc:
        raise DccValueSetError(f"value-set file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise DccValueSetError(f"value-set file {path} is larger than {MAX_FILE_BYTES} bytes")
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise DccValueSetError(f"value-set file {path} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise DccValueSetError(f"value-set file {path} is not a JSON object")
    expected = VALUE_SETS[name]
    if document.get("valueSetId") != expected:
        raise DccValueSetError(
            f"value-set file {path} has valueSetId {document.get('valueSetId')!r},"
            f" expected {expected!r}"
        )
    date = document.get("valueSetDate")
    if not isinstance(date, str) or not _DATE.match(date):
        raise DccValueSetError(f"value-set file {path} has no valueSetDate YYYY-MM-DD")
    values = document.get("valueSetValues")
    if not isinstance(values, dict) or not values:
        raise DccValueSetError(f"value-set file {path} has no valueSetValues")
    codes = {}
    for code, entry in values.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("display"), str):
            raise DccValueSetError(f"value-set file {path}: code {_shown(code)} has no display")
        active = entry.get("active", True)
        if not isinstance(active, bool):
            raise DccValueSetError(f"value-set file {path}: code {_shown(code)} active is no bool")
        codes[code] = Code(display=entry["display"], active=active)
    for code in national:
        if not isinstance(code, str) or not 0 < len(code) <= MAX_CODE_CHARS:
            raise DccValueSetError(f"national code {code!r} for {name} is not 1-80 characters")
    return ValueSet(name, expected, date, MappingProxyType(codes), path, national)
