"""Errors raised by the DCC layer; all derive from :class:`signer.errors.SignerError`."""

from signer.errors import SignerError


class DccError(SignerError):
    """A DCC/HCERT operation failed; the message says which step and why."""


class DccRecordError(DccError):
    """A vaccination record is invalid; ``field`` names the offending field (e.g. ``v[0].dn``)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class DccEncodingError(DccError):
    """A base45, zlib, CBOR or COSE structure could not be encoded or decoded."""


class DccTrustError(DccError):
    """A DSC or trust list could not be loaded or is unusable."""
