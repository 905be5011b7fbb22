"""The Signing API against a real daemon and a real SoftHSM token."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
import time

import grpc
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from grpc_health.v1 import health_pb2

from signer.sigformat import raw_to_der
from signer.v1 import signing_pb2
from tests.conftest import Appliance, MakeAppliance, metric_value

PROFILE = "vaccination"


def digests(n: int, seed: bytes = b"") -> list[bytes]:
    return [hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(n)]


def public_key(appliance: Appliance) -> ec.EllipticCurvePublicKey:
    key = serialization.load_der_public_key(appliance.signing_key().public_key_spki)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def verify_raw(key: ec.EllipticCurvePublicKey, digest: bytes, raw: bytes) -> None:
    key.verify(raw_to_der(raw), digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def sign(
    appliance: Appliance, batch: list[bytes], kid: bytes | None = None, **fields: object
) -> signing_pb2.SignBatchResponse:
    request = signing_pb2.SignBatchRequest(
        profile=str(fields.pop("profile", PROFILE)),
        kid=appliance.signing_key().kid if kid is None else kid,
        digests=batch,
        **fields,  # type: ignore[arg-type]
    )
    return appliance.signing().SignBatch(request, timeout=60)


def test_signing_key_describes_the_dsc(appliance: Appliance) -> None:
    key = appliance.signing_key()
    cert = x509.load_der_x509_certificate(key.dsc_der)
    assert key.algorithm == "ES256"
    assert key.kid == hashlib.sha256(key.dsc_der).digest()[:8]
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert spki == key.public_key_spki
    assert key.not_after.ToDatetime().replace(microsecond=0) == cert.not_valid_after_utc.replace(
        tzinfo=None
    )
    assert key.usable_until.seconds > time.time()


@pytest.mark.parametrize("size", [1, 1000, 10_000])
def test_signatures_verify_and_keep_order(appliance: Appliance, size: int) -> None:
    batch = digests(size, seed=str(size).encode())
    reply = sign(appliance, batch, request_id=f"order-{size}")
    key = public_key(appliance)
    assert len(reply.signatures) == size
    assert reply.kid == appliance.signing_key().kid
    assert reply.request_id == f"order-{size}"
    assert reply.audit_sequence > 0
    for digest, signature in zip(batch, reply.signatures, strict=True):
        assert len(signature) == 64
        verify_raw(key, digest, signature)
    with pytest.raises(InvalidSignature):  # order matters: a neighbour's signature fails
        verify_raw(key, batch[0], reply.signatures[-1] if size > 1 else bytes(64))


def test_der_format(appliance: Appliance) -> None:
    batch = digests(3, b"der")
    reply = sign(appliance, batch, format=signing_pb2.SIGNATURE_FORMAT_DER)
    key = public_key(appliance)
    for digest, signature in zip(batch, reply.signatures, strict=True):
        assert signature[0] == 0x30
        key.verify(signature, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def test_sign_stream_answers_in_order(appliance: Appliance) -> None:
    kid = appliance.signing_key().kid
    batches = [digests(50, bytes([n])) for n in range(5)]
    requests = (
        signing_pb2.SignBatchRequest(profile=PROFILE, kid=kid, digests=b, request_id=f"s{n}")
        for n, b in enumerate(batches)
    )
    replies = list(appliance.signing().SignStream(requests, timeout=60))
    key = public_key(appliance)
    assert [r.request_id for r in replies] == [f"s{n}" for n in range(5)]
    for batch, reply in zip(batches, replies, strict=True):
        for digest, signature in zip(batch, reply.signatures, strict=True):
            verify_raw(key, digest, signature)


def test_trust_list_holds_the_active_dsc(appliance: Appliance) -> None:
    entries = appliance.signing().GetTrustList(signing_pb2.GetTrustListRequest(), timeout=10)
    key = appliance.signing_key()
    assert [(e.kid, e.dsc_der, e.state) for e in entries.entries] == [
        (key.kid, key.dsc_der, "active")
    ]


def _refused(
    appliance: Appliance, code: grpc.StatusCode, *words: str, **request: object
) -> grpc.RpcError:
    before = sign(appliance, digests(1, b"before")).audit_sequence
    signed_before = metric_value(appliance.metrics_text(), "signer_signatures_total")
    with pytest.raises(grpc.RpcError) as caught:
        appliance.signing().SignBatch(signing_pb2.SignBatchRequest(**request), timeout=30)  # type: ignore[arg-type]
    error = caught.value
    assert error.code() == code, error.details()
    for word in words:
        assert word in error.details()
    # A refused request signs nothing: no signature counted, no audit record written.
    assert metric_value(appliance.metrics_text(), "signer_signatures_total") == signed_before
    after = sign(appliance, digests(1, b"after")).audit_sequence
    assert after == before + 1
    return error


def test_digest_of_wrong_length_is_refused_with_its_index(appliance: Appliance) -> None:
    kid = appliance.signing_key().kid
    batch = digests(10)
    batch[5] = batch[5][:31]
    _refused(
        appliance,
        grpc.StatusCode.INVALID_ARGUMENT,
        "digests[5]",
        "31 bytes",
        profile=PROFILE,
        kid=kid,
        digests=batch,
    )
    batch[5] = batch[5] + b"\x00\x00"
    _refused(
        appliance,
        grpc.StatusCode.INVALID_ARGUMENT,
        "digests[5]",
        profile=PROFILE,
        kid=kid,
        digests=batch,
    )


def test_empty_and_oversized_batches_are_refused(appliance: Appliance) -> None:
    kid = appliance.signing_key().kid
    _refused(
        appliance, grpc.StatusCode.INVALID_ARGUMENT, "empty", profile=PROFILE, kid=kid, digests=[]
    )
    _refused(
        appliance,
        grpc.StatusCode.INVALID_ARGUMENT,
        "max_batch",
        "10000",
        profile=PROFILE,
        kid=kid,
        digests=digests(10_001),
    )


def test_unknown_profile_is_not_found(appliance: Appliance) -> None:
    kid = appliance.signing_key().kid
    _refused(
        appliance,
        grpc.StatusCode.NOT_FOUND,
        "unknown profile",
        profile="passport",
        kid=kid,
        digests=digests(1),
    )
    with pytest.raises(grpc.RpcError) as caught:
        appliance.signing().GetSigningKey(
            signing_pb2.GetSigningKeyRequest(profile="passport"), timeout=10
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_wrong_kid_names_the_current_kid(appliance: Appliance) -> None:
    current = appliance.signing_key().kid
    error = _refused(
        appliance,
        grpc.StatusCode.FAILED_PRECONDITION,
        current.hex(),
        profile=PROFILE,
        kid=b"\x01" * 8,
        digests=digests(2),
    )
    trailing = dict(error.trailing_metadata())
    assert trailing["signer-current-kid-bin"] == current


def test_missing_kid_and_bad_format_are_invalid(appliance: Appliance) -> None:
    _refused(
        appliance,
        grpc.StatusCode.INVALID_ARGUMENT,
        "kid is required",
        profile=PROFILE,
        digests=digests(1),
    )
    kid = appliance.signing_key().kid
    _refused(
        appliance,
        grpc.StatusCode.INVALID_ARGUMENT,
        "format",
        profile=PROFILE,
        kid=kid,
        digests=digests(1),
        format=7,
    )


def test_health_and_reflection(appliance: Appliance) -> None:
    assert appliance.health() == health_pb2.HealthCheckResponse.SERVING
    assert appliance.health("signer.v1.Signing") == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(appliance.channel())
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
    )
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert {"signer.v1.Signing", "signer.v1.Audit", "grpc.health.v1.Health"} <= names


def test_killed_worker_is_replaced_while_serving(make_appliance: MakeAppliance) -> None:
    appliance = make_appliance()
    key = public_key(appliance)
    kid = appliance.signing_key().kid
    before = appliance.worker_pids()
    assert len(before) == 2
    failures: list[grpc.StatusCode] = []
    successes = 0
    stop = threading.Event()

    def load() -> None:
        nonlocal successes
        stub = appliance.signing()
        while not stop.is_set():
            batch = digests(500, os.urandom(4))
            try:
                reply = stub.SignBatch(
                    signing_pb2.SignBatchRequest(profile=PROFILE, kid=kid, digests=batch),
                    timeout=30,
                )
            except grpc.RpcError as error:
                failures.append(error.code())
                continue
            verify_raw(key, batch[-1], reply.signatures[-1])
            successes += 1

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    victim = sorted(before)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = appliance.metrics_text()
        if (
            metric_value(text, "signer_hsm_worker_restarts_total") >= 1
            and metric_value(text, "signer_hsm_workers_up") == 2
        ):
            break
        time.sleep(0.1)
    time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    after = appliance.worker_pids()
    assert victim not in after and len(after) == 2, "the dead worker was not replaced"
    assert successes > 0
    assert set(failures) <= {grpc.StatusCode.UNAVAILABLE}, failures
    assert sign(appliance, digests(5, b"after-kill")).signatures
    assert metric_value(appliance.metrics_text(), "signer_hsm_worker_restarts_total") >= 1


def test_hsm_that_stops_answering_gives_unavailable(make_appliance: MakeAppliance) -> None:
    appliance = make_appliance({"hsm": {"timeout_seconds": 1.5}})
    kid = appliance.signing_key().kid
    workers = appliance.worker_pids()
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            sign(appliance, digests(3, b"frozen"), kid=kid)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "did not answer" in caught.value.details()
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    # The worker that hung on the request was killed at the timeout and replaced.
    deadline = time.monotonic() + 60
    while appliance.worker_pids() >= workers and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not appliance.worker_pids() >= workers, "the hung worker was not replaced"
    assert len(sign(appliance, digests(3, b"thawed"), kid=kid).signatures) == 3
    assert appliance.process is not None and appliance.process.poll() is None


def test_disabled_key_admin_is_neither_served_nor_reported(make_appliance: MakeAppliance) -> None:
    appliance = make_appliance({"server": {"admin_enabled": False}})
    assert appliance.health() == health_pb2.HealthCheckResponse.SERVING
    assert appliance.health("signer.v1.KeyAdmin") is None  # health answers NOT_FOUND
    from signer.v1 import key_admin_pb2

    with pytest.raises(grpc.RpcError) as caught:
        appliance.key_admin().ListKeys(key_admin_pb2.ListKeysRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
