"""The errors a probe service raises and the status each must end with, and helpers that read
what the interceptor logged: the table ``test_rpc_errors_aio.py`` drives every call kind with."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from signer.errors import (
    AuditError,
    CertificateError,
    HsmError,
    HsmUnavailable,
    InvalidRequest,
    KidNotAccepted,
    PermissionDenied,
    QuotaExceeded,
    SignerError,
    UnknownProfile,
)

GENERIC_MESSAGE = "internal error in the signer; the operator can find it in the log"
CURRENT_KID = b"\x01\x02\x03\x04\x05\x06\x07\x08"

ERRORS: dict[str, Callable[[], SignerError]] = {
    "invalid": lambda: InvalidRequest("digest 3 has 31 bytes; send SHA-256 digests"),
    "certificate": lambda: CertificateError("the DSC does not match the key"),
    "profile": lambda: UnknownProfile("profile 'xx' is not served"),
    "kid": lambda: KidNotAccepted("kid no longer signs; use the current kid", CURRENT_KID),
    "denied": lambda: PermissionDenied("officer role needed"),
    "quota": lambda: QuotaExceeded("over the signing rate; retry later", 1.25),
    "hsm_down": lambda: HsmUnavailable("the HSM does not answer"),
    "audit": lambda: AuditError("the audit log cannot be written"),
    "hsm": lambda: HsmError("the HSM refused the operation"),
}
EXPECTED = {
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "certificate": grpc.StatusCode.INVALID_ARGUMENT,
    "profile": grpc.StatusCode.NOT_FOUND,
    "kid": grpc.StatusCode.FAILED_PRECONDITION,
    "denied": grpc.StatusCode.PERMISSION_DENIED,
    "quota": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "hsm_down": grpc.StatusCode.UNAVAILABLE,
    "audit": grpc.StatusCode.UNAVAILABLE,
    "hsm": grpc.StatusCode.INTERNAL,
}


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.rpc for r in caplog.records if r.name == "signer.access"]  # type: ignore[attr-defined]


def summary(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, str]]:
    return [(line["method"], line["code"], line["request_id"]) for line in access_lines(caplog)]


def refused(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def trailing(error: grpc.RpcError) -> dict[str, str | bytes]:
    return dict(error.trailing_metadata() or ())
