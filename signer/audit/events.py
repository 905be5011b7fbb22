"""The kinds of event the audit log records."""

from enum import StrEnum


class EventType(StrEnum):
    """What an audit record is about; the value is what the record stores."""

    SIGN_BATCH = "sign_batch"
    KEY_GENERATED = "key_generated"
    CSR_MADE = "csr_made"
    CERT_IMPORTED = "cert_imported"
    ACTIVATION_SCHEDULED = "activation_scheduled"
    RETIRED = "retired"
    REVOKED = "revoked"
    """A key withdrawn after a compromise: it left the trust list at once."""
    DESTROYED = "destroyed"
    RECORD_REJECTED = "record_rejected"
    """A stored key record whose signed change did not verify; the daemon did not act on it."""
    CHANGE_REQUESTED = "change_requested"
    CHANGE_APPROVED = "change_approved"
    CHANGE_EXPIRED = "change_expired"
    DAEMON_START = "daemon_start"
    DAEMON_STOP = "daemon_stop"
    AUTH_REFUSED = "auth_refused"
    LOG_REPAIRED = "log_repaired"
    LOG_RESUMED = "log_resumed"
    """First record after writes failed (disk full, I/O error): when and how much was refused."""
