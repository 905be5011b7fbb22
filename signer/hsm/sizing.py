"""How many workers an HSM needs, from one measurement at start (pure functions).

A worker spends each signature partly on this host's CPU (Python, the module's client code,
for SoftHSM the whole signature) and partly waiting for the HSM (network, queueing, the HSM's
own work). Cores are kept busy when ``cores * wall / cpu`` workers are signing at once: one per
core for a local module, many more for a network HSM a millisecond away.

Jobs shrink as the pool grows beyond one worker per core (:func:`job_digests`), so that one
batch still reaches every worker and a small request waits no longer behind a job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

SMALLEST_CHUNK = 8
"""Fewest digests a job is cut to for a large pool (unless ``[hsm] chunk_digests`` is smaller):
even at a network HSM's fastest, 8 signatures take far longer than the pipe round trip."""
_TOO_SMALL = 1.25
"""The pool counts as too small when it would need this many times the workers it has."""


@dataclass(frozen=True)
class SignTiming:
    """One worker's signatures measured at start: seconds per signature, wall and CPU."""

    wall: float
    cpu: float
    samples: int

    @property
    def waiting(self) -> float:
        """How many times longer a signature takes than the CPU it costs here (>= 1)."""
        return max(1.0, self.wall / max(self.cpu, 1e-9))


@dataclass(frozen=True)
class PoolPlan:
    """Workers and job size for the pool, and what an operator should hear about them."""

    workers: int
    chunk: int
    """Most digests in one signing job (:func:`job_digests`)."""
    wanted: int
    """Workers that would keep every core busy, before any bound."""
    warning: str | None = None


def workers_to_keep_busy(timing: SignTiming, cores: int) -> int:
    """Workers that keep ``cores`` busy while each waits for the HSM."""
    return max(cores, round(cores * timing.waiting))


def job_digests(chunk_digests: int, cores: int, workers: int) -> int:
    """Most digests in one job for a pool of ``workers`` on ``cores``.

    ``[hsm] chunk_digests`` is the job of a worker that has a core to itself. A pool of more
    workers than cores (``workers = "auto"`` on a network HSM) cuts its jobs in proportion,
    never below :data:`SMALLEST_CHUNK` nor above ``chunk_digests``. The pool as a whole then
    holds about as many digests at once as one worker per core would, one batch of 1000
    reaches every worker, and a job of an "auto" pool takes about as long as ``chunk_digests``
    signatures of this host's CPU, which bounds how long a single digest waits behind one.
    """
    scaled = math.ceil(chunk_digests * cores / max(1, workers))
    return min(chunk_digests, max(SMALLEST_CHUNK, scaled))


def plan_pool(
    timing: SignTiming | None,
    cores: int,
    workers: int | Literal["auto"],
    max_workers: int,
    chunk_digests: int,
) -> PoolPlan:
    """The pool for the settings ``workers``/``max_workers``/``chunk_digests`` and a
    measurement (None when none could be made: then one worker per core, as before)."""
    configured = workers if isinstance(workers, int) and workers > 0 else cores
    if timing is None:
        return PoolPlan(configured, job_digests(chunk_digests, cores, configured), configured)
    wanted = workers_to_keep_busy(timing, cores)
    measured = (
        f"a signature takes {timing.wall * 1e3:.2f} ms of which"
        f" {timing.cpu * 1e3:.2f} ms is this host's CPU"
    )
    if workers == "auto":
        chosen = min(wanted, max_workers)
        warning = None
        if wanted > max_workers:
            warning = (
                f"{measured}: {wanted} workers would keep the {cores} cores busy, but [hsm]"
                f" max_workers = {max_workers} bounds the pool; raise it if the HSM allows"
                " that many sessions"
            )
        return PoolPlan(chosen, job_digests(chunk_digests, cores, chosen), wanted, warning)
    warning = None
    if wanted > configured * _TOO_SMALL:
        busy = min(100, round(100 * configured / wanted))
        warning = (
            f"{measured}: {configured} workers keep about {busy}% of the {cores} cores busy;"
            f' set [hsm] workers = "auto" (it would start {min(wanted, max_workers)}) or'
            f" workers = {wanted}"
        )
    return PoolPlan(configured, job_digests(chunk_digests, cores, configured), wanted, warning)
