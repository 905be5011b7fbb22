"""EU Digital COVID Certificates (HCERT): records, COSE/CWT, HC1, QR, verification, trust lists.

Pure code: no HSM and no gRPC here. Issuance is split so that only SHA-256 digests leave the
process (:func:`prepare` -> remote signing -> :func:`finish`).
"""

from signer.dcc.errors import DccEncodingError, DccError, DccRecordError, DccTrustError
from signer.dcc.issue import (
    ChunkSigner,
    DigestSigner,
    IssuingKey,
    KeySource,
    PreparedCertificate,
    RotatingSigner,
    finish,
    issue,
    issue_records,
    prepare,
    reprepare,
    rotated_kid,
)
from signer.dcc.trust import TrustStore, trust_list_entry, write_trust_list
from signer.dcc.verify import VerificationResult, verify

__all__ = [
    "ChunkSigner",
    "DccEncodingError",
    "DccError",
    "DccRecordError",
    "DccTrustError",
    "DigestSigner",
    "IssuingKey",
    "KeySource",
    "PreparedCertificate",
    "RotatingSigner",
    "TrustStore",
    "VerificationResult",
    "finish",
    "issue",
    "issue_records",
    "prepare",
    "reprepare",
    "rotated_kid",
    "trust_list_entry",
    "verify",
    "write_trust_list",
]
