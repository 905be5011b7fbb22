"""Map the project's errors to gRPC status codes (DESIGN.md §5)."""

from __future__ import annotations

import grpc

from signer.errors import (
    AuditError,
    CertificateError,
    ConfigError,
    HsmError,
    HsmUnavailable,
    InvalidRequest,
    KeyNotFound,
    PermissionDenied,
    PolicyError,
    QuotaExceeded,
    SignerError,
    StoreConflict,
    StoreUnavailable,
    Unauthenticated,
    UnknownProfile,
)

_CODES: tuple[tuple[type[SignerError], grpc.StatusCode], ...] = (
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (CertificateError, grpc.StatusCode.INVALID_ARGUMENT),
    (UnknownProfile, grpc.StatusCode.NOT_FOUND),
    (KeyNotFound, grpc.StatusCode.NOT_FOUND),
    (PolicyError, grpc.StatusCode.FAILED_PRECONDITION),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (QuotaExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (StoreConflict, grpc.StatusCode.ABORTED),
    (HsmUnavailable, grpc.StatusCode.UNAVAILABLE),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (AuditError, grpc.StatusCode.UNAVAILABLE),
    (HsmError, grpc.StatusCode.INTERNAL),
    (ConfigError, grpc.StatusCode.INTERNAL),
)


def status_code(error: SignerError) -> grpc.StatusCode:
    """The gRPC status code a refusal with this error carries."""
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL
