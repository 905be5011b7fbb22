"""The audit log writer: durable, group-committed, hash-chained, checkpointed.

Callers on any thread call :meth:`AuditLog.append`; it returns only once the record is written
and fsynced. One writer thread takes everything queued, numbers it, writes it with one
``write`` and one ``fsync`` (group commit), then wakes the callers. When the write or fsync
fails, every caller of that group gets :class:`~signer.errors.AuditError`, the segment is cut
back to its last good length, no sequence number is consumed and :attr:`AuditLog.healthy` turns
False; the next group tries again and turns it True when the disk works again. While unhealthy
and idle, the writer probes by itself every ``probe_interval`` seconds (once the file system
reports at least ``PROBE_HEADROOM_BYTES`` free), so that health recovers without waiting for a
request that a load balancer would never send. The first record written after a failure is a
``log_resumed`` event that says since when writes failed and how many groups were refused.

After a group, the writer signs a checkpoint when ``checkpoint_every_records`` records or
``checkpoint_every_seconds`` seconds have passed since the last one, and at :meth:`close`. The
``sign`` callable is called from the writer thread only, never concurrently; if it talks to
PKCS#11 it must respect the one-thread-per-session rule of the HSM layer. A failed checkpoint
does not fail appends (the records are already durable); it is retried after the next group
and reported in :attr:`AuditLog.checkpoint_error`.
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
from signer.audit.record import AuditRecord, check_digests, record_hash
from signer.audit.recovery import scan_tail
from signer.audit.segments import CHECKPOINT_DIR, LATEST_CHECKPOINT, checkpoint_path, segment_name
from signer.errors import AuditError

_log = logging.getLogger(__name__)

DEFAULT_SEGMENT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_CHECKPOINT_EVERY_RECORDS = 10_000
DEFAULT_CHECKPOINT_EVERY_SECONDS = 60.0
DEFAULT_PROBE_INTERVAL = 1.0
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
    future: "Future[AppendResult]" = field(default_factory=Future)


class AuditLog:
    """An open, append-only audit log in one directory (one writer process at a time).

    Opening scans the last segment, cuts a torn tail (and records that cut as a
    ``log_repaired`` event), and refuses with :class:`AuditError` when the chain is broken or
    the log is shorter than its own latest checkpoint. ``on_health_change`` is called from
    the writer thread with the new value of :attr:`healthy`; keep it quick.
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
        self._next_probe = 0.0
        self._failed_since_ns: int | None = None
        self._failed_writes = 0
        self._refused_records = 0
        self.checkpoint_error: str | None = None
        """Why the last checkpoint could not be signed or stored, or None."""
        self.last_checkpoint_unix: float | None = None
        """Unix time of the newest checkpoint this process signed, or None."""

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
        self._cp_time = time.monotonic()

        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._closing = False
        self._writer_dead = False
        self._close_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()
        if state.cut_bytes:
            self._record_repair(state.cut_bytes, state.cut_reason)

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
        """False while the last write or fsync failed; signing must stop until it is True."""
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
        Raises :class:`ValueError` for malformed arguments (digests not 32 bytes, details not
        CBOR-encodable).
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
            raise AuditError(f"final audit checkpoint failed: {self._close_error}")

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
        check_digests(digests)
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
        _log.warning("audit log: cut a torn tail of %d bytes (%s)", cut_bytes, reason)
        try:
            self.append(EventType.LOG_REPAIRED, details=details)
        except AuditError:
            self.close()
            raise

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
            return
        if self._seq > self._cp_size:
            try:
                self._write_checkpoint()
            except Exception as exc:
                _log.error("final audit checkpoint at size %d failed: %s", self._seq, exc)
                self._close_error = str(exc)

    def _checkpoint_wait(self) -> float | None:
        if self._seq == self._cp_size:
            return None
        return self._cp_time + self._cp_every_seconds - time.monotonic()

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
        details = {
            "failed_since_ns": self._failed_since_ns or 0,
            "failed_writes": self._failed_writes,
            "refused_records": self._refused_records,
        }
        return _Pending(EventType.LOG_RESUMED, None, None, None, None, (), None, details)

    def _commit(self, batch: list[_Pending]) -> None:
        """Write ``batch`` as one group; an empty batch is a recovery probe."""
        probe = not batch
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
        self._set_healthy(True)
        for item, result in done:
            item.future.set_result(result)

    def _prepare_segment(self) -> int:
        if self._fd is None:
            self._fd = self._ops.open_append(self._dir / segment_name(self._segment_first))
        if self._dirty:
            self._ops.truncate(self._fd, self._offset)
            self._ops.fsync(self._fd)
            self._dirty = False
        if self._offset >= self._segment_max:
            fd, self._fd = self._fd, None
            self._ops.close(fd)
            self._segment_first, self._offset = self._seq + 1, 0
            self._segment_in_dir = False
            self._fd = self._ops.open_append(self._dir / segment_name(self._segment_first))
        if not self._segment_in_dir:
            self._ops.fsync_dir(self._dir)
            self._segment_in_dir = True
        return self._fd

    def _fail_group(self, items: list[_Pending], exc: OSError, *, probe: bool = False) -> None:
        name = errno.errorcode.get(exc.errno or 0, "error")
        path = self._dir / segment_name(self._segment_first)
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
            # After a failed fsync the kernel may have dropped the dirty pages: cut back to the
            # last synced length, and reopen before the next write rather than trust this fd.
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
        pending = self._seq - self._cp_size
        if pending <= 0:
            return
        overdue = time.monotonic() - self._cp_time >= self._cp_every_seconds
        if pending < self._cp_every_records and not overdue:
            return
        try:
            self._write_checkpoint()
        except Exception as exc:
            self._cp_time = time.monotonic()
            self.checkpoint_error = str(exc)
            _log.error("audit checkpoint at size %d failed: %s", self._seq, exc)

    def _write_checkpoint(self) -> None:
        checkpoint = Checkpoint(
            self._signer.origin, self._seq, self._head, self._clock_ns() // 1_000_000_000
        )
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
        self._cp_time = time.monotonic()
        self.last_checkpoint_unix = self._clock_ns() / 1e9
        self.checkpoint_error = None
