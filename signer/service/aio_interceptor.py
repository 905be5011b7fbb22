"""The asyncio server's one interceptor: who calls, whether they may, and what came of the call.

For every call of the appliance's own services (``signer.v1.*``) it works out the caller's
identity once (:data:`signer.service.auth.CALLER`, read by the servicers and the audit trail),
checks the role the service needs (a refusal is counted and audited by ``on_refusal``), and
ends the call the way :mod:`signer.service.rpc` says: a :class:`SignerError` becomes its status,
message and trailing metadata, any other exception INTERNAL with the generic message and a
logged traceback, a status the servicer set itself is kept. Each call adds one access log line
and its request metrics; a bidirectional stream is accounted per exchange (a request read and
the answer to it, or the error that ends the stream). A caller that leaves is accounted as
CANCELLED. Health and reflection pass through untouched; any certificate TLS accepted may use
them.

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
    AuthRefusal,
    Caller,
    Roles,
    authorise,
    certificate_identities,
    required_role,
    service_of,
)
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
"""Calls of these services are accounted; health and reflection are not."""

OnRefusal = Callable[[str, str, str], Awaitable[None]]
"""``(reason, identity, method)`` of a caller refused by authentication or authorisation."""
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


class _Refused(Exception):
    """A caller without the role a method needs (raised before the servicer runs)."""

    def __init__(self, refused: AuthRefusal) -> None:
        super().__init__(refused.message)
        self.ending = Refusal(refused.code, refused.message)


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


def identify(context: grpc.aio.ServicerContext) -> Caller:
    """The caller of ``context`` (first certificate name, else its peer address)."""
    names = certificate_identities(context.auth_context())
    return Caller(names[0] if names else str(context.peer()), tuple(names))


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Authorises, ends and accounts every call of the services in ``package``."""

    def __init__(
        self,
        metrics: Metrics,
        roles: Roles,
        *,
        enforce: bool,
        on_refusal: OnRefusal,
        package: str = SERVICE_PACKAGE,
    ) -> None:
        self._metrics = metrics
        self._roles = roles
        self._enforce = enforce
        self._on_refusal = on_refusal
        self._package = package
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

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
        role = required_role(method, self._enforce)
        accounted = service_of(method).startswith(self._package.rstrip("."))
        if role is None and not accounted:
            return handler
        return _Calls(self, method, role, accounted).handler(handler)

    async def admit(self, caller: Caller, role: str | None, method: str) -> None:
        """Refuse (after counting and auditing the refusal) a caller without ``role``."""
        if role is None:
            return
        refused = authorise(list(caller.names), caller.identity, self._roles, role, method)
        if refused is not None:
            await self._on_refusal(refused.reason, refused.identity, method)
            raise _Refused(refused)

    def account(
        self, method: str, caller: Caller, code: grpc.StatusCode, started: float, request_id: str
    ) -> None:
        """Count the call and write its access log line."""
        elapsed = time.perf_counter() - started
        account(self._metrics, CallRecord(method, caller.identity, code, elapsed, request_id))


def _settle(
    method: str, error: BaseException, context: grpc.aio.ServicerContext, identity: str
) -> tuple[grpc.StatusCode, Refusal | None]:
    """The code to account for ``error``, and the refusal to end with (None: let it through)."""
    if isinstance(error, _Refused):
        log.info("%s refused for %s: %s", method, identity, error)
        return error.ending.code, error.ending
    if isinstance(error, SignerError):
        log.info("%s refused for %s: %s", method, identity, error)
        ending = refusal(error)
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

    def __init__(self, calls: _Calls, caller: Caller) -> None:
        self._calls = calls
        self._caller = caller
        self._pending: deque[_Exchange] = deque()
        self._idle_since = time.perf_counter()

    async def requests(self, request_iterator: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """The servicer's view of the request stream; each request read opens an exchange."""
        async for request in request_iterator:
            self._pending.append(_Exchange(request_id_of(request), time.perf_counter()))
            yield _decoded(request, self._calls.method)

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

    def _start(self, context: grpc.aio.ServicerContext) -> Caller:
        caller = identify(context)
        CALLER.set(caller)
        return caller

    async def _admit(self, caller: Caller) -> None:
        await self._interceptor.admit(caller, self._role, self._full_method)

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
            try:
                await self._admit(caller)
                response = await _result(behavior(_decoded(request, self._method), context))
            except BaseException as error:
                await self._failed(error, context, caller, started, request_id)
            self.account(caller, grpc.StatusCode.OK, started, request_id)
            return response

        return run

    def _unary_stream(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started = time.perf_counter()
            request_id = request_id_of(request)
            caller = self._start(context)
            try:
                await self._admit(caller)
                async for response in behavior(_decoded(request, self._method), context):
                    yield response
            except BaseException as error:
                await self._failed(error, context, caller, started, request_id)
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

            try:
                await self._admit(caller)
                response = await _result(behavior(noting_first_id(), context))
            except BaseException as error:
                await self._failed(error, context, caller, started, "".join(first))
            self.account(caller, grpc.StatusCode.OK, started, "".join(first))
            return response

        return run

    def _stream_stream(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def run(
            request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            caller = self._start(context)
            exchanges = _Exchanges(self, caller)
            try:
                await self._admit(caller)
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

        return run
