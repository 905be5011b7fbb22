"""The front end's handle on the signing worker processes.

Workers are started with the ``spawn`` method before the gRPC server exists (gRPC and ``fork``
do not mix). A job is a call of a :class:`~signer.hsm.session.TokenSession` method, bound to its
arguments with :func:`functools.partial`, so mypy sees its argument and result types; the pool
only moves jobs and answers and knows no operation by name. A worker that dies is replaced; a
job that may be retried is dispatched once more to another worker, and fails with
:class:`HsmUnavailable` when that is not possible. The typed face of the pool is
:class:`signer.hsm.pooled.PooledToken`.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

from signer.config import HsmSettings
from signer.errors import ConfigError, HsmError, HsmUnavailable, SignerError
from signer.hsm.calibrate import Calibration
from signer.hsm.session import TokenSession, call_name
from signer.hsm.sizing import PoolPlan, plan_pool
from signer.hsm.worker import READY, WorkerStarted, worker_main

log = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 60.0
RESTART_BACKOFF_SECONDS = (0.1, 0.5, 1.0, 2.0, 5.0)
START_BACKOFF_SECONDS = (0.5, 1.0, 2.0)
"""Pauses between the attempts to start one worker: a transient login error is retried."""


T = TypeVar("T")
Call = Callable[[TokenSession], T]
"""A job: a function the worker applies to its :class:`TokenSession`."""


@dataclass
class _Job:
    call: Callable[[TokenSession], Any]
    future: Future[Any] = field(default_factory=Future)
    weight: int = 1
    retries_left: int = 1
    worker: _Worker | None = None
    deadline: float = 0.0

    @property
    def name(self) -> str:
        return call_name(self.call)

    def settle(self, value: Any = None, error: BaseException | None = None) -> None:
        """Resolve the job once; a late or duplicate answer is dropped."""
        if self.future.done():
            return
        try:
            if error is None:
                self.future.set_result(value)
            else:
                self.future.set_exception(error)
        except InvalidStateError:
            pass


class _Worker:
    """One worker process, its pipe and the jobs it holds."""

    def __init__(self, index: int, process: BaseProcess, conn: Connection, pid: int) -> None:
        self.index = index
        self.process = process
        self.conn = conn
        self.pid = pid
        self.send_lock = threading.Lock()
        self.pending: dict[int, _Job] = {}
        self.load = 0
        self.alive = True
        self.calibration: Calibration | None = None


class WorkerPool:
    """N signing processes behind one thread-safe interface."""

    def __init__(self, settings: HsmSettings, count: int | None = None) -> None:
        self._settings = settings
        # A pool of a given size (set-up, tools) neither measures nor resizes itself.
        self._sized = count is None
        self._count = count or settings.worker_count
        self._ctx = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._workers: list[_Worker | None] = [None] * self._count
        self._job_ids = itertools.count(1)
        self._closing = False
        self.restarts = 0
        self.plan: PoolPlan = plan_pool(
            None, os.cpu_count() or 1, self._count, settings.max_workers, settings.min_chunk
        )
        self.calibration: Calibration | None = None

    @property
    def min_chunk(self) -> int:
        """Fewest digests per job when a batch is split (configured, or from the measurement)."""
        return self.plan.min_chunk

    @property
    def degraded(self) -> bool:
        """True while fewer workers run than the pool should have (some are being recovered)."""
        return self.workers_up < self._count

    @property
    def size(self) -> int:
        """Configured number of workers."""
        return self._count

    @property
    def workers_up(self) -> int:
        """Number of workers alive right now."""
        return sum(1 for w in self._workers if w is not None and w.alive)

    def pids(self) -> list[int]:
        """Process ids of the live workers (for operators and tests)."""
        return [w.pid for w in self._workers if w is not None and w.alive]

    def start(self) -> None:
        """Start the workers; the first measures the HSM when the pool sizes itself.

        The first worker's start is retried with backoff while the HSM is unavailable, and
        raises when it still cannot start (at once when the HSM refuses: a wrong PIN is not
        tried again). A later worker that cannot start leaves the pool degraded: it serves
        with the others and keeps starting the missing ones in the background.
        """
        # A pool its owner did not close (a daemon whose start failed) stops its workers at exit
        # instead of mourning and replacing them while the interpreter shuts down.
        atexit.register(self.close)
        self._workers[0] = self._start_worker(0, self._sized)
        missing = []
        for index in range(1, self._count):
            try:
                self._workers[index] = self._spawn(index)
            except ConfigError:
                raise
            except SignerError as exc:
                # The first worker logged in with the same settings: this is the HSM's trouble.
                missing.append(index)
                failure = exc
        if missing:
            log.warning(
                "HSM: %d of %d workers could not start (%s); serving degraded with %d while"
                " they are started again in the background",
                len(missing),
                self._count,
                failure,
                self.workers_up,
            )
            for lost in missing:
                threading.Thread(
                    target=self._restart, args=(lost,), name=f"signer-hsm-start-{lost}", daemon=True
                ).start()

    def _start_worker(self, index: int, measure: bool) -> _Worker:
        """Spawn one worker, retrying with backoff while the HSM is unavailable."""
        for pause in (*START_BACKOFF_SECONDS, None):
            try:
                worker = self._spawn(index, measure)
            except HsmUnavailable as exc:
                if pause is None:
                    raise
                log.warning("HSM worker %d: %s; trying again in %g s", index, exc, pause)
                time.sleep(pause)
                continue
            if worker.calibration is not None:
                self._apply(worker.calibration)
            return worker
        raise AssertionError("unreachable")

    def _apply(self, found: Calibration) -> None:
        """Size the pool from the first worker's measurement and settle C_CopyObject."""
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
        self.plan = plan_pool(found.timing, cores, s.workers, s.max_workers, s.min_chunk)
        if self.plan.warning:
            log.warning("HSM: %s", self.plan.warning)
        if found.timing is not None:
            log.info(
                "HSM: %.3f ms per signature, %.3f ms of it CPU here: %d workers (%d would keep"
                " the cores busy), chunks of at least %d digests",
                found.timing.wall * 1e3,
                found.timing.cpu * 1e3,
                self.plan.workers,
                self.plan.wanted,
                self.plan.min_chunk,
            )
        if self.plan.workers != self._count:
            self._count = self.plan.workers
            self._workers = (self._workers + [None] * self._count)[: self._count]

    def close(self) -> None:
        """Stop all workers."""
        atexit.unregister(self.close)
        with self._lock:
            self._closing = True
        for worker in self._workers:
            if worker is None:
                continue
            try:
                with worker.send_lock:
                    worker.conn.send(None)
            except OSError:
                pass
        for worker in self._workers:
            if worker is not None:
                worker.process.join(timeout=5)
                if worker.process.is_alive():
                    worker.process.kill()
                worker.conn.close()

    def run(self, call: Call[T]) -> T:
        """Run one job on the least-loaded worker and return its result (not retried)."""
        result: T = self.wait(self.submit(call, weight=1, retries=0))
        return result

    def submit(self, call: Call[Any], weight: int, retries: int = 1) -> _Job:
        """Send a job to the least-loaded worker; ``weight`` counts toward that worker's load."""
        job = _Job(call, weight=weight, retries_left=retries)
        self._dispatch(job)
        return job

    def wait(self, job: _Job) -> Any:
        """The result of a submitted job; a worker that sits on it past the timeout is killed."""
        return self._wait(job)

    def broadcast(self, call: Call[Any]) -> None:
        """Run a job on every live worker (e.g. forget a destroyed key)."""
        jobs = []
        for worker in list(self._workers):
            if worker is not None and worker.alive:
                job = _Job(call, retries_left=0)
                if self._send(worker, job):
                    jobs.append(job)
        for job in jobs:
            self._wait(job)

    def _wait(self, job: _Job) -> Any:
        """Wait for a job until its deadline, which restarts whenever it moves to a new worker."""
        while True:
            try:
                return job.future.result(timeout=max(0.0, job.deadline - time.monotonic()))
            except FutureTimeout:
                if job.deadline > time.monotonic():
                    continue  # retried on another worker meanwhile, with a fresh deadline
                self._recycle(job)
                raise HsmUnavailable(
                    f"the HSM did not answer {job.name} within"
                    f" {self._settings.timeout_seconds:g} s; check the HSM"
                ) from None

    def _recycle(self, job: _Job) -> None:
        """Kill the worker that sat on a job past the timeout; the restart path replaces it."""
        worker = job.worker
        if worker is not None and worker.alive and worker.process.is_alive():
            log.error(
                "HSM worker %d (pid %d) hung on %s; killing it", worker.index, worker.pid, job.name
            )
            worker.process.kill()

    def _dispatch(self, job: _Job, exclude: int | None = None) -> None:
        while True:
            with self._lock:
                candidates = [
                    w for w in self._workers if w is not None and w.alive and w.index != exclude
                ]
                if not candidates:
                    candidates = [w for w in self._workers if w is not None and w.alive]
                if not candidates:
                    job.settle(
                        error=HsmUnavailable(
                            "no HSM worker process is running; check the HSM and logs"
                        )
                    )
                    return
                worker = min(candidates, key=lambda w: w.load)
            if self._send(worker, job):
                return

    def _send(self, worker: _Worker, job: _Job) -> bool:
        job_id = next(self._job_ids)
        with self._lock:
            if not worker.alive:
                return False
            worker.pending[job_id] = job
            worker.load += job.weight
            job.worker = worker
            job.deadline = time.monotonic() + self._settings.timeout_seconds
        try:
            with worker.send_lock:
                worker.conn.send((job_id, job.call))
            return True
        except (OSError, ValueError):
            with self._lock:
                # If the reader already took the job over (worker lost), it re-dispatches it.
                still_ours = worker.pending.pop(job_id, None) is not None
                if still_ours:
                    worker.load -= job.weight
            return not still_ours

    def _spawn(self, index: int, measure: bool = False) -> _Worker:
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
        except BaseException:
            parent.close()
            raise
        assert isinstance(value, WorkerStarted)
        worker = _Worker(index, process, parent, value.pid)
        worker.calibration = value.calibration
        threading.Thread(
            target=self._read, args=(worker,), name=f"signer-hsm-reader-{index}", daemon=True
        ).start()
        log.info("HSM worker %d started (pid %d)", index, worker.pid)
        return worker

    def _read(self, worker: _Worker) -> None:
        try:
            while True:
                try:
                    job_id, ok, value = worker.conn.recv()
                except (EOFError, OSError):
                    break
                with self._lock:
                    job = worker.pending.pop(job_id, None)
                    if job is not None:
                        worker.load -= job.weight
                if job is None:
                    continue
                if ok:
                    job.settle(value)
                else:
                    job.settle(
                        error=value if isinstance(value, SignerError) else HsmError(str(value))
                    )
        except Exception:
            log.exception("reading from HSM worker %d failed; replacing it", worker.index)
            worker.process.kill()
        finally:
            self._lost(worker)

    def _lost(self, worker: _Worker) -> None:
        with self._lock:
            worker.alive = False
            orphans = list(worker.pending.values())
            worker.pending.clear()
            worker.load = 0
        if self._closing:
            for job in orphans:
                job.settle(error=HsmUnavailable("the signer is shutting down"))
            return
        log.error("HSM worker %d (pid %d) died; replacing it", worker.index, worker.pid)
        for job in orphans:
            if job.retries_left > 0:
                job.retries_left -= 1
                self._dispatch(job, exclude=worker.index)
            else:
                job.settle(
                    error=HsmUnavailable(f"HSM worker {worker.index} died during {job.name}; retry")
                )
        self._restart(worker.index)

    def _restart(self, index: int) -> None:
        delays = itertools.chain(
            RESTART_BACKOFF_SECONDS, itertools.repeat(RESTART_BACKOFF_SECONDS[-1])
        )
        for delay in delays:
            if self._closing:
                return
            time.sleep(delay)
            try:
                replacement = self._spawn(index)
            except (SignerError, OSError) as exc:
                log.error("HSM worker %d could not restart: %s", index, exc)
                continue
            with self._lock:
                if not self._closing:
                    self._workers[index] = replacement
                    self.restarts += 1
                    return
            replacement.process.kill()
            return
