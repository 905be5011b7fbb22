"""Pure choices at the PKCS#11 boundary: mechanisms, signature encodings, key templates."""

from __future__ import annotations

from typing import Any

from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

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


def private_key_template(label: str, cka_id: bytes | None) -> dict[Attribute, Any]:
    """The minimal template of a token private key that can only sign and never leave the HSM.

    Only what signer needs is sent: optional attributes set to false (SIGN_RECOVER, DECRYPT,
    ...) make some modules' parsers reject the whole template (YubiHSM 2). What the module
    made is read back and checked afterwards. Without ``cka_id`` the module chooses the id.
    """
    template: dict[Attribute, Any] = {
        Attribute.CLASS: ObjectClass.PRIVATE_KEY,
        Attribute.KEY_TYPE: KeyType.EC,
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.SIGN: True,
        Attribute.LABEL: label,
    }
    if cka_id:
        template[Attribute.ID] = cka_id
    return template


def public_key_template(label: str, cka_id: bytes | None, ec_params: bytes) -> dict[Attribute, Any]:
    """The minimal template of the matching public key on the token: P-256, verify."""
    template: dict[Attribute, Any] = {
        Attribute.CLASS: ObjectClass.PUBLIC_KEY,
        Attribute.KEY_TYPE: KeyType.EC,
        Attribute.EC_PARAMS: ec_params,
        Attribute.TOKEN: True,
        Attribute.PRIVATE: False,
        Attribute.VERIFY: True,
        Attribute.LABEL: label,
    }
    if cka_id:
        template[Attribute.ID] = cka_id
    return template


EXTRA_USAGES = (Attribute.DECRYPT, Attribute.UNWRAP, Attribute.DERIVE)
"""Usages a module may turn on by default for a private key; signer switches them off."""
