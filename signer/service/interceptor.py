"""The interceptor for a synchronous ``grpc.server`` that ends, counts and logs every call.

The daemon itself serves on ``grpc.aio`` with :mod:`signer.service.aio_interceptor`; this one
gives a thread-pool server of synchronous servicers the same outcomes (both are built on
:mod:`signer.service.rpc`).

A :class:`SignerError` a servicer raises becomes its status, message and trailing metadata
(:func:`signer.service.rpc.refusal`); any other exception becomes INTERNAL with the generic
message and a logged traceback; a status the servicer set itself is kept. Each call adds one
line to the access log and the request metrics. A bidirectional stream answers request by
request (SignStream signs each batch on its own), so it is accounted per exchange: a request
read and the answer to it, or the error that ends the stream.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc

from signer.errors import SignerError
from signer.service.auth import caller_identity
from signer.service.metrics import Metrics
from signer.service.rpc import (
    INTERNAL,
    CallRecord,
    Refusal,
    account,
    method_name,
    refusal,
    request_id_of,
)

log = logging.getLogger("signer.rpc")

SERVICE_PACKAGE = "signer.v1."
"""Only calls of these services are handled; health and reflection pass through untouched."""

Behavior = Callable[[Any, grpc.ServicerContext], Any]


class RpcInterceptor(grpc.ServerInterceptor):
    """Maps errors to statuses and accounts every call of the services in ``package``."""

    def __init__(self, metrics: Metrics, package: str = SERVICE_PACKAGE) -> None:
        self._metrics = metrics
        self._package = package

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        full_method: str = handler_call_details.method
        if handler is None or not full_method.lstrip("/").startswith(self._package):
            return handler
        return _wrapped(handler, self._metrics, method_name(full_method))


@dataclass
class _Call:
    """One accounted unit: an RPC, or one exchange of a bidirectional stream."""

    metrics: Metrics
    method: str
    context: grpc.ServicerContext
    request_id: str = ""
    started: float = field(default_factory=time.perf_counter)

    def account(self, code: grpc.StatusCode) -> None:
        """Count the call and write its access log line."""
        identity = caller_identity(self.context)
        elapsed = time.perf_counter() - self.started
        account(self.metrics, CallRecord(self.method, identity, code, elapsed, self.request_id))

    def succeeded(self) -> None:
        """The servicer answered (with OK, or a status it set on the context)."""
        self.account(self.context.code() or grpc.StatusCode.OK)

    def failed(self, error: Exception) -> NoReturn:
        """Account the call and end it with the status ``error`` stands for."""
        code, ending = _settle(self.method, error, self.context)
        self.account(code)
        if ending is None:
            raise error
        _end(self.context, ending)


def _settle(
    method: str, error: Exception, context: grpc.ServicerContext
) -> tuple[grpc.StatusCode, Refusal | None]:
    """The code to account for ``error``, and the refusal to end with (None: already ended)."""
    if isinstance(error, SignerError):
        ending = refusal(error)
        log.info("%s refused for %s: %s", method, caller_identity(context), ending.message)
        return ending.code, ending
    chosen = context.code()
    if chosen is not None and chosen is not grpc.StatusCode.OK:
        return chosen, None  # the servicer ended the call itself (context.abort or set_code)
    if _client_left(error, context):
        return grpc.StatusCode.CANCELLED, None
    log.error("%s failed", method, exc_info=error)
    return INTERNAL.code, INTERNAL


def _client_left(error: Exception, context: grpc.ServicerContext) -> bool:
    """True when reading the request stream failed because the client cancelled or timed out."""
    return isinstance(error, grpc.RpcError) and not context.is_active()


def _end(context: grpc.ServicerContext, ending: Refusal) -> NoReturn:
    if ending.trailing_metadata:
        context.set_trailing_metadata(ending.trailing_metadata)
    context.abort(ending.code, ending.message)
    raise AssertionError("grpc's context.abort returned instead of ending the call")


class _Exchanges:
    """The request/answer pairs of one bidirectional stream, oldest unanswered first."""

    def __init__(self, metrics: Metrics, method: str, context: grpc.ServicerContext) -> None:
        self._metrics = metrics
        self._method = method
        self._context = context
        self._pending: deque[_Call] = deque()
        self._idle_since = time.perf_counter()

    def requests(self, request_iterator: Iterator[Any]) -> Iterator[Any]:
        """The servicer's view of the request stream; each request read opens an exchange."""
        for request in request_iterator:
            self._pending.append(self._open(request_id_of(request), time.perf_counter()))
            yield request

    def answered(self) -> None:
        """The servicer yielded the answer to the oldest open exchange."""
        self._oldest().succeeded()
        self._idle_since = time.perf_counter()

    def failed(self, error: Exception) -> NoReturn:
        """The stream ends with ``error``, the outcome of the oldest open exchange."""
        if not self._pending and _client_left(error, self._context):
            raise error  # the client left between exchanges: no request went unanswered
        self._oldest().failed(error)

    def abandoned(self) -> None:
        """grpc stopped taking answers: requests still open are accounted as cancelled."""
        while self._pending:
            self._pending.popleft().account(grpc.StatusCode.CANCELLED)

    def _oldest(self) -> _Call:
        if self._pending:
            return self._pending.popleft()
        return self._open("", self._idle_since)

    def _open(self, request_id: str, started: float) -> _Call:
        return _Call(self._metrics, self._method, self._context, request_id, started)


def _wrapped(handler: grpc.RpcMethodHandler, metrics: Metrics, method: str) -> Any:
    """``handler`` with each of its behaviours run through error mapping and accounting."""

    def call(context: grpc.ServicerContext, request_id: str = "") -> _Call:
        return _Call(metrics, method, context, request_id)

    def unary_unary(behavior: Behavior) -> Behavior:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            current = call(context, request_id_of(request))
            try:
                response = behavior(request, context)
            except Exception as error:
                current.failed(error)
            current.succeeded()
            return response

        return run

    def stream_unary(behavior: Behavior) -> Behavior:
        def run(request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
            current = call(context)
            try:
                response = behavior(_noting_first_id(request_iterator, current), context)
            except Exception as error:
                current.failed(error)
            current.succeeded()
            return response

        return run

    def unary_stream(behavior: Behavior) -> Behavior:
        def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            current = call(context, request_id_of(request))
            try:
                yield from behavior(request, context)
            except GeneratorExit:
                current.account(grpc.StatusCode.CANCELLED)
                raise
            except Exception as error:
                current.failed(error)
            current.succeeded()

        return run

    def stream_stream(behavior: Behavior) -> Behavior:
        def run(request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            exchanges = _Exchanges(metrics, method, context)
            try:
                for response in behavior(exchanges.requests(request_iterator), context):
                    exchanges.answered()
                    yield response
            except GeneratorExit:
                exchanges.abandoned()
                raise
            except Exception as error:
                exchanges.failed(error)

        return run

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary_unary(handler.unary_unary), **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(unary_stream(handler.unary_stream), **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(stream_unary(handler.stream_unary), **kwargs)
    return grpc.stream_stream_rpc_method_handler(stream_stream(handler.stream_stream), **kwargs)


def _noting_first_id(request_iterator: Iterator[Any], current: _Call) -> Iterator[Any]:
    """The request stream, unchanged; the first request's id becomes the call's."""
    first = True
    for request in request_iterator:
        if first:
            current.request_id = request_id_of(request)
            first = False
        yield request
