"""One wrapper for every RPC: identity, errors -> status codes, metrics and the request log line."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from signer.errors import KidNotAccepted, QuotaExceeded, SignerError
from signer.metadata import CURRENT_KID_METADATA, RETRY_AFTER_METADATA
from signer.service.auth import caller_identity
from signer.service.metrics import Metrics
from signer.service.status import status_code

log = logging.getLogger("signer.rpc")
access = logging.getLogger("signer.access")


_R = TypeVar("_R")
Handler = Callable[[Any, Any, grpc.ServicerContext], _R]


def abort(context: grpc.ServicerContext, error: SignerError) -> None:
    """End the call with the status code and message that belong to ``error``."""
    trailing: list[tuple[str, str | bytes]] = []
    if isinstance(error, KidNotAccepted) and error.current_kid:
        trailing.append((CURRENT_KID_METADATA, error.current_kid))
    if isinstance(error, QuotaExceeded):
        trailing.append((RETRY_AFTER_METADATA, f"{error.retry_after:.3f}"))
    if trailing:
        context.set_trailing_metadata(tuple(trailing))
    context.abort(status_code(error), str(error))


def run_rpc(
    metrics: Metrics,
    method: str,
    context: grpc.ServicerContext,
    call: Callable[[], _R],
    request_id: str = "",
) -> _R:
    """Run one RPC body: map SignerError to its status, count and time the call."""
    started = time.perf_counter()
    code = grpc.StatusCode.OK
    try:
        return call()
    except SignerError as error:
        code = status_code(error)
        log.info("%s refused for %s: %s", method, caller_identity(context), error)
        abort(context, error)
        raise  # not reached: abort raises
    except Exception as error:
        if _is_abort(error):
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        code = grpc.StatusCode.INTERNAL
        log.exception("%s failed", method)
        context.abort(code, "internal error in the signer; the operator can find it in the log")
        raise
    finally:
        elapsed = time.perf_counter() - started
        metrics.requests.labels(method, code.name).inc()
        metrics.request_seconds.labels(method).observe(elapsed)
        fields = {
            "method": method,
            "identity": caller_identity(context),
            "code": code.name,
            "duration_ms": round(elapsed * 1000, 3),
            "request_id": request_id[:128],
        }
        access.info(
            "rpc %s %s %s %.2f ms %s",
            fields["method"],
            fields["identity"],
            fields["code"],
            elapsed * 1000,
            fields["request_id"],
            extra={"rpc": fields},
        )


def _is_abort(error: Exception) -> bool:
    """True for the exception grpc raises inside ``context.abort`` (an RPC already ended)."""
    return type(error).__name__ == "_AbortError" or isinstance(error, grpc.RpcError)


def instrumented(method: str) -> Callable[[Handler[_R]], Handler[_R]]:
    """Decorate a unary servicer method of a class that has a ``_metrics`` attribute."""

    def decorate(func: Handler[_R]) -> Handler[_R]:
        @functools.wraps(func)
        def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> _R:
            return run_rpc(
                self._metrics,
                method,
                context,
                lambda: func(self, request, context),
                str(getattr(request, "request_id", "")),
            )

        return wrapper

    return decorate
