"""Mutual TLS, roles, quotas, hostile input and secret hygiene against a real daemon."""

from __future__ import annotations

import hashlib
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from signer.client.officer import OfficerCredential, OfficerSession
from signer.v1 import audit_pb2, audit_pb2_grpc, key_admin_pb2, signing_pb2
from tests.conftest import Appliance, children_of, metric_value

PROFILE = "vaccination"


def _digests(n: int, seed: bytes) -> list[bytes]:
    return [hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(n)]


def _client_cert(
    appliance: Appliance, name: str, *, other_ca: bool = False, expired: bool = False
) -> grpc.ChannelCredentials:
    """A client certificate made for a test: unknown name, foreign CA, or expired."""
    return _client_cert_der(appliance, name, other_ca=other_ca, expired=expired)[0]


def _client_cert_der(
    appliance: Appliance, name: str, *, other_ca: bool = False, expired: bool = False
) -> tuple[grpc.ChannelCredentials, bytes]:
    """:func:`_client_cert`, and the certificate's DER."""
    assert appliance.tls_dir is not None
    tls = appliance.tls_dir
    ca_cert = x509.load_pem_x509_certificate((tls / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((tls / "ca.key").read_bytes(), password=None)
    issuer_name = ca_cert.subject
    if other_ca:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        issuer_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rogue CA")])
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    start, end = (
        (now - timedelta(days=30), now - timedelta(days=1))
        if expired
        else (now - timedelta(minutes=5), now + timedelta(days=1))
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(tls / "ca.pem").read_bytes(),
        private_key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        certificate_chain=cert.public_bytes(serialization.Encoding.PEM),
    )
    return credentials, cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    from tests.conftest import new_appliance

    appliance = new_appliance(
        tmp_path_factory.mktemp("mtls"),
        {
            "quota": {"signatures_per_second": 3000, "burst": 3000, "max_concurrent": 4},
            "roles": {"issuer": ["CN=issuer", "CN=calm"]},
            # Refusals reach the audit log when their window ends: soon, here.
            "limits": {"refusal_window_seconds": 1},
        },
        mtls=True,
    )
    appliance.setup()
    appliance.start()
    yield appliance
    appliance.stop()


def _sign(
    appliance: Appliance,
    identity: str = "issuer",
    n: int = 1,
    credentials: grpc.ChannelCredentials | None = None,
) -> signing_pb2.SignBatchResponse:
    channel = appliance.channel(identity, credentials)
    from signer.v1 import signing_pb2_grpc

    signing = signing_pb2_grpc.SigningStub(channel)
    kid = appliance.signing_key().kid
    return signing.SignBatch(
        signing_pb2.SignBatchRequest(profile=PROFILE, kid=kid, digests=_digests(n, b"sec")),
        timeout=20,
    )


def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    return caught.value.code()


def _signed_total(appliance: Appliance) -> float:
    return metric_value(appliance.metrics_text(), "signer_signatures_total")


def test_roles_are_enforced(secured: Appliance) -> None:
    assert len(_sign(secured).signatures) == 1
    before = _signed_total(secured)
    assert _code(lambda: _sign(secured, "officer")) == grpc.StatusCode.PERMISSION_DENIED
    assert _code(lambda: _sign(secured, "auditor")) == grpc.StatusCode.PERMISSION_DENIED
    assert (
        _code(
            lambda: secured.key_admin("issuer").ListKeys(
                key_admin_pb2.ListKeysRequest(), timeout=10
            )
        )
        == grpc.StatusCode.PERMISSION_DENIED
    )
    keys = secured.key_admin("officer").ListKeys(key_admin_pb2.ListKeysRequest(), timeout=10)
    assert [k.effective_state for k in keys.keys] == ["active"]
    audit = audit_pb2_grpc.AuditStub(secured.channel("auditor"))
    assert audit.VerifyLog(audit_pb2.VerifyLogRequest(), timeout=30).ok
    issuer_audit = audit_pb2_grpc.AuditStub(secured.channel("issuer"))
    assert _code(lambda: issuer_audit.VerifyLog(audit_pb2.VerifyLogRequest(), timeout=10)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert _signed_total(secured) == before
    text = secured.metrics_text()
    assert metric_value(text, "signer_auth_refusals_total", reason="wrong_role") >= 4


def test_officer_identity_comes_from_the_certificate(secured: Appliance) -> None:
    reply = secured.key_admin("officer").GenerateKey(
        key_admin_pb2.GenerateKeyRequest(profile=PROFILE, label="mtls-test", officer="mallory"),
        timeout=30,
    )
    assert secured.tls_dir is not None
    credential = OfficerCredential.from_files(
        secured.tls_dir / "officer.pem", secured.tls_dir / "officer.key"
    )
    session = OfficerSession(secured.channel("officer"), credential, officer="mallory")
    changes = session.request("retire", reply.key.key_id, reason="mtls test")
    assert changes.change.requested_by == "alice"  # the person of [officers], not the claim
    # The audit log names the person and the certificate name that made them an officer.
    from signer.audit.query import iter_records

    events = {
        r.event.value: r
        for r in iter_records(secured.audit_dir)
        if r.details.get("key_id") == reply.key.key_id
    }
    assert events["key_generated"].identity == "alice/CN=officer"
    assert events["key_generated"].details["officer"] == "alice"
    assert events["change_requested"].identity == "alice/CN=officer"


@pytest.mark.parametrize("kind", ["none", "other_ca", "expired"])
def test_bad_certificates_are_refused_at_the_handshake(secured: Appliance, kind: str) -> None:
    before = _signed_total(secured)
    if kind == "none":
        assert secured.tls_dir is not None
        credentials = grpc.ssl_channel_credentials(
            root_certificates=(secured.tls_dir / "ca.pem").read_bytes()
        )
    else:
        credentials = _client_cert(
            secured, "issuer", other_ca=kind == "other_ca", expired=kind == "expired"
        )
    # grpcio's server either requires a verified client certificate at the TLS layer or asks
    # for none; we require one, so these callers never get as far as an RPC.
    assert _code(lambda: _sign(secured, credentials=credentials)) == grpc.StatusCode.UNAVAILABLE
    assert _signed_total(secured) == before
    assert len(_sign(secured).signatures) == 1


def test_right_ca_unknown_identity_is_unauthenticated(secured: Appliance) -> None:
    credentials, der = _client_cert_der(secured, "stranger")
    assert _code(lambda: _sign(secured, credentials=credentials)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert (
        metric_value(
            secured.metrics_text(), "signer_auth_refusals_total", reason="unknown_identity"
        )
        >= 1
    )
    from signer.audit.query import iter_records

    # A certificate without a role is recorded by its fingerprint (the CN is its holder's
    # choice, and many certificates may carry it), with the CN beside it for the auditor.
    fingerprint = "SHA256:" + hashlib.sha256(der).hexdigest()
    deadline = time.monotonic() + 60
    refusals: list[Any] = []
    while not refusals and time.monotonic() < deadline:
        time.sleep(0.2)
        refusals = [
            r
            for r in iter_records(secured.audit_dir)
            if r.event == "auth_refused" and r.identity == fingerprint
        ]
    [refusal] = refusals
    assert refusal.details["subject"] == "'CN=stranger'"
    assert refusal.details["reason"] == "unknown_identity"
    assert refusal.details["count"] == 1


def test_garbage_and_oversized_messages_leave_the_daemon_up(secured: Appliance) -> None:
    channel = secured.channel("issuer")
    raw = channel.unary_unary("/signer.v1.Signing/SignBatch")
    before = _signed_total(secured)
    assert _code(lambda: raw(b"\xff" * 1024, timeout=10)) in (
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert _code(lambda: raw(b"\x0a" * (5 * 1024 * 1024), timeout=10)) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    other_type = key_admin_pb2.KeyInfo(key_id="x" * 50, label="y").SerializeToString()
    assert _code(lambda: raw(other_type, timeout=10)) in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.NOT_FOUND,
    )
    assert _signed_total(secured) == before
    assert secured.process is not None and secured.process.poll() is None
    assert len(_sign(secured).signatures) == 1


def test_quota_keeps_a_calm_client_served_while_another_floods(secured: Appliance) -> None:
    # Two identities hold the issuer role: CN=issuer floods, CN=calm sends a steady trickle.
    calm = _client_cert(secured, "calm")
    calm_ok = 0
    calm_refused = 0
    flood_refused = 0
    stop = threading.Event()

    def flood() -> None:
        nonlocal flood_refused
        while not stop.is_set():
            try:
                _sign(secured, "issuer", n=1000)
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
                assert "retry" in error.details()
                flood_refused += 1

    threads = [threading.Thread(target=flood) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    for _ in range(15):
        try:
            _sign(secured, n=100, credentials=calm)
            calm_ok += 1
        except grpc.RpcError:
            calm_refused += 1
        time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join()
    assert flood_refused > 0
    assert (calm_ok, calm_refused) == (15, 0)
    assert metric_value(secured.metrics_text(), "signer_quota_rejections_total", reason="rate") > 0


def test_secrets_never_leave(secured: Appliance) -> None:
    assert secured.process is not None
    pins = [
        (secured.home / "secrets" / f"{name}.pin").read_text().strip() for name in ("user", "so")
    ]
    places: dict[str, bytes] = {
        "daemon log": secured.log().encode(),
        "metrics": secured.metrics_text().encode(),
    }
    for path in secured.audit_dir.rglob("*"):
        if path.is_file():
            places[str(path)] = path.read_bytes()
    for pid in {secured.process.pid, *children_of(secured.process.pid)}:
        try:
            places[f"argv of {pid}"] = Path(f"/proc/{pid}/cmdline").read_bytes()
            places[f"environment of {pid}"] = Path(f"/proc/{pid}/environ").read_bytes()
        except FileNotFoundError:
            assert pid != secured.process.pid, "the daemon exited during the check"
            continue  # a child that exited while we looked holds nothing any more
    wrong = secured.cli(
        "sign", "--config", str(secured.config_path), "--as", "officer", "00" * 32, check=False
    )
    places["CLI error"] = wrong.stdout + wrong.stderr
    for pin in pins:
        for where, content in places.items():
            assert pin.encode() not in content, f"a PIN leaked into {where}"


def test_metrics_pass_promtool(secured: Appliance) -> None:
    import shutil

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: run ./softhsm_setup.sh --test-tools (make test does)")
    _sign(secured)
    text = secured.metrics_text()
    for name in (
        "signer_requests_total",
        "signer_request_duration_seconds_bucket",
        "signer_signatures_total",
        "signer_batch_size_digests_bucket",
        "signer_hsm_sign_duration_seconds_bucket",
        "signer_hsm_workers_up",
        "signer_audit_append_duration_seconds_bucket",
        "signer_audit_last_sequence",
        "signer_key_info",
        "signer_key_dsc_expiry_seconds",
        "signer_key_signing_remaining_seconds",
        "signer_serving",
    ):
        assert name in text, name
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
