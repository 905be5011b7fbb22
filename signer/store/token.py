"""Records kept as PKCS#11 data objects on the token (``CKO_DATA``), the original backend.

Only for modules that hold data objects with ``CKA_APPLICATION`` (SoftHSM, many network HSMs);
AWS CloudHSM, Google Cloud KMS's library and YubiHSM 2 cannot, and use another backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from signer.errors import StoreConflict
from signer.store.api import ABSENT, RecordKind, StoredRecord, check_name, new_store_id

APPLICATION_PREFIX = "signer.v1/"
STORE_ID_APPLICATION = APPLICATION_PREFIX + "store-id"
"""The application of the one data object holding the store id; no record kind uses it."""
_STORE_ID_NAME = "store-id"
_STORE_ID_ATTEMPTS = 3


class DataObjects(Protocol):
    """The token's data objects, as :class:`signer.hsm.pooled.PooledToken` offers them."""

    def data_objects(self, application: str) -> dict[str, tuple[int, bytes]]:
        """name -> (generation, value) of every data object of an application."""
        ...

    def put_data_object(
        self, application: str, name: str, expected_generation: int, value: bytes
    ) -> int:
        """Conditionally write; returns the new generation."""
        ...

    def delete_data_object(self, application: str, name: str, expected_generation: int) -> None:
        """Conditionally remove."""
        ...


class TokenRecordStore:
    """:class:`~signer.store.api.RecordStore` on the token's data objects."""

    def __init__(self, objects: DataObjects) -> None:
        self._objects = objects

    def load_all(self, kind: RecordKind) -> Mapping[str, StoredRecord]:
        """See :meth:`signer.store.api.RecordStore.load_all`."""
        found = self._objects.data_objects(APPLICATION_PREFIX + kind.value)
        return {
            name: StoredRecord(name, generation, value)
            for name, (generation, value) in found.items()
        }

    def put(self, kind: RecordKind, name: str, expected_generation: int, value: bytes) -> int:
        """See :meth:`signer.store.api.RecordStore.put`."""
        return self._objects.put_data_object(
            APPLICATION_PREFIX + kind.value, check_name(name), expected_generation, value
        )

    def delete(self, kind: RecordKind, name: str, expected_generation: int) -> None:
        """See :meth:`signer.store.api.RecordStore.delete`."""
        self._objects.delete_data_object(
            APPLICATION_PREFIX + kind.value, check_name(name), expected_generation
        )

    def store_id(self) -> str:
        """See :meth:`signer.store.api.RecordStore.store_id`."""
        for _ in range(_STORE_ID_ATTEMPTS):
            found = self._objects.data_objects(STORE_ID_APPLICATION).get(_STORE_ID_NAME)
            if found is not None:
                return found[1].decode("ascii", "replace")
            candidate = new_store_id()
            try:
                self._objects.put_data_object(
                    STORE_ID_APPLICATION, _STORE_ID_NAME, ABSENT, candidate.encode("ascii")
                )
                return candidate
            except StoreConflict:
                # Two daemons claiming at once may both withdraw (see put_record): look again.
                continue
        raise StoreConflict(
            "other daemons kept writing the store id on the token at the same time; retry"
        )
