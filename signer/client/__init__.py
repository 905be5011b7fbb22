"""Client library for issuance backends: :class:`SignerClient` and its typed errors."""

from signer.client.client import DccSigner, SignerClient, SigningKeyInfo, TlsFiles, channel_target
from signer.client.errors import (
    DeadlineExceeded,
    InvalidRequest,
    KidChanged,
    NoActiveKey,
    NotAuthorized,
    QuotaExceeded,
    RequestRefused,
    SignerUnavailable,
    UnknownProfile,
)

__all__ = [
    "DccSigner",
    "DeadlineExceeded",
    "InvalidRequest",
    "KidChanged",
    "NoActiveKey",
    "NotAuthorized",
    "QuotaExceeded",
    "RequestRefused",
    "SignerClient",
    "SignerUnavailable",
    "SigningKeyInfo",
    "TlsFiles",
    "UnknownProfile",
    "channel_target",
]
