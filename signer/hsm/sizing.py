"""How many workers an HSM needs, from one measurement at start (pure functions).

A worker spends each signature partly on this host's CPU (Python, the module's client code,
for SoftHSM the whole signature) and partly waiting for the HSM (network, queueing, the HSM's
own work). Cores are kept busy when ``cores * wall / cpu`` workers are signing at once: one per
core for a local module, many more for a network HSM a millisecond away.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

DEFAULT_MIN_CHUNK = 128
"""Fewest digests per worker job for a module on this host: below it the pipe round trip
costs more than the signing it carries (measured with SoftHSM, DESIGN.md §3.1)."""
SMALLEST_CHUNK = 8
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
    """Workers and chunk size for the pool, and what an operator should hear about them."""

    workers: int
    min_chunk: int
    wanted: int
    """Workers that would keep every core busy, before any bound."""
    warning: str | None = None


def workers_to_keep_busy(timing: SignTiming, cores: int) -> int:
    """Workers that keep ``cores`` busy while each waits for the HSM."""
    return max(cores, round(cores * timing.waiting))


def chunk_for(timing: SignTiming | None) -> int:
    """Fewest digests per job: a chunk should take at least as long as
    :data:`DEFAULT_MIN_CHUNK` signatures of local CPU, so the job overhead stays as small."""
    if timing is None:
        return DEFAULT_MIN_CHUNK
    return max(
        SMALLEST_CHUNK, min(DEFAULT_MIN_CHUNK, math.ceil(DEFAULT_MIN_CHUNK / timing.waiting))
    )


def plan_pool(
    timing: SignTiming | None,
    cores: int,
    workers: int | Literal["auto"],
    max_workers: int,
    min_chunk: int | Literal["auto"],
) -> PoolPlan:
    """The pool for the settings ``workers``/``max_workers``/``min_chunk`` and a measurement
    (None when none could be made: then one worker per core, as before)."""
    configured = workers if isinstance(workers, int) and workers > 0 else cores
    chunk = min_chunk if isinstance(min_chunk, int) else chunk_for(timing)
    if timing is None:
        return PoolPlan(configured, chunk, configured)
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
        return PoolPlan(chosen, chunk, wanted, warning)
    warning = None
    if wanted > configured * _TOO_SMALL:
        busy = min(100, round(100 * configured / wanted))
        warning = (
            f"{measured}: {configured} workers keep about {busy}% of the {cores} cores busy;"
            f' set [hsm] workers = "auto" (it would start {min(wanted, max_workers)}) or'
            f" workers = {wanted}"
        )
    return PoolPlan(configured, chunk, wanted, warning)
