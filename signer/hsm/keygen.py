"""Key generation that works on lenient and strict modules alike, and proves what it made.

The templates are minimal (:mod:`signer.hsm.mechanisms`); what the module made is read back:
its ``CKA_ID`` becomes the key's identifier (a module may shorten the id it was given, or choose
its own), usages the module switched on by default are switched off, and a key that does not
read back sensitive, never extractable and sign-only is destroyed and refused.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass, Session
from pkcs11.constants import DEFAULT
from pkcs11.exceptions import (
    AttributeReadOnly,
    AttributeTypeInvalid,
    AttributeValueInvalid,
    DomainParamsInvalid,
    KeyTypeInconsistent,
    MechanismInvalid,
    MechanismParamInvalid,
    PKCS11Error,
    TemplateIncomplete,
    TemplateInconsistent,
)
from pkcs11.types import Object, PrivateKey, PublicKey
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from signer.config import HsmSettings
from signer.errors import HsmError
from signer.hsm.api import GeneratedKey
from signer.hsm.mechanisms import (
    EXTRA_USAGES,
    P256_CURVE_OID,
    private_key_template,
    public_key_template,
)
from signer.hsm.token import wrap_error


class NoEllipticCurves(HsmError):
    """The module cannot make EC P-256 keys."""


class KeyTemplateRefused(HsmError):
    """The module refused signer's minimal key template."""


class KeyNotProtected(HsmError):
    """The module made a key that does not read back sensitive, never extractable, sign-only."""


ATTEMPTS = 5
"""Fresh random ids tried when a module's short ids collide with an existing key's."""

# Attributes python-pkcs11 puts into key templates by itself; each one signer's template does
# not name is withdrawn, so the module receives exactly signer's template.
_LIBRARY_DEFAULTS = (
    Attribute.CLASS,
    Attribute.ID,
    Attribute.LABEL,
    Attribute.TOKEN,
    Attribute.PRIVATE,
    Attribute.SENSITIVE,
    Attribute.ENCRYPT,
    Attribute.DECRYPT,
    Attribute.WRAP,
    Attribute.UNWRAP,
    Attribute.SIGN,
    Attribute.VERIFY,
    Attribute.DERIVE,
)
_NO_EC = (MechanismInvalid, MechanismParamInvalid, DomainParamsInvalid, KeyTypeInconsistent)
_TEMPLATE_REFUSED = (
    TemplateInconsistent,
    TemplateIncomplete,
    AttributeTypeInvalid,
    AttributeValueInvalid,
    AttributeReadOnly,
)

REQUIRED_PROTECTION: dict[str, bool] = {
    "sensitive": True,
    "extractable": False,
    "always_sensitive": True,
    "never_extractable": True,
    "sign": True,
    "decrypt": False,
    "derive": False,
    "unwrap": False,
}
"""Attribute values a private key must read back with, or signer refuses it."""

PROTECTION_ATTRIBUTES = {
    "sensitive": Attribute.SENSITIVE,
    "extractable": Attribute.EXTRACTABLE,
    "always_sensitive": Attribute.ALWAYS_SENSITIVE,
    "never_extractable": Attribute.NEVER_EXTRACTABLE,
    "sign": Attribute.SIGN,
    "decrypt": Attribute.DECRYPT,
    "derive": Attribute.DERIVE,
    "unwrap": Attribute.UNWRAP,
    "local": Attribute.LOCAL,
}


def exactly(template: dict[Attribute, Any]) -> dict[Attribute, Any]:
    """``template`` in the form that makes python-pkcs11 send it and nothing else (pure)."""
    return {**dict.fromkeys(_LIBRARY_DEFAULTS, DEFAULT), **template}


def protection_problems(flags: dict[str, bool | None]) -> list[str]:
    """The protection flags that differ from :data:`REQUIRED_PROTECTION` (pure); an attribute
    the module would not read back counts as wrong."""
    return [
        f"{name}={flags.get(name)}"
        for name, wanted in REQUIRED_PROTECTION.items()
        if flags.get(name) != wanted
    ]


def read_protection(key: Object) -> dict[str, bool | None]:
    """The protection flags of a private key as the module reports them (None: unreadable)."""
    flags: dict[str, bool | None] = {}
    for name, attribute in PROTECTION_ATTRIBUTES.items():
        try:
            flags[name] = bool(key[attribute])
        except PKCS11Error:
            flags[name] = None
    return flags


