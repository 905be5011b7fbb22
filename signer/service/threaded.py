"""Serve a blocking servicer from the asyncio server: each call runs in a thread pool.

KeyAdmin and Audit calls block on the HSM workers, the record store and the audit files; they
are rare and slow, so they keep their plain code and run in ``[server] threads`` threads while
the event loop goes on serving signing requests. The caller's identity
(:data:`signer.service.auth.CALLER`) travels with the call into the thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any

import grpc


class ThreadContext:
    """What a blocking servicer may ask of its call, read on the loop before the thread runs."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._auth = context.auth_context()
        self._peer = context.peer()
        self._metadata = context.invocation_metadata()

    def auth_context(self) -> Mapping[str, Sequence[bytes]]:
        """The TLS properties of the caller's connection."""
        return self._auth  # type: ignore[no-any-return]

    def peer(self) -> str:
        """The caller's address."""
        return str(self._peer)

    def invocation_metadata(self) -> Any:
        """The metadata the caller sent."""
        return self._metadata


class InThreads:
    """``servicer`` with every public method turned into a coroutine that runs it in ``pool``."""

    def __init__(self, servicer: object, pool: Executor) -> None:
        self._servicer = servicer
        self._pool = pool

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._servicer, name)
        if inspect.isgeneratorfunction(method):
            return self._streaming(name, method)
        pool = self._pool

        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = contextvars.copy_context()
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                pool, call.run, method, request, ThreadContext(context)
            )

        run.__name__ = name
        return run

    def _streaming(self, name: str, method: Callable[..., Iterator[Any]]) -> Callable[..., Any]:
        """A server-streaming method: each next message is produced in the thread pool."""
        pool = self._pool

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call = contextvars.copy_context()
            loop = asyncio.get_running_loop()
            answers = await loop.run_in_executor(
                pool, call.run, method, request, ThreadContext(context)
            )
            while True:
                answer = await loop.run_in_executor(pool, call.run, _next, answers)
                if answer is _DONE:
                    return
                yield answer

        stream.__name__ = name
        return stream


_DONE = object()


def _next(answers: Iterator[Any]) -> Any:
    return next(answers, _DONE)
