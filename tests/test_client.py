"""SignerClient: chunking, order, concurrency, retries, typed errors and round robin.

The behaviour that needs precise control of the server's answers (how many calls are in flight,
an UNAVAILABLE on the first attempts, a quota with a retry-after) is checked against a small
in-process Signing server; everything else runs against real daemons on a SoftHSM token,
including two appliances that share one token behind gRPC's ``round_robin`` policy.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from signer.client import (
    DeadlineExceeded,
    InvalidRequest,
    KidChanged,
    NoActiveKey,
    NotAuthorized,
    QuotaExceeded,
    RequestRefused,
    SignerClient,
    SignerUnavailable,
    UnknownProfile,
    channel_target,
)
from signer.client.client import retry_delay
from signer.client.errors import from_rpc_error
from signer.metadata import CURRENT_KID_METADATA, RETRY_AFTER_METADATA
from signer.sigformat import raw_to_der
from signer.v1 import signing_pb2, signing_pb2_grpc
from tests.conftest import Appliance, metric_value, new_appliance

PROFILE = "vaccination"
KID = b"\x11" * 8


def digests(n: int, seed: bytes = b"") -> list[bytes]:
    return [hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(n)]


def fake_signature(digest: bytes) -> bytes:
    return hashlib.sha256(b"r" + digest).digest() + hashlib.sha256(b"s" + digest).digest()


# --- pure parts ----------------------------------------------------------------------------


def test_channel_target_builds_static_lists_for_round_robin() -> None:
    assert channel_target(["localhost:50051"]) == "localhost:50051"
    assert channel_target(["10.0.0.1:50051", "10.0.0.2:50052"]) == (
        "ipv4:10.0.0.1:50051,10.0.0.2:50052"
    )
    assert channel_target(["[::1]:1", "[fe80::2]:2"]) == "ipv6:[::1]:1,[fe80::2]:2"
    for bad, words in [
        ([], "no appliance"),
        (["a.example:1", "10.0.0.1:2"], "IP:port"),
        (["10.0.0.1:1", "[::1]:2"], "IPv4 or all IPv6"),
        (["10.0.0.1:1", "10.0.0.2"], "port"),
    ]:
        with pytest.raises(ValueError, match=words):
            channel_target(bad)


def test_retry_delay_backs_off_with_jitter_and_honours_quota_waits() -> None:
    unavailable = SignerUnavailable("UNAVAILABLE: HSM", grpc.StatusCode.UNAVAILABLE)
    waits = {retry_delay(unavailable, 0.2, 2.0) for _ in range(50)}
    assert all(w is not None and 0.1 <= w <= 0.3 for w in waits)
    assert len(waits) > 1  # jittered
    deadline = DeadlineExceeded("DEADLINE_EXCEEDED", grpc.StatusCode.DEADLINE_EXCEEDED)
    assert retry_delay(deadline, 0.2, 2.0) is None
    assert (retry_delay(QuotaExceeded("rate", 0.7), 0.2, 2.0) or 0) >= 0.7
    assert retry_delay(QuotaExceeded("batch over burst", 0.0), 0.2, 2.0) is None
    assert retry_delay(QuotaExceeded("wait long", 30.0), 0.2, 2.0) is None
    invalid = InvalidRequest("INVALID_ARGUMENT", grpc.StatusCode.INVALID_ARGUMENT)
    assert retry_delay(invalid, 0.2, 2.0) is None


class _Refusal(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, trailing: tuple[tuple[str, object], ...]) -> None:
        self._code, self._trailing = code, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "why"

    def trailing_metadata(self) -> tuple[tuple[str, object], ...]:
        return self._trailing


@pytest.mark.parametrize(
    ("code", "trailing", "expected"),
    [
        (grpc.StatusCode.FAILED_PRECONDITION, ((CURRENT_KID_METADATA, KID),), KidChanged),
        (grpc.StatusCode.FAILED_PRECONDITION, (), NoActiveKey),
        (grpc.StatusCode.UNAVAILABLE, (), SignerUnavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, (), DeadlineExceeded),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ((RETRY_AFTER_METADATA, "0.250"),), QuotaExceeded),
        (grpc.StatusCode.INVALID_ARGUMENT, (), InvalidRequest),
        (grpc.StatusCode.NOT_FOUND, (), UnknownProfile),
        (grpc.StatusCode.PERMISSION_DENIED, (), NotAuthorized),
        (grpc.StatusCode.UNAUTHENTICATED, (), NotAuthorized),
        (grpc.StatusCode.INTERNAL, (), RequestRefused),
    ],
)
def test_grpc_statuses_become_typed_errors(
    code: grpc.StatusCode, trailing: tuple[tuple[str, object], ...], expected: type
) -> None:
    error = from_rpc_error(_Refusal(code, trailing))
    assert type(error) is expected
    assert error.code is code
    assert str(error) == f"{code.name}: why"
    if isinstance(error, KidChanged):
        assert error.current_kid == KID
    if isinstance(error, QuotaExceeded):
        assert error.retry_after == 0.25


# --- an in-process server whose answers the test scripts ------------------------------------


class ScriptedSigning(signing_pb2_grpc.SigningServicer):
    """Signs with :func:`fake_signature`; ``refusals`` are played before the first success."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.refusals: list[tuple[grpc.StatusCode, tuple[tuple[str, str | bytes], ...]]] = []
        self.calls: list[signing_pb2.SignBatchRequest] = []
        self.key_calls = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.lock = threading.Lock()

    def GetSigningKey(
        self, request: signing_pb2.GetSigningKeyRequest, context: grpc.ServicerContext
    ) -> signing_pb2.SigningKey:
        self.key_calls += 1
        return signing_pb2.SigningKey(profile=request.profile, kid=KID, algorithm="ES256")

    def SignBatch(
        self, request: signing_pb2.SignBatchRequest, context: grpc.ServicerContext
    ) -> signing_pb2.SignBatchResponse:
        with self.lock:
            self.calls.append(request)
            refusal = self.refusals.pop(0) if self.refusals else None
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            time.sleep(self.delay)
            if refusal is not None:
                code, trailing = refusal
                if trailing:
                    context.set_trailing_metadata(trailing)
                context.abort(code, f"scripted {code.name}")
            return signing_pb2.SignBatchResponse(
                signatures=[fake_signature(d) for d in request.digests],
                kid=request.kid,
                request_id=request.request_id,
            )
        finally:
            with self.lock:
                self.in_flight -= 1


