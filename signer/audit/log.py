"""The audit log writer: durable, group-committed, hash-chained, checkpointed.

Callers on any thread call :meth:`AuditLog.append`; it returns only once the record is written
and fsynced. One writer thread takes everything queued, numbers it, writes it with one
``write`` and one ``fsync`` (group commit), then wakes the callers.

Signatures. A record given signatures keeps, per signature, its 16-byte SIGNATURE revocation
hash (:mod:`signer.audit.sighash`; computed on the caller's thread, before the record is
queued, so the writer's group commit does not wait for it) and the whole signature only when
the log was opened with ``keep_signatures=True``. Measured on a batch of 1000 (README,
"Revocation"): the digest alone costs about 34 bytes per signature, the hash adds 16, a whole
raw signature 66; the hash is what revocation needs, so it is the default.

Durability rule. A group is acknowledged only after its ``write`` and ``fsync`` succeeded,
and never while an earlier failure is unresolved:

1. When a ``write``, ``fsync`` or segment operation fails, every caller of that group gets
   :class:`~signer.errors.AuditError` (no answer that depends on the group is sent), the
   segment is cut back to its last synced length, no sequence number is consumed, and
   :attr:`AuditLog.healthy` turns False, so signing stops.
2. From then on nothing the writer wrote is trusted: the kernel may have dropped dirty pages
   while the page cache still shows them, a later ``fsync`` on a fresh descriptor proves nothing
   about them, and a device may even have acknowledged writes it never made (measured here: see
   :mod:`signer.audit.readback`). Before anything is acknowledged again, the writer reads its
   newest groups (kept in memory, at least the last one) back from the device, bypassing the
   page cache, and rewrites from memory, at the same offsets, whatever does not match.
3. Only when those bytes read back exactly does the next group get written; its first record
   is a ``log_resumed`` event that says since when writes failed, how many groups were refused,
   and how many bytes of acknowledged records had to be written again. Until then health stays
   False. While unhealthy and idle, the writer retries by itself every ``probe_interval``
   seconds (once the file system reports at least ``PROBE_HEADROOM_BYTES`` free), so health
   recovers without waiting for a request that a load balancer would never send.
4. :meth:`close` does the same read-back; if the newest records cannot be made to read back,
   it still signs the final checkpoint over them (so that their loss cannot go unnoticed: the
   next start refuses a log shorter than its checkpoint) and raises :class:`AuditError`.

What the rule cannot do: when a device lies about a *successful* fsync, the answers for that
group have already left. The read-back puts the records back before anything else is
acknowledged, but a crash in between loses them; the next start then either refuses (damage
followed by intact records, or a log shorter than its checkpoint) or cuts the tail and records
a ``log_repaired`` event, which ``signer audit verify`` reports as a finding.

Checkpoints. The writer signs one right after start-up whenever records lie past the newest
checkpoint (after a crash, or after cutting a torn tail), then whenever
``checkpoint_every_records`` records have accumulated or ``checkpoint_every_seconds`` have
passed since the newest checkpoint's own timestamp (wall clock, so that restarts do not reset
the interval; see :mod:`signer.audit.cadence`), and at :meth:`close`. The ``sign`` callable is
called from the writer thread only, never concurrently; if it talks to PKCS#11 it must respect
the one-thread-per-session rule of the HSM layer. A failed checkpoint does not fail appends
(the records are already durable); it is retried and reported in
:attr:`AuditLog.checkpoint_error`.
"""

import contextlib
import errno
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import cbor2

from signer.audit.cadence import CheckpointClock
from signer.audit.checkpoint import (
    Checkpoint,
    CheckpointSigner,
    load_audit_public_key,
    open_checkpoint,
    sign_checkpoint,
)
from signer.audit.events import EventType
from signer.audit.fileops import OsFileOps
from signer.audit.framing import encode_frame
from signer.audit.readback import RecentWrites, RestoreResult, WrittenSpan, restore
from signer.audit.record import AuditRecord, check_record_digests, record_hash
from signer.audit.recovery import scan_tail
from signer.audit.segments import CHECKPOINT_DIR, LATEST_CHECKPOINT, checkpoint_path, segment_name
from signer.audit.sighash import signature_hashes
from signer.errors import AuditError

_log = logging.getLogger(__name__)

