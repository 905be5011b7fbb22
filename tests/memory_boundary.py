"""In-memory implementations of the project's own boundary, for fast unit tests of the logic.

:class:`MemoryToken` implements :class:`signer.hsm.api.Token` with software P-256 keys from
``cryptography``; :class:`MemoryRecordStore` implements :class:`signer.store.api.RecordStore`
with a dict. They stand in for the HSM only where a test is about the registry and ceremony
logic above the boundary; the SoftHSM suite proves the boundary itself.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from signer.errors import InvalidRequest, KeyNotFound
from signer.hsm.api import GeneratedKey
from signer.sigformat import SignatureEncoding, der_to_raw
from signer.store.api import (
    ABSENT,
    RecordKind,
    StoredRecord,
    check_name,
    conflict,
    new_store_id,
)


@dataclass
class _Key:
    label: str
    private: ec.EllipticCurvePrivateKey


@dataclass
class MemoryToken:
    """A :class:`~signer.hsm.api.Token` whose keys live in this process."""

    label: str = "memory"
    keys: dict[str, _Key] = field(default_factory=dict)
    certificates: dict[str, bytes] = field(default_factory=dict)
    signatures: int = 0

    def generate_key(self, label: str) -> GeneratedKey:
        key_id = os.urandom(8).hex()
        self.keys[key_id] = _Key(label, ec.generate_private_key(ec.SECP256R1()))
        return GeneratedKey(key_id, self.public_key(key_id))

    def _key(self, key_id: str) -> _Key:
        try:
            return self.keys[key_id]
        except KeyError:
            raise KeyNotFound(f"no private key with id {key_id} on the token") from None

    def public_key(self, key_id: str) -> bytes:
        return (
            self._key(key_id)
            .private.public_key()
            .public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def key_id_by_label(self, label: str) -> str:
        found = [key_id for key_id, key in self.keys.items() if key.label == label]
        if len(found) != 1:
            raise KeyNotFound(f"{len(found)} private keys labelled {label!r}")
        return found[0]

    def sign(
        self, key_id: str, digests: Sequence[bytes], encoding: SignatureEncoding
    ) -> list[bytes]:
        if any(len(d) != 32 for d in digests):
            raise InvalidRequest("every digest must be 32 bytes (SHA-256)")
        key = self._key(key_id).private
        algorithm = ec.ECDSA(utils.Prehashed(hashes.SHA256()))
        der = [key.sign(d, algorithm) for d in digests]
        self.signatures += len(der)
        return der if encoding is SignatureEncoding.DER else [der_to_raw(s) for s in der]

    def store_certificate(self, key_id: str, label: str, der: bytes) -> None:
        self._key(key_id)
        self.certificates[key_id] = der

    def certificate(self, key_id: str) -> bytes | None:
        return self.certificates.get(key_id)

    def destroy_key_pair(self, key_id: str) -> int:
        return 2 if self.keys.pop(key_id, None) is not None else 0

    def ping(self) -> str:
        return self.label


@dataclass
class MemoryRecordStore:
    """A :class:`~signer.store.api.RecordStore` in a dict, thread-safe like a real one."""

    records: dict[tuple[RecordKind, str], StoredRecord] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    ident: str = field(default_factory=new_store_id)

    def load_all(self, kind: RecordKind) -> Mapping[str, StoredRecord]:
        with self.lock:
            return {name: r for (k, name), r in self.records.items() if k is kind}

    def _current(self, kind: RecordKind, name: str) -> int:
        found = self.records.get((kind, name))
        return ABSENT if found is None else found.generation

    def put(self, kind: RecordKind, name: str, expected_generation: int, value: bytes) -> int:
        with self.lock:
            current = self._current(kind, check_name(name))
            if current != expected_generation:
                raise conflict(f"{kind.value}/{name}", expected_generation, current)
            self.records[(kind, name)] = StoredRecord(name, current + 1, value)
            return current + 1

    def delete(self, kind: RecordKind, name: str, expected_generation: int) -> None:
        with self.lock:
            current = self._current(kind, check_name(name))
            if current == ABSENT or current != expected_generation:
                raise conflict(f"{kind.value}/{name}", expected_generation, current)
            del self.records[(kind, name)]

    def store_id(self) -> str:
        return self.ident
