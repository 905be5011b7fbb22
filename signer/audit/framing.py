"""Length-prefixed framing of records inside a segment file.

A frame is a 4-byte big-endian payload length followed by the payload (one CBOR record).
Scanning stops at the first frame that cannot be complete; the caller decides whether that is a
torn tail (last segment, after a crash) or damage in the middle of the log. :func:`scan_frames`
splits bytes already in memory (the writer's recovery reads only the last segment);
:class:`FrameReader` streams a file frame by frame, so that verification and queries need
memory for one record, not for a segment.
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import BinaryIO

LENGTH_BYTES = 4
MAX_RECORD_BYTES = 16 * 1024 * 1024


class FrameProblem(StrEnum):
    """Why scanning stopped before the end of the data."""

    SHORT_LENGTH = "incomplete length prefix"
    ZERO_LENGTH = "zero length prefix"
    TOO_LARGE = "length prefix larger than the maximum record size"
    PAST_END = "record extends past the end of the file"


@dataclass(frozen=True)
class Frame:
    """One complete frame: where it starts in the file and its payload."""

    offset: int
    payload: bytes

    @property
    def end(self) -> int:
        """Offset of the byte right after this frame."""
        return self.offset + LENGTH_BYTES + len(self.payload)


@dataclass(frozen=True)
class FrameScan:
    """The complete frames of a segment and, if scanning stopped early, where and why."""

    frames: list[Frame]
    stop_offset: int | None = None
    problem: FrameProblem | None = None


def encode_frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its length."""
    if not 0 < len(payload) <= MAX_RECORD_BYTES:
        raise ValueError(f"audit record of {len(payload)} bytes is empty or too large")
    return len(payload).to_bytes(LENGTH_BYTES, "big") + payload


def scan_frames(data: bytes) -> FrameScan:
    """Split ``data`` into frames, stopping at the first one that cannot be complete."""
    frames: list[Frame] = []
    offset = 0
    size = len(data)
    while offset < size:
        problem: FrameProblem | None = None
        if size - offset < LENGTH_BYTES:
            problem = FrameProblem.SHORT_LENGTH
        else:
            length = int.from_bytes(data[offset : offset + LENGTH_BYTES], "big")
            start = offset + LENGTH_BYTES
            if length == 0:
                problem = FrameProblem.ZERO_LENGTH
            elif length > MAX_RECORD_BYTES:
                problem = FrameProblem.TOO_LARGE
            elif start + length > size:
                problem = FrameProblem.PAST_END
            else:
                frames.append(Frame(offset, data[start : start + length]))
                offset = start + length
                continue
        return FrameScan(frames, offset, problem)
    return FrameScan(frames)


class FrameReader:
    """The frames of a segment file, read one at a time (the file is never held whole).

    Iterating yields what :func:`scan_frames` would return in ``frames``; once the iteration
    has ended, :attr:`problem` and :attr:`stop_offset` say whether and where it stopped early.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.problem: FrameProblem | None = None
        """Why reading stopped before the end of the file (None: it reached the end)."""
        self.stop_offset: int | None = None
        """Offset of the frame that could not be complete, when :attr:`problem` is set."""

    def __iter__(self) -> Iterator[Frame]:
        offset = 0
        read = self._stream.read
        while True:
            head = read(LENGTH_BYTES)
            if not head:
                return
            if len(head) < LENGTH_BYTES:
                self._stop(offset, FrameProblem.SHORT_LENGTH)
                return
            length = int.from_bytes(head, "big")
            if length == 0:
                self._stop(offset, FrameProblem.ZERO_LENGTH)
                return
            if length > MAX_RECORD_BYTES:
                self._stop(offset, FrameProblem.TOO_LARGE)
                return
            payload = read(length)
            if len(payload) < length:
                self._stop(offset, FrameProblem.PAST_END)
                return
            yield Frame(offset, payload)
            offset += LENGTH_BYTES + length

    def _stop(self, offset: int, problem: FrameProblem) -> None:
        self.stop_offset, self.problem = offset, problem


def with_last(frames: Iterable[Frame]) -> Iterator[tuple[Frame, bool]]:
    """Each frame with True for the last one (reading one frame ahead)."""
    iterator = iter(frames)
    current = next(iterator, None)
    while current is not None:
        following = next(iterator, None)
        yield current, following is None
        current = following