@pytest.fixture
def scripted() -> Iterator[tuple[ScriptedSigning, str]]:
    servicer = ScriptedSigning()
    server = grpc.server(ThreadPoolExecutor(max_workers=16))
    signing_pb2_grpc.add_SigningServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(grace=None)


def test_chunks_go_out_concurrently_and_come_back_in_order(
    scripted: tuple[ScriptedSigning, str],
) -> None:
    servicer, address = scripted
    servicer.delay = 0.2
    batch = digests(2000)
    with SignerClient(address, max_batch=250, concurrency=4) as client:
        started = time.monotonic()
        signatures = client.sign_digests(PROFILE, batch, kid=KID, request_id="job")
        elapsed = time.monotonic() - started
        assert client.sign_digests(PROFILE, [], kid=KID) == []
    assert signatures == [fake_signature(d) for d in batch]
    assert sorted(len(c.digests) for c in servicer.calls) == [250] * 8
    assert {c.request_id for c in servicer.calls} == {f"job/{n}" for n in range(8)}
    assert servicer.most_in_flight == 4
    assert elapsed < 8 * 0.2  # two rounds of four, not eight calls in a row


def test_unavailable_is_retried_with_backoff_and_the_same_request_id(
    scripted: tuple[ScriptedSigning, str],
) -> None:
    servicer, address = scripted
    servicer.refusals = [(grpc.StatusCode.UNAVAILABLE, ())] * 3
    with SignerClient(address, retries=3, backoff=0.05) as client:
        started = time.monotonic()
        assert client.sign(PROFILE, KID, digests(3)) == [fake_signature(d) for d in digests(3)]
        assert time.monotonic() - started >= 0.025 + 0.05 + 0.1
    assert len(servicer.calls) == 4
    assert len({c.request_id for c in servicer.calls}) == 1
    servicer.calls.clear()
    servicer.refusals = [(grpc.StatusCode.UNAVAILABLE, ())] * 3
    with (
        SignerClient(address, retries=2, backoff=0.01) as client,
        pytest.raises(SignerUnavailable, match="scripted UNAVAILABLE"),
    ):
        client.sign(PROFILE, KID, digests(1))
    assert len(servicer.calls) == 3


