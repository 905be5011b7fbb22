"""The audit log as the real daemon writes it: crashes, a full disk, tampering, queries.

Everything runs against ``signer serve`` on a real SoftHSM token (see ``conftest.py``); the log
is read back with the same offline tools an auditor uses (``signer audit ...``).
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2

from signer.audit.checkpoint import key_id, load_audit_public_key, open_checkpoint, spki_der
from signer.audit.events import EventType
from signer.audit.framing import scan_frames
from signer.audit.query import iter_records
from signer.audit.record import decode_record
from signer.audit.segments import CHECKPOINT_DIR, LATEST_CHECKPOINT, list_segments
from signer.v1 import audit_pb2, audit_pb2_grpc, signing_pb2, signing_pb2_grpc
from tests.conftest import Appliance, MakeAppliance

PROFILE = "vaccination"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def digest_of(*parts: object) -> bytes:
    return hashlib.sha256("/".join(map(str, parts)).encode()).digest()


def sign_request(kid: bytes, batch: list[bytes], request_id: str) -> signing_pb2.SignBatchRequest:
    return signing_pb2.SignBatchRequest(
        profile=PROFILE, kid=kid, digests=batch, request_id=request_id
    )


def signed_digests(audit_dir: Path) -> dict[bytes, list[int]]:
    """Digest -> sequence numbers of the sign_batch records that name it."""
    found: dict[bytes, list[int]] = {}
    for record in iter_records(audit_dir):
        if record.event is EventType.SIGN_BATCH:
            for digest in record.digests:
                found.setdefault(digest, []).append(record.seq)
    return found


def verify_cli(
    appliance: Appliance, directory: Path, *checkpoints: Path
) -> tuple[int, dict[str, object]]:
    """Run ``signer audit verify --json`` on ``directory``; return exit code and report."""
    args = ["audit", "verify", "--dir", str(directory), "--pubkey", str(appliance.audit_public_key)]
    for checkpoint in checkpoints:
        args += ["--checkpoint", str(checkpoint)]
    result = appliance.cli(*args, "--json", check=False)
    assert result.stdout, result.stderr.decode()
    report = json.loads(result.stdout)
    assert isinstance(report, dict)
    return result.returncode, report


def finding_seqs(report: dict[str, object]) -> list[int]:
    """Sequence numbers of the records that ``audit verify --json`` reported as findings."""
    findings = report["findings"]
    assert isinstance(findings, list)
    return [finding["seq"] for finding in findings]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


# --- crash: SIGKILL while clients sign ---------------------------------------------------------


def test_sigkill_during_signing_leaves_no_unlogged_signature(make_appliance: MakeAppliance) -> None:
    # 1 MiB segments, so the run also crosses segment roll-overs.
    appliance = make_appliance({"audit": {"segment_max_mb": 1}})
    kid = appliance.signing_key().kid
    received: list[bytes] = []
    refused = [0]
    stop = threading.Event()
    errors: list[BaseException] = []

    def client(number: int, batch_size: int) -> None:
        with grpc.insecure_channel(appliance.address) as channel:
            stub = signing_pb2_grpc.SigningStub(channel)
            i = 0
            while not stop.is_set():
                batch = [digest_of("crash", number, i, j) for j in range(batch_size)]
                i += 1
                try:
                    reply = stub.SignBatch(
                        sign_request(kid, batch, f"crash-{number}-{i}"), timeout=10
                    )
                except grpc.RpcError as exc:
                    assert exc.code() in (
                        grpc.StatusCode.UNAVAILABLE,
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        grpc.StatusCode.CANCELLED,
                    ), exc
                    refused[0] += 1
                    time.sleep(0.02)
                    continue
                except BaseException as exc:  # pragma: no cover - reported below
                    errors.append(exc)
                    return
                if len(reply.signatures) != len(batch):
                    errors.append(AssertionError(f"{len(reply.signatures)} != {len(batch)}"))
                    return
                received.extend(batch)  # only what came back with signatures

    # Single-digest clients (many small group commits) and big batches (long writes that a
    # SIGKILL may tear).
    sizes = [1, 1, 1, 1, 400, 2000]
    threads = [
        threading.Thread(target=client, args=(n, size), daemon=True) for n, size in enumerate(sizes)
    ]
    for thread in threads:
        thread.start()

    def grown(by: int) -> Callable[[], bool]:
        start = len(received)
        return lambda: len(received) > start + by

    kills = 3
    progress = []
    try:
        for round_ in range(kills):
            wait_for(grown(8000), 20, "signatures before a kill")
            time.sleep(0.05 * round_)  # vary the moment within a group commit
            appliance.stop(signal.SIGKILL)
            progress.append(len(received))
            appliance.start()
        wait_for(grown(1000), 20, "signatures after the last restart")
        wait_for(lambda: len(list_segments(appliance.audit_dir)) > 1, 60, "a segment roll-over")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not errors, errors
    appliance.stop()

    code, report = verify_cli(appliance, appliance.audit_dir)
    records = list(iter_records(appliance.audit_dir))
    cuts = [r.seq for r in records if r.event is EventType.LOG_REPAIRED]
    # intact chain; each cut torn tail is a finding (exit 3), named by its repair record
    assert report["ok"] and code == (3 if cuts else 0), report
    assert finding_seqs(report) == cuts, report
    logged = signed_digests(appliance.audit_dir)
    unlogged = [d.hex() for d in received if d not in logged]
    assert not unlogged, f"{len(unlogged)} signatures left the daemon unlogged: {unlogged[:3]}"
    assert len(set(received)) == len(received), "a digest was signed twice"
    events = [r.event for r in records]
    assert events.count(EventType.DAEMON_START) == kills + 1
    assert events.count(EventType.DAEMON_STOP) == 1  # only the final, orderly stop
    assert len(list_segments(appliance.audit_dir)) > 1, "the run should cross a segment roll-over"
    for repair in (r for r in records if r.event is EventType.LOG_REPAIRED):
        # a torn tail may or may not have been left; when one was cut, the cut is described
        assert repair.details["bytes_cut"] > 0, repair
    print(
        f"received={len(received)} refused={refused[0]} kills_at={progress} "
        f"records={len(records)} repairs={events.count(EventType.LOG_REPAIRED)}"
    )

    # A kill in the middle of a big write leaves the front of a frame at the end (rare with
    # SIGKILL on a local disk, so make one): the daemon cuts it, records the cut, goes on.
    last_segment = list_segments(appliance.audit_dir)[-1].path
    scan = scan_frames(last_segment.read_bytes())
    biggest = max(scan.frames, key=lambda f: len(f.payload))
    torn = last_segment.read_bytes()[biggest.offset : biggest.offset + len(biggest.payload) // 2]
    with last_segment.open("ab") as segment:
        segment.write(torn)
    code, report = verify_cli(appliance, appliance.audit_dir)
    assert (code, report["fault"]) == (1, "torn_tail"), report
    appliance.start()
    reply = appliance.signing().SignBatch(
        sign_request(kid, [digest_of("after the cut")], "after-cut"), timeout=10
    )
    appliance.stop()
    code, report = verify_cli(appliance, appliance.audit_dir)
    tail = list(iter_records(appliance.audit_dir))[len(records) :]
    assert (code, report["ok"]) == (3, True), report
    assert finding_seqs(report) == [*cuts, tail[0].seq], report
    assert [r.event for r in tail] == [
        EventType.LOG_REPAIRED,
        EventType.DAEMON_START,
        EventType.SIGN_BATCH,
        EventType.DAEMON_STOP,
    ]
    assert tail[0].details["bytes_cut"] == len(torn)
    assert tail[2].seq == reply.audit_sequence and tail[2].prev != tail[1].prev
    logged = signed_digests(appliance.audit_dir)
    assert not [d for d in received if d not in logged]


# --- disk full ---------------------------------------------------------------------------------


@pytest.fixture
def small_audit_disk(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs mounted where the appliance named ``a`` keeps its audit log."""
    mount_point = tmp_path / "a" / "audit"
    mount_point.mkdir(parents=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the audit log needs root")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here (container without CAP_SYS_ADMIN?): {result.stderr}"
        )
    try:
        yield mount_point
    finally:
        # the daemon is stopped by the test itself; fall back to a lazy unmount if still busy
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path) -> Path:
    """Write a filler file until the file system is full."""
    filler = directory / "filler"
    chunk = b"\xff" * 4096
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, chunk)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


