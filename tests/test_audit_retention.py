"""``signer audit prune-checkpoints``: old checkpoint files go, what the mirror lacks stays."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from signer.audit.events import EventType
from signer.audit.log import AuditLog
from signer.audit.segments import CHECKPOINT_DIR, LATEST_CHECKPOINT
from signer.audit.verify import verify_log
from tests.audit_support import make_signer
from tests.conftest import ROOT


def sizes(directory: Path) -> list[int]:
    return sorted(int(p.stem) for p in (directory / CHECKPOINT_DIR).iterdir())


def test_prune_keeps_the_newest_and_everything_the_mirror_lacks(tmp_path: Path) -> None:
    signer = make_signer()
    audit = tmp_path / "audit"
    with AuditLog(audit, signer, checkpoint_every_records=1) as log:
        for number in range(12):
            log.append(EventType.DAEMON_START, details={"n": number})
    every = sizes(audit)
    assert len(every) == 12
    latest = (audit / LATEST_CHECKPOINT).read_text()

    def prune(*args: str) -> str:
        command = ["audit", "prune-checkpoints", "--dir", str(audit), *args]
        result = subprocess.run(
            [sys.executable, "-m", "signer.cli", *command],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "would remove 7 checkpoint files" in prune("--keep", "2", "--mirrored", "7", "--dry-run")
    assert sizes(audit) == every
    assert "removed 7 checkpoint files (sizes 1..7)" in prune("--keep", "2", "--mirrored", "7")
    assert sizes(audit) == every[7:], "above the mirror's size everything stays"
    assert "removed 3 checkpoint files" in prune("--keep", "2", "--mirrored", "100")
    assert sizes(audit) == every[-2:]
    assert (audit / LATEST_CHECKPOINT).read_text() == latest
    report = verify_log(audit, signer.spki_der)
    assert report.ok and report.records_checked == 12, report.message
