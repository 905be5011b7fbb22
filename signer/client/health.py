"""An appliance's health through the standard ``grpc.health.v1`` service.

Health needs no role: any client certificate the appliance's client CA trusts may ask. The
appliance reports the whole appliance (service ``""``) and each of its services; it is
SERVING only when the HSM answers, a worker is up, the audit log is writable and every profile
has an active key. ``signer.v1.KeyAdmin`` is also NOT_SERVING while the record store cannot be
reached, and ``signer.hsm.workers`` while fewer HSM workers run than configured; neither stops
signing.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVICES = ("", "signer.v1.Signing", "signer.v1.KeyAdmin", "signer.v1.Audit", "signer.hsm.workers")
"""The service names an appliance reports ("" is the appliance as a whole)."""
SERVING = "SERVING"
SERVICE_UNKNOWN = "SERVICE_UNKNOWN"


class UnknownService(ValueError):
    """The appliance reports no health for this service name."""

    def __init__(self, service: str) -> None:
        known = ", ".join(repr(name) for name in SERVICES)
        super().__init__(
            f"the appliance reports no health for service {service!r}; it reports {known}"
            " ('' is the appliance as a whole; KeyAdmin only where it is served)"
        )


def _status_name(response: health_pb2.HealthCheckResponse) -> str:
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def check(channel: grpc.Channel, service: str = "", timeout: float = 5.0) -> str:
    """The status name (``SERVING``, ``NOT_SERVING``, ...) of ``service`` now."""
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.RpcError as error:
        if error.code() is grpc.StatusCode.NOT_FOUND:
            raise UnknownService(service) from None
        raise
    return _status_name(response)


def watch(channel: grpc.Channel, service: str = "") -> Iterator[str]:
    """The status of ``service`` now and then each change, until the appliance goes away
    (the stream then ends with the gRPC error). Repeats of the same status are dropped."""
    stub = health_pb2_grpc.HealthStub(channel)
    responses = stub.Watch(health_pb2.HealthCheckRequest(service=service))
    last = None
    try:
        for response in responses:
            status = _status_name(response)
            if status == SERVICE_UNKNOWN:
                raise UnknownService(service)
            if status != last:
                last = status
                yield status
    finally:
        responses.cancel()