DEFAULT_SEGMENT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_CHECKPOINT_EVERY_RECORDS = 10_000
DEFAULT_CHECKPOINT_EVERY_SECONDS = 60.0
DEFAULT_PROBE_INTERVAL = 1.0
START_CHECKPOINT_WAIT = 30.0
PROBE_HEADROOM_BYTES = 64 * 1024
_LOCK_FILE = ".lock"


@dataclass(frozen=True)
class AppendResult:
    """Where a durable record landed: its sequence number and record hash."""

    seq: int
    record_hash: bytes


@dataclass
class _Pending:
    event: EventType
    identity: str | None
    profile: str | None
    kid: bytes | None
    request_id: str | None
    digests: tuple[bytes, ...]
    signatures: tuple[bytes, ...] | None
    details: dict[str, Any]
    sig_hashes: bytes | None = None
    future: "Future[AppendResult]" = field(default_factory=Future)


class AuditLog:
    """An open, append-only audit log in one directory (one writer process at a time).

    Opening scans the last segment, cuts a torn tail (and records that cut as a
    ``log_repaired`` event), and refuses with :class:`AuditError` when the chain is broken or
    the log is shorter than its own latest checkpoint. ``on_health_change`` is called from
    the writer thread with the new value of :attr:`healthy`; keep it quick. With
    ``keep_signatures`` records keep whole signatures beside their revocation hashes.
    """

    def __init__(
        self,
        directory: Path | str,
        signer: CheckpointSigner,
        *,
        segment_max_bytes: int = DEFAULT_SEGMENT_MAX_BYTES,
        checkpoint_every_records: int = DEFAULT_CHECKPOINT_EVERY_RECORDS,
        checkpoint_every_seconds: float = DEFAULT_CHECKPOINT_EVERY_SECONDS,
        on_health_change: Callable[[bool], None] | None = None,
        file_ops: OsFileOps | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        probe_interval: float = DEFAULT_PROBE_INTERVAL,
        keep_signatures: bool = False,
    ) -> None:
        if segment_max_bytes <= 0 or checkpoint_every_records <= 0:
            raise ValueError("segment_max_bytes and checkpoint_every_records must be positive")
        if checkpoint_every_seconds <= 0 or probe_interval <= 0:
            raise ValueError("checkpoint_every_seconds and probe_interval must be positive")
        self._dir = Path(directory)
        self._signer = signer
        self._public_key = load_audit_public_key(signer.spki_der)
        self._segment_max = segment_max_bytes
        self._cp_every_records = checkpoint_every_records
        self._cp_every_seconds = checkpoint_every_seconds
        self._on_health_change = on_health_change
        self._ops = file_ops or OsFileOps()
        self._clock_ns = clock_ns
        self._healthy = True
        self._probe_interval = probe_interval
        self._keep_signatures = keep_signatures
        self._next_probe = 0.0
        self._failed_since_ns: int | None = None
        self._failed_writes = 0
        self._refused_records = 0
        self._recent = RecentWrites()
        self._distrust_disk = False
        self._restored = RestoreResult()
        self.checkpoint_error: str | None = None
        """Why the last checkpoint could not be signed or stored, or None."""
        self.last_checkpoint_unix: float | None = None
        """Unix time of the newest checkpoint (signed by this process or found on open), or None."""

        self._lock_fd = self._lock_directory()
        try:
            state = scan_tail(self._dir, self._public_key, signer.origin)
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._seq = state.seq
        self._head = state.head
        self._segment_first = state.segment_first_seq
        self._offset = state.good_offset
        self._fd: int | None = None
        self._dirty = state.cut_bytes > 0
        self._segment_in_dir = state.segment_exists
        self._cp_size = state.checkpoint.size if state.checkpoint else 0
        if state.checkpoint is not None and state.checkpoint.timestamp is not None:
            self.last_checkpoint_unix = float(state.checkpoint.timestamp)
        self._cp_failed_unix: float | None = None
        self._opened_unix = self._clock_ns() / 1e9
        self._cp_at_start = False
        self._started = threading.Event()

        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._closing = False
        self._writer_dead = False
        self._close_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()
        if state.cut_bytes:
            self._record_repair(state.cut_bytes, state.cut_reason)
        self._checkpoint_after_start()

    @property
    def directory(self) -> Path:
        """The audit directory."""
        return self._dir

    @property
    def public_key_spki(self) -> bytes:
        """SubjectPublicKeyInfo (DER) of the audit key that signs this log's checkpoints."""
        return self._signer.spki_der

    @property
    def healthy(self) -> bool:
        """False from a failed write or fsync until the writer has written again (after
        checking its newest records on the device); signing must stop until it is True."""
        return self._healthy

    @property
    def size(self) -> int:
        """Number of durable records (the sequence number of the newest one)."""
        return self._seq

    @property
    def head(self) -> bytes:
        """Hash of the newest durable record (32 zero bytes for an empty log)."""
        return self._head

    def append(
        self,
        event: EventType,
        *,
        identity: str | None = None,
        profile: str | None = None,
        kid: bytes | None = None,
        request_id: str | None = None,
        digests: Sequence[bytes] = (),
        signatures: Sequence[bytes] | None = None,
        details: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> AppendResult:
        """Append one record and return once it is on disk (written and fsynced).

        Raises :class:`AuditError` when the log cannot be written (the caller must not
        release any signature it produced), is closed, or ``timeout`` seconds pass first (the
        record may still be written later, which over-reports but never under-reports).
        Raises :class:`ValueError` for malformed arguments (digests not 32 bytes, signatures
        not one ES256 signature per digest, details not CBOR-encodable). ``signatures`` are
        recorded as their revocation hashes, and whole only with ``keep_signatures``.
        """
        future = self.append_nowait(
            event,
            identity=identity,
            profile=profile,
            kid=kid,
            request_id=request_id,
            digests=digests,
            signatures=signatures,
            details=details,
        )
        try:
            return future.result(timeout)
        except FutureTimeout as exc:
            raise AuditError(
                f"audit log did not confirm the record within {timeout} s; treat the request "
                "as failed and check the audit disk"
            ) from exc

    def append_nowait(
        self,
        event: EventType,
        *,
        identity: str | None = None,
        profile: str | None = None,
        kid: bytes | None = None,
        request_id: str | None = None,
        digests: Sequence[bytes] = (),
        signatures: Sequence[bytes] | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> "Future[AppendResult]":
        """Queue one record and return at once; the future resolves once it is on disk.

        For callers that must not block (an event loop): they attach a done-callback, which
        runs on the writer thread. The checks and errors are those of :meth:`append`, except
        that a failed write arrives through the future.
        """
        item = self._pending(event, identity, profile, kid, request_id, digests, signatures)
        if signatures is not None:
            item.sig_hashes = signature_hashes(signatures)
            if not self._keep_signatures:
                item.signatures = None
        if details:
            item.details = dict(details)
            if not all(isinstance(key, str) for key in item.details):
                raise ValueError("audit details keys must be strings")
            try:
                cbor2.dumps(item.details, canonical=True)
            except (cbor2.CBORError, TypeError, ValueError) as exc:
                raise ValueError(f"audit details cannot be encoded as CBOR: {exc}") from exc
        with self._cond:
            if self._closing or self._writer_dead:
                raise AuditError(
                    "audit log is closed; nothing may be signed until the daemon reopens it"
                )
            self._queue.append(item)
            self._cond.notify()
        return item.future

    def close(self) -> None:
        """Write what is queued, sign a final checkpoint, and release the directory.

        Raises :class:`AuditError` if the final checkpoint could not be written.
        """
        with self._cond:
            already = self._closing
            self._closing = True
            self._cond.notify()
        if already:
            return
        self._thread.join()
        if self._fd is not None:
            self._ops.close(self._fd)
            self._fd = None
        os.close(self._lock_fd)
        if self._close_error:
            raise AuditError(f"audit log did not close cleanly: {self._close_error}")

    def __enter__(self) -> "AuditLog":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @staticmethod
    def _pending(
        event: EventType,
        identity: str | None,
        profile: str | None,
        kid: bytes | None,
        request_id: str | None,
        digests: Sequence[bytes],
        signatures: Sequence[bytes] | None,
    ) -> _Pending:
        if not isinstance(event, EventType):
            raise ValueError(f"audit event must be an EventType, got {event!r}")
        check_record_digests(digests)
        if signatures is not None and (
            len(signatures) != len(digests) or not all(isinstance(s, bytes) for s in signatures)
        ):
            raise ValueError("audit signatures must be bytes, one per digest")
        if kid is not None and not isinstance(kid, bytes):
            raise ValueError("audit kid must be bytes")
        for name, value in (
            ("identity", identity),
            ("profile", profile),
            ("request_id", request_id),
        ):
            if value is not None and not isinstance(value, str):
                raise ValueError(f"audit {name} must be a string or None")
        return _Pending(
            event,
            identity,
            profile,
            kid,
            request_id,
            tuple(digests),
            tuple(signatures) if signatures is not None else None,
            {},
        )

    def _lock_directory(self) -> int:
        if not self._dir.is_dir():
            self._dir.mkdir(mode=0o700, parents=True)
            self._ops.fsync_dir(self._dir.parent)
        fd = os.open(self._dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise AuditError(
                f"audit directory {self._dir} is in use by another process; each appliance "
                "needs its own audit directory"
            ) from exc
        return fd

    def _record_repair(self, cut_bytes: int, reason: str | None) -> None:
        details = {
            "segment": segment_name(self._segment_first),
            "offset": self._offset,
            "bytes_cut": cut_bytes,
            "reason": reason or "",
        }
        _log.warning(
            "audit log: cut %d bytes (%s) at %s offset %d, after record %d. A crash during a "
            "write leaves such a tail; if the daemon did not crash, the disk lost records that "
            "were acknowledged: run `signer audit verify`.",
            cut_bytes,
            reason,
            details["segment"],
            self._offset,
            self._seq,
        )
        try:
            self.append(EventType.LOG_REPAIRED, details=details)
        except AuditError:
            self.close()
            raise

    def _checkpoint_after_start(self) -> None:
        """Sign a checkpoint now if records lie past the newest one; wait for the attempt."""
        with self._cond:
            if self._seq == self._cp_size:
                return
            self._cp_at_start = True
            self._cond.notify()
        if not self._started.wait(START_CHECKPOINT_WAIT):
            _log.warning(
                "start-up audit checkpoint not signed after %s s; going on", START_CHECKPOINT_WAIT
            )

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closing:
                        timeout = self._next_wakeup()
                        if timeout is not None and timeout <= 0:
                            break
                        self._cond.wait(timeout)
                    batch, self._queue = self._queue, []
                    closing = self._closing
                if batch:
                    self._commit(batch)
                elif self._probe_due():
                    self._commit([])
                self._maybe_checkpoint()
                if closing and not batch:
                    break
        except Exception as exc:
            _log.exception("audit writer stopped")
            self._close_error = str(exc)
            with self._cond:
                self._writer_dead = True
                batch, self._queue = self._queue, []
            error = AuditError(f"audit writer stopped unexpectedly ({exc}); restart the daemon")
            for item in batch:
                item.future.set_exception(error)
            self._set_healthy(False)
            self._started.set()
            return
        problems = [self._restore_at_close()]
        if self._seq > self._cp_size:
            try:
                self._write_checkpoint()
            except Exception as exc:
                _log.error("final audit checkpoint at size %d failed: %s", self._seq, exc)
                problems.append(f"final audit checkpoint failed: {exc}")
        self._close_error = "; ".join(p for p in problems if p) or None

    def _checkpoint_wait(self) -> float | None:
        # The start-up request first: a checkpoint that became due by time while the request
        # was being made already covers the records, but the opener still waits for its answer.
        if self._cp_at_start:
            return 0.0
        if self._seq == self._cp_size:
            return None
        return self._checkpoint_clock().seconds_until_due(self._clock_ns() / 1e9)

    def _checkpoint_clock(self) -> CheckpointClock:
        return CheckpointClock(
            self._cp_every_seconds,
            self._opened_unix,
            self.last_checkpoint_unix,
            self._cp_failed_unix,
        )

    def _next_wakeup(self) -> float | None:
        """Seconds until the writer has something to do on its own (None: only when woken)."""
        checkpoint = self._checkpoint_wait()
        if self._healthy:
            return checkpoint
        probe = self._next_probe - time.monotonic()
        return probe if checkpoint is None else min(probe, checkpoint)

    def _probe_due(self) -> bool:
        """True when unhealthy, idle, due for a probe, and the disk seems to have room again."""
        if self._healthy or self._closing or time.monotonic() < self._next_probe:
            return False
        self._next_probe = time.monotonic() + self._probe_interval
        try:
            stats = os.statvfs(self._dir)
        except OSError:
            return True  # let the write itself tell
        return stats.f_bavail * stats.f_frsize >= PROBE_HEADROOM_BYTES

    def _resume_record(self) -> _Pending:
        details: dict[str, Any] = {
            "failed_since_ns": self._failed_since_ns or 0,
            "failed_writes": self._failed_writes,
            "refused_records": self._refused_records,
            "rewritten_bytes": self._restored.rewritten_bytes,
        }
        if self._restored.rewritten_bytes:
            details["rewritten_first_seq"] = self._restored.first_seq
            details["rewritten_last_seq"] = self._restored.last_seq
        return _Pending(EventType.LOG_RESUMED, None, None, None, None, (), None, details)

    def _commit(self, batch: list[_Pending]) -> None:
        """Write ``batch`` as one group; an empty batch is a recovery probe."""
        probe = not batch
        try:
            self._restore_after_failure()
        except OSError as exc:
            self._fail_group(batch, exc, probe=probe)
            return
        if self._failed_since_ns is not None:
            batch = [self._resume_record(), *batch]
        if not batch:
            return
        now = self._clock_ns()
        seq, head = self._seq, self._head
        frames: list[bytes] = []
        done: list[tuple[_Pending, AppendResult]] = []
        for item in batch:
            record = AuditRecord(
                seq=seq + 1,
                time_ns=now,
                event=item.event,
                identity=item.identity,
                profile=item.profile,
                kid=item.kid,
                request_id=item.request_id,
                digests=item.digests,
                signatures=item.signatures,
                details=item.details,
                prev=head,
                sig_hashes=item.sig_hashes,
            )
            try:
                payload = record.encode()
                frames.append(encode_frame(payload))
            except (cbor2.CBORError, TypeError, ValueError) as exc:
                item.future.set_exception(ValueError(f"audit record cannot be encoded: {exc}"))
                continue
            seq, head = seq + 1, record_hash(payload)
            done.append((item, AppendResult(seq, head)))
        if not done:
            return
        data = b"".join(frames)
        try:
            fd = self._prepare_segment()
            self._dirty = True
            self._ops.write_all(fd, data)
            self._ops.fsync(fd)
        except OSError as exc:
            self._fail_group([item for item, _ in done], exc, probe=probe)
            return
        self._recent.add(WrittenSpan(self._segment_path(), self._offset, data, self._seq + 1, seq))
        self._dirty = False
        self._offset += len(data)
        self._seq, self._head = seq, head
        if self._failed_since_ns is not None:
            _log.warning(
                "audit log writable again after %d failed writes; signing resumes",
                self._failed_writes,
            )
        self._failed_since_ns = None
        self._failed_writes = self._refused_records = 0
        self._restored = RestoreResult()
        self._set_healthy(True)
        for item, result in done:
            item.future.set_result(result)

    def _segment_path(self) -> Path:
        return self._dir / segment_name(self._segment_first)

    def _open_segment(self) -> int:
        """The current segment, open, with the bytes of a failed group cut off."""
        if self._fd is None:
            self._fd = self._ops.open_append(self._segment_path())
        if self._dirty:
            self._ops.truncate(self._fd, self._offset)
            self._ops.fsync(self._fd)
            self._dirty = False
        return self._fd

    def _prepare_segment(self) -> int:
        """The segment the next group goes to: rolled over when full, its entry durable."""
        fd = self._open_segment()
        if self._offset >= self._segment_max:
            self._fd = None
            self._ops.close(fd)
            self._segment_first, self._offset = self._seq + 1, 0
            self._segment_in_dir = False
            fd = self._fd = self._ops.open_append(self._segment_path())
        if not self._segment_in_dir:
            self._ops.fsync_dir(self._dir)
            self._segment_in_dir = True
        return fd

    def _restore_after_failure(self) -> None:
        """After a failure, make the newest acknowledged groups read back from the device.

        Raises :class:`OSError` while the disk still fails; nothing is acknowledged until then.
        """
        if not self._distrust_disk:
            return
        self._ops.fsync(self._open_segment())
        result = restore(self._ops, self._recent.spans())
        self._distrust_disk = False
        if result.rewritten_bytes:
            _log.error(
                "audit records %s..%s were acknowledged but did not read back from the disk "
                "after a write error; %d bytes were written again from memory",
                result.first_seq,
                result.last_seq,
                result.rewritten_bytes,
            )
            self._restored = RestoreResult(
                self._restored.rewritten_bytes + result.rewritten_bytes,
                self._restored.first_seq or result.first_seq,
                result.last_seq,
            )

    def _restore_at_close(self) -> str | None:
        """Check the newest groups against the device once more; say what is not durable."""
        spans = self._recent.spans()
        if not spans:
            return None
        try:
            self._ops.fsync(self._open_segment())
            result = restore(self._ops, spans)
        except OSError as exc:
            _log.error(
                "audit records %d..%d may not be on disk at close: %s",
                spans[0].first_seq,
                self._seq,
                exc,
            )
            return (
                f"audit records {spans[0].first_seq}..{self._seq} could not be confirmed on "
                f"disk ({exc}); the next start refuses the log if they are lost. Check the "
                f"disk under {self._dir}, then run `signer audit verify`."
            )
        if result.rewritten_bytes:
            _log.error(
                "audit records %s..%s did not read back from the disk at close; %d bytes were "
                "written again from memory",
                result.first_seq,
                result.last_seq,
                result.rewritten_bytes,
            )
        return None

    def _fail_group(self, items: list[_Pending], exc: OSError, *, probe: bool = False) -> None:
        name = errno.errorcode.get(exc.errno or 0, "error")
        path = self._segment_path()
        self._distrust_disk = True
        if self._failed_since_ns is None:
            self._failed_since_ns = self._clock_ns()
        self._next_probe = time.monotonic() + self._probe_interval
        if probe:
            _log.debug("audit write probe to %s failed: %s", path, exc)
        else:
            self._failed_writes += 1
            self._refused_records += sum(i.event is not EventType.LOG_RESUMED for i in items)
            _log.error("audit write to %s failed: %s", path, exc)
        if self._fd is not None:
            # Cut the failed group off now; what it may have done to the bytes before it is
            # checked and repaired by _restore_after_failure before anything is acknowledged.
            try:
                self._ops.truncate(self._fd, self._offset)
                self._ops.fsync(self._fd)
                self._dirty = False
            except OSError:
                _log.error("audit segment %s could not be cut back yet; will retry", path)
            with contextlib.suppress(OSError):
                self._ops.close(self._fd)
            self._fd = None
        error = AuditError(
            f"audit log write failed ({name}: {exc.strerror or exc}) in {path}; the request was "
            f"refused and nothing may be signed. Free space or fix permissions in {self._dir}; "
            "signing resumes by itself once the log can be written."
        )
        for item in items:
            item.future.set_exception(error)
        self._set_healthy(False)

    def _set_healthy(self, value: bool) -> None:
        if self._healthy == value:
            return
        self._healthy = value
        if self._on_health_change is not None:
            try:
                self._on_health_change(value)
            except Exception:
                _log.exception("audit health callback failed")

    def _maybe_checkpoint(self) -> None:
        with self._cond:
            at_start, self._cp_at_start = self._cp_at_start, False
        try:
            pending = self._seq - self._cp_size
            if pending <= 0:
                return
            due_by_time = self._checkpoint_clock().seconds_until_due(self._clock_ns() / 1e9) <= 0
            if not (at_start or pending >= self._cp_every_records or due_by_time):
                return
            try:
                self._write_checkpoint()
            except Exception as exc:
                self._cp_failed_unix = self._clock_ns() / 1e9
                self.checkpoint_error = str(exc)
                _log.error("audit checkpoint at size %d failed: %s", self._seq, exc)
        finally:
            if at_start:
                self._started.set()

    def _write_checkpoint(self) -> None:
        now_ns = self._clock_ns()
        checkpoint = Checkpoint(self._signer.origin, self._seq, self._head, now_ns // 1_000_000_000)
        note = sign_checkpoint(checkpoint, self._signer)
        open_checkpoint(note, self._public_key)
        folder = self._dir / CHECKPOINT_DIR
        if not folder.is_dir():
            folder.mkdir(mode=0o700)
            self._ops.fsync_dir(self._dir)
        data = note.encode("utf-8")
        self._ops.write_file_atomically(checkpoint_path(self._dir, checkpoint.size), data)
        self._ops.write_file_atomically(self._dir / LATEST_CHECKPOINT, data)
        self._cp_size = checkpoint.size
        self.last_checkpoint_unix = now_ns / 1e9
        self._cp_failed_unix = None
        self.checkpoint_error = None
