"""Revocation batches from a large audit log: seconds and peak memory, and bytes per signature.

1. **Bytes per signature** of a signed batch record (1000 digests per record, as a loaded
   daemon writes them), measured on segment files written by the real :class:`AuditLog`:
   digest only (what format 1 kept by default), digest + 16-byte SIGNATURE hash (the default
   now), digest + hash + whole raw signature (``store_signatures = true``).
2. **The log**: ``--signatures`` (default 10 million) written by the real ``AuditLog`` writer
   (group commit, fsync per append, hash chain, checkpoints signed by a software P-256 key
   standing in for the HSM's audit key), ``--batch`` signatures per record. Signatures are
   random 64-byte ``r||s`` values: the log only hashes ``r``, and real ECDSA signing would
   measure OpenSSL, not the log. One identity signs everything with two kids, alternating, so
   the window selects every signature (the worst case for the build).
3. **The build**: ``signer revocation build`` as a child process (verify the whole log, then
   stream it into gateway batches), wall seconds and the child's peak RSS; the same for a log
   a tenth the size, to show that memory does not grow with the log; and ``signer audit
   verify`` alone, to split the time.

Run: ``.venv/bin/python benchmarks/revocation_build.py [--signatures N] [--batch 1000]
[--dir DIR]`` (10 million: a few minutes and about 1 GB of disk; the directory is removed
unless ``--keep``). The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from signer.audit.events import EventType  # noqa: E402
from signer.audit.log import AuditLog  # noqa: E402
from signer.audit.segments import list_segments  # noqa: E402
from signer.audit.sighash import signature_hashes  # noqa: E402
from tests.audit_support import make_signer  # noqa: E402

KIDS = (b"\x01" * 8, b"\x02" * 8)
IDENTITY = "CN=issuer"


def write_log(
    directory: Path, signatures: int, batch: int, *, keep: bool = False, hashed: bool = True
) -> tuple[float, Path]:
    """Write ``signatures`` in records of ``batch``; return (seconds, audit public key file)."""
    signer = make_signer()
    pubkey = directory.parent / f"{directory.name}.der"
    pubkey.write_bytes(signer.spki_der)
    started = time.perf_counter()
    with AuditLog(directory, signer, keep_signatures=keep) as log:
        for number in range(signatures // batch):
            blob = os.urandom(96 * batch)
            digests = [blob[i * 32 : i * 32 + 32] for i in range(batch)]
            raw = blob[32 * batch :]
            sigs = [raw[i * 64 : i * 64 + 64] for i in range(batch)]
            log.append(
                EventType.SIGN_BATCH,
                identity=IDENTITY,
                profile="vaccination",
                kid=KIDS[number % 2],
                request_id=f"bench-{number}",
                digests=digests,
                signatures=sigs if hashed else None,
            )
    return time.perf_counter() - started, pubkey


def log_bytes(directory: Path) -> int:
    return sum(segment.path.stat().st_size for segment in list_segments(directory))


def bytes_per_signature(work: Path, batch: int) -> dict[str, float]:
    """Segment bytes per signature for each way of recording signatures."""
    count = 100 * batch
    out = {}
    for name, keep, hashed in (
        ("digest_only", False, False),
        ("digest_and_hash", False, True),
        ("digest_hash_and_signature", True, True),
    ):
        folder = work / f"size-{name}"
        write_log(folder, count, batch, keep=keep, hashed=hashed)
        out[name] = log_bytes(folder) / count
    return out


def hash_cost(batch: int, rounds: int = 200) -> float:
    """Microseconds per signature to compute the SIGNATURE hashes of a batch (caller's thread)."""
    sigs = [os.urandom(64) for _ in range(batch)]
    started = time.perf_counter()
    for _ in range(rounds):
        signature_hashes(sigs)
    return (time.perf_counter() - started) / (rounds * batch) * 1e6


@dataclass(frozen=True)
class Child:
    """One ``signer`` run: wall and CPU seconds, peak RSS, output."""

    wall_s: float
    cpu_s: float
    peak_kib: int
    stdout: bytes


def run_child(argv: list[str]) -> Child:
    """Run ``signer ARGV`` and measure it.

    ``ru_maxrss`` of RUSAGE_CHILDREN is the largest of all children waited for, so each
    measurement runs after only smaller ones (the caller orders them). CPU seconds (user +
    system) say more than wall seconds on a machine whose cores are shared.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "signer.cli", *argv], capture_output=True, cwd=ROOT, check=False
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"signer {' '.join(argv)} failed: {result.stderr.decode()[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Child(seconds, cpu, after.ru_maxrss, result.stdout)


def build_argv(directory: Path, pubkey: Path, out: Path) -> list[str]:
    return [
        "revocation", "build", "--identity", IDENTITY, "--since", "2000-01-01T00:00:00Z",
        "--until", "2100-01-01T00:00:00Z", "--dir", str(directory), "--pubkey", str(pubkey),
        "--out", str(out), "--country", "VN", "--expires", "2028-01-01T00:00:00Z",
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--signatures", type=int, default=10_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="revocation-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        sizes = bytes_per_signature(work, args.batch)
        for name, value in sizes.items():
            print(f"bytes_per_signature_{name}={value:.1f}", flush=True)
        print(f"hash_us_per_signature={hash_cost(args.batch):.3f}", flush=True)

        # Noise floor first: ru_maxrss of children only grows.
        floor = run_child(["revocation", "build", "--help"])
        print(f"interpreter_and_imports_peak_rss_mib={floor.peak_kib / 1024:.1f}", flush=True)

        small_n = max(args.batch, args.signatures // 10)
        small = work / "small"
        _, small_key = write_log(small, small_n, args.batch)
        small_build = run_child(build_argv(small, small_key, work / "small.jsonl"))
        print(
            f"small_log_signatures={small_n} build_s={small_build.wall_s:.1f}"
            f" build_cpu_s={small_build.cpu_s:.1f}"
            f" build_peak_rss_mib={small_build.peak_kib / 1024:.1f}",
            flush=True,
        )

        big = work / "big"
        write_s, big_key = write_log(big, args.signatures, args.batch)
        size = log_bytes(big)
        print(
            f"log_signatures={args.signatures} log_mib={size / 2**20:.0f}"
            f" write_s={write_s:.1f} write_signatures_per_s={args.signatures / write_s:.0f}",
            flush=True,
        )
        verify = run_child(["audit", "verify", "--dir", str(big), "--pubkey", str(big_key)])
        print(f"verify_only_s={verify.wall_s:.1f} verify_only_cpu_s={verify.cpu_s:.1f}", flush=True)
        out = work / "big.jsonl"
        build = run_child(build_argv(big, big_key, out))
        summary = json.loads(build.stdout)
        assert summary["signatures"] == args.signatures, summary["signatures"]
        print(
            f"build_s={build.wall_s:.1f} build_cpu_s={build.cpu_s:.1f}"
            f" build_peak_rss_mib={build.peak_kib / 1024:.1f}"
            f" batches={summary['batches']} out_mib={out.stat().st_size / 2**20:.0f}",
            flush=True,
        )
        print(
            f"RESULT signatures={args.signatures} build_s={build.wall_s:.1f}"
            f" build_cpu_s={build.cpu_s:.1f}"
            f" signatures_per_cpu_s={args.signatures / build.cpu_s:.0f}"
            f" peak_rss_mib={build.peak_kib / 1024:.1f}"
            f" peak_rss_mib_at_tenth={small_build.peak_kib / 1024:.1f}"
            f" verify_cpu_share={verify.cpu_s / build.cpu_s:.2f}"
            f" bytes_per_sig_digest={sizes['digest_only']:.1f}"
            f" bytes_per_sig_hash={sizes['digest_and_hash']:.1f}"
            f" bytes_per_sig_both={sizes['digest_hash_and_signature']:.1f}"
        )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
