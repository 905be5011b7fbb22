"""The official EU DCC JSON schema (1.3.0, vendored in tests/fixtures) as a payload check."""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

from jsonschema import Draft202012Validator

from tests.conftest import ROOT

SCHEMA_FILE = ROOT / "tests" / "fixtures" / "DCC.combined-schema.json"


@functools.cache
def _schema(version: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    if version == "1.3.2":
        # Schema 1.3.2 (CHANGELOG): fnt and gnt optional, one of the two required.
        schema = copy.deepcopy(schema)
        person = schema["$defs"]["person_name"]
        del person["required"]
        person["anyOf"] = [{"required": ["fnt"]}, {"required": ["gnt"]}]
    return schema


def schema_errors(hcert: dict[str, Any]) -> list[str]:
    """Every violation of the DCC schema of the payload's own version (1.3.0 or 1.3.2)."""
    version = "1.3.2" if hcert.get("ver") == "1.3.2" else "1.3.0"
    validator = Draft202012Validator(
        _schema(version), format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(hcert)]