def test_quota_wait_is_honoured_and_other_refusals_are_not_retried(
    scripted: tuple[ScriptedSigning, str],
) -> None:
    servicer, address = scripted
    servicer.refusals = [(grpc.StatusCode.RESOURCE_EXHAUSTED, ((RETRY_AFTER_METADATA, "0.2"),))]
    with SignerClient(address, backoff=0.01) as client:
        started = time.monotonic()
        assert len(client.sign(PROFILE, KID, digests(2))) == 2
        assert time.monotonic() - started >= 0.2
        for code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED):
            servicer.calls.clear()
            servicer.refusals = [(code, ())]
            with pytest.raises(RequestRefused) as caught:
                client.sign(PROFILE, KID, digests(2))
            assert caught.value.code is code
            assert len(servicer.calls) == 1


def test_deadline_is_not_retried(scripted: tuple[ScriptedSigning, str]) -> None:
    servicer, address = scripted
    servicer.delay = 0.5
    with (
        SignerClient(address, timeout=0.1, retries=3) as client,
        pytest.raises(DeadlineExceeded),
    ):
        client.sign(PROFILE, KID, digests(1))
    time.sleep(0.5)
    assert len(servicer.calls) == 1


def test_kid_change_drops_the_cached_key(scripted: tuple[ScriptedSigning, str]) -> None:
    servicer, address = scripted
    with SignerClient(address) as client:
        assert client.signing_key(PROFILE).kid == KID
        assert client.signing_key(PROFILE).kid == KID
        assert servicer.key_calls == 1
        new_kid = b"\x22" * 8
        servicer.refusals = [
            (grpc.StatusCode.FAILED_PRECONDITION, ((CURRENT_KID_METADATA, new_kid),))
        ]
        with pytest.raises(KidChanged) as caught:
            client.sign_digests(PROFILE, digests(5))
        assert caught.value.current_kid == new_kid
        client.signing_key(PROFILE)
        assert servicer.key_calls == 2


def test_bad_options_are_refused() -> None:
    for options in ({"max_batch": 0}, {"concurrency": 0}, {"retries": -1}, {"timeout": 0}):
        with pytest.raises(ValueError):
            SignerClient("127.0.0.1:1", **options)  # type: ignore[arg-type]


# --- real daemons --------------------------------------------------------------------------


def public_key(spki: bytes) -> ec.EllipticCurvePublicKey:
    key = serialization.load_der_public_key(spki)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def verify_all(key: ec.EllipticCurvePublicKey, batch: list[bytes], raw: list[bytes]) -> None:
    algorithm = ec.ECDSA(utils.Prehashed(hashes.SHA256()))
    for digest, signature in zip(batch, raw, strict=True):
        key.verify(raw_to_der(signature), digest, algorithm)


def sign_requests(appliance: Appliance, code: str = "OK") -> float:
    return metric_value(
        appliance.metrics_text(), "signer_requests_total", code=code, method="SignBatch"
    )


