"""Typed errors of the client library, one per thing a backend can do something about.

Every error is a :class:`RequestRefused` (itself a :class:`signer.errors.SignerError`) whose
``code`` is the gRPC status and whose message is the appliance's own explanation.
"""

from __future__ import annotations

import grpc

from signer.errors import SignerError
from signer.metadata import CURRENT_KID_METADATA, RETRY_AFTER_METADATA


class RequestRefused(SignerError):
    """The appliance refused the request; ``code`` is the gRPC status, the message says why."""

    def __init__(self, message: str, code: grpc.StatusCode) -> None:
        super().__init__(message)
        self.code = code


class KidChanged(RequestRefused):
    """The kid used may not sign any more: rebuild the protected header with ``current_kid``."""

    def __init__(self, message: str, current_kid: bytes) -> None:
        super().__init__(message, grpc.StatusCode.FAILED_PRECONDITION)
        self.current_kid = current_kid


class NoActiveKey(RequestRefused):
    """The profile has no key that may sign now; a security officer must activate one."""


class InvalidRequest(RequestRefused):
    """The request itself is wrong (digest length, empty or oversized batch); do not retry."""


class UnknownProfile(RequestRefused):
    """The appliance has no such profile (NOT_FOUND)."""


class NotAuthorized(RequestRefused):
    """The client certificate is missing, unknown, or lacks the role (UNAUTHENTICATED,
    PERMISSION_DENIED)."""


class QuotaExceeded(RequestRefused):
    """This client exceeded its quota; ``retry_after`` (seconds, 0 if retrying cannot help)."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message, grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.retry_after = retry_after


class SignerUnavailable(RequestRefused):
    """The appliance (or its HSM or audit log) stayed unavailable through every retry."""


class DeadlineExceeded(SignerUnavailable):
    """The appliance did not answer within the client's timeout (not retried: the request may
    still be running)."""


def from_rpc_error(error: grpc.RpcError) -> RequestRefused:
    """Turn a gRPC error into the matching typed error."""
    code: grpc.StatusCode = error.code()
    message = f"{code.name}: {error.details()}"
    trailing = dict(error.trailing_metadata() or ())
    if code is grpc.StatusCode.FAILED_PRECONDITION:
        current = trailing.get(CURRENT_KID_METADATA)
        if isinstance(current, bytes) and current:
            return KidChanged(message, current)
        return NoActiveKey(message, code)
    if code is grpc.StatusCode.UNAVAILABLE:
        return SignerUnavailable(message, code)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(message, code)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return QuotaExceeded(message, _seconds(trailing.get(RETRY_AFTER_METADATA)))
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidRequest(message, code)
    if code is grpc.StatusCode.NOT_FOUND:
        return UnknownProfile(message, code)
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return NotAuthorized(message, code)
    return RequestRefused(message, code)


def _seconds(value: object) -> float:
    try:
        seconds = float(value) if isinstance(value, str | bytes) else 0.0
    except ValueError:
        return 0.0
    return seconds if seconds > 0 else 0.0
