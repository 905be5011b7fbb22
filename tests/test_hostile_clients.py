"""Hostile clients against a real mTLS daemon: identities that stay distinct, bounded echoes,
aggregated refusal records. After each case the daemon is still up and a normal request of a
real issuer is signed.

Stream and call limits are in tests/test_call_limits.py.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from signer.audit.query import iter_records
from signer.audit.record import AuditRecord
from signer.service.echo import MESSAGE_BYTES
from signer.v1 import signing_pb2, signing_pb2_grpc
from tests.client_certs import ClientCert, client_certificate
from tests.conftest import Appliance, MakeAppliance, metric_value, new_appliance

PROFILE = "vaccination"
URI_A = "spiffe://moh.test/dcc/backend-a"
URI_B = "spiffe://moh.test/dcc/backend-b"
LONGEST_LOG_LINE = 2000
"""No line a refused request makes the daemon write is longer than this (characters)."""


def digests(n: int, seed: bytes) -> list[bytes]:
    return [hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(n)]


def stub_for(appliance: Appliance, cert: ClientCert) -> signing_pb2_grpc.SigningStub:
    return signing_pb2_grpc.SigningStub(appliance.channel(credentials=cert.credentials))


def refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def sign(
    stub: signing_pb2_grpc.SigningStub, kid: bytes, batch: list[bytes], request_id: str = ""
) -> signing_pb2.SignBatchResponse:
    return stub.SignBatch(
        signing_pb2.SignBatchRequest(
            profile=PROFILE, kid=kid, digests=batch, request_id=request_id
        ),
        timeout=30,
    )


def metric(appliance: Appliance, name: str, **labels: str) -> float:
    return metric_value(appliance.metrics_text(), name, **labels)


def audited_identities(appliance: Appliance) -> dict[bytes, list[str]]:
    """digest -> identities of every sign_batch record naming it."""
    found: dict[bytes, list[str]] = {}
    for record in iter_records(appliance.audit_dir):
        if record.event == "sign_batch":
            for digest in record.digests:
                found.setdefault(digest, []).append(record.identity or "")
    return found


def refusal_records(appliance: Appliance, identity: str) -> list[AuditRecord]:
    return [
        r
        for r in iter_records(appliance.audit_dir)
        if r.event == "auth_refused" and r.identity == identity
    ]


def still_serving(appliance: Appliance, seed: bytes) -> None:
    """The daemon is up and signs a normal request of the dev issuer."""
    assert appliance.process is not None and appliance.process.poll() is None
    batch = digests(2, seed)
    reply = sign(appliance.signing(), appliance.signing_key().kid, batch)
    assert len(reply.signatures) == 2
    assert audited_identities(appliance)[batch[0]] == ["CN=issuer"]


def access_lines(appliance: Appliance, *words: str) -> list[str]:
    return [
        line
        for line in appliance.log().splitlines()
        if "signer.access: rpc" in line and all(word in line for word in words)
    ]


def windows_between(start: float, end: float, window: float) -> int:
    """How many clock-aligned refusal windows the span from ``start`` to ``end`` touches."""
    return math.floor(end / window) - math.floor(start / window) + 1


# -- identities -----------------------------------------------------------------------------------


def test_two_cn_less_certificates_with_different_uri_sans_are_two_identities(
    make_appliance: MakeAppliance,
) -> None:
    # Each identity may sign 4 signatures and then (almost) never again: a shared bucket would
    # refuse the second backend's first batch.
    appliance = make_appliance(
        {
            "roles": {"issuer": ["CN=issuer", f"URI:{URI_A}", f"URI:{URI_B}"]},
            "quota": {"signatures_per_second": 0.001, "burst": 4},
        },
        mtls=True,
    )
    kid = appliance.signing_key().kid
    a = client_certificate(appliance, None, (URI_A,))
    b = client_certificate(appliance, None, (URI_B,))
    batch_a, batch_b = digests(4, b"backend-a"), digests(4, b"backend-b")

    assert len(sign(stub_for(appliance, a), kid, batch_a, "a-1").signatures) == 4
    over = refused(lambda: sign(stub_for(appliance, a), kid, digests(1, b"a-more"), "a-2"))
    assert over.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"URI:{URI_A} exceeded its signing rate" in (over.details() or "")
    # The other CN-less backend has a bucket of its own.
    assert len(sign(stub_for(appliance, b), kid, batch_b, "b-1").signatures) == 4

    identities = audited_identities(appliance)
    assert identities[batch_a[0]] == [f"URI:{URI_A}"]
    assert identities[batch_b[0]] == [f"URI:{URI_B}"]
    assert digests(1, b"a-more")[0] not in identities
    assert len(access_lines(appliance, "SignBatch", f"URI:{URI_A}", " OK ", "a-1")) == 1
    assert len(access_lines(appliance, "SignBatch", f"URI:{URI_A}", "RESOURCE_EXHAUSTED")) == 1
    assert len(access_lines(appliance, "SignBatch", f"URI:{URI_B}", " OK ", "b-1")) == 1
    for identity, code, count in (
        (f"URI:{URI_A}", "OK", 1),
        (f"URI:{URI_A}", "RESOURCE_EXHAUSTED", 1),
        (f"URI:{URI_B}", "OK", 1),
        (f"URI:{URI_B}", "RESOURCE_EXHAUSTED", 0),
    ):
        assert (
            metric(appliance, "signer_identity_requests_total", identity=identity, code=code)
            == count
        ), (identity, code)

    # A third CN-less certificate whose URI no role lists is known by its fingerprint only.
    stranger = client_certificate(appliance, None, ("spiffe://moh.test/dcc/unlisted",))
    error = refused(lambda: sign(stub_for(appliance, stranger), kid, digests(1, b"unlisted")))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert stranger.fingerprint in (error.details() or "")
    still_serving(appliance, b"after-identities")


# -- bounded echoes -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    """One mTLS daemon for the oversized-input cases, with reflection switched off."""
    appliance = new_appliance(
        tmp_path_factory.mktemp("hostile"), {"server": {"reflection": False}}, mtls=True
    )
    appliance.setup()
    appliance.start()
    yield appliance
    appliance.stop()


def _bounded_log_growth(appliance: Appliance, before: int) -> None:
    """The log grew by a few short lines since it was ``before`` bytes long."""
    assert appliance.log_path is not None
    grown = appliance.log_path.read_bytes()[before:].decode(errors="replace")
    assert len(grown) < 8 * LONGEST_LOG_LINE
    for line in grown.splitlines():
        assert len(line) <= LONGEST_LOG_LINE, line[:200]


def _log_size(appliance: Appliance) -> int:
    assert appliance.log_path is not None
    return appliance.log_path.stat().st_size


def _wait_for_access_line(appliance: Appliance, count: int, *words: str) -> None:
    deadline = time.monotonic() + 30
    while len(access_lines(appliance, *words)) < count:
        assert time.monotonic() < deadline, f"no access line with {words}"
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("field", "size", "codes"),
    [
        (
            "profile",
            800 * 1024,
            (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND),
        ),
        (
            "kid",
            500 * 1024,
            (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT),
        ),
        ("request_id", 500 * 1024, (grpc.StatusCode.INVALID_ARGUMENT,)),
    ],
)
def test_an_oversized_field_keeps_its_status_and_a_bounded_message(
    hostile: Appliance, field: str, size: int, codes: tuple[grpc.StatusCode, ...]
) -> None:
    kid = hostile.signing_key().kid
    fields: dict[str, Any] = {"profile": PROFILE, "kid": kid, "request_id": f"big-{field}"}
    fields[field] = b"\x07" * size if field == "kid" else ("p" * 63 + "\n") * (size // 64)
    batch = digests(1, field.encode())
    signed = metric(hostile, "signer_signatures_total")
    before = _log_size(hostile)

    def refusals() -> float:
        return sum(
            metric(hostile, "signer_requests_total", method="SignBatch", code=code.name)
            for code in codes
        )

    counted = refusals()
    error = refused(
        lambda: hostile.signing().SignBatch(
            signing_pb2.SignBatchRequest(digests=batch, **fields), timeout=30
        )
    )
    assert error.code() in codes, (error.code(), (error.details() or "")[:200])
    details = error.details() or ""
    assert len(details.encode()) <= MESSAGE_BYTES and "\n" not in details
    assert field in details and str(size) in details
    assert refusals() == counted + 1
    # The access line names the request by its id, cut and escaped when that is the culprit.
    named = "p" * 63 + "\\np" if field == "request_id" else f"big-{field}"
    _wait_for_access_line(hostile, 1, "SignBatch", error.code().name, named)
    _bounded_log_growth(hostile, before)
    assert metric(hostile, "signer_signatures_total") == signed
    assert batch[0] not in audited_identities(hostile), "a refused request signed something"
    still_serving(hostile, f"after-{field}".encode())


def test_an_oversized_profile_asking_for_the_key_is_bounded(hostile: Appliance) -> None:
    before = _log_size(hostile)
    error = refused(
        lambda: hostile.signing().GetSigningKey(
            signing_pb2.GetSigningKeyRequest(profile="p" * 800 * 1024), timeout=30
        )
    )
    assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    assert len((error.details() or "").encode()) <= MESSAGE_BYTES
    assert "819200 characters" in (error.details() or "")
    _wait_for_access_line(hostile, 1, "GetSigningKey", error.code().name)
    _bounded_log_growth(hostile, before)
    still_serving(hostile, b"after-key")


@pytest.mark.parametrize(
    "common_name",
    [
        "evil\nFORGED signer.access: rpc SignBatch CN=issuer OK 0.1 ms forged",
        "x" * 5000,
    ],
    ids=["newline", "5000-characters"],
)
def test_a_hostile_common_name_is_escaped_cut_and_never_the_identity(
    hostile: Appliance, common_name: str
) -> None:
    cert = client_certificate(hostile, common_name)
    before = _log_size(hostile)
    error = refused(lambda: sign(stub_for(hostile, cert), b"\x01" * 8, digests(1, b"cn")))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    details = error.details() or ""
    assert cert.fingerprint in details and "\n" not in details
    assert len(details.encode()) <= MESSAGE_BYTES
    if "\n" in common_name:
        assert "evil\\nFORGED" in details
    else:
        assert "(5003 characters)" in details  # "CN=" and the name
    _wait_for_access_line(hostile, 1, "SignBatch", cert.fingerprint, "UNAUTHENTICATED")
    _bounded_log_growth(hostile, before)
    log = hostile.log()
    assert not [line for line in log.splitlines() if line.startswith("FORGED")]
    assert common_name not in log
    # Health is answered for any certificate the CA issued; reflection is off here.
    health = health_pb2_grpc.HealthStub(hostile.channel(credentials=cert.credentials))
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == (
        health_pb2.HealthCheckResponse.SERVING
    )
    still_serving(hostile, f"after-cn-{len(common_name)}".encode())


def test_reflection_switched_off_is_not_served(hostile: Appliance) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(hostile.channel("issuer"))
    error = refused(
        lambda: list(
            stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
            )
        )
    )
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED


# -- aggregated refusals --------------------------------------------------------------------------

REFUSAL_WINDOW = 3600.0


def test_refusals_become_one_audit_record_per_identity_reason_and_window(
    make_appliance: MakeAppliance,
) -> None:
    appliance = make_appliance({"limits": {"refusal_window_seconds": REFUSAL_WINDOW}}, mtls=True)
    kid = appliance.signing_key().kid
    stranger = client_certificate(appliance, "stranger")
    strangers, officers = 40, 7
    started = time.time()
    stranger_stub = stub_for(appliance, stranger)
    for n in range(strangers):
        error = refused(partial(sign, stranger_stub, kid, digests(1, b"s"), f"s-{n}"))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    officer = appliance.signing("officer")
    for n in range(officers):
        error = refused(partial(sign, officer, kid, digests(1, b"o"), f"o-{n}"))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "alice/CN=officer does not hold the role 'issuer'" in (error.details() or "")
    ended = time.time()

    # Metrics and the access log count every refusal as it happens.
    text = appliance.metrics_text()
    assert metric_value(text, "signer_auth_refusals_total", reason="unknown_identity") == strangers
    assert metric_value(text, "signer_auth_refusals_total", reason="wrong_role") == officers
    for code, count in (("UNAUTHENTICATED", strangers), ("PERMISSION_DENIED", officers)):
        assert metric_value(text, "signer_requests_total", method="SignBatch", code=code) == count
    assert (
        metric_value(
            text, "signer_identity_requests_total", identity="unknown", code="UNAUTHENTICATED"
        )
        == strangers
    )
    assert (
        metric_value(
            text,
            "signer_identity_requests_total",
            identity="alice/CN=officer",
            code="PERMISSION_DENIED",
        )
        == officers
    )
    _wait_for_access_line(
        appliance, strangers, "SignBatch", stranger.fingerprint, "UNAUTHENTICATED"
    )
    _wait_for_access_line(appliance, officers, "SignBatch", "alice/CN=officer", "PERMISSION_DENIED")

    # The reason is logged once per identity, reason and window, not once per call.
    reasons = [
        line
        for line in appliance.log().splitlines()
        if f"SignBatch refused for {stranger.fingerprint}: " in line
    ]
    assert len(reasons) == windows_between(started, ended, REFUSAL_WINDOW)

    # The audit log holds them back until their window ends (or the daemon stops).
    if windows_between(started, ended, REFUSAL_WINDOW) == 1:
        assert refusal_records(appliance, stranger.fingerprint) == []
    appliance.stop()
    for identity, reason, count, subject in (
        (stranger.fingerprint, "unknown_identity", strangers, "'CN=stranger'"),
        ("alice/CN=officer", "wrong_role", officers, None),
    ):
        records = refusal_records(appliance, identity)
        assert len(records) == windows_between(started, ended, REFUSAL_WINDOW), records
        assert sum(r.details["count"] for r in records) == count
        for record in records:
            assert record.details["reason"] == reason
            assert record.details["methods"] == ["/signer.v1.Signing/SignBatch"]
            assert record.details["window_seconds"] == REFUSAL_WINDOW
            assert record.details.get("subject") == subject
    events = [r.event.value for r in iter_records(appliance.audit_dir)]
    assert events[-1] == "daemon_stop"

    appliance.start()
    still_serving(appliance, b"after-refusals")


def test_refusals_of_one_window_reach_the_log_when_it_ends(make_appliance: MakeAppliance) -> None:
    appliance = make_appliance({"limits": {"refusal_window_seconds": 1}}, mtls=True)
    kid = appliance.signing_key().kid
    stranger = client_certificate(appliance, "passer-by")
    started = time.time()
    stub = stub_for(appliance, stranger)
    for _ in range(5):
        refused(partial(sign, stub, kid, digests(1, b"p")))
    ended = time.time()
    deadline = time.monotonic() + 60
    while sum(r.details["count"] for r in refusal_records(appliance, stranger.fingerprint)) < 5:
        assert time.monotonic() < deadline, "the refusals never reached the audit log"
        time.sleep(0.1)
    records = refusal_records(appliance, stranger.fingerprint)
    assert len(records) <= windows_between(started, ended, 1)
    assert appliance.process is not None and appliance.process.poll() is None
    still_serving(appliance, b"after-window")
