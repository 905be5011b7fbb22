"""Client library for issuance backends: :class:`SignerClient` and its typed errors."""

from signer.client.client import SignerClient, SigningKeyInfo
from signer.client.errors import (
    KidChanged,
    NoActiveKey,
    RequestRefused,
    SignerUnavailable,
)

__all__ = [
    "KidChanged",
    "NoActiveKey",
    "RequestRefused",
    "SignerClient",
    "SignerUnavailable",
    "SigningKeyInfo",
]
