"""Offline verification of an audit directory with nothing but the audit public key.

Checks, in this order:

1. every checkpoint beside the log (``checkpoints/*.txt``, ``checkpoint.latest``) and every
   checkpoint the auditor kept elsewhere carries a valid signature of the audit key and names
   the same log (origin);
2. every record decodes, sequence numbers run 1, 2, 3, ... without gap, and each record's
   ``prev`` is the SHA-256 of the record before it (32 zero bytes for record 1);
3. the log is at least as long as the newest checkpoint, and at each checkpoint's size the
   record hash equals the checkpoint's head hash.

The first fault wins and is named. How a chain break is told apart, at the first record ``r``
that does not continue the chain where seq ``e`` was expected:

* ``r.seq == e`` but ``prev`` differs: the record before was **modified** (or this record's
  ``prev`` field was); a changed ``seq`` field with an intact ``prev`` is also *modified*;
* ``r.seq > e`` and ``e`` appears later in the log: **reordered**; ``e`` appears nowhere:
  **missing**;
* ``r.seq < e`` (a number already used): **inserted**.

A rewrite that recomputes the whole chain after a change is only caught by a checkpoint
(**checkpoint_mismatch**), which is why auditors should keep exported checkpoints elsewhere.

An intact chain can still carry **findings**: records the writer itself left for the auditor.
A ``log_repaired`` record that says bytes were cut (a torn tail removed on start) is one: after a
crash it is routine, but it is also what a disk that lost acknowledged records leaves behind,
so the report names it instead of calling the log plainly intact.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from signer.audit.checkpoint import Checkpoint, load_audit_public_key, open_checkpoint
from signer.audit.events import EventType
from signer.audit.framing import FrameProblem, FrameReader, with_last
from signer.audit.record import (
    FIRST_SEQ,
    GENESIS_PREV,
    AuditRecord,
    RecordDecodeError,
    decode_record,
    record_hash,
)
from signer.audit.segments import list_checkpoint_files, list_segments
from signer.errors import AuditError


class FaultKind(StrEnum):
    """The kind of damage the verifier found."""

    MODIFIED = "modified"
    REORDERED = "reordered"
    MISSING = "missing"
    INSERTED = "inserted"
    TRUNCATED = "truncated"
    BAD_CHECKPOINT_SIGNATURE = "bad_checkpoint_signature"
    CHECKPOINT_MISMATCH = "checkpoint_mismatch"
    TORN_TAIL = "torn_tail"
    UNDECODABLE = "undecodable"


class FindingKind(StrEnum):
    """Something an intact log records that an auditor must look at."""

    LOG_REPAIRED = "log_repaired"


@dataclass(frozen=True)
class Finding:
    """One finding: its kind, the record that reports it, where that record is, and why."""

    kind: FindingKind
    seq: int
    position: str
    message: str


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of :func:`verify_log`; ``message`` is one line for a person.

    ``ok`` means no fault (the chain and checkpoints hold); ``findings`` may still be non-empty.
    """

    ok: bool
    records_checked: int
    checkpoints_checked: int
    message: str
    fault: FaultKind | None = None
    first_bad_seq: int | None = None
    position: str | None = None
    head: bytes = GENESIS_PREV
    findings: tuple[Finding, ...] = ()


@dataclass(frozen=True)
class _Fault:
    kind: FaultKind
    seq: int | None
    position: str | None
    message: str


@dataclass
class _Chain:
    count: int = 0
    head: bytes = GENESIS_PREV
    fault: _Fault | None = None
    findings: list[Finding] = field(default_factory=list)


