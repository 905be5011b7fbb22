"""``SignerClient``: what an issuance backend uses to get digests signed by the appliance.

It connects over mutual TLS (or plaintext to a loopback daemon), caches the signing key per
profile, splits large digest lists into ``max_batch`` chunks (the smaller of its own and the
appliance's, which ``GetSigningKey`` tells) sent concurrently, keeps the order, retries
UNAVAILABLE (and quota refusals that name a wait) with exponential backoff and jitter, and
spreads load over several appliances with gRPC's own ``round_robin`` policy. Digests and raw
signatures travel packed (one ``bytes`` field each way) when the appliance announces
``max_batch``, which every appliance that understands the packed form does.

Backends that sign one certificate per request call :meth:`SignerClient.sign_one` from many
threads: concurrent calls for the same profile and kid are sent together in one request
(:class:`Coalescer`), each caller getting its own signature or the error of that request.

Retrying a SignBatch is safe: the appliance signs digests, not documents, so a repeated
request only produces a second valid signature (and a second audit record with the same
``request_id``). DEADLINE_EXCEEDED is not retried, because the first request may still be
running on the appliance.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeAlias, TypeVar

import grpc

from signer.client.errors import (
    DeadlineExceeded,
    KidChanged,
    NoActiveKey,
    QuotaExceeded,
    RequestRefused,
    SignerUnavailable,
    from_rpc_error,
)
from signer.v1 import signing_pb2, signing_pb2_grpc

DEFAULT_MAX_BATCH = 10_000
DIGEST_BYTES = 32
RAW_SIGNATURE_BYTES = 64
_T = TypeVar("_T")
StrPath: TypeAlias = str | os.PathLike[str]
_MESSAGE_LIMIT = 64 * 1024 * 1024


@dataclass(frozen=True)
class SigningKeyInfo:
    """The key that signs a profile now."""

    profile: str
    kid: bytes
    dsc_der: bytes
    public_key_spki: bytes
    not_after: datetime
    usable_until: datetime | None
    key_id: str
    max_batch: int = 0
    """The appliance's largest batch (0: an appliance too old to say, or to take packed digests)."""


@dataclass(frozen=True, init=False)
class TlsFiles:
    """PEM files of the client's mTLS identity and of the CA that issued the server's cert.

    Paths may be given as ``str`` or any path-like; they are kept as :class:`Path`.
    """

    ca: Path
    cert: Path
    key: Path

    def __init__(self, ca: StrPath, cert: StrPath, key: StrPath) -> None:
        for name, value in (("ca", ca), ("cert", cert), ("key", key)):
            if not isinstance(value, str | os.PathLike):
                raise TypeError(f"TlsFiles {name} must be a path, got {type(value).__name__}")
            object.__setattr__(self, name, Path(value))


def channel_target(targets: Sequence[str]) -> str:
    """A gRPC target for one address, or a static list of IP addresses for round robin.

    gRPC resolves ``ipv4:A:P,B:Q`` (or ``ipv6:[A]:P,[B]:Q``) to several addresses and the
    channel's ``round_robin`` policy spreads calls over them. One DNS name that resolves to
    several addresses works too, as a single target.
    """
    if not targets:
        raise ValueError("no appliance address given")
    if len(targets) == 1:
        return targets[0]
    hosts = []
    versions = set()
    for target in targets:
        host, _, port = target.rpartition(":")
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            raise ValueError(
                f"{target}: several appliances must be given as IP:port (or one DNS name that"
                " resolves to all of them)"
            ) from None
        if not port.isdigit():
            raise ValueError(f"{target}: the port is missing or not a number")
        versions.add(address.version)
        hosts.append(f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}")
    if len(versions) > 1:
        raise ValueError(
            "several appliances must all be IPv4 or all IPv6 (gRPC has no mixed static list);"
            " use one DNS name that resolves to all of them instead"
        )
    scheme = "ipv6" if versions == {6} else "ipv4"
    return f"{scheme}:{','.join(hosts)}"


def open_channel(
    targets: Sequence[str], tls: TlsFiles | None, server_name: str | None = None
) -> grpc.Channel:
    """A channel to one or more appliances: mTLS when ``tls`` is given, round robin, large
    messages allowed (the server's own limit decides)."""
    options: list[tuple[str, object]] = [
        ("grpc.max_receive_message_length", _MESSAGE_LIMIT),
        ("grpc.max_send_message_length", _MESSAGE_LIMIT),
        ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
    ]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    target = channel_target(targets)
    if tls is None:
        return grpc.insecure_channel(target, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.ca.read_bytes(),
        private_key=tls.key.read_bytes(),
        certificate_chain=tls.cert.read_bytes(),
    )
    return grpc.secure_channel(target, credentials, options=options)


