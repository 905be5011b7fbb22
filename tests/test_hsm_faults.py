"""HSM faults under load, against a real daemon on real SoftHSM tokens: a token folder that
vanishes and returns, a worker that stops answering, a module that cannot load."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from signer.cli_exit import MAX_MESSAGE_CHARS, PREFIX, ExitCode
from signer.sigformat import raw_to_der
from signer.v1 import signing_pb2
from tests import conftest
from tests.conftest import Appliance, MakeAppliance, merge, render_toml
from tests.hsm_modules import SOFTHSM_MODULE

PROFILE = "vaccination"
REFRESH_SECONDS = 0.5
RECOVERY_INTERVALS = 20
"""Refresh intervals the daemon gets to serve every request again once the token is back."""
ALL_OK_SECONDS = 3.0
"""How long every request must succeed for the daemon to count as recovered."""


def softhsm_only() -> None:
    """Skip unless the daemon loads SoftHSM itself (these tests work on its files)."""
    if conftest.MODULE.module != SOFTHSM_MODULE or conftest.MODULE.remote:
        pytest.skip("works on SoftHSM's own files; the module under test is another")


@dataclass(frozen=True)
class Outcome:
    """One answer the load got: when it came, its status and message."""

    at: float
    code: grpc.StatusCode
    details: str


@dataclass
class Load:
    """Threads signing small batches back to back, recording every answer."""

    appliance: Appliance
    kid: bytes
    threads: int = 2
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _running: list[threading.Thread] = field(default_factory=list)

    def _run(self, name: int) -> None:
        stub = self.appliance.signing()
        n = 0
        while not self._stop.is_set():
            n += 1
            batch = [hashlib.sha256(f"load-{name}-{n}-{i}".encode()).digest() for i in range(4)]
            request = signing_pb2.SignBatchRequest(profile=PROFILE, kid=self.kid, digests=batch)
            try:
                reply = stub.SignBatch(request, timeout=60)
            except grpc.RpcError as exc:
                self.outcomes.append(Outcome(time.monotonic(), exc.code(), exc.details() or ""))
                time.sleep(0.02)
                continue
            assert len(reply.signatures) == len(batch)
            self.outcomes.append(Outcome(time.monotonic(), grpc.StatusCode.OK, ""))

    def __enter__(self) -> Load:
        for name in range(self.threads):
            thread = threading.Thread(target=self._run, args=(name,), daemon=True)
            thread.start()
            self._running.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._running:
            thread.join(timeout=90)

    def since(self, start: float) -> list[Outcome]:
        return [o for o in list(self.outcomes) if o.at >= start]

    def wait_for_answers(self, count: int, start: float, limit: float = 60) -> None:
        deadline = time.monotonic() + limit
        while len(self.since(start)) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.since(start)) >= count, "the load got no answers"


def failures(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.code != grpc.StatusCode.OK]


def assert_hsm_unavailable(outcomes: list[Outcome]) -> None:
    """Every failed request says the HSM is unavailable, never that a key is missing."""
    for o in failures(outcomes):
        assert o.code == grpc.StatusCode.UNAVAILABLE, (o.code, o.details)
        assert "HSM unavailable" in o.details, o.details
        assert "no active key" not in o.details


def verify(appliance: Appliance, digest: bytes, raw: bytes) -> None:
    key = serialization.load_der_public_key(appliance.signing_key().public_key_spki)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(raw_to_der(raw), digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


@contextlib.contextmanager
def folder_away(folder: Path) -> Iterator[None]:
    """Move a folder away for the duration of the block, and back even if the block fails."""
    away = folder.with_name(folder.name + "-away")
    folder.rename(away)
    try:
        yield
    finally:
        away.rename(folder)


def test_token_folder_gone_and_back_under_load(make_appliance: MakeAppliance) -> None:
    softhsm_only()
    appliance = make_appliance({"keys": {"refresh_seconds": REFRESH_SECONDS}})
    kid = appliance.signing_key().kid
    with Load(appliance, kid) as load:
        started = time.monotonic()
        load.wait_for_answers(20, started)
        assert not failures(load.outcomes), load.outcomes[:3]

        with folder_away(appliance.home / "tokens"):
            gone_at = time.monotonic()
            # Until the workers notice (the next key refresh at the latest), signing from
            # their session copies of the key may go on; then the HSM is unavailable.
            deadline = gone_at + RECOVERY_INTERVALS * REFRESH_SECONDS
            while not failures(load.since(gone_at)) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(4 * REFRESH_SECONDS)
        back_at = time.monotonic()
        while_gone = load.since(gone_at)
        assert failures(while_gone), "no request failed while the token folder was away"
        assert_hsm_unavailable(while_gone)

        # Recovered: a stretch of ALL_OK_SECONDS in which every request succeeds, starting
        # within RECOVERY_INTERVALS refresh intervals of the folder's return.
        deadline = back_at + RECOVERY_INTERVALS * REFRESH_SECONDS
        last_failure = back_at
        while time.monotonic() < deadline + ALL_OK_SECONDS:
            failed = failures(load.since(back_at))
            last_failure = failed[-1].at if failed else back_at
            if time.monotonic() - last_failure >= ALL_OK_SECONDS:
                break
            time.sleep(0.1)
        after = load.since(back_at)
        assert_hsm_unavailable(after)
        assert last_failure <= deadline, "requests still failed long after the token came back"
        tail = [o for o in after if o.at > last_failure]
        assert len(tail) >= 10 and not failures(tail)
    print(
        f"token folder away {back_at - gone_at:.1f} s: {len(failures(while_gone))} of"
        f" {len(while_gone)} requests UNAVAILABLE meanwhile; every request succeeded again"
        f" {max(0.0, last_failure - back_at):.2f} s after its return"
        f" (refresh interval {REFRESH_SECONDS} s)"
    )

    # The same key signs, and its signatures verify against the DSC's public key.
    assert appliance.signing_key().kid == kid
    digest = hashlib.sha256(b"after the token came back").digest()
    request = signing_pb2.SignBatchRequest(profile=PROFILE, kid=kid, digests=[digest])
    reply = appliance.signing().SignBatch(request, timeout=30)
    assert reply.kid == kid
    verify(appliance, digest, reply.signatures[0])
    appliance.wait_serving(timeout=30)
    log = appliance.log()
    assert "no longer present" in log and "keeping the last verified view" in log
    assert "cannot initialise PKCS#11 module" in log  # a restart while it was away says why


def test_stopped_worker_is_replaced_and_the_healthy_one_keeps_serving(
    make_appliance: MakeAppliance,
) -> None:
    appliance = make_appliance({"hsm": {"workers": 2, "timeout_seconds": 1.5}})
    kid = appliance.signing_key().kid
    before = appliance.worker_pids()
    assert len(before) == 2
    stopped, healthy = sorted(before)
    with Load(appliance, kid, threads=3) as load:
        started = time.monotonic()
        load.wait_for_answers(20, started)
        os.kill(stopped, signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            deadline = stopped_at + 60
            while time.monotonic() < deadline:
                pids = appliance.worker_pids()
                if stopped not in pids and len(pids) == 2:
                    break
                time.sleep(0.05)
            replaced_at = time.monotonic()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped, signal.SIGCONT)
        load.wait_for_answers(20, replaced_at)
    during = [o for o in load.outcomes if stopped_at <= o.at <= replaced_at]
    after = load.since(replaced_at)
    pids = appliance.worker_pids()
    assert stopped not in pids, "the stopped worker was not killed"
    assert healthy in pids, "the healthy worker was killed too"
    assert len(pids) == 2, f"the pool is not whole again: {pids}"
    # The job held by the stopped worker waited for its timeout and was signed by the other.
    assert during and not failures(during), failures(during)[:3]
    assert not failures(after), failures(after)[:3]
    assert "hung on sign_packed" in appliance.log()
    print(
        f"worker {stopped} stopped: {len(during)} requests answered OK in the"
        f" {replaced_at - stopped_at:.1f} s until it was replaced (timeout 1.5 s);"
        f" worker {healthy} kept its pid"
    )


def serve_once(appliance: Appliance, hsm: dict[str, object]) -> tuple[int, str]:
    """Run ``signer serve`` with these [hsm] settings; its exit code and stderr."""
    config = merge(appliance.config, {"hsm": hsm})
    appliance.config_path.write_text(render_toml(config))
    result = appliance.cli("serve", "--config", str(appliance.config_path), check=False)
    return result.returncode, result.stderr.decode(errors="replace")


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith(PREFIX)]
    assert len(lines) == 1, stderr
    assert len(lines[0]) <= len(PREFIX) + MAX_MESSAGE_CHARS
    return lines[0]


def test_module_that_cannot_load_says_why(make_appliance: MakeAppliance) -> None:
    appliance = make_appliance(start=False)
    missing = appliance.home / "no-such-module.so"
    code, stderr = serve_once(appliance, {"module": str(missing)})
    line = error_line(stderr)
    assert code == ExitCode.CONFIG, stderr
    assert str(missing) in line and "no such file" in line and "[hsm] module" in line

    # A file that is there but no shared object: dlerror's text reaches the operator.
    not_a_library = appliance.config_path
    code, stderr = serve_once(appliance, {"module": str(not_a_library)})
    line = error_line(stderr)
    assert code == ExitCode.CONFIG, stderr
    assert str(not_a_library) in line and "invalid ELF header" in line
    assert not line.rstrip().endswith(":")


def test_missing_softhsm_config_is_named(make_appliance: MakeAppliance) -> None:
    softhsm_only()
    appliance = make_appliance(start=False)
    missing = appliance.home / "gone" / "softhsm2.conf"
    code, stderr = serve_once(appliance, {"softhsm_conf": str(missing)})
    line = error_line(stderr)
    assert code == ExitCode.CONFIG, stderr
    assert "C_Initialize: GeneralError" in line
    assert str(missing) in line and "does not exist" in line and "softhsm_conf" in line


def test_missing_token_folder_at_start_is_unavailable(make_appliance: MakeAppliance) -> None:
    softhsm_only()
    appliance = make_appliance(start=False)
    tokens = appliance.home / "tokens"
    with folder_away(tokens):
        code, stderr = serve_once(appliance, {})
    line = error_line(stderr)
    assert code == ExitCode.UNAVAILABLE, stderr
    assert "HSM unavailable" in line and "token folder" in line
    assert str(tokens) in line or str(tokens)[:60] in line
    appliance.start()  # and with the folder back, the same config serves


def test_softhsm_diagnosis_is_only_for_softhsm(tmp_path: Path) -> None:
    """p11-kit's client in front of SoftHSM ignores SOFTHSM2_CONF: a stale one must not turn
    an unreachable server into a configuration error."""
    from pkcs11.exceptions import GeneralError

    from signer.errors import ConfigError, HsmUnavailable
    from signer.hsm.loadfail import load_failure

    stale = str(tmp_path / "deleted" / "softhsm2.conf")
    other = load_failure(
        Path("/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"), GeneralError(), stale
    )
    assert isinstance(other, HsmUnavailable) and "C_Initialize: GeneralError" in str(other)
    softhsm = load_failure(SOFTHSM_MODULE, GeneralError(), stale)
    assert isinstance(softhsm, ConfigError) and stale in str(softhsm)
