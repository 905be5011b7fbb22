"""Prometheus metrics of the appliance (served on their own HTTP port).

Names follow the Prometheus conventions: ``signer_`` prefix, base units, ``_total`` for
counters, ``_seconds`` for durations. Labels never carry digests, PINs or request ids.
Live state (workers, keys, audit head) is read when Prometheus scrapes, by a collector.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 10, 100, 500, 1000, 2000, 5000, 10000, 50000)


@dataclass(frozen=True)
class KeyGaugeRow:
    """One key as the metrics see it."""

    key_id: str
    kid_hex: str
    profile: str
    state: str
    dsc_expires_in_seconds: float | None
    stops_signing_in_seconds: float | None


@dataclass(frozen=True)
class LiveState:
    """Values read at scrape time."""

    workers_configured: int
    workers_up: int
    worker_restarts: int
    hsm_up: bool
    serving: bool
    audit_healthy: bool
    audit_last_sequence: int
    audit_last_checkpoint_unix: float | None
    audit_checkpoint_ok: bool
    keys: tuple[KeyGaugeRow, ...]
    hsm_pending_digests: int = 0
    hsm_sign_jobs: int = 0
    open_calls: int = 0
    open_streams: int = 0
    store_up: bool = True


class _LiveCollector(Collector):
    def __init__(self, read: Callable[[], LiveState]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        state = self._read()
        yield _gauge(
            "signer_hsm_workers", "Signing worker processes configured.", state.workers_configured
        )
        yield _gauge("signer_hsm_workers_up", "Signing worker processes alive.", state.workers_up)
        jobs = CounterMetricFamily(
            "signer_hsm_sign_jobs",
            "Signing jobs sent to the HSM workers (concurrent small requests share one).",
        )
        jobs.add_metric([], state.hsm_sign_jobs)
        yield jobs
        yield _gauge(
            "signer_hsm_pending_digests",
            "Digests waiting for an HSM worker or being signed.",
            state.hsm_pending_digests,
        )
        restarts = CounterMetricFamily(
            "signer_hsm_worker_restarts", "Signing worker processes replaced after dying."
        )
        restarts.add_metric([], state.worker_restarts)
        yield restarts
        yield _gauge(
            "signer_hsm_up", "1 when the HSM answered the last health probe.", float(state.hsm_up)
        )
        yield _gauge("signer_serving", "1 when the health status is SERVING.", float(state.serving))
        yield _gauge(
            "signer_open_calls",
            "Calls open now that count against [limits] (every RPC but health checks).",
            state.open_calls,
        )
        yield _gauge(
            "signer_open_streams",
            "Streaming calls open now (part of the calls).",
            state.open_streams,
        )
        yield _gauge(
            "signer_audit_healthy",
            "1 when the audit log can be written.",
            float(state.audit_healthy),
        )
        yield _gauge(
            "signer_record_store_up",
            "1 when the record store answered its last use (0: key changes refused, signing goes"
            " on with the last verified key records).",
            float(state.store_up),
        )
        yield _gauge(
            "signer_audit_last_sequence",
            "Sequence number of the newest audit record.",
            state.audit_last_sequence,
        )
        yield _gauge(
            "signer_audit_checkpoint_ok",
            "1 unless the last attempt to sign or store a checkpoint failed.",
            float(state.audit_checkpoint_ok),
        )
        if state.audit_last_checkpoint_unix is not None:
            yield _gauge(
                "signer_audit_last_checkpoint_timestamp_seconds",
                "Unix time of the newest signed checkpoint.",
                state.audit_last_checkpoint_unix,
            )
        info = GaugeMetricFamily(
            "signer_key_info",
            "Keys on the token (value 1).",
            labels=["key_id", "kid", "profile", "state"],
        )
        expiry = GaugeMetricFamily(
            "signer_key_dsc_expiry_seconds",
            "Seconds until the key's DSC expires.",
            labels=["key_id", "kid", "profile"],
        )
        remaining = GaugeMetricFamily(
            "signer_key_signing_remaining_seconds",
            "Seconds until the key must stop signing (usage period or credential lifetime).",
            labels=["key_id", "kid", "profile"],
        )
        for row in state.keys:
            info.add_metric([row.key_id, row.kid_hex, row.profile, row.state], 1)
            if row.dsc_expires_in_seconds is not None:
                expiry.add_metric(
                    [row.key_id, row.kid_hex, row.profile], row.dsc_expires_in_seconds
                )
            if row.stops_signing_in_seconds is not None:
                remaining.add_metric(
                    [row.key_id, row.kid_hex, row.profile], row.stops_signing_in_seconds
                )
        yield info
        yield expiry
        yield remaining


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


HSM_ERROR_KINDS = ("ping", "HsmError", "HsmUnavailable")
"""The ``kind`` label values of ``signer_hsm_errors_total``: the health ping, and the error
classes a signing request can meet."""
AUTH_REFUSAL_REASONS = ("no_certificate", "unknown_identity", "wrong_role")
QUOTA_REASONS = ("rate", "concurrency", "batch_over_burst")
LIMIT_NAMES = (
    "max_calls",
    "max_calls_per_identity",
    "max_streams",
    "max_streams_per_identity",
    "stream_idle_seconds",
)
"""The ``limit`` label values of ``signer_limit_refusals_total``: the ``[limits]`` settings."""


class Metrics:
    """All metrics of one daemon, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "signer_requests", "gRPC requests handled.", ["method", "code"], registry=r
        )
        self.request_seconds = Histogram(
            "signer_request_duration_seconds",
            "gRPC request latency.",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.signatures = Counter(
            "signer_signatures", "Signatures returned.", ["profile", "kid"], registry=r
        )
        self.undelivered = Counter(
            "signer_signatures_undelivered",
            "Signatures made and audited whose caller left before the answer.",
            ["profile"],
            registry=r,
        )
        self.batch_size = Histogram(
            "signer_batch_size_digests",
            "Digests per signing request.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.hsm_sign_seconds = Histogram(
            "signer_hsm_sign_duration_seconds",
            "Time the HSM workers took to sign one request.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.hsm_errors = Counter("signer_hsm_errors", "HSM errors.", ["kind"], registry=r)
        self.audit_append_seconds = Histogram(
            "signer_audit_append_duration_seconds",
            "Time until an audit record was durable.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.audit_records = Counter(
            "signer_audit_records", "Audit records written.", ["event"], registry=r
        )
        self.audit_failures = Counter("signer_audit_failures", "Failed audit appends.", registry=r)
        self.auth_refusals = Counter(
            "signer_auth_refusals",
            "Requests refused by authentication or authorisation.",
            ["reason"],
            registry=r,
        )
        self.quota_rejections = Counter(
            "signer_quota_rejections", "Requests refused by a quota.", ["reason"], registry=r
        )
        self.limit_refusals = Counter(
            "signer_limit_refusals",
            "Calls refused, and idle streams ended, by a [limits] setting.",
            ["limit"],
            registry=r,
        )
        self.identity_requests = Counter(
            "signer_identity_requests",
            "gRPC requests by caller identity (the name that granted the role; 'unknown' for"
            " callers without a role).",
            ["identity", "code"],
            registry=r,
        )
        self.key_warnings = Counter(
            "signer_key_expiry_warnings",
            "Warnings that a key will soon stop signing.",
            ["profile"],
            registry=r,
        )
        self.records_rejected = Counter(
            "signer_records_rejected",
            "Stored key records this daemon refused to act on (signatures did not verify).",
            registry=r,
        )
        self.keys_revoked = Counter(
            "signer_keys_revoked", "Keys revoked through this daemon.", ["profile"], registry=r
        )

    def prime(self, profiles: Iterable[str], methods: Iterable[str]) -> None:
        """Export a zero for every known label value, so that a counter that never fired is a
        series at 0 (a dashboard shows 0, an alert's rate() works) instead of no data."""
        for kind in HSM_ERROR_KINDS:
            self.hsm_errors.labels(kind)
        for reason in AUTH_REFUSAL_REASONS:
            self.auth_refusals.labels(reason)
        for reason in QUOTA_REASONS:
            self.quota_rejections.labels(reason)
        for limit in LIMIT_NAMES:
            self.limit_refusals.labels(limit)
        for profile in profiles:
            self.key_warnings.labels(profile)
            self.keys_revoked.labels(profile)
        for method in methods:
            for code in grpc.StatusCode:
                self.requests.labels(method, code.name)

    def watch(self, read: Callable[[], LiveState]) -> None:
        """Register the scrape-time collector of live state."""
        self.registry.register(_LiveCollector(read))

    def serve(self, listen: str) -> None:
        """Expose ``/metrics`` over HTTP on ``host:port``."""
        host, _, port = listen.rpartition(":")
        start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=self.registry)
