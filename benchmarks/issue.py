"""End-to-end DCC issuance through a real daemon: records/s and the share of time outside the HSM.

Starts its own appliance (fresh SoftHSM token in a temporary directory, the same setup the
tests use), issues ``--records`` certificates from the Vietnamese example records (build +
sign + encode to ``HC1:`` strings; QR images are not rendered), stops the daemon and prints
one ``key=value`` line per measurement, the summary last::

    .venv/bin/python benchmarks/issue.py [--records 100000] [--chunk-size 5000]
                                         [--pipelined] [--no-verify]

Two ways of driving the same pipeline:

* ``sequential`` (default): prepare a chunk (validate, CWT, COSE header, Sig_structure,
  SHA-256), sign it (one ``SignerClient.sign`` call, split into ``max_batch`` requests), finish
  it (check every signature against the DSC, COSE_Sign1, zlib, base45), next chunk;
* ``--pipelined``: a background thread signs and finishes chunk *n* while the main thread
  prepares chunk *n + 1*. Only the wait for the appliance overlaps: preparing and finishing are
  Python and share one interpreter lock.

``--no-verify`` skips the check of each signature against the DSC before encoding (on by
default in the kit and the CLI; it costs about as much CPU as all the encoding together).

``outside_hsm_fraction`` is the share of wall time during which no signing request was in
flight, i.e. the time the HSM waited for the client (build and encode) rather than the other
way round; ``client_cpu_fraction`` is build + encode time over wall time. ``hsm_busy_s`` is the
daemon's own PKCS#11 signing time (summed over its worker processes). On a machine whose cores
are shared between the daemon's HSM workers and the client, both numbers depend on that
sharing: say so with the results.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from signer.client import SignerClient  # noqa: E402
from signer.dcc.issue import ChunkSigner, IssuingKey, PreparedCertificate, prepare  # noqa: E402
from tests.conftest import Appliance, new_appliance  # noqa: E402

PROFILE = "vaccination"


class SignClock:
    """Wraps the client's DCC signer and records when signing requests are in flight."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.intervals: list[tuple[float, float]] = []
        self._lock = threading.Lock()

    def signing_key(self, profile: str) -> tuple[bytes, bytes]:
        key: tuple[bytes, bytes] = self.inner.signing_key(profile)
        return key

    def sign(self, profile: str, kid: bytes, digests: Sequence[bytes]) -> list[bytes]:
        started = time.perf_counter()
        try:
            signatures: list[bytes] = self.inner.sign(profile, kid, digests)
            return signatures
        finally:
            with self._lock:
                self.intervals.append((started, time.perf_counter()))

    def busy(self) -> float:
        """Length of the union of the in-flight intervals."""
        total, end = 0.0, float("-inf")
        for start, stop in sorted(self.intervals):
            if stop <= end:
                continue
            total += stop - max(start, end)
            end = stop
        return total


def records(count: int) -> Iterator[dict[str, Any]]:
    lines = (ROOT / "examples" / "records-vn.jsonl").read_text(encoding="utf-8").splitlines()
    examples = [json.loads(line) for line in lines if line.strip()]
    return itertools.islice(itertools.cycle(examples), count)


def chunked(items: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def daemon_seconds(appliance: Appliance, name: str) -> float:
    return sum(
        float(line.rpartition(" ")[2])
        for line in appliance.metrics_text().splitlines()
        if line.startswith(f"{name}_sum")
    )


def run(
    appliance: Appliance, count: int, chunk_size: int, pipelined: bool, verify: bool
) -> dict[str, float]:
    with SignerClient(appliance.address, max_batch=10_000, concurrency=2) as client:
        clock = SignClock(client.dcc_signer())
        key = IssuingKey.from_dsc(*clock.signing_key(PROFILE))
        chunks = ChunkSigner(clock, key, profile=PROFILE, verify=verify)
        iat = dt.datetime.now(dt.UTC)
        prepare_s = sign_and_finish_s = 0.0
        issued = 0

        def build(batch: Sequence[Mapping[str, Any]]) -> list[PreparedCertificate]:
            nonlocal prepare_s
            started = time.perf_counter()
            prepared = prepare(batch, chunks.key.kid, "VN", iat, chunks.key.not_after)
            prepare_s += time.perf_counter() - started
            return prepared

        def sign_and_finish(prepared: list[PreparedCertificate]) -> int:
            nonlocal sign_and_finish_s
            started = time.perf_counter()
            done = len(chunks.sign(prepared)[1])
            sign_and_finish_s += time.perf_counter() - started
            return done

        hsm_before = daemon_seconds(appliance, "signer_hsm_sign_duration_seconds")
        started = time.perf_counter()
        cpu_started = time.process_time()
        if pipelined:
            with ThreadPoolExecutor(max_workers=1) as pool:
                pending: Future[int] | None = None
                for batch in chunked(records(count), chunk_size):
                    prepared = build(batch)
                    if pending is not None:
                        issued += pending.result()
                    pending = pool.submit(sign_and_finish, prepared)
                if pending is not None:
                    issued += pending.result()
        else:
            for batch in chunked(records(count), chunk_size):
                issued += sign_and_finish(build(batch))
        wall = time.perf_counter() - started
        client_cpu = time.process_time() - cpu_started
        hsm_busy = daemon_seconds(appliance, "signer_hsm_sign_duration_seconds") - hsm_before
    assert issued == count, (issued, count)
    in_flight = clock.busy()
    return {
        "records": count,
        "wall_s": wall,
        "records_per_s": count / wall,
        "sign_in_flight_s": in_flight,
        "prepare_s": prepare_s,
        "finish_s": sign_and_finish_s - in_flight,
        "client_cpu_s": client_cpu,
        "hsm_busy_s": hsm_busy,
        "outside_hsm_fraction": (wall - in_flight) / wall,
        "client_cpu_fraction": min(client_cpu / wall, 1.0),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--chunk-size", type=int, default=5_000, help="records per sign call")
    parser.add_argument("--pipelined", action="store_true", help="prepare while signing")
    parser.add_argument("--no-verify", action="store_true", help="skip the signature checks")
    args = parser.parse_args(argv)
    if args.records < 1 or args.chunk_size < 1:
        parser.error("--records and --chunk-size must be >= 1")
    with tempfile.TemporaryDirectory(prefix="signer-bench-") as tmp:
        appliance = new_appliance(
            Path(tmp) / "appliance",
            {"log": {"level": "WARNING"}, "audit": {"checkpoint_every_records": 1000}},
        )
        appliance.setup()
        appliance.start()
        try:
            result = run(
                appliance, args.records, args.chunk_size, args.pipelined, not args.no_verify
            )
        finally:
            appliance.stop()
    mode = "pipelined" if args.pipelined else "sequential"
    print(
        f"mode={mode} verify={not args.no_verify} chunk_size={args.chunk_size} cores={_cores()}"
        f" load_avg_1min={os.getloadavg()[0]:.2f}"
    )
    for name in (
        "wall_s",
        "sign_in_flight_s",
        "prepare_s",
        "finish_s",
        "client_cpu_s",
        "hsm_busy_s",
    ):
        print(f"{name}={result[name]:.2f}")
    print(f"client_cpu_fraction={result['client_cpu_fraction']:.3f}")
    print(
        f"records={args.records} records_per_s={result['records_per_s']:.0f} "
        f"outside_hsm_fraction={result['outside_hsm_fraction']:.3f}"
    )
    return 0


def _cores() -> int:
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
