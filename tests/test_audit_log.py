"""The audit writer: durability, group commit, failures, torn tails, rollover, checkpoints."""

import errno
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from signer.audit.checkpoint import CheckpointSigner, open_checkpoint
from signer.audit.events import EventType
from signer.audit.fileops import OsFileOps
from signer.audit.framing import encode_frame, scan_frames
from signer.audit.log import AuditLog
from signer.audit.query import iter_records
from signer.audit.record import AuditRecord, decode_record
from signer.audit.segments import LATEST_CHECKPOINT, list_segments
from signer.audit.verify import FaultKind, verify_log
from signer.errors import AuditError
from tests.audit_support import ORIGIN, digest, make_signer


def sign_batch(log: AuditLog, n: int, tag: str = "r") -> int:
    result = log.append(
        EventType.SIGN_BATCH,
        identity="issuer-a",
        profile="vaccination",
        kid=b"\x01" * 8,
        request_id=tag,
        digests=[digest(tag, i) for i in range(n)],
    )
    return result.seq


class CountingOps(OsFileOps):
    """Counts fsyncs; optionally slows them down to let groups form."""

    def __init__(self, fsync_delay: float = 0.0) -> None:
        self.fsyncs = 0
        self.fsync_delay = fsync_delay
        self._lock = threading.Lock()

    def fsync(self, fd: int) -> None:
        with self._lock:
            self.fsyncs += 1
        time.sleep(self.fsync_delay)
        super().fsync(fd)


