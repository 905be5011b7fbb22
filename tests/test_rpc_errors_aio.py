"""The asyncio server's interceptor on a real in-process ``grpc.aio`` server with a probe
service (no HSM): the table of :mod:`tests.test_rpc_errors`, plus authorisation and
undecodable requests.

Each probe method answers requests whose ``profile`` is ``ok`` and raises the error named by
any other ``profile``, so one table drives unary, streaming and client-streaming calls alike.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from signer.metadata import CURRENT_KID_METADATA, RETRY_AFTER_METADATA
from signer.service.aio_interceptor import CallInterceptor
from signer.service.auth import CALLER, AuthRefusal, Roles
from signer.service.metrics import Metrics
from signer.v1.signing_pb2 import SignBatchRequest, SignBatchResponse
from tests.rpc_cases import (
    CURRENT_KID,
    ERRORS,
    EXPECTED,
    GENERIC_MESSAGE,
    access_lines,
    refused,
    summary,
    trailing,
)


async def answer(request: SignBatchRequest, context: grpc.aio.ServicerContext) -> Any:
    """Echo the request id (and the caller the interceptor found), or fail as ``profile`` says."""
    if request.profile == "ok":
        caller = CALLER.get(None)  # None outside the services the interceptor accounts
        seen = caller.identity.encode() if caller is not None else b""
        return SignBatchResponse(request_id=request.request_id, kid=seen)
    if request.profile == "bug":
        raise RuntimeError("secret detail of a bug")
    if request.profile == "abort":
        await context.abort(grpc.StatusCode.NOT_FOUND, "the servicer ended this call itself")
    raise ERRORS[request.profile]()


async def unary(request: SignBatchRequest, context: grpc.aio.ServicerContext) -> Any:
    return await answer(request, context)


async def bidi(
    requests: AsyncIterator[SignBatchRequest], context: grpc.aio.ServicerContext
) -> AsyncIterator[Any]:
    async for request in requests:
        yield await answer(request, context)


async def fan_out(
    request: SignBatchRequest, context: grpc.aio.ServicerContext
) -> AsyncIterator[Any]:
    yield SignBatchResponse(request_id=request.request_id)
    yield await answer(request, context)


async def gather(
    requests: AsyncIterator[SignBatchRequest], context: grpc.aio.ServicerContext
) -> Any:
    return [await answer(request, context) async for request in requests][-1]


HANDLERS = {
    "Unary": (grpc.unary_unary_rpc_method_handler, unary),
    "Bidi": (grpc.stream_stream_rpc_method_handler, bidi),
    "FanOut": (grpc.unary_stream_rpc_method_handler, fan_out),
    "Gather": (grpc.stream_unary_rpc_method_handler, gather),
}


def generic_handler(service: str) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        service,
        {
            name: make(
                behavior,
                request_deserializer=SignBatchRequest.FromString,
                response_serializer=SignBatchResponse.SerializeToString,
            )
            for name, (make, behavior) in HANDLERS.items()
        },
    )


@dataclass
class Probe:
    """A running aio server with the probe service as ``signer.v1.Probe`` and ``test.Other``."""

    channel: grpc.Channel
    metrics: Metrics
    refusals: list[tuple[str, str, str]]
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


def start_probe(enforce: bool) -> Probe:
    metrics = Metrics()
    refusals: list[tuple[str, str, str]] = []
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def on_refusal(refused: AuthRefusal, method: str) -> None:
        refusals.append((refused.reason, refused.identity, method))

    async def serve() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(
            interceptors=[
                CallInterceptor(metrics, Roles({}), enforce=enforce, on_refusal=on_refusal)
            ]
        )
        server.add_generic_rpc_handlers((generic_handler("signer.v1.Probe"),))
        server.add_generic_rpc_handlers((generic_handler("test.Other"),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(serve(), loop).result(timeout=30)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stopped = False

    def finish() -> None:
        """Stop the server and wait until every handler has returned."""
        nonlocal stopped
        if not stopped:
            stopped = True
            channel.close()
            asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(timeout=30)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
            loop.close()

    return Probe(channel, metrics, refusals, finish)


@pytest.fixture
def probe() -> Iterator[Probe]:
    started = start_probe(enforce=False)
    yield started
    started.finish()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="signer.access")
    caplog.set_level(logging.INFO, logger="signer.rpc")
    return caplog


def test_an_answer_is_accounted_once_with_the_caller(
    probe: Probe, logs: pytest.LogCaptureFixture
) -> None:
    reply = probe.unary("ok", request_id="req-7")
    assert reply.request_id == "req-7"
    [line] = access_lines(logs)
    assert (line["method"], line["code"], line["request_id"]) == ("Unary", "OK", "req-7")
    assert line["identity"].startswith("ipv4:127.0.0.1:")
    assert reply.kid.decode() == line["identity"], "the servicer sees the same caller"
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


def test_kid_and_quota_refusals_carry_their_metadata(probe: Probe) -> None:
    assert trailing(refused(lambda: probe.unary("kid")))[CURRENT_KID_METADATA] == CURRENT_KID
    assert trailing(refused(lambda: probe.unary("quota")))[RETRY_AFTER_METADATA] == "1.250"


def test_unexpected_exception_is_internal_with_the_generic_message(
    probe: Probe, logs: pytest.LogCaptureFixture
) -> None:
    error = refused(lambda: probe.unary("bug"))
    assert (error.code(), error.details()) == (grpc.StatusCode.INTERNAL, GENERIC_MESSAGE)
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
    probe.finish()  # aio's abort sends the status before the handler has returned
    assert [line["code"] for line in access_lines(logs)] == ["NOT_FOUND"]
    assert not [r for r in logs.records if r.name == "signer.rpc" and r.exc_info]


def test_undecodable_request_is_invalid_argument(
    probe: Probe, logs: pytest.LogCaptureFixture
) -> None:
    raw = probe.channel.unary_unary("/signer.v1.Probe/Unary")
    error = refused(lambda: raw(b"\xff" * 64, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid message for Unary" in error.details()
    assert [line["code"] for line in access_lines(logs)] == ["INVALID_ARGUMENT"]


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
    gather_call = probe.method("stream_unary", "Gather")
    ok = [SignBatchRequest(profile="ok", request_id=f"g{n}") for n in range(3)]
    assert gather_call(iter(ok), timeout=10).request_id == "g2"
    bad = [SignBatchRequest(profile="ok", request_id="h0"), SignBatchRequest(profile="denied")]
    assert refused(lambda: gather_call(iter(bad), timeout=10)).code() == (
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


def test_a_caller_without_a_certificate_is_refused_counted_and_reported(
    logs: pytest.LogCaptureFixture,
) -> None:
    guarded = start_probe(enforce=True)
    try:
        error = refused(lambda: guarded.unary("ok", request_id="nocert"))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "client certificate" in error.details()
        [(reason, identity, method)] = guarded.refusals
        assert (reason, method) == ("no_certificate", "/signer.v1.Probe/Unary")
        assert identity.startswith("ipv4:127.0.0.1:")
        assert summary(logs) == [("Unary", "UNAUTHENTICATED", "nocert")]
        # Services of other packages need a role too when roles are enforced.
        assert refused(lambda: guarded.unary("ok", service="test.Other")).code() == (
            grpc.StatusCode.UNAUTHENTICATED
        )
    finally:
        guarded.finish()
