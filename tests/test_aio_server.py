"""The asyncio front end against real daemons: packed digests, coalescing, fairness, callers
that leave, and idle streams.

To make the order of events certain rather than likely, several tests freeze the HSM worker
processes (SIGSTOP) while requests pile up in the daemon, read the daemon's own gauge of queued
digests to know they have, and thaw the workers (SIGCONT). Nothing here measures time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from grpc_health.v1 import health_pb2, health_pb2_grpc

from signer.audit.query import iter_records
from signer.v1 import signing_pb2, signing_pb2_grpc
from tests.client_certs import client_certificate
from tests.conftest import Appliance, MakeAppliance, metric_value

PROFILE = "vaccination"
WAIT = 60.0
# Long enough that frozen workers are never declared hung while a test holds them.
PATIENT = {"hsm": {"timeout_seconds": 120}}


def digests(n: int, seed: bytes) -> list[bytes]:
    return [hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(n)]


def verifier(appliance: Appliance) -> Callable[[bytes, bytes], None]:
    key = serialization.load_der_public_key(appliance.signing_key().public_key_spki)
    assert isinstance(key, ec.EllipticCurvePublicKey)

    def verify(digest: bytes, raw: bytes) -> None:
        r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
        signature = utils.encode_dss_signature(r, s)
        key.verify(signature, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))

    return verify


def metric(appliance: Appliance, name: str, **labels: str) -> float:
    return metric_value(appliance.metrics_text(), name, **labels)


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


@contextlib.contextmanager
def frozen_workers(appliance: Appliance) -> Iterator[None]:
    """The daemon's HSM workers stopped (SIGSTOP) for the block, and always thawed after."""
    pids = appliance.worker_pids()
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def queued(appliance: Appliance) -> float:
    return metric(appliance, "signer_hsm_pending_digests")


def audited(appliance: Appliance) -> dict[bytes, list[tuple[str, str]]]:
    """digest -> (request id, identity) of every sign_batch record naming it."""
    found: dict[bytes, list[tuple[str, str]]] = {}
    for record in iter_records(appliance.audit_dir):
        if record.event == "sign_batch":
            for digest in record.digests:
                found.setdefault(digest, []).append(
                    (record.request_id or "", record.identity or "")
                )
    return found


# -- packed digests ------------------------------------------------------------------------------


