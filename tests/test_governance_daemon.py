"""Signed dual control against real daemons on a real SoftHSM token, with mutual TLS.

What a person holding two certificates, someone holding only the HSM user PIN, and an officer
revoking a compromised key under load can and cannot do.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from signer.client.officer import OfficerCredential, OfficerSession
from signer.config import load
from signer.hsm.keystore import put_record, records
from signer.keys.lifecycle import KeyRecord, KeyState
from signer.store.api import RecordKind
from signer.store.select import open_store
from signer.v1 import key_admin_pb2
from tests.client_certs import client_certificate_files
from tests.conftest import Appliance, MakeAppliance, metric_value, mtls_overrides
from tests.test_hsm_keys import own_session
from tests.test_key_ceremony import dev_cert, digests, key_set, sign
from tests.test_record_store import postgres  # noqa: F401 (session fixture)

PROFILE = "vaccination"
TWO = {"keys": {"approvals_required": 2, "overlap_minutes": 10}}
FAKE_SIGNATURE = bytes.fromhex("3006020101020101")  # a well-formed ECDSA signature of nothing


def session(app: Appliance, identity: str) -> OfficerSession:
    tls = app.home / "tls"
    credential = OfficerCredential.from_files(tls / f"{identity}.pem", tls / f"{identity}.key")
    return OfficerSession(app.channel(identity), credential)


def ready(app: Appliance, label: str, folder: Path) -> str:
    """A generated key with its dev DSC imported, through the officer API."""
    stub = app.key_admin("officer")
    reply = stub.GenerateKey(
        key_admin_pb2.GenerateKeyRequest(profile=PROFILE, label=label), timeout=30
    )
    dsc = dev_cert(app, reply.key.key_id, folder / f"{label}.pem")
    stub.ImportCertificate(
        key_admin_pb2.ImportCertificateRequest(
            key_id=reply.key.key_id, certificate=dsc.read_bytes()
        ),
        timeout=30,
    )
    return str(reply.key.key_id)


def code_of(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    return caught.value.code(), caught.value.details() or ""


@pytest.fixture
def pair(make_appliance: MakeAppliance, tmp_path: Path) -> Iterator[tuple[Appliance, Appliance]]:
    """Two mTLS daemons on one token that trust the same officers (alice, and bob)."""
    first = make_appliance(TWO, mtls=True)
    home = tmp_path / "b"
    (home / "secrets").mkdir(parents=True, mode=0o700)
    for name in ("user.pin", "so.pin"):
        shutil.copy2(first.home / "secrets" / name, home / "secrets" / name)
    shutil.copy2(first.home / "csca.pem", home / "csca.pem")
    shutil.copytree(first.home / "tls", home / "tls")
    second = make_appliance(
        {**TWO, **mtls_overrides(home)}, name="b", token_dir=first.home / "tokens"
    )
    yield first, second


def test_one_person_with_two_certificates_cannot_approve_alone(
    make_appliance: MakeAppliance, tmp_path: Path
) -> None:
    app = make_appliance(
        {**TWO, "officers": {"alice": ["CN=officer", "CN=alice-laptop"]}}, mtls=True, start=False
    )
    client_certificate_files(app, "alice-laptop")
    app.start()
    key_id = ready(app, "two-certs", tmp_path)
    before = key_set(app)
    change = session(app, "officer").request("activate", key_id).change
    assert not change.approvals
    code, details = code_of(lambda: session(app, "alice-laptop").approve(change.change_id))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "alice requested change" in details
    assert key_set(app) == before
    assert session(app, "officer2").approve(change.change_id).applied
    assert key_set(app)[key_id][0] == "scheduled"


def test_unsigned_changes_are_refused_under_mtls(
    make_appliance: MakeAppliance, tmp_path: Path
) -> None:
    app = make_appliance(TWO, mtls=True)
    key_id = ready(app, "unsigned", tmp_path)
    before = key_set(app)
    stub = app.key_admin("officer")
    code, details = code_of(
        lambda: stub.Activate(key_admin_pb2.ActivateRequest(key_id=key_id), timeout=10)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "must be signed" in details
    draft = stub.DraftChange(
        key_admin_pb2.DraftChangeRequest(action="activate", key_id=key_id), timeout=10
    )
    code, details = code_of(
        lambda: stub.Activate(
            key_admin_pb2.ActivateRequest(
                key_id=key_id,
                document=draft.document,
                signature=b"\x30\x06\x02\x01\x01\x02\x01\x01",
            ),
            timeout=10,
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "does not verify" in details
    assert key_set(app) == before


def test_a_record_rewritten_with_the_pin_alone_is_ignored_by_every_daemon(
    pair: tuple[Appliance, Appliance], tmp_path: Path
) -> None:
    first = pair[0]
    active = first.signing_key()
    key_id = ready(first, "forged", tmp_path)
    deadline = time.monotonic() + 10
    while key_set(pair[1]).get(key_id, ("",))[0] != "ready" and time.monotonic() < deadline:
        time.sleep(0.1)  # both daemons have verified the ready record before it is forged
    settings = load(first.config_path)
    with own_session(settings) as pkcs11_session:
        generation, blob = records(pkcs11_session, "signer.v1/key-record")[key_id]
    record = KeyRecord.from_cbor(blob)
    assert record.state is KeyState.READY
    forged = KeyRecord(
        **{
            **record.__dict__,
            "state": KeyState.SCHEDULED,
            "activate_at": datetime.now(UTC) - timedelta(seconds=1),
        }
    )
    with own_session(settings, rw=True) as pkcs11_session:
        put_record(pkcs11_session, "signer.v1/key-record", key_id, generation, forged.to_cbor())
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        counts = [metric_value(a.metrics_text(), "signer_records_rejected_total") for a in pair]
        if all(counts):
            break
        time.sleep(0.2)
    assert all(counts), counts
    for daemon in pair:
        assert daemon.signing_key().kid == active.kid
        assert key_set(daemon)[key_id][:2] == ("ready", "ready")
        assert "NOT acting on key record" in daemon.log()
    tail = first.cli("audit", "tail", "--dir", str(first.audit_dir), "--json", "-n", "50")
    assert "record_rejected" in tail.stdout.decode()


def test_revoking_under_load_refuses_the_kid_at_once_and_drops_it_from_the_trust_list(
    make_appliance: MakeAppliance, tmp_path: Path
) -> None:
    app = make_appliance({"keys": {"overlap_minutes": 10}}, mtls=True)
    old = app.signing_key()
    new_id = ready(app, "successor", tmp_path)
    alice = session(app, "officer")
    alice.request("activate", new_id)
    time.sleep(1.2)  # two refresh intervals: the successor takes over, the old kid overlaps
    new = app.signing_key()
    assert new.key_id == new_id
    stop = threading.Event()
    outcomes: list[tuple[float, str, bytes]] = []

    def load_old_kid() -> None:
        stub = app.signing()
        while not stop.is_set():
            sent = time.monotonic()  # a request sent after the revocation returned must fail
            try:
                sign(app, old.kid, digests(2, b"load"))
                outcomes.append((sent, "ok", b""))
            except grpc.RpcError as error:
                kid = dict(error.trailing_metadata() or ()).get("signer-current-kid-bin", b"")
                outcomes.append((sent, error.code().name, bytes(kid)))
        del stub

    worker = threading.Thread(target=load_old_kid)
    worker.start()
    time.sleep(0.5)
    reply = session(app, "officer2").request("revoke", old.key_id, reason="HSM backup stolen")
    revoked_at = time.monotonic()
    time.sleep(0.5)
    stop.set()
    worker.join()
    assert reply.applied and reply.key.state == "revoked"
    assert any(kind == "ok" for _, kind, _ in outcomes)
    after = [(kind, kid) for at, kind, kid in outcomes if at > revoked_at]
    assert after and all(k == ("FAILED_PRECONDITION", new.kid) for k in after)
    trust = tmp_path / "trust.json"
    app.cli("keys", "trust-list", "--config", str(app.config_path), "--out", str(trust), "--json")
    document = json.loads(trust.read_text())
    assert [e["kid_hex"] for e in document["entries"]] == [new.kid.hex()]
    assert [r["kid_hex"] for r in document["revoked"]] == [old.kid.hex()]
    assert metric_value(app.metrics_text(), "signer_keys_revoked_total", profile=PROFILE) == 1
    audit = app.cli("audit", "tail", "--dir", str(app.audit_dir), "--json", "-n", "20")
    assert "HSM backup stolen" in audit.stdout.decode()


def test_the_readme_ceremony_runs_as_written_with_two_persons(
    make_appliance: MakeAppliance, tmp_path: Path
) -> None:
    """The README's key ceremony, through the CLI, as alice (--as officer) and bob."""
    app = make_appliance(TWO, mtls=True)
    old = app.signing_key()

    def keys(identity: str, *args: str) -> dict[str, object]:
        command, *rest = args
        out = app.cli(
            "keys", command, "--config", str(app.config_path), "--as", identity, "--json", *rest
        )
        parsed: dict[str, object] = json.loads(out.stdout)
        return parsed

    generated = keys(
        "officer",
        "generate",
        "--profile",
        PROFILE,
        "--label",
        "next",
        "--csr-out",
        str(tmp_path / "next.csr"),
    )
    key_id = str(generated["key_id"])
    dsc = dev_cert(app, key_id, tmp_path / "next.pem")
    keys("officer", "import-cert", key_id, str(dsc))
    at = (datetime.now(UTC) + timedelta(seconds=3)).replace(microsecond=0)
    requested = keys("officer", "activate", key_id, "--at", at.isoformat())
    change = requested["change"]
    assert isinstance(change, dict) and requested["applied"] is False
    approved = keys("officer2", "approve", str(change["change_id"]))
    assert approved["applied"] is True
    retire_too_early = app.cli(
        "keys",
        "retire",
        old.key_id,
        "--config",
        str(app.config_path),
        "--as",
        "officer",
        "--reason",
        "rotated",
        check=False,
    )
    assert retire_too_early.returncode == 1
    assert "only key signing profile" in retire_too_early.stderr.decode()
    deadline = time.monotonic() + 15
    while app.signing_key().key_id != key_id and time.monotonic() < deadline:
        time.sleep(0.1)
    assert app.signing_key().key_id == key_id
    retire = keys("officer", "retire", old.key_id, "--reason", "rotated to next")
    retire_change = retire["change"]
    assert isinstance(retire_change, dict)
    assert keys("officer2", "approve", str(retire_change["change_id"]))["applied"] is True
    assert key_set(app)[old.key_id][0] == "retired"
    signed = sign(app, app.signing_key().kid, digests(3, b"after the ceremony"))
    assert len(signed.signatures) == 3
    tail = app.cli("audit", "tail", "--dir", str(app.audit_dir), "--json", "-n", "40")
    text = tail.stdout.decode()
    assert "rotated to next" in text and "alice, bob" in text


