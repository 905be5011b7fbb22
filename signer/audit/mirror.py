"""The auditor's off-box mirror of an appliance's audit log.

Anyone holding the token's user PIN can rewrite the appliance's log, rebuild the hash chain and
have the audit key sign a fresh checkpoint: ``signer audit verify`` on the appliance then says
"intact". A copy kept off the box is what catches it. :class:`Mirror` keeps that copy: each
:meth:`Mirror.pull` fetches the appliance's newest checkpoint and the records it added since
the last pull, and stores them only when

1. the checkpoint carries a valid signature of the audit key the auditor trusts (given once,
   when the mirror is made) and names the mirror's log (origin);
2. the appliance still holds, byte for byte, the record the mirror ends with (its hash covers
   every record before it), and each new record continues the chain from there;
3. the record at the checkpoint's size hashes to the checkpoint's head.

Otherwise nothing is stored and the pull raises a :class:`MirrorFinding`. When the appliance no
longer holds what the mirror holds, :class:`LogModified` names the first sequence number at
which they differ (found by bisection over the appliance's records: a record that hashes the
same proves the chain up to it, so a rewrite shows as one boundary), and the mirror keeps the
original.

The limit: records written after the last pull exist only on the appliance. Pull at least as
often as the appliance signs checkpoints.

The mirror folder has the layout of an audit directory, so ``signer audit verify --dir MIRROR
--pubkey MIRROR/audit-public-key.pem`` checks it with the ordinary verifier::

    mirror.json                   state: origin, size, head, committed length of the last segment
    audit-public-key.pem          the audit key the auditor trusts, given when it was made
    audit-000000000001.log        records exactly as the appliance stored them
    checkpoints/000000004800.txt  every checkpoint fetched (a file is never replaced)

``mirror.json`` is the commit point: bytes beyond it (a pull that failed or was killed) are cut
on the next open.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from asn1crypto import pem

from signer.audit.checkpoint import Checkpoint, load_audit_public_key, open_checkpoint, spki_der
from signer.audit.fileops import OsFileOps
from signer.audit.framing import encode_frame, scan_frames
from signer.audit.record import GENESIS_PREV, RecordDecodeError, decode_record, record_hash
from signer.audit.segments import checkpoint_path, list_segments, segment_name
from signer.errors import AuditError, SignerError

STATE_FILE = "mirror.json"
PUBLIC_KEY_FILE = "audit-public-key.pem"
LOCK_FILE = ".lock"
SEGMENT_MAX_BYTES = 64 * 1024 * 1024
_FORMAT = 1


class AuditSource(Protocol):
    """Where a mirror pulls from: the appliance over gRPC
    (:class:`signer.client.audit_source.GrpcAuditSource`) or a folder
    (:class:`signer.audit.stored.FolderSource`)."""

    @property
    def name(self) -> str:
        """The source's address or path, for messages."""
        ...

    def latest_checkpoint(self) -> str:
        """The appliance's newest signed checkpoint note."""
        ...

    def records_after(self, seq: int, limit: int | None = None) -> Iterator[bytes]:
        """The stored records (CBOR bytes) at positions ``seq + 1`` ... in log order, up to
        the durable end of the log or ``limit`` records."""
        ...


class MirrorSetupError(SignerError):
    """The mirror folder cannot be used as asked (not a mirror, another key, in use)."""


class MirrorFinding(AuditError):
    """The appliance's log or checkpoint disagrees with the mirror or with itself; nothing
    was stored. ``seq`` is the sequence number concerned, if one can be named."""

    def __init__(self, message: str, seq: int | None = None) -> None:
        super().__init__(message)
        self.seq = seq


class LogModified(MirrorFinding):
    """The appliance no longer holds the records the mirror holds from ``seq`` on."""


