"""gRPC health: SERVING only when the HSM answers, a worker is up, the audit log is writable
and every profile has an active key (fail closed).

Two conditions that do not stop signing have a service name of their own, so that monitoring
sees them while load balancers keep sending signing requests: ``signer.v1.KeyAdmin`` is also
NOT_SERVING while the record store cannot be reached (key changes are refused, signing goes on
with the last verified key records), and :data:`WORKERS_SERVICE` is NOT_SERVING while fewer HSM
workers run than configured (the pool signs with those that run and restarts the others).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from grpc_health.v1 import health, health_pb2

log = logging.getLogger(__name__)

KEY_ADMIN_SERVICE = "signer.v1.KeyAdmin"
WORKERS_SERVICE = "signer.hsm.workers"
"""Health name of the HSM worker pool: NOT_SERVING while it runs degraded."""
SERVICES = ("", "signer.v1.Signing", KEY_ADMIN_SERVICE, "signer.v1.Audit", WORKERS_SERVICE)
_MAX_STORE_PROBLEM = 300


@dataclass(frozen=True)
class HealthFacts:
    """What health is decided from."""

    hsm_answers: bool
    workers_up: int
    audit_writable: bool
    profiles_without_key: tuple[str, ...]
    workers_configured: int = 0
    store_problem: str | None = None
    """Why the record store could not be reached at its last use; None when it answered."""


def problems(facts: HealthFacts) -> list[str]:
    """Why the appliance may not sign, in words an operator can act on; empty when healthy."""
    found = []
    if not facts.hsm_answers:
        found.append("the HSM does not answer")
    if facts.workers_up == 0:
        found.append("no HSM worker process is running")
    if not facts.audit_writable:
        found.append("the audit log cannot be written")
    if facts.profiles_without_key:
        found.append(f"no active key for {', '.join(facts.profiles_without_key)}")
    return found


def problems_by_service(facts: HealthFacts, services: tuple[str, ...]) -> dict[str, list[str]]:
    """The problems each health service name reports: those that stop signing everywhere, plus
    an unreachable record store for KeyAdmin and a degraded pool for :data:`WORKERS_SERVICE`."""
    common = problems(facts)
    found: dict[str, list[str]] = {}
    for service in services:
        own = list(common)
        if service == KEY_ADMIN_SERVICE and facts.store_problem is not None:
            own.append(
                "the record store cannot be reached, key changes are refused:"
                f" {facts.store_problem[:_MAX_STORE_PROBLEM]}"
            )
        if service == WORKERS_SERVICE and 0 < facts.workers_up < facts.workers_configured:
            own.append(
                f"only {facts.workers_up} of {facts.workers_configured} HSM workers run; the"
                " others are being restarted in the background"
            )
        found[service] = own
    return found


class HealthMonitor:
    """Re-evaluates health every ``interval`` seconds, and at once when asked.

    Lives on the server's event loop; ``gather`` blocks (it pings the HSM) and runs in a
    thread. :meth:`check_soon` may be called from any thread.
    """

    def __init__(
        self,
        gather: Callable[[], HealthFacts],
        interval: float = 2.0,
        services: tuple[str, ...] = SERVICES,
    ) -> None:
        self.servicer = health.aio.HealthServicer()
        self._gather = gather
        self._interval = interval
        self._loop = asyncio.get_running_loop()
        self._lock = asyncio.Lock()
        self._stopped = False
        self._checks: set[asyncio.Task[bool]] = set()
        self.serving = False
        self.last_problems: list[str] = ["not checked yet"]
        self.problems_by_service: dict[str, list[str]] = {}
        self._services = services

    async def publish_not_serving(self) -> None:
        """Report NOT_SERVING for every service until the first check."""
        for service in self._services:
            await self.servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def check(self) -> bool:
        """Evaluate now and publish the result; return True when serving."""
        async with self._lock:
            try:
                by_service = problems_by_service(
                    await asyncio.to_thread(self._gather), self._services
                )
            except Exception as exc:
                failed = [f"health check failed: {type(exc).__name__}"]
                by_service = {service: failed for service in self._services}
            found = by_service.get("", [])
            serving = not found
            if serving != self.serving or found != self.last_problems:
                if serving:
                    log.info("health: SERVING")
                else:
                    log.warning("health: NOT_SERVING: %s", "; ".join(found))
            self._log_own_changes(by_service, found)
            self.serving, self.last_problems = serving, found
            self.problems_by_service = by_service
            for service in self._services:
                status = (
                    health_pb2.HealthCheckResponse.NOT_SERVING
                    if by_service[service]
                    else health_pb2.HealthCheckResponse.SERVING
                )
                await self.servicer.set(service, status)
            return serving

    def _log_own_changes(self, by_service: dict[str, list[str]], common: list[str]) -> None:
        """Log a service name whose status has a reason of its own, when that reason changes."""
        for service, found in by_service.items():
            own = [problem for problem in found if problem not in common]
            before = [p for p in self.problems_by_service.get(service, []) if p not in common]
            if own == before:
                continue
            if own:
                log.warning("health: %s NOT_SERVING: %s", service, "; ".join(own))
            elif not found:
                log.info("health: %s SERVING", service)

    def check_soon(self) -> None:
        """Ask for a check now, from any thread."""
        if self._stopped:
            return
        with contextlib.suppress(RuntimeError):  # a closed loop: the daemon is gone
            self._loop.call_soon_threadsafe(self._start_check)

    def _start_check(self) -> None:
        task = self._loop.create_task(self.check())
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def run(self) -> None:
        """Check every ``interval`` until :meth:`stop`."""
        while not self._stopped:
            await asyncio.sleep(self._interval)
            if not self._stopped:
                await self.check()

    async def stop(self) -> None:
        """End :meth:`run` and report NOT_SERVING to load balancers."""
        self._stopped = True
        await self.servicer.enter_graceful_shutdown()
