"""Typed errors of the client library, one per thing a backend can do something about."""

from __future__ import annotations

import grpc

from signer.errors import SignerError

CURRENT_KID_METADATA = "signer-current-kid-bin"


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


class SignerUnavailable(RequestRefused):
    """The appliance (or its HSM or audit log) stayed unavailable through every retry."""


def from_rpc_error(error: grpc.RpcError) -> RequestRefused:
    """Turn a gRPC error into the matching typed error."""
    code = error.code()
    message = f"{code.name}: {error.details()}"
    if code is grpc.StatusCode.FAILED_PRECONDITION:
        for key, value in error.trailing_metadata() or ():
            if key == CURRENT_KID_METADATA and isinstance(value, bytes):
                return KidChanged(message, value)
        return NoActiveKey(message, code)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return SignerUnavailable(message, code)
    return RequestRefused(message, code)
