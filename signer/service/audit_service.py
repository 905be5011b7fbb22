"""``signer.v1.Audit``: verify the log, find who had a digest signed, fetch the last checkpoint,
stream the stored records to the auditor's mirror, and what an identity signed in a window as
revocation hashes."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from signer.audit.query import find_by_digest, latest_checkpoint
from signer.audit.signed import LogNotVerified, SignatureWindow, verified_signatures
from signer.audit.stored import stored_frames
from signer.audit.verify import FaultKind, verify_log
from signer.errors import AuditError, InvalidRequest, PolicyError
from signer.service.trail import AuditTrail
from signer.v1 import audit_pb2, audit_pb2_grpc

# Below the smallest message limit any configuration sets ([server] max_batch = 1: 64 KiB + 80).
RECORD_CHUNK_BYTES = 32 * 1024
SIGNATURE_HASHES_PER_MESSAGE = 1000


class AuditService(audit_pb2_grpc.AuditServicer):
    """The auditor-facing API (reads the same files an offline auditor would)."""

    def __init__(self, trail: AuditTrail, directory: Path) -> None:
        self._trail = trail
        self._dir = directory

    def _require_log(self) -> None:
        if self._trail.log is None:
            raise AuditError("the audit log is disabled in this appliance's configuration")

    def _public_key(self) -> bytes:
        assert self._trail.log is not None
        return self._trail.log.public_key_spki

    def VerifyLog(
        self, request: audit_pb2.VerifyLogRequest, context: grpc.ServicerContext
    ) -> audit_pb2.VerifyLogResponse:
        """Verify the whole log (and, if given, that it is not shorter than a checkpoint)."""
        self._require_log()
        assert self._trail.log is not None
        durable = self._trail.log.size  # records fsynced before we started reading
        extra: list[Path] = []
        with tempfile.TemporaryDirectory() as tmp:
            if request.checkpoint:
                path = Path(tmp) / "checkpoint.txt"
                path.write_text(request.checkpoint, encoding="utf-8")
                extra.append(path)
            report = verify_log(self._dir, self._public_key(), extra_checkpoints=extra)
        ok, fault, message = report.ok, report.fault, report.message
        if fault is FaultKind.TORN_TAIL and report.records_checked >= durable:
            # The writer was appending while we read: everything durable when the call began
            # verified, and the partial bytes at the end are a write in progress, not damage.
            ok, fault = True, None
            message = (
                f"audit log intact: {report.records_checked} records, "
                f"{report.checkpoints_checked} checkpoints verified (a write in progress at the "
                "end was not checked)"
            )
        return audit_pb2.VerifyLogResponse(
            ok=ok,
            records=report.records_checked,
            checkpoints=report.checkpoints_checked,
            fault=fault.value if fault else "",
            first_bad_sequence=0 if ok else report.first_bad_seq or 0,
            message=message,
        )

    def FindByDigest(
        self, request: audit_pb2.FindByDigestRequest, context: grpc.ServicerContext
    ) -> audit_pb2.FindByDigestResponse:
        """Every record that names this digest."""
        self._require_log()
        if len(request.digest) != 32:
            raise InvalidRequest("digest must be a SHA-256 digest of exactly 32 bytes")
        matches = []
        for m in find_by_digest(self._dir, request.digest):
            ts = Timestamp()
            ts.FromNanoseconds(m.time_ns)
            matches.append(
                audit_pb2.AuditMatch(
                    sequence=m.seq,
                    time=ts,
                    event=m.event,
                    identity=m.identity or "",
                    profile=m.profile or "",
                    kid=m.kid or b"",
                    request_id=m.request_id or "",
                )
            )
        return audit_pb2.FindByDigestResponse(matches=matches)

    def GetLatestCheckpoint(
        self, request: audit_pb2.GetLatestCheckpointRequest, context: grpc.ServicerContext
    ) -> audit_pb2.Checkpoint:
        """The newest signed checkpoint, to keep outside the appliance."""
        self._require_log()
        note = latest_checkpoint(self._dir)
        if note is None:
            raise AuditError("no checkpoint has been signed yet; try again in a minute")
        size = int(note.split("\n")[1])
        return audit_pb2.Checkpoint(note=note, size=size, audit_public_key_spki=self._public_key())

    def ReadRecords(
        self, request: audit_pb2.ReadRecordsRequest, context: grpc.ServicerContext
    ) -> Iterator[audit_pb2.RecordFrames]:
        """The records after ``after_sequence`` as stored, up to the last durable one."""
        self._require_log()
        assert self._trail.log is not None
        durable = self._trail.log.size  # never a record whose fsync is still running
        frames = stored_frames(
            self._dir,
            request.after_sequence,
            upto=durable,
            limit=request.max_records or None,
        )
        pending = bytearray()
        for frame in frames:
            pending += frame
            while len(pending) >= RECORD_CHUNK_BYTES:
                yield audit_pb2.RecordFrames(frames=bytes(pending[:RECORD_CHUNK_BYTES]))
                del pending[:RECORD_CHUNK_BYTES]
        if pending:
            yield audit_pb2.RecordFrames(frames=bytes(pending))

    def FindSignatures(
        self, request: audit_pb2.FindSignaturesRequest, context: grpc.ServicerContext
    ) -> Iterator[audit_pb2.SignatureHashes]:
        """Everything an identity had signed in a window, as SIGNATURE revocation hashes."""
        self._require_log()
        assert self._trail.log is not None
        if not request.identity.strip():
            raise InvalidRequest("identity is required: the backend as [roles] names it")
        if not (request.HasField("since") and request.HasField("until")):
            raise InvalidRequest("since and until are required: the window to search")
        try:
            window = SignatureWindow(
                request.identity,
                request.since.ToNanoseconds(),
                request.until.ToNanoseconds(),
                bytes(request.kid) or None,
            )
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        entries = verified_signatures(
            self._dir, self._public_key(), window, durable_size=self._trail.log.size
        )
        batch: list[audit_pb2.SignatureHash] = []
        try:
            for entry in entries:
                signed_at = Timestamp()
                signed_at.FromNanoseconds(entry.time_ns)
                batch.append(
                    audit_pb2.SignatureHash(
                        kid=entry.kid, hash=entry.sig_hash, sequence=entry.seq, signed_at=signed_at
                    )
                )
                if len(batch) == SIGNATURE_HASHES_PER_MESSAGE:
                    yield audit_pb2.SignatureHashes(entries=batch)
                    batch = []
        except LogNotVerified as exc:
            raise PolicyError(
                f"{exc}; revocation lists are built only from a log that verifies"
            ) from None
        if batch:
            yield audit_pb2.SignatureHashes(entries=batch)
