"""Where the log lives on disk: segment files and checkpoint files in one directory.

Layout of an audit directory::

    audit-000000000001.log        segment whose first record has seq 1
    audit-000000004711.log        next segment, first record seq 4711
    checkpoints/000000004800.txt  signed checkpoint at log size 4800 (one file per checkpoint)
    checkpoint.latest             copy of the newest signed checkpoint

Names sort in log order. Segments other than the last are never written again.
"""

import re
from dataclasses import dataclass
from pathlib import Path

SEGMENT_PREFIX = "audit-"
SEGMENT_SUFFIX = ".log"
CHECKPOINT_DIR = "checkpoints"
LATEST_CHECKPOINT = "checkpoint.latest"
_SEGMENT_RE = re.compile(r"^audit-(\d{12})\.log$")
_CHECKPOINT_RE = re.compile(r"^(\d{12})\.txt$")


@dataclass(frozen=True, order=True)
class Segment:
    """A segment file and the sequence number its name promises for its first record."""

    first_seq: int
    path: Path


def segment_name(first_seq: int) -> str:
    """File name of the segment that starts at ``first_seq``."""
    return f"{SEGMENT_PREFIX}{first_seq:012d}{SEGMENT_SUFFIX}"


def list_segments(directory: Path) -> list[Segment]:
    """All segment files of ``directory`` in log order."""
    found = []
    for path in directory.iterdir():
        match = _SEGMENT_RE.match(path.name)
        if match and path.is_file():
            found.append(Segment(int(match.group(1)), path))
    return sorted(found)


def checkpoint_path(directory: Path, size: int) -> Path:
    """File that holds the checkpoint at log size ``size``."""
    return directory / CHECKPOINT_DIR / f"{size:012d}.txt"


def list_checkpoint_files(directory: Path) -> list[Path]:
    """Checkpoint files kept beside the log, oldest first, then ``checkpoint.latest``."""
    folder = directory / CHECKPOINT_DIR
    files = (
        sorted(p for p in folder.iterdir() if _CHECKPOINT_RE.match(p.name))
        if folder.is_dir()
        else []
    )
    latest = directory / LATEST_CHECKPOINT
    if latest.is_file():
        files.append(latest)
    return files
