"""The RPC interceptor on a real in-process gRPC server with a small probe service (no HSM).

Each probe method answers requests whose ``profile`` is ``ok`` and raises the error named by
any other ``profile``, so one table drives unary, streaming and client-streaming calls alike.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from signer.errors import (
    AuditError,
    CertificateError,
    HsmError,
    HsmUnavailable,
    InvalidRequest,
    KidNotAccepted,
    PermissionDenied,
    QuotaExceeded,
    SignerError,
    UnknownProfile,
)
from signer.metadata import CURRENT_KID_METADATA, RETRY_AFTER_METADATA
from signer.service.interceptor import RpcInterceptor
from signer.service.metrics import Metrics
from signer.v1.signing_pb2 import SignBatchRequest, SignBatchResponse

GENERIC_MESSAGE = "internal error in the signer; the operator can find it in the log"
CURRENT_KID = b"\x01\x02\x03\x04\x05\x06\x07\x08"

ERRORS: dict[str, Callable[[], SignerError]] = {
    "invalid": lambda: InvalidRequest("digest 3 has 31 bytes; send SHA-256 digests"),
    "certificate": lambda: CertificateError("the DSC does not match the key"),
    "profile": lambda: UnknownProfile("profile 'xx' is not served"),
    "kid": lambda: KidNotAccepted("kid no longer signs; use the current kid", CURRENT_KID),
    "denied": lambda: PermissionDenied("officer role needed"),
    "quota": lambda: QuotaExceeded("over the signing rate; retry later", 1.25),
    "hsm_down": lambda: HsmUnavailable("the HSM does not answer"),
    "audit": lambda: AuditError("the audit log cannot be written"),
    "hsm": lambda: HsmError("the HSM refused the operation"),
}
EXPECTED = {
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "certificate": grpc.StatusCode.INVALID_ARGUMENT,
    "profile": grpc.StatusCode.NOT_FOUND,
    "kid": grpc.StatusCode.FAILED_PRECONDITION,
    "denied": grpc.StatusCode.PERMISSION_DENIED,
    "quota": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "hsm_down": grpc.StatusCode.UNAVAILABLE,
    "audit": grpc.StatusCode.UNAVAILABLE,
    "hsm": grpc.StatusCode.INTERNAL,
}


def answer(request: SignBatchRequest, context: grpc.ServicerContext) -> SignBatchResponse:
    """Echo the request id, or fail the way ``profile`` says."""
    if request.profile == "ok":
        return SignBatchResponse(request_id=request.request_id)
    if request.profile == "bug":
        raise RuntimeError("secret detail of a bug")
    if request.profile == "abort":
        context.abort(grpc.StatusCode.NOT_FOUND, "the servicer ended this call itself")
    raise ERRORS[request.profile]()


def unary(request: SignBatchRequest, context: grpc.ServicerContext) -> SignBatchResponse:
    return answer(request, context)


def bidi(
    requests: Iterator[SignBatchRequest], context: grpc.ServicerContext
) -> Iterator[SignBatchResponse]:
    for request in requests:
        yield answer(request, context)


def fan_out(
    request: SignBatchRequest, context: grpc.ServicerContext
) -> Iterator[SignBatchResponse]:
    yield SignBatchResponse(request_id=request.request_id)
    yield answer(request, context)


def gather(requests: Iterator[SignBatchRequest], context: grpc.ServicerContext) -> Any:
    return [answer(request, context) for request in requests][-1]


HANDLERS = {
    "Unary": grpc.unary_unary_rpc_method_handler,
    "Bidi": grpc.stream_stream_rpc_method_handler,
    "FanOut": grpc.unary_stream_rpc_method_handler,
    "Gather": grpc.stream_unary_rpc_method_handler,
}
BEHAVIORS: dict[str, Callable[..., Any]] = {
    "Unary": unary,
    "Bidi": bidi,
    "FanOut": fan_out,
    "Gather": gather,
}


def generic_handler(service: str) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        service,
        {
            name: make(
                BEHAVIORS[name],
                request_deserializer=SignBatchRequest.FromString,
                response_serializer=SignBatchResponse.SerializeToString,
            )
            for name, make in HANDLERS.items()
        },
    )


@dataclass
class Probe:
    """A running server with the probe service as ``signer.v1.Probe`` and ``test.Other``."""

    channel: grpc.Channel
    metrics: Metrics
    finish: Callable[[], None]

    def method(self, kind: str, name: str, service: str = "signer.v1.Probe") -> Any:
        make = getattr(self.channel, kind)
        return make(
            f"/{service}/{name}",
            request_serializer=SignBatchRequest.SerializeToString,
            response_deserializer=SignBatchResponse.FromString,
        )

    def unary(self, profile: str, request_id: str = "u1", service: str = "signer.v1.Probe") -> Any:
        call = self.method("unary_unary", "Unary", service)
        return call(SignBatchRequest(profile=profile, request_id=request_id), timeout=10)

    def count(self, method: str, code: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "signer_requests_total", {"method": method, "code": code}
        )
        return value or 0.0


@pytest.fixture
def probe() -> Iterator[Probe]:
    metrics = Metrics()
    executor = ThreadPoolExecutor(max_workers=4)
    server = grpc.server(executor, interceptors=[RpcInterceptor(metrics)])
    server.add_generic_rpc_handlers((generic_handler("signer.v1.Probe"),))
    server.add_generic_rpc_handlers((generic_handler("test.Other"),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stopped = False

    def finish() -> None:
        """Stop the server and wait until every handler thread has returned."""
        nonlocal stopped
        if not stopped:
            stopped = True
            channel.close()
            server.stop(None).wait()
            executor.shutdown(wait=True)

    yield Probe(channel, metrics, finish)
    finish()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="signer.access")
    caplog.set_level(logging.INFO, logger="signer.rpc")
    return caplog


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.rpc for r in caplog.records if r.name == "signer.access"]  # type: ignore[attr-defined]


def summary(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, str]]:
    return [(line["method"], line["code"], line["request_id"]) for line in access_lines(caplog)]


def refused(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def trailing(error: grpc.RpcError) -> dict[str, str | bytes]:
    return dict(error.trailing_metadata() or ())


def test_an_answer_is_accounted_once(probe: Probe, logs: pytest.LogCaptureFixture) -> None:
    assert probe.unary("ok", request_id="req-7").request_id == "req-7"
    [line] = access_lines(logs)
    assert (line["method"], line["code"], line["request_id"]) == ("Unary", "OK", "req-7")
    assert line["identity"].startswith("ipv4:127.0.0.1:")
    assert probe.count("Unary", "OK") == 1


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_unary_signer_error_ends_with_its_status(
    probe: Probe, logs: pytest.LogCaptureFixture, name: str
) -> None:
    error = refused(lambda: probe.unary(name))
    assert error.code() == EXPECTED[name]
    assert error.details() == str(ERRORS[name]())
    assert summary(logs) == [("Unary", EXPECTED[name].name, "u1")]
    assert probe.count("Unary", EXPECTED[name].name) == 1


def test_kid_refusal_carries_the_current_kid(probe: Probe) -> None:
    error = refused(lambda: probe.unary("kid"))
    assert trailing(error)[CURRENT_KID_METADATA] == CURRENT_KID


def test_quota_refusal_carries_retry_after(probe: Probe) -> None:
    error = refused(lambda: probe.unary("quota"))
    assert trailing(error)[RETRY_AFTER_METADATA] == "1.250"


def test_unexpected_exception_is_internal_with_the_generic_message(
    probe: Probe, logs: pytest.LogCaptureFixture
) -> None:
    error = refused(lambda: probe.unary("bug"))
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == GENERIC_MESSAGE
    [failure] = [r for r in logs.records if r.name == "signer.rpc" and r.exc_info]
    assert failure.exc_info is not None
    assert str(failure.exc_info[1]) == "secret detail of a bug"
    assert [line["code"] for line in access_lines(logs)] == ["INTERNAL"]


def test_a_call_the_servicer_aborted_keeps_its_status(
    probe: Probe, logs: pytest.LogCaptureFixture
) -> None:
    error = refused(lambda: probe.unary("abort"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "the servicer ended this call itself"
    assert [line["code"] for line in access_lines(logs)] == ["NOT_FOUND"]
    assert not [r for r in logs.records if r.name == "signer.rpc" and r.exc_info]


@pytest.mark.parametrize("name", ["kid", "quota", "audit"])
def test_bidi_stream_failing_mid_stream(
    probe: Probe, logs: pytest.LogCaptureFixture, name: str
) -> None:
    requests = [
        SignBatchRequest(profile="ok", request_id="s0"),
        SignBatchRequest(profile="ok", request_id="s1"),
        SignBatchRequest(profile=name, request_id="s2"),
        SignBatchRequest(profile="ok", request_id="s3"),
    ]
    answers: list[str] = []

    def read_all() -> None:
        for response in probe.method("stream_stream", "Bidi")(iter(requests), timeout=10):
            answers.append(response.request_id)

    error = refused(read_all)
    assert answers == ["s0", "s1"]
    assert error.code() == EXPECTED[name]
    assert error.details() == str(ERRORS[name]())
    if name == "kid":
        assert trailing(error)[CURRENT_KID_METADATA] == CURRENT_KID
    assert summary(logs) == [
        ("Bidi", "OK", "s0"),
        ("Bidi", "OK", "s1"),
        ("Bidi", EXPECTED[name].name, "s2"),
    ]


def test_bidi_stream_with_a_bug_is_internal(probe: Probe, logs: pytest.LogCaptureFixture) -> None:
    requests = [SignBatchRequest(profile="ok", request_id="a"), SignBatchRequest(profile="bug")]
    error = refused(lambda: list(probe.method("stream_stream", "Bidi")(iter(requests), timeout=10)))
    assert (error.code(), error.details()) == (grpc.StatusCode.INTERNAL, GENERIC_MESSAGE)
    assert [line["code"] for line in access_lines(logs)] == ["OK", "INTERNAL"]


def test_server_stream_failing_after_an_answer(
    probe: Probe, logs: pytest.LogCaptureFixture
) -> None:
    responses = probe.method("unary_stream", "FanOut")(
        SignBatchRequest(profile="invalid", request_id="f1"), timeout=10
    )
    assert next(responses).request_id == "f1"
    error = refused(lambda: next(responses))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert summary(logs) == [("FanOut", "INVALID_ARGUMENT", "f1")]


def test_client_stream_is_accounted_once_with_the_first_request_id(
    probe: Probe, logs: pytest.LogCaptureFixture
) -> None:
    gather = probe.method("stream_unary", "Gather")
    ok = [SignBatchRequest(profile="ok", request_id=f"g{n}") for n in range(3)]
    assert gather(iter(ok), timeout=10).request_id == "g2"
    bad = [SignBatchRequest(profile="ok", request_id="h0"), SignBatchRequest(profile="denied")]
    assert refused(lambda: gather(iter(bad), timeout=10)).code() == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert summary(logs) == [("Gather", "OK", "g0"), ("Gather", "PERMISSION_DENIED", "h0")]


def test_client_leaving_between_exchanges_is_not_an_error(
    probe: Probe, logs: pytest.LogCaptureFixture
) -> None:
    outbox: queue.Queue[SignBatchRequest | None] = queue.Queue()
    outbox.put(SignBatchRequest(profile="ok", request_id="c0"))
    call = probe.method("stream_stream", "Bidi")(iter(outbox.get, None), timeout=10)
    assert next(call).request_id == "c0"
    call.cancel()
    probe.finish()
    assert [(line["code"], line["request_id"]) for line in access_lines(logs)] == [("OK", "c0")]
    assert not [r for r in logs.records if r.name == "signer.rpc" and r.exc_info]
    assert probe.count("Bidi", "INTERNAL") == 0


def test_other_services_pass_through_unaccounted(
    probe: Probe, logs: pytest.LogCaptureFixture
) -> None:
    assert probe.unary("ok", service="test.Other").request_id == "u1"
    error = refused(lambda: probe.unary("invalid", service="test.Other"))
    assert error.code() == grpc.StatusCode.UNKNOWN
    probe.finish()
    assert access_lines(logs) == []
