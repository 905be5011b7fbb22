"""Key ceremonies end to end: the officer CLI and KeyAdmin against a real daemon and SoftHSM.

Covers issue 3: generate -> CSR -> dev CSCA -> import -> scheduled activation under dual
control -> switch at T -> overlap -> refusal with the new kid -> retire -> destroy, the trust
list, and every bad input with a check that the key set did not change.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.x509.oid import NameOID

from signer.config import load
from signer.dcc.trust import TrustStore
from signer.dev.csca import dev_issue_certificate
from signer.errors import PolicyError
from signer.hsm.pool import WorkerPool
from signer.hsm.pooled import PooledToken
from signer.keys.ceremony import KeyCeremonies, make_ceremonies
from signer.keys.governance import Endorsement
from signer.keys.pem import csr_pem
from signer.keys.registry import KeyRegistry, governance_from, make_registry
from signer.sigformat import raw_to_der
from signer.store.select import open_store
from signer.v1 import key_admin_pb2, key_admin_pb2_grpc, signing_pb2
from tests.conftest import Appliance, MakeAppliance, new_appliance

PROFILE = "vaccination"
OVERLAP_SECONDS = 3.0
DUAL = {"keys": {"approvals_required": 2, "overlap_minutes": OVERLAP_SECONDS / 60}}

State = dict[str, tuple[str, str, str]]


# -- helpers shared with test_rotation_under_load.py --------------------------------------------


def keys(appliance: Appliance, *args: str, officer: str = "alice", check: bool = True) -> Any:
    """Run ``signer keys ARGS --json`` and return the parsed output (or the failed process)."""
    command, *rest = args
    result = appliance.cli(
        "keys",
        command,
        "--config",
        str(appliance.config_path),
        "--officer",
        officer,
        "--json",
        *rest,
        check=check,
    )
    if not check:
        return result
    return json.loads(result.stdout)


def refused(appliance: Appliance, *args: str, officer: str = "alice") -> str:
    """Run a ``signer keys`` command that must fail; return its error text."""
    result = keys(appliance, *args, officer=officer, check=False)
    assert result.returncode != 0, f"signer keys {' '.join(args)} succeeded: {result.stdout!r}"
    return str(result.stderr.decode() + result.stdout.decode())


def key_set(appliance: Appliance) -> State:
    """key_id -> (stored state, effective state, kid hex) of every key, through KeyAdmin."""
    reply = appliance.key_admin().ListKeys(key_admin_pb2.ListKeysRequest(), timeout=10)
    return {k.key_id: (k.state, k.effective_state, k.kid.hex()) for k in reply.keys}


def digests(n: int, seed: bytes) -> list[bytes]:
    return [hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(n)]


def sign(appliance: Appliance, kid: bytes, batch: list[bytes]) -> signing_pb2.SignBatchResponse:
    request = signing_pb2.SignBatchRequest(profile=PROFILE, kid=kid, digests=batch)
    return appliance.signing().SignBatch(request, timeout=30)


def sign_refusal(appliance: Appliance, kid: bytes) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        sign(appliance, kid, digests(1, b"refused"))
    return caught.value


def verify_raw(public_key: Any, digest: bytes, raw: bytes) -> None:
    """Raises InvalidSignature unless ``raw`` (r||s) signs ``digest``."""
    public_key.verify(raw_to_der(raw), digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def dsc_public_key(dsc_der: bytes) -> ec.EllipticCurvePublicKey:
    key = x509.load_der_x509_certificate(dsc_der).public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def generate(appliance: Appliance, label: str, folder: Path, officer: str = "alice") -> str:
    """Generate a key through the CLI; returns its key id (CSR at folder/<label>.csr)."""
    out = keys(
        appliance,
        "generate",
        "--profile",
        PROFILE,
        "--label",
        label,
        "--csr-out",
        str(folder / f"{label}.csr"),
        officer=officer,
    )
    assert out["stored_state"] == "pending" and out["kid"] == ""
    return str(out["key_id"])


def dev_cert(appliance: Appliance, key_id: str, out: Path, days: int = 730) -> Path:
    appliance.cli(
        "keys",
        "dev-issue-cert",
        key_id,
        "--config",
        str(appliance.config_path),
        "--out",
        str(out),
        "--days",
        str(days),
    )
    return out


def ready_key(appliance: Appliance, label: str, folder: Path) -> tuple[str, bytes]:
    """A new key with its DSC imported (state ready): (key id, kid)."""
    key_id = generate(appliance, label, folder)
    dsc = dev_cert(appliance, key_id, folder / f"{label}.pem")
    out = keys(appliance, "import-cert", key_id, str(dsc))
    assert out["stored_state"] == "ready"
    return key_id, bytes.fromhex(out["kid"])


def wait_for(predicate: Any, timeout: float, what: str, step: float = 0.05) -> float:
    """Poll until ``predicate()`` is true; return the monotonic time it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_until(moment: datetime) -> None:
    delay = (moment - datetime.now(UTC)).total_seconds()
    if delay > 0:
        time.sleep(delay)


