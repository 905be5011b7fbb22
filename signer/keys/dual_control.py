"""Dual control of key changes: one person requests, other persons approve, each by signing.

Pure logic over :class:`PendingChange`, a :class:`~signer.keys.governance.SignedChange` that
has not yet collected the persons it needs. Persons, not certificates, are counted: whoever
requested a change cannot approve it under any identity, and nobody approves twice.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from signer.errors import PermissionDenied, PolicyError
from signer.keys.governance import Action, ChangeDocument, Endorsement, SignedChange
from signer.keys.utc import require_utc

DEFAULT_CHANGE_TTL: Final = timedelta(hours=24)
CHANGE_ID_BYTES: Final = 16


def new_change_id() -> str:
    """A fresh random change id (hex)."""
    return secrets.token_hex(CHANGE_ID_BYTES)


@dataclass(frozen=True)
class PendingChange:
    """A requested key change and the endorsements it has collected."""

    signed: SignedChange
    document: ChangeDocument
    expires_at: datetime

    @classmethod
    def of(cls, signed: SignedChange, ttl: timedelta) -> PendingChange:
        """The pending form of a signed change, expiring ``ttl`` after it was requested."""
        if ttl <= timedelta(0):
            raise PolicyError("change check failed: the approval window (ttl) must be positive")
        document = signed.change
        return cls(signed, document, document.requested_at + ttl)

    @property
    def change_id(self) -> str:
        """The change's id."""
        return self.document.change_id

    @property
    def action(self) -> Action:
        """What the change does."""
        return self.document.action

    @property
    def key_id(self) -> str:
        """The key it changes."""
        return self.document.key_id

    @property
    def requested_by(self) -> str:
        """The person who requested it."""
        return self.document.requested_by

    @property
    def approvals(self) -> tuple[str, ...]:
        """Persons who approved it, in order."""
        return tuple(e.person for e in self.signed.endorsements if e.role == "approve")

    def persons(self) -> int:
        """How many persons have signed it (requester included)."""
        return len({e.person for e in self.signed.endorsements})


def approve(
    change: PendingChange, endorsement: Endorsement, now: datetime, required: int
) -> tuple[PendingChange, bool]:
    """Add a verified approval; return the new change and whether enough persons signed.

    Refused: an expired change (FAILED_PRECONDITION), the requester approving their own change
    and a person approving twice (PERMISSION_DENIED naming the person).
    """
    moment = require_utc(now, "now")
    person = endorsement.person
    if moment >= change.expires_at:
        raise PolicyError(
            f"approval refused: change {change.change_id} expired at "
            f"{change.expires_at.isoformat()}; request the change again"
        )
    if person == change.requested_by:
        raise PermissionDenied(
            f"approval refused: {person} requested change {change.change_id} and cannot approve"
            " it under any of their certificates; another person must approve"
        )
    if person in change.approvals:
        raise PermissionDenied(
            f"approval refused: {person} already approved change {change.change_id};"
            " another person must approve"
        )
    approved = PendingChange(
        change.signed.with_endorsement(endorsement), change.document, change.expires_at
    )
    return approved, approved.persons() >= required
