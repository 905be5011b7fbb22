"""The record store a configuration names."""

from __future__ import annotations

from signer.config import Settings
from signer.store.api import RecordStore
from signer.store.token import DataObjects, TokenRecordStore


def open_store(settings: Settings, token: DataObjects) -> RecordStore:
    """The configured record store (today: data objects on the token)."""
    del settings
    return TokenRecordStore(token)