def test_real_daemon_chunks_keep_order(appliance: Appliance) -> None:
    before = sign_requests(appliance)
    batch = digests(5000, b"client-order")
    with SignerClient(appliance.address, max_batch=700, concurrency=4) as client:
        key = client.signing_key(PROFILE)
        signatures = client.sign_digests(PROFILE, batch)
    verify_all(public_key(key.public_key_spki), batch, signatures)
    assert sign_requests(appliance) == before + 8


def test_real_daemon_refusals_are_typed(appliance: Appliance) -> None:
    with SignerClient(appliance.address) as client:
        key = client.signing_key(PROFILE)
        with pytest.raises(KidChanged) as changed:
            client.sign(PROFILE, b"\x01" * 8, digests(2))
        assert changed.value.current_kid == key.kid
        with pytest.raises(UnknownProfile, match="passport"):
            client.signing_key("passport")
        bad = digests(4)
        bad[2] = bad[2][:31]
        with pytest.raises(InvalidRequest, match=r"digests\[2\]"):
            client.sign(PROFILE, key.kid, bad)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Appliance, Appliance]]:
    """Two appliances on one SoftHSM token (same keys), each with its own audit log."""
    root = tmp_path_factory.mktemp("pair")
    first = new_appliance(root / "a", {"hsm": {"timeout_seconds": 1.5}})
    first.setup()
    second_secrets = root / "b" / "secrets"
    second_secrets.mkdir(parents=True, mode=0o700)
    for name in ("user.pin", "so.pin"):
        shutil.copy2(first.home / "secrets" / name, second_secrets / name)
    shutil.copy2(first.home / "csca.pem", root / "b" / "csca.pem")
    second = new_appliance(root / "b", {"hsm": {"timeout_seconds": 1.5}}, first.home / "tokens")
    second.setup()
    try:
        first.start(wait=False)
        second.start()
        first.wait_serving()
        yield first, second
    finally:
        first.stop()
        second.stop()


def signatures_total(appliance: Appliance) -> float:
    return sum(
        float(line.rpartition(" ")[2])
        for line in appliance.metrics_text().splitlines()
        if line.startswith("signer_signatures_total")
    )


def test_round_robin_spreads_chunks_over_two_appliances(pair: tuple[Appliance, Appliance]) -> None:
    first, second = pair
    assert first.signing_key().kid == second.signing_key().kid
    before = [signatures_total(a) for a in pair]
    batch = digests(4000, b"round-robin")
    with SignerClient([first.address, second.address], max_batch=250, concurrency=4) as client:
        key = client.signing_key(PROFILE)
        signatures = client.sign_digests(PROFILE, batch)
    verify_all(public_key(key.public_key_spki), batch, signatures)
    gained = [signatures_total(a) - b for a, b in zip(pair, before, strict=True)]
    assert sum(gained) == len(batch)
    assert all(g >= 1000 for g in gained), gained  # 16 chunks, alternating picks


def test_unavailable_hsm_is_retried_until_it_answers(pair: tuple[Appliance, Appliance]) -> None:
    appliance = pair[1]
    workers = appliance.worker_pids()
    unavailable_before = sign_requests(appliance, "UNAVAILABLE")
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)

    def resume() -> None:
        for pid in workers:
            # A worker frozen past the HSM timeout has been killed and replaced already.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    thaw = threading.Timer(2.0, resume)
    thaw.start()
    try:
        batch = digests(10, b"frozen")
        with SignerClient(appliance.address, retries=6, backoff=0.5, max_backoff=1.0) as client:
            key = client.signing_key(PROFILE)
            signatures = client.sign(PROFILE, key.kid, batch)
    finally:
        thaw.join()
    verify_all(public_key(key.public_key_spki), batch, signatures)
    assert sign_requests(appliance, "UNAVAILABLE") >= unavailable_before + 1
