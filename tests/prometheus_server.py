"""A real Prometheus (Debian package ``prometheus``) for tests: its own folder, a generated
config scraping given targets every second, a free loopback port, stopped afterwards."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port

SCRAPE_SECONDS = 1


class Prometheus:
    """One running server and its HTTP API."""

    def __init__(self, home: Path, targets: list[str], job: str) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail(
                "prometheus is not installed; run ./softhsm_setup.sh --test-tools (installs the"
                " Debian package 'prometheus')"
            )
        self.home = home
        self.port = free_port()
        config = home / "prometheus.yml"
        config.write_text(
            json.dumps(
                {
                    "global": {
                        "scrape_interval": f"{SCRAPE_SECONDS}s",
                        "evaluation_interval": f"{SCRAPE_SECONDS}s",
                    },
                    "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}],
                }
            )
        )
        self._log = (home / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={home / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def _get(self, path: str, **params: str | float) -> Any:
        query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        url = f"http://127.0.0.1:{self.port}{path}" + (f"?{query}" if query else "")
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus refused {path} {params}: {body}")
        return body["data"]

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited: {self.log()}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.port}/-/ready", timeout=2
                ) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready within {timeout} s: {self.log()}")

    def wait_scraped_after(self, moment: float, timeout: float = 60) -> None:
        """Wait until every target was scraped successfully after the Unix time ``moment``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            targets = self._get("/api/v1/targets")["activeTargets"]
            if targets and all(
                t["health"] == "up" and _unix(t["lastScrape"]) > moment for t in targets
            ):
                return
            time.sleep(0.2)
        raise AssertionError(f"targets not scraped after {moment}: {targets}")

    def query(self, expr: str, at: float) -> list[dict[str, Any]]:
        """An instant query at Unix time ``at``."""
        result: list[dict[str, Any]] = self._get("/api/v1/query", query=expr, time=at)["result"]
        return result

    def query_range(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        """A range query with one step per scrape interval."""
        result: list[dict[str, Any]] = self._get(
            "/api/v1/query_range", query=expr, start=start, end=end, step=SCRAPE_SECONDS
        )["result"]
        return result

    def label_values(self, label: str, match: str) -> list[str]:
        """What Grafana's ``label_values(match, label)`` offers."""
        values: list[str] = self._get(f"/api/v1/label/{label}/values", **{"match[]": match})
        return values

    def log(self) -> str:
        return (self.home / "prometheus.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def has_data(result: list[dict[str, Any]]) -> bool:
    """True when a query result holds at least one number (NaN is Grafana's "no data")."""
    for series in result:
        points = series.get("values") or [series.get("value")]
        if any(point and not math.isnan(float(point[1])) for point in points):
            return True
    return False


def _unix(rfc3339: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


@contextmanager
def running_prometheus(home: Path, targets: list[str], job: str) -> Iterator[Prometheus]:
    """Start a Prometheus scraping ``targets`` as ``job``; stop it afterwards."""
    home.mkdir(parents=True, exist_ok=True)
    server = Prometheus(home, targets, job)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
