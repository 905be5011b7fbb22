"""Acknowledged audit records survive I/O errors, even when fsync cannot be trusted afterwards.

Issue 12, item 7: with the audit folder on ext4 over a loop device whose backing store filled
up, a record that had been acknowledged (its fsync returned 0) held zeroed blocks after unmount
and mount. Measured here: the loop device completed a short write as a success, so the fsync
of the last group before the disk filled lied; only the next write failed. The writer now reads
its newest groups back from the device after any failure, and at close, and rewrites from memory
what did not arrive. The same situation is reproduced on a real ext4 file system when the
sandbox allows loop devices, and with a disk model behind the file-ops seam everywhere.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from signer.audit.checkpoint import CheckpointSigner
from signer.audit.events import EventType
from signer.audit.fileops import OsFileOps
from signer.audit.framing import scan_frames
from signer.audit.log import AuditLog
from signer.audit.query import iter_records
from signer.audit.readback import RecentWrites, WrittenSpan, restore
from signer.audit.record import record_hash
from signer.audit.verify import verify_log
from signer.errors import AuditError
from tests.audit_disk_model import PAGE, ModelDisk
from tests.audit_support import digest, make_signer


class Appender:
    """Appends sign_batch records and remembers the hash of every acknowledged one."""

    def __init__(self, log: AuditLog) -> None:
        self.log = log
        self.acked: dict[int, bytes] = {}

    def add(self, tag: str, digests: int) -> int:
        result = self.log.append(
            EventType.SIGN_BATCH,
            identity="issuer-a",
            profile="vaccination",
            request_id=tag,
            digests=[digest(tag, i) for i in range(digests)],
        )
        self.acked[result.seq] = result.record_hash
        return result.seq

    def lost(self, directory: Path) -> list[int]:
        """Acknowledged records that are missing or different in ``directory`` now."""
        on_disk = {r.seq: record_hash(r.encode()) for r in iter_records(directory)}
        return [seq for seq, digest_ in self.acked.items() if on_disk.get(seq) != digest_]


def resumed_details(directory: Path) -> list[dict[str, object]]:
    return [dict(r.details) for r in iter_records(directory) if r.event is EventType.LOG_RESUMED]


# --- the disk model (runs everywhere) ----------------------------------------------------------


@pytest.mark.parametrize("truncate_rewrites_page", [True, False])
@pytest.mark.parametrize("then", ["close", "append"])
def test_failed_fsync_that_drops_pages_loses_no_acknowledged_record(
    tmp_path: Path, then: str, truncate_rewrites_page: bool
) -> None:
    """fsync fails twice (the group's and the cut-back's): the dirty pages are dropped and their
    device copy, which held acknowledged bytes too, is garbage. Later fsyncs succeed."""
    disk = ModelDisk()
    disk.truncate_rewrites_partial_page = truncate_rewrites_page
    signer = make_signer()
    log = AuditLog(tmp_path, signer, file_ops=disk, checkpoint_every_records=10**9)
    appender = Appender(log)
    for i in range(3):
        appender.add(f"durable-{i}", 5)
    segment = tmp_path / "audit-000000000001.log"
    end = segment.stat().st_size
    page_start = end - end % PAGE
    assert end % PAGE, "the failed group must share a page with acknowledged records"

    disk.fail_fsyncs = 2
    with pytest.raises(AuditError, match="EIO"):
        appender.add("refused", 5)
    assert log.healthy is False
    assert disk.device[segment][page_start:end] == bytes(end - page_start), (
        "the model should have garbled acknowledged bytes"
    )
    if then == "append":
        appender.add("after", 1)
        assert log.healthy is True
    log.close()

    disk.remount()
    assert appender.lost(tmp_path) == []
    assert verify_log(tmp_path, signer.spki_der).ok
    if not truncate_rewrites_page:
        assert disk.rewrites == 1, "only the read-back can have put the dropped page back"
    if then == "append":
        (resumed,) = resumed_details(tmp_path)
        assert resumed["refused_records"] == 1
        if not truncate_rewrites_page:
            # record 1 was written again, and with it the whole page it shares with 2 and 3
            assert resumed["rewritten_first_seq"] == 1
            assert isinstance(resumed["rewritten_bytes"], int)
            assert 0 < resumed["rewritten_bytes"] < end
    with AuditLog(tmp_path, signer, file_ops=disk) as reopened:
        assert reopened.size == log.size


def test_fsync_that_lies_about_the_tail_is_caught_before_signing_resumes(tmp_path: Path) -> None:
    """The fsync of record 3 returns 0 but its last 5000 bytes never reach the device; the
    next write fails. Nothing is acknowledged again until record 3 reads back from the device."""
    disk = ModelDisk()
    signer = make_signer()
    log = AuditLog(tmp_path, signer, file_ops=disk, probe_interval=60)
    appender = Appender(log)
    appender.add("one", 2)
    appender.add("two", 2)
    disk.lose_tail = 5000  # more than the last page, which cutting the next group rewrites
    lied = appender.add("three", 200)
    disk.fail_fsyncs, disk.fail_errno = 1, errno.ENOSPC
    with pytest.raises(AuditError, match="ENOSPC"):
        appender.add("refused", 1)
    after = appender.add("after", 1)
    log.close()

    disk.remount()
    assert appender.lost(tmp_path) == []
    (resumed,) = resumed_details(tmp_path)
    assert resumed["rewritten_first_seq"] == resumed["rewritten_last_seq"] == lied
    assert isinstance(resumed["rewritten_bytes"], int) and resumed["rewritten_bytes"] > 5000
    assert resumed["refused_records"] == 1
    assert after == lied + 2  # the log_resumed record sits between them
    assert verify_log(tmp_path, signer.spki_der).ok


def test_close_restores_a_tail_the_device_lost_without_an_error(tmp_path: Path) -> None:
    disk = ModelDisk()
    signer = make_signer()
    log = AuditLog(tmp_path, signer, file_ops=disk)
    appender = Appender(log)
    appender.add("one", 3)
    disk.lose_tail = 50
    appender.add("last", 3)
    log.close()
    assert disk.rewrites == 1
    disk.remount()
    assert appender.lost(tmp_path) == []
    assert verify_log(tmp_path, signer.spki_der).ok


def test_signing_stays_stopped_while_the_lost_records_cannot_be_restored(tmp_path: Path) -> None:
    disk = ModelDisk()
    signer = make_signer()
    log = AuditLog(tmp_path, signer, file_ops=disk, probe_interval=60)
    appender = Appender(log)
    appender.add("one", 3)
    disk.lose_tail = 50
    appender.add("lied", 3)
    disk.fail_fsyncs = 10**6
    for attempt in range(3):
        with pytest.raises(AuditError):
            appender.add(f"refused-{attempt}", 1)
        assert log.healthy is False
    assert log.size == 2

    # An operator stops the daemon while the disk still fails: close says so, and signs the
    # final checkpoint anyway, so that the next start cannot quietly cut the lost records.
    with pytest.raises(AuditError, match=r"records 1\.\.2 could not be confirmed on disk"):
        log.close()
    disk.remount()
    with pytest.raises(AuditError, match="signed checkpoint covers 2 records"):
        AuditLog(tmp_path, signer)
    assert not verify_log(tmp_path, signer.spki_der).ok


def test_recent_writes_keep_the_newest_groups_within_a_budget(tmp_path: Path) -> None:
    recent = RecentWrites(keep_bytes=100)
    path = tmp_path / "audit-000000000001.log"
    for seq in range(1, 6):
        recent.add(WrittenSpan(path, (seq - 1) * 40, bytes([seq]) * 40, seq, seq))
    assert [s.first_seq for s in recent.spans()] == [4, 5]
    recent.add(WrittenSpan(path, 200, b"x" * 500, 6, 9))
    assert [s.first_seq for s in recent.spans()] == [6], "the newest group is always kept"
    with pytest.raises(ValueError):
        RecentWrites(keep_bytes=0)


def test_restore_reads_the_device_through_a_dropped_page_cache(tmp_path: Path) -> None:
    path = tmp_path / "audit-000000000001.log"
    path.write_bytes(b"a" * 10_000)
    ops = OsFileOps()
    span = WrittenSpan(path, 0, b"a" * 10_000, 1, 1)
    assert restore(ops, [span]).rewritten_bytes == 0
    changed = WrittenSpan(path, 4000, b"b" * 6000, 2, 3)
    result = restore(ops, [changed])
    assert (result.rewritten_bytes, result.first_seq, result.last_seq) == (6000, 2, 3)
    assert path.read_bytes() == b"a" * 4000 + b"b" * 6000


# --- ext4 on a loop device whose backing tmpfs fills up (root only) ----------------------------


@dataclass
class LoopExt4:
    """An ext4 file system on a loop device backed by a sparse image on a small tmpfs."""

    backing: Path
    mount_point: Path
    device: str

    def fill_backing_store(self, leave_pages: int) -> Path:
        """Fill the tmpfs under the image until only ``leave_pages`` pages are free."""
        filler = self.backing / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\xff" * PAGE)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        os.ftruncate(fd, os.fstat(fd).st_size - leave_pages * PAGE)
        os.close(fd)
        return filler

    def remount(self) -> None:
        """Unmount and mount again: whatever only lived in the page cache is gone."""
        _run("umount", str(self.mount_point))
        _run("mount", "-t", "ext4", self.device, str(self.mount_point))


def _run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result.stdout.strip()


@pytest.fixture
def loop_ext4(tmp_path: Path) -> Iterator[LoopExt4]:
    if os.geteuid() != 0 or not (shutil.which("losetup") and shutil.which("mkfs.ext4")):
        pytest.skip("an ext4 file system on a loop device needs root, losetup and mkfs.ext4")
    backing, mount_point = tmp_path / "backing", tmp_path / "mnt"
    backing.mkdir()
    mount_point.mkdir()
    try:
        _run("mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(backing))
    except RuntimeError as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    device = None
    try:
        image = backing / "disk.img"
        with image.open("wb") as f:
            f.truncate(64 * 1024 * 1024)
        try:
            device = _run("losetup", "--find", "--show", str(image))
        except RuntimeError as exc:
            pytest.skip(f"no loop device available: {exc}")
        # Inode tables and journal written now, so the only new backing pages are file data.
        _run(
            "mkfs.ext4",
            "-q",
            "-F",
            "-E",
            "nodiscard,lazy_itable_init=0,lazy_journal_init=0",
            device,
        )
        _run("mount", "-t", "ext4", device, str(mount_point))
        yield LoopExt4(backing, mount_point, device)
    finally:
        subprocess.run(["umount", str(mount_point)], capture_output=True, check=False)
        if device:
            subprocess.run(["losetup", "--detach", device], capture_output=True, check=False)
        subprocess.run(["umount", str(backing)], capture_output=True, check=False)


def test_ext4_on_a_filling_loop_device_keeps_every_acknowledged_record(
    loop_ext4: LoopExt4,
) -> None:
    directory = loop_ext4.mount_point / "audit"
    signer: CheckpointSigner = make_signer()
    log = AuditLog(directory, signer, checkpoint_every_seconds=3600, probe_interval=0.05)
    appender = Appender(log)
    for i in range(3):
        appender.add(f"before-{i}", 7)

    # One free page left under the image: the next record (about 20 KiB) needs several. The
    # loop device writes what fits and reports the short write as a success.
    filler = loop_ext4.fill_backing_store(leave_pages=1)
    big = appender.add("big", 600)
    with pytest.raises(AuditError, match=r"ENOSPC|EIO"):
        appender.add("refused", 600)
    assert log.healthy is False
    filler.unlink()
    appender.add("after", 3)
    assert log.healthy is True
    log.close()
    (resumed,) = resumed_details(directory)

    loop_ext4.remount()
    assert appender.lost(directory) == []
    assert resumed["rewritten_first_seq"] == big, "the lost write was not reproduced"
    assert verify_log(directory, signer.spki_der).ok
    with AuditLog(directory, signer) as reopened:
        assert reopened.size == log.size


def test_start_refuses_a_zeroed_block_inside_a_record_and_names_it(tmp_path: Path) -> None:
    signer = make_signer()
    with AuditLog(tmp_path, signer, checkpoint_every_seconds=3600) as log:
        for i in range(6):
            log.append(
                EventType.SIGN_BATCH, request_id=f"r{i}", digests=[digest(i, j) for j in range(40)]
            )
    segment = tmp_path / "audit-000000000001.log"
    frames = scan_frames(segment.read_bytes()).frames
    third = frames[2]
    data = bytearray(segment.read_bytes())
    data[third.offset + 200 : third.offset + 1224] = bytes(1024)  # what the lost write left
    segment.write_bytes(bytes(data))
    with pytest.raises(AuditError) as refused:
        AuditLog(tmp_path, signer)
    message = str(refused.value)
    assert f"audit-000000000001.log is damaged at offset {third.offset}" in message
    assert "where record 3 starts" in message and "intact records follow" in message
    assert segment.read_bytes() == bytes(data), "nothing may be cut from a refused log"
