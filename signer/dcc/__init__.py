"""EU Digital COVID Certificates (HCERT): records, COSE/CWT, HC1, QR, verification, trust lists.

Pure code: no HSM and no gRPC here. Issuance is split so that only SHA-256 digests leave the
process (:func:`prepare` -> remote signing -> :func:`finish`).
"""

from signer.dcc.errors import DccEncodingError, DccError, DccRecordError, DccTrustError
from signer.dcc.issue import DigestSigner, PreparedCertificate, finish, issue, prepare
from signer.dcc.trust import TrustStore, trust_list_entry, write_trust_list
from signer.dcc.verify import VerificationResult, verify

__all__ = [
    "DccEncodingError",
    "DccError",
    "DccRecordError",
    "DccTrustError",
    "DigestSigner",
    "PreparedCertificate",
    "TrustStore",
    "VerificationResult",
    "finish",
    "issue",
    "prepare",
    "trust_list_entry",
    "verify",
    "write_trust_list",
]
