"""Network-HSM throughput: SoftHSM behind p11-kit remoting, with latency added to every call.

One run, one machine, one token. The daemon loads p11-kit's remote client module, whose every
PKCS#11 call crosses a unix socket to a relay (``tests/socket_relay.py``, a process of its
own) that holds each message ``--delay-ms`` before passing it to a real ``p11-kit server`` in
front of SoftHSM: a stand-in for an HSM on the network. Side by side, in alternating rounds:

  (a) the daemon with ``workers = <cores>`` (the old default, one per core), and
  (b) the daemon with ``workers = "auto"`` (sized at start from a measured sign round trip),

both at batch 1000 with ``--clients x --threads`` requests in flight, audit on. With
``--unscaled-jobs`` a third phase (b') runs ``workers = "auto"`` with ``[hsm] chunk_digests``
raised so that its jobs are as large as one worker per core gets (the pool normally cuts them
in proportion to its size). Then (c) PKCS#11 calls per signature, counted by OpenSC's
pkcs11-spy in front of the client module: signer's signing path against python-pkcs11's own
``sign()``.

The last line is ``ratio=<b/a> auto_sig_s=<b> fixed_sig_s=<a> auto_workers=<n>
calls_per_signature=<c>`` (issue 11's target: ratio >= 4 at 1 ms per call).
"""

from __future__ import annotations

import argparse
import glob
import math
import multiprocessing
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from throughput import _client  # noqa: E402

from signer.config import HsmSettings, load  # noqa: E402
from signer.hsm.pooled import pooled_token  # noqa: E402
from signer.sigformat import SignatureEncoding  # noqa: E402
from tests.conftest import Appliance, new_appliance, render_toml  # noqa: E402
from tests.hsm_modules import P11KitServer, p11kit_client_module  # noqa: E402

CALLS_SIGNATURES = 1000


def throughput(appliance: Appliance, clients: int, threads: int, seconds: float) -> float:
    """Signatures per second the running daemon delivers to ``clients`` processes: every
    signature of every request begun within ``seconds``, over the time until the last one
    came back (a batch of 1000 takes seconds on a slow pool, so the tail is long)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    start = time.time() + 2.0
    procs = [
        ctx.Process(target=_client, args=(appliance.address, threads, seconds, start, queue, 300))
        for _ in range(clients)
    ]
    for proc in procs:
        proc.start()
    answers = [queue.get(timeout=seconds + 600) for _ in procs]
    for proc in procs:
        proc.join()
    return sum(count for count, _ in answers) / max(elapsed for _, elapsed in answers)


def remote_config(
    appliance: Appliance, address: str, workers: int | str, chunk_digests: int | None = None
) -> None:
    """Point the appliance at p11-kit's client module and the relay, with ``workers`` (and
    ``chunk_digests`` when given, else the default)."""
    config = dict(appliance.config)
    hsm = {k: v for k, v in config["hsm"].items() if k not in ("softhsm_conf", "chunk_digests")}
    hsm.update(
        module=str(p11kit_client_module()),
        workers=workers,
        environment={"P11_KIT_SERVER_ADDRESS": address},
    )
    if chunk_digests is not None:
        hsm["chunk_digests"] = chunk_digests
    config["hsm"] = hsm
    appliance.config = config
    appliance.config_path.write_text(render_toml(config))


def started_workers(log: str) -> int:
    """How many workers the daemon said it serves with."""
    found = re.findall(r"serving on \S+ with (\d+) HSM workers", log)
    return int(found[-1]) if found else 0


def job_size(log: str) -> int:
    """The most digests per job the daemon said it uses (0 when it did not measure)."""
    found = re.findall(r"jobs of at most (\d+) digests", log)
    return int(found[-1]) if found else 0


def _spy_module() -> str:
    found = sorted(glob.glob("/usr/lib/*/pkcs11/pkcs11-spy.so"))
    if not found:
        raise SystemExit("pkcs11-spy.so not found: apt-get install opensc-pkcs11")
    return found[0]


def _sign_calls(log: Path) -> int:
    return len(re.findall(r"^\d+: C_Sign(?:Init)?$", log.read_text(errors="replace"), re.M))


def signer_calls_per_signature(hsm: HsmSettings, spy_log: Path) -> float:
    """C_SignInit + C_Sign calls per signature on signer's signing path (one worker)."""
    environment = dict(hsm.vendor_environment)
    environment.update(PKCS11SPY=str(hsm.module), PKCS11SPY_OUTPUT=str(spy_log))
    spied = replace(hsm, module=Path(_spy_module()), vendor_environment=tuple(environment.items()))
    with pooled_token(spied, count=1) as token:
        key_id = token.key_id_by_label(hsm.audit_key_label)
        token.sign(key_id, [os.urandom(32)], SignatureEncoding.RAW)
        before = _sign_calls(spy_log)
        digests = [os.urandom(32) for _ in range(CALLS_SIGNATURES)]
        token.sign(key_id, digests, SignatureEncoding.RAW)
        time.sleep(0.5)  # the spy writes its log as calls return
        return (_sign_calls(spy_log) - before) / CALLS_SIGNATURES


