"""End-to-end batch issuance through a real daemon, with 1, 2, 4 client processes, and the plan
for 200 million certificates.

Starts its own appliance (fresh SoftHSM token in a temporary directory, the same setup the
tests use; ``[hsm] workers`` HSM worker processes), writes ``--records`` lines of the
Vietnamese example records to a JSONL file and runs the batch pipeline
(:func:`signer.dcc.pipeline.issue_batch`, what ``signer dcc issue --batch`` runs) once per
``--jobs`` value and ``--rounds`` times, alternating, with a fresh output file each time::

    .venv/bin/python benchmarks/issue.py [--records 30000] [--jobs 1 2 4] [--rounds 1]
        [--chunk-size 1000] [--verify-sample 0.01] [--qr] [--hsm-workers 2]

For every run it prints one ``key=value`` line:

* ``records_per_s``: output lines per second of wall time;
* ``client_cpu_us``: client CPU (user + system, the issuing process and its worker processes)
  per record, without the start-up of the worker processes (``startup_cpu_s``: a run with the
  same ``--jobs`` over two one-line chunks per worker): what a client core costs in a long
  batch;
* ``hsm_wait``: share of the HSM worker processes' time with no signature being made (1 -
  PKCS#11 signing time summed over the workers / (wall time x workers));
* ``cpu_per_wall``: client cores kept busy.

Before the runs, ``ceiling_sig_per_s`` is what the appliance signs with batches of 1000 and 8
requests in flight while the client does nothing else (``SignerClient.sign_digests``). At the
end, ``plan`` lines give the hours for 200 million records on N client cores against one and
two such appliances: ``records/s = min(N x 1e6 / client_cpu_us, appliances x ceiling)``, with
the median ``client_cpu_us`` of the run with the most jobs. On a machine whose cores are shared
between the daemon and the client (the development VM), the runs measure that sharing: say so
with the results.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import hashlib
import itertools
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from signer.client import SignerClient  # noqa: E402
from signer.dcc.batch_worker import BatchOptions  # noqa: E402
from signer.dcc.issue import RotatingSigner  # noqa: E402
from signer.dcc.pipeline import issue_batch  # noqa: E402

if TYPE_CHECKING:
    from tests.conftest import Appliance

PROFILE = "vaccination"
TARGET_RECORDS = 200_000_000
PLAN_CORES = (2, 4, 8, 16, 32)


def connect(address: str) -> RotatingSigner:
    """The signer of one worker process (module-level: worker processes are spawned)."""
    return SignerClient(address, max_batch=10_000, concurrency=2).dcc_signer()


@dataclass(frozen=True)
class Run:
    jobs: int
    records: int
    wall_s: float
    client_cpu_s: float
    startup_cpu_s: float
    hsm_busy_s: float
    hsm_workers: int

    @property
    def records_per_s(self) -> float:
        return self.records / self.wall_s

    @property
    def client_cpu_us(self) -> float:
        return max(self.client_cpu_s - self.startup_cpu_s, 0.0) / self.records * 1e6

    @property
    def hsm_wait(self) -> float:
        return max(0.0, 1.0 - self.hsm_busy_s / (self.wall_s * self.hsm_workers))


def write_input(path: Path, count: int) -> None:
    lines = (ROOT / "examples" / "records-vn.jsonl").read_text(encoding="utf-8").splitlines()
    examples = [line for line in lines if line.strip()]
    with path.open("w", encoding="utf-8") as out:
        for line in itertools.islice(itertools.cycle(examples), count):
            out.write(line + "\n")


def daemon_seconds(appliance: Appliance, name: str) -> float:
    return sum(
        float(line.rpartition(" ")[2])
        for line in appliance.metrics_text().splitlines()
        if line.startswith(f"{name}_sum")
    )


def client_cpu() -> float:
    """CPU seconds of this process and of its children that have ended (the workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def ceiling(appliance: Appliance, digests: int) -> float:
    """Signatures/s with batches of 1000 and 8 requests in flight."""
    batch = [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(digests)]
    with SignerClient(appliance.address, max_batch=1000, concurrency=8) as client:
        kid = client.signing_key(PROFILE).kid
        client.sign_digests(PROFILE, batch[:1000], kid=kid)
        started = time.perf_counter()
        client.sign_digests(PROFILE, batch, kid=kid)
        return digests / (time.perf_counter() - started)


def startup_cpu(appliance: Appliance, work: Path, jobs: int, options: BatchOptions) -> float:
    """Client CPU of a run that starts every worker process and signs almost nothing: two
    one-line chunks per worker (their own cost is a few hundred microseconds)."""
    tiny, out = work / "tiny.jsonl", work / "tiny-out.jsonl"
    write_input(tiny, 2 * jobs)
    before = client_cpu()
    issue_batch(
        tiny,
        out,
        functools.partial(connect, appliance.address),
        options=dataclasses.replace(options, chunk_size=1),
        jobs=jobs,
    )
    out.unlink()
    return client_cpu() - before


def issue_run(
    appliance: Appliance,
    source: Path,
    out: Path,
    jobs: int,
    options: BatchOptions,
    records: int,
    startup: float,
) -> Run:
    hsm_before = daemon_seconds(appliance, "signer_hsm_sign_duration_seconds")
    cpu_before = client_cpu()
    started = time.perf_counter()
    summary = issue_batch(
        source, out, functools.partial(connect, appliance.address), options=options, jobs=jobs
    )
    wall = time.perf_counter() - started
    cpu = client_cpu() - cpu_before
    hsm_busy = daemon_seconds(appliance, "signer_hsm_sign_duration_seconds") - hsm_before
    if summary.issued != records or summary.stop is not None:
        raise SystemExit(f"run with --jobs {jobs} did not issue every record: {summary}")
    workers = int(appliance.config["hsm"]["workers"])
    return Run(jobs, records, wall, cpu, startup, hsm_busy, workers)


def plan_hours(cpu_us: float, appliance_ceiling: float, cores: int, appliances: int) -> float:
    rate = min(cores * 1e6 / cpu_us, appliances * appliance_ceiling)
    return TARGET_RECORDS / rate / 3600


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=30_000)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rounds", type=int, default=1, help="runs per --jobs value")
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--verify-sample", type=float, default=0.01)
    parser.add_argument("--qr", action="store_true", help="also write a PNG per certificate")
    parser.add_argument("--hsm-workers", type=int, default=2)
    parser.add_argument("--ceiling-digests", type=int, default=40_000)
    args = parser.parse_args(argv)
    if args.records < 1 or args.rounds < 1 or min(args.jobs) < 1:
        parser.error("--records, --rounds and --jobs must be >= 1")
    from tests.conftest import new_appliance  # not in worker processes: it imports pytest

    with tempfile.TemporaryDirectory(prefix="signer-bench-") as tmp:
        work = Path(tmp)
        appliance = new_appliance(
            work / "appliance",
            {
                "log": {"level": "WARNING"},
                "audit": {"checkpoint_every_records": 1000},
                "hsm": {"workers": args.hsm_workers},
            },
        )
        appliance.setup()
        appliance.start()
        source = work / "records.jsonl"
        write_input(source, args.records)
        options = BatchOptions(
            chunk_size=args.chunk_size,
            check_rate=args.verify_sample,
            qr_dir=work / "qr" if args.qr else None,
        )
        runs: list[Run] = []
        try:
            top = ceiling(appliance, args.ceiling_digests)
            print(
                f"date={dt.date.today()} cores={len(os.sched_getaffinity(0))}"
                f" hsm_workers={args.hsm_workers} records={args.records}"
                f" chunk_size={args.chunk_size} verify_sample={args.verify_sample} qr={args.qr}"
            )
            print(f"ceiling_sig_per_s={top:.0f} load_avg_1min={os.getloadavg()[0]:.2f}")
            startups = {jobs: startup_cpu(appliance, work, jobs, options) for jobs in args.jobs}
            print(" ".join(f"startup_cpu_s[jobs={j}]={s:.2f}" for j, s in startups.items()))
            for number, jobs in enumerate(args.jobs * args.rounds):
                out = work / f"out-{number}.jsonl"
                run = issue_run(appliance, source, out, jobs, options, args.records, startups[jobs])
                out.unlink()
                runs.append(run)
                print(
                    f"jobs={jobs} wall_s={run.wall_s:.2f} records_per_s={run.records_per_s:.0f}"
                    f" client_cpu_us={run.client_cpu_us:.1f}"
                    f" cpu_per_wall={run.client_cpu_s / run.wall_s:.2f}"
                    f" hsm_busy_s={run.hsm_busy_s:.2f} hsm_wait={run.hsm_wait:.2f}"
                    f" load_avg_1min={os.getloadavg()[0]:.2f}",
                    flush=True,
                )
        finally:
            appliance.stop()
    most = max(args.jobs)
    cpu_us = statistics.median(run.client_cpu_us for run in runs if run.jobs == most)
    for jobs in sorted(set(args.jobs)):
        same = [run for run in runs if run.jobs == jobs]
        rate = statistics.median(r.records_per_s for r in same)
        print(
            f"median jobs={jobs} records_per_s={rate:.0f}"
            f" client_cpu_us={statistics.median(r.client_cpu_us for r in same):.1f}"
            f" hsm_wait={statistics.median(r.hsm_wait for r in same):.2f}"
        )
    for cores in PLAN_CORES:
        one, two = (plan_hours(cpu_us, top, cores, n) for n in (1, 2))
        print(f"plan cores={cores} hours_one_appliance={one:.1f} hours_two_appliances={two:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