def generate_ec_key(session: Session, label: str, settings: HsmSettings) -> GeneratedKey:
    """Generate an EC P-256 key pair on the token, check it and return its identity."""
    for _ in range(ATTEMPTS):
        wanted = os.urandom(settings.key_id_bytes) if settings.key_id_bytes else None
        public, private = _generate_pair(session, label, wanted, settings)
        try:
            key_id = _identity(session, public, private, label, settings)
            if key_id is not None:
                _check_protection(private, label, settings)
                spki = bytes(encode_ec_public_key(public))
                return GeneratedKey(key_id=key_id.hex(), spki_der=spki)
        except BaseException:
            _destroy_pair(public, private)
            raise
        _destroy_pair(public, private)
    raise HsmError(
        f"the PKCS#11 module {settings.module} kept giving new keys ids that other keys already"
        f" have ({ATTEMPTS} tries): raise [hsm] key_id_bytes (now {settings.key_id_bytes})"
    )


def _generate_pair(
    session: Session, label: str, cka_id: bytes | None, settings: HsmSettings
) -> tuple[PublicKey, PrivateKey]:
    ec_params = encode_named_curve_parameters(P256_CURVE_OID)
    try:
        public, private = session.generate_keypair(
            KeyType.EC,
            mechanism=Mechanism.EC_KEY_PAIR_GEN,
            public_template=exactly(public_key_template(label, cka_id, ec_params)),
            private_template=exactly(private_key_template(label, cka_id)),
        )
    except _NO_EC as exc:
        raise NoEllipticCurves(
            f"the PKCS#11 module {settings.module} cannot generate EC P-256 keys"
            f" ({type(exc).__name__}): signer needs CKM_EC_KEY_PAIR_GEN and CKM_ECDSA on"
            " secp256r1; set [hsm] module to a module with elliptic curves"
            " (`signer hsm probe` shows what a module offers)"
        ) from None
    except _TEMPLATE_REFUSED as exc:
        hint = (
            "set [hsm] key_id_bytes = 0 to let the module choose key ids"
            if cka_id
            else "its documentation says which key attributes it accepts"
        )
        raise KeyTemplateRefused(
            f"the PKCS#11 module {settings.module} refused the minimal key template of"
            f" {label!r} ({type(exc).__name__}): {hint}"
        ) from None
    except PKCS11Error as exc:
        raise wrap_error(exc, f"generating key {label!r}") from None
    assert isinstance(public, PublicKey) and isinstance(private, PrivateKey)
    return public, private


def _identity(
    session: Session, public: PublicKey, private: PrivateKey, label: str, settings: HsmSettings
) -> bytes | None:
    """The ``CKA_ID`` the module gave the new pair, or None when another key has it too."""
    key_id = _read_id(private)
    if not key_id:
        raise HsmError(
            f"the PKCS#11 module {settings.module} stored key {label!r} without a CKA_ID, by"
            " which signer finds keys: set [hsm] key_id_bytes above 0"
            if not settings.key_id_bytes
            else f"the PKCS#11 module {settings.module} dropped the CKA_ID of key {label!r}:"
            " signer cannot find keys on it by id"
        )
    if _read_id(public) != key_id:
        try:
            public[Attribute.ID] = key_id
        except PKCS11Error:
            raise HsmError(
                f"the PKCS#11 module {settings.module} gave the halves of key {label!r}"
                " different CKA_IDs and will not align them: signer cannot pair them"
            ) from None
    try:
        holders = list(
            session.get_objects(
                {
                    Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                    Attribute.TOKEN: True,
                    Attribute.ID: key_id,
                }
            )
        )
    except PKCS11Error as exc:
        raise wrap_error(exc, f"looking up the new key {label!r}") from None
    if len(holders) == 1:
        return key_id
    if not settings.key_id_bytes:
        raise HsmError(
            f"the PKCS#11 module {settings.module} gave key {label!r} an id another key has:"
            " set [hsm] key_id_bytes above 0 so that signer chooses random ids"
        )
    return None


def _check_protection(private: PrivateKey, label: str, settings: HsmSettings) -> None:
    """Switch off usages the module allowed by default, then refuse a key still not protected."""
    for attribute in EXTRA_USAGES:
        try:
            if private[attribute]:
                private[attribute] = False
        except PKCS11Error:
            pass  # read back below: an unreadable or stuck usage refuses the key
    weak = protection_problems(read_protection(private))
    if weak:
        raise KeyNotProtected(
            f"the PKCS#11 module {settings.module} made key {label!r} with {', '.join(weak)};"
            " it was destroyed. signer needs keys that are sensitive, never extractable and"
            " sign-only: this module cannot hold signer's keys as configured ([hsm] module)"
        )


def _read_id(key: Object) -> bytes:
    try:
        return bytes(key[Attribute.ID])
    except PKCS11Error:
        return b""


def _destroy_pair(public: Object, private: Object) -> None:
    for obj in (private, public):
        with contextlib.suppress(PKCS11Error):  # already gone, or refused: nothing else to try
            obj.destroy()
