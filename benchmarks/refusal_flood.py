"""A flood of refused calls: how much it grows the audit log and the daemon log, and what it
does to another identity's signing latency.

One mTLS daemon. A certificate from the client CA with no role and a 5,000-character CN (the
case issue 12 measured at 1.5 MB/s of audit log) sends single-digest SignBatch calls from
``--flood`` concurrent callers, in a process of their own, for ``--seconds``; meanwhile the dev
issuer signs single digests one after another. The same issuer load runs once without the
flood. The daemon is stopped at the end so that the refusal tally reaches the audit log (its
window is the default minute).

Printed: refusals/s, audit bytes and records added by the flood (and per refusal), daemon log
bytes per refusal (one access line and one refusal line each), and the issuer's p50/p99
with the flood over without it.

Run: ``.venv/bin/python benchmarks/refusal_flood.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing
import platform
import ssl
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from signer.audit.query import iter_records  # noqa: E402
from signer.v1 import signing_pb2, signing_pb2_grpc  # noqa: E402
from tests.client_certs import client_certificate  # noqa: E402
from tests.conftest import Appliance, new_appliance  # noqa: E402

PROFILE = "vaccination"
OPTIONS = [("grpc.ssl_target_name_override", "localhost")]


def audit_size(appliance: Appliance) -> tuple[int, int]:
    """Bytes of the audit folder's segment files and the number of records."""
    size = sum(p.stat().st_size for p in appliance.audit_dir.rglob("*") if p.is_file())
    return size, sum(1 for _ in iter_records(appliance.audit_dir))


async def issuer_latencies(appliance: Appliance, kid: bytes, seconds: float) -> list[float]:
    async with grpc.aio.secure_channel(
        appliance.address, appliance.credentials("issuer"), options=OPTIONS
    ) as channel:
        stub = signing_pb2_grpc.SigningStub(channel)
        latencies: list[float] = []
        stop = time.monotonic() + seconds
        n = 0
        while time.monotonic() < stop:
            digest = hashlib.sha256(b"bench-%d" % n).digest()
            n += 1
            started = time.perf_counter()
            await stub.SignBatch(
                signing_pb2.SignBatchRequest(profile=PROFILE, kid=kid, digests=[digest]),
                timeout=30,
            )
            latencies.append(time.perf_counter() - started)
        return latencies


def flood(address: str, pems: tuple[bytes, bytes, bytes], callers: int, seconds: float) -> int:
    """Refused calls from ``callers`` concurrent callers (run in a process of its own)."""
    return asyncio.run(_flood(address, pems, callers, seconds))


async def _flood(
    address: str, pems: tuple[bytes, bytes, bytes], callers: int, seconds: float
) -> int:
    ca, cert, key = pems
    credentials = grpc.ssl_channel_credentials(ca, key, cert)
    async with grpc.aio.secure_channel(address, credentials, options=OPTIONS) as channel:
        stub = signing_pb2_grpc.SigningStub(channel)
        stop = time.monotonic() + seconds
        refused = 0

        async def caller() -> None:
            nonlocal refused
            request = signing_pb2.SignBatchRequest(
                profile=PROFILE, kid=b"\x01" * 8, digests=[b"\x02" * 32]
            )
            while time.monotonic() < stop:
                try:
                    await stub.SignBatch(request, timeout=30)
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.code()
                    refused += 1

        await asyncio.gather(*(caller() for _ in range(callers)))
        return refused


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--flood", type=int, default=16, help="concurrent refused callers")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="signer-refusal-flood-") as home:
        appliance = new_appliance(Path(home), mtls=True)
        appliance.setup()
        appliance.start()
        try:
            kid = appliance.signing_key().kid
            hostile = client_certificate(appliance, "x" * 5000)
            quiet = asyncio.run(issuer_latencies(appliance, kid, args.seconds))
            audit_before, records_before = audit_size(appliance)
            assert appliance.log_path is not None
            log_before = appliance.log_path.stat().st_size

            assert appliance.tls_dir is not None
            pems = (
                (appliance.tls_dir / "ca.pem").read_bytes(),
                ssl.DER_cert_to_PEM_cert(hostile.der).encode(),
                hostile.key_pem,
            )
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                flooding = pool.submit(flood, appliance.address, pems, args.flood, args.seconds)
                loud = asyncio.run(issuer_latencies(appliance, kid, args.seconds))
                refused = flooding.result()
            log_grown = appliance.log_path.stat().st_size - log_before
            issuer_calls = len(loud)
        finally:
            appliance.stop()
        audit_after, records_after = audit_size(appliance)
        refusal_records = [
            r
            for r in iter_records(appliance.audit_dir)
            if r.event == "auth_refused" and r.identity == hostile.fingerprint
        ]
    print(
        f"{datetime.now(UTC):%Y-%m-%d}, {platform.node()}, {platform.python_version()},"
        f" {args.flood} refused callers, {args.seconds:g} s"
    )
    print(f"refusals: {refused} ({refused / args.seconds:.0f}/s)")
    print(
        f"audit log: +{audit_after - audit_before} bytes, +{records_after - records_before}"
        f" records (of which {issuer_calls} signed batches, {len(refusal_records)} refusal"
        f" records counting {sum(r.details['count'] for r in refusal_records)} refusals),"
        f" {(audit_after - audit_before) / max(refused + issuer_calls, 1):.1f} bytes per call"
    )
    print(f"daemon log: {log_grown / max(refused, 1):.0f} bytes per refusal")
    q50, q99, l50, l99 = (
        percentile(quiet, 50),
        percentile(quiet, 99),
        percentile(loud, 50),
        percentile(loud, 99),
    )
    print(
        f"issuer single digest, quiet: p50 {q50:.2f} ms, p99 {q99:.2f} ms; under the flood:"
        f" p50 {l50:.2f} ms, p99 {l99:.2f} ms; ratio p50 {l50 / q50:.2f}, p99 {l99 / q99:.2f}"
    )


if __name__ == "__main__":
    main()
