"""Stream and call limits against a real mTLS daemon: per identity and overall caps, idle
streams ended, reflection only with a role, health always answered and Watch sending only
changes. Nothing here measures time: the order of events is made certain with the daemon's own
gauges (open streams, queued digests) and frozen HSM workers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from signer.v1 import signing_pb2, signing_pb2_grpc
from tests.client_certs import ClientCert, client_certificate
from tests.conftest import Appliance, MakeAppliance
from tests.test_aio_server import (
    PATIENT,
    WAIT,
    audited,
    digests,
    frozen_workers,
    metric,
    queued,
    wait_for,
)

PROFILE = "vaccination"
OPTIONS = [("grpc.ssl_target_name_override", "localhost")]
ROLES = {"issuer": ["CN=issuer", "CN=second", "CN=third"]}


def request(kid: bytes, seed: bytes, request_id: str) -> signing_pb2.SignBatchRequest:
    return signing_pb2.SignBatchRequest(
        profile=PROFILE, kid=kid, digests=digests(1, seed), request_id=request_id
    )


async def refusal_of(call: Any) -> grpc.aio.AioRpcError:
    """The status that ends a stream the server refuses (read until it ends)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    return caught.value


async def end_of(stream: Any) -> grpc.aio.AioRpcError:
    """The status that ends a stream read with ``read()``."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream.read()
    return caught.value


async def exchange(stream: Any, kid: bytes, seed: bytes, request_id: str) -> None:
    """One request and its answer on an open SignStream."""
    await stream.write(request(kid, seed, request_id))
    answer = await stream.read()
    assert answer.request_id == request_id and len(answer.signatures) == 1


def list_services() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
    async def one() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    return one()


class Clients:
    """aio channels to one appliance as several identities, closed together."""

    def __init__(self, appliance: Appliance) -> None:
        self._appliance = appliance
        self._channels: list[grpc.aio.Channel] = []

    def channel(self, who: str | ClientCert) -> grpc.aio.Channel:
        """A channel as a made certificate, a dev identity, or a new certificate for CN=who."""
        if isinstance(who, ClientCert):
            credentials = who.credentials
        elif who in ("issuer", "officer", "auditor"):
            credentials = self._appliance.credentials(who)
        else:
            credentials = client_certificate(self._appliance, who).credentials
        channel = grpc.aio.secure_channel(self._appliance.address, credentials, options=OPTIONS)
        self._channels.append(channel)
        return channel

    def signing(self, who: str | ClientCert) -> signing_pb2_grpc.SigningStub:
        return signing_pb2_grpc.SigningStub(self.channel(who))

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


def run(appliance: Appliance, scenario: Callable[[Clients], Any]) -> Any:
    async def main() -> Any:
        clients = Clients(appliance)
        try:
            return await scenario(clients)
        finally:
            await clients.close()

    return asyncio.run(main())


def open_streams(appliance: Appliance) -> float:
    return metric(appliance, "signer_open_streams")


def limit_refusals(appliance: Appliance, limit: str) -> float:
    return metric(appliance, "signer_limit_refusals_total", limit=limit)


def test_stream_caps_per_identity_and_overall_leave_health_and_unary_calls(
    make_appliance: MakeAppliance,
) -> None:
    appliance = make_appliance(
        {"roles": ROLES, "limits": {"max_streams": 4, "max_streams_per_identity": 2}}, mtls=True
    )
    kid = appliance.signing_key().kid
    stranger = client_certificate(appliance, "stranger")

    async def scenario(clients: Clients) -> None:
        first, second, third = (clients.signing(who) for who in ("issuer", "second", "third"))
        held = [first.SignStream(timeout=WAIT) for _ in range(2)]
        held += [second.SignStream(timeout=WAIT) for _ in range(2)]
        for n, stream in enumerate(held):
            await exchange(stream, kid, b"held-%d" % n, f"held-{n}")
        assert open_streams(appliance) == 4

        # CN=issuer holds its two: a third stream of its own is refused, naming the limit.
        own = await refusal_of(first.SignStream(iter([request(kid, b"x", "x")]), timeout=WAIT))
        assert own.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_streams_per_identity" in (own.details() or "")
        assert "CN=issuer already has 2 streams open" in (own.details() or "")
        reflection = reflection_pb2_grpc.ServerReflectionStub(clients.channel("issuer"))
        mirrored = await refusal_of(reflection.ServerReflectionInfo(list_services()))
        assert mirrored.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        # The appliance holds four: CN=third may open none, Watch included ...
        overall = await refusal_of(third.SignStream(iter([request(kid, b"y", "y")]), timeout=WAIT))
        assert overall.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "[limits] max_streams allows" in (overall.details() or "")
        third_health = health_pb2_grpc.HealthStub(clients.channel("third"))
        watch = await refusal_of(third_health.Watch(health_pb2.HealthCheckRequest(), timeout=WAIT))
        assert watch.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # ... but health checks are always answered, for any certificate of the CA ...
        for who in ("third", stranger):
            health = health_pb2_grpc.HealthStub(clients.channel(who))
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=WAIT)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # ... and unary calls go on.
        signed = await third.SignBatch(request(kid, b"third-unary", "t-1"), timeout=WAIT)
        assert len(signed.signatures) == 1

        # Reflection needs a role: a certificate without one is refused before any limit.
        strange = reflection_pb2_grpc.ServerReflectionStub(clients.channel(stranger))
        denied = await refusal_of(strange.ServerReflectionInfo(list_services()))
        assert denied.code() == grpc.StatusCode.UNAUTHENTICATED

        assert limit_refusals(appliance, "max_streams_per_identity") == 2
        assert limit_refusals(appliance, "max_streams") == 2
        for stream in held:
            stream.cancel()
        await asyncio.to_thread(
            wait_for, lambda: open_streams(appliance) == 0, "the cancelled streams to be released"
        )

        # Released: the identity opens streams again, and reflection works for it.
        again = first.SignStream(timeout=WAIT)
        await exchange(again, kid, b"again", "again")
        await again.done_writing()
        listing = reflection.ServerReflectionInfo(list_services())
        names = {s.name for s in (await listing.read()).list_services_response.service}
        assert "signer.v1.Signing" in names
        listing.cancel()

    run(appliance, scenario)
    record = audited(appliance)
    assert record[digests(1, b"third-unary")[0]] == [("t-1", "CN=third")]
    assert digests(1, b"x")[0] not in record and digests(1, b"y")[0] not in record
    assert appliance.process is not None and appliance.process.poll() is None


def test_call_cap_per_identity_leaves_other_identities_admitted(
    make_appliance: MakeAppliance,
) -> None:
    appliance = make_appliance(
        {
            **PATIENT,
            "roles": ROLES,
            "limits": {"max_calls_per_identity": 3, "max_streams_per_identity": 2},
        },
        mtls=True,
    )
    kid = appliance.signing_key().kid

    async def scenario(clients: Clients) -> None:
        first, second = clients.signing("issuer"), clients.signing("second")
        with frozen_workers(appliance):
            held = [
                asyncio.ensure_future(first.SignBatch(request(kid, b"h%d" % n, f"h{n}")))
                for n in range(3)
            ]
            await asyncio.to_thread(wait_for, lambda: queued(appliance) == 3, "three calls")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await first.SignBatch(request(kid, b"fourth", "h3"), timeout=WAIT)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_calls_per_identity" in (caught.value.details() or "")
            other = asyncio.ensure_future(second.SignBatch(request(kid, b"other", "o1")))
            await asyncio.to_thread(wait_for, lambda: queued(appliance) == 4, "the other call")
            health = health_pb2_grpc.HealthStub(clients.channel("issuer"))
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=WAIT)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        for call in [*held, other]:
            assert len((await call).signatures) == 1

    run(appliance, scenario)
    assert limit_refusals(appliance, "max_calls_per_identity") == 1
    record = audited(appliance)
    assert record[digests(1, b"other")[0]] == [("o1", "CN=second")]
    assert digests(1, b"fourth")[0] not in record


def test_idle_bidirectional_streams_are_ended_and_watch_sends_only_changes(
    make_appliance: MakeAppliance,
) -> None:
    appliance = make_appliance({"limits": {"stream_idle_seconds": 1}}, mtls=True)
    kid = appliance.signing_key().kid

    async def scenario(clients: Clients) -> None:
        stream = clients.signing("issuer").SignStream(timeout=WAIT)
        await exchange(stream, kid, b"before-idle", "before-idle")
        ended = await end_of(stream)
        assert ended.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "stream_idle_seconds" in (ended.details() or "")

        reflection = reflection_pb2_grpc.ServerReflectionStub(clients.channel("issuer"))

        async def one_then_silence() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")
            await asyncio.sleep(WAIT)

        listing = reflection.ServerReflectionInfo(one_then_silence(), timeout=WAIT)
        assert (await listing.read()).list_services_response.service
        assert (await end_of(listing)).code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        # A Watch is a server stream: never ended for idleness, and it sends only changes
        # (the daemon re-checks health every 2 s; the deadline ends it).
        watch = health_pb2_grpc.HealthStub(clients.channel("issuer")).Watch(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        seen = []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for reply in watch:
                seen.append(reply.status)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert seen == [health_pb2.HealthCheckResponse.SERVING]

    run(appliance, scenario)
    assert limit_refusals(appliance, "stream_idle_seconds") == 2
    wait_for(lambda: open_streams(appliance) == 0, "the streams to be released")
    lines = [
        line
        for line in appliance.log().splitlines()
        if "rpc SignStream CN=issuer RESOURCE_EXHAUSTED" in line
    ]
    assert len(lines) == 1
    assert audited(appliance)[digests(1, b"before-idle")[0]] == [("before-idle", "CN=issuer")]
    reply = appliance.signing().SignBatch(request(kid, b"after-idle", "after"), timeout=WAIT)
    assert len(reply.signatures) == 1
