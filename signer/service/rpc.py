"""What an RPC's outcome looks like to the caller and to the operator, with no gRPC plumbing.

A refusal is the status code, message and trailing metadata a :class:`SignerError` ends a call
with; a :class:`CallRecord` is what one call adds to the metrics and the access log. The
daemon's asyncio interceptor (:mod:`signer.service.aio_interceptor`) applies them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc

from signer.errors import KidNotAccepted, QuotaExceeded, SignerError
from signer.metadata import CURRENT_KID_METADATA, RETRY_AFTER_METADATA
from signer.service.echo import bounded_message, escaped
from signer.service.metrics import Metrics
from signer.service.status import status_code

access = logging.getLogger("signer.access")

INTERNAL_MESSAGE = "internal error in the signer; the operator can find it in the log"
"""What a caller learns about an unexpected exception; the traceback goes to the daemon log."""

REQUEST_ID_LIMIT = 128

Metadata = tuple[tuple[str, str | bytes], ...]


@dataclass(frozen=True)
class Refusal:
    """The status a call ends with instead of an answer."""

    code: grpc.StatusCode
    message: str
    trailing_metadata: Metadata = ()


INTERNAL = Refusal(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


def refusal(error: SignerError) -> Refusal:
    """The status code, message and trailing metadata that belong to ``error``; the message is
    one line and bounded, whatever client strings the error quotes."""
    trailing: list[tuple[str, str | bytes]] = []
    if isinstance(error, KidNotAccepted) and error.current_kid:
        trailing.append((CURRENT_KID_METADATA, error.current_kid))
    if isinstance(error, QuotaExceeded):
        trailing.append((RETRY_AFTER_METADATA, f"{error.retry_after:.3f}"))
    return Refusal(status_code(error), bounded_message(str(error)), tuple(trailing))


def method_name(full_method: str) -> str:
    """``/signer.v1.Signing/SignBatch`` -> ``SignBatch``, the name metrics and logs use."""
    return full_method.rpartition("/")[2]


def request_id_of(message: object) -> str:
    """The caller's ``request_id`` of a request message (cut and escaped for the access log),
    empty where it has none."""
    return escaped(str(getattr(message, "request_id", ""))[:REQUEST_ID_LIMIT])


@dataclass(frozen=True)
class CallRecord:
    """One accounted call: what the metrics count and the access log line says."""

    method: str
    identity: str
    code: grpc.StatusCode
    seconds: float
    request_id: str

    def fields(self) -> dict[str, object]:
        """The access log fields (the JSON formatter writes them as keys of the line)."""
        return {
            "method": self.method,
            "identity": self.identity,
            "code": self.code.name,
            "duration_ms": round(self.seconds * 1000, 3),
            "request_id": self.request_id[:REQUEST_ID_LIMIT],
        }


def account(metrics: Metrics, call: CallRecord) -> None:
    """Count and time the call and write its access log line."""
    metrics.requests.labels(call.method, call.code.name).inc()
    metrics.request_seconds.labels(call.method).observe(call.seconds)
    fields = call.fields()
    access.info(
        "rpc %s %s %s %.2f ms %s",
        call.method,
        call.identity,
        call.code.name,
        call.seconds * 1000,
        fields["request_id"],
        extra={"rpc": fields},
    )
