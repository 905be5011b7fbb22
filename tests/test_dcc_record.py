"""Vaccination record -> HCERT payload: the happy path and field-naming refusals."""

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from signer.dcc.errors import DccRecordError
from signer.dcc.record import build_hcert
from signer.dcc.uvci import is_valid_uvci

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def example() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / "record-vn.json").read_text(encoding="utf-8"))
    return data


def test_example_record_becomes_hcert() -> None:
    hcert = build_hcert(example(), issuer_country="VN")
    assert hcert["ver"] == "1.3.0"
    assert hcert["nam"] == {
        "fn": "Nguyễn",
        "fnt": "NGUYEN",
        "gn": "Văn Đức",
        "gnt": "VAN<DUC",
    }
    assert hcert["dob"] == "1985-03-21"
    (v,) = hcert["v"]
    assert set(v) == {"tg", "vp", "mp", "ma", "dn", "sd", "dt", "co", "is", "ci"}
    assert v["tg"] == "840539006"
    assert (v["mp"], v["ma"], v["vp"]) == ("EU/1/20/1528", "ORG-100030215", "1119349007")
    assert (v["dn"], v["sd"], v["dt"], v["co"]) == (2, 2, "2021-09-15", "VN")
    assert v["ci"].startswith("URN:UVCI:01:VN:")
    assert is_valid_uvci(v["ci"])


def test_every_example_batch_record_is_valid() -> None:
    lines = (EXAMPLES / "records-vn.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) >= 20
    for line in lines:
        hcert = build_hcert(json.loads(line), issuer_country="VN")
        assert hcert["nam"]["fnt"].replace("<", "").isalpha()


def test_given_ci_is_kept_and_explicit_fnt_is_used() -> None:
    record = example()
    record["v"][0]["ci"] = "URN:UVCI:01:NL:187/37512422923#Z"
    record["nam"] = {"fn": "Иванов", "fnt": "IVANOV"}
    hcert = build_hcert(record)
    assert hcert["v"][0]["ci"] == "URN:UVCI:01:NL:187/37512422923#Z"
    assert hcert["nam"] == {"fn": "Иванов", "fnt": "IVANOV"}


def test_partial_dates_of_birth() -> None:
    for dob in ("1985", "1985-03", "1985-03-21"):
        record = example()
        record["dob"] = dob
        assert build_hcert(record)["dob"] == dob


def test_booster_beyond_series_needs_opt_in() -> None:
    record = example()
    record["v"][0].update(dn=2, sd=1)
    with pytest.raises(DccRecordError, match=r"^v\[0\]\.dn: dose number 2 exceeds"):
        build_hcert(record)
    assert build_hcert(record, allow_dose_beyond_series=True)["v"][0]["dn"] == 2


def _set(path: str, value: object) -> dict[str, Any]:
    record = copy.deepcopy(example())
    *parents, last = path.split(".")
    target: Any = record
    for part in parents:
        target = target["v"][0] if part == "v" else target[part]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return record


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "field", "message"),
    [
        ("nam", _DELETE, "nam", "required"),
        ("nam", {}, "nam", "needs a surname (fn or fnt), a given name (gn or gnt) or both"),
        ("nam", {"fn": "   ", "gn": "Đức"}, "nam.fn", "empty"),
        ("nam.fn", "   ", "nam.fn", "empty"),
        ("nam.fn", "Иванов", "nam.fn", "cannot be transliterated"),
        ("nam.gn", "Đức 2", "nam.gn", "cannot be transliterated"),
        ("nam.fnt", "nguyen", "nam.fnt", "A-Z<"),
        ("nam.fn", "N" * 81, "nam.fn", "more than 80"),
        ("dob", _DELETE, "dob", "required"),
        ("dob", "21.03.1985", "dob", "YYYY"),
        ("dob", "1985-02-30", "dob", "calendar"),
        ("dob", "1985-13", "dob", "calendar"),
        ("dob", "1850", "dob", "1900-2099"),
        ("v", [], "v", "exactly one"),
        ("v.dn", 0, "v[0].dn", "dose number must be >= 1"),
        ("v.sd", 0, "v[0].sd", "total series of doses must be >= 1"),
        ("v.dn", 3, "v[0].dn", "exceeds"),
        ("v.dn", "2", "v[0].dn", "integer"),
        ("v.dn", True, "v[0].dn", "integer"),
        ("v.dn", 10, "v[0].dn", "<= 9"),
        ("v.dt", "2021-09", "v[0].dt", "YYYY-MM-DD"),
        ("v.dt", "2021-02-29", "v[0].dt", "calendar"),
        ("v.dt", "2019-12-31", "v[0].dt", "before 2020"),
        ("v.dt", "2021-09-15T10:00:00", "v[0].dt", "YYYY-MM-DD"),
        ("v.co", "VNM", "v[0].co", "country code"),
        ("v.co", "vn", "v[0].co", "country code"),
        ("v.co", "ZZ", "v[0].co", "country code"),
        ("v.is", _DELETE, "v[0].is", "required"),
        ("v.mp", "", "v[0].mp", "empty"),
        ("v.vp", 1119349007, "v[0].vp", "string"),
        ("v.tg", "840539007", "v[0].tg", "840539006"),
        ("v.ci", "URN:UVCI:01:NL:187/37512422923#A", "v[0].ci", "check character"),
        ("v.ci", "not a uvci", "v[0].ci", "form"),
        ("v.lot", "X1", "v[0].lot", "unknown field"),
        ("nam.middle", "X", "nam.middle", "unknown field"),
        ("dobb", "1985", "dobb", "unknown field"),
    ],
)
def test_invalid_records_name_the_field(path: str, value: object, field: str, message: str) -> None:
    with pytest.raises(DccRecordError) as info:
        build_hcert(_set(path, value), issuer_country="VN")
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert message in str(info.value)


def test_exact_message_for_dose_zero() -> None:
    with pytest.raises(DccRecordError) as info:
        build_hcert(_set("v.dn", 0))
    assert str(info.value) == "v[0].dn: dose number must be >= 1"


def test_vaccination_date_bounds() -> None:
    with pytest.raises(DccRecordError, match=r"v\[0\]\.dt: .*before the date of birth"):
        build_hcert(_set("dob", "2021-10-01"))
    with pytest.raises(DccRecordError, match=r"v\[0\]\.dt: .*after the issuance date"):
        build_hcert(example(), issued_on=dt.date(2021, 9, 14))
    assert build_hcert(example(), issued_on=dt.date(2021, 9, 15))["v"][0]["dt"] == "2021-09-15"
