"""The one error base class of the project.

Every error raised on purpose derives from :class:`SignerError`; its message tells an operator
or a developer what went wrong and what to do about it. Messages never contain PINs, private
key material or bulk digests.
"""


class SignerError(Exception):
    """Base class for all errors raised by signer on purpose."""


class ConfigError(SignerError):
    """The configuration file or a secret it points to is unusable."""


class HsmError(SignerError):
    """The HSM refused or failed an operation."""


class HsmUnavailable(HsmError):
    """The HSM (module, slot, token or session) cannot be reached right now."""


class KeyNotFound(SignerError):
    """No key, certificate or record with the given identifier exists."""


class CertificateError(SignerError):
    """A certificate or CSR failed a check; the message names the check."""


class PolicyError(SignerError):
    """A key may not be used or changed now because a lifecycle rule forbids it."""


class AuditError(SignerError):
    """The audit log cannot be written or read; signing must stop."""


class InvalidRequest(SignerError):
    """A request is malformed (bad digest, empty or oversized batch); nothing was signed."""


class UnknownProfile(SignerError):
    """The request names a certificate profile this appliance does not serve."""


class KidNotAccepted(PolicyError):
    """The kid the caller used may not sign any more; ``current_kid`` is the one to use."""

    def __init__(self, message: str, current_kid: bytes | None) -> None:
        super().__init__(message)
        self.current_kid = current_kid

    def __reduce__(self) -> tuple[type, tuple[str, bytes | None]]:
        return (type(self), (str(self), self.current_kid))


class PermissionDenied(SignerError):
    """The caller's identity does not hold the role an operation needs."""


class Unauthenticated(SignerError):
    """The caller presented no usable identity."""


class QuotaExceeded(SignerError):
    """The caller exceeded its signing rate or concurrency quota."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[type, tuple[str, float]]:
        return (type(self), (str(self), self.retry_after))


class StoreUnavailable(SignerError):
    """The record store (a database or a shared folder) cannot be reached right now; the next
    request tries again."""


class StoreConflict(SignerError):
    """A record changed between reading and writing it (another officer or appliance wrote
    first); reload and retry."""
