"""What one backend identity had signed in a time window, as SIGNATURE revocation hashes.

The investigator's question behind a revocation ("identity X misbehaved between T1 and T2")
is answered from the log alone: every ``sign_batch`` record of that identity whose time lies
in ``[since, until)`` contributes one entry per signature, with the record's kid. A record's
time is when its group was committed, just before its signatures were released; that is the
time the window is compared with.

:func:`signatures_in_window` streams the entries in log order (one record in memory at a time)
and does not check the chain; :func:`verified_signatures` first verifies the whole log with
:func:`signer.audit.verify.verify_log` and refuses one that does not verify. Both fill a
:class:`WindowNotes` with what the caller must report beside the entries: signatures the log
names only by digest (format 1 records written without whole signatures; they cannot be
revoked by SIGNATURE hash), repairs that may have cut records out of the window, and the DSC
expiry the log recorded for each kid (``cert_imported``).

These are the auditor's query; the ``signer.v1.Audit`` service can stream the same entries.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from signer.audit.events import EventType
from signer.audit.query import iter_records
from signer.audit.verify import FaultKind, VerifyReport, verify_log
from signer.errors import AuditError
from signer.identity import normalise


@dataclass(frozen=True)
class SignatureWindow:
    """Which signatures: made for ``identity`` (a certificate identity as the configuration
    writes it, e.g. ``CN=issuer``) from ``since_ns`` (inclusive) to ``until_ns`` (exclusive),
    both Unix nanoseconds, optionally only by ``kid``."""

    identity: str
    since_ns: int
    until_ns: int
    kid: bytes | None = None

    def __post_init__(self) -> None:
        if self.since_ns >= self.until_ns:
            raise ValueError("the window must end after it starts (since < until)")

    def contains(self, time_ns: int) -> bool:
        """True when ``time_ns`` lies in ``[since, until)``."""
        return self.since_ns <= time_ns < self.until_ns


@dataclass(frozen=True)
class SignedHash:
    """One signature of the window: its kid, SIGNATURE hash, and where the log records it."""

    kid: bytes
    sig_hash: bytes
    time_ns: int
    seq: int
    index: int
    profile: str | None
    request_id: str | None


@dataclass(frozen=True)
class RepairGap:
    """A ``log_repaired`` cut: records written after ``after_ns`` (the last record kept) and
    before ``repaired_ns`` (the restart) may be missing from the log."""

    seq: int
    after_ns: int
    repaired_ns: int

    def overlaps(self, window: SignatureWindow) -> bool:
        """True when records the cut may have removed could lie in ``window``."""
        return self.after_ns < window.until_ns and self.repaired_ns >= window.since_ns


@dataclass
class WindowNotes:
    """What a scan found besides the entries (filled while iterating)."""

    records_read: int = 0
    unhashed: int = 0
    """Signatures in the window whose record holds neither a SIGNATURE hash nor the whole
    signature (format 1 logs written without ``store_signatures``)."""
    unhashed_seqs: list[int] = field(default_factory=list)
    """Sequence numbers of those records (at most :data:`MAX_LISTED_SEQS`)."""
    repairs: list[RepairGap] = field(default_factory=list)
    dsc_not_after: dict[bytes, datetime] = field(default_factory=dict)
    """kid -> the DSC's notAfter, from the log's ``cert_imported`` records."""
    report: VerifyReport | None = None
    """The verification report (:func:`verified_signatures` only)."""


MAX_LISTED_SEQS = 20


class LogNotVerified(AuditError):
    """The log does not verify; nothing may be built from it. ``report`` says why."""

    def __init__(self, report: VerifyReport) -> None:
        super().__init__(f"the audit log does not verify: {report.message}")
        self.report = report


def signatures_in_window(
    directory: Path | str, window: SignatureWindow, notes: WindowNotes | None = None
) -> Iterator[SignedHash]:
    """Yield every signature ``window`` selects, in log order (no chain check)."""
    notes = notes if notes is not None else WindowNotes()
    identity = normalise(window.identity)
    previous_ns = 0
    for record in iter_records(directory):
        notes.records_read += 1
        if record.event is EventType.CERT_IMPORTED:
            _note_dsc(record.details, notes)
        elif record.event is EventType.LOG_REPAIRED and _cut(record.details):
            notes.repairs.append(RepairGap(record.seq, previous_ns, record.time_ns))
        previous_ns = record.time_ns
        if (
            record.event is not EventType.SIGN_BATCH
            or record.kid is None
            or not window.contains(record.time_ns)
            or record.identity is None
            or normalise(record.identity) != identity
            or (window.kid is not None and record.kid != window.kid)
        ):
            continue
        try:
            hashes = record.revocation_hashes()
        except ValueError:
            hashes = None
        if hashes is None:
            notes.unhashed += len(record.digests)
            if len(notes.unhashed_seqs) < MAX_LISTED_SEQS:
                notes.unhashed_seqs.append(record.seq)
            continue
        for index, sig_hash in enumerate(hashes):
            yield SignedHash(
                record.kid,
                sig_hash,
                record.time_ns,
                record.seq,
                index,
                record.profile,
                record.request_id,
            )


def verified_signatures(
    directory: Path | str,
    public_key: bytes | ec.EllipticCurvePublicKey,
    window: SignatureWindow,
    notes: WindowNotes | None = None,
    *,
    extra_checkpoints: Sequence[Path | str] = (),
    durable_size: int | None = None,
) -> Iterator[SignedHash]:
    """Verify the log, then yield what :func:`signatures_in_window` yields.

    Raises :class:`LogNotVerified` (before yielding anything) when the log has a fault. A
    finding (a ``log_repaired`` cut) does not stop the query; it is in ``notes.report`` and
    ``notes.repairs``. ``durable_size`` is for a log the daemon is writing: the number of
    records durable when the query began; a torn tail after them is a write in progress.
    """
    notes = notes if notes is not None else WindowNotes()
    report = verify_log(directory, public_key, extra_checkpoints=extra_checkpoints)
    notes.report = report
    in_progress = (
        durable_size is not None
        and report.fault is FaultKind.TORN_TAIL
        and report.records_checked >= durable_size
    )
    if not report.ok and not in_progress:
        raise LogNotVerified(report)
    limit = report.records_checked
    for entry in signatures_in_window(directory, window, notes):
        if entry.seq > limit:
            return
        yield entry


def _cut(details: object) -> bool:
    cut = details.get("bytes_cut") if isinstance(details, dict) else None
    return isinstance(cut, int) and cut > 0


def _note_dsc(details: object, notes: WindowNotes) -> None:
    if not isinstance(details, dict):
        return
    kid, not_after = details.get("kid"), details.get("not_after")
    if not isinstance(kid, str) or not isinstance(not_after, str):
        return
    try:
        notes.dsc_not_after[bytes.fromhex(kid)] = datetime.fromisoformat(not_after)
    except ValueError:
        return