class FaultyOps(OsFileOps):
    """Fails segment writes or fsyncs with a chosen errno while ``fault`` is set."""

    def __init__(self) -> None:
        self.fault: int | None = None
        self.fail_fsync = False
        self.partial = True

    def write(self, fd: int, data: bytes) -> int:
        if self.fault is not None and not self.fail_fsync:
            if self.partial and len(data) > 1:
                os.write(fd, data[: len(data) // 2])
                self.partial_written = True
            raise OSError(self.fault, os.strerror(self.fault))
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        if self.fault is not None and self.fail_fsync:
            raise OSError(self.fault, os.strerror(self.fault))
        super().fsync(fd)


def wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def segment_bytes(directory: Path) -> bytes:
    return b"".join(segment.path.read_bytes() for segment in list_segments(directory))


def test_appends_are_chained_numbered_and_survive_reopen(tmp_path: Path) -> None:
    signer = make_signer()
    with AuditLog(tmp_path, signer) as log:
        seqs = [sign_batch(log, 3, f"r{i}") for i in range(5)]
        assert seqs == [1, 2, 3, 4, 5]
        assert log.size == 5
    with AuditLog(tmp_path, signer) as log:
        assert log.size == 5
        assert sign_batch(log, 1, "after-reopen") == 6
    records = list(iter_records(tmp_path))
    assert [r.seq for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[0].prev == bytes(32)
    report = verify_log(tmp_path, signer.spki_der)
    assert report.ok, report.message
    assert report.records_checked == 6


def test_append_returns_only_after_fsync(tmp_path: Path) -> None:
    ops = CountingOps()
    with AuditLog(tmp_path, make_signer(), file_ops=ops) as log:
        before = ops.fsyncs
        result = log.append(EventType.DAEMON_START, details={"version": "0.1.0"})
        assert ops.fsyncs > before
        on_disk = list(iter_records(tmp_path))
        assert on_disk[-1].seq == result.seq == 1
        assert hashlib.sha256(on_disk[-1].encode()).digest() == result.record_hash


def test_concurrent_appends_share_fsyncs(tmp_path: Path) -> None:
    threads_n, per_thread = 16, 40
    ops = CountingOps(fsync_delay=0.003)
    signer = make_signer()
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    with AuditLog(tmp_path, signer, file_ops=ops, checkpoint_every_records=10**9) as log:
        fsyncs_before = ops.fsyncs
        barrier = threading.Barrier(threads_n)

        def worker(t: int) -> None:
            try:
                barrier.wait()
                results[t] = [sign_batch(log, 2, f"t{t}-{i}") for i in range(per_thread)]
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        fsyncs = ops.fsyncs - fsyncs_before

    total = threads_n * per_thread
    assert not errors
    all_seqs = sorted(s for seqs in results.values() for s in seqs)
    assert all_seqs == list(range(1, total + 1))
    for seqs in results.values():
        assert seqs == sorted(seqs)
    assert fsyncs < total / 4, f"{fsyncs} fsyncs for {total} records: no group commit"
    assert [r.seq for r in iter_records(tmp_path)] == list(range(1, total + 1))
    assert verify_log(tmp_path, signer.spki_der).ok


@pytest.mark.parametrize(
    ("code", "fail_fsync"),
    [(errno.ENOSPC, False), (errno.EACCES, False), (errno.EIO, True), (errno.EFBIG, False)],
)
def test_write_failure_fails_the_group_then_recovers(
    tmp_path: Path, code: int, fail_fsync: bool
) -> None:
    ops = FaultyOps()
    ops.fail_fsync = fail_fsync
    health: list[bool] = []
    signer = make_signer()
    log = AuditLog(tmp_path, signer, file_ops=ops, on_health_change=health.append)
    sign_batch(log, 2, "ok-1")
    sign_batch(log, 2, "ok-2")
    good = segment_bytes(tmp_path)

    ops.fault = code
    failures: list[AuditError] = []

    def doomed(i: int) -> None:
        try:
            sign_batch(log, 1, f"doomed-{i}")
        except AuditError as exc:
            failures.append(exc)

    threads = [threading.Thread(target=doomed, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(failures) == 6
    assert errno.errorcode[code] in str(failures[0])
    assert log.healthy is False and health == [False]
    assert log.size == 2
    assert segment_bytes(tmp_path) == good, "failed group left bytes in the segment"

    ops.fault = None
    # the first group after the outage starts with a log_resumed record that describes it
    assert sign_batch(log, 1, "after-recovery") == 4
    assert log.healthy is True and health == [False, True]
    log.close()
    records = list(iter_records(tmp_path))
    assert [r.request_id for r in records] == ["ok-1", "ok-2", None, "after-recovery"]
    assert records[2].event is EventType.LOG_RESUMED
    assert records[2].details["refused_records"] == 6
    assert 1 <= records[2].details["failed_writes"] <= 6
    assert verify_log(tmp_path, signer.spki_der).ok


def test_idle_writer_probes_and_recovers_without_a_request(tmp_path: Path) -> None:
    ops = FaultyOps()
    health: list[bool] = []
    signer = make_signer()
    log = AuditLog(
        tmp_path, signer, file_ops=ops, on_health_change=health.append, probe_interval=0.05
    )
    sign_batch(log, 1, "ok")
    ops.fault = errno.ENOSPC
    with pytest.raises(AuditError):
        sign_batch(log, 1, "refused")
    time.sleep(0.3)  # probes keep failing while the fault lasts
    assert log.healthy is False and health == [False] and log.size == 1
    ops.fault = None
    assert wait_until(lambda: log.healthy), "the writer did not recover on its own"
    assert health == [False, True]
    log.close()
    records = list(iter_records(tmp_path))
    assert [r.event for r in records][:2] == [EventType.SIGN_BATCH, EventType.LOG_RESUMED]
    assert records[1].details["failed_writes"] == 1
    assert records[1].details["refused_records"] == 1
    assert records[1].details["failed_since_ns"] > records[0].time_ns
    assert verify_log(tmp_path, signer.spki_der).ok


_EFBIG_SCRIPT = r"""
import json, resource, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from test_audit_log import make_signer, sign_batch
from signer.audit.log import AuditLog
from signer.errors import AuditError
from cryptography.hazmat.primitives import serialization

signer = make_signer()
Path(sys.argv[3]).write_bytes(signer.spki_der)
log = AuditLog(sys.argv[1], signer, checkpoint_every_records=10**9)
sign_batch(log, 1, "small")
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
out = {"errors": [], "healthy": []}
for i in range(3):
    try:
        sign_batch(log, 200, f"big-{i}")
    except AuditError as exc:
        out["errors"].append(str(exc))
    out["healthy"].append(log.healthy)
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
out["after"] = sign_batch(log, 200, "after")
out["healthy"].append(log.healthy)
log.close()
print(json.dumps(out))
"""


def test_real_file_size_limit_efbig(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    pubkey = tmp_path / "audit.spki"
    proc = subprocess.run(
        [sys.executable, "-c", _EFBIG_SCRIPT, str(directory), str(Path(__file__).parent), pubkey],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert len(out["errors"]) == 3 and all("EFBIG" in e for e in out["errors"])
    assert out["healthy"] == [False, False, False, True]
    assert out["after"] == 3  # record 2 is the log_resumed event
    assert verify_log(directory, pubkey.read_bytes()).ok


def _valid_frame(seq: int, prev: bytes) -> bytes:
    record = AuditRecord(
        seq, 1, EventType.SIGN_BATCH, "x", "p", None, "torn", (bytes(32),), None, {}, prev
    )
    return encode_frame(record.encode())


@pytest.mark.parametrize("keep", [2, 10, 40])
def test_torn_tail_is_cut_and_recorded(tmp_path: Path, keep: int) -> None:
    signer = make_signer()
    with AuditLog(tmp_path, signer) as log:
        for i in range(4):
            sign_batch(log, 2, f"r{i}")
        head = log.head
    segment = list_segments(tmp_path)[-1].path
    good_size = segment.stat().st_size
    with segment.open("ab") as f:
        f.write(_valid_frame(5, head)[:keep])
    report = verify_log(tmp_path, signer.spki_der)
    assert not report.ok and report.fault is FaultKind.TORN_TAIL

    with AuditLog(tmp_path, signer) as log:
        assert log.size == 5
        sign_batch(log, 1, "after")
    records = list(iter_records(tmp_path))
    repaired = records[4]
    assert repaired.event is EventType.LOG_REPAIRED
    assert repaired.details["bytes_cut"] == keep
    assert repaired.details["offset"] == good_size
    assert repaired.prev == hashlib.sha256(records[3].encode()).digest()
    assert records[5].request_id == "after"
    assert verify_log(tmp_path, signer.spki_der).ok


def test_zeroed_tail_after_crash_is_cut(tmp_path: Path) -> None:
    signer = make_signer()
    with AuditLog(tmp_path, signer) as log:
        sign_batch(log, 2)
    with list_segments(tmp_path)[-1].path.open("ab") as f:
        f.write(bytes(700))
    with AuditLog(tmp_path, signer) as log:
        assert log.size == 2
    assert list(iter_records(tmp_path))[-1].details["bytes_cut"] == 700
    assert verify_log(tmp_path, signer.spki_der).ok


def test_open_refuses_a_chain_break_in_the_middle(tmp_path: Path) -> None:
    signer = make_signer()
    with AuditLog(tmp_path, signer, checkpoint_every_records=10**9) as log:
        for i in range(4):
            sign_batch(log, 2, f"r{i}")
    segment = list_segments(tmp_path)[-1].path
    data = bytearray(segment.read_bytes())
    frame = scan_frames(bytes(data)).frames[1]
    target = digest("r1", 0)
    at = bytes(data).index(target, frame.offset)
    data[at] ^= 0x01
    segment.write_bytes(bytes(data))
    with pytest.raises(AuditError, match="does not continue the hash chain"):
        AuditLog(tmp_path, signer)


def test_open_refuses_to_cut_damage_followed_by_intact_records(tmp_path: Path) -> None:
    signer = make_signer()
    with AuditLog(tmp_path, signer) as log:
        for i in range(4):
            sign_batch(log, 2, f"r{i}")
    (tmp_path / LATEST_CHECKPOINT).unlink()
    segment = list_segments(tmp_path)[-1].path
    data = bytearray(segment.read_bytes())
    frame = scan_frames(bytes(data)).frames[1]
    data[frame.offset : frame.offset + 4] = (10**6).to_bytes(4, "big")
    segment.write_bytes(bytes(data))
    with pytest.raises(AuditError, match="intact records follow"):
        AuditLog(tmp_path, signer)


def test_open_refuses_a_log_shorter_than_its_checkpoint(tmp_path: Path) -> None:
    signer = make_signer()
    with AuditLog(tmp_path, signer) as log:
        for i in range(4):
            sign_batch(log, 2, f"r{i}")
    segment = list_segments(tmp_path)[-1].path
    last = scan_frames(segment.read_bytes()).frames[-1]
    os.truncate(segment, last.offset + 7)
    with pytest.raises(AuditError, match="records were removed"):
        AuditLog(tmp_path, signer)


def test_segments_roll_over_and_old_ones_stay_untouched(tmp_path: Path) -> None:
    signer = make_signer()
    with AuditLog(tmp_path, signer, segment_max_bytes=1200) as log:
        for i in range(12):
            sign_batch(log, 3, f"r{i}")
    segments = list_segments(tmp_path)
    assert len(segments) >= 3
    frozen = {s.path: s.path.read_bytes() for s in segments[:-1]}
    for segment in segments:
        first = decode_record(scan_frames(segment.path.read_bytes()).frames[0].payload)
        assert first.seq == segment.first_seq
        assert segment.path.name == f"audit-{segment.first_seq:012d}.log"
    with AuditLog(tmp_path, signer, segment_max_bytes=1200) as log:
        assert log.size == 12
        for i in range(6):
            sign_batch(log, 3, f"more{i}")
    assert {p: p.read_bytes() for p in frozen} == frozen
    assert len(list_segments(tmp_path)) > len(segments)
    assert [r.seq for r in iter_records(tmp_path)] == list(range(1, 19))
    assert verify_log(tmp_path, signer.spki_der).ok


def test_checkpoints_every_n_records_and_at_close(tmp_path: Path) -> None:
    signer = make_signer()
    key = serialization.load_der_public_key(signer.spki_der)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    with AuditLog(tmp_path, signer, checkpoint_every_records=3) as log:
        for i in range(7):
            sign_batch(log, 1, f"r{i}")
        folder = tmp_path / "checkpoints"
        assert wait_until(lambda: (folder / "000000000006.txt").exists())
        sizes = sorted(int(p.stem) for p in folder.iterdir())
        assert sizes == [3, 6]
        head = log.head
    latest = open_checkpoint((tmp_path / LATEST_CHECKPOINT).read_text(), key)
    assert (latest.origin, latest.size, latest.head) == (ORIGIN, 7, head)
    assert (tmp_path / "checkpoints" / "000000000007.txt").exists()


def test_checkpoint_after_interval_without_close(tmp_path: Path) -> None:
    signer = make_signer()
    with AuditLog(tmp_path, signer, checkpoint_every_seconds=0.05) as log:
        sign_batch(log, 1)
        assert wait_until(lambda: (tmp_path / LATEST_CHECKPOINT).exists())
        assert (tmp_path / "checkpoints" / "000000000001.txt").exists()


def test_failing_audit_key_does_not_block_appends(tmp_path: Path) -> None:
    good = make_signer()
    broken = {"on": True}

    def sign(d: bytes) -> bytes:
        if broken["on"]:
            raise RuntimeError("HSM session lost")
        return good.sign(d)

    signer = CheckpointSigner(ORIGIN, sign, good.spki_der)
    with AuditLog(tmp_path, signer, checkpoint_every_records=1) as log:
        assert sign_batch(log, 1) == 1
        assert sign_batch(log, 1) == 2
        assert log.checkpoint_error is not None and "HSM session lost" in log.checkpoint_error
        broken["on"] = False
        sign_batch(log, 1)
        assert wait_until(lambda: log.checkpoint_error is None)
    assert verify_log(tmp_path, signer.spki_der).ok


def test_second_writer_on_same_directory_is_refused(tmp_path: Path) -> None:
    signer = make_signer()
    with AuditLog(tmp_path, signer), pytest.raises(AuditError, match="in use"):
        AuditLog(tmp_path, signer)


def test_bad_arguments_and_closed_log(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, make_signer())
    with pytest.raises(ValueError, match="digest 1 must be 32 bytes"):
        log.append(EventType.SIGN_BATCH, digests=[bytes(32), bytes(20)])
    with pytest.raises(ValueError, match="one per digest"):
        log.append(EventType.SIGN_BATCH, digests=[bytes(32)], signatures=[])
    with pytest.raises(ValueError, match="CBOR"):
        log.append(EventType.DAEMON_START, details={"x": object()})
    with pytest.raises(ValueError, match="keys must be strings"):
        log.append(EventType.DAEMON_START, details={1: "x"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="identity must be a string"):
        log.append(EventType.AUTH_REFUSED, identity=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="EventType"):
        log.append("sign_batch")  # type: ignore[arg-type]
    assert log.size == 0
    log.close()
    with pytest.raises(AuditError, match="closed"):
        log.append(EventType.DAEMON_STOP)
