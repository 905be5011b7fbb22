"""The front end's handle on the signing worker processes, driven by one asyncio event loop.

Workers are started with the ``spawn`` method (gRPC and ``fork`` do not mix). A job is a call of
a :class:`~signer.hsm.session.TokenSession` method, bound to its arguments with
:func:`functools.partial`, so mypy sees its argument and result types; the pool only moves jobs
and answers and knows no operation by name.

All pipe I/O happens on one event loop: each worker's socket is an asyncio transport, answers
are read and settled in the loop's own callbacks, so the signing path (which runs on the same
loop as the gRPC server) waits for the HSM without a reader thread or a thread hop. The daemon
opens the pool on its server loop (:meth:`WorkerPool.open`); tools and tests call
:meth:`WorkerPool.start`, which runs a private loop in a thread. Threads other than the loop's
use the blocking methods (:meth:`run`, :meth:`broadcast`, :meth:`sign_blocking`); the loop itself
uses :meth:`sign_soon` and :meth:`call`.

Signing requests wait in a :class:`~signer.hsm.jobs.SignQueue` in the front end and reach a
worker in jobs of at most :attr:`WorkerPool.chunk` digests (``[hsm] chunk_digests``, cut in
proportion in a pool of more workers than cores), at most :data:`DEPTH` at a time per worker:
small requests are not stuck behind queued large batches, concurrent small requests for one key
share a job, and a worker always has its next job waiting in its pipe.

The first worker's start is retried with backoff while the HSM is unavailable; unless the pool
was given its size, that worker also measures the module (:mod:`signer.hsm.calibrate`), which
sizes the pool and its jobs (:func:`signer.hsm.sizing.plan_pool`) and settles whether workers
sign from session copies of their keys. Later workers that cannot start leave the pool degraded
while they are started again in the background.

A worker that dies is replaced; a job that may be retried is dispatched once more to another
worker, and fails with :class:`HsmUnavailable` when that is not possible. A worker that answered
HsmUnavailable (token gone, session or login lost) ends itself and is replaced the same way:
only a new process, with its own ``C_Initialize``, sees the token again. Replacements start one
at a time, with backoff while the HSM stays unavailable. A worker that sits on a job for
``[hsm] timeout_seconds`` is killed (and replaced) and the job fails with HsmUnavailable; the
time counts from when the worker took the job up (a job waiting in its pipe behind another, or
retried on a new worker, starts its own full timeout then), so a hung worker's jobs never make
a healthy one look hung. The typed face of the pool is :class:`signer.hsm.pooled.PooledToken`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import multiprocessing
import os
import pickle
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from functools import partial
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

from signer.config import HsmSettings
from signer.errors import ConfigError, HsmError, HsmUnavailable, SignerError
from signer.hsm.calibrate import Calibration
from signer.hsm.jobs import Done, Part, SignQueue, SignRequest, deliver, job_digests
from signer.hsm.session import TokenSession, call_name
from signer.hsm.sizing import PoolPlan, plan_pool
from signer.hsm.worker import READY, WorkerStarted, worker_main

log = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 60.0
RESTART_BACKOFF_SECONDS = (0.1, 0.5, 1.0, 2.0)
"""Pauses before the attempts to replace a worker; the last repeats while the HSM stays away."""
START_BACKOFF_SECONDS = (0.5, 1.0, 2.0)
"""Pauses between the attempts to start the first worker: a transient login error is retried."""
DEPTH = 2
"""Signing jobs a worker holds at once: the one it signs and the next, waiting in its pipe."""
SWEEP_SECONDS = 0.05
"""How often jobs are checked against their deadline."""

NO_WORKER = "HSM unavailable: no HSM worker process is running; check the HSM and the log"

T = TypeVar("T")
Call = Callable[[TokenSession], T]
"""A job: a function the worker applies to its :class:`TokenSession`."""
Settle = Callable[[Any, BaseException | None], None]

# multiprocessing.Connection's framing, which the worker reads and writes: a signed 32-bit
# big-endian length (-1 announces a 64-bit one), then the pickled object.
_LENGTH = struct.Struct("!i")
_LONG_LENGTH = struct.Struct("!Q")
_SHUTDOWN = pickle.dumps(None, protocol=pickle.HIGHEST_PROTOCOL)


def _frame(payload: bytes) -> bytes:
    if len(payload) < 0x7FFFFFFF:
        return _LENGTH.pack(len(payload)) + payload
    return _LENGTH.pack(-1) + _LONG_LENGTH.pack(len(payload)) + payload


@dataclass(eq=False, slots=True)
class _Job:
    call: Callable[[TokenSession], Any]
    settle: Settle | None = None
    parts: list[Part] | None = None
    """Set for signing jobs: whose digests the job carries."""
    weight: int = 1
    retries_left: int = 1
    worker: _Worker | None = None
    deadline: float = 0.0
    failure: HsmUnavailable | None = None
    """Why the job was retried, its answer if the retry fails too."""

    @property
    def name(self) -> str:
        return call_name(self.call)


def _settle_job(job: _Job, value: Any, error: BaseException | None) -> None:
    if job.parts is not None:
        if error is None:
            deliver(job.parts, value)
        else:
            for part in job.parts:
                part.request.fail(error)
    elif job.settle is not None:
        job.settle(value, error)


def _to_future(future: concurrent.futures.Future[Any] | asyncio.Future[Any]) -> Settle:
    """A settle function that resolves ``future`` once (a late or duplicate answer is dropped)."""

    def settle(value: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)

    return settle


class _Worker:
    """One worker process, its transport and the jobs it holds (loop thread only)."""

    def __init__(self, index: int, process: BaseProcess, pid: int) -> None:
        self.index = index
        self.process = process
        self.pid = pid
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, _Job] = {}
        self.signing = 0
        self.load = 0
        self.alive = True
        self.retiring = False
        """It answered HsmUnavailable and is ending itself, or was killed: no new jobs."""
        self.killed = False

    @property
    def usable(self) -> bool:
        """Alive, connected and not ending: it may take jobs."""
        return self.alive and not self.retiring and self.transport is not None


class _Link(asyncio.Protocol):
    """Reads a worker's answers off its socket and hands them to the pool."""

    def __init__(self, pool: WorkerPool, worker: _Worker) -> None:
        self._pool = pool
        self._worker = worker
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._worker.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        used = 0
        try:
            while len(buffer) - used >= _LENGTH.size:
                (size,) = _LENGTH.unpack_from(buffer, used)
                head = _LENGTH.size
                if size == -1:
                    if len(buffer) - used < head + _LONG_LENGTH.size:
                        break
                    (size,) = _LONG_LENGTH.unpack_from(buffer, used + head)
                    head += _LONG_LENGTH.size
                end = used + head + size
                if len(buffer) < end:
                    break
                with memoryview(buffer) as view:
                    job_id, ok, value = pickle.loads(view[used + head : end])  # noqa: S301 (our worker)
                used = end
                self._pool._answer(self._worker, job_id, ok, value)
        except Exception:
            log.exception("reading from HSM worker %d failed; replacing it", self._worker.index)
            self._worker.process.kill()
            if self._worker.transport is not None:
                self._worker.transport.abort()
        finally:
            del buffer[:used]
            self._pool._pump()

    def connection_lost(self, exc: Exception | None) -> None:
        self._pool._lost(self._worker)


