"""What the writer finds on open: where the chain ends and whether a torn tail must be cut.

Only the last segment is read (plus the one before it when the last holds no record). The
full-length check is the verifier's job. A torn tail (an incomplete length prefix, a length
running past the end of file, a zeroed or undecodable last frame) is what a crash during an
unsynced write leaves behind; it is cut. Anything else is refused, because it looks like
tampering and must reach the auditor intact:

* a record that decodes but does not continue the chain (wrong seq or prev hash);
* an intact record somewhere after the bad bytes (the damage is in the middle, not the tail;
  the message names segment, offset and the sequence number of the damaged record);
* a cut that would remove records covered by ``checkpoint.latest``.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from signer.audit.checkpoint import Checkpoint, open_checkpoint
from signer.audit.framing import LENGTH_BYTES, FrameProblem, scan_frames
from signer.audit.record import (
    FIRST_SEQ,
    GENESIS_PREV,
    RecordDecodeError,
    decode_record,
    record_hash,
)
from signer.audit.segments import LATEST_CHECKPOINT, Segment, list_segments, segment_name
from signer.errors import AuditError

# A frame start: length below 16 MiB, then a CBOR map of 11 to 13 entries (our records: the
# required fields, plus signatures and, from format 2, sig_hashes).
_FRAME_START_RE = re.compile(rb"\x00[\x00-\xff]{3}[\xab-\xad]", re.DOTALL)


@dataclass(frozen=True)
class TailState:
    """Where appending continues after open."""

    segment_first_seq: int
    segment_exists: bool
    good_offset: int
    seq: int
    head: bytes
    cut_bytes: int
    cut_reason: str | None
    checkpoint: Checkpoint | None


@dataclass(frozen=True)
class _SegmentScan:
    good_offset: int
    last_seq: int
    head: bytes
    hashes: dict[int, bytes]
    cut_bytes: int
    cut_reason: str | None


def scan_tail(directory: Path, public_key: ec.EllipticCurvePublicKey, origin: str) -> TailState:
    """Inspect the end of the log in ``directory`` and decide where writing resumes."""
    checkpoint = _latest_checkpoint(directory, public_key, origin)
    segments = list_segments(directory)
    if not segments:
        _check_against_checkpoint(checkpoint, 0, {}, directory)
        return TailState(FIRST_SEQ, False, 0, 0, GENESIS_PREV, 0, None, checkpoint)
    last = segments[-1]
    scan = _scan_segment(last)
    last_seq, head = scan.last_seq, scan.head
    if scan.good_offset == 0 and len(segments) == 1 and last.first_seq != FIRST_SEQ:
        raise AuditError(
            f"audit directory {directory} holds only {last.path.name}, which is empty; the "
            f"log must start with {segment_name(FIRST_SEQ)}. Run `signer audit verify`."
        )
    if scan.good_offset == 0 and len(segments) > 1:
        previous = _scan_segment(segments[-2])
        if previous.cut_bytes:
            raise AuditError(
                f"audit segment {segments[-2].path} has damaged bytes at offset "
                f"{previous.good_offset}, after record {previous.last_seq}, but is not the last "
                "segment; this is not a crash artefact. Run `signer audit verify` and hand the "
                "directory to the auditor."
            )
        last_seq, head = previous.last_seq, previous.head
        if last_seq + 1 != last.first_seq:
            raise AuditError(
                f"audit segment {last.path.name} should be {segment_name(last_seq + 1)}; "
                "segments were renamed or removed. Run `signer audit verify`."
            )
    _check_against_checkpoint(checkpoint, last_seq, scan.hashes, directory)
    return TailState(
        last.first_seq,
        True,
        scan.good_offset,
        last_seq,
        head,
        scan.cut_bytes,
        scan.cut_reason,
        checkpoint,
    )


def _latest_checkpoint(
    directory: Path, public_key: ec.EllipticCurvePublicKey, origin: str
) -> Checkpoint | None:
    path = directory / LATEST_CHECKPOINT
    if not path.exists():
        return None
    try:
        checkpoint = open_checkpoint(path.read_text("utf-8"), public_key)
    except (AuditError, UnicodeDecodeError) as exc:
        raise AuditError(
            f"{path} is not a valid checkpoint of this audit key ({exc}). If the audit key "
            "was rotated, verify the log with the old key, then move the file aside."
        ) from exc
    if checkpoint.origin != origin:
        raise AuditError(
            f"{path} belongs to log {checkpoint.origin!r}, not {origin!r}; "
            "check the configured audit directory and origin"
        )
    return checkpoint


def _check_against_checkpoint(
    checkpoint: Checkpoint | None, last_seq: int, hashes: dict[int, bytes], directory: Path
) -> None:
    if checkpoint is None:
        return
    if checkpoint.size > last_seq:
        raise AuditError(
            f"audit log in {directory} ends at record {last_seq} but its own signed checkpoint "
            f"covers {checkpoint.size} records: records were removed. Do not write to it; run "
            "`signer audit verify` and hand the directory to the auditor."
        )
    known = hashes.get(checkpoint.size)
    if known is not None and known != checkpoint.head:
        raise AuditError(
            f"audit record {checkpoint.size} in {directory} does not match the signed "
            "checkpoint: the log was rewritten. Run `signer audit verify`."
        )


def _scan_segment(segment: Segment) -> _SegmentScan:
    data = segment.path.read_bytes()
    scan = scan_frames(data)
    expected_seq = segment.first_seq
    prev: bytes | None = GENESIS_PREV if segment.first_seq == FIRST_SEQ else None
    hashes: dict[int, bytes] = {}
    good_offset = 0
    bad_reason: str | None = scan.problem.value if scan.problem else None
    bad_offset = scan.stop_offset
    for frame in scan.frames:
        try:
            record = decode_record(frame.payload)
        except RecordDecodeError as exc:
            bad_reason, bad_offset = f"undecodable record ({exc})", frame.offset
            break
        if record.seq != expected_seq or (prev is not None and record.prev != prev):
            raise AuditError(
                f"audit record at {segment.path.name} offset {frame.offset} (seq {record.seq}) "
                f"does not continue the hash chain (expected seq {expected_seq}): the log was "
                "modified. Opening refuses to write; run `signer audit verify`."
            )
        prev = record_hash(frame.payload)
        hashes[record.seq] = prev
        expected_seq += 1
        good_offset = frame.end
    if bad_offset is None:
        return _SegmentScan(good_offset, expected_seq - 1, prev or GENESIS_PREV, hashes, 0, None)
    if bad_reason == FrameProblem.TOO_LARGE.value or _intact_record_after(
        data, bad_offset + 1, expected_seq
    ):
        raise AuditError(
            f"audit segment {segment.path.name} is damaged at offset {bad_offset}, where record "
            f"{expected_seq} starts ({bad_reason}), but intact records follow: this is not a torn "
            f"write. Record {expected_seq} may have been acknowledged; if the kernel logged I/O "
            "errors, the disk lost it. Opening refuses to cut it; run `signer audit verify` and "
            "hand the directory to the auditor."
        )
    return _SegmentScan(
        good_offset,
        expected_seq - 1,
        prev or GENESIS_PREV,
        hashes,
        len(data) - good_offset,
        bad_reason,
    )


def _intact_record_after(data: bytes, start: int, min_seq: int) -> bool:
    for match in _FRAME_START_RE.finditer(data, start):
        offset = match.start()
        length = int.from_bytes(data[offset : offset + LENGTH_BYTES], "big")
        end = offset + LENGTH_BYTES + length
        if end > len(data):
            continue
        try:
            record = decode_record(data[offset + LENGTH_BYTES : end])
        except RecordDecodeError:
            continue
        if record.seq >= min_seq:
            return True
    return False