# -- the full ceremony -------------------------------------------------------------------------


def test_full_ceremony_through_the_cli(make_appliance: MakeAppliance, tmp_path: Path) -> None:
    app = make_appliance(DUAL)
    old = app.signing_key()
    old_key = dsc_public_key(old.dsc_der)

    # 1. generate: a pending key and a CSR signed inside the HSM
    new_id = generate(app, "2027-H1", tmp_path)
    csr_path = tmp_path / "2027-H1.csr"
    csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "VN"
    csr_key = csr.public_key()
    assert isinstance(csr_key, ec.EllipticCurvePublicKey)
    assert isinstance(csr_key.curve, ec.SECP256R1)
    assert shutil.which("openssl"), "openssl is needed to check the CSR as officers will"
    check = subprocess.run(
        ["openssl", "req", "-in", str(csr_path), "-verify", "-noout"],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
    assert "verify OK" in check.stdout + check.stderr
    assert key_set(app)[new_id][:2] == ("pending", "pending")
    # GetCsr returns the same CSR again
    again = tmp_path / "again.csr"
    keys(app, "csr", new_id, "--csr-out", str(again))
    assert again.read_bytes() == csr_path.read_bytes()

    # 2. the dev CSCA certifies the CSR, the officer imports the DSC
    dsc_path = dev_cert(app, new_id, tmp_path / "dsc.pem")
    dsc = x509.load_pem_x509_certificate(dsc_path.read_bytes())
    assert dsc.public_key() == csr.public_key()
    imported = keys(app, "import-cert", new_id, str(dsc_path))
    new_kid = hashlib.sha256(dsc.public_bytes(serialization.Encoding.DER)).digest()[:8]
    assert imported["stored_state"] == "ready" and imported["kid"] == new_kid.hex()
    assert refused(app, "import-cert", new_id, str(dsc_path)).count("certificate import refused")

    # 3. activation at T under dual control
    at = (datetime.now(UTC) + timedelta(seconds=8)).replace(microsecond=0)
    requested = keys(app, "activate", new_id, "--at", at.isoformat())
    assert requested["applied"] is False
    change_id = requested["change"]["change_id"]
    assert requested["change"]["activate_at"] == at.isoformat()
    assert key_set(app)[new_id][0] == "ready"
    assert [c["change_id"] for c in keys(app, "changes")] == [change_id]
    assert "cannot approve" in refused(app, "approve", change_id, officer="alice")
    assert "cannot approve" in refused(app, "approve", change_id, officer="ALICE")
    assert key_set(app)[new_id][0] == "ready"
    approved = keys(app, "approve", change_id, officer="bob")
    assert approved["applied"] is True
    assert approved["key"]["stored_state"] == "scheduled"
    assert approved["key"]["activate_at"] == at.isoformat()
    assert keys(app, "changes") == []
    assert datetime.now(UTC) < at - timedelta(seconds=1), "the test was too slow to reach T"

    # 4. before T the old key signs and the new kid is refused
    assert app.signing_key().kid == old.kid
    before = digests(5, b"before")
    reply = sign(app, old.kid, before)
    assert reply.kid == old.kid
    signed = [(old.kid, d, s) for d, s in zip(before, reply.signatures, strict=True)]
    early = sign_refusal(app, new_kid)
    assert early.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert dict(early.trailing_metadata())["signer-current-kid-bin"] == old.kid

    # 5. at T GetSigningKey switches; the old kid still signs during the overlap
    switched = wait_for(lambda: app.signing_key().kid == new_kid, 15, "the switch at T")
    switched_at = datetime.now(UTC)
    assert switched_at >= at, f"switched at {switched_at}, before T={at}"
    assert switched_at < at + timedelta(seconds=1.5), f"switched late: {switched_at} vs {at}"
    del switched
    during = digests(5, b"overlap")
    reply = sign(app, old.kid, during)
    assert reply.kid == old.kid
    assert datetime.now(UTC) < at + timedelta(seconds=OVERLAP_SECONDS)
    signed += [(old.kid, d, s) for d, s in zip(during, reply.signatures, strict=True)]
    after = digests(5, b"after")
    reply = sign(app, new_kid, after)
    assert reply.kid == new_kid
    signed += [(new_kid, d, s) for d, s in zip(after, reply.signatures, strict=True)]
    states = key_set(app)
    assert states[new_id][:2] == ("scheduled", "active")
    listed = {k["key_id"]: k for k in keys(app, "list")}
    assert listed[new_id]["signatures_since_daemon_start"] == 5
    assert listed[old.key_id]["signatures_since_daemon_start"] == 10
    assert listed[new_id]["signs_new_requests"] and not listed[old.key_id]["signs_new_requests"]
    assert (
        listed[old.key_id]["overlap_ends"] == (at + timedelta(seconds=OVERLAP_SECONDS)).isoformat()
    )
    assert states[old.key_id][1] == "active"  # still signing in its overlap

    # 6. after the overlap the old kid is refused with the new kid in the trailers
    wait_until(at + timedelta(seconds=OVERLAP_SECONDS + 0.2))
    late = sign_refusal(app, old.kid)
    assert late.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert new_kid.hex() in (late.details() or "")
    assert dict(late.trailing_metadata())["signer-current-kid-bin"] == new_kid
    assert key_set(app)[old.key_id][1] == "retired"

    # 7. retire the old key (dual control), then destroy it
    assert "retire it first" in refused(app, "destroy", old.key_id)
    retire = keys(app, "retire", old.key_id, "--reason", "rotated to 2027-H1")
    assert retire["applied"] is False
    assert keys(app, "approve", retire["change"]["change_id"], officer="bob")["applied"]
    assert key_set(app)[old.key_id][:2] == ("retired", "retired")
    text = refused(app, "destroy", old.key_id)
    assert "valid until" in text and "force" in text
    assert "needs a reason" in refused(app, "destroy", old.key_id, "--force")
    destroy = keys(app, "destroy", old.key_id, "--force", "--reason", "ceremony test")
    assert destroy["applied"] is False
    done = keys(app, "approve", destroy["change"]["change_id"], officer="carol")
    assert done["applied"] is True and done["key"]["stored_state"] == "destroyed"
    final = key_set(app)
    table = app.cli("keys", "list", "--config", str(app.config_path)).stdout.decode()
    assert table.startswith("SIGNS  KEY_ID") and f"{old.key_id}  vaccination" in table
    assert final[old.key_id][:2] == ("destroyed", "destroyed")
    assert final[new_id][:2] == ("scheduled", "active")
    gone = sign_refusal(app, old.kid)
    assert gone.code() == grpc.StatusCode.FAILED_PRECONDITION

    # 8. every signature verifies against the trust list, which still holds the old DSC
    trust_path = tmp_path / "trust.json"
    out = keys(app, "trust-list", "--out", str(trust_path))
    assert out["entries"] == 2
    document = json.loads(trust_path.read_text())
    listed = {e["kid_hex"]: e["state"] for e in document["entries"]}
    assert listed == {old.kid.hex(): "destroyed", new_kid.hex(): "active"}
    store = TrustStore.load(trust_path)
    assert not store.skipped
    for kid, digest, signature in signed:
        (trusted,) = store.candidates(kid)
        verify_raw(trusted.public_key, digest, signature)
    assert store.candidates(old.kid)[0].public_key == old_key
    (trusted,) = store.candidates(new_kid)
    with pytest.raises(InvalidSignature):  # the old key's signature does not verify as new
        verify_raw(trusted.public_key, signed[0][1], signed[0][2])


# -- bad inputs ------------------------------------------------------------------------------


def _self_made_ca(curve: ec.EllipticCurve) -> tuple[ec.EllipticCurvePrivateKey, x509.Name]:
    return ec.generate_private_key(curve), x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Not the CSCA"),
        ]
    )


