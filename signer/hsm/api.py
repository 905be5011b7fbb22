"""What the daemon needs from an HSM, as one typed protocol.

Callers (the key registry, ceremonies, the audit trail, the signing service) depend on
:class:`Token` only. :class:`signer.hsm.session.TokenSession` implements it inside a worker
process over one PKCS#11 session; :class:`signer.hsm.pooled.PooledToken` implements it in the
daemon over the worker pipes. Tests may implement it in memory for fast unit tests of the logic
above it; the SoftHSM suite proves the real thing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from signer.sigformat import SignatureEncoding


@dataclass(frozen=True)
class GeneratedKey:
    """A key pair just created inside the HSM: its identifier and its public half."""

    key_id: str
    spki_der: bytes


class Token(Protocol):
    """The HSM operations signer uses. Errors are :class:`signer.errors.SignerError` subclasses:
    ``KeyNotFound`` for a missing object, ``HsmUnavailable`` when the HSM cannot be reached,
    ``HsmError`` when it refuses."""

    def generate_key(self, label: str) -> GeneratedKey:
        """Generate an EC P-256 key pair inside the HSM: sensitive, not extractable, sign only."""
        ...

    def public_key(self, key_id: str) -> bytes:
        """SubjectPublicKeyInfo (DER) of the key with this identifier."""
        ...

    def key_id_by_label(self, label: str) -> str:
        """Identifier of the one private key with this label."""
        ...

    def sign(
        self, key_id: str, digests: Sequence[bytes], encoding: SignatureEncoding
    ) -> list[bytes]:
        """ES256 signatures over 32-byte SHA-256 digests, in the order of the digests."""
        ...

    def store_certificate(self, key_id: str, label: str, der: bytes) -> None:
        """Store (or replace) the X.509 certificate that belongs to a key."""
        ...

    def certificate(self, key_id: str) -> bytes | None:
        """DER of the certificate stored for a key, or None."""
        ...

    def destroy_key_pair(self, key_id: str) -> int:
        """Delete a key's private and public objects; return how many were removed."""
        ...

    def ping(self) -> str:
        """A round trip to the token; returns its label."""
        ...


def digest_signer(token: Token, key_id: str) -> Callable[[bytes], bytes]:
    """A function that signs one SHA-256 digest with a key in the HSM (raw ``r||s``)."""

    def sign(digest: bytes) -> bytes:
        return token.sign(key_id, [digest], SignatureEncoding.RAW)[0]

    return sign
