"""Small requests: single-digest SignBatch calls against the daemon, with and without coalescing.

One run, one machine, one token, mutual TLS as in production. Two daemons are set up side by
side, one with ``[hsm] coalesce = true`` (the default) and one with ``false``; while one is
measured the other is frozen (SIGSTOP), and the phases alternate for ``--rounds`` rounds so
that drift in a shared machine's speed hits both alike. The load comes from separate client
processes (``grpc.aio``, many calls in flight per process), so the client is not the
bottleneck of the daemon it measures.

Printed per number of requests in flight (1, 16, 64): requests/s, p50 and p99 latency with and
without coalescing, and the ratio of signatures/s to the raw ceiling (N processes signing in a
python-pkcs11 loop, no IPC, no gRPC, no audit: what the HSM gives from Python), and to the
Python gRPC floor (``grpc_floor.py``: a bare ``grpc.aio`` server with the same mutual TLS that
signs in its own process with one python-pkcs11 session and does nothing else: the most a
Python gRPC front end on this HSM can serve before anything the daemon adds), and the CPU time
each request cost the server's processes (the daemon with its HSM workers; the floor). Then:

* mixed sizes: the p99 of single-digest calls (16 in flight) while two clients send batches of
  1000, over the p99 without them (target <= 5);
* idle streams: the p99 of one identity's single-digest calls while another identity holds 64
  idle SignStreams open, over the p99 without them (target about 1);
* one issuance backend signing one certificate per call from 64 threads with
  ``SignerClient.sign_one`` (client-side micro-batching): signatures/s and per-call latency.

Run: ``.venv/bin/python benchmarks/small_requests.py`` (about three minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import multiprocessing
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from grpc_floor import run as run_floor  # noqa: E402
from throughput import frozen, raw_ceiling  # noqa: E402

from tests.client_certs import client_certificate_files  # noqa: E402
from tests.conftest import Appliance, free_port, new_appliance  # noqa: E402

PROFILE = "vaccination"
OPTIONS = [("grpc.ssl_target_name_override", "localhost")]


@dataclass(frozen=True)
class Identity:
    """The PEM files of one client certificate and of the CA that issued the server's."""

    ca: bytes
    cert: bytes
    key: bytes


def identity(appliance: Appliance, name: str) -> Identity:
    """A dev identity made by dev-setup (``issuer``) or a new ``CN=name`` one from the dev
    client CA."""
    assert appliance.tls_dir is not None
    tls = appliance.tls_dir
    if not (tls / f"{name}.pem").exists():
        client_certificate_files(appliance, name)
    return Identity(
        (tls / "ca.pem").read_bytes(),
        (tls / f"{name}.pem").read_bytes(),
        (tls / f"{name}.key").read_bytes(),
    )


def _client(
    address: str,
    who: Identity,
    batch: int,
    in_flight: int,
    start_at: float,
    seconds: float,
    idle_streams: int,
    tag: int,
    out: Any,
) -> None:
    """One client process: ``in_flight`` calls at a time; latencies of calls inside the window."""
    import grpc

    from signer.v1 import signing_pb2, signing_pb2_grpc

    async def run() -> tuple[int, list[float], int]:
        credentials = grpc.ssl_channel_credentials(who.ca, who.key, who.cert)
        async with grpc.aio.secure_channel(address, credentials, options=OPTIONS) as channel:
            stub = signing_pb2_grpc.SigningStub(channel)  # type: ignore[no-untyped-call]
            kid = (await stub.GetSigningKey(signing_pb2.GetSigningKeyRequest(profile=PROFILE))).kid
            streams = [stub.SignStream() for _ in range(idle_streams)]
            for stream in streams:
                await stream.wait_for_connection()
            latencies: list[float] = []
            errors = 0
            stop_at = start_at + seconds

            async def loop() -> None:
                nonlocal errors
                while time.time() < start_at:
                    await asyncio.sleep(0.001)
                while (began := time.time()) < stop_at:
                    request = signing_pb2.SignBatchRequest(
                        profile=PROFILE, kid=kid, packed_digests=os.urandom(32 * batch)
                    )
                    try:
                        await stub.SignBatch(request, timeout=30)
                    except grpc.RpcError:
                        errors += 1
                        continue
                    if time.time() <= stop_at:
                        latencies.append(time.time() - began)

            if in_flight:
                await asyncio.gather(*(loop() for _ in range(in_flight)))
            else:
                await asyncio.sleep(max(0.0, stop_at - time.time()))
            for stream in streams:
                stream.cancel()
            return len(latencies), latencies, errors

    out.put((tag, asyncio.run(run())))


