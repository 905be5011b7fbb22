"""Queries (find by digest, tail) and the ``signer audit`` subcommands."""

import json
import shutil
from pathlib import Path

import pytest

from signer.audit.checkpoint import CheckpointSigner
from signer.audit.events import EventType
from signer.audit.log import AuditLog
from signer.audit.query import find_by_digest, latest_checkpoint, tail
from signer.audit.segments import LATEST_CHECKPOINT, list_segments
from signer.cli import main
from tests.audit_support import ORIGIN, digest, make_signer


@pytest.fixture
def signer() -> CheckpointSigner:
    return make_signer()


@pytest.fixture
def log_dir(tmp_path: Path, signer: CheckpointSigner) -> Path:
    directory = tmp_path / "audit"
    with AuditLog(directory, signer, segment_max_bytes=800) as log:
        log.append(EventType.DAEMON_START, details={"version": "0.1.0"})
        for i in range(1, 7):
            log.append(
                EventType.SIGN_BATCH,
                identity=f"issuer-{i % 2}",
                profile="vaccination",
                kid=bytes([i]) * 8,
                request_id=f"req-{i}",
                digests=[digest(i, j) for j in range(4)],
                signatures=[bytes([i, j]) * 32 for j in range(4)],
            )
        log.append(EventType.DAEMON_STOP)
    assert len(list_segments(directory)) > 1
    return directory


def test_find_by_digest(log_dir: Path) -> None:
    (match,) = find_by_digest(log_dir, digest(5, 2))
    assert match.seq == 6
    assert match.event == "sign_batch"
    assert match.identity == "issuer-1"
    assert match.profile == "vaccination"
    assert match.kid == bytes([5]) * 8
    assert match.request_id == "req-5"
    assert match.index == 2
    assert match.time_ns > 0
    assert find_by_digest(log_dir, digest("never", "signed")) == []
    with pytest.raises(ValueError, match="32 bytes"):
        find_by_digest(log_dir, b"short")


def test_tail(log_dir: Path) -> None:
    records = tail(log_dir, 3)
    assert [r.seq for r in records] == [6, 7, 8]
    assert records[-1].event is EventType.DAEMON_STOP
    assert [r.seq for r in tail(log_dir, 100)] == list(range(1, 9))
    assert tail(log_dir, 0) == []


def test_latest_checkpoint(log_dir: Path) -> None:
    note = latest_checkpoint(log_dir)
    assert note is not None and note.startswith(f"{ORIGIN}\n8\n")


def run_cli(argv: list[str]) -> int:
    return main(["audit", *argv])


def test_cli_verify(
    tmp_path: Path, log_dir: Path, signer: CheckpointSigner, capsys: pytest.CaptureFixture[str]
) -> None:
    pubkey = tmp_path / "audit.der"
    pubkey.write_bytes(signer.spki_der)
    kept = tmp_path / "kept.txt"
    shutil.copy(log_dir / LATEST_CHECKPOINT, kept)
    argv = ["verify", "--dir", str(log_dir), "--pubkey", str(pubkey), "--checkpoint", str(kept)]
    assert run_cli(argv) == 0
    assert "intact: 8 records" in capsys.readouterr().out

    last = list_segments(log_dir)[-1].path
    last.write_bytes(last.read_bytes()[:-3])
    assert run_cli(argv) == 1
    assert capsys.readouterr().out.startswith("truncated")
    assert run_cli([*argv, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["fault"] == "truncated"
    assert report["first_bad_seq"] == 8

    assert run_cli(["verify", "--dir", str(log_dir), "--pubkey", str(tmp_path / "nope")]) == 2


def test_cli_find_and_tail(log_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["find", digest(3, 0).hex(), "--dir", str(log_dir)]) == 0
    out = capsys.readouterr().out
    assert "seq 4 " in out and "request=req-3" in out and "kid=" + "03" * 8 in out

    assert run_cli(["find", digest(3, 0).hex(), "--dir", str(log_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["seq"] == 4

    assert run_cli(["find", digest("x").hex(), "--dir", str(log_dir)]) == 1
    assert "not found" in capsys.readouterr().out
    assert run_cli(["find", "abcd", "--dir", str(log_dir)]) == 2

    assert run_cli(["tail", "--dir", str(log_dir), "-n", "2", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["seq"] for line in lines] == [7, 8]
    assert lines[0]["digests"][1] == digest(6, 1).hex()
    assert lines[1]["event"] == "daemon_stop"

    assert run_cli(["tail", "--dir", str(log_dir)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 8


def test_cli_verify_exits_3_on_a_repair_that_cut_bytes(
    tmp_path: Path, log_dir: Path, signer: CheckpointSigner, capsys: pytest.CaptureFixture[str]
) -> None:
    pubkey = tmp_path / "audit.der"
    pubkey.write_bytes(signer.spki_der)
    with list_segments(log_dir)[-1].path.open("ab") as segment:
        segment.write(b"\x00\x00\x00")  # a torn length prefix
    with AuditLog(log_dir, signer):
        pass  # the writer cuts the 3 bytes and records the cut
    argv = ["verify", "--dir", str(log_dir), "--pubkey", str(pubkey)]
    assert run_cli(argv) == 3
    out = capsys.readouterr().out
    assert "log_repaired at seq 9" in out and "cut 3 bytes" in out

    assert run_cli([*argv, "--json"]) == 3
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["fault"] is None
    (finding,) = report["findings"]
    assert (finding["kind"], finding["seq"]) == ("log_repaired", 9)
