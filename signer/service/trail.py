"""The daemon's side of the audit log: signed batches and lifecycle events, fail-closed."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from signer.audit.checkpoint import CheckpointSigner
from signer.audit.events import EventType
from signer.audit.log import AuditLog
from signer.config import Settings
from signer.errors import AuditError
from signer.hsm.api import Token, digest_signer
from signer.service.metrics import Metrics

log = logging.getLogger(__name__)


class AuditTrail:
    """Writes records through :class:`AuditLog`; with no log (audit disabled) records nothing."""

    def __init__(
        self,
        audit_log: AuditLog | None,
        metrics: Metrics,
        store_signatures: bool,
        on_failure: Callable[[], None] = lambda: None,
    ) -> None:
        self.log = audit_log
        self._metrics = metrics
        self._store_signatures = store_signatures
        self._on_failure = on_failure

    @property
    def healthy(self) -> bool:
        """True when records can be written (always True with audit disabled)."""
        return self.log is None or self.log.healthy

    def record_signatures(
        self,
        *,
        identity: str,
        profile: str,
        kid: bytes,
        request_id: str,
        digests: list[bytes],
        signatures: list[bytes],
    ) -> int:
        """Make the batch's record durable; its signatures may leave only after this returns."""
        return self._append(
            EventType.SIGN_BATCH,
            identity=identity,
            profile=profile,
            kid=kid,
            request_id=request_id,
            digests=digests,
            signatures=signatures if self._store_signatures else None,
        )

    def record_event(self, event: str, details: Mapping[str, Any], identity: str = "") -> int:
        """Record a lifecycle, daemon or security event."""
        clean = {k: v for k, v in details.items() if v is not None}
        return self._append(
            EventType(event),
            identity=identity or str(clean.get("officer", "")) or None,
            profile=str(clean["profile"]) if "profile" in clean else None,
            details=clean,
        )

    def _append(self, event: EventType, **fields: Any) -> int:
        if self.log is None:
            return 0
        started = time.perf_counter()
        try:
            result = self.log.append(event, **fields)
        except AuditError:
            self._metrics.audit_failures.inc()
            self._on_failure()
            log.error("audit log write failed; refusing to answer %s", event.value)
            raise
        self._metrics.audit_append_seconds.observe(time.perf_counter() - started)
        self._metrics.audit_records.labels(event.value).inc()
        return result.seq


def audit_log_public_key(token: Token, settings: Settings) -> bytes:
    """SubjectPublicKeyInfo (DER) of the audit key in the HSM."""
    return token.public_key(token.key_id_by_label(settings.hsm.audit_key_label))


def open_audit_log(
    token: Token, settings: Settings, on_health_change: Callable[[bool], None] | None = None
) -> AuditLog:
    """Open (and repair) the audit log, with checkpoints signed by the HSM's audit key."""
    key_id = token.key_id_by_label(settings.hsm.audit_key_label)
    signer = CheckpointSigner(
        origin=settings.audit.origin,
        sign=digest_signer(token, key_id),
        spki_der=token.public_key(key_id),
    )
    settings.audit.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    return AuditLog(
        settings.audit.directory,
        signer,
        segment_max_bytes=settings.audit.segment_max_bytes,
        checkpoint_every_records=settings.audit.checkpoint_every_records,
        checkpoint_every_seconds=settings.audit.checkpoint_every_seconds,
        on_health_change=on_health_change,
    )
