"""Test and recovery records, value sets, names: the payload rules, without a daemon.

Every payload built here is also checked against the official DCC JSON schema (vendored in
tests/fixtures); refusals must name the field and the value.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from signer.config import DCC_VALUE_SETS, load
from signer.dcc import TrustStore, verify
from signer.dcc.errors import DccError, DccRecordError
from signer.dcc.issue import IssuingKey, finish, prepare_one, profile_for
from signer.dcc.names import is_icao_name, transliterate, truncate_given_names
from signer.dcc.record import build_hcert, kind_of, recovery_valid_until
from signer.dcc.value_sets import SHIPPED_FOLDER, VALUE_SETS, DccValueSetError, ValueSets
from signer.errors import ConfigError
from tests.conftest import ROOT
from tests.dcc_schema import schema_errors
from tests.test_dcc_issue_verify import SoftSigner, make_dsc

EXAMPLES = ROOT / "examples"
NOW = dt.datetime(2026, 12, 2, 9, 0, tzinfo=dt.UTC)
KID = bytes(range(8))
DSC_NOT_AFTER = NOW + dt.timedelta(days=700)


def example(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / name).read_text(encoding="utf-8"))
    return data


def vaccination() -> dict[str, Any]:
    return example("record-vn.json")


def rat_record() -> dict[str, Any]:
    return example("record-test-vn.json")


def recovery(fr: dt.date = dt.date(2026, 11, 1), days: int = 180) -> dict[str, Any]:
    record = example("record-recovery-vn.json")
    entry = record["r"][0]
    entry["fr"] = fr.isoformat()
    entry["df"] = (fr + dt.timedelta(days=11)).isoformat()
    entry["du"] = (fr + dt.timedelta(days=days)).isoformat()
    return record


def build(record: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    hcert = build_hcert(record, issuer_country="VN", issued_at=NOW, **kwargs)
    assert schema_errors(hcert) == []
    return hcert


# -- kinds ---------------------------------------------------------------------------------------


def test_test_certificate_payload() -> None:
    hcert = build(rat_record())
    (t,) = hcert["t"]
    assert hcert["ver"] == "1.3.0"
    assert set(t) == {"tg", "tt", "ma", "sc", "tr", "tc", "co", "is", "ci"}
    assert (t["tt"], t["ma"], t["tr"]) == ("LP217198-3", "1232", "260415000")
    assert t["ci"].startswith("URN:UVCI:01:VN:")


def test_naa_test_has_a_name_and_no_device() -> None:
    record = rat_record()
    entry = record["t"][0]
    entry.update(tt="LP6464-4", nm="Roche cobas SARS-CoV-2")
    del entry["ma"]
    assert build(record)["t"][0]["nm"] == "Roche cobas SARS-CoV-2"
    entry["ma"] = "1232"
    with pytest.raises(DccRecordError) as info:
        build_hcert(record, issued_at=NOW)
    assert info.value.field == "t[0].ma"
    assert "only a rapid antigen test" in str(info.value)


def test_recovery_payload_and_expiry_follows_du() -> None:
    record = recovery()
    hcert = build(record)
    (r,) = hcert["r"]
    assert (r["fr"], r["df"], r["du"]) == ("2026-11-01", "2026-11-12", "2027-04-30")
    until = recovery_valid_until(hcert)
    assert until == int(dt.datetime(2027, 4, 30, 23, 59, 59, tzinfo=dt.UTC).timestamp())
    cert = prepare_one(record, KID, "VN", NOW, DSC_NOT_AFTER)
    assert (cert.kind, cert.profile, cert.exp, cert.exp_clipped) == ("r", "recovery", until, False)
    clipped = prepare_one(record, KID, "VN", NOW, NOW + dt.timedelta(days=30))
    assert clipped.exp == int((NOW + dt.timedelta(days=30)).timestamp())
    assert clipped.exp_clipped


def test_default_validity_by_kind() -> None:
    iat = int(NOW.timestamp())
    vaccine = prepare_one(vaccination(), KID, "VN", NOW, DSC_NOT_AFTER)
    test = prepare_one(rat_record(), KID, "VN", NOW, DSC_NOT_AFTER)
    assert vaccine.exp - iat == 365 * 86400
    assert test.exp - iat == 72 * 3600
    longer = prepare_one(rat_record(), KID, "VN", NOW, DSC_NOT_AFTER, validity=dt.timedelta(days=7))
    assert longer.exp - iat == 7 * 86400


@pytest.mark.parametrize(
    ("mutate", "field", "message"),
    [
        (lambda r: r.update(t=[r["v"][0]]), "t", "one kind only"),
        (lambda r: r["v"].append(copy.deepcopy(r["v"][0])), "v", "exactly one"),
        (lambda r: r.pop("v"), "record", "needs one entry"),
        (lambda r: r.update(r=r.pop("v")), "r[0].vp", "unknown field"),
    ],
)
def test_kind_refusals(mutate: Any, field: str, message: str) -> None:
    record = vaccination()
    mutate(record)
    with pytest.raises(DccRecordError) as info:
        build_hcert(record, issued_at=NOW)
    assert info.value.field == field
    assert message in info.value.problem


@pytest.mark.parametrize(
    ("record", "profile", "kind"),
    [(vaccination, "test", "v"), (rat_record, "recovery", "t"), (recovery, "vaccination", "r")],
)
def test_wrong_kind_for_the_profile(record: Any, profile: str, kind: str) -> None:
    with pytest.raises(DccRecordError) as info:
        prepare_one(record(), KID, "VN", NOW, DSC_NOT_AFTER, profile=profile)
    assert info.value.field == kind
    assert f"cannot be signed for profile {profile!r}" in str(info.value)


def test_profile_follows_the_kind() -> None:
    assert [profile_for(r()) for r in (vaccination, rat_record, recovery)] == [
        "vaccination",
        "test",
        "recovery",
    ]
    assert kind_of(recovery()) == "r"


def _set(record: dict[str, Any], kind: str, key: str, value: object) -> dict[str, Any]:
    record[kind][0][key] = value
    return record


@pytest.mark.parametrize(
    ("record", "field", "message"),
    [
        (lambda: _set(rat_record(), "t", "sc", "2026-12-03T09:00:00Z"), "t[0].sc", "future"),
        (lambda: _set(rat_record(), "t", "sc", "2026-11-30T08:15:00"), "t[0].sc", "offset"),
        (lambda: _set(rat_record(), "t", "sc", "2019-12-31T23:00:00Z"), "t[0].sc", "before 2020"),
        (lambda: _set(rat_record(), "t", "tc", ""), "t[0].tc", "empty"),
        (lambda: _set(rat_record(), "t", "tr", None), "t[0].tr", "required"),
        (lambda: recovery(fr=dt.date(2026, 12, 3)), "r[0].fr", "cannot be in the future"),
        (lambda: recovery(days=181), "r[0].du", "more than 180 days"),
        (lambda: _set(recovery(), "r", "df", "2026-10-31"), "r[0].df", "before the first"),
        (lambda: _set(recovery(), "r", "du", "2026-11-05"), "r[0].du", "before the start"),
        (lambda: _set(recovery(), "r", "du", "30.04.2027"), "r[0].du", "YYYY-MM-DD"),
    ],
)
def test_test_and_recovery_refusals_name_the_field(record: Any, field: str, message: str) -> None:
    with pytest.raises(DccRecordError) as info:
        build_hcert(record(), issued_at=NOW)
    assert info.value.field == field
    assert message in info.value.problem


def test_recovery_whose_validity_has_passed_is_refused() -> None:
    record = recovery(fr=dt.date(2026, 5, 1), days=180)  # du 2026-10-28, before NOW
    with pytest.raises(DccRecordError) as info:
        prepare_one(record, KID, "VN", NOW, DSC_NOT_AFTER)
    assert info.value.field == "r[0].du"
    assert "has passed" in info.value.problem


# -- value sets ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "key", "value", "value_set"),
    [
        ("v", "mp", "NotAVaccine", "vaccines-covid-19-names@2022-01-26"),
        ("v", "ma", "ACME", "vaccines-covid-19-auth-holders@2022-01-26"),
        ("v", "vp", "XYZ", "sct-vaccines-covid-19@2023-01-25"),
        ("v", "co", "ZZ", "country-2-codes@2019-11-01"),
        ("t", "tt", "LP0000-0", "covid-19-lab-test-type@2021-04-27"),
        ("t", "ma", "99999", "covid-19-lab-test-manufacturer-and-name@2021-07-15"),
        ("t", "tr", "123", "covid-19-lab-result@2021-04-27"),
        ("r", "tg", "12345", "disease-agent-targeted@2021-04-27"),
    ],
)
def test_codes_outside_the_value_sets_are_refused(
    kind: str, key: str, value: str, value_set: str
) -> None:
    record = {"v": vaccination, "t": rat_record, "r": recovery}[kind]()
    record[kind][0][key] = value
    with pytest.raises(DccRecordError) as info:
        prepare_one(record, KID, "VN", NOW, DSC_NOT_AFTER)
    assert info.value.field == f"{kind}[0].{key}"
    assert repr(value) in info.value.problem
    assert value_set in info.value.problem


def test_inactive_codes_are_refused_with_their_name() -> None:
    record = vaccination()
    record["v"][0].update(vp="J07BX03")
    with pytest.raises(DccRecordError, match=r"v\[0\]\.vp: 'J07BX03' \(covid-19 vaccines"):
        build_hcert(record, issued_at=NOW)
    record = rat_record()
    record["t"][0]["ma"] = "1606"  # RapiGEN, active: false in the 2021-07-15 list
    with pytest.raises(DccRecordError, match="inactive"):
        build_hcert(record, issued_at=NOW)


def test_small_value_sets_list_the_allowed_codes() -> None:
    record = rat_record()
    record["t"][0]["tr"] = "positive"
    with pytest.raises(DccRecordError) as info:
        build_hcert(record, issued_at=NOW)
    assert "allowed: 260415000 (Not detected), 260373001 (Detected)" in info.value.problem


def test_national_codes_only_through_the_allow_list() -> None:
    record = vaccination()
    record["v"][0]["mp"] = "VN-NATIONAL-1"
    with pytest.raises(DccRecordError, match=r"\[dcc.national_codes\] vaccine-medicinal-product"):
        build_hcert(record, issued_at=NOW)
    sets = ValueSets.load(national={"vaccine-medicinal-product": ["VN-NATIONAL-1"]})
    assert build(record, value_sets=sets)["v"][0]["mp"] == "VN-NATIONAL-1"
    with pytest.raises(DccValueSetError, match="unknown value set"):
        ValueSets.load(national={"vaccines": ["X"]})


def test_shipped_value_sets_have_versions_and_match_the_config_names() -> None:
    versions = ValueSets.shipped().versions()
    assert set(versions) == set(VALUE_SETS) == set(DCC_VALUE_SETS)
    for name, version in versions.items():
        document = json.loads((SHIPPED_FOLDER / f"{name}.json").read_text(encoding="utf-8"))
        assert version == f"{document['valueSetId']}@{document['valueSetDate']}"


def test_an_operator_folder_replaces_the_shipped_sets(tmp_path: Path) -> None:
    folder = tmp_path / "sets"
    shutil.copytree(SHIPPED_FOLDER, folder)
    path = folder / "vaccine-medicinal-product.json"
    document = json.loads(path.read_text(encoding="utf-8"))
    document["valueSetDate"] = "2030-01-01"
    del document["valueSetValues"]["EU/1/20/1528"]
    path.write_text(json.dumps(document), encoding="utf-8")
    sets = ValueSets.load(folder)
    assert sets.versions()["vaccine-medicinal-product"] == "vaccines-covid-19-names@2030-01-01"
    with pytest.raises(DccRecordError, match="vaccines-covid-19-names@2030-01-01"):
        build_hcert(vaccination(), issued_at=NOW, value_sets=sets)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d, p: p.unlink(), "does not exist"),
        (lambda d, p: p.write_text("{", encoding="utf-8"), "not valid JSON"),
        (lambda d, p: p.write_text(json.dumps({**d, "valueSetId": "x"})), "valueSetId 'x'"),
        (lambda d, p: p.write_text(json.dumps({**d, "valueSetDate": 2021})), "valueSetDate"),
        (lambda d, p: p.write_text(json.dumps({**d, "valueSetValues": {}})), "valueSetValues"),
    ],
)
def test_a_broken_value_set_folder_names_the_file(
    tmp_path: Path, damage: Any, message: str
) -> None:
    folder = tmp_path / "sets"
    shutil.copytree(SHIPPED_FOLDER, folder)
    path = folder / "test-type.json"
    damage(json.loads(path.read_text(encoding="utf-8")), path)
    with pytest.raises(DccValueSetError) as info:
        ValueSets.load(folder)
    assert "test-type.json" in str(info.value)
    assert message in str(info.value)


# -- names ---------------------------------------------------------------------------------------


def test_given_name_only_is_issued_with_schema_1_3_2() -> None:
    record = vaccination()
    record["nam"] = {"gn": "Charles"}
    hcert = build(record)
    assert hcert["ver"] == "1.3.2"
    assert hcert["nam"] == {"gn": "Charles", "gnt": "CHARLES"}
    record["nam"] = {"gnt": "CHARLES"}
    assert build(record)["nam"] == {"gnt": "CHARLES"}


def test_long_given_names_are_truncated_by_the_icao_rule_and_reported() -> None:
    given = "Anna-Maria Bernadette Cäcilie Dörthe Eleonore Friederike Gwendolyn Hildegard Jü"
    assert len(given) <= 80 and len(transliterate(given)) > 80
    record = vaccination()
    record["nam"] = {"fn": "Müller", "gn": given}
    notes: list[str] = []
    hcert = build(record, notes=notes)
    gnt = hcert["nam"]["gnt"]
    assert len(gnt) == 80 and is_icao_name(gnt) and not gnt.endswith("<")
    assert gnt.startswith("ANNA<MARIA<BERNADETTE<")
    assert gnt == truncate_given_names(transliterate(given))
    (note,) = notes
    assert note.startswith(
        f"nam.gnt: the transliteration of nam.gn has {len(transliterate(given))}"
    )
    cert = prepare_one(record, KID, "VN", NOW, DSC_NOT_AFTER)
    assert cert.notes == (note,)


def test_truncation_shortens_later_given_names_first() -> None:
    names = "ALEXANDER<" + "<".join(["BARTHOLOMEW"] * 8)
    cut = truncate_given_names(names, 40)
    assert len(cut) <= 40
    assert cut.startswith("ALEXANDER<BARTHOLOMEW<")
    assert truncate_given_names("A" * 90, 80) == "A" * 80
    assert truncate_given_names("SHORT") == "SHORT"


def test_long_surname_is_refused_not_cut() -> None:
    record = vaccination()
    record["nam"] = {"fn": "Ä" * 45, "gn": "Ann"}
    with pytest.raises(DccRecordError) as info:
        build_hcert(record, issued_at=NOW)
    assert info.value.field == "nam.fn"
    assert "transliterates to 90 characters" in info.value.problem
    record["nam"]["fnt"] = "AE" * 40
    assert build(record)["nam"]["fnt"] == "AE" * 40


def test_the_official_given_name_only_example_has_the_same_names() -> None:
    # eu-dcc-schema examples/vaccination/special-case-only-given-name.json: nam is
    # {"gn": "Charles", "gnt": "CHARLES"} with ver 1.3.3.
    record = vaccination()
    record["nam"] = {"gn": "Charles"}
    assert build(record)["nam"] == {"gn": "Charles", "gnt": "CHARLES"}


# -- DSC extended key usage ----------------------------------------------------------------------


def test_a_dsc_restricted_to_vaccinations_neither_issues_nor_verifies_a_test() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    software = SoftSigner(key, make_dsc(key))  # EKU: vaccination only
    with pytest.raises(DccError, match="restricted to vaccination certificates"):
        IssuingKey.from_dsc(software.kid, software.dsc_der, profile="test")
    assert IssuingKey.from_dsc(software.kid, software.dsc_der, profile="vaccination")
    iat = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
    record = rat_record()
    record["t"][0]["sc"] = "2025-05-31T10:00:00Z"
    not_after = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    cert = prepare_one(record, software.kid, "VN", iat, not_after)
    (hc1,) = finish([cert], software.sign("test", software.kid, [cert.digest]))
    result = verify(hc1, TrustStore.from_dsc(software.dsc_der), at=iat)
    assert result.signature_valid
    assert not result.acceptable
    assert result.error is not None and "extended key usage" in result.error
    vaccine = prepare_one(vaccination(), software.kid, "VN", iat, not_after)
    (ok,) = finish([vaccine], software.sign("vaccination", software.kid, [vaccine.digest]))
    assert verify(ok, TrustStore.from_dsc(software.dsc_der), at=iat).acceptable


# -- configuration ---------------------------------------------------------------------------------

_MINIMAL = (
    '[keys]\ncsca_cert = "csca.pem"\n[hsm]\nmodule = "/usr/lib/softhsm/libsofthsm2.so"\n'
    'token_label = "t"\npin_file = "pin"\n'
)


def test_dcc_settings_are_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "signer.toml"
    path.write_text(
        _MINIMAL + '[dcc]\nvalue_sets = "sets"\n[dcc.national_codes]\ntest-manf = ["VN-1"]\n',
        encoding="utf-8",
    )
    settings = load(path)
    assert settings.dcc.value_sets == (tmp_path / "sets").resolve()
    assert dict(settings.dcc.national_codes) == {"test-manf": ("VN-1",)}
    assert settings.hsm.upload_key_label == "signer-upload"
    path.write_text(
        _MINIMAL + '[dcc.national_codes]\nvaccines = ["X"]\ntest-type = [" LP1 "]\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load(path)
    text = str(info.value)
    assert "[dcc.national_codes.vaccines] is not a value set" in text
    assert "[dcc.national_codes.test-type] codes must be 1-80 characters" in text
    assert "unknown setting" not in text
