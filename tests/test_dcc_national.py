"""What a national issuer needs, through the real daemon on a SoftHSM token.

One appliance with a key per profile (vaccination, test, recovery), as the dev setup makes
it. Test and recovery certificates are issued by ``signer dcc issue`` and checked with pycose,
a hand-built Sig_structure and the official DCC JSON schema; value-set and kind refusals sign
nothing; the DCC Gateway packages of a DSC, signed by the upload key in the HSM, pass
``openssl cms -verify``; the signed trust list verifies only with the pinned certificate.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from signer.client import SignerClient
from signer.dcc import DccRecordError, issue_records
from signer.keys.profiles import eku_for_profile
from tests.conftest import Appliance, new_appliance
from tests.dcc_schema import schema_errors
from tests.test_dcc_daemon import cose_bytes, independently_verified, signatures_total

PROFILES = ["vaccination", "test", "recovery"]


@pytest.fixture(scope="module")
def national(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    """One daemon with an active key for each of the three profiles."""
    appliance = new_appliance(tmp_path_factory.mktemp("national"), {"profiles": PROFILES})
    appliance.setup()
    appliance.start()
    yield appliance
    appliance.stop()


def config(appliance: Appliance) -> str:
    return str(appliance.config_path)


def write(path: Path, record: dict[str, Any]) -> Path:
    path.write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
    return path


def rat_record(now: dt.datetime | None = None) -> dict[str, Any]:
    sampled = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(hours=3)
    return {
        "nam": {"fn": "Trần", "gn": "Thị Ngọc Ánh"},
        "dob": "1992-11-02",
        "t": [
            {
                "tt": "LP217198-3",
                "ma": "1232",
                "sc": sampled.replace(microsecond=0).isoformat(),
                "tr": "260415000",
                "tc": "Bach Mai Hospital, Ha Noi",
                "co": "VN",
                "is": "Ministry of Health of Viet Nam",
            }
        ],
    }


def recovery_record() -> dict[str, Any]:
    first = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=20)
    return {
        "nam": {"gn": "Minh Khai"},
        "dob": "1978",
        "r": [
            {
                "fr": first.isoformat(),
                "df": (first + dt.timedelta(days=11)).isoformat(),
                "du": (first + dt.timedelta(days=180)).isoformat(),
                "co": "VN",
                "is": "Ministry of Health of Viet Nam",
            }
        ],
    }


def vaccination_record() -> dict[str, Any]:
    record: dict[str, Any] = json.loads(Path("examples/record-vn.json").read_text("utf-8"))
    return record


def dsc_of(appliance: Appliance, profile: str) -> bytes:
    return bytes(appliance.signing_key(profile).dsc_der)


def hcert_of(hc1: str) -> dict[Any, Any]:
    claims = cbor2.loads(cbor2.loads(cose_bytes(hc1)).value[2])
    hcert: dict[Any, Any] = claims[-260][1]
    return hcert


def test_test_and_recovery_certificates_verify_everywhere(
    national: Appliance, tmp_path: Path
) -> None:
    uvci_out = tmp_path / "uvcis.jsonl"
    issued: dict[str, dict[str, Any]] = {}
    for kind, record in (("t", rat_record()), ("r", recovery_record())):
        result = national.cli(
            "dcc", "issue", str(write(tmp_path / f"{kind}.json", record)), "--config",
            config(national), "--json", "--uvci-out", str(uvci_out),
        )  # fmt: skip
        issued[kind] = json.loads(result.stdout)
    for kind, profile in (("t", "test"), ("r", "recovery")):
        summary = issued[kind]
        assert (summary["kind"], summary["profile"], summary["co"]) == (kind, profile, "VN")
        dsc = dsc_of(national, profile)
        claims = independently_verified(summary["hc1"], dsc)  # pycose + cryptography
        hcert = claims[-260][1]
        assert schema_errors(hcert) == []
        assert hcert[kind][0]["ci"] == summary["uvci"]
        assert summary["kid"] == hashlib.sha256(dsc).digest()[:8].hex()
        usages = x509.load_der_x509_certificate(dsc).extensions.get_extension_for_class(
            x509.ExtendedKeyUsage
        )
        assert [u.dotted_string for u in usages.value] == [eku_for_profile(profile)]
    assert issued["t"]["kid"] != issued["r"]["kid"]
    assert issued["t"]["exp"] - issued["t"]["iat"] == 72 * 3600
    du = dt.date.fromisoformat(hcert_of(issued["r"]["hc1"])["r"][0]["du"])
    end_of_du = dt.datetime(du.year, du.month, du.day, 23, 59, 59, tzinfo=dt.UTC)
    assert issued["r"]["exp"] == int(end_of_du.timestamp())
    assert hcert_of(issued["r"]["hc1"])["ver"] == "1.3.2"  # a given name only
    lines = [json.loads(line) for line in uvci_out.read_text("utf-8").splitlines()]
    assert [(line["uvci"], line["kind"], line["co"]) for line in lines] == [
        (issued["t"]["uvci"], "t", "VN"),
        (issued["r"]["uvci"], "r", "VN"),
    ]


def test_a_mixed_batch_signs_each_kind_with_its_key_and_nothing_invalid(
    national: Appliance, tmp_path: Path
) -> None:
    bad_value = vaccination_record()
    bad_value["v"][0]["mp"] = "NotAVaccine"
    two_kinds = vaccination_record()
    two_kinds["t"] = rat_record()["t"]
    future = recovery_record()
    future["r"][0]["fr"] = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=2)).isoformat()
    records = [
        vaccination_record(), rat_record(), bad_value, recovery_record(), two_kinds, future,
    ]  # fmt: skip
    batch = tmp_path / "batch.jsonl"
    batch.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    out = tmp_path / "out.jsonl"
    before = signatures_total(national)
    result = national.cli(
        "dcc", "issue", "--batch", str(batch), "--out", str(out), "--config", config(national),
        check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr.decode()
    assert "3 of 6 records refused" in result.stderr.decode()
    lines = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    assert [line.get("kind") for line in lines] == ["v", "t", None, "r", None, None]
    assert lines[2]["error"].startswith("v[0].mp: 'NotAVaccine' is not a vaccine product")
    assert lines[4]["error"].startswith("t: a certificate holds one kind only")
    assert lines[5]["error"].startswith("r[0].fr:") and "future" in lines[5]["error"]
    kids = {line["kind"]: line["kid"] for line in lines if "kid" in line}
    for kind, profile in (("v", "vaccination"), ("t", "test"), ("r", "recovery")):
        assert kids[kind] == hashlib.sha256(dsc_of(national, profile)).digest()[:8].hex()
    assert signatures_total(national) - before == 3


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda r: r["v"][0].update(mp="NotAVaccine"), "v[0].mp: 'NotAVaccine'"),
        (lambda r: r["v"][0].update(ma="ACME"), "v[0].ma: 'ACME'"),
        (lambda r: r["v"][0].update(vp="XYZ"), "v[0].vp: 'XYZ'"),
        (lambda r: r["v"].append(dict(r["v"][0])), "v: must be a list with exactly one"),
    ],
)
def test_refused_records_name_field_and_value_and_sign_nothing(
    national: Appliance, tmp_path: Path, change: Any, needle: str
) -> None:
    record = vaccination_record()
    change(record)
    before = signatures_total(national)
    result = national.cli(
        "dcc", "issue", str(write(tmp_path / "r.json", record)), "--config", config(national),
        check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert needle in result.stderr.decode()
    assert result.stdout == b""
    assert signatures_total(national) == before


def test_wrong_kind_for_the_profile_is_refused(national: Appliance, tmp_path: Path) -> None:
    result = national.cli(
        "dcc", "issue", str(write(tmp_path / "t.json", rat_record())), "--config",
        config(national), "--profile", "vaccination", check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "t: a test entry cannot be signed for profile 'vaccination'" in result.stderr.decode()


def test_national_codes_pass_only_through_the_configured_allow_list(
    national: Appliance, tmp_path: Path
) -> None:
    record = vaccination_record()
    record["v"][0]["mp"] = "VN-NATIONAL-1"
    path = write(tmp_path / "n.json", record)
    refused = national.cli("dcc", "issue", str(path), "--config", config(national), check=False)
    assert refused.returncode == 2
    assert "[dcc.national_codes] vaccine-medicinal-product" in refused.stderr.decode()
    extended = tmp_path / "national.toml"
    extended.write_text(
        national.config_path.read_text("utf-8")
        + '\n[dcc.national_codes]\nvaccine-medicinal-product = ["VN-NATIONAL-1"]\n',
        "utf-8",
    )
    issued = national.cli("dcc", "issue", str(path), "--config", str(extended), "--json")
    hc1 = json.loads(issued.stdout)["hc1"]
    assert hcert_of(hc1)["v"][0]["mp"] == "VN-NATIONAL-1"
    broken = tmp_path / "broken.toml"
    broken.write_text(
        national.config_path.read_text("utf-8") + f'\n[dcc]\nvalue_sets = "{tmp_path}/none"\n',
        "utf-8",
    )
    unusable = national.cli("dcc", "issue", str(path), "--config", str(broken), check=False)
    assert unusable.returncode == 78
    assert "value-set folder" in unusable.stderr.decode()


# -- publishing ----------------------------------------------------------------------------------


def key_id_of(appliance: Appliance, profile: str) -> str:
    return str(appliance.signing_key(profile).key_id)


def openssl_verify(package: Path, ca: Path, out: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["openssl", "cms", "-verify", "-inform", "DER", "-in", str(package),
         "-CAfile", str(ca), "-out", str(out)],
        capture_output=True, timeout=30,
    )  # fmt: skip


def test_gateway_packages_of_a_dsc_pass_openssl_cms_verify(
    national: Appliance, tmp_path: Path
) -> None:
    assert shutil.which("openssl"), "openssl is needed (softhsm_setup.sh installs it)"
    out_dir = tmp_path / "pub"
    result = national.cli(
        "keys", "publish-dsc", key_id_of(national, "test"), "--config", config(national),
        "--out-dir", str(out_dir),
    )  # fmt: skip
    summary = json.loads(result.stdout)
    files = {name: Path(path) for name, path in summary["files"].items()}
    dsc = dsc_of(national, "test")
    assert files["dsc"].read_bytes() == dsc
    assert summary["kid"] == hashlib.sha256(dsc).digest()[:8].hex()
    upload_cert = x509.load_pem_x509_certificate(files["upload_certificate"].read_bytes())
    assert (
        summary["upload_certificate_sha256"]
        == hashlib.sha256(upload_cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    )
    for package in ("upload", "revocation"):
        content = tmp_path / f"{package}.der"
        verified = openssl_verify(files[package], files["upload_certificate"], content)
        assert verified.returncode == 0, verified.stderr.decode()
        assert b"Verification successful" in verified.stderr
        assert content.read_bytes() == dsc
    tampered = bytearray(files["upload"].read_bytes())
    where = bytes(tampered).index(dsc[100:120])
    tampered[where] ^= 0x01
    (tmp_path / "tampered.cms").write_bytes(bytes(tampered))
    refused = openssl_verify(tmp_path / "tampered.cms", files["upload_certificate"], tmp_path / "x")
    assert refused.returncode != 0


def test_a_package_for_a_key_without_dsc_is_refused(national: Appliance, tmp_path: Path) -> None:
    generated = national.cli(
        "keys", "generate", "--config", config(national), "--officer", "alice", "--json",
        "--profile", "test", "--label", "pending-one", "--csr-out", str(tmp_path / "p.csr"),
    )  # fmt: skip
    pending = json.loads(generated.stdout)["key_id"]
    for key_id, code, needle in (
        (pending, 1, f"key {pending} has no DSC yet"),
        ("00" * 8, 1, "no such key in the HSM"),
        ("not-hex", 1, "is not a key id"),
    ):
        result = national.cli(
            "keys", "publish-dsc", key_id, "--config", config(national), "--out-dir",
            str(tmp_path / "none"), check=False,
        )  # fmt: skip
        assert result.returncode == code, result.stderr.decode()
        assert needle in result.stderr.decode()
        assert not (tmp_path / "none").exists()


def test_upload_key_is_made_once_and_its_label_is_reserved(
    national: Appliance, tmp_path: Path
) -> None:
    first = json.loads(
        national.cli(
            "keys", "upload-key", "--config", config(national), "--out", str(tmp_path / "u1.pem")
        ).stdout
    )
    second = json.loads(
        national.cli(
            "keys", "upload-key", "--config", config(national), "--out", str(tmp_path / "u2.pem")
        ).stdout
    )
    assert first["created"] is False  # the dev setup made it
    assert first["key_id"] == second["key_id"]
    assert first["sha256_thumbprint"] == second["sha256_thumbprint"]
    assert (tmp_path / "u1.pem").read_bytes() == (tmp_path / "u2.pem").read_bytes()
    refused = national.cli(
        "keys", "generate", "--config", config(national), "--officer", "alice", "--profile",
        "test", "--label", "signer-upload", "--csr-out", str(tmp_path / "x.csr"), check=False,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "reserved for signer's own keys (audit, CSCA, upload)" in refused.stderr.decode()


def test_csca_export_matches_the_configured_certificate(
    national: Appliance, tmp_path: Path
) -> None:
    out = tmp_path / "csca.pem"
    summary = json.loads(
        national.cli(
            "keys", "export-csca", "--config", config(national), "--out", str(out), "--der",
            str(tmp_path / "csca.der"),
        ).stdout
    )  # fmt: skip
    configured = x509.load_pem_x509_certificate((national.home / "csca.pem").read_bytes())
    exported = x509.load_pem_x509_certificate(out.read_bytes())
    assert exported == configured
    der = configured.public_bytes(serialization.Encoding.DER)
    assert (tmp_path / "csca.der").read_bytes() == der
    assert summary["sha256_thumbprint"] == hashlib.sha256(der).hexdigest()
    assert (summary["certificateType"], summary["country"]) == ("CSCA", "VN")


def test_signed_and_gateway_trust_lists(national: Appliance, tmp_path: Path) -> None:
    c = config(national)
    hc1 = json.loads(
        national.cli(
            "dcc", "issue", str(write(tmp_path / "t.json", rat_record())), "--config", c, "--json"
        ).stdout
    )["hc1"]
    plain, gateway = tmp_path / "trust.json", tmp_path / "gateway.json"
    national.cli(
        "keys", "trust-list", "--config", c, "--officer", "alice", "--out", str(plain),
        "--gateway-out", str(gateway),
    )  # fmt: skip
    items = json.loads(gateway.read_text("utf-8"))
    assert {item["certificateType"] for item in items} == {"DSC"}
    assert len(items) == len(json.loads(plain.read_text("utf-8"))["entries"]) == 3
    for item in items:
        der = base64.b64decode(item["rawData"])
        assert item["thumbprint"] == hashlib.sha256(der).hexdigest()
        assert base64.b64decode(item["kid"]) == hashlib.sha256(der).digest()[:8]
        assert item["country"] == "VN"
        dt.datetime.fromisoformat(item["timestamp"])
    via_gateway = national.cli("dcc", "verify", "--trust-list", str(gateway), hc1)
    assert json.loads(via_gateway.stdout)["signature_valid"] is True

    signed, upload_pem = tmp_path / "trust.cms", tmp_path / "upload.pem"
    national.cli("keys", "upload-key", "--config", c, "--out", str(upload_pem))
    national.cli("keys", "sign-trust-list", str(plain), "--config", c, "--out", str(signed))
    content = tmp_path / "content.json"
    assert openssl_verify(signed, upload_pem, content).returncode == 0
    assert content.read_bytes() == plain.read_bytes()
    accepted = national.cli(
        "dcc", "verify", "--trust-list", str(signed), "--trust-list-signer", str(upload_pem), hc1
    )
    assert json.loads(accepted.stdout)["signature_valid"] is True
    assert "signature valid" in accepted.stderr.decode()

    unpinned = national.cli("dcc", "verify", "--trust-list", str(signed), hc1, check=False)
    assert unpinned.returncode == 2
    assert "--trust-list-signer" in unpinned.stderr.decode()
    foreign = national.cli(
        "dcc", "verify", "--trust-list", str(signed), "--trust-list-signer",
        str(national.home / "csca.pem"), hc1, check=False,
    )  # fmt: skip
    assert foreign.returncode == 2
    assert "does not verify with the pinned upload certificate" in foreign.stderr.decode()
    tampered = bytearray(signed.read_bytes())
    where = bytes(tampered).index(b'"entries"')
    tampered[where + 1] = ord("E")
    (tmp_path / "tampered.cms").write_bytes(bytes(tampered))
    altered = national.cli(
        "dcc", "verify", "--trust-list", str(tmp_path / "tampered.cms"), "--trust-list-signer",
        str(upload_pem), hc1, check=False,
    )  # fmt: skip
    assert altered.returncode == 2
    assert "does not match its signed digest" in altered.stderr.decode()
    not_signed = national.cli(
        "dcc", "verify", "--trust-list", str(plain), "--trust-list-signer", str(upload_pem), hc1,
        check=False,
    )  # fmt: skip
    assert not_signed.returncode == 2
    assert "is not a signed trust list" in not_signed.stderr.decode()
    junk = tmp_path / "junk.json"
    junk.write_text('{"format": "other"}', "utf-8")
    refused = national.cli(
        "keys", "sign-trust-list", str(junk), "--config", c, "--out", str(tmp_path / "j.cms"),
        check=False,
    )  # fmt: skip
    assert refused.returncode == 2
    assert not (tmp_path / "j.cms").exists()


def test_issue_records_signs_mixed_kinds_with_their_own_keys(national: Appliance) -> None:
    records = [recovery_record(), vaccination_record(), rat_record(), vaccination_record()]
    with SignerClient(national.address) as client:
        hc1s = issue_records(records, client.dcc_signer(), chunk_size=3)
        with pytest.raises(DccRecordError, match=r"^records\[0\]\.r: a recovery entry cannot"):
            issue_records(records, client.dcc_signer(), profile="vaccination")
    kinds = ["r", "v", "t", "v"]
    for hc1, kind in zip(hc1s, kinds, strict=True):
        profile = {"v": "vaccination", "t": "test", "r": "recovery"}[kind]
        claims = independently_verified(hc1, dsc_of(national, profile))
        assert list(claims[-260][1])[-1] == kind
        assert schema_errors(claims[-260][1]) == []
