"""Read-only queries over an audit directory: who signed a digest, and the newest records.

Both are plain sequential scans of the segment files (no index): a 64 MiB segment holds
about two million digests and scans in well under a second, which is fine for an auditor's
question. Segments are read frame by frame, so memory holds one record at a time. They read
what is on disk and stop quietly at a torn tail; they do not check the hash chain (use
:func:`signer.audit.verify.verify_log` for that).
"""

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from signer.audit.framing import FrameReader, with_last
from signer.audit.record import AuditRecord, RecordDecodeError, decode_record
from signer.audit.segments import LATEST_CHECKPOINT, Segment, list_segments
from signer.errors import AuditError
from signer.sigformat import SHA256_DIGEST_BYTES


@dataclass(frozen=True)
class DigestMatch:
    """A record that names the digest searched for, and where in its batch."""

    seq: int
    time_ns: int
    event: str
    identity: str | None
    profile: str | None
    kid: bytes | None
    request_id: str | None
    index: int


def iter_records(directory: Path | str) -> Iterator[AuditRecord]:
    """Yield every readable record in log order, stopping at a torn tail."""
    segments = list_segments(Path(directory))
    for number, segment in enumerate(segments):
        yield from _segment_records(segment, is_last=number == len(segments) - 1)


def _segment_records(segment: Segment, *, is_last: bool) -> Iterator[AuditRecord]:
    with segment.path.open("rb") as stream:
        reader = FrameReader(stream)
        for frame, last_frame in with_last(reader):
            try:
                record = decode_record(frame.payload)
            except RecordDecodeError as exc:
                if is_last and last_frame:
                    return
                raise AuditError(
                    f"audit record in {segment.path.name} at offset {frame.offset} does not "
                    f"decode ({exc}); run `signer audit verify`"
                ) from exc
            yield record
        if reader.problem is not None and not is_last:
            raise AuditError(
                f"audit segment {segment.path.name} is damaged at offset {reader.stop_offset}; "
                "run `signer audit verify`"
            )


def find_by_digest(directory: Path | str, digest: bytes) -> list[DigestMatch]:
    """All records whose digest list contains ``digest`` (a 32-byte SHA-256), oldest first."""
    if len(digest) != SHA256_DIGEST_BYTES:
        raise ValueError(f"digest must be {SHA256_DIGEST_BYTES} bytes, got {len(digest)}")
    matches = []
    for record in iter_records(directory):
        for index, candidate in enumerate(record.digests):
            if candidate == digest:
                matches.append(
                    DigestMatch(
                        record.seq,
                        record.time_ns,
                        record.event.value,
                        record.identity,
                        record.profile,
                        record.kid,
                        record.request_id,
                        index,
                    )
                )
    return matches


def tail(directory: Path | str, n: int = 10) -> list[AuditRecord]:
    """The newest ``n`` records, oldest first (reads segments from the newest backwards)."""
    segments = list_segments(Path(directory))
    newest: deque[AuditRecord] = deque()
    for number in range(len(segments) - 1, -1, -1):
        if len(newest) >= n:
            break
        records = list(_segment_records(segments[number], is_last=number == len(segments) - 1))
        newest.extendleft(reversed(records))
    return list(newest)[-n:] if n > 0 else []


def latest_checkpoint(directory: Path | str) -> str | None:
    """The newest signed checkpoint note of the log, or None before the first one."""
    path = Path(directory) / LATEST_CHECKPOINT
    return path.read_text("utf-8") if path.exists() else None
