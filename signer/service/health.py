"""gRPC health: SERVING only when the HSM answers, a worker is up, the audit log is writable
and every profile has an active key (fail closed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from grpc_health.v1 import health, health_pb2

log = logging.getLogger(__name__)

SERVICES = ("", "signer.v1.Signing", "signer.v1.KeyAdmin", "signer.v1.Audit")


@dataclass(frozen=True)
class HealthFacts:
    """What health is decided from."""

    hsm_answers: bool
    workers_up: int
    audit_writable: bool
    profiles_without_key: tuple[str, ...]


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
        self._services = services

    async def publish_not_serving(self) -> None:
        """Report NOT_SERVING for every service until the first check."""
        for service in self._services:
            await self.servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def check(self) -> bool:
        """Evaluate now and publish the result; return True when serving."""
        async with self._lock:
            try:
                found = problems(await asyncio.to_thread(self._gather))
            except Exception as exc:
                found = [f"health check failed: {type(exc).__name__}"]
            serving = not found
            if serving != self.serving or found != self.last_problems:
                if serving:
                    log.info("health: SERVING")
                else:
                    log.warning("health: NOT_SERVING: %s", "; ".join(found))
            self.serving, self.last_problems = serving, found
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for service in self._services:
                await self.servicer.set(service, status)
            return serving

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
