"""The record store a configuration names."""

from __future__ import annotations

from signer.config import Settings, StoreBackend
from signer.errors import ConfigError
from signer.store.api import RecordStore
from signer.store.directory import DirectoryRecordStore
from signer.store.postgresql import PostgresRecordStore
from signer.store.token import DataObjects, TokenRecordStore


def open_store(settings: Settings, token: DataObjects) -> RecordStore:
    """The configured record store; ``token`` serves the token backend's data objects."""
    store = settings.store
    if store.backend is StoreBackend.DIRECTORY:
        if store.path is None:
            raise ConfigError("[store] backend = 'directory' needs path")
        return DirectoryRecordStore(store.path)
    if store.backend is StoreBackend.POSTGRESQL:
        if store.dsn is None:
            raise ConfigError("[store] backend = 'postgresql' needs dsn")
        return PostgresRecordStore(store.dsn, store.password_file)
    return TokenRecordStore(token)
