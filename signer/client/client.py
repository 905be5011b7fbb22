"""``SignerClient``: what an issuance backend uses to get digests signed by the appliance.

It connects over mutual TLS (or plaintext to a loopback daemon), caches the signing key per
profile, splits large digest lists into ``max_batch`` chunks sent concurrently, keeps the
order, retries UNAVAILABLE with exponential backoff, and spreads load over several appliances
with gRPC's own ``round_robin`` policy.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import grpc

from signer.client.errors import KidChanged, SignerUnavailable, from_rpc_error
from signer.v1 import signing_pb2, signing_pb2_grpc

DEFAULT_MAX_BATCH = 10_000
_T = TypeVar("_T")
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


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of the client's mTLS identity and of the CA that issued the server's cert."""

    ca: Path
    cert: Path
    key: Path


def channel_target(targets: Sequence[str]) -> str:
    """A gRPC target for one address, or a static list of IP addresses for round robin."""
    if len(targets) == 1:
        return targets[0]
    hosts = []
    for target in targets:
        host, _, port = target.rpartition(":")
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            raise ValueError(
                f"{target}: several appliances must be given as IP:port (or one DNS name that"
                " resolves to all of them)"
            ) from None
        hosts.append(f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}")
    scheme = "ipv6" if all(h.startswith("[") for h in hosts) else "ipv4"
    return f"{scheme}:{','.join(hosts)}"


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
    ) -> None:
        addresses = [targets] if isinstance(targets, str) else list(targets)
        options: list[tuple[str, object]] = [
            ("grpc.max_receive_message_length", _MESSAGE_LIMIT),
            ("grpc.max_send_message_length", _MESSAGE_LIMIT),
            ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        target = channel_target(addresses)
        if tls is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=tls.ca.read_bytes(),
                private_key=tls.key.read_bytes(),
                certificate_chain=tls.cert.read_bytes(),
            )
            self._channel = grpc.secure_channel(target, credentials, options=options)
        self._stub = signing_pb2_grpc.SigningStub(self._channel)
        self._max_batch = max_batch
        self._timeout = timeout
        self._retries = retries
        self._pool = ThreadPoolExecutor(max_workers=max(1, concurrency))
        self._keys: dict[str, SigningKeyInfo] = {}
        self._lock = threading.Lock()

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
        )
        with self._lock:
            self._keys[profile] = info
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
        """Sign any number of digests, ``max_batch`` per request, several requests at once."""
        if kid is None:
            kid = self.signing_key(profile).kid
        base_id = request_id or uuid.uuid4().hex
        fmt = signing_pb2.SIGNATURE_FORMAT_DER if der else signing_pb2.SIGNATURE_FORMAT_RAW
        chunks = [
            list(digests[i : i + self._max_batch]) for i in range(0, len(digests), self._max_batch)
        ] or [[]]
        requests = [
            signing_pb2.SignBatchRequest(
                profile=profile,
                kid=kid,
                digests=chunk,
                format=fmt,
                request_id=base_id if len(chunks) == 1 else f"{base_id}/{n}",
            )
            for n, chunk in enumerate(chunks)
        ]
        try:
            answers = list(self._pool.map(self._sign_batch, requests))
        except KidChanged:
            self.forget_key(profile)
            raise
        return [signature for answer in answers for signature in answer]

    def _sign_batch(self, request: signing_pb2.SignBatchRequest) -> list[bytes]:
        response = self._call(lambda: self._stub.SignBatch(request, timeout=self._timeout))
        return list(response.signatures)

    def trust_list(self) -> list[signing_pb2.TrustListEntry]:
        """Certificates of every key whose signatures verifiers may still meet."""
        response = self._call(
            lambda: self._stub.GetTrustList(
                signing_pb2.GetTrustListRequest(), timeout=self._timeout
            )
        )
        return list(response.entries)

    def _call(self, rpc: Callable[[], _T]) -> _T:
        delay = 0.1
        for attempt in range(self._retries + 1):
            try:
                return rpc()
            except grpc.RpcError as error:
                typed = from_rpc_error(error)
                if not isinstance(typed, SignerUnavailable) or attempt == self._retries:
                    raise typed from None
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")