def _certificate(
    public_key: Any,
    not_before: datetime,
    not_after: datetime,
    curve: ec.EllipticCurve | None = None,
) -> bytes:
    ca_key, ca_name = _self_made_ca(curve or ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "DSC"),
                ]
            )
        )
        .issuer_name(ca_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), True
        )
    )
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@dataclass
class Officers:
    """KeyAdmin over gRPC plus ceremonies on the same token, which play the dev CSCA.

    The bad-input tests use the API directly (the CLI costs about a second per call on a
    2-core machine); the ceremony test above covers the CLI. ``ceremonies`` work on the
    daemon's token and store, the same thing ``signer keys dev-issue-cert`` builds.
    """

    app: Appliance
    ceremonies: KeyCeremonies
    token: PooledToken

    def stub(self) -> key_admin_pb2_grpc.KeyAdminStub:
        return self.app.key_admin()

    def generate(self, label: str) -> tuple[str, bytes]:
        reply = self.stub().GenerateKey(
            key_admin_pb2.GenerateKeyRequest(profile=PROFILE, label=label, officer="alice"),
            timeout=30,
        )
        return reply.key.key_id, reply.csr_der

    def dev_cert(self, key_id: str, days: int = 730) -> bytes:
        self.ceremonies.registry.refresh()
        return dev_issue_certificate(
            load(self.app.config_path),
            self.token,
            self.ceremonies,
            key_id,
            timedelta(days=days),
        )

    def import_cert(self, key_id: str, certificate: bytes) -> key_admin_pb2.KeyInfo:
        return self.stub().ImportCertificate(
            key_admin_pb2.ImportCertificateRequest(
                key_id=key_id, certificate=certificate, officer="alice"
            ),
            timeout=30,
        )

    def ready(self, label: str) -> str:
        key_id, _ = self.generate(label)
        assert self.import_cert(key_id, self.dev_cert(key_id)).state == "ready"
        return key_id

    def activate(self, key_id: str, at: datetime | None, officer: str = "alice") -> Any:
        request = key_admin_pb2.ActivateRequest(key_id=key_id, officer=officer)
        if at is not None:
            request.activate_at.FromDatetime(at)
        return self.stub().Activate(request, timeout=30)

    def approve(self, change_id: str, officer: str) -> key_admin_pb2.ChangeResponse:
        return self.stub().Approve(
            key_admin_pb2.ApproveRequest(change_id=change_id, officer=officer), timeout=30
        )

    def changes(self) -> list[key_admin_pb2.PendingChange]:
        return list(self.stub().ListChanges(key_admin_pb2.ListChangesRequest(), timeout=10).changes)