def _backend(
    address: str, tls_dir: str, threads: int, start_at: float, seconds: float, out: Any
) -> None:
    """One issuance backend process: ``threads`` threads each signing one digest per call with
    ``SignerClient.sign_one`` (concurrent calls leave as one request)."""
    import threading

    from signer.client.client import SignerClient, TlsFiles

    tls = Path(tls_dir)
    files = TlsFiles(tls / "ca.pem", tls / "issuer.pem", tls / "issuer.key")
    latencies: list[list[float]] = [[] for _ in range(threads)]
    stop_at = start_at + seconds
    with SignerClient(address, tls=files, server_name="localhost") as client:
        client.sign_one(PROFILE, os.urandom(32))

        def run(n: int) -> None:
            while time.time() < start_at:
                time.sleep(0.001)
            while (began := time.time()) < stop_at:
                client.sign_one(PROFILE, os.urandom(32))
                if time.time() <= stop_at:
                    latencies[n].append(time.time() - began)

        pool = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
    flat = [x for part in latencies for x in part]
    out.put((0, (len(flat), flat, 0)))


def sign_one_load(appliance: Appliance, threads: int, seconds: float) -> Result:
    """Signatures/s and per-call latency of one backend process calling ``sign_one``."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    assert appliance.tls_dir is not None
    args = (appliance.address, str(appliance.tls_dir), threads, time.time() + 2.5, seconds, queue)
    proc = ctx.Process(target=_backend, args=args)
    proc.start()
    _, (count, latencies, _) = queue.get(timeout=seconds + 120)
    proc.join()
    q = statistics.quantiles(sorted(latencies), n=100)
    return Result(count / seconds, q[49] * 1000, q[98] * 1000, 0)


@dataclass(frozen=True)
class Load:
    """What client processes send: ``in_flight`` calls of ``batch`` digests, over ``processes``."""

    in_flight: int
    batch: int = 1
    who: str = "issuer"
    idle_streams: int = 0

    def processes(self) -> int:
        return 1 if self.in_flight <= 4 else 2


@dataclass(frozen=True)
class Result:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_ms_per_request: float = 0.0
    """CPU time (user + system) of the measured server's processes per request."""


def cpu_seconds(pids: set[int]) -> float:
    """User + system CPU seconds used so far by the processes ``pids`` (those still alive)."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def measure(
    appliance: Appliance, loads: list[Load], seconds: float, address: str = ""
) -> list[Result]:
    """Run the loads at once against ``appliance`` (or a server at ``address`` that uses its TLS
    files); one result per load."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    start_at = time.time() + 2.5
    procs = []
    for number, load in enumerate(loads):
        who = identity(appliance, load.who)
        parts = load.processes() if load.in_flight else 1
        for part in range(parts):
            share = load.in_flight // parts + (1 if part < load.in_flight % parts else 0)
            streams = load.idle_streams if part == 0 else 0
            args = (
                address or appliance.address,
                who,
                load.batch,
                share,
                start_at,
                seconds,
                streams,
                number,
            )
            procs.append((number, ctx.Process(target=_client, args=(*args, queue))))
    for _, proc in procs:
        proc.start()
    gathered: dict[int, list[tuple[int, list[float], int]]] = {}
    for _ in procs:
        number, outcome = queue.get(timeout=seconds + 120)
        gathered.setdefault(number, []).append(outcome)
    for _, proc in procs:
        proc.join()
    results = []
    for number in range(len(loads)):
        shares = gathered.get(number, [])
        latencies = sorted(x for _, lat, _ in shares for x in lat)
        count = sum(n for n, _, _ in shares)
        errors = sum(e for _, _, e in shares)
        if len(latencies) < 2:
            results.append(Result(count / seconds, 0.0, 0.0, errors))
            continue
        q = statistics.quantiles(latencies, n=100)
        results.append(Result(count / seconds, q[49] * 1000, q[98] * 1000, errors))
    return results


