"""Checkpoints that survive crash loops (issue 12, item 8).

A checkpoint timer that starts with each process never fires when every run is shorter than
the interval. The writer now checkpoints right after start-up whenever records lie past the
newest checkpoint (a crash, a cut torn tail), and measures the interval from the newest
checkpoint's own timestamp, so restarts do not reset it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from signer.audit.cadence import CheckpointClock
from signer.audit.checkpoint import open_checkpoint
from signer.audit.events import EventType
from signer.audit.log import AuditLog
from signer.audit.segments import LATEST_CHECKPOINT, list_checkpoint_files, list_segments
from signer.audit.verify import verify_log
from tests.audit_support import digest, make_signer

T0 = 1_800_000_000.0


def latest_size(directory: Path, spki: bytes) -> int | None:
    path = directory / LATEST_CHECKPOINT
    if not path.exists():
        return None
    key = serialization.load_der_public_key(spki)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return open_checkpoint(path.read_text(), key).size


def checkpoint_sizes(directory: Path) -> list[int]:
    return [int(p.stem) for p in list_checkpoint_files(directory) if p.suffix == ".txt"]


def test_clock_counts_from_the_newest_checkpoint() -> None:
    clock = CheckpointClock(interval=60, opened=T0 + 500, last_checkpoint=T0)
    assert clock.seconds_until_due(T0 + 510) == -450, "a restart must not reset the interval"
    assert CheckpointClock(60, opened=T0).seconds_until_due(T0 + 20) == 40
    failed = CheckpointClock(60, opened=T0, last_checkpoint=T0, last_failure=T0 + 100)
    assert failed.seconds_until_due(T0 + 130) == 30, "a failed attempt is retried an interval later"
    went_back = CheckpointClock(60, opened=T0, last_checkpoint=T0 + 3600)
    assert went_back.seconds_until_due(T0 + 10) == 0, "a clock set back must not stall checkpoints"
    retried = CheckpointClock(60, opened=T0, last_checkpoint=T0 + 3600, last_failure=T0 + 10)
    assert retried.seconds_until_due(T0 + 20) == 50, "nor retry a failing checkpoint in a loop"


def test_checkpoint_right_after_a_start_that_cut_a_torn_tail(tmp_path: Path) -> None:
    signer = make_signer()
    with AuditLog(tmp_path, signer, checkpoint_every_seconds=3600) as log:
        for i in range(4):
            log.append(EventType.SIGN_BATCH, digests=[digest(i)])
    assert latest_size(tmp_path, signer.spki_der) == 4
    with list_segments(tmp_path)[-1].path.open("ab") as segment:
        segment.write(b"\x00\x00\x01\x00\xab torn")

    log = AuditLog(tmp_path, signer, checkpoint_every_seconds=3600)
    try:
        # open() has returned: the repair record is written and already checkpointed
        assert log.size == 5
        assert latest_size(tmp_path, signer.spki_der) == 5
        assert checkpoint_sizes(tmp_path) == [4, 5]
        assert log.checkpoint_error is None
    finally:
        log.close()


_SHORT_RUN = r"""
import os, signal, sys
from pathlib import Path
from cryptography.hazmat.primitives import serialization
sys.path.insert(0, sys.argv[3])
from signer.audit.events import EventType
from signer.audit.log import AuditLog
from tests.audit_support import digest, make_signer

key = serialization.load_pem_private_key(Path(sys.argv[2]).read_bytes(), None)
log = AuditLog(sys.argv[1], make_signer(key), checkpoint_every_seconds=60)
for i in range(2):
    log.append(EventType.SIGN_BATCH, digests=[digest(sys.argv[4], i)])
os.kill(os.getpid(), signal.SIGKILL)  # crash: no close, no final checkpoint
"""


def test_a_crash_loop_of_short_runs_still_makes_checkpoints(tmp_path: Path) -> None:
    priv = ec.generate_private_key(ec.SECP256R1())
    key_file = tmp_path / "audit-key.pem"
    key_file.write_bytes(
        priv.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    directory = tmp_path / "audit"
    root = str(Path(__file__).parent.parent)
    runs = 4
    for run in range(runs):
        proc = subprocess.run(
            [sys.executable, "-c", _SHORT_RUN, str(directory), str(key_file), root, str(run)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == -9, proc.stderr  # each run lived far less than 60 s
    # every run after the first found the previous run's records unsigned and signed them
    assert checkpoint_sizes(directory) == [2, 4, 6]
    spki = make_signer(priv).spki_der
    report = verify_log(directory, spki)
    assert report.ok and report.records_checked == 2 * runs, report.message
    assert latest_size(directory, spki) == 6


def test_interval_is_measured_from_the_last_checkpoint_across_restarts(tmp_path: Path) -> None:
    now = [T0]
    signer = make_signer()

    def clock_ns() -> int:
        return int(now[0] * 1e9)

    with AuditLog(tmp_path, signer, clock_ns=clock_ns, checkpoint_every_seconds=60) as log:
        log.append(EventType.DAEMON_START)
    assert checkpoint_sizes(tmp_path) == [1]  # at close, timestamp T0

    now[0] = T0 + 40  # a new run starts 40 s after that checkpoint
    log = AuditLog(tmp_path, signer, clock_ns=clock_ns, checkpoint_every_seconds=60)
    try:
        log.append(EventType.DAEMON_START)
        assert checkpoint_sizes(tmp_path) == [1], "40 s after the last checkpoint: not due yet"
        now[0] = T0 + 61  # this run is 21 s old, but the last checkpoint is 61 s old
        log.append(EventType.DAEMON_START)
        # The writer signs right after the group that made it due, before it takes the next
        # group: once the next append returns, the checkpoint at size 3 is on disk.
        log.append(EventType.DAEMON_STOP)
        assert checkpoint_sizes(tmp_path) == [1, 3]
    finally:
        log.close()
    note = (tmp_path / "checkpoints" / "000000000003.txt").read_text()
    assert f"timestamp {int(T0 + 61)}\n" in note
