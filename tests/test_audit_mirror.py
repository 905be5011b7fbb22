"""The auditor's mirror against real audit directories written by the real writer.

The source is a folder (:class:`FolderSource`); the test against the daemon, over gRPC and with
a checkpoint re-signed through the HSM, is in ``test_audit_mirror_daemon.py``. The audit key
here is a software key, the HSM's stand-in of the audit unit tests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from signer.audit.checkpoint import CheckpointSigner
from signer.audit.events import EventType
from signer.audit.log import AuditLog
from signer.audit.mirror import (
    PUBLIC_KEY_FILE,
    STATE_FILE,
    LogModified,
    Mirror,
    MirrorFinding,
    MirrorSetupError,
)
from signer.audit.segments import list_segments, segment_name
from signer.audit.stored import (
    FolderSource,
    RecordsNotHere,
    RecordStreamError,
    split_frames,
    stored_frames,
)
from signer.audit.verify import verify_log
from tests.audit_rewrite import rewrite_log
from tests.audit_support import digest, make_signer


def add_records(directory: Path, signer: CheckpointSigner, count: int, tag: str) -> int:
    """Append ``count`` sign_batch records with the real writer; closing signs a checkpoint."""
    with AuditLog(directory, signer) as log:
        for number in range(count):
            seq = log.append(
                EventType.SIGN_BATCH,
                identity="CN=issuer",
                profile="vaccination",
                kid=b"\x01" * 8,
                request_id=f"{tag}-{number}",
                digests=[digest(tag, number, i) for i in range(3)],
            ).seq
    return seq


class CountingSource(FolderSource):
    """A folder source that remembers how many records each pull streamed."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.streamed = 0

    def records_after(self, seq: int, limit: int | None = None) -> Iterator[bytes]:
        for payload in super().records_after(seq, limit):
            self.streamed += 1
            yield payload


