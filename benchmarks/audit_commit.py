"""Group commit of the audit log under many small requests, against the real daemon.

Starts a daemon on a fresh SoftHSM token (loopback only), drives it with 64 concurrent clients
that each send single-digest SignBatch requests (client processes x threads, every thread on
its own channel), and reports:

* requests/s with the audit log on, and the same load with ``[audit] enabled = false``;
* audit records/s and how many group commits (= segment fsyncs) carried them, read back from
  the log itself: one group is written with one ``write`` + ``fsync`` and all its records share
  one ``time_ns``, so distinct ``time_ns`` values in the window = segment fsyncs;
* optionally (``--strace``, needs strace and ptrace rights) fsync calls counted by strace on
  the daemon for a short extra window, as a cross-check (strace slows the daemon down);
* ``per_request_fsync_bound``: append+fsync per second on the same disk from one writer, the
  ceiling a log that fsyncs once per request could not pass.

Run: ``.venv/bin/python benchmarks/audit_commit.py`` (about 40 s). The last line is
machine-readable: ``audit_records_per_s=... per_request_fsync_bound=... ...``. Numbers from a
machine whose cores are shared with other work are noisy; compare runs, not single figures.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from signer.audit.events import EventType  # noqa: E402
from signer.audit.query import iter_records  # noqa: E402
from tests.conftest import Appliance, new_appliance  # noqa: E402

PROFILE = "vaccination"
# production-like checkpointing, so checkpoints do not dominate the fsync count
AUDIT_DEFAULTS = {"checkpoint_every_records": 10_000, "checkpoint_every_seconds": 60}


def _client_process(
    address: str, kid: bytes, threads: int, start_at: float, stop_at: float, tag: str, out: Any
) -> None:
    """One client process: ``threads`` threads, each with its own channel, batch size 1."""
    import grpc

    from signer.v1 import signing_pb2, signing_pb2_grpc

    counts = {"ok": 0, "failed": 0}
    latencies: list[float] = []
    lock = threading.Lock()

    def run(number: int) -> None:
        ok = failed = 0
        mine: list[float] = []
        with grpc.insecure_channel(address) as channel:
            stub = signing_pb2_grpc.SigningStub(channel)  # type: ignore[no-untyped-call]
            grpc.channel_ready_future(channel).result(timeout=10)
            i = 0
            while time.time() < start_at:
                time.sleep(0.001)
            while (now := time.time()) < stop_at:
                i += 1
                digest = hashlib.sha256(f"{tag}/{os.getpid()}/{number}/{i}".encode()).digest()
                request = signing_pb2.SignBatchRequest(
                    profile=PROFILE, kid=kid, digests=[digest], request_id=f"{tag}-{number}"
                )
                try:
                    stub.SignBatch(request, timeout=10)
                    ok += 1
                    mine.append(time.time() - now)
                except grpc.RpcError:
                    failed += 1
        with lock:
            counts["ok"] += ok
            counts["failed"] += failed
            latencies.extend(mine)

    pool = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    latencies.sort()
    out.put((counts["ok"], counts["failed"], latencies[len(latencies) // 2] if latencies else 0))


def drive(
    appliance: Appliance, clients: int, processes: int, seconds: float, tag: str
) -> dict[str, float]:
    """Run the single-digest load; return requests/s and the measured window (unix time)."""
    kid = appliance.signing_key().kid
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 3.0  # time to spawn the clients and connect
    stop_at = start_at + seconds
    per_process = [clients // processes + (i < clients % processes) for i in range(processes)]
    procs = [
        ctx.Process(
            target=_client_process,
            args=(appliance.address, kid, n, start_at, stop_at, tag, out),
        )
        for n in per_process
    ]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=seconds + 60) for _ in procs]
    for proc in procs:
        proc.join()
    ok = sum(r[0] for r in results)
    failed = sum(r[1] for r in results)
    median = sorted(r[2] for r in results)[len(results) // 2]
    return {
        "ok": ok,
        "failed": failed,
        "per_s": ok / seconds,
        "median_ms": median * 1000,
        "start": start_at,
        "stop": stop_at,
    }


def groups_in_window(audit_dir: Path, start: float, stop: float) -> tuple[int, int, int]:
    """(records, sign_batch records, group commits) written inside [start, stop)."""
    lo, hi = int(start * 1e9), int(stop * 1e9)
    records = batches = 0
    times: set[int] = set()
    for record in iter_records(audit_dir):
        if lo <= record.time_ns < hi:
            records += 1
            batches += record.event is EventType.SIGN_BATCH
            times.add(record.time_ns)
    return records, batches, len(times)


def fsync_bound(directory: Path, seconds: float = 1.0) -> float:
    """Appends of one ~150-byte record + fsync per second, one writer, on ``directory``'s disk."""
    path = directory / "fsync-probe.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    done = 0
    started = time.perf_counter()
    try:
        while time.perf_counter() - started < seconds:
            os.write(fd, b"\x00" * 150)
            os.fsync(fd)
            done += 1
    finally:
        os.close(fd)
        path.unlink()
    return done / (time.perf_counter() - started)