def refusal(call: Any, code: grpc.StatusCode, *words: str) -> str:
    """Run ``call``; it must fail with ``code`` and a message holding ``words``."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = caught.value
    assert error.code() == code, (error.code(), error.details())
    for word in words:
        assert word in (error.details() or ""), (word, error.details())
    return str(error.details())


@pytest.fixture(scope="module")
def officers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Officers]:
    """One dual-control daemon (change_ttl 1 minute) shared by the bad-input tests."""
    app = new_appliance(
        tmp_path_factory.mktemp("dual"),
        {"keys": {"approvals_required": 2, "change_ttl_minutes": 1}},
    )
    app.setup()
    app.start()
    settings = load(app.config_path)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in settings.hsm.environment().items():
            patch.setenv(name, value)
        pool = WorkerPool(settings.hsm, count=1)
        pool.start()
    token = PooledToken(pool)
    store = open_store(settings, token)
    ceremonies = make_ceremonies(make_registry(token, store, settings), token, store, settings)
    try:
        yield Officers(app, ceremonies, token)
    finally:
        pool.close()
        app.stop()


def test_bad_certificates_are_refused_and_change_nothing(officers: Officers) -> None:
    app = officers.app
    key_a, csr_der = officers.generate("A")
    key_b, _ = officers.generate("B")
    dsc_b = officers.dev_cert(key_b)
    csr_a = x509.load_der_x509_csr(csr_der)
    now = datetime.now(UTC)
    other_key = ec.generate_private_key(ec.SECP384R1()).public_key()
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    cases = [
        (dsc_b, "public key match check failed"),
        (
            _certificate(csr_a.public_key(), now - timedelta(800), now - timedelta(1)),
            "validity check failed: the DSC expired",
        ),
        (
            _certificate(other_key, now - timedelta(1), now + timedelta(700), ec.SECP384R1()),
            "public key algorithm check failed: the DSC holds a EC secp384r1 key",
        ),
        (
            b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
            "certificate parse check failed",
        ),
        (os.urandom(300), "certificate parse check failed"),
        (b"", "the input is empty"),
        (csr_pem(csr_der), "'CERTIFICATE REQUEST'"),
        (
            _certificate(csr_a.public_key(), now - timedelta(1), now + timedelta(700)),
            "issuer name check failed",
        ),
        (officers.dev_cert(key_a, days=100), "remaining lifetime check failed"),
    ]
    before = key_set(app)
    for certificate, words in cases:
        refusal(lambda c=certificate: officers.import_cert(key_a, c), invalid, words)
        assert key_set(app) == before, f"refusing {words!r} changed the key set"
    # the CLI shows the same refusal to the officer
    path = app.home / "b-for-a.pem"
    path.write_bytes(dsc_b)
    text = refused(app, "import-cert", key_a, str(path))
    assert "INVALID_ARGUMENT" in text and "public key match check failed" in text
    assert key_set(app) == before
    # the right certificates still go in afterwards
    assert officers.import_cert(key_b, dsc_b).state == "ready"
    assert officers.import_cert(key_a, officers.dev_cert(key_a)).state == "ready"


def test_unknown_ids_are_not_found(officers: Officers) -> None:
    app = officers.app
    stub = officers.stub()
    before = key_set(app)
    missing = grpc.StatusCode.NOT_FOUND
    refusal(lambda: officers.import_cert("deadbeef", b"x"), missing, "no key with id")
    refusal(lambda: officers.activate("deadbeef", None), missing, "no key with id")
    refusal(
        lambda: stub.Retire(key_admin_pb2.RetireRequest(key_id="ab", officer="a"), timeout=10),
        missing,
    )
    refusal(
        lambda: stub.Destroy(
            key_admin_pb2.DestroyRequest(key_id="ab", force=True, reason="x", officer="a"),
            timeout=10,
        ),
        missing,
    )
    refusal(lambda: officers.approve("0011223344556677", "bob"), missing, "no pending change")
    refusal(lambda: stub.GetCsr(key_admin_pb2.GetCsrRequest(key_id="ab"), timeout=10), missing)
    refusal(
        lambda: stub.Retire(key_admin_pb2.RetireRequest(key_id="ab"), timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "officer is required",
    )
    assert "NOT_FOUND" in refused(app, "activate", "deadbeef")
    assert key_set(app) == before


def test_expired_change_cannot_be_approved(officers: Officers) -> None:
    """A change older than change_ttl is refused and dropped.

    The smallest change_ttl_minutes the config accepts is 1 minute, too slow for a test, so
    the approval comes from a registry on the same token whose clock runs 2 minutes ahead
    (the registry takes its clock as a parameter; token, workers and records are real).
    """
    app = officers.app
    key_id = officers.ready("late")
    change = officers.activate(key_id, None).change
    assert change.expires_at.ToDatetime(tzinfo=UTC) <= datetime.now(UTC) + timedelta(minutes=1)
    before = key_set(app)
    settings = load(app.config_path)
    store = open_store(settings, officers.token)
    registry = KeyRegistry(
        officers.token,
        store,
        settings.keys,
        (PROFILE,),
        governance_from(settings),
        clock=lambda: datetime.now(UTC) + timedelta(minutes=2),
    )
    registry.refresh()
    late = KeyCeremonies(registry, officers.token, store, settings.keys)
    with pytest.raises(PolicyError, match="expired at"):
        late.approve(change.change_id, Endorsement("approve", "bob", "bob", b"", b""))
    assert officers.changes() == []
    refusal(lambda: officers.approve(change.change_id, "bob"), grpc.StatusCode.NOT_FOUND)
    assert key_set(app) == before


def test_dual_control_refusals(officers: Officers) -> None:
    app = officers.app
    active = app.signing_key()
    first = officers.ready("first")
    second = officers.ready("second")
    before = key_set(app)
    stub = officers.stub()
    precondition = grpc.StatusCode.FAILED_PRECONDITION

    # destroying the active key is refused at once, before any approval
    for force in (False, True):
        refusal(
            lambda f=force: stub.Destroy(
                key_admin_pb2.DestroyRequest(
                    key_id=active.key_id, force=f, reason="x", officer="alice"
                ),
                timeout=10,
            ),
            precondition,
            "destruction refused",
            "retire it first",
        )
    assert "retire it first" in refused(app, "destroy", active.key_id)
    assert officers.changes() == []
    assert key_set(app) == before

    # approving your own change
    at = datetime.now(UTC) + timedelta(hours=1)
    change = officers.activate(first, at).change.change_id
    for me in ("alice", " Alice ", "ALICE"):
        refusal(
            lambda m=me: officers.approve(change, m),
            grpc.StatusCode.PERMISSION_DENIED,
            "alice requested change",
            "cannot approve",
        )
    assert "cannot approve" in refused(app, "approve", change, officer="alice")
    assert key_set(app) == before
    (pending,) = officers.changes()
    assert pending.change_id == change and list(pending.approvals) == []

    # two activations racing for one profile: both requested, the second approval is refused
    other = officers.activate(second, at).change.change_id
    assert officers.approve(change, "bob").applied
    refusal(lambda: officers.approve(other, "bob"), precondition, "already scheduled", first)
    after_race = key_set(app)
    assert after_race[first][0] == "scheduled"
    assert after_race[second] == before[second]
    # ... and a new request for the second key is refused straight away
    refusal(lambda: officers.activate(second, at), precondition, "already scheduled")
    assert key_set(app) == after_race

    # two concurrent approvals of one change apply it exactly once
    retire = stub.Retire(
        key_admin_pb2.RetireRequest(key_id=first, reason="changed my mind", officer="alice"),
        timeout=10,
    ).change.change_id
    results: list[object] = []

    def approve(officer: str) -> None:
        try:
            results.append(officers.approve(retire, officer).applied)
        except grpc.RpcError as error:
            results.append(error.code())

    threads = [threading.Thread(target=approve, args=(name,)) for name in ("bob", "carol")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(map(str, results)) == sorted(map(str, [True, grpc.StatusCode.NOT_FOUND]))
    assert key_set(app)[first][:2] == ("retired", "retired")
    # retiring twice is refused; the second key may now be scheduled
    refusal(
        lambda: stub.Retire(key_admin_pb2.RetireRequest(key_id=first, officer="a"), timeout=10),
        precondition,
        "retirement refused",
    )
    assert officers.approve(other, "carol").applied  # the refused change applies now
    assert key_set(app)[second][0] == "scheduled"