class _Waiter:
    """One ``sign_one`` caller waiting in a :class:`Coalescer`."""

    __slots__ = ("digest", "done", "error", "signature", "taken")

    def __init__(self, digest: bytes) -> None:
        self.digest = digest
        self.signature = b""
        self.error: BaseException | None = None
        self.taken = False
        self.done = False


class Coalescer:
    """Sends concurrent single-digest calls together, each caller getting its own answer.

    A caller that finds fewer than ``max_in_flight`` requests on the way sends at once, taking
    along every caller waiting (up to ``max_batch``); after ``linger`` seconds if that is set,
    so that more callers can join. Callers arriving while all requests are on the way wait for
    the next free one and go together. Nobody waits longer than one request plus ``linger``.
    """

    def __init__(
        self,
        send: Callable[[list[bytes]], list[bytes]],
        max_batch: int,
        max_in_flight: int,
        linger: float = 0.0,
    ) -> None:
        self._send = send
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._linger = linger
        self._cond = threading.Condition()
        self._waiting: list[_Waiter] = []
        self._in_flight = 0

    def sign(self, digest: bytes) -> bytes:
        """The signature of one digest, sent alone or with other callers' digests."""
        me = _Waiter(digest)
        with self._cond:
            self._waiting.append(me)
            while not me.taken:
                if self._in_flight < self._max_in_flight:
                    self._in_flight += 1
                    if self._linger > 0 and len(self._waiting) < self._max_batch:
                        self._cond.wait(self._linger)
                    batch = self._take(me)
                    break
                self._cond.wait()
            else:
                while not me.done:
                    self._cond.wait()
                if me.error is not None:
                    raise me.error
                return me.signature
        self._deliver(batch)
        if me.error is not None:
            raise me.error
        return me.signature

    def _take(self, me: _Waiter) -> list[_Waiter]:
        """``me`` and the oldest other waiters, at most ``max_batch`` in all (lock held)."""
        others = [w for w in self._waiting if w is not me][: self._max_batch - 1]
        batch = [me, *others]
        chosen = set(map(id, batch))
        self._waiting = [w for w in self._waiting if id(w) not in chosen]
        for waiter in batch:
            waiter.taken = True
        return batch

    def _deliver(self, batch: list[_Waiter]) -> None:
        try:
            signatures = self._send([w.digest for w in batch])
            for waiter, signature in zip(batch, signatures, strict=True):
                waiter.signature = signature
        except BaseException as error:
            for waiter in batch:
                waiter.error = error
        with self._cond:
            self._in_flight -= 1
            for waiter in batch:
                waiter.done = True
            self._cond.notify_all()


