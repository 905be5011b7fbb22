"""Pure choices at the PKCS#11 boundary: mechanisms, signature encodings, key templates."""

from __future__ import annotations

from typing import Any

from pkcs11 import Attribute, Mechanism

from signer.sigformat import SHA256_DIGEST_BYTES, SignatureEncoding, raw_to_der

__all__ = ["SHA256_DIGEST_BYTES", "SignatureEncoding", "encode_signature", "signing_mechanism"]

P256_CURVE_OID = "secp256r1"


def signing_mechanism() -> Mechanism:
    """ES256 over a digest computed by the caller: plain ``CKM_ECDSA``.

    python-pkcs11 would default to ``CKM_ECDSA_SHA512`` for EC keys and hash the digest
    again, so the mechanism is always passed explicitly.
    """
    return Mechanism.ECDSA


def encode_signature(raw: bytes, encoding: SignatureEncoding) -> bytes:
    """Turn the HSM's raw ``r||s`` into the encoding the caller asked for."""
    return raw if encoding is SignatureEncoding.RAW else raw_to_der(raw)


def private_key_template(label: str) -> dict[Attribute, Any]:
    """A token private key that can only sign and can never leave the HSM."""
    return {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.SIGN: True,
        Attribute.DECRYPT: False,
        Attribute.UNWRAP: False,
        Attribute.DERIVE: False,
        Attribute.SIGN_RECOVER: False,
        Attribute.LABEL: label,
    }


def public_key_template(label: str) -> dict[Attribute, Any]:
    """The matching public key: verify only."""
    return {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: False,
        Attribute.VERIFY: True,
        Attribute.ENCRYPT: False,
        Attribute.WRAP: False,
        Attribute.DERIVE: False,
        Attribute.VERIFY_RECOVER: False,
        Attribute.LABEL: label,
    }
