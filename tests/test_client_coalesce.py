"""SignerClient.sign_one: concurrent single-digest calls share requests, each keeping its answer.

Against the scripted in-process server of :mod:`tests.test_client` (whose answers the test
controls) and against a real daemon.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from signer.client import RequestRefused, SignerClient
from signer.client.client import Coalescer
from tests.conftest import Appliance, metric_value
from tests.test_client import (
    KID,
    PROFILE,
    ScriptedSigning,
    digests,
    fake_signature,
    public_key,
    scripted,  # noqa: F401 (fixture)
    verify_all,
)


def test_callers_waiting_for_a_busy_request_go_together(
    scripted: tuple[ScriptedSigning, str],  # noqa: F811
) -> None:
    servicer, address = scripted
    servicer.delay = 0.5
    batch = digests(10, b"one")
    release = threading.Barrier(len(batch))
    with SignerClient(address, coalesce_in_flight=1) as client:

        def sign(digest: bytes) -> bytes:
            release.wait()
            return client.sign_one(PROFILE, digest, kid=KID)

        with ThreadPoolExecutor(len(batch)) as pool:
            signatures = list(pool.map(sign, batch))
    assert signatures == [fake_signature(d) for d in batch]
    # One request goes at once; everybody who came while it was on its way goes in the next.
    assert 1 <= len(servicer.calls) <= 2
    assert sorted(d for call in servicer.calls for d in call.digests) == sorted(batch)


def test_a_refusal_reaches_every_caller_of_that_request(
    scripted: tuple[ScriptedSigning, str],  # noqa: F811
) -> None:
    servicer, address = scripted
    servicer.delay = 0.3
    servicer.refusals = [(grpc.StatusCode.INVALID_ARGUMENT, ())] * 10
    with SignerClient(address, coalesce_in_flight=1, retries=0) as client:

        def sign(digest: bytes) -> str:
            try:
                client.sign_one(PROFILE, digest, kid=KID)
            except RequestRefused as error:
                return error.code.name
            return "OK"

        with ThreadPoolExecutor(6) as pool:
            outcomes = list(pool.map(sign, digests(6, b"refused")))
    assert outcomes == ["INVALID_ARGUMENT"] * 6
    assert len(servicer.calls) < 6


def test_coalescer_takes_at_most_max_batch() -> None:
    sent: list[list[bytes]] = []
    gate = threading.Event()

    def send(batch: list[bytes]) -> list[bytes]:
        sent.append(batch)
        gate.wait(5)
        return [b"s" + d for d in batch]

    coalescer = Coalescer(send, max_batch=3, max_in_flight=1)
    with ThreadPoolExecutor(7) as pool:
        first = pool.submit(coalescer.sign, b"0")
        while not sent:
            gate.wait(0.01)
        rest = [pool.submit(coalescer.sign, bytes([49 + n])) for n in range(6)]
        gate.set()
        answers = [first.result(), *(f.result() for f in rest)]
    assert answers == [b"s0", *(b"s" + bytes([49 + n]) for n in range(6))]
    assert all(len(batch) <= 3 for batch in sent)
    assert sorted(d for batch in sent for d in batch) == sorted(
        [b"0", *(bytes([49 + n]) for n in range(6))]
    )


def test_bad_coalescing_options_are_refused() -> None:
    for options in ({"coalesce_in_flight": 0}, {"coalesce_linger": -1.0}, {"coalesce_linger": 5}):
        with pytest.raises(ValueError):
            SignerClient("127.0.0.1:1", **options)


def test_real_daemon_sign_one_from_many_threads(appliance: Appliance) -> None:
    before = metric_value(appliance.metrics_text(), "signer_signatures_total")
    batch = digests(40, b"real-one")
    with SignerClient(appliance.address, coalesce_in_flight=2) as client:
        key = client.signing_key(PROFILE)
        assert key.max_batch == 10_000
        with ThreadPoolExecutor(16) as pool:
            signatures = list(pool.map(lambda d: client.sign_one(PROFILE, d), batch))
    verify_all(public_key(key.public_key_spki), batch, signatures)
    assert metric_value(appliance.metrics_text(), "signer_signatures_total") == before + 40