class SignerClient:
    """A connection to one or more appliances."""

    def __init__(
        self,
        targets: str | Sequence[str],
        *,
        tls: TlsFiles | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        concurrency: int = 4,
        timeout: float = 60.0,
        retries: int = 4,
        server_name: str | None = None,
        backoff: float = 0.1,
        max_backoff: float = 2.0,
        coalesce_in_flight: int = 4,
        coalesce_linger: float = 0.0,
    ) -> None:
        if max_batch < 1 or concurrency < 1 or retries < 0 or timeout <= 0 or backoff < 0:
            raise ValueError(
                "max_batch and concurrency must be >= 1, retries >= 0, timeout > 0, backoff >= 0"
            )
        if coalesce_in_flight < 1 or not 0 <= coalesce_linger <= 1:
            raise ValueError("coalesce_in_flight must be >= 1 and coalesce_linger 0 to 1 s")
        addresses = [targets] if isinstance(targets, str) else list(targets)
        self._channel = open_channel(addresses, tls, server_name)
        self._stub = signing_pb2_grpc.SigningStub(self._channel)
        self._max_batch = max_batch
        self._timeout = timeout
        self._retries = retries
        self._backoff = backoff
        self._max_backoff = max(backoff, max_backoff)
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="signer-client")
        self._keys: dict[str, SigningKeyInfo] = {}
        self._lock = threading.Lock()
        self._coalesce_in_flight = coalesce_in_flight
        self._coalesce_linger = coalesce_linger
        self._coalescers: dict[tuple[str, bytes], Coalescer] = {}
        self._server_max_batch: int | None = None

    def __enter__(self) -> SignerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel and the worker threads."""
        self._pool.shutdown(wait=True)
        self._channel.close()

    def signing_key(self, profile: str, refresh: bool = False) -> SigningKeyInfo:
        """The key that signs ``profile`` now (cached until a kid change is seen)."""
        with self._lock:
            cached = self._keys.get(profile)
        if cached is not None and not refresh:
            return cached
        response = self._call(
            lambda: self._stub.GetSigningKey(
                signing_pb2.GetSigningKeyRequest(profile=profile), timeout=self._timeout
            )
        )
        info = SigningKeyInfo(
            profile=response.profile,
            kid=response.kid,
            dsc_der=response.dsc_der,
            public_key_spki=response.public_key_spki,
            not_after=response.not_after.ToDatetime(tzinfo=UTC),
            usable_until=(
                response.usable_until.ToDatetime(tzinfo=UTC)
                if response.HasField("usable_until")
                else None
            ),
            key_id=response.key_id,
            max_batch=response.max_batch,
        )
        with self._lock:
            self._keys[profile] = info
            self._server_max_batch = response.max_batch
        return info

    def forget_key(self, profile: str) -> None:
        """Drop the cached key of a profile (the next call asks the appliance again)."""
        with self._lock:
            self._keys.pop(profile, None)

    def sign(self, profile: str, kid: bytes, digests: Sequence[bytes]) -> list[bytes]:
        """Sign digests made with ``kid`` in their protected header; raw ``r||s`` in order.

        Raises :class:`KidChanged` when ``kid`` may no longer sign: the caller must rebuild
        its protected headers with ``current_kid`` and hash again.
        """
        return self.sign_digests(profile, digests, kid=kid)

    def sign_digests(
        self,
        profile: str,
        digests: Sequence[bytes],
        *,
        kid: bytes | None = None,
        der: bool = False,
        request_id: str | None = None,
    ) -> list[bytes]:
        """Sign any number of digests, ``max_batch`` per request, several requests at once.

        Signatures come back in the order of ``digests``. Without ``kid`` the cached signing
        key's kid is used. Raises a :class:`signer.client.errors.RequestRefused` subclass; on
        :class:`KidChanged` or :class:`NoActiveKey` the cached key of ``profile`` is dropped,
        and nothing of this call may be used (other chunks may have been signed and audited).
        """
        if not digests:
            return []
        if kid is None:
            kid = self.signing_key(profile).kid
        elif self._server_max_batch is None:
            self._discover(profile)
        base_id = request_id or uuid.uuid4().hex
        packed = bool(self._server_max_batch)
        size = min(self._max_batch, self._server_max_batch or self._max_batch)
        chunks = [list(digests[i : i + size]) for i in range(0, len(digests), size)]
        requests = [
            self._request(
                profile,
                kid,
                chunk,
                der=der,
                packed=packed,
                request_id=base_id if len(chunks) == 1 else f"{base_id}/{n}",
            )
            for n, chunk in enumerate(chunks)
        ]
        try:
            if len(requests) == 1:
                answers = [self._sign_batch(requests[0])]
            else:
                answers = list(self._pool.map(self._sign_batch, requests))
        except (KidChanged, NoActiveKey):
            self.forget_key(profile)
            raise
        return [signature for answer in answers for signature in answer]

    def sign_one(self, profile: str, digest: bytes, *, kid: bytes | None = None) -> bytes:
        """Sign one digest (raw ``r||s``); made for backends that sign one certificate per
        request from many threads: concurrent calls for the same profile and kid go out
        together in one request (at most ``coalesce_in_flight`` requests at once, waiting at
        most ``coalesce_linger`` seconds for company when one could go). Raises what
        :meth:`sign_digests` raises; a refusal reaches every caller of that request."""
        if kid is None:
            kid = self.signing_key(profile).kid
        with self._lock:
            coalescer = self._coalescers.get((profile, kid))
            if coalescer is None:
                coalescer = Coalescer(
                    lambda batch: self.sign_digests(profile, batch, kid=kid),
                    min(self._max_batch, self._server_max_batch or self._max_batch),
                    self._coalesce_in_flight,
                    self._coalesce_linger,
                )
                self._coalescers[(profile, kid)] = coalescer
        return coalescer.sign(digest)

    def _discover(self, profile: str) -> None:
        """Learn the appliance's max_batch (and so whether it takes packed digests)."""
        with contextlib.suppress(RequestRefused):
            self.signing_key(profile)

    @staticmethod
    def _request(
        profile: str, kid: bytes, digests: list[bytes], *, der: bool, packed: bool, request_id: str
    ) -> signing_pb2.SignBatchRequest:
        fmt = signing_pb2.SIGNATURE_FORMAT_DER if der else signing_pb2.SIGNATURE_FORMAT_RAW
        request = signing_pb2.SignBatchRequest(
            profile=profile, kid=kid, format=fmt, request_id=request_id
        )
        # A digest of the wrong length goes in the repeated form, so that the appliance's
        # refusal names its index.
        if packed and all(len(d) == DIGEST_BYTES for d in digests):
            request.packed_digests = b"".join(digests)
        else:
            request.digests.extend(digests)
        return request

    def _sign_batch(self, request: signing_pb2.SignBatchRequest) -> list[bytes]:
        response = self._call(lambda: self._stub.SignBatch(request, timeout=self._timeout))
        asked = len(request.digests) or len(request.packed_digests) // DIGEST_BYTES
        if response.packed_signatures:
            packed = response.packed_signatures
            step = RAW_SIGNATURE_BYTES
            signatures = [packed[i : i + step] for i in range(0, len(packed), step)]
        else:
            signatures = list(response.signatures)
        if len(signatures) != asked:
            raise RequestRefused(
                f"the appliance returned {len(signatures)} signatures for"
                f" {asked} digests (request {request.request_id})",
                grpc.StatusCode.INTERNAL,
            )
        return signatures

    def dcc_signer(self) -> DccSigner:
        """This client as the signer :mod:`signer.dcc` issuance expects (rotation-aware)."""
        return DccSigner(self)

    def trust_list(self) -> signing_pb2.TrustList:
        """Certificates of every key whose signatures verifiers may still meet, and the kids
        of revoked keys that they must distrust."""
        response: signing_pb2.TrustList = self._call(
            lambda: self._stub.GetTrustList(
                signing_pb2.GetTrustListRequest(), timeout=self._timeout
            )
        )
        return response

    def _call(self, rpc: Callable[[], _T]) -> _T:
        """Run ``rpc``; retry UNAVAILABLE and quota waits with capped exponential backoff."""
        delay = self._backoff
        for attempt in range(self._retries + 1):
            try:
                return rpc()
            except grpc.RpcError as error:
                typed = from_rpc_error(error)
                wait = retry_delay(typed, delay, self._max_backoff)
                if wait is None or attempt == self._retries:
                    raise typed from None
                time.sleep(wait)
                delay = min(delay * 2, self._max_backoff)
        raise AssertionError("unreachable")


