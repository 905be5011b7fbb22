"""The daemon's :class:`~signer.hsm.api.Token`: the worker processes behind one typed interface.

Every method sends one :class:`~signer.hsm.session.TokenSession` method, bound to its
arguments, over a worker pipe. Digests travel packed (32 bytes each) and signatures come back
packed (64 bytes each, raw ``r||s``); the pool cuts large batches into chunks, lets small
requests share a job and reassembles every caller's signatures in order. Transport, scheduling,
restarts and timeouts are :mod:`signer.hsm.pool`'s business.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from functools import partial

from signer.config import HsmSettings
from signer.errors import InvalidRequest
from signer.hsm.api import GeneratedKey
from signer.hsm.jobs import Done
from signer.hsm.pool import WorkerPool
from signer.hsm.session import TokenSession
from signer.sigformat import (
    P256_SIGNATURE_BYTES,
    SHA256_DIGEST_BYTES,
    SignatureEncoding,
    raw_to_der,
)


def split_signatures(packed: bytes, encoding: SignatureEncoding) -> list[bytes]:
    """Unpack raw P-256 signatures and encode each as asked (pure)."""
    step = P256_SIGNATURE_BYTES
    raw = [packed[i : i + step] for i in range(0, len(packed), step)]
    return raw if encoding is SignatureEncoding.RAW else [raw_to_der(r) for r in raw]


class PooledToken:
    """:class:`~signer.hsm.api.Token` over a :class:`WorkerPool`.

    The :class:`~signer.hsm.api.Token` methods block the calling thread and must not be called
    on the pool's event loop; the signing path on that loop uses :meth:`sign_soon`.
    """

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    def sign(
        self, key_id: str, digests: Sequence[bytes], encoding: SignatureEncoding
    ) -> list[bytes]:
        """See :meth:`signer.hsm.api.Token.sign`."""
        if not digests:
            return []
        if any(len(d) != SHA256_DIGEST_BYTES for d in digests):
            raise InvalidRequest(f"every digest must be {SHA256_DIGEST_BYTES} bytes (SHA-256)")
        return split_signatures(self.pool.sign_blocking(key_id, b"".join(digests)), encoding)

    def sign_soon(self, key_id: str, digests: bytes, done: Done) -> None:
        """Sign packed 32-byte digests; ``done`` gets the packed raw signatures or the error.

        Runs on the pool's event loop and returns at once; ``done`` is called on the loop.
        """
        self.pool.sign_soon(key_id, digests, done)

    def generate_key(self, label: str) -> GeneratedKey:
        """See :meth:`signer.hsm.api.Token.generate_key`."""
        return self.pool.run(partial(TokenSession.generate_key, label=label))

    def public_key(self, key_id: str) -> bytes:
        """See :meth:`signer.hsm.api.Token.public_key`."""
        return self.pool.run(partial(TokenSession.public_key, key_id=key_id))

    def key_id_by_label(self, label: str) -> str:
        """See :meth:`signer.hsm.api.Token.key_id_by_label`."""
        return self.pool.run(partial(TokenSession.key_id_by_label, label=label))

    def store_certificate(self, key_id: str, label: str, der: bytes) -> None:
        """See :meth:`signer.hsm.api.Token.store_certificate`."""
        self.pool.run(partial(TokenSession.store_certificate, key_id=key_id, label=label, der=der))

    def certificate(self, key_id: str) -> bytes | None:
        """See :meth:`signer.hsm.api.Token.certificate`."""
        return self.pool.run(partial(TokenSession.certificate, key_id=key_id))

    def destroy_key_pair(self, key_id: str) -> int:
        """See :meth:`signer.hsm.api.Token.destroy_key_pair`; every worker forgets the key."""
        removed = self.pool.run(partial(TokenSession.destroy_key_pair, key_id=key_id))
        self.pool.broadcast(partial(TokenSession.forget, key_id=key_id))
        return removed

    def ping(self) -> str:
        """See :meth:`signer.hsm.api.Token.ping`."""
        return self.pool.run(TokenSession.ping)

    def data_objects(self, application: str) -> dict[str, tuple[int, bytes]]:
        """Data objects of an application on the token: name -> (generation, value)."""
        return self.pool.run(partial(TokenSession.data_objects, application=application))

    def put_data_object(
        self, application: str, name: str, expected_generation: int, value: bytes
    ) -> int:
        """Conditionally write a data object on the token; returns its new generation."""
        return self.pool.run(
            partial(
                TokenSession.put_data_object,
                application=application,
                name=name,
                expected_generation=expected_generation,
                value=value,
            )
        )

    def delete_data_object(self, application: str, name: str, expected_generation: int) -> None:
        """Conditionally remove a data object from the token."""
        self.pool.run(
            partial(
                TokenSession.delete_data_object,
                application=application,
                name=name,
                expected_generation=expected_generation,
            )
        )


@contextlib.contextmanager
def pooled_token(settings: HsmSettings, count: int | None = None) -> Iterator[PooledToken]:
    """Start ``count`` workers (default: as configured), yield their token, stop them after."""
    pool = WorkerPool(settings, count)
    pool.start()
    try:
        yield PooledToken(pool)
    finally:
        pool.close()
