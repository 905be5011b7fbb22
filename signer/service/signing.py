"""``signer.v1.Signing``: digests in, ES256 signatures out, each batch audited before the answer."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Protocol

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from signer.errors import AuditError, HsmError, InvalidRequest
from signer.hsm.api import Token
from signer.keys.registry import KeyRegistry
from signer.keys.snapshot import KeyView
from signer.service.auth import caller_identity
from signer.service.metrics import Metrics
from signer.service.quota import Quotas
from signer.service.validation import check_digests, check_request_id, encoding_for
from signer.v1 import signing_pb2, signing_pb2_grpc


class SignatureAudit(Protocol):
    """Where signed batches are recorded before their signatures leave the daemon."""

    @property
    def healthy(self) -> bool:
        """False while records cannot be written: then nothing is sent to the HSM."""
        ...

    def record_signatures(
        self,
        *,
        identity: str,
        profile: str,
        kid: bytes,
        request_id: str,
        digests: list[bytes],
        signatures: list[bytes],
    ) -> int:
        """Make the record durable and return its sequence number; raise AuditError if not."""
        ...


def timestamp(value: object) -> Timestamp | None:
    """A protobuf Timestamp from an aware datetime, or None."""
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)  # type: ignore[arg-type]
    return ts


class SigningService(signing_pb2_grpc.SigningServicer):
    """The issuer-facing API."""

    def __init__(
        self,
        token: Token,
        registry: KeyRegistry,
        audit: SignatureAudit,
        metrics: Metrics,
        quotas: Quotas,
        max_batch: int,
    ) -> None:
        self._token = token
        self._registry = registry
        self._audit = audit
        self._metrics = metrics
        self._quotas = quotas
        self._max_batch = max_batch

    def GetSigningKey(
        self, request: signing_pb2.GetSigningKeyRequest, context: grpc.ServicerContext
    ) -> signing_pb2.SigningKey:
        """The key that signs new requests of the profile now."""
        view = self._registry.signing_key(request.profile)
        return signing_key_message(view)

    def SignBatch(
        self, request: signing_pb2.SignBatchRequest, context: grpc.ServicerContext
    ) -> signing_pb2.SignBatchResponse:
        """Sign a batch of digests; all or nothing."""
        return self._sign(request, context)

    def _sign(
        self, request: signing_pb2.SignBatchRequest, context: grpc.ServicerContext
    ) -> signing_pb2.SignBatchResponse:
        encoding = encoding_for(request.format)
        request_id = check_request_id(request.request_id)
        digests = list(request.digests)
        check_digests(digests, self._max_batch)
        if not request.kid:
            raise InvalidRequest(
                "kid is required: call GetSigningKey and send the kid you put in the protected"
                " header"
            )
        record = self._registry.key_for_kid(request.profile, bytes(request.kid))
        kid = bytes(request.kid)
        identity = caller_identity(context)
        if not self._audit.healthy:
            raise AuditError(
                "the audit log cannot be written, so signing is stopped until it recovers;"
                " retry later (operators: see signer_audit_healthy and the daemon log)"
            )
        with self._quotas.admit(identity, len(digests)):
            started = time.perf_counter()
            try:
                signatures = self._token.sign(record.key_id, digests, encoding)
            except HsmError as error:
                self._metrics.hsm_errors.labels(type(error).__name__).inc()
                raise
            self._metrics.hsm_sign_seconds.observe(time.perf_counter() - started)
            sequence = self._audit.record_signatures(
                identity=identity,
                profile=request.profile,
                kid=kid,
                request_id=request_id,
                digests=digests,
                signatures=signatures,
            )
        self._metrics.batch_size.observe(len(digests))
        self._metrics.signatures.labels(request.profile, kid.hex()).inc(len(digests))
        return signing_pb2.SignBatchResponse(
            signatures=signatures,
            kid=kid,
            audit_sequence=sequence,
            request_id=request_id,
        )

    def SignStream(
        self,
        request_iterator: Iterator[signing_pb2.SignBatchRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[signing_pb2.SignBatchResponse]:
        """Answer each batch of the stream in order; a refusal ends the stream with its status."""
        for request in request_iterator:
            yield self._sign(request, context)

    def GetTrustList(
        self, request: signing_pb2.GetTrustListRequest, context: grpc.ServicerContext
    ) -> signing_pb2.TrustList:
        """Certificates of every key whose signatures verifiers may still meet."""
        snapshot = self._registry.snapshot
        return signing_pb2.TrustList(
            entries=[
                signing_pb2.TrustListEntry(
                    kid=view.record.kid or b"",
                    profile=view.record.profile,
                    state=view.effective_state,
                    dsc_der=view.dsc_der or b"",
                    not_before=timestamp(view.record.dsc_not_before),
                    not_after=timestamp(view.record.dsc_not_after),
                )
                for view in self._registry.trust_list()
            ],
            revoked=[
                signing_pb2.RevokedKey(
                    kid=record.kid or b"",
                    profile=record.profile,
                    revoked_at=timestamp(record.revoked_at),
                )
                for record in snapshot.revoked()
            ],
        )


def signing_key_message(view: KeyView) -> signing_pb2.SigningKey:
    """The API form of the key that signs a profile now."""
    return signing_pb2.SigningKey(
        profile=view.record.profile,
        kid=view.record.kid or b"",
        algorithm="ES256",
        dsc_der=view.dsc_der or b"",
        public_key_spki=view.spki_der or b"",
        not_after=timestamp(view.record.dsc_not_after),
        usable_until=timestamp(view.usable_until),
        key_id=view.record.key_id,
    )