@pytest.mark.parametrize("backend", ["directory", "postgresql"])
def test_signed_ceremony_and_forgery_refusal_on_every_store(
    make_appliance: MakeAppliance, tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    """The governed ceremony (two persons) and the refusal of an unsigned rewrite, with the
    records in a folder or in PostgreSQL instead of on the token."""
    if backend == "directory":
        store: dict[str, object] = {"backend": "directory", "path": str(tmp_path / "records")}
    else:
        server = request.getfixturevalue("postgres")
        store = {
            "backend": "postgresql",
            "dsn": server.dsn_for(tmp_path),
            "password_file": str(server.password_file),
        }
    app = make_appliance({**TWO, "store": store}, mtls=True)
    old = app.signing_key()
    key_id = ready(app, "on-" + backend, tmp_path)
    change = session(app, "officer").request("activate", key_id).change
    assert session(app, "officer2").approve(change.change_id).applied
    deadline = time.monotonic() + 15
    while app.signing_key().key_id != key_id and time.monotonic() < deadline:
        time.sleep(0.1)
    assert app.signing_key().key_id == key_id
    assert old.key_id in key_set(app)
    opened = open_store(load(app.config_path), _NoToken())
    stored = opened.load_all(RecordKind.KEY)[old.key_id]
    record = KeyRecord.from_cbor(stored.value)
    forged = KeyRecord(**{**record.__dict__, "state": KeyState.READY, "activate_at": None})
    unsigned_revival = KeyRecord(
        **{**forged.__dict__, "state": KeyState.SCHEDULED, "activate_at": datetime.now(UTC)}
    )
    opened.put(RecordKind.KEY, old.key_id, stored.generation, unsigned_revival.to_cbor())
    deadline = time.monotonic() + 15
    while not metric_value(app.metrics_text(), "signer_records_rejected_total"):
        assert time.monotonic() < deadline, "the rewrite was not refused"
        time.sleep(0.2)
    assert app.signing_key().key_id == key_id


class _NoToken:
    """The token face a directory or PostgreSQL store never uses."""

    def data_objects(self, application: str) -> dict[str, tuple[int, bytes]]:
        raise AssertionError("the token is not the store here")

    def put_data_object(
        self, application: str, name: str, expected_generation: int, value: bytes
    ) -> int:
        raise AssertionError("the token is not the store here")

    def delete_data_object(self, application: str, name: str, expected_generation: int) -> None:
        raise AssertionError("the token is not the store here")
