"""The records of an audit directory exactly as stored, from a sequence number on.

This is what an auditor's off-box mirror pulls (over ``signer.v1.Audit/ReadRecords``, or
straight from a folder with :class:`FolderSource`): every record as the writer stored it, one
frame each (4-byte big-endian length, then the canonical CBOR record, see
:mod:`signer.audit.framing`), in log order, so that the reader hashes the very bytes the chain
covers. Nothing here checks the chain; :mod:`signer.audit.mirror` does.

Positions come from the segment names: the ``n``-th frame of segment ``audit-<first>.log`` is
at position ``first + n``. In an intact log the position is the record's sequence number; in a
damaged one the reader finds out when the record it gets does not continue its chain.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from signer.audit.framing import LENGTH_BYTES, MAX_RECORD_BYTES, scan_frames
from signer.audit.query import latest_checkpoint
from signer.audit.segments import list_segments
from signer.errors import AuditError, KeyNotFound


class RecordStreamError(AuditError):
    """A stream of framed records is malformed (bad length prefix, or cut inside a record)."""


class RecordsNotHere(KeyNotFound):
    """The records asked for were moved off this log (closed segments archived)."""


def stored_frames(
    directory: Path | str,
    after: int,
    *,
    upto: int | None = None,
    limit: int | None = None,
) -> Iterator[bytes]:
    """The frames at positions ``after + 1`` ... ``upto`` (default: to the end), at most
    ``limit`` of them, stopping quietly at a torn or damaged frame."""
    if after < 0:
        raise ValueError(f"sequence number {after} is negative")
    wanted = after + 1
    segments = list_segments(Path(directory))
    if segments and wanted < segments[0].first_seq:
        raise RecordsNotHere(
            f"record {wanted} is not in this audit log any more: its oldest segment starts at"
            f" record {segments[0].first_seq} (older segments were archived); read the archive"
        )
    start = max((n for n, s in enumerate(segments) if s.first_seq <= wanted), default=0)
    sent = 0
    for segment in segments[start:]:
        scan = scan_frames(segment.path.read_bytes())
        for index, frame in enumerate(scan.frames):
            position = segment.first_seq + index
            if position < wanted:
                continue
            if (upto is not None and position > upto) or (limit is not None and sent >= limit):
                return
            yield len(frame.payload).to_bytes(LENGTH_BYTES, "big") + frame.payload
            sent += 1
        if scan.problem is not None:
            return


def split_frames(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The record payloads of a stream of framed bytes cut into arbitrary chunks.

    Raises :class:`RecordStreamError` for a length prefix that no record can have and for a
    stream that ends inside a record.
    """
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        offset = 0
        while len(buffer) - offset >= LENGTH_BYTES:
            length = int.from_bytes(buffer[offset : offset + LENGTH_BYTES], "big")
            if not 0 < length <= MAX_RECORD_BYTES:
                raise RecordStreamError(
                    f"the record stream has a frame of {length} bytes; no audit record has"
                )
            end = offset + LENGTH_BYTES + length
            if end > len(buffer):
                break
            yield bytes(buffer[offset + LENGTH_BYTES : end])
            offset = end
        del buffer[:offset]
    if buffer:
        raise RecordStreamError(
            f"the record stream ended inside a record ({len(buffer)} bytes left over)"
        )


class FolderSource:
    """An audit directory as a mirror source (a copy of the appliance's folder, or the folder
    itself on the appliance host)."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    @property
    def name(self) -> str:
        """Where the records come from, for messages."""
        return str(self.directory)

    def latest_checkpoint(self) -> str:
        """The newest signed checkpoint note beside the log."""
        note = latest_checkpoint(self.directory)
        if note is None:
            raise AuditError(f"{self.directory} has no signed checkpoint yet")
        return note

    def records_after(self, seq: int, limit: int | None = None) -> Iterator[bytes]:
        """The stored records after position ``seq`` (payloads, without frame prefix)."""
        return split_frames(stored_frames(self.directory, seq, limit=limit))
