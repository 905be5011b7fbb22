"""The audit log's SIGNATURE revocation hashes: record format 2, format 1 logs, window queries."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from signer.audit.events import EventType
from signer.audit.framing import encode_frame, scan_frames
from signer.audit.log import AuditLog
from signer.audit.query import iter_records
from signer.audit.record import GENESIS_PREV, AuditRecord, decode_record, record_hash
from signer.audit.segments import LATEST_CHECKPOINT, list_segments, segment_name
from signer.audit.signed import (
    LogNotVerified,
    SignatureWindow,
    WindowNotes,
    signatures_in_window,
    verified_signatures,
)
from signer.audit.verify import FaultKind, verify_log
from signer.errors import AuditError
from tests.audit_support import digest, make_signer

KEY = ec.generate_private_key(ec.SECP256R1())
KID_A, KID_B = b"\xaa" * 8, b"\xbb" * 8


def es256(message: bytes) -> tuple[bytes, bytes]:
    """A real ES256 signature of ``message``: (raw r||s, DER)."""
    der = KEY.sign(hashlib.sha256(message).digest(), ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    r, s = utils.decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big"), der


def expected_hash(der: bytes) -> bytes:
    """What EU verifier apps compute: SHA-256 over r (32 bytes), first 16 bytes."""
    r, _ = utils.decode_dss_signature(der)
    return hashlib.sha256(r.to_bytes(32, "big")).digest()[:16]


def signed_batch(
    log: AuditLog, tag: str, n: int, *, identity: str = "CN=issuer", kid: bytes = KID_A
) -> list[bytes]:
    """Append a batch with real signatures; return the expected SIGNATURE hashes."""
    pairs = [es256(f"{tag}/{i}".encode()) for i in range(n)]
    log.append(
        EventType.SIGN_BATCH,
        identity=identity,
        profile="vaccination",
        kid=kid,
        request_id=tag,
        digests=[digest(tag, i) for i in range(n)],
        signatures=[raw for raw, _ in pairs],
    )
    return [expected_hash(der) for _, der in pairs]


def test_a_signed_batch_keeps_revocation_hashes_not_whole_signatures(tmp_path: Path) -> None:
    with AuditLog(tmp_path, make_signer()) as log:
        expected = signed_batch(log, "b", 3)
    (record,) = [r for r in iter_records(tmp_path) if r.event is EventType.SIGN_BATCH]
    assert record.version == 2
    assert record.signatures is None
    assert record.sig_hashes == b"".join(expected)
    assert record.revocation_hashes() == expected


def test_keep_signatures_stores_both(tmp_path: Path) -> None:
    pairs = [es256(b"one"), es256(b"two")]
    with AuditLog(tmp_path, make_signer(), keep_signatures=True) as log:
        log.append(
            EventType.SIGN_BATCH,
            identity="CN=issuer",
            kid=KID_A,
            digests=[digest(1), digest(2)],
            signatures=[raw for raw, _ in pairs],
        )
    (record,) = list(iter_records(tmp_path))
    assert record.signatures == tuple(raw for raw, _ in pairs)
    assert record.revocation_hashes() == [expected_hash(der) for _, der in pairs]


def test_der_and_raw_signatures_give_the_same_hash(tmp_path: Path) -> None:
    raw, der = es256(b"same")
    with AuditLog(tmp_path, make_signer()) as log:
        for signature in (raw, der):
            log.append(EventType.SIGN_BATCH, kid=KID_A, digests=[digest(1)], signatures=[signature])
    hashes = [r.sig_hashes for r in iter_records(tmp_path)]
    assert hashes == [expected_hash(der)] * 2


@pytest.mark.parametrize("signature", [b"short", bytes(70), b"\x30" * 71])
def test_a_signature_that_is_not_es256_is_refused_and_nothing_written(
    tmp_path: Path, signature: bytes
) -> None:
    with AuditLog(tmp_path, make_signer()) as log:
        with pytest.raises(ValueError, match="neither raw ES256"):
            log.append(EventType.SIGN_BATCH, kid=KID_A, digests=[digest(1)], signatures=[signature])
        assert log.size == 0


def test_record_format_2_decoding_checks_the_hash_field() -> None:
    record = AuditRecord(1, 1, EventType.SIGN_BATCH, None, None, KID_A, None, (digest(1),), None)
    body = cbor2.loads(record.encode())
    body["sig_hashes"] = bytes(15)
    with pytest.raises(ValueError, match="16 bytes per digest"):
        decode_record(cbor2.dumps(body, canonical=True))
    body["sig_hashes"], body["v"] = bytes(16), 1
    with pytest.raises(ValueError, match="unexpected fields"):
        decode_record(cbor2.dumps(body, canonical=True))
    body["v"] = 3
    with pytest.raises(ValueError, match="version 3"):
        decode_record(cbor2.dumps(body, canonical=True))


def write_format_1_log(directory: Path, whole: list[bytes] | None) -> list[AuditRecord]:
    """A log as the writer of format 1 left it: two sign_batch records, with or without whole
    signatures (no checkpoint, as after a crash before the first one)."""
    directory.mkdir()
    records: list[AuditRecord] = []
    prev = GENESIS_PREV
    frames = b""
    for seq in (1, 2):
        record = AuditRecord(
            seq=seq,
            time_ns=seq * 1_000,
            event=EventType.SIGN_BATCH,
            identity="CN=issuer",
            profile="vaccination",
            kid=KID_A,
            request_id=f"old-{seq}",
            digests=(digest("old", seq),),
            signatures=(whole[seq - 1],) if whole else None,
            prev=prev,
            version=1,
        )
        payload = record.encode()
        assert cbor2.loads(payload)["v"] == 1
        frames += encode_frame(payload)
        prev = record_hash(payload)
        records.append(record)
    (directory / segment_name(1)).write_bytes(frames)
    return records


def test_format_1_logs_stay_readable_and_are_continued_in_format_2(tmp_path: Path) -> None:
    pairs = [es256(b"old-1"), es256(b"old-2")]
    old = write_format_1_log(tmp_path / "audit", [raw for raw, _ in pairs])
    signer = make_signer()
    assert verify_log(tmp_path / "audit", signer.spki_der).ok
    with AuditLog(tmp_path / "audit", signer) as log:
        assert log.size == 2
        new = signed_batch(log, "new", 2)
    report = verify_log(tmp_path / "audit", signer.spki_der)
    assert report.ok, report.message
    records = list(iter_records(tmp_path / "audit"))
    assert records[:2] == old
    assert [r.version for r in records] == [1, 1, 2]
    window = SignatureWindow("CN=issuer", 0, 2**63)
    found = [e.sig_hash for e in signatures_in_window(tmp_path / "audit", window)]
    assert found == [expected_hash(der) for _, der in pairs] + new


def test_format_1_records_without_signatures_are_counted_not_guessed(tmp_path: Path) -> None:
    write_format_1_log(tmp_path / "audit", None)
    notes = WindowNotes()
    window = SignatureWindow("CN=issuer", 0, 2**63)
    assert list(signatures_in_window(tmp_path / "audit", window, notes)) == []
    assert (notes.unhashed, notes.unhashed_seqs) == (2, [1, 2])


def test_recovery_still_tells_middle_damage_from_a_torn_tail_with_both_fields(
    tmp_path: Path,
) -> None:
    """Records with signatures and sig_hashes are 13-entry maps; the writer's scan for intact
    records after damage must still recognise them."""
    signer = make_signer()
    with AuditLog(tmp_path, signer, keep_signatures=True) as log:
        for i in range(4):
            signed_batch(log, f"r{i}", 2)
    (tmp_path / LATEST_CHECKPOINT).unlink()
    segment = list_segments(tmp_path)[-1].path
    data = bytearray(segment.read_bytes())
    frame = scan_frames(bytes(data)).frames[1]
    assert data[frame.offset + 4] == 0xAD  # a CBOR map of 13 entries
    data[frame.offset : frame.offset + 4] = (10**6).to_bytes(4, "big")
    segment.write_bytes(bytes(data))
    with pytest.raises(AuditError, match="intact records follow"):
        AuditLog(tmp_path, signer)


def test_window_selects_identity_time_and_kid(tmp_path: Path) -> None:
    second = 1_000_000_000
    now = [time.time_ns()]
    start = now[0]
    with AuditLog(tmp_path, make_signer(), clock_ns=lambda: now[0]) as log:
        batches = []
        for tag, identity, kid in (
            ("before", "CN=issuer", KID_A),  # start + 1 s
            ("mine", "CN=issuer", KID_A),  # + 2 s
            ("theirs", "CN=other", KID_A),  # + 3 s
            ("kid-b", "CN=issuer", KID_B),  # + 4 s
            ("after", "CN=issuer", KID_A),  # + 5 s
        ):
            now[0] += second
            batches.append(
                signed_batch(log, tag, 3 if tag == "mine" else 1, identity=identity, kid=kid)
            )
    mine, other_kid = batches[1], batches[3]
    window = SignatureWindow("CN=issuer", start + 2 * second, start + 5 * second)
    entries = list(signatures_in_window(tmp_path, window))
    assert [e.sig_hash for e in entries] == mine + other_kid
    assert [(e.kid, e.seq, e.index, e.request_id) for e in entries[:3]] == [
        (KID_A, 2, i, "mine") for i in range(3)
    ]
    only_b = SignatureWindow("CN=issuer", start, start + 10 * second, kid=KID_B)
    assert [e.sig_hash for e in signatures_in_window(tmp_path, only_b)] == other_kid
    with pytest.raises(ValueError, match="since < until"):
        SignatureWindow("CN=issuer", 5_000, 5_000)


def test_notes_carry_dsc_expiry_and_repairs(tmp_path: Path) -> None:
    signer = make_signer()
    with AuditLog(tmp_path, signer) as log:
        log.append(
            EventType.CERT_IMPORTED,
            details={"kid": KID_A.hex(), "not_after": "2028-06-30T12:00:00+00:00"},
        )
        signed_batch(log, "a", 1)
    with list_segments(tmp_path)[-1].path.open("ab") as segment:
        segment.write(bytes(300))  # a torn write, as a crash leaves it
    with AuditLog(tmp_path, signer) as log:
        signed_batch(log, "b", 1)
    notes = WindowNotes()
    entries = list(
        verified_signatures(
            tmp_path, signer.spki_der, SignatureWindow("CN=issuer", 0, 2**63), notes
        )
    )
    assert len(entries) == 2
    assert notes.report is not None and [f.kind.value for f in notes.report.findings] == [
        "log_repaired"
    ]
    (gap,) = notes.repairs
    assert gap.after_ns < gap.repaired_ns
    assert gap.overlaps(SignatureWindow("CN=issuer", gap.after_ns, gap.after_ns + 1))
    assert not gap.overlaps(SignatureWindow("CN=issuer", 0, gap.after_ns))
    assert notes.dsc_not_after[KID_A].isoformat() == "2028-06-30T12:00:00+00:00"


def test_a_log_that_does_not_verify_yields_nothing(tmp_path: Path) -> None:
    signer = make_signer()
    with AuditLog(tmp_path, signer) as log:
        for i in range(3):
            signed_batch(log, f"r{i}", 2)
    segment = list_segments(tmp_path)[-1].path
    data = bytearray(segment.read_bytes())
    data[scan_frames(bytes(data)).frames[0].offset + 40] ^= 0x01
    segment.write_bytes(bytes(data))
    query = verified_signatures(tmp_path, signer.spki_der, SignatureWindow("CN=issuer", 0, 2**63))
    with pytest.raises(LogNotVerified) as refused:
        next(query)
    assert refused.value.report.fault in {FaultKind.MODIFIED, FaultKind.UNDECODABLE}


def test_a_repairing_start_with_an_overdue_checkpoint_does_not_wait_for_the_start_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """After a crash long after the last checkpoint, the repair record's commit makes a
    time-based checkpoint; the opener's start-up request must still be answered (it used to
    be left waiting until START_CHECKPOINT_WAIT)."""
    signer = make_signer()
    now = [time.time_ns()]
    with AuditLog(tmp_path, signer, clock_ns=lambda: now[0]) as log:
        signed_batch(log, "before", 1)
    with list_segments(tmp_path)[-1].path.open("ab") as segment:
        segment.write(bytes(300))
    now[0] += 3600 * 1_000_000_000
    with AuditLog(tmp_path, signer, clock_ns=lambda: now[0]) as log:
        assert log.size == 2
        assert log.last_checkpoint_unix == now[0] / 1e9
    assert "start-up audit checkpoint not signed" not in caplog.text


def test_audit_tail_shows_the_hashes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from signer.cli import main

    with AuditLog(tmp_path, make_signer()) as log:
        expected = signed_batch(log, "shown", 2)
    assert main(["audit", "tail", "--dir", str(tmp_path), "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    shown = json.loads(line)
    assert shown["sig_hashes"] == [h.hex() for h in expected]
    assert (shown["version"], shown["signatures"]) == (2, None)
