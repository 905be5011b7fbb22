"""Tamper-evident audit log: group-committed writer, signed checkpoints, verifier, queries.

Public API (see each module for details):

* :class:`~signer.audit.log.AuditLog`, :class:`~signer.audit.log.AppendResult` - the writer;
* :class:`~signer.audit.events.EventType` - what a record is about;
* :class:`~signer.audit.record.AuditRecord` - a stored record;
* :class:`~signer.audit.checkpoint.CheckpointSigner` - the HSM audit key as a callable;
* :func:`~signer.audit.verify.verify_log`, :class:`~signer.audit.verify.VerifyReport`,
  :class:`~signer.audit.verify.FaultKind`, :class:`~signer.audit.verify.Finding` - offline
  verification;
* :func:`~signer.audit.query.find_by_digest`, :func:`~signer.audit.query.tail`,
  :func:`~signer.audit.query.latest_checkpoint` - queries;
* :func:`~signer.audit.signed.verified_signatures`,
  :func:`~signer.audit.signed.signatures_in_window`, :class:`~signer.audit.signed.SignatureWindow`
  - what an identity had signed in a window, as SIGNATURE revocation hashes;
* :func:`~signer.audit.cli.add_subcommands` - ``signer audit`` CLI.
"""

from signer.audit.checkpoint import Checkpoint, CheckpointSigner, verifier_key
from signer.audit.events import EventType
from signer.audit.log import AppendResult, AuditLog
from signer.audit.query import DigestMatch, find_by_digest, latest_checkpoint, tail
from signer.audit.record import AuditRecord
from signer.audit.signed import (
    LogNotVerified,
    SignatureWindow,
    SignedHash,
    WindowNotes,
    signatures_in_window,
    verified_signatures,
)
from signer.audit.verify import FaultKind, Finding, FindingKind, VerifyReport, verify_log

__all__ = [
    "AppendResult",
    "AuditLog",
    "AuditRecord",
    "Checkpoint",
    "CheckpointSigner",
    "DigestMatch",
    "EventType",
    "FaultKind",
    "Finding",
    "FindingKind",
    "LogNotVerified",
    "SignatureWindow",
    "SignedHash",
    "VerifyReport",
    "WindowNotes",
    "find_by_digest",
    "latest_checkpoint",
    "signatures_in_window",
    "tail",
    "verified_signatures",
    "verifier_key",
    "verify_log",
]
