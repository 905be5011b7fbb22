"""Where a restarted batch continues, read from the files the interrupted run left.

The output file is the record of progress (:mod:`signer.dcc.batch_output`): lines are
written in input order, each naming its input line, so the last complete line says how far
the batch got. A run killed in the middle of a write leaves a partial last line; it is cut
(and its input line issued again). ``--uvci-out`` is written after the output lines of the
same chunk, so it can only lag behind: entries of certificates that are in the output but not
in the UVCI file are appended from the output lines, nothing is listed twice.

Files are only read from the end, so a restart costs the same whatever the output's size.
Nothing is changed before the output has been recognised as batch output: a file that is
not is refused, not truncated.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from signer.dcc.batch_output import uvci_line_of_output
from signer.dcc.errors import DccError

_BLOCK = 64 * 1024
_OUTPUT_START = b'{"line": '
_UVCI_START = b'{"uvci": '


class BatchFileError(DccError):
    """An output or UVCI file cannot be continued: it is not batch output, belongs to another
    input, or cannot be matched; the message says which file and what to do."""


@dataclass(frozen=True)
class ResumePoint:
    """How far an output file got: its last input line and that line's ``line_sha256``."""

    line: int = 0
    line_sha256: str | None = None
    complete_bytes: int = 0
    """Length of the file up to its last line break (what stays after cutting)."""
    size: int = 0

    @property
    def torn(self) -> bool:
        """Whether the file ends in a partial line that must be cut."""
        return self.size > self.complete_bytes


def resume_point(out: Path) -> ResumePoint:
    """Read (without changing it) how far ``out`` got; a missing or empty file got nowhere.

    Raises :class:`BatchFileError` unless the last complete line is a batch output line with
    ``line`` and ``line_sha256``.
    """
    try:
        file = out.open("rb")
    except FileNotFoundError:
        return ResumePoint()
    with file:
        size = os.fstat(file.fileno()).st_size
        complete = _complete_bytes(file, size)
        if complete == 0:
            if size and not _starts_with(file, _OUTPUT_START):
                raise BatchFileError(
                    f"{out} is not the output of a batch (no complete line); give another --out"
                )
            return ResumePoint(complete_bytes=0, size=size)
        for raw in reverse_lines(file, complete):
            record = _json_object(raw)
            line, sha = (record or {}).get("line"), (record or {}).get("line_sha256")
            if not (isinstance(line, int) and line >= 1 and isinstance(sha, str)):
                raise BatchFileError(
                    f"{out} does not end with a batch output line naming its input line and"
                    " line_sha256 (written by another program or an older signer?); give"
                    " another --out"
                )
            return ResumePoint(line, sha, complete, size)
    return ResumePoint(complete_bytes=complete, size=size)


def cut_torn_tail(path: Path, point: ResumePoint) -> int:
    """Cut ``path`` back to its last line break; return the bytes removed."""
    if not point.torn:
        return 0
    os.truncate(path, point.complete_bytes)
    return point.size - point.complete_bytes


def reconcile_uvcis(out: Path, uvci_out: Path, limit: int) -> int:
    """Append to ``uvci_out`` the entries of the certificates in ``out`` it lacks; return how
    many. A partial last line of ``uvci_out`` is cut first.

    The entries lacking are those after the last certificate ``uvci_out`` names. At most
    ``limit`` certificates (one chunk) can be missing; when the last entry of ``uvci_out`` is
    not among the last ``limit`` certificates of a longer ``out``, the file belongs to
    another batch and :class:`BatchFileError` is raised.
    """
    last = _last_uvci(uvci_out)
    missing: list[dict[str, Any]] = []
    if not out.exists():
        return 0
    with out.open("rb") as file:
        for raw in reverse_lines(file, os.fstat(file.fileno()).st_size):
            record = _json_object(raw)
            if record is None or "uvci" not in record:
                continue
            if record["uvci"] == last:
                break
            missing.append(record)
            if len(missing) > limit:
                raise BatchFileError(
                    f"{uvci_out} does not end with one of the last {limit} certificates of"
                    f" {out}: it belongs to another batch; give the --uvci-out file this batch"
                    " was started with"
                )
    if missing:
        with uvci_out.open("a", encoding="utf-8") as file:
            file.writelines(uvci_line_of_output(record) for record in reversed(missing))
            file.flush()
            os.fsync(file.fileno())
    return len(missing)


def _last_uvci(path: Path) -> str | None:
    try:
        file = path.open("rb")
    except FileNotFoundError:
        return None
    with file:
        size = os.fstat(file.fileno()).st_size
        complete = _complete_bytes(file, size)
        last = None
        for raw in reverse_lines(file, complete):
            record = _json_object(raw)
            if record is None or not isinstance(record.get("uvci"), str):
                raise BatchFileError(
                    f"{path} does not end with a UVCI line (uvci, co, kind, kid, issued_at);"
                    " give the --uvci-out file this batch was started with"
                )
            last = record["uvci"]
            break
        if size > complete:
            if complete == 0 and not _starts_with(file, _UVCI_START):
                raise BatchFileError(f"{path} is not a UVCI file; give another --uvci-out")
            os.truncate(path, complete)
    return last


def reverse_lines(file: IO[bytes], end: int) -> Iterator[bytes]:
    """The non-blank lines of ``file`` before offset ``end``, last first, without line breaks."""
    tail = b""
    position = end
    while position > 0:
        step = min(_BLOCK, position)
        position -= step
        file.seek(position)
        block = file.read(step) + tail
        lines = block.split(b"\n")
        tail = lines[0]
        for line in reversed(lines[1:]):
            if line.strip():
                yield line
    if tail.strip():
        yield tail


def _complete_bytes(file: IO[bytes], size: int) -> int:
    """Offset just after the last line break of ``file`` (0 if it has none)."""
    position = size
    while position > 0:
        step = min(_BLOCK, position)
        position -= step
        file.seek(position)
        found = file.read(step).rfind(b"\n")
        if found >= 0:
            return position + found + 1
    return 0


def _starts_with(file: IO[bytes], prefix: bytes) -> bool:
    """Whether ``file`` starts with ``prefix`` or with a part of it (a line cut short)."""
    file.seek(0)
    head = file.read(len(prefix))
    return bool(head) and prefix.startswith(head)


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