def _only(
    appliance: Appliance,
    load: Load,
    seconds: float,
    address: str = "",
    pids: set[int] | None = None,
) -> Result:
    """One load alone, with the CPU its server (``pids``, else the daemon and its workers) used
    per request over the whole run (set-up and warm-up calls included, so slightly high)."""
    if pids is None:
        assert appliance.process is not None
        pids = {appliance.process.pid, *appliance.worker_pids()}
    before = cpu_seconds(pids)
    result = measure(appliance, [load], seconds, address)[0]
    used = cpu_seconds(pids) - before
    requests = result.requests_per_s * seconds
    per_request = used * 1000 / requests if requests else 0.0
    return dataclasses.replace(result, cpu_ms_per_request=per_request)


@contextlib.contextmanager
def floor_server(appliance: Appliance) -> Iterator[tuple[str, int]]:
    """The Python gRPC floor on the appliance's token and TLS files: its address and pid."""
    port = free_port()
    process = multiprocessing.get_context("spawn").Process(
        target=run_floor, args=(str(appliance.config_path), port), daemon=True
    )
    process.start()
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while not _listening(port):
            if time.time() > deadline or not process.is_alive():
                raise RuntimeError(f"the gRPC floor server did not start on {address}")
            time.sleep(0.1)
        assert process.pid is not None
        yield address, process.pid
    finally:
        process.terminate()
        process.join(10)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def paused(pid: int) -> Iterator[None]:
    """SIGSTOP one process for the duration of the block."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def daemons(home: Path, workers: int) -> Iterator[tuple[Appliance, Appliance]]:
    common = {
        "hsm": {"workers": workers},
        "keys": {"refresh_seconds": 2},
        "audit": {"checkpoint_every_seconds": 60, "checkpoint_every_records": 10_000},
        "roles": {"issuer": ["CN=issuer", "CN=second"]},
    }
    on = new_appliance(home / "coalesce", common, mtls=True)
    off = new_appliance(
        home / "separate", {**common, "hsm": {"workers": workers, "coalesce": False}}, mtls=True
    )
    try:
        for appliance in (on, off):
            appliance.setup()
            appliance.start()
        yield on, off
    finally:
        on.stop()
        off.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one phase")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {platform.platform()}; {time.strftime('%Y-%m-%d')}"
    )
    levels = (1, 16, 64)
    runs: dict[tuple[str, int], list[Result]] = {}
    raw: list[float] = []
    mixed: list[tuple[float, float]] = []
    idle: list[tuple[float, float]] = []
    floor: dict[int, list[Result]] = {}
    backend: list[Result] = []
    with (
        tempfile.TemporaryDirectory(prefix="signer-small-") as tmp,
        daemons(Path(tmp), args.workers) as (on, off),
        floor_server(on) as (floor_address, floor_pid),
    ):
        for n in range(args.rounds):
            with frozen(on, off), paused(floor_pid):
                raw.append(raw_ceiling(on, args.workers, args.seconds))
            for level in levels:
                with frozen(on, off):
                    floor.setdefault(level, []).append(
                        _only(on, Load(level), args.seconds, floor_address, {floor_pid})
                    )
                for name, daemon, other in (("on", on, off), ("off", off, on)):
                    with frozen(other), paused(floor_pid):
                        runs.setdefault((name, level), []).append(
                            _only(daemon, Load(level), args.seconds)
                        )
            with frozen(off), paused(floor_pid):
                alone = _only(on, Load(16), args.seconds)
                [small, _] = measure(on, [Load(16), Load(2, batch=1000)], args.seconds)
                mixed.append((alone.p99_ms, small.p99_ms))
                quiet = _only(on, Load(1, who="second"), args.seconds)
                [busy, _] = measure(
                    on, [Load(1, who="second"), Load(0, idle_streams=64)], args.seconds
                )
                idle.append((quiet.p99_ms, busy.p99_ms))
                backend.append(sign_one_load(on, 64, args.seconds))
            print(
                f"round {n + 1}: raw {raw[-1]:,.0f} sig/s; "
                + "; ".join(
                    f"{level} in flight: {runs[('on', level)][-1].requests_per_s:,.0f} / "
                    f"{runs[('off', level)][-1].requests_per_s:,.0f} / "
                    f"{floor[level][-1].requests_per_s:,.0f} req/s (on/off/floor)"
                    for level in levels
                )
            )
    ceiling = statistics.median(raw)
    print(f"\nraw python-pkcs11 ceiling, {args.workers} processes: {ceiling:,.0f} sig/s (median)")
    print(f"medians of {args.rounds} rounds of {args.seconds:g} s, batch 1, mutual TLS, audit on")
    print(
        f"{'in flight':>9} | {'coalesce req/s':>14} {'p50 ms':>7} {'p99 ms':>7} | "
        f"{'separate req/s':>14} {'p50 ms':>7} {'p99 ms':>7} | "
        f"{'floor req/s':>11} {'p50 ms':>7} {'p99 ms':>7} | {'on/raw':>7} {'on/off':>6} "
        f"{'on/floor':>8}"
    )
    for level in levels:
        a = runs[("on", level)]
        b = runs[("off", level)]
        f = floor[level]
        ra = statistics.median(r.requests_per_s for r in a)
        rb = statistics.median(r.requests_per_s for r in b)
        rf = statistics.median(r.requests_per_s for r in f)
        print(
            f"{level:>9} | {ra:>14,.0f} {statistics.median(r.p50_ms for r in a):>7.2f} "
            f"{statistics.median(r.p99_ms for r in a):>7.2f} | {rb:>14,.0f} "
            f"{statistics.median(r.p50_ms for r in b):>7.2f} "
            f"{statistics.median(r.p99_ms for r in b):>7.2f} | {rf:>11,.0f} "
            f"{statistics.median(r.p50_ms for r in f):>7.2f} "
            f"{statistics.median(r.p99_ms for r in f):>7.2f} | {ra / ceiling:>7.3f} "
            f"{ra / rb if rb else 0:>6.2f} {ra / rf if rf else 0:>8.2f}"
        )
        print(
            f"{'':>9}   CPU per request: coalesce "
            f"{statistics.median(r.cpu_ms_per_request for r in a):.3f} ms, separate "
            f"{statistics.median(r.cpu_ms_per_request for r in b):.3f} ms, floor "
            f"{statistics.median(r.cpu_ms_per_request for r in f):.3f} ms"
        )
        errors = sum(r.errors for r in a) + sum(r.errors for r in b)
        if errors:
            print(f"          ({errors} failed calls)")
    mixed_ratio = statistics.median(busy / alone for alone, busy in mixed if alone)
    idle_ratio = statistics.median(busy / quiet for quiet, busy in idle if quiet)
    print(
        f"mixed sizes: batch-1 p99 with two batch-1000 clients / without = {mixed_ratio:.2f}"
        f" (p99 {statistics.median(b for _, b in mixed):.2f} ms vs"
        f" {statistics.median(a for a, _ in mixed):.2f} ms; target <= 5)"
    )
    print(
        f"idle streams: p99 of another identity with 64 idle SignStreams open / without ="
        f" {idle_ratio:.2f} (p99 {statistics.median(b for _, b in idle):.2f} ms vs"
        f" {statistics.median(a for a, _ in idle):.2f} ms)"
    )
    print(
        f"one backend, 64 threads calling SignerClient.sign_one: "
        f"{statistics.median(r.requests_per_s for r in backend):,.0f} signatures/s, per call p50 "
        f"{statistics.median(r.p50_ms for r in backend):.2f} ms, p99 "
        f"{statistics.median(r.p99_ms for r in backend):.2f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
