"""The daemon's side of the audit log: signed batches and lifecycle events, fail-closed.

Threads (ceremonies, the key refresher) record and wait with :meth:`AuditTrail.record_event`.
The event loop never blocks: :meth:`AuditTrail.signatures_soon` queues a record and calls back
on the loop once it is durable. The audit writer thread hands durability back through one
:class:`Handback` mailbox that wakes the loop once for everything that became durable together
(one group commit), not once per record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from signer.audit.checkpoint import CheckpointSigner
from signer.audit.events import EventType
from signer.audit.log import AppendResult, AuditLog
from signer.config import Settings
from signer.errors import AuditError
from signer.hsm.api import Token, digest_signer
from signer.service.auth import CALLER
from signer.service.metrics import Metrics

log = logging.getLogger(__name__)

Durable = Callable[[int, BaseException | None], None]
"""Called on the loop once a record is durable: ``(sequence, None)`` or ``(0, error)``."""


class Handback:
    """Carries results from the audit writer thread to the event loop in batches.

    :meth:`post` may be called from any thread; the callbacks run on ``loop``. The loop is woken
    once per burst of posts (one ``call_soon_threadsafe``), however many records a group commit
    made durable.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._mail: deque[Callable[[], None]] = deque()
        self._woken = False

    def post(self, action: Callable[[], None]) -> None:
        """Run ``action`` on the loop soon."""
        self._mail.append(action)
        if not self._woken:
            self._woken = True
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except RuntimeError:
                self._woken = False  # the loop is closed: the daemon is gone

    def _drain(self) -> None:
        self._woken = False
        mail = self._mail
        while mail:
            try:
                mail.popleft()()
            except Exception:
                log.exception("an audit completion callback failed")


class AuditTrail:
    """Writes records through :class:`AuditLog`; with no log (audit disabled) records nothing."""

    def __init__(
        self,
        audit_log: AuditLog | None,
        metrics: Metrics,
        on_failure: Callable[[], None] = lambda: None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.log = audit_log
        self._metrics = metrics
        self._on_failure = on_failure
        self._handback = Handback(loop) if loop is not None else None
        self._sign_records = metrics.audit_records.labels(EventType.SIGN_BATCH.value)

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
            signatures=signatures,
        )

    def signatures_soon(
        self,
        *,
        identity: str,
        profile: str,
        kid: bytes,
        request_id: str,
        digests: Sequence[bytes],
        signatures: Callable[[], Sequence[bytes]],
        done: Durable,
    ) -> None:
        """Queue a signed batch's record; ``done`` runs on the loop once it is durable (its
        signatures may leave only then) or with the error that refuses them. The log keeps
        each signature's revocation hash, and the whole signature with ``keep_signatures``."""
        if self.log is None:
            done(0, None)
            return
        started = time.perf_counter()
        try:
            future = self.log.append_nowait(
                EventType.SIGN_BATCH,
                identity=identity,
                profile=profile,
                kid=kid,
                request_id=request_id,
                digests=digests,
                signatures=signatures(),
            )
        except AuditError as error:
            self._failed(EventType.SIGN_BATCH)
            done(0, error)
            return
        handback = self._handback
        assert handback is not None, "AuditTrail needs the event loop for signatures_soon"

        def settled(future: Future[AppendResult]) -> None:
            handback.post(lambda: self._durable(future, started, done))

        future.add_done_callback(settled)

    def _durable(self, future: Future[AppendResult], started: float, done: Durable) -> None:
        error = future.exception()
        if error is not None:
            if isinstance(error, AuditError):
                self._failed(EventType.SIGN_BATCH)
            done(0, error)
            return
        self._metrics.audit_append_seconds.observe(time.perf_counter() - started)
        self._sign_records.inc()
        done(future.result().seq, None)

    def _failed(self, event: EventType) -> None:
        self._metrics.audit_failures.inc()
        self._on_failure()
        log.error("audit log write failed; refusing to answer %s", event.value)

    async def record_event_async(
        self, event: str, details: Mapping[str, Any], identity: str = ""
    ) -> int:
        """:meth:`record_event` for the event loop: waits without blocking it."""
        return await asyncio.to_thread(self.record_event, event, details, identity)

    def record_event(self, event: str, details: Mapping[str, Any], identity: str = "") -> int:
        """Record a lifecycle, daemon or security event.

        An officer's event is recorded under the calling officer's identity (the person and
        the certificate name that made them one, e.g. ``alice/SHA256:...``) when that officer
        makes the current call, else under the person named in ``details``.
        """
        clean = {k: v for k, v in details.items() if v is not None}
        officer = str(clean.get("officer", ""))
        caller = CALLER.get(None)
        if not identity and officer and caller is not None and caller.person == officer:
            identity = caller.identity
        return self._append(
            EventType(event),
            identity=identity or officer or None,
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
            self._failed(event)
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
        keep_signatures=settings.audit.keep_signatures,
    )
