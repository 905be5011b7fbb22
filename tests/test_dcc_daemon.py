"""DCC issuance through the real daemon: CLI, independent verification, QR, refusals, rotation.

Certificates are issued by ``signer dcc issue`` (or the library) against a running appliance
on a SoftHSM token, then checked three ways: our verifier against the trust list that
``signer keys trust-list`` writes, pycose, and a hand-built Sig_structure verified with
``cryptography`` (base45 and zlib decoded here, not with our code).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import subprocess
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pycose.keys.cosekey import CoseKey
from pycose.messages.sign1message import Sign1Message

from signer.client import DccSigner, KidChanged, SignerClient
from signer.dcc import (
    ChunkSigner,
    DccRecordError,
    IssuingKey,
    TrustStore,
    issue,
    issue_records,
    prepare,
    verify,
)
from tests.conftest import ROOT, Appliance, MakeAppliance

EXAMPLES = ROOT / "examples"
PROFILE = "vaccination"
YEAR = 365 * 24 * 3600
_B45 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"


def signatures_total(appliance: Appliance) -> float:
    """Sum of ``signer_signatures_total`` over every kid and profile."""
    return sum(
        float(line.rpartition(" ")[2])
        for line in appliance.metrics_text().splitlines()
        if line.startswith("signer_signatures_total")
    )


def b45decode(text: str) -> bytes:
    """RFC 9285 base45, written out here so the check does not rely on signer.dcc.base45."""
    out = bytearray()
    for i in range(0, len(text), 3):
        digits = [_B45.index(c) for c in text[i : i + 3]]
        value = sum(d * 45**n for n, d in enumerate(digits))
        out += value.to_bytes(2 if len(digits) == 3 else 1, "big")
    return bytes(out)


def cose_bytes(hc1: str) -> bytes:
    assert hc1.startswith("HC1:")
    return zlib.decompress(b45decode(hc1[4:]))


def independently_verified(hc1: str, dsc_der: bytes) -> dict[Any, Any]:
    """Verify with pycose and with cryptography over a hand-built Sig_structure; return claims."""
    tagged = cbor2.loads(cose_bytes(hc1))
    assert isinstance(tagged, cbor2.CBORTag) and tagged.tag == 18
    protected, unprotected, payload, signature = tagged.value
    cert = x509.load_der_x509_certificate(dsc_der)
    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    # pycose 1.1 + cbor2 6: decode() wants a list, so build the message from the untagged array.
    message = Sign1Message.from_cose_obj([protected, dict(unprotected), payload, signature], True)
    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    message.key = CoseKey.from_pem_public_key(pem.decode())
    assert message.verify_signature()
    # cryptography: Sig_structure by hand, r||s -> DER.
    assert len(signature) == 64
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    signed = cbor2.dumps(["Signature1", protected, b"", payload])
    public_key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
    header = cbor2.loads(protected)
    assert header == {1: -7, 4: header[4]}
    assert header[4] == hashlib.sha256(dsc_der).digest()[:8]
    claims = cbor2.loads(payload)
    assert isinstance(claims, dict)
    assert claims[4] <= cert.not_valid_after_utc.timestamp()
    return claims


def trust_list(appliance: Appliance, tmp_path: Path, name: str = "tl.json") -> Path:
    out = tmp_path / name
    appliance.cli(
        "keys", "trust-list", "--config", str(appliance.config_path), "--officer", "alice",
        "--out", str(out),
    )  # fmt: skip
    return out


def test_issue_one_record_through_the_cli(appliance: Appliance, tmp_path: Path) -> None:
    png = tmp_path / "qr.png"
    config = str(appliance.config_path)
    result = appliance.cli(
        "dcc", "issue", "examples/record-vn.json", "--config", config, "--qr", str(png), "--json"
    )
    summary = json.loads(result.stdout)
    hc1 = summary["hc1"]
    key = appliance.signing_key()
    assert summary["kid"] == key.kid.hex()
    assert summary["uvci"].startswith("URN:UVCI:01:VN:")

    claims = independently_verified(hc1, key.dsc_der)
    assert claims[1] == "VN"
    assert isinstance(claims[6], int) and isinstance(claims[4], int)
    assert claims[4] - claims[6] == YEAR
    hcert = claims[-260][1]
    assert hcert["nam"] == {"fn": "Nguyễn", "gn": "Văn Đức", "fnt": "NGUYEN", "gnt": "VAN<DUC"}
    assert hcert["v"][0]["ci"] == summary["uvci"]

    store = TrustStore.load(trust_list(appliance, tmp_path))
    checked = verify(hc1, store)
    assert checked.signature_valid, checked.error
    assert checked.kid == key.kid
    assert checked.expired is False
    assert checked.issuer == "VN"
    assert (checked.iat, checked.exp) == (claims[6], claims[4])

    zbarimg = shutil.which("zbarimg")
    if zbarimg is None:
        pytest.skip("zbarimg (Debian package zbar-tools) is not installed")
    decoded = subprocess.run(
        [zbarimg, "--raw", "-q", str(png)], capture_output=True, text=True, check=True
    ).stdout
    assert decoded.rstrip("\n") == hc1


def test_batch_through_the_cli_verifies_against_the_trust_list(
    appliance: Appliance, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    appliance.cli(
        "dcc", "issue", "--batch", "examples/records-vn.jsonl", "--out", str(out),
        "--config", str(appliance.config_path), "--chunk-size", "8",
    )  # fmt: skip
    records = (EXAMPLES / "records-vn.jsonl").read_text(encoding="utf-8").splitlines()
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [line["line"] for line in lines] == list(range(1, len(records) + 1))
    assert all("error" not in line for line in lines), lines
    hc1s = [line["hc1"] for line in lines]
    assert len(set(line["uvci"] for line in lines)) == len(records)

    tl = trust_list(appliance, tmp_path)
    verified = appliance.cli(
        "dcc", "verify", "--trust-list", str(tl), "-", input="\n".join(hc1s).encode()
    )
    results = [json.loads(line) for line in verified.stdout.decode().splitlines()]
    assert len(results) == len(records)
    assert all(r["signature_valid"] and not r["expired"] for r in results)
    assert {r["kid"] for r in results} == {appliance.signing_key().kid.hex()}
    for record, result in zip(records, results, strict=True):
        assert result["payload"]["nam"]["fn"] == json.loads(record)["nam"]["fn"]
    independently_verified(hc1s[-1], appliance.signing_key().dsc_der)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda r: r["v"][0].update(dn=0), "v[0].dn"),
        (lambda r: r.pop("dob"), "dob"),
        (lambda r: r["v"][0].update(dt="2021-02-30"), "v[0].dt"),
        (lambda r: r["nam"].update(fn="张伟"), "nam.fn"),
    ],
    ids=["dose-0", "missing-dob", "bad-date", "untransliterable-name"],
)
def test_invalid_record_is_refused_before_anything_is_signed(
    appliance: Appliance, tmp_path: Path, change: Any, field: str
) -> None:
    record = json.loads((EXAMPLES / "record-vn.json").read_text(encoding="utf-8"))
    change(record)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
    before = signatures_total(appliance)
    result = appliance.cli(
        "dcc", "issue", str(path), "--config", str(appliance.config_path), check=False
    )
    assert result.returncode == 2
    assert field in result.stderr.decode(), result.stderr.decode()
    assert result.stdout == b""
    assert signatures_total(appliance) == before


def test_invalid_record_in_a_library_batch_signs_nothing(appliance: Appliance) -> None:
    records = [json.loads(line) for line in (EXAMPLES / "records-vn.jsonl").open()]
    records[13]["v"][0]["dn"] = 0
    before = signatures_total(appliance)
    with (
        SignerClient(appliance.address) as client,
        pytest.raises(DccRecordError, match=r"records\[13\]\.v\[0\]\.dn"),
    ):
        issue_records(records, client.dcc_signer(), chunk_size=5)
    assert signatures_total(appliance) == before


def ready_keys(appliance: Appliance, tmp_path: Path, *labels: str) -> list[str]:
    """Generate keys, have the dev CSCA certify them and import the DSCs (the CLI steps of a
    ceremony, one subprocess per key and step, keys in parallel); return their key ids."""
    config = str(appliance.config_path)
    officer = ("--config", config, "--officer", "alice")

    def ceremony(label: str) -> str:
        generated = appliance.cli(
            "keys", "generate", *officer, "--profile", PROFILE, "--label", label,
            "--csr-out", str(tmp_path / f"{label}.csr"), "--json",
        )  # fmt: skip
        key_id = str(json.loads(generated.stdout)["key_id"])
        pem = str(tmp_path / f"{label}.pem")
        appliance.cli("keys", "dev-issue-cert", key_id, "--config", config, "--out", pem)
        appliance.cli("keys", "import-cert", key_id, pem, *officer)
        return key_id

    with ThreadPoolExecutor(len(labels)) as pool:
        return list(pool.map(ceremony, labels))


def activate_key(appliance: Appliance, key_id: str) -> None:
    """Activate and wait until it takes effect (two registry refreshes after approval)."""
    before = appliance.signing_key().kid
    config = str(appliance.config_path)
    result = appliance.cli(
        "keys", "activate", key_id, "--config", config, "--officer", "alice", "--json"
    )
    assert json.loads(result.stdout)["applied"] is True  # approvals_required = 1 in tests
    deadline = time.monotonic() + 10
    while appliance.signing_key().kid == before:
        assert time.monotonic() < deadline, "the activation did not take effect"
        time.sleep(0.1)


class ActivatesAfterFirstChunk:
    """The real client; an officer activates ``key_id`` right after the first chunk is signed."""

    def __init__(self, inner: DccSigner, appliance: Appliance, key_id: str) -> None:
        self.inner = inner
        self.appliance = appliance
        self.key_id = key_id
        self.calls: list[tuple[bytes, int]] = []
        self.refused: list[bytes] = []

    def signing_key(self, profile: str) -> tuple[bytes, bytes]:
        return self.inner.signing_key(profile)

    def sign(self, profile: str, kid: bytes, digests: Sequence[bytes]) -> list[bytes]:
        try:
            signatures = self.inner.sign(profile, kid, digests)
        except KidChanged:
            self.refused.append(kid)
            raise
        self.calls.append((kid, len(digests)))
        if len(self.calls) == 1:
            activate_key(self.appliance, self.key_id)
        return signatures


def test_key_rotation_during_a_batch_is_followed(
    make_appliance: MakeAppliance, tmp_path: Path
) -> None:
    appliance = make_appliance({"keys": {"overlap_minutes": 0}})
    records = [json.loads(line) for line in (EXAMPLES / "records-vn.jsonl").open()]
    second_id, third_id = ready_keys(appliance, tmp_path, "second", "third")
    with SignerClient(appliance.address, max_batch=4) as client:
        signer = client.dcc_signer()
        first = IssuingKey.from_dsc(*signer.signing_key(PROFILE))

        # 1. The client still holds the old kid when the batch starts; overlap 0 refuses it.
        activate_key(appliance, second_id)
        with pytest.raises(KidChanged):
            client.sign(PROFILE, first.kid, [bytes(32)])
        before_rotation = issue(
            records,
            signer,
            first.kid,
            issuer_country="VN",
            dsc_not_after=first.not_after,
            chunk_size=6,
            verify_with=first.public_key,
        )
        second = client.signing_key(PROFILE)
        assert second.kid != first.kid

        # 2. A rotation between two chunks of one batch: chunk 1 keeps the kid that signed
        #    it, every later chunk is rebuilt for the new key.
        wrapper = ActivatesAfterFirstChunk(signer, appliance, third_id)
        key = IssuingKey.from_dsc(*signer.signing_key(PROFILE))
        prepared = prepare(records, key.kid, "VN", dt.datetime.now(dt.UTC), key.not_after)
        chunks = ChunkSigner(wrapper, key)
        during_rotation: list[str] = []
        kids: list[bytes] = []
        for start in range(0, len(prepared), 6):
            certs, chunk_hc1s = chunks.sign(prepared[start : start + 6])
            during_rotation += chunk_hc1s
            kids += [cert.kid for cert in certs]
        third = client.signing_key(PROFILE, refresh=True)
        assert chunks.rotations == 1
        assert wrapper.refused == [second.kid]
        assert kids == [second.kid] * 6 + [third.kid] * (len(records) - 6)
        assert [kid for kid, _ in wrapper.calls] == [second.kid] + [third.kid] * 3

    store = TrustStore.load(trust_list(appliance, tmp_path))
    dscs = {second.kid: second.dsc_der, third.kid: third.dsc_der}
    expected = [second.kid] * len(records) + kids
    for hc1, kid in zip(before_rotation + during_rotation, expected, strict=True):
        result = verify(hc1, store)
        assert result.signature_valid, result.error
        assert result.kid == kid  # the header names the key that really signed
        independently_verified(hc1, dscs[kid])
