"""The asyncio server's one interceptor: who calls, whether they may, and what came of the call.

For every call but a health check it works out the caller's identity once
(:data:`signer.service.auth.CALLER`, read by the servicers and the audit trail), checks the
role the service needs (a refusal is counted and handed to ``on_refusal``, which tallies it for
the audit log), admits the call under the ``[limits]`` of its identity and of the appliance
(:mod:`signer.service.limits`), ends a bidirectional stream that stays idle too long, and ends
the call the way :mod:`signer.service.rpc` says: a :class:`SignerError` becomes its status,
message and trailing metadata, any other exception INTERNAL with the generic message and a
logged traceback, a status the servicer set itself is kept.

Calls of the appliance's own services (``signer.v1.*``) and of reflection add one access log
line each and their request metrics, refusals included; a bidirectional stream is accounted
per exchange (a request read and the answer to it, or the error that ends the stream). A
caller that leaves is accounted as CANCELLED. Reflection needs a role; health needs only a
certificate TLS accepted, and health checks (``Check``) are never counted, limited or refused.

The wrapped handlers are built once per method and reused, so a call pays for one coroutine
around the servicer, not for building handlers.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

from signer.errors import InvalidRequest, SignerError
from signer.service.auth import (
    CALLER,
    HEALTH_SERVICE,
    REFLECTION_SERVICES,
    AuthRefusal,
    Caller,
    Roles,
    authorise,
    certificate_identities,
    required_role,
    service_of,
)
from signer.service.echo import bounded_message
from signer.service.limits import UNLIMITED, CallLimits
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
"""Calls of these services (and of reflection) are accounted; health is not."""
HEALTH_CHECK = f"/{HEALTH_SERVICE}/Check"
"""Always answered: never counted, limited or refused."""
UNKNOWN_IDENTITY_LABEL = "unknown"
"""The ``identity`` label of callers without a role: certificates any holder of the client CA
could mint would otherwise each add a series."""

OnRefusal = Callable[[AuthRefusal, str], bool | None]
"""``(refusal, method)`` of a caller refused by authentication or authorisation; False when the
same identity was already refused for the same reason lately (its reason is then not logged
again: the access line and the metrics still count the call)."""
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


class _Refused(Exception):
    """A caller without the role a method needs (raised before the servicer runs)."""

    def __init__(self, refused: AuthRefusal, news: bool) -> None:
        super().__init__(refused.message)
        self.ending = Refusal(refused.code, bounded_message(refused.message))
        self.news = news


class _Undecodable:
    """Stands in for a request message whose bytes did not parse (refused INVALID_ARGUMENT)."""

    __slots__ = ("kind",)

    def __init__(self, kind: str) -> None:
        self.kind = kind


def _lenient(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A deserializer that hands a parse failure to the servicer wrapper instead of grpc."""
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as error:
            return _Undecodable(type(error).__name__)

    return parse


