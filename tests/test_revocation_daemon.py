"""Revocation from the audit log of a real daemon: two issuing identities over mutual TLS.

What one identity had signed in a window becomes gateway batches that hold exactly the
SIGNATURE hashes of its certificates (computed here from the HC1 strings, without signer's
code); ``dcc verify --revocation`` refuses those and accepts the others. UVCIs written by
``dcc issue --uvci-out`` become UCI and COUNTRYCODEUCI batches. A window without signatures
writes nothing; a log that does not verify is refused.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import shutil
import time
import zlib
from pathlib import Path

import cbor2
import grpc
import pytest

from signer.audit.segments import list_segments
from signer.dcc.base45 import b45decode
from signer.dcc.trust import TrustStore
from signer.v1 import audit_pb2, audit_pb2_grpc
from tests.client_certs import client_certificate_files
from tests.conftest import Appliance, MakeAppliance

RECORDS = "examples/records-vn.jsonl"


def signature_hash(hc1: str) -> str:
    """The SIGNATURE revocation hash of a certificate as EU verifier apps compute it: SHA-256
    over the first half (r) of the COSE signature, first 16 bytes, base64."""
    message = cbor2.loads(zlib.decompress(b45decode(hc1.removeprefix("HC1:"))))
    signature = (message.value if isinstance(message, cbor2.CBORTag) else message)[3]
    assert isinstance(signature, bytes) and len(signature) == 64
    return base64.b64encode(hashlib.sha256(signature[:32]).digest()[:16]).decode()


def now_iso() -> str:
    moment = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
    time.sleep(0.05)  # the next record's commit time is strictly later
    return moment


@pytest.fixture
def appliance(make_appliance: MakeAppliance) -> Appliance:
    return make_appliance({"roles": {"issuer": ["CN=issuer", "CN=issuer2"]}}, mtls=True)


def test_revocation_batches_from_a_real_audit_log(appliance: Appliance, tmp_path: Path) -> None:
    config = ["--config", str(appliance.config_path)]
    cert, key = client_certificate_files(appliance, "issuer2")
    assert appliance.tls_dir is not None
    as_issuer2 = [
        "--target", appliance.address, "--server-name", "localhost",
        "--ca", str(appliance.tls_dir / "ca.pem"), "--cert", str(cert), "--key", str(key),
    ]  # fmt: skip

    def issue(name: str, connection: list[str], uvci_out: Path | None = None) -> list[str]:
        out = tmp_path / f"{name}.jsonl"
        extra = ["--uvci-out", str(uvci_out)] if uvci_out else []
        appliance.cli("dcc", "issue", "--batch", RECORDS, "--out", str(out), *connection, *extra)
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert all("error" not in line for line in lines), lines
        return [line["hc1"] for line in lines]

    trust = tmp_path / "trust.json"
    appliance.cli("keys", "trust-list", *config, "--out", str(trust))
    quiet_start = now_iso()
    quiet_end = now_iso()
    early = issue("early", as_issuer2)  # issuer2, before the window
    since = now_iso()
    wanted = issue("wanted", as_issuer2)  # issuer2, in the window
    other = issue("other", config)  # issuer, in the window
    until = now_iso()
    uvcis = tmp_path / "late-uvcis.jsonl"
    late = issue("late", as_issuer2, uvcis)  # issuer2, after the window
    appliance.stop()  # the auditor works on a quiet copy; stopping signs a final checkpoint

    pubkey = str(appliance.audit_public_key)
    build = [
        "revocation", "build", "--dir", str(appliance.audit_dir), "--pubkey", pubkey,
        "--trust-list", str(trust), *config,
    ]  # fmt: skip
    out = tmp_path / "revoke.jsonl"
    result = appliance.cli(
        *build, "--identity", "CN=issuer2", "--since", since, "--until", until, "--out", str(out)
    )
    batches = [json.loads(line) for line in out.read_text().splitlines()]
    listed = [entry["hash"] for batch in batches for entry in batch["entries"]]
    assert sorted(listed) == sorted(signature_hash(hc1) for hc1 in wanted)
    assert not set(listed) & {signature_hash(hc1) for hc1 in early + other + late}
    (batch,) = batches
    assert (batch["country"], batch["hashType"]) == ("VN", "SIGNATURE")
    (dsc,) = TrustStore.load(trust).keys
    assert base64.b64decode(batch["kid"]) == dsc.kid
    assert dsc.dsc.not_after is not None
    assert dt.datetime.fromisoformat(batch["expires"]) == dsc.dsc.not_after.replace(microsecond=0)
    summary = json.loads(result.stdout)
    (per_kid,) = summary["kids"]
    assert per_kid["kid"] == dsc.kid.hex()
    assert per_kid["signatures"] == len(wanted) == summary["signatures"]
    first, last = (dt.datetime.fromisoformat(per_kid[k]) for k in ("first", "last"))
    start, end = (dt.datetime.fromisoformat(t) for t in (since, until))
    assert start.replace(microsecond=0) <= first <= last < end  # the summary gives seconds

    # the auditor's gRPC query gives the same hashes, streamed, from the daemon's own log
    appliance.start()
    audit = audit_pb2_grpc.AuditStub(appliance.channel("auditor"))
    query = audit_pb2.FindSignaturesRequest(identity="CN=issuer2")
    query.since.FromDatetime(dt.datetime.fromisoformat(since))
    query.until.FromDatetime(dt.datetime.fromisoformat(until))
    streamed = [
        entry for reply in audit.FindSignatures(query, timeout=60) for entry in reply.entries
    ]
    assert sorted(base64.b64encode(e.hash).decode() for e in streamed) == sorted(listed)
    assert {e.kid for e in streamed} == {dsc.kid}
    issuer_audit = audit_pb2_grpc.AuditStub(appliance.channel("issuer"))
    with pytest.raises(grpc.RpcError) as denied:
        list(issuer_audit.FindSignatures(query, timeout=30))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    appliance.stop()

    verify = ["dcc", "verify", "--trust-list", str(trust), "--revocation", str(out)]
    refused = appliance.cli(*verify, *wanted, check=False)
    assert refused.returncode == 1, refused.stderr.decode()
    results = [json.loads(line) for line in refused.stdout.decode().splitlines()]
    assert len(results) == len(wanted)
    assert all(r["revoked"] == ["SIGNATURE"] and "SIGNATURE hash" in r["error"] for r in results)
    accepted = appliance.cli(*verify, *early, *other, *late)
    for line in accepted.stdout.decode().splitlines():
        checked = json.loads(line)
        assert checked["signature_valid"] and checked["revoked"] == [] and checked["error"] is None

    uci_out = tmp_path / "uci.jsonl"
    appliance.cli(
        "revocation", "build", "--uci-file", str(uvcis), "--out", str(uci_out),
        "--trust-list", str(trust), *config,
    )  # fmt: skip
    by_uci = ["dcc", "verify", "--trust-list", str(trust), "--revocation", str(uci_out)]
    refused = appliance.cli(*by_uci, *late, check=False)
    assert refused.returncode == 1
    for line in refused.stdout.decode().splitlines():
        assert json.loads(line)["revoked"] == ["UCI", "COUNTRYCODEUCI"]
    appliance.cli(*by_uci, *wanted)

    nothing = tmp_path / "nothing.jsonl"
    empty = appliance.cli(
        *build, "--identity", "CN=issuer2", "--since", quiet_start, "--until", quiet_end,
        "--out", str(nothing),
    )  # fmt: skip
    assert json.loads(empty.stdout)["signatures"] == 0
    assert not nothing.exists()

    damaged = tmp_path / "damaged-audit"
    shutil.copytree(appliance.audit_dir, damaged)
    segment = list_segments(damaged)[0].path
    data = bytearray(segment.read_bytes())
    data[len(data) // 3] ^= 0x01
    segment.write_bytes(bytes(data))
    bad_build = [*build[:3], str(damaged), *build[4:]]
    failed = appliance.cli(
        *bad_build, "--identity", "CN=issuer2", "--since", since, "--until", until,
        "--out", str(tmp_path / "never.jsonl"), check=False,
    )  # fmt: skip
    assert failed.returncode == 1
    assert b"does not verify" in failed.stderr
    assert not (tmp_path / "never.jsonl").exists()
