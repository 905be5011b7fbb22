"""Shared pieces of the audit log's unit tests: a software audit key and digest maker."""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from signer.audit.checkpoint import CheckpointSigner
from signer.sigformat import der_to_raw

ORIGIN = "test.example/audit"


def make_signer(priv: ec.EllipticCurvePrivateKey | None = None) -> CheckpointSigner:
    """A checkpoint signer backed by a software P-256 key (the HSM's stand-in), fresh if None."""
    if priv is None:
        priv = ec.generate_private_key(ec.SECP256R1())
    spki = priv.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return CheckpointSigner(
        ORIGIN,
        lambda d: der_to_raw(priv.sign(d, ec.ECDSA(utils.Prehashed(hashes.SHA256())))),
        spki,
    )


def digest(*parts: object) -> bytes:
    """A distinct 32-byte digest for any combination of parts."""
    return hashlib.sha256(repr(parts).encode()).digest()
