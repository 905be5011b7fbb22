"""The newest bytes the writer acknowledged, kept in memory so the disk can be checked against them.

A successful ``fsync`` is the only durability signal a program gets, and it is not always
honest. Measured here (ext4 on a loop device whose backing tmpfs filled up, Linux 6.18): the
loop device completed a *short* write as a success, so the ``fsync`` of the last group before
the disk filled returned 0 while the tail of that group never reached the backing store; only
the next write failed (ENOSPC). After unmount and mount the acknowledged record held zeroed
1 KiB blocks. The general lesson is PostgreSQL's "fsyncgate": after an I/O error, neither the
page cache (which still shows the data) nor a later successful ``fsync`` proves what is on the
device.

So the writer keeps the exact bytes of its newest groups (:class:`RecentWrites`, bounded) and,
after any failed write or ``fsync`` and when it closes, :func:`restore` reads them back from the
device, bypassing the page cache, and writes again from memory whatever does not match.
Rewriting identical bytes at identical offsets keeps segment names, offsets and record hashes
as they were, so a restored segment is indistinguishable from one that was never damaged.
"""

import errno
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from signer.audit.fileops import OsFileOps

DEFAULT_KEEP_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class WrittenSpan:
    """Bytes the writer put at ``offset`` of ``path``: records ``first_seq`` to ``last_seq``."""

    path: Path
    offset: int
    data: bytes
    first_seq: int
    last_seq: int


@dataclass(frozen=True)
class RestoreResult:
    """What :func:`restore` did: bytes written again and the records they belong to."""

    rewritten_bytes: int = 0
    first_seq: int | None = None
    last_seq: int | None = None


class RecentWrites:
    """The newest acknowledged groups, oldest dropped first once ``keep_bytes`` is exceeded.

    The newest group is always kept, whatever its size.
    """

    def __init__(self, keep_bytes: int = DEFAULT_KEEP_BYTES) -> None:
        if keep_bytes <= 0:
            raise ValueError("keep_bytes must be positive")
        self._keep = keep_bytes
        self._spans: deque[WrittenSpan] = deque()
        self._bytes = 0

    def add(self, span: WrittenSpan) -> None:
        """Remember a group that was written and fsynced."""
        self._spans.append(span)
        self._bytes += len(span.data)
        while len(self._spans) > 1 and self._bytes > self._keep:
            self._bytes -= len(self._spans.popleft().data)

    def spans(self) -> list[WrittenSpan]:
        """The kept groups, oldest first."""
        return list(self._spans)


def restore(ops: OsFileOps, spans: list[WrittenSpan]) -> RestoreResult:
    """Make every span read back from the device exactly as written; say what had to be rewritten.

    Each span's file must have been fsynced before. Raises :class:`OSError` when a span cannot
    be read or written, or still differs after it was written again and fsynced.
    """
    rewritten = 0
    first: int | None = None
    last: int | None = None
    for span in spans:
        if ops.read_stable(span.path, span.offset, len(span.data)) == span.data:
            continue
        fd = ops.open_rewrite(span.path)
        try:
            ops.pwrite_all(fd, span.data, span.offset)
            ops.fsync(fd)
        finally:
            ops.close(fd)
        if ops.read_stable(span.path, span.offset, len(span.data)) != span.data:
            raise OSError(
                errno.EIO,
                f"records {span.first_seq}..{span.last_seq} in {span.path.name} at offset "
                f"{span.offset} do not read back as written, even after writing them again",
            )
        rewritten += len(span.data)
        first = span.first_seq if first is None else first
        last = span.last_seq
    return RestoreResult(rewritten, first, last)