class _LoopThread:
    """A private event loop in a daemon thread, for a pool used outside the daemon."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="signer-hsm-io", daemon=True
        )
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self.loop.is_running():
            self.loop.close()


class WorkerPool:
    """N signing processes behind one interface, served by one event loop."""

    def __init__(
        self,
        settings: HsmSettings,
        count: int | None = None,
        *,
        chunk: int | None = None,
        coalesce: bool | None = None,
    ) -> None:
        self._settings = settings
        # A pool of a given size (set-up, tools) neither measures nor resizes itself.
        self._sized = count is None
        self._count = count or settings.worker_count
        self._chunk = chunk
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: list[_Worker | None] = [None] * self._count
        self._job_ids = itertools.count(1)
        self.plan: PoolPlan = plan_pool(
            None, os.cpu_count() or 1, self._count, settings.max_workers, settings.chunk_digests
        )
        """Workers and job size: as configured until the first worker measured the module."""
        self.calibration: Calibration | None = None
        """What the first worker measured (None for a pool of a given size, or before)."""
        self._queue = SignQueue(
            chunk or self.plan.chunk,
            settings.coalesce if coalesce is None else coalesce,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._own: _LoopThread | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._restarting: set[asyncio.Task[None]] = set()
        self._restart_gate: asyncio.Lock | None = None
        self._retry_at = 0.0
        """Loop time before which no worker start is tried again (after a failed one)."""
        self._hsm_down = False
        """A worker met an unavailable HSM, or could not start, since the last one started."""
        self._starved_since: float | None = None
        """Since when signing requests wait with no worker to take them (a replacement is
        starting); they fail at the timeout."""
        self._closing = False
        self.restarts = 0
        self.sign_jobs = 0
        self._pump_soon = False
        """Signing jobs sent to workers so far (coalesced requests share one)."""

    @property
    def size(self) -> int:
        """Number of workers the pool runs when whole (configured, or sized at start)."""
        return self._count

    @property
    def chunk(self) -> int:
        """Most digests in one signing job (see :func:`signer.hsm.sizing.job_digests`)."""
        return self._queue.chunk

    @property
    def degraded(self) -> bool:
        """True while fewer workers run than the pool should have (some are being recovered)."""
        return self.workers_up < self._count

    @property
    def workers_up(self) -> int:
        """Number of workers alive right now."""
        return sum(1 for w in list(self._workers) if w is not None and w.alive)

    @property
    def pending_digests(self) -> int:
        """Digests waiting for a worker or being signed (read without a lock: a gauge)."""
        held = sum(w.load for w in list(self._workers) if w is not None and w.alive)
        return held + self._queue.waiting_digests

    def pids(self) -> list[int]:
        """Process ids of the live workers (for operators and tests)."""
        return [w.pid for w in list(self._workers) if w is not None and w.alive]

    # -- life cycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Start the workers on the running loop; the first measures the HSM when the pool
        sizes itself.

        The first worker's start is retried with backoff while the HSM is unavailable, and
        raises when it still cannot start (at once when the HSM or the configuration refuses:
        a wrong PIN is not tried again). A later worker that cannot start leaves the pool
        degraded: it serves with the others and keeps starting the missing ones in the
        background.
        """
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._restart_gate = asyncio.Lock()
        missing: list[int] = []
        try:
            await self._start_first()
            # One after the other: SoftHSM processes starting at the same moment have been
            # seen to read a token directory another one was writing, and find no token.
            for index in range(1, self._count):
                try:
                    await self._start_worker(index)
                except ConfigError:
                    raise
                except SignerError as exc:
                    # The first worker logged in with the same settings: the HSM's trouble.
                    missing.append(index)
                    failure = exc
        except BaseException:
            await self.aclose()
            raise
        self._sweeper = self._loop.call_later(SWEEP_SECONDS, self._sweep)
        if missing:
            log.warning(
                "HSM: %d of %d workers could not start (%s); serving degraded with %d while"
                " they are started again in the background",
                len(missing),
                self._count,
                failure,
                self.workers_up,
            )
            for index in missing:
                self._restart_soon(index)

    async def _start_first(self) -> None:
        """Start worker 0, retrying with backoff while the HSM is unavailable, and apply what
        it measured."""
        for pause in (*START_BACKOFF_SECONDS, None):
            try:
                found = await self._start_worker(0, measure=self._sized)
            except HsmUnavailable as exc:
                if pause is None or self._closing:
                    raise
                log.warning("HSM worker 0: %s; trying again in %g s", exc, pause)
                await asyncio.sleep(pause)
                continue
            if found is not None:
                self._apply(found)
            return

    def _apply(self, found: Calibration) -> None:
        """Size the pool and its jobs from the first worker's measurement and settle
        C_CopyObject (before any other worker starts)."""
        s = self._settings
        self.calibration = found
        if found.problem:
            log.warning(
                "HSM: could not measure the module (%s); sizing as configured", found.problem
            )
        if found.copy_supported is False and s.copy_keys_to_session is not False:
            log.log(
                logging.WARNING if s.copy_keys_to_session is True else logging.INFO,
                "PKCS#11 module %s cannot copy keys into a session (C_CopyObject): workers"
                " sign from the token keys; set [hsm] copy_keys_to_session = false to skip the"
                " attempt",
                s.module,
            )
            self._settings = replace(s, copy_keys_to_session=False)
        cores = os.cpu_count() or 1
        self.plan = plan_pool(found.timing, cores, s.workers, s.max_workers, s.chunk_digests)
        if self._chunk is None:
            self._queue.chunk = self.plan.chunk
        if self.plan.warning:
            log.warning("HSM: %s", self.plan.warning)
        if found.timing is not None:
            log.info(
                "HSM: %.3f ms per signature, %.3f ms of it CPU here: %d workers (%d would keep"
                " the cores busy), jobs of at most %d digests",
                found.timing.wall * 1e3,
                found.timing.cpu * 1e3,
                self.plan.workers,
                self.plan.wanted,
                self._queue.chunk,
            )
        if self.plan.workers != self._count:
            self._count = self.plan.workers
            self._workers = (self._workers + [None] * self._count)[: self._count]

    def start(self) -> None:
        """Start the workers on a private event loop (for use outside the daemon)."""
        self._own = _LoopThread()
        try:
            self._own.run(self.open())
        except BaseException:
            self._own.stop()
            self._own = None
            raise

    async def aclose(self) -> None:
        """Stop all workers; jobs still waiting fail with HsmUnavailable."""
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in list(self._restarting):
            task.cancel()
        self._queue.fail_all(HsmUnavailable("the signer is shutting down"))
        workers = [w for w in self._workers if w is not None]
        for worker in workers:
            if worker.alive and worker.transport is not None:
                worker.transport.write(_frame(_SHUTDOWN))
        await asyncio.get_running_loop().run_in_executor(None, _join, workers)
        for worker in workers:
            if worker.transport is not None:
                worker.transport.close()
            self._lost(worker)

    def close(self) -> None:
        """Stop all workers, from any thread but the loop's."""
        if self._own is not None:
            own, self._own = self._own, None
            own.run(self.aclose())
            own.stop()
        elif self._loop is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self.aclose(), self._loop).result(timeout=60)

    # -- the loop's interface ------------------------------------------------------------------

    def sign_soon(self, key_id: str, digests: bytes, done: Done) -> None:
        """Queue packed digests for signing; ``done`` gets the packed raw signatures (loop)."""
        request = SignRequest(key_id, digests, done)
        if self._closing:
            request.fail(HsmUnavailable("the signer is shutting down"))
            return
        self._queue.put(request)
        if not self._pump_soon:
            # Dispatch once the loop has run what is ready now: requests that arrived together
            # leave together. An idle loop runs it at once, so a lone request never waits.
            self._pump_soon = True
            assert self._loop is not None
            self._loop.call_soon(self._pump_now)

    async def call(self, call: Call[T]) -> T:
        """Run one job on the least-loaded worker from the loop (not retried)."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._dispatch(_Job(call, _to_future(future), retries_left=0))
        return await future

    # -- other threads' interface --------------------------------------------------------------

    def run(self, call: Call[T]) -> T:
        """Run one job on the least-loaded worker and return its result (not retried)."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        job = _Job(call, _to_future(future), retries_left=0)
        self._from_thread(partial(self._dispatch, job))
        result: T = self._wait(future, job.name)
        return result

    def sign_blocking(self, key_id: str, digests: bytes) -> bytes:
        """Packed raw signatures over packed digests, waiting in the calling thread."""
        future: concurrent.futures.Future[bytes] = concurrent.futures.Future()
        self._from_thread(partial(self.sign_soon, key_id, digests, _to_future(future)))
        signatures: bytes = self._wait(future, "sign_packed")
        return signatures

    def broadcast(self, call: Call[T]) -> list[T]:
        """Run a job on every live worker (e.g. forget a destroyed key); each one's answer."""
        futures: list[concurrent.futures.Future[T]] = []

        def send_all() -> None:
            for worker in self._workers:
                if worker is not None and worker.usable:
                    future: concurrent.futures.Future[T] = concurrent.futures.Future()
                    futures.append(future)
                    self._send(worker, _Job(call, _to_future(future), retries_left=0))

        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def on_loop() -> None:
            send_all()
            done.set_result(None)

        self._from_thread(on_loop)
        self._wait(done, call_name(call))
        return [self._wait(future, call_name(call)) for future in futures]

    def _from_thread(self, action: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None or self._closing:
            raise HsmUnavailable("the HSM workers are not running (the signer is stopping)")
        if threading.get_ident() == self._loop_thread:
            raise RuntimeError("a blocking HSM call on the pool's event loop; use the async API")
        try:
            loop.call_soon_threadsafe(action)
        except RuntimeError:
            raise HsmUnavailable("the HSM workers are not running (the signer stopped)") from None

    def _wait(self, future: concurrent.futures.Future[T], name: str) -> T:
        # The loop answers a late job with HsmUnavailable at its deadline; this bound only
        # matters if the loop itself stopped turning.
        limit = self._settings.timeout_seconds * 2 + 10
        try:
            return future.result(timeout=limit)
        except concurrent.futures.TimeoutError:
            raise HsmUnavailable(
                f"the HSM did not answer {name} within {limit:g} s; check the HSM"
            ) from None

    # -- dispatch (loop thread) ----------------------------------------------------------------

    def _pump_now(self) -> None:
        self._pump_soon = False
        self._pump()

    def _pump(self) -> None:
        """Give free workers the next signing jobs: an idle worker any job, a busy one only
        the next chunk of a large batch (see :mod:`signer.hsm.jobs`)."""
        while self._queue:
            worker = self._free_worker()
            if worker is None:
                if not any(w is not None and w.usable for w in self._workers) and (
                    self._hsm_down or not self._restarting
                ):
                    # Nothing to wait for: fail now. A worker that is merely being replaced
                    # (killed at a timeout, crashed) gets the requests when it is up.
                    self._queue.fail_all(HsmUnavailable(NO_WORKER))
                return
            parts = self._queue.take() if worker.signing == 0 else self._queue.take_chunk()
            if parts is None:
                return
            call = partial(
                TokenSession.sign_packed, key_id=parts[0].request.key_id, digests=job_digests(parts)
            )
            weight = sum(p.end - p.start for p in parts)
            self.sign_jobs += 1
            self._send(worker, _Job(call, parts=parts, weight=weight))

    def _free_worker(self) -> _Worker | None:
        """The live worker holding the fewest signing jobs (then digests), if one has room."""
        best: _Worker | None = None
        for worker in self._workers:
            if (
                worker is not None
                and worker.usable
                and worker.signing < DEPTH
                and (best is None or (worker.signing, worker.load) < (best.signing, best.load))
            ):
                best = worker
        return best

    def _dispatch(self, job: _Job, exclude: int | None = None) -> None:
        live = [w for w in self._workers if w is not None and w.usable]
        candidates = [w for w in live if w.index != exclude] or live
        if not candidates:
            _settle_job(job, None, HsmUnavailable(NO_WORKER))
            return
        self._send(min(candidates, key=lambda w: w.load), job)

    def _send(self, worker: _Worker, job: _Job) -> None:
        assert worker.transport is not None
        job_id = next(self._job_ids)
        worker.pending[job_id] = job
        worker.load += job.weight
        if job.parts is not None:
            worker.signing += 1
        job.worker = worker
        job.deadline = time.monotonic() + self._settings.timeout_seconds
        worker.transport.write(_frame(pickle.dumps((job_id, job.call), pickle.HIGHEST_PROTOCOL)))

    def _answer(self, worker: _Worker, job_id: int, ok: bool, value: Any) -> None:
        job = worker.pending.pop(job_id, None)
        if job is None:
            return
        self._release(worker, job)
        self._restart_clock(worker)
        if ok:
            _settle_job(job, value, None)
        else:
            error = value if isinstance(value, SignerError) else HsmError(str(value))
            if isinstance(error, HsmUnavailable) and not worker.retiring:
                worker.retiring = True
                self._hsm_down = True
                log.warning(
                    "HSM worker %d (pid %d): %s; it ends and a new one starts",
                    worker.index,
                    worker.pid,
                    error,
                )
            _settle_job(job, None, error)

    def _restart_clock(self, worker: _Worker) -> None:
        """The worker takes up its next job now: that job's timeout starts now."""
        if worker.pending:
            head = next(iter(worker.pending.values()))
            head.deadline = max(head.deadline, time.monotonic() + self._settings.timeout_seconds)

    def _release(self, worker: _Worker, job: _Job) -> None:
        worker.load -= job.weight
        if job.parts is not None:
            worker.signing -= 1

    def _sweep(self) -> None:
        """Kill a worker that sat on a job past its deadline and replace it; the job is retried
        once on another worker (with a timeout of its own there) or fails, and the worker's
        other jobs are retried elsewhere when its end is noticed (:meth:`_lost`)."""
        now = time.monotonic()
        self._fail_starved(now)
        for worker in self._workers:
            if worker is None or not worker.alive or worker.killed or not worker.pending:
                continue
            job_id, job = next(iter(worker.pending.items()))
            if job.deadline > now:
                continue
            del worker.pending[job_id]
            self._release(worker, job)
            log.error(
                "HSM worker %d (pid %d) hung on %s; killing it", worker.index, worker.pid, job.name
            )
            worker.killed = worker.retiring = True
            worker.process.kill()
            job.failure = HsmUnavailable(
                f"HSM unavailable: the HSM did not answer {job.name} within"
                f" {self._settings.timeout_seconds:g} s; check the HSM"
            )
            if job.retries_left > 0:
                job.retries_left -= 1
                self._dispatch(job, exclude=worker.index)
                continue
            _settle_job(job, None, job.failure)
        if not self._closing and self._loop is not None:
            self._sweeper = self._loop.call_later(SWEEP_SECONDS, self._sweep)

    def _fail_starved(self, now: float) -> None:
        """Fail the signing requests that waited ``timeout_seconds`` for a worker in vain."""
        if not self._queue or any(w is not None and w.usable for w in self._workers):
            self._starved_since = None
        elif self._starved_since is None:
            self._starved_since = now
        elif now - self._starved_since >= self._settings.timeout_seconds:
            self._starved_since = None
            self._queue.fail_all(HsmUnavailable(NO_WORKER))

    def _lost(self, worker: _Worker) -> None:
        if not worker.alive:
            return
        worker.alive = False
        orphans = list(worker.pending.values())
        worker.pending.clear()
        worker.load = worker.signing = 0
        if self._closing:
            for job in orphans:
                _settle_job(job, None, HsmUnavailable("the signer is shutting down"))
            return
        if worker.retiring:
            log.info("HSM worker %d (pid %d) ended; replacing it", worker.index, worker.pid)
        else:
            log.error("HSM worker %d (pid %d) died; replacing it", worker.index, worker.pid)
        for job in orphans:
            if job.retries_left > 0:
                job.retries_left -= 1
                self._dispatch(job, exclude=worker.index)
            else:
                error = job.failure or HsmUnavailable(
                    f"HSM unavailable: HSM worker {worker.index} ended during {job.name}; retry"
                )
                _settle_job(job, None, error)
        self._restart_soon(worker.index)
        self._pump()

    # -- processes -----------------------------------------------------------------------------

    async def _start_worker(self, index: int, measure: bool = False) -> Calibration | None:
        """Start worker ``index`` and connect it to the loop; what it measured, if asked."""
        loop = asyncio.get_running_loop()
        process, sock, started = await loop.run_in_executor(None, self._spawn, index, measure)
        worker = _Worker(index, process, started.pid)
        if self._closing:
            sock.close()
            process.kill()
            return None
        await loop.connect_accepted_socket(partial(_Link, self, worker), sock)
        self._workers[index] = worker
        self._hsm_down = False
        log.info("HSM worker %d started (pid %d)", index, started.pid)
        self._pump()
        return started.calibration

    def _spawn(
        self, index: int, measure: bool = False
    ) -> tuple[BaseProcess, socket.socket, WorkerStarted]:
        """Start one worker process and wait until it has logged in (and, with ``measure``,
        measured the module) (blocking)."""
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=worker_main,
            args=(child, self._settings, measure),
            name=f"signer-hsm-{index}",
            daemon=True,
        )
        process.start()
        child.close()
        try:
            if not parent.poll(START_TIMEOUT_SECONDS):
                process.kill()
                raise HsmUnavailable(
                    f"HSM worker {index} did not start within {START_TIMEOUT_SECONDS:.0f} s"
                )
            try:
                status, value = parent.recv()
            except EOFError:
                raise HsmUnavailable(f"HSM worker {index} exited while starting") from None
            if status != READY:
                process.join(timeout=5)
                # A refusal (PIN, configuration) keeps its kind: it is not retried.
                kind = type(value) if isinstance(value, ConfigError | HsmError) else HsmUnavailable
                raise kind(f"HSM worker {index} could not start: {value}")
            sock = socket.socket(fileno=os.dup(parent.fileno()))
        finally:
            parent.close()
        assert isinstance(value, WorkerStarted)
        return process, sock, value

    def _restart_soon(self, index: int) -> None:
        """Start worker ``index`` again in the background, with backoff (loop thread)."""
        assert self._loop is not None
        task = self._loop.create_task(self._restart(index))
        self._restarting.add(task)
        task.add_done_callback(self._restarting.discard)

    async def _restart(self, index: int) -> None:
        delays = itertools.chain(
            RESTART_BACKOFF_SECONDS, itertools.repeat(RESTART_BACKOFF_SECONDS[-1])
        )
        for delay in delays:
            if self._closing:
                return
            await asyncio.sleep(delay)
            if self._closing:
                return
            try:
                assert self._restart_gate is not None
                async with self._restart_gate:  # one at a time, as at start
                    # After a failed start every worker waits out the same pause: a long HSM
                    # outage costs one start attempt per pause, not one per missing worker.
                    await asyncio.sleep(max(0.0, self._retry_at - self._loop_time()))
                    if self._closing:
                        return
                    await self._start_worker(index)
            except (SignerError, OSError) as exc:
                self._retry_at = self._loop_time() + RESTART_BACKOFF_SECONDS[-1]
                self._hsm_down = True
                self._pump()  # requests that waited for this worker fail now
                log.error("HSM worker %d could not restart: %s", index, exc)
                continue
            self._retry_at = 0.0
            if not self._closing:
                self.restarts += 1
            return

    def _loop_time(self) -> float:
        assert self._loop is not None
        return self._loop.time()


def _join(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.process.join(timeout=5)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(timeout=5)