def test_packed_digests_round_trip_in_both_formats(appliance: Appliance) -> None:
    key = appliance.signing_key()
    assert key.max_batch == 10_000
    verify = verifier(appliance)
    batch = digests(7, b"packed")
    reply = appliance.signing().SignBatch(
        signing_pb2.SignBatchRequest(
            profile=PROFILE, kid=key.kid, packed_digests=b"".join(batch), request_id="pk-raw"
        ),
        timeout=30,
    )
    assert not reply.signatures
    assert len(reply.packed_signatures) == 7 * 64
    for n, digest in enumerate(batch):
        verify(digest, reply.packed_signatures[n * 64 : (n + 1) * 64])
    assert reply.request_id == "pk-raw" and reply.audit_sequence > 0
    [(request_id, identity)] = audited(appliance)[batch[3]]
    assert request_id == "pk-raw" and identity.startswith("ipv4:127.0.0.1:")

    der = appliance.signing().SignBatch(
        signing_pb2.SignBatchRequest(
            profile=PROFILE,
            kid=key.kid,
            packed_digests=b"".join(batch),
            format=signing_pb2.SIGNATURE_FORMAT_DER,
        ),
        timeout=30,
    )
    public = serialization.load_der_public_key(key.public_key_spki)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert len(der.signatures) == 7 and not der.packed_signatures
    for digest, signature in zip(batch, der.signatures, strict=True):
        public.verify(signature, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


@pytest.mark.parametrize(
    ("packed", "words"),
    [
        (b"\x01" * 33, ("packed_digests is 33 bytes", "multiple of 32")),
        (b"\x01" * 95, ("packed_digests is 95 bytes",)),
        (b"\x01" * 32 * 10_001, ("10001 digests", "max_batch")),
    ],
)
def test_bad_packed_lengths_are_refused_and_sign_nothing(
    appliance: Appliance, packed: bytes, words: tuple[str, ...]
) -> None:
    kid = appliance.signing_key().kid
    signed = metric(appliance, "signer_signatures_total")
    records = len(list(iter_records(appliance.audit_dir)))
    with pytest.raises(grpc.RpcError) as caught:
        appliance.signing().SignBatch(
            signing_pb2.SignBatchRequest(profile=PROFILE, kid=kid, packed_digests=packed),
            timeout=30,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for word in words:
        assert word in caught.value.details()
    assert metric(appliance, "signer_signatures_total") == signed
    assert len(list(iter_records(appliance.audit_dir))) == records


def test_both_digest_forms_at_once_are_refused(appliance: Appliance) -> None:
    kid = appliance.signing_key().kid
    batch = digests(2, b"both")
    with pytest.raises(grpc.RpcError) as caught:
        appliance.signing().SignBatch(
            signing_pb2.SignBatchRequest(
                profile=PROFILE, kid=kid, digests=batch, packed_digests=b"".join(batch)
            ),
            timeout=30,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not in both" in caught.value.details()
    assert batch[0] not in audited(appliance)


# -- coalescing -----------------------------------------------------------------------------------


def test_a_bad_request_among_coalesced_ones_is_refused_alone(
    make_appliance: MakeAppliance,
) -> None:
    appliance = make_appliance(PATIENT)
    key = appliance.signing_key()
    verify = verifier(appliance)
    stub = appliance.signing()
    good = {f"good-{n}": digests(1, f"coalesce-{n}".encode()) for n in range(12)}
    short = digests(3, b"coalesce-bad")
    short[1] = short[1][:31]
    wrong_kid = digests(1, b"coalesce-wrong-kid")
    jobs_before = metric(appliance, "signer_hsm_sign_jobs_total")
    signed_before = metric(appliance, "signer_signatures_total")
    answers: dict[str, object] = {}

    def call(request_id: str, batch: list[bytes], kid: bytes) -> None:
        request = signing_pb2.SignBatchRequest(
            profile=PROFILE, kid=kid, digests=batch, request_id=request_id
        )
        try:
            answers[request_id] = stub.SignBatch(request, timeout=WAIT)
        except grpc.RpcError as error:
            answers[request_id] = error

    with ThreadPoolExecutor(16) as pool, frozen_workers(appliance):
        futures = [pool.submit(call, rid, batch, key.kid) for rid, batch in good.items()]
        # Both workers hold a job each and the others wait in the daemon, where they are
        # coalesced once a worker is free again.
        wait_for(lambda: queued(appliance) == len(good), "the good requests to queue")
        futures.append(pool.submit(call, "bad-digest", short, key.kid))
        futures.append(pool.submit(call, "bad-kid", wrong_kid, b"\x07" * 8))
        wait_for(lambda: {"bad-digest", "bad-kid"} <= set(answers), "the refusals")
    for future in futures:
        future.result()

    bad = answers["bad-digest"]
    assert isinstance(bad, grpc.RpcError)
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT and "digests[1]" in bad.details()
    kid_error = answers["bad-kid"]
    assert isinstance(kid_error, grpc.RpcError)
    assert kid_error.code() == grpc.StatusCode.FAILED_PRECONDITION
    record = audited(appliance)
    for digest in [*short, *wrong_kid]:
        assert digest not in record, "a refused request had something signed"
    sequences = set()
    for request_id, batch in good.items():
        reply = answers[request_id]
        assert isinstance(reply, signing_pb2.SignBatchResponse), reply
        assert reply.request_id == request_id
        verify(batch[0], reply.signatures[0])
        assert [rid for rid, _ in record[batch[0]]] == [request_id]
        sequences.add(reply.audit_sequence)
    assert len(sequences) == len(good), "each request has its own audit record"
    assert metric(appliance, "signer_signatures_total") == signed_before + len(good)
    jobs = metric(appliance, "signer_hsm_sign_jobs_total") - jobs_before
    assert jobs < len(good), f"{len(good)} small requests took {jobs} worker jobs"


# -- fairness -------------------------------------------------------------------------------------


def test_a_lone_digest_overtakes_queued_large_batches(make_appliance: MakeAppliance) -> None:
    appliance = make_appliance(PATIENT)
    kid = appliance.signing_key().kid
    stub = appliance.signing()
    finished: list[str] = []
    lock = threading.Lock()

    def send(name: str, batch: list[bytes]) -> grpc.Future:
        future = stub.SignBatch.future(
            signing_pb2.SignBatchRequest(
                profile=PROFILE, kid=kid, packed_digests=b"".join(batch), request_id=name
            ),
            timeout=WAIT,
        )

        def done(_: grpc.Future) -> None:
            with lock:
                finished.append(name)

        future.add_done_callback(done)
        return future

    large = {f"large-{n}": digests(1000, f"fair-{n}".encode()) for n in range(4)}
    lone = digests(1, b"fair-lone")
    with frozen_workers(appliance):
        calls = {name: send(name, batch) for name, batch in large.items()}
        wait_for(lambda: queued(appliance) == 4000, "the large batches to queue")
        calls["lone"] = send("lone", lone)
        wait_for(lambda: queued(appliance) == 4001, "the lone digest to queue")
    for call in calls.values():
        assert call.result().packed_signatures
    verifier(appliance)(lone[0], calls["lone"].result().packed_signatures)
    # Sent last, behind 4000 queued digests, it is answered before any large batch finishes.
    assert finished[0] == "lone", finished
    assert sorted(finished[1:]) == sorted(large)


# -- callers that leave ---------------------------------------------------------------------------


def test_a_caller_that_disconnects_is_audited_but_not_counted_as_served(
    make_appliance: MakeAppliance,
) -> None:
    appliance = make_appliance(PATIENT)
    kid = appliance.signing_key().kid
    batch = digests(1000, b"leaver")
    served = metric(appliance, "signer_signatures_total")
    channel = grpc.insecure_channel(appliance.address)
    stub = signing_pb2_grpc.SigningStub(channel)
    with frozen_workers(appliance):
        call = stub.SignBatch.future(
            signing_pb2.SignBatchRequest(
                profile=PROFILE, kid=kid, packed_digests=b"".join(batch), request_id="leaver"
            ),
            timeout=WAIT,
        )
        wait_for(lambda: queued(appliance) == 1000, "the request to reach the HSM queue")
        channel.close()  # the client goes away while its digests are being signed
        wait_for(
            lambda: (
                metric(appliance, "signer_requests_total", method="SignBatch", code="CANCELLED")
                == 1
            ),
            "the daemon to see the caller leave",
        )
    assert call.cancelled() or call.exception() is not None
    wait_for(lambda: batch[-1] in audited(appliance), "the audit record of what was signed")
    record = audited(appliance)
    assert all(record[d] == [("leaver", record[batch[0]][0][1])] for d in batch)
    wait_for(
        lambda: metric(appliance, "signer_signatures_undelivered_total", profile=PROFILE) == 1000,
        "the undelivered signatures to be counted",
    )
    assert metric(appliance, "signer_signatures_total") == served
    # The daemon goes on serving.
    reply = appliance.signing().SignBatch(
        signing_pb2.SignBatchRequest(profile=PROFILE, kid=kid, digests=digests(1, b"after")),
        timeout=WAIT,
    )
    assert len(reply.signatures) == 1


# -- idle streams ---------------------------------------------------------------------------------


IDLE_SECONDS = 15
"""The idle limit of the flood test: it only has to outlast the few local calls the test makes
while the flood is open; then the daemon ends every idle stream by itself."""


async def _stream_refusal(stream: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream.read()
    return caught.value


def test_idle_streams_of_one_identity_do_not_stop_another(make_appliance: MakeAppliance) -> None:
    appliance = make_appliance(
        {
            "roles": {"issuer": ["CN=issuer", "CN=second"]},
            "limits": {"max_streams_per_identity": 64, "stream_idle_seconds": IDLE_SECONDS},
        },
        mtls=True,
    )
    key = appliance.signing_key()
    verify = verifier(appliance)
    second = client_certificate(appliance, "second").credentials
    options = [("grpc.ssl_target_name_override", "localhost")]

    def open_streams() -> float:
        return metric(appliance, "signer_open_streams")

    async def scenario() -> signing_pb2.SignBatchResponse:
        idle_channel = grpc.aio.secure_channel(
            appliance.address, appliance.credentials("issuer"), options=options
        )
        other_channel = grpc.aio.secure_channel(appliance.address, second, options=options)
        try:
            idle = signing_pb2_grpc.SigningStub(idle_channel)
            streams = [idle.SignStream(timeout=WAIT) for _ in range(64)]
            # Each stream is open (its headers went out) and sends nothing.
            await asyncio.gather(*(stream.wait_for_connection() for stream in streams))
            await asyncio.to_thread(wait_for, lambda: open_streams() == 64, "64 open streams")
            # The flooding identity is at its cap: one more stream of its own is refused.
            refused = await _stream_refusal(idle.SignStream(timeout=WAIT))
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_streams_per_identity" in (refused.details() or "")
            other = signing_pb2_grpc.SigningStub(other_channel)
            reply: signing_pb2.SignBatchResponse = await other.SignBatch(
                signing_pb2.SignBatchRequest(
                    profile=PROFILE, kid=key.kid, digests=digests(3, b"other"), request_id="o"
                ),
                timeout=WAIT,
            )
            # The other identity may still open a stream, and health is answered.
            own = other.SignStream(timeout=WAIT)
            await own.write(
                signing_pb2.SignBatchRequest(
                    profile=PROFILE, kid=key.kid, digests=digests(1, b"own"), request_id="s"
                )
            )
            assert (await own.read()).request_id == "s"
            await own.done_writing()
            health = health_pb2_grpc.HealthStub(idle_channel)
            checked = await health.Check(health_pb2.HealthCheckRequest(), timeout=WAIT)
            assert checked.status == health_pb2.HealthCheckResponse.SERVING
            # The idle streams still work afterwards.
            await streams[0].write(
                signing_pb2.SignBatchRequest(
                    profile=PROFILE, kid=key.kid, digests=digests(1, b"idle"), request_id="i"
                )
            )
            answer = await streams[0].read()
            assert answer.request_id == "i"
            # Left idle, every one of them is ended by the daemon, naming the limit ...
            for ended in await asyncio.gather(*(_stream_refusal(s) for s in streams)):
                assert ended.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "stream_idle_seconds" in (ended.details() or "")
            await asyncio.to_thread(wait_for, lambda: open_streams() == 0, "no open streams")
            # ... and the identity may open streams again.
            again = idle.SignStream(timeout=WAIT)
            await again.write(
                signing_pb2.SignBatchRequest(
                    profile=PROFILE, kid=key.kid, digests=digests(1, b"again"), request_id="a"
                )
            )
            assert (await again.read()).request_id == "a"
            again.cancel()
            return reply
        finally:
            await idle_channel.close()
            await other_channel.close()

    reply = asyncio.run(scenario())
    for digest, signature in zip(digests(3, b"other"), reply.signatures, strict=True):
        verify(digest, signature)
    record = audited(appliance)
    assert record[digests(3, b"other")[0]] == [("o", "CN=second")]
    assert record[digests(1, b"idle")[0]] == [("i", "CN=issuer")]
    assert record[digests(1, b"again")[0]] == [("a", "CN=issuer")]
    assert metric(appliance, "signer_limit_refusals_total", limit="max_streams_per_identity") == 1
    assert metric(appliance, "signer_limit_refusals_total", limit="stream_idle_seconds") == 64
