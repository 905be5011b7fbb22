"""The record-store protocol: named blobs with a generation, written only conditionally.

A conditional write (``put`` with the generation the writer last read) is how several daemons
sharing one store agree: of two officers approving the same change at the same instant through
two appliances, one write succeeds and the other gets :class:`StoreConflict`, so a change is
applied once.
"""

from __future__ import annotations

import enum
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from signer.errors import InvalidRequest, StoreConflict

ABSENT: Final = 0
"""The generation a writer expects for a record that must not exist yet."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_STORE_ID_BYTES = 16


class RecordKind(enum.StrEnum):
    """The kinds of record signer keeps; each is its own namespace of names."""

    KEY = "key-record"
    CHANGE = "pending-change"
    CSR = "csr"


@dataclass(frozen=True)
class StoredRecord:
    """One record as read: its name, the generation it was written at, and its bytes."""

    name: str
    generation: int
    value: bytes


def check_name(name: str) -> str:
    """A record name safe for every backend (file names, data-object labels, SQL keys)."""
    if not _NAME.fullmatch(name):
        raise InvalidRequest(
            f"record name {name[:40]!r} is not 1-128 letters, digits, '.', '_' or '-'"
        )
    return name


def new_store_id() -> str:
    """A fresh random store id: 32 hex digits."""
    return secrets.token_hex(_STORE_ID_BYTES)


def conflict(record: str, expected: int, found: int) -> StoreConflict:
    """The refusal of a conditional write whose record moved on since it was read."""
    return StoreConflict(
        f"record {record} changed under us (expected generation {expected}, found {found}):"
        " another officer or appliance wrote it at the same time; reload and retry"
    )


class RecordStore(Protocol):
    """Named records with generations. Backends: token data objects, a directory, PostgreSQL."""

    def load_all(self, kind: RecordKind) -> Mapping[str, StoredRecord]:
        """Every record of one kind, by name (the newest generation of each)."""
        ...

    def put(self, kind: RecordKind, name: str, expected_generation: int, value: bytes) -> int:
        """Write a record if its current generation is ``expected_generation`` (:data:`ABSENT`
        for a new one); return the new generation, or raise :class:`StoreConflict`."""
        ...

    def delete(self, kind: RecordKind, name: str, expected_generation: int) -> None:
        """Remove a record if its current generation is ``expected_generation``, else raise
        :class:`StoreConflict` (also when it is already gone)."""
        ...

    def store_id(self) -> str:
        """The random id this store recorded on first use, the same for every daemon sharing it;
        kept apart from the records, where no record name can reach it."""
        ...
