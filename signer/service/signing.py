"""``signer.v1.Signing``: digests in, ES256 signatures out, each batch audited before the answer.

The servicer runs on the server's event loop. A request is checked, admitted by its caller's
quota and queued for the HSM workers; when its signatures arrive (in a loop callback) its audit
record is queued, and when that is durable the caller's coroutine gets the answer. The chain
from the HSM to the audit log does not depend on the caller's coroutine: a caller that leaves
(cancels, times out, disconnects) does not stop what the HSM already signs from being audited,
but its signatures are counted as undelivered, never as returned.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol

import grpc
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import Counter

from signer.errors import AuditError, HsmError
from signer.hsm.jobs import Done
from signer.keys.registry import KeyRegistry
from signer.keys.snapshot import KeyView
from signer.service.auth import current_identity
from signer.service.metrics import Metrics
from signer.service.quota import Quotas
from signer.service.trail import Durable
from signer.service.validation import (
    check_kid,
    check_profile,
    check_request_id,
    encoding_for,
    read_digests,
)
from signer.sigformat import P256_COORDINATE_BYTES, P256_SIGNATURE_BYTES, SignatureEncoding
from signer.v1 import signing_pb2, signing_pb2_grpc


class PackedSigner(Protocol):
    """The HSM as the signing path sees it: packed digests in, packed raw signatures out."""

    def sign_soon(self, key_id: str, digests: bytes, done: Done) -> None:
        """Queue the digests; ``done`` is called on the event loop with the signatures."""
        ...


class SignatureAudit(Protocol):
    """Where signed batches are recorded before their signatures leave the daemon."""

    @property
    def healthy(self) -> bool:
        """False while records cannot be written: then nothing is sent to the HSM."""
        ...

    def signatures_soon(
        self,
        *,
        identity: str,
        profile: str,
        kid: bytes,
        request_id: str,
        digests: Sequence[bytes],
        signatures: Callable[[], Sequence[bytes]],
        done: Durable,
    ) -> None:
        """Queue the record; ``done`` gets its sequence number once it is durable."""
        ...


def timestamp(value: object) -> Timestamp | None:
    """A protobuf Timestamp from an aware datetime, or None."""
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)  # type: ignore[arg-type]
    return ts


def raw_signatures(packed: bytes) -> list[bytes]:
    """Packed raw signatures, one ``bytes`` each."""
    step = P256_SIGNATURE_BYTES
    return [packed[i : i + step] for i in range(0, len(packed), step)]


def der_signatures(packed: bytes) -> list[bytes]:
    """Packed raw ``r||s`` signatures as DER ``ECDSA-Sig-Value`` each."""
    half = P256_COORDINATE_BYTES
    return [
        encode_dss_signature(
            int.from_bytes(packed[i : i + half], "big"),
            int.from_bytes(packed[i + half : i + 2 * half], "big"),
        )
        for i in range(0, len(packed), P256_SIGNATURE_BYTES)
    ]


class _Flight:
    """One request on its way from the HSM through the audit log back to its caller."""

    __slots__ = (
        "answer",
        "audit",
        "digests",
        "identity",
        "kid",
        "metrics",
        "profile",
        "release",
        "request_id",
        "sent",
        "signatures",
    )

    def __init__(
        self,
        service: SigningService,
        answer: asyncio.Future[tuple[bytes, int]],
        release: Callable[[], None],
        identity: str,
        profile: str,
        kid: bytes,
        request_id: str,
        digests: Sequence[bytes],
    ) -> None:
        self.answer = answer
        self.audit = service._audit
        self.metrics = service._metrics
        self.release = release
        self.identity = identity
        self.profile = profile
        self.kid = kid
        self.request_id = request_id
        self.digests = digests
        self.signatures = b""
        self.sent = time.perf_counter()

    def signed(self, signatures: bytes | None, error: BaseException | None) -> None:
        if error is not None or signatures is None:
            if isinstance(error, HsmError):
                self.metrics.hsm_errors.labels(type(error).__name__).inc()
            self.finish(0, error or HsmError("the HSM workers returned no signatures"))
            return
        self.metrics.hsm_sign_seconds.observe(time.perf_counter() - self.sent)
        self.signatures = signatures
        try:
            self.audit.signatures_soon(
                identity=self.identity,
                profile=self.profile,
                kid=self.kid,
                request_id=self.request_id,
                digests=self.digests,
                signatures=lambda: raw_signatures(signatures),
                done=self.finish,
            )
        except Exception as failure:
            self.finish(0, failure)

    def finish(self, sequence: int, error: BaseException | None) -> None:
        self.release()
        answer = self.answer
        if answer.done():
            if error is None and answer.cancelled():
                self.metrics.undelivered.labels(self.profile).inc(len(self.digests))
            return
        if error is None:
            answer.set_result((self.signatures, sequence))
        else:
            answer.set_exception(error)


class SigningService(signing_pb2_grpc.SigningServicer):
    """The issuer-facing API (asyncio)."""

    def __init__(
        self,
        token: PackedSigner,
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
        self._delivered: dict[tuple[str, bytes], Counter] = {}

    async def GetSigningKey(
        self, request: signing_pb2.GetSigningKeyRequest, context: grpc.aio.ServicerContext
    ) -> signing_pb2.SigningKey:
        """The key that signs new requests of the profile now, and this server's max_batch."""
        view = self._registry.signing_key(check_profile(request.profile))
        return signing_key_message(view, self._max_batch)

    async def SignBatch(
        self, request: signing_pb2.SignBatchRequest, context: grpc.aio.ServicerContext
    ) -> signing_pb2.SignBatchResponse:
        """Sign a batch of digests; all or nothing."""
        return await self._sign(request, current_identity(context))

    async def SignStream(
        self,
        request_iterator: AsyncIterator[signing_pb2.SignBatchRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[signing_pb2.SignBatchResponse]:
        """Answer each batch of the stream in order; a refusal ends the stream with its status."""
        identity = current_identity(context)
        async for request in request_iterator:
            yield await self._sign(request, identity)

    async def _sign(
        self, request: signing_pb2.SignBatchRequest, identity: str
    ) -> signing_pb2.SignBatchResponse:
        encoding = encoding_for(request.format)
        request_id = check_request_id(request.request_id)
        digests, packed = read_digests(request.digests, request.packed_digests, self._max_batch)
        kid = check_kid(request.kid)
        profile = check_profile(request.profile)
        record = self._registry.key_for_kid(profile, kid)
        if not self._audit.healthy:
            raise AuditError(
                "the audit log cannot be written, so signing is stopped until it recovers;"
                " retry later (operators: see signer_audit_healthy and the daemon log)"
            )
        release = self._quotas.acquire(identity, len(digests))
        answer: asyncio.Future[tuple[bytes, int]] = asyncio.get_running_loop().create_future()
        flight = _Flight(self, answer, release, identity, profile, kid, request_id, digests)
        try:
            self._token.sign_soon(record.key_id, packed, flight.signed)
        except BaseException:
            release()
            raise
        signatures, sequence = await answer
        count = len(digests)
        self._metrics.batch_size.observe(count)
        self._delivered_counter(profile, kid).inc(count)
        response = signing_pb2.SignBatchResponse(
            kid=kid, audit_sequence=sequence, request_id=request_id
        )
        if encoding is SignatureEncoding.DER:
            response.signatures.extend(der_signatures(signatures))
        elif request.packed_digests:
            response.packed_signatures = signatures
        else:
            response.signatures.extend(raw_signatures(signatures))
        return response

    def _delivered_counter(self, profile: str, kid: bytes) -> Counter:
        counter = self._delivered.get((profile, kid))
        if counter is None:
            counter = self._metrics.signatures.labels(profile, kid.hex())
            self._delivered[(profile, kid)] = counter
        return counter

    async def GetTrustList(
        self, request: signing_pb2.GetTrustListRequest, context: grpc.aio.ServicerContext
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


def signing_key_message(view: KeyView, max_batch: int = 0) -> signing_pb2.SigningKey:
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
        max_batch=max_batch,
    )
