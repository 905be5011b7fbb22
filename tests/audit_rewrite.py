"""What a holder of the token's user PIN can do to an audit log: rewrite it and sign anew.

The rewrite keeps every record but one byte for byte, renumbers and re-chains the rest, removes
the checkpoints beside the log and signs a fresh one over the result with the audit key, so
that the appliance's own verifier finds nothing wrong. Only a copy kept elsewhere can tell.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from signer.audit.checkpoint import Checkpoint, CheckpointSigner, sign_checkpoint
from signer.audit.framing import encode_frame
from signer.audit.query import iter_records
from signer.audit.record import GENESIS_PREV, AuditRecord, record_hash
from signer.audit.segments import (
    CHECKPOINT_DIR,
    LATEST_CHECKPOINT,
    checkpoint_path,
    list_segments,
    segment_name,
)


def rewrite_log(
    directory: Path,
    signer: CheckpointSigner,
    *,
    drop: int | None = None,
    keep: int | None = None,
) -> int:
    """Drop record ``drop`` and/or keep only the first ``keep`` records, re-chain, re-sign.

    Returns the size of the rewritten log.
    """
    records: list[AuditRecord] = list(iter_records(directory))
    if keep is not None:
        records = records[:keep]
    if drop is not None:
        records = [r for r in records if r.seq != drop]
    data = bytearray()
    head = GENESIS_PREV
    for number, record in enumerate(records, start=1):
        payload = replace(record, seq=number, prev=head).encode()
        data += encode_frame(payload)
        head = record_hash(payload)
    for segment in list_segments(directory):
        segment.path.unlink()
    (directory / segment_name(1)).write_bytes(bytes(data))
    for path in (directory / CHECKPOINT_DIR).iterdir():
        path.unlink()
    size = len(records)
    note = sign_checkpoint(Checkpoint(signer.origin, size, head, int(time.time())), signer)
    checkpoint_path(directory, size).write_text(note)
    (directory / LATEST_CHECKPOINT).write_text(note)
    return size
