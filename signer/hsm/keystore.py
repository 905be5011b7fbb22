"""Keys, certificates and records on the token.

All objects of one key share a ``CKA_ID`` (DESIGN.md §3.3): the private key, the public key,
the Document Signer Certificate and the key's lifecycle record. Records (lifecycle, pending
changes) are ``CKO_DATA`` objects whose ``CKA_APPLICATION`` says what they hold and whose
``CKA_LABEL`` names them, so every daemon on the same token sees the same state.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from asn1crypto import x509
from pkcs11 import Attribute, CertificateType, ObjectClass, Session
from pkcs11.exceptions import ObjectHandleInvalid, PKCS11Error
from pkcs11.types import Object, PrivateKey, PublicKey
from pkcs11.util.ec import encode_ec_public_key

from signer.errors import KeyNotFound
from signer.hsm.keygen import read_protection
from signer.hsm.token import wrap_error
from signer.store.api import conflict

_GENERATION_BYTES = 8
_LIST_TRIES = 5


def _find_one(session: Session, template: dict[Attribute, Any], what: str) -> Object:
    """The single object matching ``template``.

    ``Session.get_key`` is not used: when nothing matches it leaves the token's search
    operation open, and every later search in that session fails with OperationActive.
    """
    try:
        # Session copies made for speed carry the same id and label; only token objects count.
        found = list(session.get_objects({**template, Attribute.TOKEN: True}))
    except PKCS11Error as exc:
        raise wrap_error(exc, f"finding {what}") from None
    if not found:
        raise KeyNotFound(f"no {what} on the token")
    if len(found) > 1:
        raise KeyNotFound(f"{len(found)} objects match {what}; the token is inconsistent")
    return found[0]


def private_key(session: Session, key_id: str) -> PrivateKey:
    """The token private key with this identifier."""
    key = _find_one(
        session,
        {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.ID: bytes.fromhex(key_id)},
        f"private key with id {key_id}",
    )
    assert isinstance(key, PrivateKey)
    return key


def public_key_spki(session: Session, key_id: str) -> bytes:
    """SubjectPublicKeyInfo (DER) of the key with this identifier."""
    key = _find_one(
        session,
        {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.ID: bytes.fromhex(key_id)},
        f"public key with id {key_id}",
    )
    assert isinstance(key, PublicKey)
    try:
        return bytes(encode_ec_public_key(key))
    except PKCS11Error as exc:
        raise wrap_error(exc, f"reading public key {key_id}") from None


def key_id_by_label(session: Session, label: str) -> str:
    """Identifier of the private key with this label (audit key, dev CSCA key)."""
    key = _find_one(
        session,
        {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: label},
        f"private key labelled {label!r}",
    )
    return bytes(key[Attribute.ID]).hex()


def private_key_attributes(session: Session, key_id: str) -> dict[str, bool | None]:
    """The protection flags of a private key, read back from the HSM."""
    return read_protection(private_key(session, key_id))


def store_certificate(session: Session, key_id: str, label: str, der: bytes) -> None:
    """Store (or replace) the X.509 certificate that belongs to a key."""
    delete_certificate(session, key_id)
    parsed = x509.Certificate.load(der)
    try:
        session.create_object(
            {
                Attribute.CLASS: ObjectClass.CERTIFICATE,
                Attribute.CERTIFICATE_TYPE: CertificateType.X_509,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: False,
                Attribute.ID: bytes.fromhex(key_id),
                Attribute.LABEL: label,
                Attribute.SUBJECT: parsed.subject.dump(),
                Attribute.ISSUER: parsed.issuer.dump(),
                Attribute.SERIAL_NUMBER: parsed["tbs_certificate"]["serial_number"].dump(),
                Attribute.VALUE: der,
            }
        )
    except PKCS11Error as exc:
        raise wrap_error(exc, f"storing the certificate of key {key_id}") from None


def certificate(session: Session, key_id: str) -> bytes | None:
    """DER of the certificate stored for a key, or None."""
    found = list(
        session.get_objects(
            {Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.ID: bytes.fromhex(key_id)}
        )
    )
    return bytes(found[0][Attribute.VALUE]) if found else None


def delete_certificate(session: Session, key_id: str) -> None:
    """Remove the certificate stored for a key, if any."""
    for obj in list(
        session.get_objects(
            {Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.ID: bytes.fromhex(key_id)}
        )
    ):
        obj.destroy()


def destroy_key_pair(session: Session, key_id: str) -> int:
    """Delete the private and public key objects of a key; return how many were removed."""
    removed = 0
    for object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
        for obj in list(
            session.get_objects(
                {Attribute.CLASS: object_class, Attribute.ID: bytes.fromhex(key_id)}
            )
        ):
            obj.destroy()
            removed += 1
    return removed


def put_record(
    session: Session, application: str, name: str, expected_generation: int, value: bytes
) -> int:
    """Write the data object ``(application, name)`` if its generation is the expected one.

    Tokens keep ``CKA_VALUE`` of data objects read-only, so a write creates a new object with
    the next generation and then destroys the older ones: a reader in another daemon never
    finds the record missing, and :func:`records` picks the newest generation. PKCS#11 has no
    compare-and-swap, so after creating its object a writer looks again: if another object
    holds the same generation, two daemons wrote at once and this writer withdraws its object.
    That check is only as good as the module's visibility of other sessions' objects: SoftHSM
    shows a new object to other processes only when it next reloads the token from disk, so two
    daemons writing one record in the same instant can both succeed (measured: 2 and 4 of 60
    rounds of two worker processes racing). Within one daemon ceremonies are serialised; for several
    daemons sharing governance state use the ``directory`` or ``postgresql`` store, whose
    conditional writes are atomic. Returns the new generation.
    """
    try:
        existing = _data_objects(session, application, name)
        current = max((found.generation for found in existing), default=0)
        if current != expected_generation:
            raise conflict(f"{application}/{name}", expected_generation, current)
        generation = current + 1
        mine = session.create_object(
            {
                Attribute.CLASS: ObjectClass.DATA,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.APPLICATION: application,
                Attribute.LABEL: name,
                Attribute.VALUE: generation.to_bytes(_GENERATION_BYTES, "big") + value,
            }
        )
        rivals = [
            found
            for found in _data_objects(session, application, name)
            if found.generation >= generation and found.obj.handle != mine.handle
        ]
        if rivals:
            mine.destroy()
            raise conflict(f"{application}/{name}", expected_generation, generation)
        for found in existing:
            _destroy(found.obj)
        return generation
    except PKCS11Error as exc:
        raise wrap_error(exc, f"writing record {application}/{name}") from None


def records(session: Session, application: str) -> dict[str, tuple[int, bytes]]:
    """All data objects of an application: name -> (generation, value) of the newest."""
    newest: dict[str, tuple[int, bytes]] = {}
    try:
        for found in _data_objects(session, application, None):
            candidate = (found.generation, found.value)
            if found.name not in newest or candidate > newest[found.name]:
                newest[found.name] = candidate
    except PKCS11Error as exc:
        raise wrap_error(exc, f"reading records {application}") from None
    return newest


def delete_record(session: Session, application: str, name: str, expected_generation: int) -> None:
    """Remove the data object ``(application, name)`` if it is at the expected generation."""
    try:
        existing = _data_objects(session, application, name)
        current = max((found.generation for found in existing), default=0)
        if current != expected_generation or not existing:
            raise conflict(f"{application}/{name}", expected_generation, current)
        for found in existing:
            _destroy(found.obj)
    except PKCS11Error as exc:
        raise wrap_error(exc, f"deleting record {application}/{name}") from None


@dataclass(frozen=True)
class _DataObject:
    obj: Object
    name: str
    generation: int
    value: bytes


def _data_objects(session: Session, application: str, name: str | None) -> list[_DataObject]:
    """The data objects of an application (and name), skipping any another session destroys
    while they are read."""
    template: dict[Attribute, Any] = {
        Attribute.CLASS: ObjectClass.DATA,
        Attribute.APPLICATION: application,
    }
    if name is not None:
        template[Attribute.LABEL] = name
    found = []
    for obj in _list_objects(session, template):
        try:
            blob = bytes(obj[Attribute.VALUE])
            label = str(obj[Attribute.LABEL])
        except ObjectHandleInvalid:
            continue
        generation = int.from_bytes(blob[:_GENERATION_BYTES], "big")
        found.append(_DataObject(obj, label, generation, blob[_GENERATION_BYTES:]))
    return found


def _list_objects(session: Session, template: dict[Attribute, Any]) -> list[Object]:
    """The objects matching ``template``; a listing that meets an object another session
    destroyed meanwhile is taken again."""
    for _ in range(_LIST_TRIES - 1):
        try:
            return list(session.get_objects(template))
        except ObjectHandleInvalid:
            continue
    return list(session.get_objects(template))


def _destroy(obj: Object) -> None:
    """Destroy an object that another session may have destroyed already."""
    with contextlib.suppress(ObjectHandleInvalid):
        obj.destroy()
