"""The offline verifier: an intact log passes, every kind of tampering is caught and named."""

import base64
import hashlib
import os
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from signer.audit.checkpoint import CheckpointSigner
from signer.audit.events import EventType
from signer.audit.framing import encode_frame, scan_frames
from signer.audit.log import AuditLog
from signer.audit.record import GENESIS_PREV, decode_record, record_hash
from signer.audit.segments import LATEST_CHECKPOINT, list_segments
from signer.audit.verify import FaultKind, FindingKind, verify_log
from signer.sigformat import raw_to_der
from tests.audit_support import digest, make_signer

RECORDS = 8


@pytest.fixture
def signer() -> CheckpointSigner:
    return make_signer()


@pytest.fixture
def log_dir(tmp_path: Path, signer: CheckpointSigner) -> Path:
    directory = tmp_path / "audit"
    with AuditLog(directory, signer, checkpoint_every_records=3) as log:
        for i in range(1, RECORDS + 1):
            log.append(
                EventType.SIGN_BATCH,
                identity="issuer-a",
                profile="vaccination",
                kid=b"\x07" * 8,
                request_id=f"req-{i}",
                digests=[digest(i, j) for j in range(3)],
            )
    return directory


def segment_path(directory: Path) -> Path:
    (segment,) = list_segments(directory)
    return segment.path


def frames(directory: Path) -> list[bytes]:
    data = segment_path(directory).read_bytes()
    return [data[f.offset : f.end] for f in scan_frames(data).frames]


def write_frames(directory: Path, chunks: list[bytes]) -> None:
    segment_path(directory).write_bytes(b"".join(chunks))


def drop_local_checkpoints(directory: Path) -> None:
    shutil.rmtree(directory / "checkpoints")
    (directory / LATEST_CHECKPOINT).unlink()


def test_intact_log_verifies(log_dir: Path, signer: CheckpointSigner) -> None:
    report = verify_log(log_dir, signer.spki_der)
    assert report.ok, report.message
    assert report.fault is None
    assert report.records_checked == RECORDS
    assert report.checkpoints_checked == 4  # sizes 3, 6, 8 and checkpoint.latest
    assert "intact" in report.message


def test_pem_public_key_is_accepted(log_dir: Path, signer: CheckpointSigner) -> None:
    key = serialization.load_der_public_key(signer.spki_der)
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert verify_log(log_dir, pem).ok


def test_flipped_byte_is_reported_as_modified(log_dir: Path, signer: CheckpointSigner) -> None:
    path = segment_path(log_dir)
    data = bytearray(path.read_bytes())
    data[bytes(data).index(digest(4, 1))] ^= 0x40
    path.write_bytes(bytes(data))
    report = verify_log(log_dir, signer.spki_der)
    assert not report.ok
    assert report.fault is FaultKind.MODIFIED
    assert report.first_bad_seq == 4
    assert report.records_checked == 4
    assert "modified" in report.message and "record 4" in report.message


def test_deleted_record_is_reported_as_missing(log_dir: Path, signer: CheckpointSigner) -> None:
    chunks = frames(log_dir)
    del chunks[4]
    write_frames(log_dir, chunks)
    report = verify_log(log_dir, signer.spki_der)
    assert report.fault is FaultKind.MISSING
    assert report.first_bad_seq == 5
    assert "missing" in report.message


def test_swapped_records_are_reported_as_reordered(log_dir: Path, signer: CheckpointSigner) -> None:
    chunks = frames(log_dir)
    chunks[2], chunks[3] = chunks[3], chunks[2]
    write_frames(log_dir, chunks)
    report = verify_log(log_dir, signer.spki_der)
    assert report.fault is FaultKind.REORDERED
    assert report.first_bad_seq == 3


def test_duplicated_record_is_reported_as_inserted(log_dir: Path, signer: CheckpointSigner) -> None:
    chunks = frames(log_dir)
    chunks.insert(3, chunks[2])
    write_frames(log_dir, chunks)
    report = verify_log(log_dir, signer.spki_der)
    assert report.fault is FaultKind.INSERTED
    assert report.first_bad_seq == 3


@pytest.mark.parametrize("cut_inside_record", [False, True])
def test_truncation_below_auditor_checkpoint(
    tmp_path: Path, log_dir: Path, signer: CheckpointSigner, cut_inside_record: bool
) -> None:
    kept = tmp_path / "auditor-checkpoint.txt"
    shutil.copy(log_dir / LATEST_CHECKPOINT, kept)
    drop_local_checkpoints(log_dir)
    chunks = frames(log_dir)[:5]
    if cut_inside_record:
        chunks.append(frames(log_dir)[5][:9])
    write_frames(log_dir, chunks)
    assert verify_log(log_dir, signer.spki_der).fault is not FaultKind.TRUNCATED

    report = verify_log(log_dir, signer.spki_der, extra_checkpoints=[kept])
    assert report.fault is FaultKind.TRUNCATED
    assert report.first_bad_seq == 6
    assert "truncated" in report.message and str(RECORDS) in report.message