def writer_alone(directory: Path, threads: int, seconds: float) -> tuple[float, float]:
    """The AuditLog by itself (no gRPC, no HSM): ``threads`` threads appending single-digest
    records; returns (records/s, fsyncs per record) - the writer's own ceiling on this disk."""
    from cryptography.hazmat.primitives.asymmetric import ec, utils

    from signer.audit.checkpoint import CheckpointSigner, spki_der
    from signer.audit.fileops import OsFileOps
    from signer.audit.log import AuditLog

    class CountingOps(OsFileOps):
        fsyncs = 0

        def fsync(self, fd: int) -> None:
            CountingOps.fsyncs += 1
            super().fsync(fd)

    key = ec.generate_private_key(ec.SECP256R1())

    def sign(digest: bytes) -> bytes:
        der = key.sign(digest, ec.ECDSA(utils.Prehashed(_sha256())))
        r, s = utils.decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    signer = CheckpointSigner("bench", sign, spki_der(key.public_key()))
    ops = CountingOps()
    counts = [0] * threads
    with AuditLog(directory, signer, file_ops=ops, **AUDIT_DEFAULTS) as log:  # type: ignore[arg-type]
        stop_at = time.monotonic() + seconds
        before = CountingOps.fsyncs

        def run(n: int) -> None:
            i = 0
            while time.monotonic() < stop_at:
                i += 1
                digest = hashlib.sha256(f"{n}/{i}".encode()).digest()
                log.append(
                    EventType.SIGN_BATCH,
                    identity="ipv4:127.0.0.1:1",
                    profile=PROFILE,
                    kid=b"12345678",
                    request_id=f"w-{n}-{i}",
                    digests=[digest],
                )
            counts[n] = i

        pool = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        fsyncs = CountingOps.fsyncs - before
    records = sum(counts)
    return records / seconds, fsyncs / max(records, 1)


def _sha256() -> Any:
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


def strace_fsyncs(appliance: Appliance, clients: int, processes: int, seconds: float) -> str:
    """Count fsync calls of the daemon under load with strace (slows the daemon down)."""
    if shutil.which("strace") is None or appliance.process is None:
        return "strace not available"
    out_file = appliance.home / "strace.txt"
    tracer = subprocess.Popen(
        [
            "strace",
            "-f",
            "-c",
            "-e",
            "trace=fsync,fdatasync",
            "-o",
            str(out_file),
            "-p",
            str(appliance.process.pid),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    if tracer.poll() is not None:
        return "strace could not attach (ptrace not permitted?)"
    audit_before = sum(1 for _ in iter_records(appliance.audit_dir))
    load = drive(appliance, clients, processes, seconds, "strace")
    tracer.send_signal(signal.SIGINT)
    tracer.wait(timeout=30)
    audit_after = sum(1 for _ in iter_records(appliance.audit_dir))
    calls = 0
    for line in out_file.read_text().splitlines():
        parts = line.split()
        if parts and parts[-1] in ("fsync", "fdatasync"):
            calls += int(parts[3] if len(parts) >= 6 else parts[2])
    records = audit_after - audit_before
    return (
        f"strace: {calls} fsync calls for {records} records "
        f"({calls / max(records, 1):.3f} per record; {load['per_s']:.0f} req/s under strace)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--processes", type=int, default=4, help="client processes")
    parser.add_argument("--seconds", type=float, default=6.0, help="measured window per run")
    parser.add_argument("--workers", type=int, default=2, help="HSM worker processes")
    parser.add_argument("--strace", action="store_true", help="also count fsyncs with strace")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="signer-audit-bench-"))
    results: dict[str, dict[str, float]] = {}
    try:
        bound = fsync_bound(home)
        print(f"one writer, append+fsync on {home}: {bound:.0f}/s (per-request fsync bound)")
        alone, alone_fsyncs = writer_alone(home / "writer-alone", args.clients, 3.0)
        print(
            f"AuditLog alone, {args.clients} threads, single-digest records: {alone:.0f} "
            f"records/s, {alone_fsyncs:.3f} fsyncs per record (writer ceiling, no gRPC/HSM)"
        )
        for name, audit in (
            ("audit_on", {"enabled": True, **AUDIT_DEFAULTS}),
            ("audit_off", {"enabled": False}),
        ):
            overrides = {"audit": audit, "hsm": {"workers": args.workers}}
            appliance = new_appliance(home / name, overrides)
            appliance.setup()
            appliance.start()
            try:
                load = drive(appliance, args.clients, args.processes, args.seconds, name)
                trace = (
                    strace_fsyncs(appliance, args.clients, args.processes, 3.0)
                    if args.strace and audit["enabled"]
                    else ""
                )
            finally:
                appliance.stop()
            results[name] = load
            print(
                f"{name}: {load['ok']:.0f} single-digest requests in {args.seconds:.0f} s from "
                f"{args.clients} clients = {load['per_s']:.0f}/s, median latency "
                f"{load['median_ms']:.1f} ms, {load['failed']:.0f} failed"
            )
            if audit["enabled"]:
                records, batches, groups = groups_in_window(
                    appliance.audit_dir, load["start"], load["stop"]
                )
                load["records"], load["groups"] = records, groups
                print(
                    f"  audit: {records} records ({batches} sign_batch) in {groups} group "
                    f"commits = {records / args.seconds:.0f} records/s, "
                    f"{records / max(groups, 1):.1f} records per fsync, "
                    f"{groups / max(records, 1):.3f} segment fsyncs per record"
                )
                if trace:
                    print(f"  {trace}")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    on, off = results["audit_on"], results["audit_off"]
    print(
        f"audit_records_per_s={on['records'] / args.seconds:.0f} "
        f"per_request_fsync_bound={bound:.0f} "
        f"writer_alone_records_per_s={alone:.0f} writer_alone_fsyncs_per_record={alone_fsyncs:.3f} "
        f"fsyncs_per_record={on['groups'] / max(on['records'], 1):.3f} "
        f"records_per_group={on['records'] / max(on['groups'], 1):.1f} "
        f"audit_off_requests_per_s={off['per_s']:.0f} "
        f"audit_on_off_ratio={on['per_s'] / max(off['per_s'], 1e-9):.2f}"
    )
    return 0 if on["failed"] == 0 and off["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
