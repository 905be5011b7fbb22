"""Length-prefixed framing of records inside a segment file.

A frame is a 4-byte big-endian payload length followed by the payload (one CBOR record).
Scanning stops at the first frame that cannot be complete; the caller decides whether that is a
torn tail (last segment, after a crash) or damage in the middle of the log.
"""

from dataclasses import dataclass
from enum import StrEnum

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