def test_replaced_checkpoint_signature(log_dir: Path, signer: CheckpointSigner) -> None:
    path = log_dir / "checkpoints" / "000000000006.txt"
    text, _, line = path.read_text().partition("\n\n")
    dash, name, blob_b64 = line.split()
    blob = bytearray(base64.b64decode(blob_b64))
    forged = make_signer().sign(hashlib.sha256((text + "\n").encode()).digest())
    blob[4:] = raw_to_der(forged)  # keep the key ID, swap in another key's signature
    path.write_text(f"{text}\n\n{dash} {name} {base64.b64encode(bytes(blob)).decode()}\n")
    report = verify_log(log_dir, signer.spki_der)
    assert report.fault is FaultKind.BAD_CHECKPOINT_SIGNATURE
    assert report.position == str(path)
    assert "invalid signature" in report.message


def test_wrong_public_key_fails_checkpoints(log_dir: Path) -> None:
    report = verify_log(log_dir, make_signer().spki_der)
    assert report.fault is FaultKind.BAD_CHECKPOINT_SIGNATURE
    assert "not signed by the given audit key" in report.message


def test_rechained_rewrite_is_caught_by_checkpoint(
    tmp_path: Path, log_dir: Path, signer: CheckpointSigner
) -> None:
    kept = tmp_path / "auditor-checkpoint.txt"
    shutil.copy(log_dir / LATEST_CHECKPOINT, kept)
    drop_local_checkpoints(log_dir)
    prev = GENESIS_PREV
    rewritten = []
    for chunk in frames(log_dir):
        record = decode_record(chunk[4:])
        if record.seq == 2:
            record = type(record)(**{**record.__dict__, "identity": "mallory"})
        record = type(record)(**{**record.__dict__, "prev": prev})
        payload = record.encode()
        prev = record_hash(payload)
        rewritten.append(encode_frame(payload))
    write_frames(log_dir, rewritten)
    assert verify_log(log_dir, signer.spki_der).ok  # the chain alone cannot see it
    report = verify_log(log_dir, signer.spki_der, extra_checkpoints=[kept])
    assert report.fault is FaultKind.CHECKPOINT_MISMATCH
    assert report.first_bad_seq == RECORDS


def test_corrupt_length_in_the_middle_is_undecodable(
    log_dir: Path, signer: CheckpointSigner
) -> None:
    path = segment_path(log_dir)
    data = bytearray(path.read_bytes())
    offset = scan_frames(bytes(data)).frames[3].offset
    data[offset + 4] = 0xFF  # first CBOR byte of record 4 becomes a break code
    path.write_bytes(bytes(data))
    report = verify_log(log_dir, signer.spki_der)
    assert report.fault is FaultKind.UNDECODABLE
    assert report.first_bad_seq == 4


def test_unrepaired_torn_tail(log_dir: Path, signer: CheckpointSigner) -> None:
    with segment_path(log_dir).open("ab") as f:
        f.write(b"\x00\x00")
    report = verify_log(log_dir, signer.spki_der)
    assert report.fault is FaultKind.TORN_TAIL
    assert report.first_bad_seq == RECORDS + 1


def test_missing_segment_is_reported(tmp_path: Path, signer: CheckpointSigner) -> None:
    directory = tmp_path / "rolled"
    with AuditLog(directory, signer, segment_max_bytes=600) as log:
        for i in range(10):
            log.append(EventType.SIGN_BATCH, digests=[digest(i, j) for j in range(4)])
    segments = list_segments(directory)
    assert len(segments) >= 3
    os.remove(segments[1].path)
    report = verify_log(directory, signer.spki_der)
    assert report.fault is FaultKind.MISSING
    assert report.first_bad_seq == segments[1].first_seq


def test_repair_that_cut_bytes_is_a_finding(log_dir: Path, signer: CheckpointSigner) -> None:
    torn_at = segment_path(log_dir).stat().st_size
    with segment_path(log_dir).open("ab") as f:
        f.write(frames(log_dir)[-1][:30])
    with AuditLog(log_dir, signer) as log:
        assert log.size == RECORDS + 1
    report = verify_log(log_dir, signer.spki_der)
    assert report.ok and report.fault is None, "a repair is not tampering"
    assert report.records_checked == RECORDS + 1
    (finding,) = report.findings
    assert finding.kind is FindingKind.LOG_REPAIRED
    assert finding.seq == RECORDS + 1
    assert finding.position.startswith(f"seq {RECORDS + 1} (audit-000000000001.log offset ")
    assert "cut 30 bytes" in finding.message and f"offset {torn_at}" in finding.message
    assert f"after record {RECORDS}" in finding.message
    assert not report.message.startswith("audit log intact")
    assert "log_repaired" in report.message and "chain intact" in report.message


def test_repair_without_a_cut_and_a_clean_restart_are_no_finding(
    log_dir: Path, signer: CheckpointSigner
) -> None:
    with AuditLog(log_dir, signer) as log:
        log.append(EventType.LOG_REPAIRED, details={"bytes_cut": 0})
    report = verify_log(log_dir, signer.spki_der)
    assert report.ok and report.findings == ()
    assert report.message.startswith("audit log intact")
