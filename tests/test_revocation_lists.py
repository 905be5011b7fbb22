"""DCC revocation hashes, gateway batches, revocation lists, and ``dcc verify --revocation``."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import zlib
from pathlib import Path

import cbor2
import pytest

from signer.dcc.base45 import b45decode
from signer.dcc.cose import ALG_ES256, ALG_PS256
from signer.dcc.revocation import (
    MAX_BATCH_ENTRIES,
    BatchBuilder,
    HashType,
    RevocationBatch,
    RevocationList,
    RevocationListError,
    certificate_hashes,
    cose_signature_hash,
    country_uci_hash,
    uci_hash,
)
from signer.dcc.trust import trust_list_entry, write_trust_list
from tests.test_dcc_cli import EXAMPLES, SoftService, run

EXPIRES = dt.datetime(2028, 6, 30, tzinfo=dt.UTC)
KID = b"\x11" * 8


def sha16(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()[:16]


def test_the_three_hash_types() -> None:
    uvci = "URN:UVCI:01:VN:ABC123#K"
    assert uci_hash(uvci) == sha16(uvci.encode())
    assert country_uci_hash("vn", uvci) == sha16(b"VN" + uvci.encode())
    r = os.urandom(32)
    assert cose_signature_hash(ALG_ES256, r + os.urandom(32)) == sha16(r)
    assert cose_signature_hash(ALG_ES256, r + os.urandom(32)) == sha16(r), "s is not hashed"
    rsa = os.urandom(256)
    assert cose_signature_hash(ALG_PS256, rsa) == sha16(rsa)
    both = certificate_hashes(ALG_ES256, r + bytes(32), uvci, ["VN", "DE", None, "vn"])
    assert both == [
        (HashType.SIGNATURE, sha16(r)),
        (HashType.UCI, sha16(uvci.encode())),
        (HashType.COUNTRYCODEUCI, sha16(b"VN" + uvci.encode())),
        (HashType.COUNTRYCODEUCI, sha16(b"DE" + uvci.encode())),
    ]


def test_a_batch_is_what_the_gateway_accepts() -> None:
    hashes = tuple(os.urandom(16) for _ in range(3))
    batch = RevocationBatch("VN", EXPIRES, KID, HashType.SIGNATURE, hashes)
    doc = batch.to_json()
    assert set(doc) == {"country", "expires", "kid", "hashType", "entries"}
    assert doc["kid"] == base64.b64encode(KID).decode() and len(doc["kid"]) == 12
    assert doc["hashType"] == "SIGNATURE"
    assert dt.datetime.fromisoformat(doc["expires"]) == EXPIRES
    assert [base64.b64decode(e["hash"]) for e in doc["entries"]] == list(hashes)
    assert all(len(e["hash"]) == 24 and set(e) == {"hash"} for e in doc["entries"])
    assert RevocationBatch.from_json(json.loads(json.dumps(doc))) == batch
    unknown = RevocationBatch("VN", EXPIRES, None, HashType.UCI, hashes[:1]).to_json()
    assert unknown["kid"] == "UNKNOWN_KID"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(entries=d["entries"] * 1001), "1 to 1000 entries"),
        (lambda d: d.update(entries=[]), "1 to 1000 entries"),
        (lambda d: d.update(kid="AAAA"), "8-byte kid"),
        (lambda d: d.update(kid="!!!!!!!!!!!="), "not base64"),
        (lambda d: d.update(hashType="SHA1"), "hashType"),
        (lambda d: d.update(country="VNM"), "alpha-2"),
        (lambda d: d.update(expires="2028-06-30T00:00:00"), "offset"),
        (lambda d: d["entries"].append({"hash": "AAAA"}), "entry 1"),
        (lambda d: d.pop("kid"), "lacks kid"),
    ],
)
def test_batches_off_the_gateway_schema_are_refused(change: object, message: str) -> None:
    doc = RevocationBatch("VN", EXPIRES, KID, HashType.UCI, (bytes(16),)).to_json()
    change(doc)  # type: ignore[operator]
    with pytest.raises(RevocationListError, match=message):
        RevocationBatch.from_json(doc)


def test_builder_cuts_at_1000_per_kid_and_type_and_keeps_arrival_order() -> None:
    kid_b = b"\x22" * 8
    builder = BatchBuilder("VN", lambda kid: EXPIRES)
    done: list[RevocationBatch] = []
    for i in range(2500):
        if (batch := builder.add(KID, HashType.SIGNATURE, i.to_bytes(16, "big"))) is not None:
            done.append(batch)
        if i % 250 == 0:
            assert builder.add(kid_b, HashType.SIGNATURE, bytes(16)) is None
    assert len(builder._open) == 2
    done.extend(builder.flush())
    assert [(b.kid, len(b.hashes)) for b in done] == [
        (KID, MAX_BATCH_ENTRIES),
        (KID, MAX_BATCH_ENTRIES),
        (kid_b, 10),  # its open batch began before KID's third one
        (KID, 500),
    ]
    mine = [b for b in done if b.kid == KID]
    assert [int.from_bytes(h, "big") for b in mine for h in b.hashes] == list(range(2500))
    assert list(builder.flush()) == []


def test_lists_load_as_object_array_or_lines_and_match_by_kid(tmp_path: Path) -> None:
    listed, unknown = os.urandom(16), os.urandom(16)
    by_kid = RevocationBatch("VN", EXPIRES, KID, HashType.SIGNATURE, (listed,)).to_json()
    anyone = RevocationBatch("VN", EXPIRES, None, HashType.UCI, (unknown,)).to_json()
    revocations = RevocationList()
    revocations.add_document(json.dumps(by_kid), "one.json")
    revocations.add_document(json.dumps([anyone]), "array.json")
    revocations.add_document(json.dumps(by_kid) + "\n\n" + json.dumps(anyone) + "\n", "b.jsonl")
    assert (len(revocations), revocations.batches) == (2, 4)
    (found,) = revocations.find(KID, [(HashType.SIGNATURE, listed)])
    assert (found.hash_type, found.value, found.source) == (HashType.SIGNATURE, listed, "one.json")
    assert revocations.find(b"\x33" * 8, [(HashType.SIGNATURE, listed)]) == []
    assert (
        revocations.find(b"\x33" * 8, [(HashType.UCI, unknown)])[0].source == "array.json batch 1"
    )
    assert revocations.find(KID, [(HashType.COUNTRYCODEUCI, listed)]) == []
    with pytest.raises(RevocationListError, match=r"bad\.jsonl line 2"):
        revocations.add_document(json.dumps(by_kid) + "\n{oops\n", "bad.jsonl")


def cose_of(hc1: str) -> list[object]:
    """The COSE_Sign1 array of an HC1 string, decoded here without signer.dcc."""
    message = cbor2.loads(zlib.decompress(b45decode(hc1[4:])))
    return list(message.value if isinstance(message, cbor2.CBORTag) else message)


def test_dcc_verify_refuses_listed_certificates_and_names_the_hash_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service = SoftService(dt.datetime.now(dt.UTC) + dt.timedelta(days=730))
    out, uvcis = tmp_path / "out.jsonl", tmp_path / "uvcis.jsonl"
    batch = ["issue", "--batch", str(EXAMPLES / "records-vn.jsonl"), "--out", str(out)]
    assert run(service, [*batch, "--uvci-out", str(uvcis)]) == 0
    issued = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(issued) >= 3
    hc1s = [line["hc1"] for line in issued]
    trust = tmp_path / "trust.json"
    write_trust_list([trust_list_entry(service.dsc_der, "vaccination", "active")], trust)

    signature = cose_of(hc1s[0])[3]
    assert isinstance(signature, bytes)
    by_signature = RevocationBatch(
        "VN", EXPIRES, service.kid, HashType.SIGNATURE, (sha16(signature[:32]),)
    )
    listed = tmp_path / "signature.json"
    listed.write_text(json.dumps(by_signature.to_json()))
    line = json.loads(uvcis.read_text().splitlines()[1])
    by_uci = RevocationBatch("VN", EXPIRES, None, HashType.UCI, (sha16(line["uvci"].encode()),))
    listed_uci = tmp_path / "uci.json"
    listed_uci.write_text(json.dumps([by_uci.to_json()]))
    capsys.readouterr()

    revocation = ["--revocation", str(listed), "--revocation", str(listed_uci)]
    assert run(service, ["verify", "--trust-list", str(trust), *revocation, *hc1s]) == 1
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["revoked"] for r in results] == [["SIGNATURE"], ["UCI"]] + [[]] * (len(hc1s) - 2)
    assert "its SIGNATURE hash" in results[0]["error"] and "signature.json" in results[0]["error"]
    assert "its UCI hash" in results[1]["error"]
    assert all(r["signature_valid"] and r["error"] is None for r in results[2:])
    assert run(service, ["verify", "--trust-list", str(trust), *revocation, *hc1s[2:]]) == 0


def test_dcc_verify_refuses_an_unreadable_revocation_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service = SoftService(dt.datetime.now(dt.UTC) + dt.timedelta(days=730))
    trust = tmp_path / "trust.json"
    write_trust_list([trust_list_entry(service.dsc_der, "vaccination", "active")], trust)
    bad = tmp_path / "bad.json"
    bad.write_text('{"country": "VN"}')
    assert run(service, ["verify", "--trust-list", str(trust), "--revocation", str(bad), "x"]) == 2
    assert "bad.json" in capsys.readouterr().err