@dataclass(frozen=True)
class MirrorState:
    """What the mirror holds: ``size`` records ending in ``head``, the last ``offset`` bytes
    long in segment ``audit-<segment_first>.log``."""

    origin: str
    size: int
    head: bytes
    segment_first: int
    offset: int
    key_sha256: str

    def to_json(self) -> bytes:
        """The state file's content."""
        body = {
            "format": _FORMAT,
            "origin": self.origin,
            "size": self.size,
            "head": self.head.hex(),
            "segment_first": self.segment_first,
            "segment_offset": self.offset,
            "audit_key_sha256": self.key_sha256,
        }
        return (json.dumps(body, indent=2) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes, where: Path) -> MirrorState:
        """Parse a state file; a damaged one is refused, never guessed."""
        try:
            body = json.loads(data)
            if body["format"] != _FORMAT:
                raise ValueError(f"format {body['format']!r}")
            state = cls(
                origin=str(body["origin"]),
                size=int(body["size"]),
                head=bytes.fromhex(body["head"]),
                segment_first=int(body["segment_first"]),
                offset=int(body["segment_offset"]),
                key_sha256=str(body["audit_key_sha256"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise MirrorSetupError(
                f"{where} is damaged ({exc}); restore it from a backup"
            ) from None
        if state.size < 0 or state.offset < 0 or len(state.head) != len(GENESIS_PREV):
            raise MirrorSetupError(f"{where} is damaged; restore it from a backup")
        return state


@dataclass(frozen=True)
class PullReport:
    """What one pull added: records ``before + 1`` ... ``size`` and the checkpoint it checked."""

    source: str
    before: int
    size: int
    head: bytes
    checkpoint_size: int
    checkpoint_stored: bool

    @property
    def new_records(self) -> int:
        """Records this pull added."""
        return self.size - self.before

    @property
    def message(self) -> str:
        """One line for the auditor."""
        added = (
            f"{self.new_records} new records ({self.before + 1}..{self.size})"
            if self.new_records
            else "no new records"
        )
        return (
            f"mirror of {self.source}: {added}, {self.size} in total, head {self.head.hex()};"
            f" checkpoint at size {self.checkpoint_size} verified"
        )


class Mirror:
    """An open mirror folder; one pull at a time (a lock file guards it). Close it after use."""

    def __init__(
        self,
        directory: Path | str,
        *,
        public_key: bytes | None = None,
        origin: str | None = None,
        segment_max_bytes: int = SEGMENT_MAX_BYTES,
    ) -> None:
        self.directory = Path(directory)
        self._ops = OsFileOps()
        self._segment_max = segment_max_bytes
        self._hash_cache: dict[int, list[bytes]] = {}
        state_path = self.directory / STATE_FILE
        new = not state_path.exists()
        if new:
            self._check_empty()
            if public_key is None:
                raise MirrorSetupError(
                    f"{self.directory} is a new mirror: give the audit public key the auditor"
                    " took from the appliance through a trusted channel (--pubkey FILE)"
                )
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock_fd = self._lock()
        try:
            if new:
                assert public_key is not None
                self._key_spki = spki_der(load_audit_public_key(public_key))
                self.state = MirrorState(
                    origin or "", 0, GENESIS_PREV, 1, 0, _sha256(self._key_spki)
                )
                self._ops.write_file_atomically(
                    self.directory / PUBLIC_KEY_FILE, pem.armor("PUBLIC KEY", self._key_spki)
                )
                self._ops.write_file_atomically(state_path, self.state.to_json())
            else:
                self.state = MirrorState.from_json(state_path.read_bytes(), state_path)
                self._key_spki = self._stored_key(public_key)
                if origin is not None and self.state.origin and origin != self.state.origin:
                    raise MirrorSetupError(
                        f"{self.directory} mirrors log {self.state.origin!r}, not {origin!r}"
                    )
                self._cut_uncommitted()
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._key = load_audit_public_key(self._key_spki)

    def close(self) -> None:
        """Release the folder."""
        os.close(self._lock_fd)

    def __enter__(self) -> Mirror:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def public_key_spki(self) -> bytes:
        """The audit key this mirror trusts (DER SubjectPublicKeyInfo)."""
        return self._key_spki

    def pull(self, source: AuditSource) -> PullReport:
        """Fetch and verify what the appliance added since the last pull; store it only when
        everything checks out (see the module docstring). Raises :class:`MirrorFinding`."""
        note = source.latest_checkpoint()
        checkpoint = self._open_checkpoint(note, source.name)
        before = self.state
        appender = _Appender(self.directory, before, self._ops, self._segment_max)
        try:
            size, head, at_checkpoint = self._take_records(source, appender, checkpoint.size)
            self._check_checkpoint(checkpoint, size, at_checkpoint, source.name)
            stored = self._store_checkpoint(checkpoint, note)
            appender.finish()
            state = replace(
                before,
                origin=checkpoint.origin,
                size=size,
                head=head,
                segment_first=appender.segment_first,
                offset=appender.offset,
            )
            self._ops.write_file_atomically(self.directory / STATE_FILE, state.to_json())
        except BaseException:
            appender.roll_back()
            raise
        self.state = state
        self._hash_cache = {}  # segments grew: hashes read before are incomplete
        return PullReport(source.name, before.size, size, head, checkpoint.size, stored)

    def _open_checkpoint(self, note: str, source: str) -> Checkpoint:
        try:
            checkpoint = open_checkpoint(note, self._key)
        except AuditError as exc:
            raise MirrorFinding(
                f"the newest checkpoint of {source} does not verify with the mirror's audit key:"
                f" {exc}"
            ) from None
        if self.state.origin and checkpoint.origin != self.state.origin:
            raise MirrorFinding(
                f"the newest checkpoint of {source} is for log {checkpoint.origin!r}; this mirror"
                f" holds log {self.state.origin!r}"
            )
        return checkpoint

    def _take_records(
        self, source: AuditSource, appender: _Appender, checkpoint_size: int
    ) -> tuple[int, bytes, bytes | None]:
        """Append the new records; return size, head and the hash at ``checkpoint_size`` if
        the pull passed it."""
        state = self.state
        records = source.records_after(max(state.size - 1, 0))
        try:
            if state.size > 0:
                first = next(records, None)
                if first is None or record_hash(first) != state.head:
                    _close(records)
                    raise self._locate_modification(source)
            seq, head = state.size, state.head
            at_checkpoint = None
            for payload in records:
                expected = seq + 1
                try:
                    record = decode_record(payload)
                except RecordDecodeError as exc:
                    raise MirrorFinding(
                        f"record {expected} of {source.name} does not decode ({exc}); run"
                        " `signer audit verify` on the appliance",
                        expected,
                    ) from None
                if record.seq != expected or record.prev != head:
                    raise MirrorFinding(
                        f"record {expected} of {source.name} does not continue the chain (it"
                        f" claims seq {record.seq}, prev {record.prev.hex()[:16]}…); run"
                        " `signer audit verify` on the appliance",
                        expected,
                    )
                seq, head = expected, record_hash(payload)
                appender.append(payload, seq)
                if seq == checkpoint_size:
                    at_checkpoint = head
            return seq, head, at_checkpoint
        finally:
            _close(records)

    def _check_checkpoint(
        self, checkpoint: Checkpoint, size: int, at_checkpoint: bytes | None, source: str
    ) -> None:
        if checkpoint.size > size:
            raise MirrorFinding(
                f"{source} holds {size} records but its newest checkpoint covers"
                f" {checkpoint.size}: its log was cut after the checkpoint was signed",
                size + 1,
            )
        if checkpoint.size <= self.state.size:
            expected = self._hash_at(checkpoint.size)
            if checkpoint.head != expected:
                raise MirrorFinding(
                    f"the newest checkpoint of {source}, signed by the audit key, says record"
                    f" {checkpoint.size} is not the one the mirror holds: the audit key signed"
                    " a rewritten log",
                    checkpoint.size,
                )
        elif checkpoint.head != at_checkpoint:
            raise MirrorFinding(
                f"record {checkpoint.size} of {source} does not match the head hash of its own"
                " newest checkpoint: the records it serves were changed after signing",
                checkpoint.size,
            )

    def _store_checkpoint(self, checkpoint: Checkpoint, note: str) -> bool:
        path = checkpoint_path(self.directory, checkpoint.size)
        if path.exists():
            return False  # a checkpoint already kept is never replaced
        if not path.parent.is_dir():
            path.parent.mkdir(mode=0o700)
            self._ops.fsync_dir(self.directory)
        self._ops.write_file_atomically(path, note.encode("utf-8"))
        return True

    def _locate_modification(self, source: AuditSource) -> LogModified:
        """Bisect for the first record the appliance holds differently from the mirror (the
        appliance's record at the mirror's head is known to differ)."""
        same, differs = 0, self.state.size
        while differs - same > 1:
            middle = (same + differs) // 2
            if _record_hash_at(source, middle) == self._hash_at(middle):
                same = middle
            else:
                differs = middle
        theirs = _record_hash_at(source, differs)
        if theirs is None:
            what = (
                f"{source.name} no longer has record {differs}; the mirror holds records"
                f" {differs}..{self.state.size} (the appliance's log was cut)"
            )
        else:
            what = f"record {differs} of {source.name} differs from the mirror's copy"
        return LogModified(
            f"audit log modified at sequence {differs}: {what}. The mirror keeps the original"
            f" in {self.directory}; nothing was changed there",
            differs,
        )

    def _hash_at(self, seq: int) -> bytes:
        """Hash of the mirror's record ``seq`` (the genesis value for 0)."""
        if seq == 0:
            return GENESIS_PREV
        segments = [s for s in list_segments(self.directory) if s.first_seq <= seq]
        segment = max(segments)
        hashes = self._hash_cache.get(segment.first_seq)
        if hashes is None:
            scan = scan_frames(segment.path.read_bytes())
            hashes = [record_hash(frame.payload) for frame in scan.frames]
            self._hash_cache = {segment.first_seq: hashes}
        return hashes[seq - segment.first_seq]

    def _stored_key(self, given: bytes | None) -> bytes:
        path = self.directory / PUBLIC_KEY_FILE
        spki = spki_der(load_audit_public_key(path.read_bytes()))
        if _sha256(spki) != self.state.key_sha256:
            raise MirrorSetupError(
                f"{path} is not the audit key this mirror was made with; restore it"
            )
        if given is not None and spki_der(load_audit_public_key(given)) != spki:
            raise MirrorSetupError(
                f"{self.directory} was made for another audit key (SHA-256 of its SPKI"
                f" {self.state.key_sha256}); use that key or a new mirror folder"
            )
        return spki

    def _check_empty(self) -> None:
        if self.directory.exists() and any(self.directory.iterdir()):
            raise MirrorSetupError(
                f"{self.directory} is not empty and holds no {STATE_FILE}: it is not a mirror"
                " (a new mirror needs an empty or new folder)"
            )

    def _lock(self) -> int:
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise MirrorSetupError(
                f"{self.directory} is in use by another `signer audit mirror`; let it finish"
            ) from None
        return fd

    def _cut_uncommitted(self) -> None:
        """Remove what a pull that did not commit left: later segments and bytes past the
        committed length."""
        for segment in list_segments(self.directory):
            if segment.first_seq > self.state.segment_first:
                segment.path.unlink()
        current = self.directory / segment_name(self.state.segment_first)
        if current.exists() and current.stat().st_size > self.state.offset:
            os.truncate(current, self.state.offset)


def _record_hash_at(source: AuditSource, seq: int) -> bytes | None:
    """Hash of the record the source holds at position ``seq``, or None if it has none."""
    records = source.records_after(seq - 1, limit=1)
    try:
        payload = next(records, None)
    finally:
        _close(records)
    return None if payload is None else record_hash(payload)


def _close(records: Iterator[bytes]) -> None:
    """End a record stream early (a generator's ``close`` cancels its RPC)."""
    close = getattr(records, "close", None)
    if close is not None:
        close()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Appender:
    """Appends verified records to the mirror's segments; :meth:`roll_back` restores the
    committed state byte for byte."""

    def __init__(
        self, directory: Path, state: MirrorState, ops: OsFileOps, segment_max: int
    ) -> None:
        self._dir = directory
        self._ops = ops
        self._segment_max = segment_max
        self._start = state
        self.segment_first = state.segment_first
        self.offset = state.offset
        self._fd: int | None = None
        self._created: list[Path] = []

    def append(self, payload: bytes, seq: int) -> None:
        """Write the frame of record ``seq``."""
        frame = encode_frame(payload)
        if self.offset and self.offset + len(frame) > self._segment_max:
            self._close_segment()
            self.segment_first, self.offset = seq, 0
        if self._fd is None:
            path = self._dir / segment_name(self.segment_first)
            if not path.exists():
                self._created.append(path)
            self._fd = self._ops.open_append(path)
        self._ops.write_all(self._fd, frame)
        self.offset += len(frame)

    def finish(self) -> None:
        """Make everything written durable (the state file, written next, commits it)."""
        self._close_segment()
        if self._created:
            self._ops.fsync_dir(self._dir)

    def roll_back(self) -> None:
        """Forget everything written since the committed state."""
        if self._fd is not None:
            self._ops.close(self._fd)
            self._fd = None
        for path in self._created:
            path.unlink(missing_ok=True)
        first = self._dir / segment_name(self._start.segment_first)
        if first.exists() and first.stat().st_size > self._start.offset:
            os.truncate(first, self._start.offset)

    def _close_segment(self) -> None:
        if self._fd is not None:
            self._ops.fsync(self._fd)
            self._ops.close(self._fd)
            self._fd = None
