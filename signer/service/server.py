"""Wire the parts into a daemon: workers first, then audit, keys, gRPC, metrics and health.

The gRPC server is ``grpc.aio``: one event loop serves every call, carries the HSM workers'
pipes and receives the audit writer's confirmations, so a signing request crosses no thread
until its audit record is written. Blocking work (key ceremonies, audit queries, health probes,
the key refresher) runs in threads.

Callers are held to ``[limits]`` by the interceptor; grpc's own ``maximum_concurrent_rpcs``
stays above them only as a backstop, because it refuses every call alike, health checks too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from signer.audit.log import AuditLog
from signer.config import Settings, TlsSettings, check_private_file
from signer.errors import ConfigError, SignerError
from signer.hsm.pool import WorkerPool
from signer.hsm.pooled import PooledToken
from signer.keys.ceremony import KeyCeremonies, make_ceremonies
from signer.keys.lifecycle import KeyRecord
from signer.keys.policy import seconds_until_dsc_expiry, seconds_until_stop_signing
from signer.keys.registry import KeyRegistry, make_registry
from signer.service.aio_interceptor import CallInterceptor
from signer.service.audit_service import AuditService
from signer.service.auth import AuthRefusal, Roles
from signer.service.health import SERVICES, HealthFacts, HealthMonitor
from signer.service.key_admin import KeyAdminService
from signer.service.limits import CallLimits
from signer.service.metrics import KeyGaugeRow, LiveState, Metrics
from signer.service.quota import Quotas
from signer.service.refusals import RefusalRecord, RefusalTally
from signer.service.signing import SigningService
from signer.service.threaded import InThreads
from signer.service.trail import AuditTrail, open_audit_log
from signer.store.binding import check_binding
from signer.store.select import open_store
from signer.store.watched import WatchedStore
from signer.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    key_admin_pb2,
    key_admin_pb2_grpc,
    signing_pb2,
    signing_pb2_grpc,
)

log = logging.getLogger(__name__)

BACKSTOP_HEADROOM = 256
"""Calls grpc admits beyond ``[limits] max_calls``: health checks and calls on their way to be
refused by the limits."""


def is_loopback(listen: str) -> bool:
    """True when a ``host:port`` listen address only accepts local connections."""
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_credentials(tls: TlsSettings, listen: str) -> grpc.ServerCredentials | None:
    """mTLS credentials, or None for plaintext, which only loopback + opt-in may have."""
    if not tls.enabled:
        if tls.insecure_loopback and is_loopback(listen):
            return None
        raise ConfigError(
            f"refusing to serve {listen} without TLS: set [server.tls] cert, key and client_ca"
            " (mutual TLS), or for local experiments listen on 127.0.0.1 with"
            " insecure_loopback = true"
        )
    if tls.key is None or tls.cert is None or tls.client_ca is None:
        raise ConfigError("[server.tls] needs cert, key and client_ca for mutual TLS")
    check_private_file(tls.key, "TLS private key")
    return grpc.ssl_server_credentials(
        [(tls.key.read_bytes(), tls.cert.read_bytes())],
        root_certificates=tls.client_ca.read_bytes(),
        require_client_auth=True,
    )


def served_methods(services: Iterable[str]) -> list[str]:
    """The method names (as metrics label them) of the signer.v1 services in ``services``."""
    methods: list[str] = []
    for module in (signing_pb2, key_admin_pb2, audit_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            if service.full_name in services:
                methods.extend(method.name for method in service.methods)
    return methods


class Daemon:
    """One signing appliance process: one asyncio event loop serves every RPC.

    :meth:`start` returns once the server accepts calls; :meth:`wait` serves until :meth:`stop`
    (which may be called from a signal handler or another thread) and then shuts down in order:
    health, server, audit log, workers.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.pool = WorkerPool(settings.hsm)
        self.token = PooledToken(self.pool)
        self.registry: KeyRegistry | None = None
        self.store: WatchedStore | None = None
        self.ceremonies: KeyCeremonies | None = None
        self.trail: AuditTrail | None = None
        self.health: HealthMonitor | None = None
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self._hsm_ok = False
        self._threads: list[threading.Thread] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._warned: dict[str, datetime] = {}
        self._loop = asyncio.new_event_loop()
        self._blocking = ThreadPoolExecutor(
            max_workers=settings.server.threads, thread_name_prefix="rpc"
        )
        self._stop_requested: asyncio.Event | None = None
        self._stopping = False
        self._grace = 5.0
        self.refusals = RefusalTally(settings.limits.refusal_window_seconds)
        self.limits = CallLimits(
            settings.limits, lambda name: self.metrics.limit_refusals.labels(name).inc()
        )

    def start(self) -> None:
        """Start workers, open audit and keys, then serve gRPC and metrics."""
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self.start_async())

    async def start_async(self) -> None:
        """:meth:`start` on the running loop (which must be the one the daemon was made with)."""
        s = self.settings
        loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        credentials = server_credentials(s.server.tls, s.server.listen)
        await self.pool.open()
        self._hsm_ok = True
        audit_log = await asyncio.to_thread(self._open_audit)
        self.trail = AuditTrail(audit_log, self.metrics, self._health_now, loop)
        opened = await asyncio.to_thread(open_store, s, self.token)
        await asyncio.to_thread(check_binding, self.token, opened)
        store = self.store = WatchedStore(opened, self._health_now)
        self.registry = make_registry(self.token, store, s, self._record_rejected)
        await asyncio.to_thread(self.registry.refresh)
        self.ceremonies = make_ceremonies(
            self.registry, self.token, store, s, self._lifecycle_event
        )
        await self.trail.record_event_async(
            "daemon_start", {"listen": s.server.listen, "workers": self.pool.size}
        )
        served = (
            SERVICES
            if self._admin_served()
            else tuple(name for name in SERVICES if name != "signer.v1.KeyAdmin")
        )
        self.health = HealthMonitor(self._health_facts, services=served)
        await self.health.publish_not_serving()
        self.server = self._grpc_server(credentials)
        await self.server.start()
        await self.health.check()
        if s.metrics.listen:
            self.metrics.prime(s.profiles, served_methods(served))
            self.metrics.watch(self._live_state)
            self.metrics.serve(s.metrics.listen)
        self._spawn(self.registry.run_refresher, "key-refresher")
        for job in (self.health.run(), self._record_refusals()):
            task = loop.create_task(job)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        log.info("signer serving on %s with %d HSM workers", s.server.listen, self.pool.size)

    def _grpc_server(self, credentials: grpc.ServerCredentials | None) -> grpc.aio.Server:
        s = self.settings
        assert self.ceremonies is not None and self.registry is not None
        assert self.trail is not None and self.health is not None
        limit = s.server.max_message_bytes
        interceptor = CallInterceptor(
            self.metrics,
            Roles.from_settings(s.roles, s.officers),
            enforce=credentials is not None,
            on_refusal=self._auth_refused,
            limits=self.limits,
            stream_idle_seconds=s.limits.stream_idle_seconds,
        )
        server = grpc.aio.server(
            migration_thread_pool=self._blocking,
            interceptors=[interceptor],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=s.limits.max_calls + BACKSTOP_HEADROOM,
        )
        quotas = Quotas(s.quota, on_reject=lambda r: self.metrics.quota_rejections.labels(r).inc())
        signing_pb2_grpc.add_SigningServicer_to_server(
            SigningService(
                self.token, self.registry, self.trail, self.metrics, quotas, s.server.max_batch
            ),
            server,
        )
        services = [
            signing_pb2.DESCRIPTOR.services_by_name["Signing"].full_name,
            audit_pb2.DESCRIPTOR.services_by_name["Audit"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        if self._admin_served():
            assert self.store is not None
            key_admin = KeyAdminService(
                self.ceremonies,
                self.metrics,
                self._health_now,
                lambda: self.trail is not None and self.trail.healthy,
                self.store.require_reachable,
            )
            key_admin_pb2_grpc.add_KeyAdminServicer_to_server(
                InThreads(key_admin, self._blocking), server
            )
            services.append(key_admin_pb2.DESCRIPTOR.services_by_name["KeyAdmin"].full_name)
        audit_pb2_grpc.add_AuditServicer_to_server(
            InThreads(AuditService(self.trail, self.settings.audit.directory), self._blocking),
            server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, server)
        if s.server.reflection:
            reflection.enable_server_reflection(services, server)
        if credentials is None:
            self.port = server.add_insecure_port(s.server.listen)
        else:
            self.port = server.add_secure_port(s.server.listen, credentials)
        if self.port == 0:
            raise ConfigError(f"cannot listen on {s.server.listen}: address in use or invalid")
        return server

    def _admin_served(self) -> bool:
        """KeyAdmin is served with mTLS, or on loopback (dev), and only if enabled."""
        s = self.settings.server
        return s.admin_enabled and (s.tls.enabled or is_loopback(s.listen))

    def _open_audit(self) -> AuditLog | None:
        if not self.settings.audit.enabled:
            log.warning("audit log DISABLED by configuration: signatures are not recorded")
            return None
        return open_audit_log(self.token, self.settings, lambda healthy: self._health_now())

    def _lifecycle_event(self, name: str, details: Mapping[str, Any]) -> None:
        assert self.trail is not None
        self.trail.record_event(name, details)
        if name == "revoked":
            assert self.registry is not None
            profile = self.registry.key(str(details["key_id"])).record.profile
            self.metrics.keys_revoked.labels(profile).inc()

    def _record_rejected(self, key_id: str, problem: str) -> None:
        """A stored key record failed verification: count it (alerted on) and audit it."""
        self.metrics.records_rejected.inc()
        assert self.trail is not None  # opened before the registry first loads
        try:
            self.trail.record_event("record_rejected", {"key_id": key_id, "problem": problem[:500]})
        except SignerError:
            log.error("could not record a rejected key record in the audit log")

    def _auth_refused(self, refused: AuthRefusal, method: str) -> bool:
        """Tally a refused caller (the tally reaches the audit log when its window ends); True
        for the first refusal of its identity and reason in the window."""
        return self.refusals.note(refused.reason, refused.identity, method, refused.subject)

    async def _record_refusals(self) -> None:
        """Write the refusals of each window once it has ended (and the rest at shutdown)."""
        while True:
            await asyncio.sleep(max(0.0, self.refusals.next_boundary() - time.time()))
            due = self.refusals.due()
            if due:
                await asyncio.to_thread(self._write_refusals, due)

    def _write_refusals(self, records: list[RefusalRecord]) -> None:
        assert self.trail is not None
        for record in records:
            try:
                self.trail.record_event("auth_refused", record.details(), identity=record.identity)
            except SignerError:
                log.error(
                    "could not record %d refusals (%s) of %s in the audit log",
                    record.count,
                    record.reason,
                    record.identity,
                )

    def _health_now(self) -> None:
        """Re-check health soon (from any thread)."""
        if self.health is not None:
            self.health.check_soon()

    def _health_facts(self) -> HealthFacts:
        assert self.registry is not None and self.trail is not None
        try:
            self.token.ping()
            self._hsm_ok = True
        except SignerError:
            self._hsm_ok = False
            self.metrics.hsm_errors.labels("ping").inc()
        now = datetime.now(UTC)
        active = {p: self.registry.signing_view(p, now).active for p in self.registry.profiles}
        self._warn_expiring_keys(active, now)
        return HealthFacts(
            hsm_answers=self._hsm_ok,
            workers_up=self.pool.workers_up,
            audit_writable=self.trail.healthy,
            profiles_without_key=tuple(p for p, key in active.items() if key is None),
            workers_configured=self.pool.size,
            store_problem=self.store.problem if self.store is not None else None,
        )

    def _warn_expiring_keys(self, actives: Mapping[str, KeyRecord | None], now: datetime) -> None:
        """Log (once an hour per key) and count keys that must stop signing within warn_before."""
        assert self.registry is not None
        for profile, active in actives.items():
            if active is None or active.activate_at is None or active.dsc_not_after is None:
                continue
            left = seconds_until_stop_signing(
                activated_at=active.activate_at,
                dsc_not_after=active.dsc_not_after,
                now=now,
                policy=self.registry.policy,
            )
            if left > self.settings.keys.warn_before.total_seconds():
                continue
            last = self._warned.get(active.key_id)
            if last is not None and (now - last).total_seconds() < 3600:
                continue
            self._warned[active.key_id] = now
            self.metrics.key_warnings.labels(profile).inc()
            log.warning(
                "key %s of profile %s must stop signing in %.1f days: generate a key, have its"
                " DSC issued and schedule its activation now",
                active.key_id,
                profile,
                left / 86400,
            )

    def _live_state(self) -> LiveState:
        assert self.registry is not None and self.trail is not None
        now = datetime.now(UTC)
        rows = []
        for view in self.registry.list_keys():
            r = view.record
            dsc_left = seconds_until_dsc_expiry(r.dsc_not_after, now) if r.dsc_not_after else None
            signing_left = None
            if r.activate_at and r.dsc_not_after and view.effective_state == "active":
                signing_left = seconds_until_stop_signing(
                    activated_at=r.activate_at,
                    dsc_not_after=r.dsc_not_after,
                    now=now,
                    policy=self.registry.policy,
                )
            rows.append(
                KeyGaugeRow(
                    r.key_id,
                    (r.kid or b"").hex(),
                    r.profile,
                    view.effective_state,
                    dsc_left,
                    signing_left,
                )
            )
        audit_log = self.trail.log
        return LiveState(
            workers_configured=self.pool.size,
            workers_up=self.pool.workers_up,
            worker_restarts=self.pool.restarts,
            hsm_up=self._hsm_ok,
            serving=bool(self.health and self.health.serving),
            audit_healthy=self.trail.healthy,
            audit_last_sequence=audit_log.size if audit_log else 0,
            audit_last_checkpoint_unix=audit_log.last_checkpoint_unix if audit_log else None,
            audit_checkpoint_ok=audit_log is None or audit_log.checkpoint_error is None,
            keys=tuple(rows),
            hsm_pending_digests=self.pool.pending_digests,
            hsm_sign_jobs=self.pool.sign_jobs,
            open_calls=self.limits.calls,
            open_streams=self.limits.streams,
            store_up=self.store is None or self.store.problem is None,
        )

    def _spawn(self, target: object, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def wait(self) -> None:
        """Serve until :meth:`stop` is called, then shut down; returns when all is closed."""
        try:
            self._loop.run_until_complete(self._serve_until_stopped())
        finally:
            self._blocking.shutdown(wait=False)
            self._loop.close()

    def stop(self, grace: float = 5.0) -> None:
        """Ask the daemon to stop (from a signal handler or any thread); :meth:`wait` does it."""
        self._grace = grace
        self._stopping = True
        if self._stop_requested is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop: stopped already
                self._loop.call_soon_threadsafe(self._stop_requested.set)

    async def _serve_until_stopped(self) -> None:
        if self._stop_requested is not None and not self._stopping:
            await self._stop_requested.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        """Stop serving, record the stop, close the audit log and the workers."""
        if self.health is not None:
            await self.health.stop()
        if self.registry is not None:
            self.registry.stop()
        if self.server is not None:
            await self.server.stop(self._grace)
        for task in list(self._tasks):
            task.cancel()
        if self.trail is not None and self.trail.log is not None:
            await asyncio.to_thread(self._close_audit, self.refusals.drain())
        await self.pool.aclose()

    def _close_audit(self, refusals: list[RefusalRecord]) -> None:
        assert self.trail is not None and self.trail.log is not None
        self._write_refusals(refusals)
        try:
            self.trail.record_event("daemon_stop", {})
            self.trail.log.close()
        except SignerError as exc:
            log.error("closing the audit log failed: %s", exc)