def test_full_audit_disk_refuses_signing_and_recovers(
    small_audit_disk: Path, make_appliance: MakeAppliance
) -> None:
    appliance = make_appliance(name="a")
    assert appliance.audit_dir == small_audit_disk
    try:
        kid = appliance.signing_key().kid
        stub = appliance.signing()
        ok = stub.SignBatch(sign_request(kid, [digest_of("before")], "before"), timeout=10)
        assert ok.audit_sequence > 0

        filler = fill(small_audit_disk)
        # A batch bigger than a page cannot land in the slack of the segment's last page.
        refused = [digest_of("refused", i) for i in range(300)]
        with pytest.raises(grpc.RpcError) as caught:
            stub.SignBatch(sign_request(kid, refused, "refused-1"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value
        assert "audit" in (caught.value.details() or ""), caught.value.details()
        wait_for(lambda: appliance.health() == NOT_SERVING, 10, "health NOT_SERVING")
        assert appliance.health("signer.v1.Signing") == NOT_SERVING
        time.sleep(1.5)  # the writer keeps probing; a full disk keeps it NOT_SERVING
        assert appliance.health() == NOT_SERVING
        with pytest.raises(grpc.RpcError) as again:
            stub.SignBatch(sign_request(kid, refused, "refused-2"), timeout=10)
        assert again.value.code() == grpc.StatusCode.UNAVAILABLE
        # While the log is known to be failing, nothing is even sent to the HSM.
        assert "signing is stopped" in (again.value.details() or ""), again.value.details()

        filler.unlink()
        # No request needed: the writer notices by itself that the disk takes writes again.
        wait_for(lambda: appliance.health() == SERVING, 15, "health SERVING after freeing space")
        after = [digest_of("after", i) for i in range(300)]
        reply = stub.SignBatch(sign_request(kid, after, "after"), timeout=10)
        assert len(reply.signatures) == len(after)
        assert reply.audit_sequence > ok.audit_sequence
    finally:
        appliance.stop()

    code, report = verify_cli(appliance, appliance.audit_dir)
    assert code == 0 and report["ok"], report
    logged = signed_digests(appliance.audit_dir)
    assert digest_of("before") in logged and all(d in logged for d in after)
    assert not any(d in logged for d in refused), "a refused batch must not be in the log"
    records = list(iter_records(appliance.audit_dir))
    resumed = [r for r in records if r.event is EventType.LOG_RESUMED]
    assert len(resumed) == 1, [r.event for r in records]
    assert resumed[0].details["failed_writes"] >= 1
    assert resumed[0].seq < next(r.seq for r in records if r.request_id == "after")


# --- tampering, found by the offline verifier --------------------------------------------------


def _frames(audit_dir: Path) -> tuple[Path, bytes, list[tuple[int, int, int]]]:
    """The single segment, its bytes, and (seq, start, end) of every frame in it."""
    segments = list_segments(audit_dir)
    assert len(segments) == 1
    data = segments[0].path.read_bytes()
    scan = scan_frames(data)
    assert scan.problem is None
    spans = [(decode_record(f.payload).seq, f.offset, f.end) for f in scan.frames]
    return segments[0].path, data, spans


def _drop_checkpoints_above(audit_dir: Path, size: int) -> None:
    """What a careful attacker does after cutting the log: remove what would betray it."""
    (audit_dir / LATEST_CHECKPOINT).unlink()
    for path in (audit_dir / CHECKPOINT_DIR).iterdir():
        if int(path.stem) > size:
            path.unlink()


def test_verifier_names_each_kind_of_tampering(
    make_appliance: MakeAppliance, tmp_path: Path
) -> None:
    appliance = make_appliance()
    kid = appliance.signing_key().kid
    stub = appliance.signing()
    seqs = []
    for i in range(12):
        batch = [digest_of("tamper", i, j) for j in range(3)]
        seqs.append(
            stub.SignBatch(sign_request(kid, batch, f"tamper-{i}"), timeout=10).audit_sequence
        )
    last = seqs[-1]
    audit = audit_pb2_grpc.AuditStub(appliance.channel())
    wait_for(
        lambda: (
            audit.GetLatestCheckpoint(audit_pb2.GetLatestCheckpointRequest(), timeout=5).size
            >= last
        ),
        10,
        "a checkpoint covering the signed batches",
    )
    kept = audit.GetLatestCheckpoint(audit_pb2.GetLatestCheckpointRequest(), timeout=5)
    auditor_copy = tmp_path / "auditor-checkpoint.txt"  # the auditor's own store
    auditor_copy.write_text(kept.note)
    appliance.stop()

    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(appliance.audit_dir, target)
        return target

    code, report = verify_cli(appliance, copy("intact"), auditor_copy)
    assert code == 0 and report["ok"], report
    size = int(kept.size)
    segment, data, spans = _frames(appliance.audit_dir)
    by_seq = {seq: (start, end) for seq, start, end in spans}
    target_seq = seqs[6]  # a sign_batch record well inside the checkpointed prefix

    # 1. one byte of a signed digest flipped
    flipped = copy("flipped")
    start, end = by_seq[target_seq]
    digest = digest_of("tamper", 6, 1)
    at = data.index(digest, start, end)
    (flipped / segment.name).write_bytes(data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :])
    code, report = verify_cli(appliance, flipped, auditor_copy)
    assert (code, report["fault"], report["first_bad_seq"]) == (1, "modified", target_seq), report

    # 2. one record deleted
    deleted = copy("deleted")
    (deleted / segment.name).write_bytes(data[:start] + data[end:])
    code, report = verify_cli(appliance, deleted, auditor_copy)
    assert (code, report["fault"], report["first_bad_seq"]) == (1, "missing", target_seq), report

    # 3. two neighbouring records swapped
    swapped = copy("swapped")
    next_start, next_end = by_seq[target_seq + 1]
    assert next_start == end
    (swapped / segment.name).write_bytes(
        data[:start] + data[next_start:next_end] + data[start:end] + data[next_end:]
    )
    code, report = verify_cli(appliance, swapped, auditor_copy)
    assert (code, report["fault"], report["first_bad_seq"]) == (1, "reordered", target_seq), report

    # 4. truncated below the auditor's checkpoint, appliance-side checkpoints cleaned up:
    #    only the checkpoint kept elsewhere reveals it
    truncated = copy("truncated")
    keep = size - 4
    (truncated / segment.name).write_bytes(data[: by_seq[keep + 1][0]])
    _drop_checkpoints_above(truncated, keep)
    code, report = verify_cli(appliance, truncated)
    assert code == 0 and report["ok"], "without an outside checkpoint a clean cut is invisible"
    code, report = verify_cli(appliance, truncated, auditor_copy)
    assert (code, report["fault"], report["first_bad_seq"]) == (1, "truncated", keep + 1), report
    assert str(auditor_copy) in str(report["message"])

    # 5. a checkpoint signature replaced (same key ID, signature of another key)
    forged = copy("forged")
    note = (forged / LATEST_CHECKPOINT).read_text()
    text, _, sig_line = note.rpartition("\n\n")
    dash, name, blob = sig_line.strip().split(" ")
    other = ec.generate_private_key(ec.SECP256R1())
    fake = other.sign(text.encode() + b"\n", ec.ECDSA(hashes.SHA256()))
    new_blob = base64.b64decode(blob)[:4] + fake
    (forged / LATEST_CHECKPOINT).write_text(
        f"{text}\n\n{dash} {name} {base64.b64encode(new_blob).decode()}\n"
    )
    code, report = verify_cli(appliance, forged, auditor_copy)
    assert (code, report["fault"]) == (1, "bad_checkpoint_signature"), report
    assert LATEST_CHECKPOINT in str(report["position"])
    plain = appliance.cli(
        "audit",
        "verify",
        "--dir",
        str(forged),
        "--pubkey",
        str(appliance.audit_public_key),
        check=False,
    )
    assert plain.returncode == 1 and b"bad_checkpoint_signature" in plain.stdout


# --- queries: CLI and the gRPC Audit service ---------------------------------------------------


def test_find_and_audit_service_on_a_running_daemon(appliance: Appliance) -> None:
    kid = appliance.signing_key().kid
    batch = [digest_of("find", os.getpid(), time.time_ns(), i) for i in range(5)]
    reply = appliance.signing().SignBatch(sign_request(kid, batch, "find-me-42"), timeout=10)

    found = appliance.cli("audit", "find", batch[3].hex(), "--dir", str(appliance.audit_dir))
    line = found.stdout.decode()
    assert f"seq {reply.audit_sequence} " in line and "sign_batch" in line, line
    assert "request=find-me-42" in line and "index=3" in line, line
    assert "identity=ipv4:127.0.0.1:" in line, line
    assert f"kid={kid.hex()}" in line, line
    missing = appliance.cli(
        "audit",
        "find",
        digest_of("never signed").hex(),
        "--dir",
        str(appliance.audit_dir),
        check=False,
    )
    assert missing.returncode == 1 and b"not found" in missing.stdout

    audit = audit_pb2_grpc.AuditStub(appliance.channel())
    matches = audit.FindByDigest(audit_pb2.FindByDigestRequest(digest=batch[0]), timeout=10).matches
    assert [(m.sequence, m.request_id, m.kid, m.event) for m in matches] == [
        (reply.audit_sequence, "find-me-42", kid, "sign_batch")
    ]
    assert matches[0].identity.startswith("ipv4:127.0.0.1:")
    assert abs(matches[0].time.ToNanoseconds() - time.time_ns()) < 60e9
    with pytest.raises(grpc.RpcError) as bad:
        audit.FindByDigest(audit_pb2.FindByDigestRequest(digest=b"short"), timeout=10)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    public_pem = appliance.audit_public_key.read_bytes()
    public_key = load_audit_public_key(public_pem)

    def latest() -> audit_pb2.Checkpoint:
        return audit.GetLatestCheckpoint(audit_pb2.GetLatestCheckpointRequest(), timeout=10)

    wait_for(lambda: latest().size >= reply.audit_sequence, 10, "a checkpoint over the batch")
    checkpoint = latest()
    assert checkpoint.audit_public_key_spki == spki_der(public_key)
    opened = open_checkpoint(checkpoint.note, public_key)  # raises unless the HSM signed it
    assert opened.size == checkpoint.size >= reply.audit_sequence
    other = spki_der(ec.generate_private_key(ec.SECP256R1()).public_key())
    assert key_id(other) not in base64.b64decode(checkpoint.note.rsplit(" ", 1)[1])[:4]

    verified = audit.VerifyLog(audit_pb2.VerifyLogRequest(checkpoint=checkpoint.note), timeout=30)
    assert verified.ok, verified.message
    assert verified.records >= checkpoint.size and verified.checkpoints >= 1

    # The log is live: writes in flight at its end are not damage.
    stop = threading.Event()

    def load(n: int) -> None:
        with grpc.insecure_channel(appliance.address) as channel:
            stub = signing_pb2_grpc.SigningStub(channel)
            i = 0
            while not stop.is_set():
                i += 1
                batch = [digest_of("live", n, i, j) for j in range(1 + 300 * (n % 2))]
                stub.SignBatch(sign_request(kid, batch, f"live-{n}"), timeout=10)

    threads = [threading.Thread(target=load, args=(n,), daemon=True) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        reports = [audit.VerifyLog(audit_pb2.VerifyLogRequest(), timeout=30) for _ in range(25)]
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert all(r.ok for r in reports), [r.message for r in reports if not r.ok]
    assert reports[-1].records > reports[0].records, "load should have grown the log"
    forged_note = checkpoint.note.replace(f"\n{checkpoint.size}\n", f"\n{checkpoint.size + 1000}\n")
    refused = audit.VerifyLog(audit_pb2.VerifyLogRequest(checkpoint=forged_note), timeout=30)
    assert not refused.ok and refused.fault == "bad_checkpoint_signature", refused
    public_der = serialization.load_pem_public_key(public_pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert public_der == checkpoint.audit_public_key_spki
