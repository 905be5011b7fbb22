"""A daemon whose later HSM workers cannot start: it starts degraded, says so, and recovers.

The SoftHSM configuration file of the appliance is replaced by a named pipe the test serves:
the first worker to start reads the real configuration and logs in; every worker after it reads
one whose token folder is empty, so it finds no token and cannot start, until the test lets the
real configuration through again. That is the pool's own start-failure path with a real
module, decided by what each worker process reads rather than by a clock.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

import tests.conftest as conftest
from signer.service.health import WORKERS_SERVICE
from tests.conftest import Appliance, MakeAppliance, children_of, metric_value
from tests.hsm_modules import SOFTHSM_MODULE
from tests.test_key_ceremony import digests, sign

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ConfigPipe:
    """Serves a SoftHSM configuration through a named pipe, one reader at a time: the real
    one to the first reader and, once :attr:`healed` is set, to every later one; until then a
    configuration pointing at an empty token folder."""

    def __init__(self, path: Path, empty_tokens: Path, readers: Callable[[], set[int]]) -> None:
        self.path = path
        self.good = path.read_bytes()
        empty_tokens.mkdir()
        self.bad = f"directories.tokendir = {empty_tokens}\nobjectstore.backend = file\n".encode()
        self.healed = threading.Event()
        self.served_bad = 0
        self._readers = readers
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="softhsm-conf-pipe", daemon=True)
        path.unlink()
        os.mkfifo(path, 0o600)

    def __enter__(self) -> ConfigPipe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        # Unblock the writer waiting for a reader.
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        self._thread.join(timeout=10)
        os.close(fd)
        self.path.unlink()
        self.path.write_bytes(self.good)

    def _serve(self) -> None:
        first = True
        while not self._stop.is_set():
            fd = os.open(self.path, os.O_WRONLY)  # blocks until a worker opens it
            try:
                if self._stop.is_set():
                    return
                good = first or self.healed.is_set()
                os.write(fd, self.good if good else self.bad)
                self.served_bad += not good
                first = False
            finally:
                os.close(fd)
            self._wait_until_read()

    def _wait_until_read(self) -> None:
        """Reopening before the reader has seen the end of the file would hand it a second
        configuration: wait until no process of the daemon holds the pipe open."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not self._stop.is_set():
            if not any(self._holds(pid) for pid in self._readers()):
                return
            time.sleep(0.01)

    def _holds(self, pid: int) -> bool:
        try:
            return any(
                os.readlink(fd) == str(self.path) for fd in Path(f"/proc/{pid}/fd").iterdir()
            )
        except (FileNotFoundError, ProcessLookupError):
            return False


@pytest.fixture
def stopped_appliance(make_appliance: MakeAppliance) -> Iterator[Appliance]:
    if conftest.MODULE.module != SOFTHSM_MODULE:
        pytest.skip("needs SoftHSM loaded directly: the test serves its configuration file")
    yield make_appliance({"hsm": {"workers": 3}}, start=False, mtls=True)


def wait_for(what: str, condition: Callable[[], bool], app: Appliance, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {seconds} s:\n{app.log()[-4000:]}")
        time.sleep(0.1)


def health_cli(app: Appliance, service: str) -> tuple[int, bytes]:
    """``signer health --service SERVICE``: exit code and output."""
    done = app.cli("health", "--config", str(app.config_path), "--service", service, check=False)
    return done.returncode, done.stdout


def workers(app: Appliance) -> tuple[float, float]:
    text = app.metrics_text()
    return metric_value(text, "signer_hsm_workers_up"), metric_value(text, "signer_hsm_workers")


def test_starts_degraded_reports_it_and_recovers(stopped_appliance: Appliance) -> None:
    app = stopped_appliance

    def readers() -> set[int]:
        process = app.process
        return children_of(process.pid) if process is not None else set()

    with ConfigPipe(app.home / "softhsm2.conf", app.home / "no-tokens", readers) as pipe:
        app.start()  # waits until the appliance as a whole says SERVING
        assert "2 of 3 workers could not start" in app.log()
        assert app.health("signer.v1.Signing") == SERVING
        assert app.health(WORKERS_SERVICE) == NOT_SERVING
        assert workers(app) == (1, 3)
        kid = app.signing_key().kid
        signed = sign(app, kid, digests(1000, b"degraded"))
        assert len(signed.signatures) == 1000

        # The pool keeps trying; while the HSM environment stays broken it stays degraded.
        wait_for("a failed restart", lambda: "could not restart" in app.log(), app)
        assert pipe.served_bad >= 3
        assert app.health(WORKERS_SERVICE) == NOT_SERVING and app.health("") == SERVING
        assert "health: signer.hsm.workers NOT_SERVING: only 1 of 3 HSM workers run" in app.log()
        assert health_cli(app, WORKERS_SERVICE) == (1, b"signer.hsm.workers: NOT_SERVING\n")
        assert health_cli(app, "") == (0, b"SERVING\n")

        pipe.healed.set()
        wait_for("every worker back", lambda: workers(app) == (3, 3), app)
        wait_for("workers SERVING", lambda: app.health(WORKERS_SERVICE) == SERVING, app)
        assert app.health("") == SERVING
        assert health_cli(app, WORKERS_SERVICE) == (0, b"signer.hsm.workers: SERVING\n")
        assert metric_value(app.metrics_text(), "signer_hsm_worker_restarts_total") == 2
        assert len(app.worker_pids()) == 3
        signed = sign(app, kid, digests(1000, b"recovered"))
        assert len(signed.signatures) == 1000