def verify_log(
    directory: Path | str,
    public_key: bytes | ec.EllipticCurvePublicKey,
    *,
    extra_checkpoints: Sequence[Path | str] = (),
    origin: str | None = None,
) -> VerifyReport:
    """Verify the audit log in ``directory``; see the module docstring for what is checked.

    ``public_key`` is the audit key as SPKI DER or PEM bytes (or loaded). ``extra_checkpoints``
    are checkpoint files the auditor kept outside the log directory. ``origin``, if given,
    is the log name every checkpoint must carry.
    """
    directory = Path(directory)
    key = (
        public_key
        if isinstance(public_key, ec.EllipticCurvePublicKey)
        else load_audit_public_key(public_key)
    )
    if not directory.is_dir():
        raise AuditError(f"audit directory {directory} does not exist")
    files = [*list_checkpoint_files(directory), *map(Path, extra_checkpoints)]
    checkpoints: list[tuple[Path, Checkpoint]] = []
    for path in files:
        try:
            checkpoint = open_checkpoint(path.read_text("utf-8"), key)
        except (AuditError, UnicodeDecodeError) as exc:
            return _report(
                0, 0, _Fault(FaultKind.BAD_CHECKPOINT_SIGNATURE, None, str(path), str(exc))
            )
        origin = origin or checkpoint.origin
        if checkpoint.origin != origin:
            message = f"checkpoint {path} is for log {checkpoint.origin!r}, not {origin!r}"
            return _report(0, 0, _Fault(FaultKind.CHECKPOINT_MISMATCH, None, str(path), message))
        checkpoints.append((path, checkpoint))
    wanted = {checkpoint.size for _, checkpoint in checkpoints}
    hashes: dict[int, bytes] = {0: GENESIS_PREV}
    chain = _walk(directory, wanted, hashes)
    if chain.fault and chain.fault.kind is not FaultKind.TORN_TAIL:
        return _report(chain.count, len(checkpoints), chain.fault)
    newest = max(checkpoints, key=lambda item: item[1].size, default=None)
    if newest and newest[1].size > chain.count:
        message = (
            f"log ends at record {chain.count} but checkpoint {newest[0]} covers "
            f"{newest[1].size} records: the tail was truncated"
        )
        fault = _Fault(FaultKind.TRUNCATED, chain.count + 1, str(newest[0]), message)
        return _report(chain.count, len(checkpoints), fault)
    for path, checkpoint in checkpoints:
        if hashes[checkpoint.size] != checkpoint.head:
            message = (
                f"record {checkpoint.size} does not match the head hash signed in {path}: "
                "the log up to that record was rewritten"
            )
            fault = _Fault(FaultKind.CHECKPOINT_MISMATCH, checkpoint.size, str(path), message)
            return _report(chain.count, len(checkpoints), fault)
    if chain.fault:
        return _report(chain.count, len(checkpoints), chain.fault)
    summary = (
        f"{chain.count} records, {len(checkpoints)} checkpoints verified, head {chain.head.hex()}"
    )
    if chain.findings:
        found = "; ".join(f"{f.kind.value} at {f.position}: {f.message}" for f in chain.findings)
        message = f"audit log chain intact ({summary}) but with findings: {found}"
    else:
        message = f"audit log intact: {summary}"
    return VerifyReport(
        True,
        chain.count,
        len(checkpoints),
        message,
        head=chain.head,
        findings=tuple(chain.findings),
    )


def _repair_finding(record: AuditRecord, position: str) -> Finding | None:
    """A finding for a ``log_repaired`` record that says bytes were cut, else None."""
    cut = record.details.get("bytes_cut")
    if record.event is not EventType.LOG_REPAIRED or not isinstance(cut, int) or cut <= 0:
        return None
    where = f"{record.details.get('segment', '?')} offset {record.details.get('offset', '?')}"
    message = (
        f"on start the writer cut {cut} bytes ({record.details.get('reason') or 'no reason'}) "
        f"at {where}, after record {record.seq - 1}: a crash during a write leaves such a tail, "
        "but so does a disk that lost records already acknowledged; compare with the "
        "checkpoints and signatures kept outside the appliance"
    )
    return Finding(FindingKind.LOG_REPAIRED, record.seq, position, message)