class DccSigner:
    """A :class:`SignerClient` seen by :mod:`signer.dcc`: a ``DigestSigner`` and ``KeySource``.

    ``signing_key`` always asks the appliance (it is called at the start of an issuance and
    after a rotation), and ``sign`` raises :class:`KidChanged`, whose ``current_kid`` tells
    :class:`signer.dcc.issue.ChunkSigner` to rebuild the remaining certificates.
    """

    def __init__(self, client: SignerClient) -> None:
        self.client = client

    def signing_key(self, profile: str) -> tuple[bytes, bytes]:
        """``(kid, dsc_der)`` of the key that signs ``profile`` now."""
        key = self.client.signing_key(profile, refresh=True)
        return key.kid, key.dsc_der

    def sign(self, profile: str, kid: bytes, digests: Sequence[bytes]) -> list[bytes]:
        """Raw ``r||s`` signatures of ``digests`` made with ``kid`` in their header."""
        return self.client.sign(profile, kid, digests)

    def close(self) -> None:
        """Close the underlying client."""
        self.client.close()


def retry_delay(error: RequestRefused, backoff: float, max_backoff: float) -> float | None:
    """How long to wait before retrying after ``error``, or ``None`` when retrying cannot help.

    UNAVAILABLE waits ``backoff`` with +-50 % jitter (so that many clients do not retry in
    step); a quota refusal waits what the appliance asked, but never longer than
    ``max_backoff`` (a longer wait is the caller's decision).
    """
    if isinstance(error, DeadlineExceeded):
        return None
    if isinstance(error, SignerUnavailable):
        return backoff * random.uniform(0.5, 1.5)  # noqa: S311 (jitter, not a secret)
    if isinstance(error, QuotaExceeded) and 0 < error.retry_after <= max_backoff:
        return max(error.retry_after, backoff * random.uniform(0.5, 1.0))  # noqa: S311
    return None