def _python_pkcs11_signs(config: str, spy_log: str, out: Any) -> None:
    """python-pkcs11's own sign() through the spy (in a process of its own)."""
    settings = load(config)
    environment = settings.hsm.environment()
    environment.update(PKCS11SPY=str(settings.hsm.module), PKCS11SPY_OUTPUT=spy_log)
    os.environ.update(environment)
    import pkcs11
    from pkcs11 import Attribute, ObjectClass

    from signer.config import read_pin
    from signer.hsm.mechanisms import signing_mechanism

    lib = pkcs11.lib(_spy_module())
    token = lib.get_token(token_label=settings.hsm.token_label)
    with token.open(user_pin=read_pin(settings.hsm)) as session:
        template = {Attribute.CLASS: ObjectClass.PRIVATE_KEY}
        template[Attribute.LABEL] = settings.hsm.audit_key_label
        key = next(session.get_objects(template))
        before = _sign_calls(Path(spy_log))
        for _ in range(100):
            key.sign(os.urandom(32), mechanism=signing_mechanism())
        out.put((_sign_calls(Path(spy_log)) - before) / 100)


def python_pkcs11_calls_per_signature(config: Path, spy_log: Path) -> float:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_python_pkcs11_signs, args=(str(config), str(spy_log), queue))
    proc.start()
    value = float(queue.get(timeout=120))
    proc.join()
    return value


def seconds_per_signature(hsm: HsmSettings, address: str) -> float:
    """One worker's wall time per signature through p11-kit at ``address``."""
    remote = replace(
        hsm,
        module=p11kit_client_module(),
        softhsm_conf=None,
        vendor_environment=(("P11_KIT_SERVER_ADDRESS", address),),
    )
    with pooled_token(remote, count=1) as token:
        key_id = token.key_id_by_label(hsm.audit_key_label)
        digests = [os.urandom(32) for _ in range(200)]
        token.sign(key_id, digests[:10], SignatureEncoding.RAW)
        began = time.perf_counter()
        token.sign(key_id, digests, SignatureEncoding.RAW)
        return (time.perf_counter() - began) / len(digests)