def _report(records: int, checkpoints: int, fault: _Fault) -> VerifyReport:
    where = f" at {fault.position}" if fault.position else ""
    message = f"{fault.kind.value}{where}: {fault.message}"
    return VerifyReport(False, records, checkpoints, message, fault.kind, fault.seq, fault.position)


def _walk(directory: Path, wanted: set[int], hashes: dict[int, bytes]) -> _Chain:
    """Walk every segment frame by frame (one record in memory at a time). ``seqs`` collects
    sequence numbers only from the first record that breaks the chain on, to tell a
    reordering from a gap."""
    chain = _Chain()
    segments = list_segments(directory)
    seqs: list[int] = []
    broken: tuple[int, int, int, str] | None = None
    for index, segment in enumerate(segments):
        is_last = index == len(segments) - 1
        with segment.path.open("rb") as stream:
            reader = FrameReader(stream)
            for frame, last_frame in with_last(reader):
                position = f"{segment.path.name} offset {frame.offset}"
                try:
                    record = decode_record(frame.payload)
                except RecordDecodeError as exc:
                    at_end = is_last and last_frame and reader.problem is None
                    kind = FaultKind.TORN_TAIL if at_end else FaultKind.UNDECODABLE
                    if broken is None:
                        chain.fault = _Fault(kind, chain.count + 1, position, str(exc))
                        return chain
                    return _finish(chain, broken, seqs)
                if broken is not None:
                    seqs.append(record.seq)
                    continue
                expected = chain.count + 1
                if record.seq == expected and record.prev == chain.head:
                    chain.count, chain.head = expected, record_hash(frame.payload)
                    finding = _repair_finding(record, f"seq {record.seq} ({position})")
                    if finding is not None:
                        chain.findings.append(finding)
                    if chain.count in wanted:
                        hashes[chain.count] = chain.head
                    continue
                seqs.append(record.seq)
                broken = (0, expected, record.seq, position)
                if record.prev == chain.head or record.seq == expected:
                    return _finish(chain, broken, seqs, modified_prev=record.prev != chain.head)
        if reader.problem is not None and broken is None:
            position = f"{segment.path.name} offset {reader.stop_offset}"
            if is_last and reader.problem is not FrameProblem.TOO_LARGE:
                message = f"{reader.problem.value}; the writer cuts this on its next start"
                chain.fault = _Fault(FaultKind.TORN_TAIL, chain.count + 1, position, message)
            else:
                chain.fault = _Fault(
                    FaultKind.UNDECODABLE, chain.count + 1, position, reader.problem.value
                )
            return chain
    if broken is not None:
        return _finish(chain, broken, seqs)
    return chain


def _finish(
    chain: _Chain,
    broken: tuple[int, int, int, str],
    seqs: list[int],
    *,
    modified_prev: bool | None = None,
) -> _Chain:
    index, expected, seen, position = broken
    if modified_prev is not None:
        if modified_prev:
            bad = max(expected - 1, FIRST_SEQ)
            message = (
                f"record {bad} was modified: its hash no longer matches the prev-hash stored "
                f"in record {expected} (or that prev-hash field was changed)"
            )
        else:
            bad = expected
            message = f"record {expected} was modified: it claims seq {seen}"
        chain.fault = _Fault(FaultKind.MODIFIED, bad, position, message)
    elif seen < expected:
        message = f"record with seq {seen} found where seq {expected} was expected"
        chain.fault = _Fault(FaultKind.INSERTED, seen, position, message)
    elif expected in seqs[index + 1 :]:
        message = f"record {seen} found before record {expected}: records are out of order"
        chain.fault = _Fault(FaultKind.REORDERED, expected, position, message)
    else:
        last_missing = min([s for s in seqs[index:] if s > expected], default=seen) - 1
        message = f"records {expected}..{last_missing} are missing (next present: {seen})"
        chain.fault = _Fault(FaultKind.MISSING, expected, position, message)
    return chain