def _decoded(request: Any, method: str) -> Any:
    if type(request) is _Undecodable:
        raise InvalidRequest(
            f"the request is not a valid message for {method} ({request.kind}); check that"
            " the client uses the appliance's signer.v1 protocol definitions"
        )
    return request


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Authorises, limits, ends and accounts calls (accounting those of ``package``)."""

    def __init__(
        self,
        metrics: Metrics,
        roles: Roles,
        *,
        enforce: bool,
        on_refusal: OnRefusal,
        limits: CallLimits | None = None,
        stream_idle_seconds: float | None = None,
        package: str = SERVICE_PACKAGE,
    ) -> None:
        self._metrics = metrics
        self._roles = roles
        self._enforce = enforce
        self._on_refusal = on_refusal
        self.limits = limits
        self.stream_idle_seconds = stream_idle_seconds
        self._package = package
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        self._by_identity: dict[tuple[str, grpc.StatusCode], Any] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if method == HEALTH_CHECK:
            return handler
        role = required_role(method, self._enforce)
        service = service_of(method)
        accounted = service.startswith(self._package.rstrip(".")) or service in REFLECTION_SERVICES
        if role is None and not accounted and self.limits is None:
            return handler
        return _Calls(self, method, role, accounted).handler(handler)

    def identify(self, context: grpc.aio.ServicerContext, role: str | None) -> Caller:
        """The caller of ``context`` on a call that needs ``role``."""
        names = tuple(certificate_identities(context.auth_context()))
        return self._roles.caller(names, str(context.peer()), role)

    def admit(
        self, caller: Caller, role: str | None, method: str, stream: bool
    ) -> Callable[[], None]:
        """Refuse a caller without ``role`` (after counting and tallying the refusal) or over
        a limit; else count the call and return what ends it."""
        if role is not None:
            refused = authorise(caller, role, method)
            if refused is not None:
                self._metrics.auth_refusals.labels(refused.reason).inc()
                news = self._on_refusal(refused, method)
                raise _Refused(refused, news is not False)
        if self.limits is None:
            return UNLIMITED
        return self.limits.admit(caller.identity, stream)

    def account(
        self, method: str, caller: Caller, code: grpc.StatusCode, started: float, request_id: str
    ) -> None:
        """Count the call and write its access log line."""
        elapsed = time.perf_counter() - started
        account(self._metrics, CallRecord(method, caller.identity, code, elapsed, request_id))
        key = (caller.identity if caller.known else UNKNOWN_IDENTITY_LABEL, code)
        counter = self._by_identity.get(key)
        if counter is None:
            counter = self._metrics.identity_requests.labels(key[0], code.name)
            self._by_identity[key] = counter
        counter.inc()


def _settle(
    method: str, error: BaseException, context: grpc.aio.ServicerContext, identity: str
) -> tuple[grpc.StatusCode, Refusal | None]:
    """The code to account for ``error``, and the refusal to end with (None: let it through)."""
    if isinstance(error, _Refused):
        if error.news:
            log.info("%s refused for %s: %s", method, identity, error.ending.message)
        return error.ending.code, error.ending
    if isinstance(error, SignerError):
        ending = refusal(error)
        log.info("%s refused for %s: %s", method, identity, ending.message)
        return ending.code, ending
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED, None
    if isinstance(error, grpc.aio.AbortError):
        return _code_of(context), None  # the servicer ended the call itself
    if not isinstance(error, Exception):
        return grpc.StatusCode.CANCELLED, None  # GeneratorExit and the like: the call is over
    log.error("%s failed", method, exc_info=error)
    return INTERNAL.code, INTERNAL


def _code_of(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status
    return grpc.StatusCode.UNKNOWN


async def _end(context: grpc.aio.ServicerContext, ending: Refusal) -> NoReturn:
    await context.abort(ending.code, ending.message, ending.trailing_metadata)
    raise AssertionError("grpc's context.abort returned instead of ending the call")


async def _result(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


@dataclass
class _Exchange:
    request_id: str
    started: float


class _Exchanges:
    """The request/answer pairs of one bidirectional stream, oldest unanswered first."""

    def __init__(self, calls: _Calls, caller: Caller, idle_seconds: float | None) -> None:
        self._calls = calls
        self._caller = caller
        self._idle_seconds = idle_seconds
        self._pending: deque[_Exchange] = deque()
        self._idle_since = time.perf_counter()

    async def requests(self, request_iterator: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """The servicer's view of the request stream; each request read opens an exchange.

        Waiting for a request longer than the idle limit ends the stream (RESOURCE_EXHAUSTED).
        """
        iterator = aiter(request_iterator)
        while True:
            try:
                request = await self._next(iterator)
            except StopAsyncIteration:
                return
            self._pending.append(_Exchange(request_id_of(request), time.perf_counter()))
            yield _decoded(request, self._calls.method)

    async def _next(self, iterator: AsyncIterator[Any]) -> Any:
        if self._idle_seconds is None:
            return await anext(iterator)
        try:
            async with asyncio.timeout(self._idle_seconds):
                return await anext(iterator)
        except TimeoutError:
            raise self._calls.idle() from None

    def answered(self) -> None:
        """The servicer yielded the answer to the oldest open exchange."""
        self._close(self._oldest(), grpc.StatusCode.OK)
        self._idle_since = time.perf_counter()

    def failed(self, code: grpc.StatusCode) -> None:
        """The stream ends with ``code``, the outcome of the oldest open exchange."""
        self._close(self._oldest(), code)

    def abandoned(self) -> None:
        """The caller left: requests still open are accounted as cancelled."""
        while self._pending:
            self._close(self._pending.popleft(), grpc.StatusCode.CANCELLED)

    @property
    def open(self) -> bool:
        """True while a request read has no answer yet."""
        return bool(self._pending)

    def _oldest(self) -> _Exchange:
        return self._pending.popleft() if self._pending else _Exchange("", self._idle_since)

    def _close(self, exchange: _Exchange, code: grpc.StatusCode) -> None:
        self._calls.account(self._caller, code, exchange.started, exchange.request_id)


class _Calls:
    """The wrapped behaviours of one method."""

    def __init__(
        self, interceptor: CallInterceptor, method: str, role: str | None, accounted: bool
    ) -> None:
        self._interceptor = interceptor
        self._full_method = method
        self._method = method_name(method)
        self.method = self._method
        self._role = role
        self._accounted = accounted

    def account(
        self, caller: Caller, code: grpc.StatusCode, started: float, request_id: str
    ) -> None:
        if self._accounted:
            self._interceptor.account(self._method, caller, code, started, request_id)

    def idle(self) -> SignerError:
        """The error that ends a stream idle for too long (counted as a limit refusal)."""
        limits = self._interceptor.limits
        assert limits is not None
        return limits.idle(self._method)

    def _start(self, context: grpc.aio.ServicerContext) -> Caller:
        caller = self._interceptor.identify(context, self._role)
        CALLER.set(caller)
        return caller

    def _admit(self, caller: Caller, stream: bool) -> Callable[[], None]:
        return self._interceptor.admit(caller, self._role, self._full_method, stream)

    async def _failed(
        self,
        error: BaseException,
        context: grpc.aio.ServicerContext,
        caller: Caller,
        started: float,
        request_id: str,
    ) -> NoReturn:
        code, ending = _settle(self._method, error, context, caller.identity)
        self.account(caller, code, started, request_id)
        if ending is None:
            raise error
        await _end(context, ending)

    def handler(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        kwargs = {
            "request_deserializer": _lenient(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(self._unary(handler.unary_unary), **kwargs)
        if handler.unary_stream:
            if not inspect.isasyncgenfunction(handler.unary_stream):
                return grpc.unary_stream_rpc_method_handler(
                    self._writing(handler.unary_stream), **kwargs
                )
            return grpc.unary_stream_rpc_method_handler(
                self._unary_stream(handler.unary_stream), **kwargs
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._stream_unary(handler.stream_unary), **kwargs
            )
        return grpc.stream_stream_rpc_method_handler(
            self._stream_stream(handler.stream_stream), **kwargs
        )

    def _unary(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            request_id = request_id_of(request)
            caller = self._start(context)
            release = UNLIMITED
            try:
                try:
                    release = self._admit(caller, stream=False)
                    response = await _result(behavior(_decoded(request, self._method), context))
                except BaseException as error:
                    await self._failed(error, context, caller, started, request_id)
            finally:
                release()
            self.account(caller, grpc.StatusCode.OK, started, request_id)
            return response

        return run

    def _writing(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        """A server-streaming coroutine that sends with ``context.write`` (health Watch)."""

        async def run(request: Any, context: grpc.aio.ServicerContext) -> None:
            started = time.perf_counter()
            request_id = request_id_of(request)
            caller = self._start(context)
            release = UNLIMITED
            try:
                try:
                    release = self._admit(caller, stream=True)
                    await behavior(_decoded(request, self._method), context)
                except BaseException as error:
                    await self._failed(error, context, caller, started, request_id)
            finally:
                release()
            self.account(caller, grpc.StatusCode.OK, started, request_id)

        return run

    def _unary_stream(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started = time.perf_counter()
            request_id = request_id_of(request)
            caller = self._start(context)
            release = UNLIMITED
            try:
                try:
                    release = self._admit(caller, stream=True)
                    async for response in behavior(_decoded(request, self._method), context):
                        yield response
                except BaseException as error:
                    await self._failed(error, context, caller, started, request_id)
            finally:
                release()
            self.account(caller, grpc.StatusCode.OK, started, request_id)

        return run

    def _stream_unary(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def run(
            request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> Any:
            started = time.perf_counter()
            first: list[str] = []
            caller = self._start(context)

            async def noting_first_id() -> AsyncIterator[Any]:
                async for request in request_iterator:
                    if not first:
                        first.append(request_id_of(request))
                    yield _decoded(request, self._method)

            release = UNLIMITED
            try:
                try:
                    release = self._admit(caller, stream=True)
                    response = await _result(behavior(noting_first_id(), context))
                except BaseException as error:
                    await self._failed(error, context, caller, started, "".join(first))
            finally:
                release()
            self.account(caller, grpc.StatusCode.OK, started, "".join(first))
            return response

        return run

    def _stream_stream(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def run(
            request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            caller = self._start(context)
            idle = self._interceptor.stream_idle_seconds
            exchanges = _Exchanges(self, caller, idle if self._interceptor.limits else None)
            release = UNLIMITED
            try:
                release = self._admit(caller, stream=True)
                async for response in behavior(exchanges.requests(request_iterator), context):
                    exchanges.answered()
                    yield response
            except BaseException as error:
                code, ending = _settle(self._method, error, context, caller.identity)
                if ending is None and code is grpc.StatusCode.CANCELLED:
                    exchanges.abandoned()
                    raise
                exchanges.failed(code)
                if ending is None:
                    raise
                await _end(context, ending)
            finally:
                release()

        return run