def snapshot(directory: Path) -> dict[str, str]:
    """Every file of a folder and the SHA-256 of its content."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != ".lock"
    }


@pytest.fixture
def signer() -> CheckpointSigner:
    return make_signer()


def public_pem(signer: CheckpointSigner) -> bytes:
    from asn1crypto import pem

    return bytes(pem.armor("PUBLIC KEY", signer.spki_der))


def test_mirror_pulls_only_what_is_new_and_is_an_audit_directory(
    tmp_path: Path, signer: CheckpointSigner
) -> None:
    appliance, copy = tmp_path / "appliance", tmp_path / "mirror"
    first = add_records(appliance, signer, 6, "a")
    source = CountingSource(appliance)
    with Mirror(copy, public_key=public_pem(signer), segment_max_bytes=400) as mirror:
        report = mirror.pull(source)
        assert (report.before, report.size, report.checkpoint_size) == (0, first, first)
        assert source.streamed == first
        second = add_records(appliance, signer, 4, "b")
        source.streamed = 0
        report = mirror.pull(source)
        assert (report.before, report.size, report.new_records) == (first, second, second - first)
        # the record at the mirror's head again, then only the new ones
        assert source.streamed == second - first + 1
        assert "4 new records" in report.message and f"size {second} verified" in report.message
        again = mirror.pull(source)
        assert again.new_records == 0 and "no new records" in again.message
    assert len(list_segments(copy)) > 1, "small segments: the copy rolled over"
    result = verify_log(copy, (copy / PUBLIC_KEY_FILE).read_bytes())
    assert result.ok and result.records_checked == second, result.message
    assert result.checkpoints_checked == 2
    assert result.head == verify_log(appliance, signer.spki_der).head


def test_a_rewrite_signed_anew_is_reported_as_modified_and_the_mirror_keeps_the_original(
    tmp_path: Path, signer: CheckpointSigner
) -> None:
    appliance, copy = tmp_path / "appliance", tmp_path / "mirror"
    size = add_records(appliance, signer, 12, "a")
    with Mirror(copy, public_key=public_pem(signer), segment_max_bytes=500) as mirror:
        mirror.pull(FolderSource(appliance))
    kept = snapshot(copy)

    rewrite_log(appliance, signer, drop=5)
    add_records(appliance, signer, 3, "after")  # the appliance carries on
    assert verify_log(appliance, signer.spki_der).ok, "the appliance alone sees nothing"

    with Mirror(copy) as mirror, pytest.raises(LogModified) as found:
        mirror.pull(FolderSource(appliance))
    assert found.value.seq == 5
    assert "modified at sequence 5" in str(found.value)
    assert "differs from the mirror's copy" in str(found.value)
    assert snapshot(copy) == kept
    assert verify_log(copy, signer.spki_der).records_checked == size


def test_a_cut_log_is_reported_as_modified_where_the_cut_begins(
    tmp_path: Path, signer: CheckpointSigner
) -> None:
    appliance, copy = tmp_path / "appliance", tmp_path / "mirror"
    add_records(appliance, signer, 10, "a")
    with Mirror(copy, public_key=public_pem(signer)) as mirror:
        mirror.pull(FolderSource(appliance))
        kept = snapshot(copy)
        rewrite_log(appliance, signer, keep=7)
        with pytest.raises(LogModified) as found:
            mirror.pull(FolderSource(appliance))
    assert found.value.seq == 8
    assert "no longer has record 8" in str(found.value)
    assert snapshot(copy) == kept


def test_a_checkpoint_of_another_key_stores_nothing(
    tmp_path: Path, signer: CheckpointSigner
) -> None:
    appliance, copy = tmp_path / "appliance", tmp_path / "mirror"
    add_records(appliance, signer, 4, "a")
    with Mirror(copy, public_key=public_pem(make_signer())) as mirror:
        kept = snapshot(copy)
        with pytest.raises(MirrorFinding, match="does not verify with the mirror's audit key"):
            mirror.pull(FolderSource(appliance))
        assert mirror.state.size == 0
    assert snapshot(copy) == kept
    assert not list_segments(copy)


def test_records_changed_after_signing_never_enter_the_mirror(
    tmp_path: Path, signer: CheckpointSigner
) -> None:
    appliance, copy = tmp_path / "appliance", tmp_path / "mirror"
    first = add_records(appliance, signer, 5, "a")
    with Mirror(copy, public_key=public_pem(signer)) as mirror:
        mirror.pull(FolderSource(appliance))
        kept = snapshot(copy)
        add_records(appliance, signer, 5, "b")
        segment = list_segments(appliance)[-1].path
        data = segment.read_bytes()
        at = data.index(digest("b", 2, 1))
        segment.write_bytes(data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :])
        with pytest.raises(MirrorFinding) as found:
            mirror.pull(FolderSource(appliance))
        assert found.value.seq == first + 4, str(found.value)
        assert "does not continue the chain" in str(found.value)
        assert mirror.state.size == first
    assert snapshot(copy) == kept


def test_a_pull_that_did_not_commit_is_cut_on_the_next_open(
    tmp_path: Path, signer: CheckpointSigner
) -> None:
    appliance, copy = tmp_path / "appliance", tmp_path / "mirror"
    add_records(appliance, signer, 5, "a")
    with Mirror(copy, public_key=public_pem(signer)) as mirror:
        mirror.pull(FolderSource(appliance))
    kept = snapshot(copy)
    # what a pull killed before writing mirror.json leaves behind
    with (copy / segment_name(1)).open("ab") as segment:
        segment.write(b"\x00\x00\x00\x09half")
    (copy / segment_name(6)).write_bytes(b"\x00\x00\x00\x01x")
    with Mirror(copy) as mirror:
        assert snapshot(copy) == kept
        size = add_records(appliance, signer, 2, "b")
        assert mirror.pull(FolderSource(appliance)).size == size
    assert verify_log(copy, signer.spki_der).ok


def test_mirror_folders_are_checked_before_use(tmp_path: Path, signer: CheckpointSigner) -> None:
    with pytest.raises(MirrorSetupError, match="--pubkey"):
        Mirror(tmp_path / "new")
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(MirrorSetupError, match="not a mirror"):
        Mirror(stranger, public_key=public_pem(signer))
    copy = tmp_path / "mirror"
    with (
        Mirror(copy, public_key=public_pem(signer)),
        pytest.raises(MirrorSetupError, match="in use"),
    ):
        Mirror(copy)
    with pytest.raises(MirrorSetupError, match="another audit key"):
        Mirror(copy, public_key=public_pem(make_signer()))
    with Mirror(copy, public_key=public_pem(signer), origin="test.example/audit"):
        pass
    (copy / STATE_FILE).write_text("{")
    with pytest.raises(MirrorSetupError, match="damaged"):
        Mirror(copy)


def test_stored_frames_split_back_into_the_records_in_any_chunking(
    tmp_path: Path, signer: CheckpointSigner
) -> None:
    appliance = tmp_path / "appliance"
    size = add_records(appliance, signer, 7, "a")
    frames = b"".join(stored_frames(appliance, 2))
    whole = list(split_frames([frames]))
    assert len(whole) == size - 2
    for chunk in (1, 3, 64):
        pieces = [frames[i : i + chunk] for i in range(0, len(frames), chunk)]
        assert list(split_frames(pieces)) == whole
    assert len(list(stored_frames(appliance, 2, upto=4))) == 2
    assert len(list(stored_frames(appliance, 0, limit=1))) == 1
    assert not list(stored_frames(appliance, size))
    with pytest.raises(RecordStreamError, match="ended inside a record"):
        list(split_frames([frames[:-1]]))
    with pytest.raises(RecordStreamError, match="frame of 0 bytes"):
        list(split_frames([b"\x00\x00\x00\x00"]))


def test_records_of_archived_segments_are_refused_not_replaced_by_later_ones(
    tmp_path: Path, signer: CheckpointSigner
) -> None:
    appliance = tmp_path / "appliance"
    with AuditLog(appliance, signer, segment_max_bytes=300) as log:
        for number in range(8):
            log.append(EventType.DAEMON_START, details={"n": number})
    segments = list_segments(appliance)
    assert len(segments) > 2
    segments[0].path.rename(tmp_path / segments[0].path.name)  # archived off the appliance
    with pytest.raises(RecordsNotHere, match=f"starts at record {segments[1].first_seq}"):
        next(stored_frames(appliance, 0))
    assert len(list(stored_frames(appliance, segments[1].first_seq - 1, limit=1))) == 1


def test_a_long_running_mirror_checks_checkpoints_behind_its_head_over_many_pulls(
    tmp_path: Path, signer: CheckpointSigner
) -> None:
    appliance, copy = tmp_path / "appliance", tmp_path / "mirror"
    add_records(appliance, signer, 3, "a")
    source = FolderSource(appliance)
    with Mirror(copy, public_key=public_pem(signer)) as mirror:
        mirror.pull(source)
        for round_number in range(3):
            # the daemon keeps writing; its newest checkpoint lags behind the newest record
            with AuditLog(appliance, signer) as log:
                for number in range(4):
                    log.append(EventType.DAEMON_START, details={"r": round_number, "n": number})
                report = mirror.pull(source)
                assert report.checkpoint_size < report.size
    assert verify_log(copy, signer.spki_der).records_checked == mirror.state.size
