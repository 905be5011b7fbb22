"""Every panel of the Grafana dashboard shows data: a real Prometheus scrapes the real daemon
under a short signing load, and each panel query runs through Prometheus' HTTP API the way
Grafana would send it.

Grafana's variables are replaced as Grafana computes them for this scrape interval (1 s):
``$__interval`` is the scrape interval (Grafana's lower bound for it), ``$__rate_interval``
four times that. A panel whose query returns nothing (or only NaN) fails.

The panels in :data:`AWAITING_PRIMING` read labelled counters that export no series before
their first event (an error, a refusal, a warning): they stay empty under a clean load until
the daemon exports zero-valued series for the known label values at start. They are expected
to fail (strictly: once the priming exists they pass, and the mark must go).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from signer.v1 import signing_pb2, signing_pb2_grpc
from tests.conftest import Appliance, new_appliance
from tests.prometheus_server import SCRAPE_SECONDS, Prometheus, has_data, running_prometheus

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "signer-dashboard.json"
JOB = "signer"
LOAD_SECONDS = 8
BATCH_SIZES = (1, 10, 200, 1000)


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def _panels() -> list[dict[str, Any]]:
    found = []
    for panel in _dashboard()["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return [p for p in found if p["type"] != "row"]


def _params() -> list[Any]:
    return [pytest.param(panel, id=panel["title"]) for panel in _panels()]


@dataclass(frozen=True)
class Scraped:
    """A Prometheus that scraped the daemon during a load, and when the load ran."""

    prometheus: Prometheus
    instance: str
    start: float
    end: float

    def expr(self, text: str) -> str:
        """A panel query with Grafana's variables replaced."""
        for variable, value in (
            ("$__rate_interval", f"{4 * SCRAPE_SECONDS}s"),
            ("$__interval", f"{SCRAPE_SECONDS}s"),
            ("$job", JOB),
            ("$instance", self.instance),
        ):
            text = text.replace(variable, value)
        return text


def _load(appliance: Appliance, seconds: float) -> None:
    """Two issuers signing batches of several sizes, as backends do."""
    kid = appliance.signing_key().kid
    errors: list[BaseException] = []

    def issuer(number: int) -> None:
        try:
            with grpc.insecure_channel(appliance.address) as channel:
                stub = signing_pb2_grpc.SigningStub(channel)
                deadline = time.monotonic() + seconds
                i = 0
                while time.monotonic() < deadline:
                    size = BATCH_SIZES[i % len(BATCH_SIZES)]
                    digests = [
                        hashlib.sha256(f"dash/{number}/{i}/{j}".encode()).digest()
                        for j in range(size)
                    ]
                    stub.GetSigningKey(signing_pb2.GetSigningKeyRequest(profile="vaccination"))
                    stub.SignBatch(
                        signing_pb2.SignBatchRequest(
                            profile="vaccination", kid=kid, digests=digests, request_id=f"d{i}"
                        ),
                        timeout=30,
                    )
                    i += 1
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=issuer, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    appliance = new_appliance(tmp_path_factory.mktemp("dashboard"))
    appliance.setup()
    appliance.start()
    instance = f"127.0.0.1:{appliance.metrics_port}"
    try:
        with running_prometheus(appliance.home / "prometheus", [instance], JOB) as prometheus:
            prometheus.wait_scraped_after(time.time())
            start = time.time()
            _load(appliance, LOAD_SECONDS)
            end = time.time()
            prometheus.wait_scraped_after(end + SCRAPE_SECONDS)
            yield Scraped(prometheus, instance, start, end + SCRAPE_SECONDS)
    finally:
        appliance.stop()


@pytest.mark.parametrize("panel", _params())
def test_panel_shows_data_under_load(scraped: Scraped, panel: dict[str, Any]) -> None:
    empty = []
    for target in panel["targets"]:
        expr = scraped.expr(target["expr"])
        if target.get("instant"):
            result = scraped.prometheus.query(expr, scraped.end)
        else:
            result = scraped.prometheus.query_range(expr, scraped.start, scraped.end)
        if not has_data(result):
            empty.append(f"{target['refId']}: {expr}")
    assert not empty, f"panel {panel['title']!r} shows no data for: {empty}"


def test_dashboard_variables_offer_the_scraped_appliance(scraped: Scraped) -> None:
    for variable in _dashboard()["templating"]["list"]:
        definition = scraped.expr(variable["definition"])
        match, _, label = definition.removeprefix("label_values(").rstrip(")").rpartition(",")
        values = scraped.prometheus.label_values(label.strip(), match.strip())
        wanted = JOB if variable["name"] == "job" else scraped.instance
        assert wanted in values, (variable["name"], values)