def start_relay(listen: Path, target: Path, delay_ms: float) -> subprocess.Popen[bytes]:
    relay = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.socket_relay",
            str(listen),
            str(target),
            "--delay-ms",
            str(delay_ms),
        ],
        cwd=ROOT,
    )
    deadline = time.monotonic() + 10
    while not listen.exists():
        if relay.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the relay did not start")
        time.sleep(0.05)
    return relay


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--delay-ms", type=float, default=1.0, help="added to every call")
    parser.add_argument("--fixed-workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max-workers", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of one phase")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--threads", type=int, default=4, help="in-flight requests per client")
    parser.add_argument(
        "--unscaled-jobs",
        action="store_true",
        help='also run workers = "auto" with jobs as large as one worker per core gets',
    )
    args = parser.parse_args()

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {platform.platform()}; delay {args.delay_ms} ms per"
        " PKCS#11 call (client to server)"
    )
    fixed: list[float] = []
    auto: list[float] = []
    unscaled: list[float] = []
    auto_workers = 0
    jobs = {"fixed": 0, "auto": 0, "unscaled": 0}
    with tempfile.TemporaryDirectory(prefix="signer-nethsm-") as tmp:
        home = Path(tmp)
        appliance = new_appliance(
            home / "a",
            {
                "hsm": {"max_workers": args.max_workers, "timeout_seconds": 120},
                "keys": {"refresh_seconds": 2},
                "audit": {"checkpoint_every_seconds": 60, "checkpoint_every_records": 10_000},
            },
        )
        appliance.setup()  # dev-setup on SoftHSM directly: token, keys, certificates
        server = P11KitServer(appliance.home, "signer-test")
        server.start()
        sockets = Path(tempfile.mkdtemp(prefix="relay-"))
        relay = start_relay(sockets / "r", server.socket, args.delay_ms)
        address = f"unix:path={sockets / 'r'}"
        try:
            direct_hsm = load(appliance.config_path).hsm
            direct = seconds_per_signature(direct_hsm, server.address)
            relayed = seconds_per_signature(direct_hsm, address)
            added = (relayed - direct) / 2  # two calls per signature
            print(
                f"one worker: {direct * 1e3:.2f} ms per signature straight to the p11-kit server,"
                f" {relayed * 1e3:.2f} ms through the relay: {added * 1e3:.2f} ms added per call"
            )
            chunk_digests = direct_hsm.chunk_digests
            cores = os.cpu_count() or 1
            for n in range(args.rounds):
                phases: list[tuple[str, int | str, list[float]]] = [
                    ("fixed", args.fixed_workers, fixed),
                    ("auto", "auto", auto),
                ]
                if args.unscaled_jobs:
                    phases.append(("unscaled", "auto", unscaled))
                for phase, workers, results in phases:
                    # (b') raises chunk_digests so that the pool's own cut leaves jobs of
                    # chunk_digests digests, as one worker per core gets.
                    raised = (
                        math.ceil(chunk_digests * max(auto_workers, cores) / cores)
                        if phase == "unscaled"
                        else None
                    )
                    remote_config(appliance, address, workers, raised)
                    appliance.start()
                    appliance.wait_serving(timeout=300)
                    try:
                        results.append(
                            throughput(appliance, args.clients, args.threads, args.seconds)
                        )
                        if phase == "auto":
                            auto_workers = started_workers(appliance.log())
                        jobs[phase] = job_size(appliance.log())
                        for line in appliance.log().splitlines():
                            if "HSM:" in line:
                                print("   ", line.split(": ", 1)[-1])
                    finally:
                        appliance.stop()
                line = (
                    f"round {n + 1}: (a) workers = {args.fixed_workers}: {fixed[-1]:,.0f} sig/s"
                    f"  (b) workers = auto ({auto_workers} started): {auto[-1]:,.0f} sig/s"
                )
                if args.unscaled_jobs:
                    line += f"  (b') jobs of {jobs['unscaled']}: {unscaled[-1]:,.0f} sig/s"
                print(line)
            settings = load(appliance.config_path)
            ours = signer_calls_per_signature(settings.hsm, home / "spy-signer.log")
            theirs = python_pkcs11_calls_per_signature(
                appliance.config_path, home / "spy-python-pkcs11.log"
            )
        finally:
            relay.terminate()
            relay.wait()
            server.stop()

    a, b = statistics.median(fixed), statistics.median(auto)
    print(
        f"(a) workers = {args.fixed_workers} (one per core), jobs of {jobs['fixed']}:"
        f" {a:,.0f} sig/s (median)"
    )
    print(
        f'(b) workers = "auto" ({auto_workers} workers), jobs of {jobs["auto"]}:'
        f" {b:,.0f} sig/s (median)"
    )
    if unscaled:
        print(
            f'(b\') workers = "auto", jobs of {jobs["unscaled"]}:'
            f" {statistics.median(unscaled):,.0f} sig/s (median)"
        )
    print(f"(c) PKCS#11 calls per signature: signer {ours:.2f}, python-pkcs11 sign() {theirs:.2f}")
    print(
        f"ratio={b / a:.2f} auto_sig_s={b:.0f} fixed_sig_s={a:.0f} auto_workers={auto_workers}"
        f" calls_per_signature={ours:.2f} added_ms_per_call={added * 1e3:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
